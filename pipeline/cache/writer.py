"""``ShardWriter``: stream clips into one cache shard file, one row at a time (peak memory: one clip)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.cache.format import (
    ACTIONS, CHECKSUM, DTYPES, FAILURES, FILE_KWARGS, METADATA_CHUNK_ROWS, SPLITS_GROUP, STRING_DATASETS,
    VIRTUAL_DATASETS, compression_kwargs, create_checked, fixed_strings, row_shapes,
)
from pipeline.contracts import CACHE_ATTRS, FAILURE_COLUMNS, PROTOCOL_VALUES
from pipeline.defaults import DEFAULT_COMPRESSION
from pipeline.cache.failures import failure_row
from pipeline.utils.fileio import temp_path
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE
from pipeline.cache.input_stats import INPUTS_ATTR
from pipeline.cache.integrity import record_integrity
from pipeline.cache.provenance import check_attrs

log = logging.getLogger(__name__)


class ShardWriter:
    """Stream clips into one shard file, one row at a time (peak memory: one clip).

    Use it as a context manager: a clean exit trims the datasets to the rows appended and closes the file
    (renaming it into place when ``atomic``); an exception deletes the partial file, so a crash never leaves
    a file at ``path``.

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
        self._file = h5py.File(self._write_path, "w", **FILE_KWARGS)
        try:
            self._create_datasets(attrs, compression)
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
            record_integrity(self._write_path, self.record_as)
            if self.atomic:
                os.replace(self._write_path, self.path)
        except BaseException:
            self.abort()
            raise
        log.info("wrote %s: %d clips, %d failures", self.path, n, len(self.failures))

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self._file.close()
        finally:
            self._write_path.unlink(missing_ok=True)


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
