"""``ShardWriter``: stream clips into one cache shard file, one row at a time (peak memory: one clip)."""

from __future__ import annotations

import errno
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.cache.failures import failure_row
from pipeline.cache.format import (
    ACTIONS,
    CHECKSUM,
    DTYPES,
    FAILURES,
    FILE_KWARGS,
    METADATA_CHUNK_ROWS,
    SPLITS_GROUP,
    STRING_DATASETS,
    VIRTUAL_DATASETS,
    compression_kwargs,
    create_checked,
    fixed_strings,
    row_shapes,
)
from pipeline.cache.input_stats import INPUTS_ATTR
from pipeline.cache.integrity import record_integrity
from pipeline.cache.provenance import check_attrs
from pipeline.contracts import CACHE_ATTRS, FAILURE_COLUMNS, PROTOCOL_VALUES
from pipeline.defaults import DEFAULT_COMPRESSION
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE
from pipeline.utils.fileio import temp_path

log = logging.getLogger(__name__)


class ShardWriter:
    """Stream clips into one shard file, one row at a time (peak memory: one clip).

    Use it as a context manager: a clean exit trims the datasets to the rows appended and closes the file
    (renaming it into place when ``atomic``); an exception deletes the partial file, so a crash never leaves
    a file at ``path``. HDF5 writes through a ``FailSafeFile``: a write error (a full disk, a file-size limit) is
    raised by the next ``append`` or ``close`` as one ``ShardWriteError`` naming the file, which is deleted; the
    library never sees it, so it never closes a failed file twice (which segfaults).

    Args:
        path: the file to produce. A Luigi task passes its ``temporary_path()`` with ``atomic=False``.
        n_rows_max: capacity (videos x clips per video); appending more raises.
        num_joints: J of the dataset's skeleton.
        t_p: poses per clip.
        attrs: the ``CACHE_ATTRS`` (see ``provenance.make_attrs``), and optionally ``inputs_json``
            (``pipeline.cache.input_stats``).
        protocols: the protocol names whose split value every row carries.
        compression: a name accepted by ``compression_kwargs``, applied to features and poses.
        atomic: write ``<dir>/.<name>.tmp-*`` and ``os.replace`` it onto ``path`` on close.
        record_as: the final name the integrity record describes (default ``path``); a Luigi task writing its
            ``temporary_path()`` passes the output's path, so the record exists before the rename.
        clip_len: frames per clip (the I3D input), which sets the feature and frame-index shapes.
        crop_size: side of the I3D input crop, which sets the feature shape.
    """

    def __init__(self, path: str | Path, *, n_rows_max: int, num_joints: int, t_p: int,
                 attrs: Mapping[str, str], protocols: Sequence[str] = (),
                 compression: str = DEFAULT_COMPRESSION, atomic: bool = False, record_as: str | Path | None = None,
                 clip_len: int = CLIP_FRAMES, crop_size: int = CROP_SIZE):
        check_attrs(attrs)
        if n_rows_max < 0:
            raise ValueError(f"n_rows_max must be >= 0, got {n_rows_max}")
        bad = [p for p in protocols if not p or "/" in p]
        if bad:
            raise ValueError(f"invalid protocol names {bad}")
        self.path = Path(path)
        self.atomic = atomic
        self.record_as = Path(record_as) if record_as is not None else self.path
        self.protocols = tuple(protocols)
        self.n_rows_max = n_rows_max
        self.n_rows = 0
        self.failures: list[tuple[str, str, str]] = []
        self._shapes = row_shapes(num_joints, t_p, clip_len, crop_size)
        self._write_path = temp_path(self.path) if atomic else self.path
        self._write_path.parent.mkdir(parents=True, exist_ok=True)
        self._strings: dict[str, list[str]] = {name: [] for name in STRING_DATASETS}
        self._split_values: dict[str, list[str]] = {protocol: [] for protocol in self.protocols}
        self._sink = FailSafeFile(self._write_path)
        self._file: h5py.File | None = None
        try:
            self._file = h5py.File(self._sink, "w", **FILE_KWARGS)
            self._create_datasets(attrs, compression)
            self._file.flush()
            self._check_sink()
        except BaseException:
            self.abort()
            raise

    def _create_datasets(self, attrs: Mapping[str, str], compression: str) -> None:
        f, n = self._file, self.n_rows_max
        for name in (*CACHE_ATTRS, *([INPUTS_ATTR] if INPUTS_ATTR in attrs else [])):
            f.attrs[name] = str(attrs[name])
        bulky = compression_kwargs(compression)
        for name, shape in self._shapes.items():
            if name in STRING_DATASETS:
                continue
            chunk_rows = 1 if name in VIRTUAL_DATASETS else max(1, min(n, METADATA_CHUNK_ROWS))
            f.create_dataset(name, shape=(n, *shape), maxshape=(None, *shape), dtype=DTYPES[name],
                             chunks=(chunk_rows, *shape), **CHECKSUM, **(bulky if name in VIRTUAL_DATASETS else {}))
        self._datasets = {name: f[name] for name in self._shapes if name not in STRING_DATASETS}

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def append(self, *, features: np.ndarray, poses: np.ndarray, sample_id: str, label: int, action: str,
               clip_index: int, frame_indices: np.ndarray, box: np.ndarray, splits: Mapping[str, str]) -> None:
        """Write one clip as the next row.

        Args:
            features: (1024, 8, 7, 7) Mixed_5c features of the default clip (cast to float16; must stay finite).
            poses: (2, 3, J, t_p) float32 poses.
            sample_id: the manifest's sample id.
            label: the manifest's label (index into the dataset's full class list).
            action: the action name.
            clip_index: the clip's index within its video.
            frame_indices: (clip_len,) source-frame index of every clip frame.
            box: (4,) crop box x0, y0, x1, y1 in source-frame pixels.
            splits: protocol -> "train"/"val"/"test"/"" for every protocol of this shard.

        Raises:
            ValueError: a shape, a split value or the row count is wrong, or features overflow float16.
        """
        if not isinstance(sample_id, str) or not sample_id:
            raise ValueError(f"sample_id must be a non-empty string, got {sample_id!r}")
        if self.n_rows >= self.n_rows_max:
            raise ValueError(f"{self.path.name}: shard is full ({self.n_rows_max} rows); raise n_rows_max")
        with np.errstate(over="ignore"):  # overflow is reported below as non-finite features
            half = np.asarray(features, dtype=np.float16)
        row = {
            "features": half,
            "poses": np.asarray(poses, dtype=np.float32),
            "frame_indices": np.asarray(frame_indices),
            "boxes": np.asarray(box, dtype=np.float32),
        }
        for name, value in row.items():
            if value.shape != self._shapes[name]:
                raise ValueError(f"{sample_id} clip {clip_index}: {name} has shape {value.shape}, "
                                 f"expected {self._shapes[name]}")
        if not np.isfinite(row["features"]).all():
            raise ValueError(f"{sample_id} clip {clip_index}: features are not finite in float16 "
                             f"(max |x| {np.abs(np.asarray(features, dtype=np.float64)).max():.4g})")
        if not np.isfinite(row["poses"]).all():
            raise ValueError(f"{sample_id} clip {clip_index}: poses are not finite (NaN/inf, or beyond float32)")
        if not np.array_equal(row["frame_indices"], row["frame_indices"].astype(np.int32)):
            raise ValueError(f"{sample_id} clip {clip_index}: frame_indices are not int32 integers")
        if set(splits) != set(self.protocols):
            raise ValueError(f"{sample_id}: split protocols {sorted(splits)} differ from the shard's "
                             f"{sorted(self.protocols)}")
        bad = {p: v for p, v in splits.items() if v not in PROTOCOL_VALUES}
        if bad:
            raise ValueError(f"{sample_id}: split values {bad} are not in {PROTOCOL_VALUES}")
        datasets, i = self._datasets, self.n_rows
        for name, value in row.items():
            datasets[name][i] = value
        datasets["labels"][i] = int(label)
        datasets["clip_index"][i] = int(clip_index)
        self._strings["sample_ids"].append(sample_id)
        self._strings[ACTIONS].append(str(action))
        for protocol, value in splits.items():
            self._split_values[protocol].append(value)
        self.n_rows += 1
        self._check_sink()

    def add_failure(self, sample_id: str, stage: str, reason: str) -> None:
        """Record a skipped sample; stored in the shard's ``failures`` dataset on close."""
        self.failures.append(failure_row((sample_id, stage, reason)))

    def close(self) -> None:
        """Trim every dataset to the rows written, store the strings and failures, close, record the file's
        size and sha256 beside ``record_as`` (``record_integrity``), and rename when atomic."""
        f, n = self._file, self.n_rows
        try:
            for ds in self._datasets.values():
                ds.resize(n, axis=0)
            for name, values in self._strings.items():
                create_checked(f, name, fixed_strings(values))
            group = f.create_group(SPLITS_GROUP)
            for protocol, values in self._split_values.items():
                create_checked(group, protocol, fixed_strings(values))
            failures = np.array(self.failures, dtype=object).reshape(-1, len(FAILURE_COLUMNS))
            create_checked(f, FAILURES, fixed_strings(failures))
            f.close()
            self._file = None
            self._sink.sync()
            self._check_sink()
            self._sink.close()
            record_integrity(self._write_path, self.record_as)
            if self.atomic:
                os.replace(self._write_path, self.path)
        except BaseException:
            self.abort()
            raise
        log.info("wrote %s: %d clips, %d failures", self.path, n, len(self.failures))

    def abort(self) -> None:
        """Close and delete the partial file, once, whatever state a write error left it in."""
        file, self._file = self._file, None
        try:
            if file is not None and file.id.valid:
                file.close()  # the sink swallows the writes of a failed file, so this close cannot fail in HDF5
        except (OSError, RuntimeError, ValueError) as error:  # nothing left to save: the caller reports its error
            log.debug("closing the discarded %s: %s", self._write_path, error)
        finally:
            self._sink.close()
            self._write_path.unlink(missing_ok=True)

    def _check_sink(self) -> None:
        """Raise the first write error of the file (a full disk, a file-size limit) as one line naming it."""
        if self._sink.error is not None:
            raise ShardWriteError(f"{self._write_path}: {self._sink.error.strerror or self._sink.error} "
                                  f"(errno {self._sink.error.errno}) while writing the shard") from self._sink.error


class ShardWriteError(OSError):
    """A shard file could not be written (a full disk, a file-size limit, an I/O error): the file is deleted."""


class FailSafeFile(io.FileIO):
    """The file HDF5 writes a shard through (h5py's ``fileobj`` driver): the first write error is kept in ``error``
    and every later write is accepted and dropped.

    HDF5 cannot recover from a write error of its own: its close flushes again, fails again and leaves the file open
    inside the library, which then crashes the interpreter (a segfault at exit, "closed twice"). Behind this sink
    HDF5 never sees the error, its state stays whole, and ``ShardWriter`` raises the kept error itself after the
    write and deletes the (garbage) file.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, "w+")
        self.error: OSError | None = None

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                written = self._write_some(view[done:])
            except OSError as error:
                self.error = error
                break
            if not written:
                self.error = OSError(errno.EIO, "the disk took no bytes")
                break
            done += written
        return len(view)

    def _write_some(self, view: memoryview) -> int:
        """One ``write`` of the OS (it may take part of ``view``)."""
        return super().write(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as error:
                self.error = error
        return self.tell() if size is None else size

    def flush(self) -> None:
        if self.error is None:
            try:
                super().flush()
            except OSError as error:
                self.error = error

    def sync(self) -> None:
        """``fsync``: a disk that fails late (a network filesystem, delayed allocation) says so here."""
        self.flush()
        if self.error is None:
            try:
                os.fsync(self.fileno())
            except OSError as error:
                self.error = error


@contextmanager
def fail_safe_h5(path: str | Path, **kwargs: Any) -> Iterator[h5py.File]:
    """An HDF5 file written through a ``FailSafeFile`` for the ``with`` block: a write error (a full disk) raises
    one ``ShardWriteError`` naming the file when the block ends, and the file is deleted, never closed twice."""
    path = Path(path)
    sink = FailSafeFile(path)
    file: h5py.File | None = None
    try:
        file = h5py.File(sink, "w", **kwargs)
        yield file
        file.close()
        file = None
        sink.sync()
        if sink.error is not None:
            raise ShardWriteError(f"{path}: {sink.error.strerror or sink.error} (errno {sink.error.errno}) while "
                                  "writing it") from sink.error
    except BaseException:
        try:
            if file is not None and file.id.valid:
                file.close()  # its writes go nowhere after an error, so this close cannot fail in HDF5
        except (OSError, RuntimeError, ValueError) as error:
            log.debug("closing the discarded %s: %s", path, error)
        sink.close()
        path.unlink(missing_ok=True)
        raise
    finally:
        sink.close()


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]], *, num_joints: int, t_p: int,
               attrs: Mapping[str, str], protocols: Sequence[str] = (),
               failures: Sequence[Sequence[str]] = (), **kwargs: Any) -> None:
    """Write a whole shard at once: ``rows`` are ``ShardWriter.append`` keyword arguments, ``failures`` its
    ``(sample_id, stage, reason)`` rows; ``kwargs`` go to ``ShardWriter`` (compression, atomic, ...)."""
    with ShardWriter(path, n_rows_max=len(rows), num_joints=num_joints, t_p=t_p, attrs=attrs,
                     protocols=protocols, **kwargs) as writer:
        for row in rows:
            writer.append(**row)
        for failure in failures:
            writer.add_failure(*failure)
