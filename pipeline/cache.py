"""HDF5 feature cache: shard files written atomically, a merged virtual-dataset view, a reader, failures.csv.

Layout of one cache directory (``cache/<dataset>/<config-hash>/``)::

    shard_00000.h5 ... shard_000NN.h5   one file per shard task (``write_shard`` / ``ShardWriter``)
    cache.h5                            the merged view (``merge_shards``): features and poses are HDF5 virtual
                                        datasets over the shards, with source paths relative to this folder
    *.h5.integrity.json                 size, mtime and sha256 of each file above, recorded when it was written
    failures.csv                        every skipped sample of every shard (rebuilt by ``merge_shards``)

Every file holds one row per clip: the datasets of ``contracts.CACHE_DATASETS`` plus ``actions`` (action name
per row), ``splits/<protocol>`` (``train``/``val``/``test``/empty per row, so the cache is self-contained) and
``failures`` ((n, 3) strings ``sample_id, stage, reason``). Every file carries the attrs of
``contracts.CACHE_ATTRS``. In ``cache.h5`` the per-row metadata (ids, labels, splits, frame indices, boxes) is
copied, since it is small and read whole at open; only ``features`` and ``poses`` are virtual.

An HDF5 virtual dataset silently returns its fill value where a source file is missing, so ``open_cache``
checks every source shard of a merged view and raises ``CacheError`` naming the one that is missing or short.

Integrity: every dataset of every file is chunked with HDF5's Fletcher-32 filter (so strings are fixed-length UTF-8),
and every finished file has ``<name>.integrity.json`` beside it (size, mtime, sha256; ``record_integrity``). A read
that fails a checksum, or finds a non-finite feature or pose, raises ``CacheError`` naming the shard and the sample.
``check_integrity`` is the rerun's cheap check and, with ``full=True``, ``make verify``'s
(``python -m pipeline.cache verify PATH``). ``BuildLock`` keeps one build per cache folder.

Compression (``DEFAULT_COMPRESSION``), measured by ``bench/bench_cache.py`` on 2 CPU cores (see that file for
the data it uses). Size is the compressed features per clip (raw float16 is 784.0 KiB); write is
``write_shard``; read is ``read_features`` one clip at a time in random order, as float32 or float16, from one
shard or through the merged view, after reopening the file (HDF5 chunk cache cold, OS page cache warm)::

    compression               KiB/clip  ratio  write  read fp32  read fp32  read fp16
                                                  shard      merged     merged    (clips per CPU-second)
    none                         784.0   1.00    471       1127       1202       3259
    lzf                          331.1   2.37    164        299        292        381
    gzip-1                       279.3   2.81     99        263        251        314
    gzip-4                       261.5   3.00     78        257        218        281
    zstd-1  (default)            254.7   3.08    234        417        395        663
    zstd-3                       259.3   3.02    133        384        437        655
    zstd-9                       247.1   3.17     47        455        593       1007
    bshuf-lz4                    553.3   1.42    224        721        665       1089
    bshuf-zstd-3                 403.5   1.94    112        255        272        308
    blosc2-lz4-shuffle-5         407.5   1.92    211        568        676       1310
    blosc2-lz4-bitshuffle-5      583.3   1.34    229        651        628       1150
    blosc2-zstd-bitshuffle-3     401.7   1.95     84        376        359        528
    blosc2-zstd-shuffle-3        277.8   2.82     83        366        397        522

Data: real Mixed_5c features (rgb_scratch weights, CricketShot windows; 73% exact zeros, max 20), 64 clips
per codec in 4 shards, median of 3 interleaved passes. Per CPU-second because the 2-core machine was shared
(wall-clock rates were 2-3x lower; read figures moved by up to 30% between two runs, sizes not at all).
Exact zeros dominate, so plain zstd beats the bit/byte-shuffle codecs. ``zstd-1`` is within 3% of the
smallest (zstd-9) at 5x its write speed (NTU-120 at one clip per video: ~28 GiB instead of ~86 GiB raw),
and reads 1.5-2x faster than gzip. zstd-9 read as fast or faster in both runs but costs ~20 ms of CPU per
clip written, which would stall a GPU extractor; ``none`` reads ~3-5x faster per core but triples the disk
and page-cache footprint. Reading float16 (``dtype=np.float16``) and converting on the GPU skips the ~1 ms
float32 conversion per clip; DataLoader workers scale reads per core.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import re
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd/blosc2/bitshuffle filters before any file is opened)
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import __version__
from pipeline.contracts import (
    CACHE_ATTRS, CACHE_DATASETS, CLIP_FRAMES, FAILURE_COLUMNS, FEATURE_SHAPE, MAX_BODIES, PROTOCOL_VALUES,
)

log = logging.getLogger(__name__)

DEFAULT_COMPRESSION = "zstd-1"
MERGED_NAME = "cache.h5"
FAILURES_NAME = "failures.csv"
SPLITS_GROUP = "splits"
ACTIONS = "actions"
FAILURES = "failures"
VIRTUAL_DATASETS = ("features", "poses")
"""The bulky datasets that ``cache.h5`` maps from the shards; everything else is copied."""
STR_DTYPE = h5py.string_dtype("utf-8")
_DTYPES = {name: dtype for name, (dtype, _) in CACHE_DATASETS.items()}
STRING_DATASETS = ("sample_ids", ACTIONS)
"""Per-row string datasets (plus ``splits/<protocol>``): fixed-length UTF-8, written whole when a file closes."""
FILE_KWARGS: dict[str, Any] = {"libver": ("v110", "latest")}
"""HDF5 >= 1.10 file format: its object headers and B-trees carry their own checksums."""
CHECKSUM = {"fletcher32": True}
"""Every dataset of every cache file: HDF5 verifies each chunk's Fletcher-32 checksum on read."""
INTEGRITY_SUFFIX = ".integrity.json"
"""Beside every finished cache file: its byte size and sha256 when it was written (``record_integrity``)."""
HASH_BLOCK = 4 << 20


class CacheError(Exception):
    """A cache file is missing, unreadable, or does not match the contract."""


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _fixed_strings(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """UTF-8 bytes in a fixed-length HDF5 string array (filters such as fletcher32 need fixed-size elements)."""
    encoded = [str(v).encode("utf-8") for v in np.asarray(values, dtype=object).reshape(-1)]
    width = max([1, *(len(b) for b in encoded)])
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", width)).reshape(np.shape(values))


def _create_checked(group: h5py.Group, name: str, data: np.ndarray, **kwargs: Any) -> h5py.Dataset:
    """A chunked, Fletcher-32-checked dataset holding ``data`` (chunks of up to 4096 rows)."""
    rows = max(1, min(len(data), 4096))
    return group.create_dataset(name, data=data, chunks=(rows, *(max(1, d) for d in data.shape[1:])),
                                maxshape=(None, *data.shape[1:]), **CHECKSUM, **kwargs)


def row_shapes(num_joints: int, t_p: int) -> dict[str, tuple[int, ...]]:
    """Per-row shape of every dataset in ``CACHE_DATASETS`` for a dataset with ``num_joints`` joints."""
    return {
        "features": FEATURE_SHAPE,
        "poses": (MAX_BODIES, 3, num_joints, t_p),
        "sample_ids": (),
        "labels": (),
        "clip_index": (),
        "frame_indices": (CLIP_FRAMES,),
        "boxes": (4,),
    }


# ----------------------------------------------------------------------------------------------------------
# compression


def compression_kwargs(name: str) -> dict[str, Any]:
    """Translate a compression name into ``h5py.Group.create_dataset`` keyword arguments.

    Names: ``none``, ``lzf``, ``gzip-<1..9>`` (``gzip`` = ``gzip-1``), ``zstd-<level>``, ``bshuf-lz4``,
    ``bshuf-zstd-<level>``, ``blosc2-<lz4|lz4hc|zstd|blosclz>-<shuffle|bitshuffle>-<level>``. ``none`` and ``gzip`` open
    in any HDF5 tool, ``lzf`` in h5py; the others need the ``hdf5plugin`` filters.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf"}
    if m := re.fullmatch(r"gzip(?:-([1-9]))?", name):  # built into HDF5: opens without hdf5plugin
        return {"compression": "gzip", "compression_opts": int(m[1] or 1)}
    if m := re.fullmatch(r"zstd-(\d+)", name):
        return dict(hdf5plugin.Zstd(clevel=int(m[1])))
    if name == "bshuf-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if m := re.fullmatch(r"bshuf-zstd-(\d+)", name):
        return dict(hdf5plugin.Bitshuffle(cname="zstd", clevel=int(m[1])))
    if m := re.fullmatch(r"blosc2-(lz4|lz4hc|zstd|blosclz)-(shuffle|bitshuffle)-(\d)", name):
        shuffle = hdf5plugin.Blosc2.BITSHUFFLE if m[2] == "bitshuffle" else hdf5plugin.Blosc2.SHUFFLE
        return dict(hdf5plugin.Blosc2(cname=m[1], clevel=int(m[3]), filters=shuffle))
    raise ValueError(f"unknown compression {name!r}; use none, lzf, gzip-N, zstd-N, bshuf-lz4, bshuf-zstd-N "
                     "or blosc2-<codec>-<shuffle|bitshuffle>-N")


# ----------------------------------------------------------------------------------------------------------
# attrs


@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the repository holding this package, else the package version.

    Runs with ``GIT_OPTIONAL_LOCKS=0`` so that it never writes the index (no lock races with a commit). Asked
    once per process (the code a process runs does not change under it): ~10 ms per shard otherwise.
    """
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        return out.stdout.strip() or __version__
    except (OSError, subprocess.SubprocessError):
        return __version__


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of Python, HDF5 and the libraries that write or read the cache (from package metadata).

    Read once per process: package metadata lookups cost ~15 ms per shard otherwise (``bench/bench_scale.py``).
    Callers get the cached dict and must not modify it.
    """
    versions = {"python": platform.python_version(), "hdf5": h5py.version.hdf5_version}
    for package in ("torch", "numpy", "h5py", "hdf5plugin", "decord", "av", "opencv-python-headless"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def make_attrs(config: Mapping[str, Any] | Any, i3d_weights_sha256: str) -> dict[str, str]:
    """Build the ``CACHE_ATTRS`` of a cache file.

    Args:
        config: the full config (a mapping or a dataclass); stored as sorted JSON (paths become strings).
        i3d_weights_sha256: sha256 of the I3D weights file ("" for random init).

    Returns:
        One string per name in ``CACHE_ATTRS``.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return {
        "config_json": json.dumps(config, sort_keys=True, default=_json_default),
        "i3d_weights_sha256": i3d_weights_sha256,
        "versions_json": json.dumps(library_versions(), sort_keys=True),
        "code_version": code_version(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON serialisable")


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    missing = [name for name in CACHE_ATTRS if name not in attrs]
    if missing:
        raise ValueError(f"cache attrs lack {missing}; build them with make_attrs(config, i3d_weights_sha256)")
    for name in ("config_json", "versions_json"):
        try:
            json.loads(attrs[name])
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"cache attr {name} is not a JSON string: {err}") from err


# ----------------------------------------------------------------------------------------------------------
# writing shards


@dataclass
class ShardRecords:
    """What a shard task accumulates in memory before ``write_shard``: one entry per clip, plus failures.

    Fill it with ``add_clip``/``add_failure``, or assign preallocated arrays (length n) to the fields directly.
    """

    num_joints: int
    t_p: int
    protocols: tuple[str, ...] = ()
    features: list[np.ndarray] = field(default_factory=list)  # each (1024, 8, 7, 7) float16
    poses: list[np.ndarray] = field(default_factory=list)  # each (2, 3, J, t_p) float32
    sample_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    clip_index: list[int] = field(default_factory=list)
    frame_indices: list[np.ndarray] = field(default_factory=list)  # each (64,) int
    boxes: list[np.ndarray] = field(default_factory=list)  # each (4,) x0, y0, x1, y1
    splits: dict[str, list[str]] = field(default_factory=dict)  # protocol -> one value per clip
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.protocols = tuple(self.protocols or self.splits)
        if not self.splits:
            self.splits = {protocol: [] for protocol in self.protocols}
        if set(self.splits) != set(self.protocols):
            raise ValueError(f"splits has protocols {sorted(self.splits)}, protocols is {sorted(self.protocols)}")

    def __len__(self) -> int:
        return len(self.sample_ids)

    def add_clip(self, *, features: np.ndarray, poses: np.ndarray, sample_id: str, label: int, action: str,
                 clip_index: int, frame_indices: np.ndarray, box: np.ndarray, splits: Mapping[str, str]) -> None:
        """Append one clip (arguments as in ``ShardWriter.append``)."""
        if set(splits) != set(self.splits):
            raise ValueError(f"{sample_id}: split protocols {sorted(splits)} differ from the shard's "
                             f"{sorted(self.splits)}")
        self.features.append(features)
        self.poses.append(poses)
        self.sample_ids.append(sample_id)
        self.labels.append(label)
        self.actions.append(action)
        self.clip_index.append(clip_index)
        self.frame_indices.append(frame_indices)
        self.boxes.append(box)
        for protocol, value in splits.items():
            self.splits[protocol].append(value)

    def add_failure(self, sample_id: str, stage: str, reason: str) -> None:
        """Record a skipped sample."""
        self.failures.append((sample_id, stage, reason))


class ShardWriter:
    """Stream clips into one shard file, one row at a time (peak memory: one clip).

    Use it as a context manager: a clean exit trims the datasets to the rows appended and closes the file
    (renaming it into place when ``atomic``); an exception deletes the partial file, so a crash never leaves
    a file at ``path``. ``ShardWriter.open(...)`` is the same as ``ShardWriter(...)``.

    Args:
        path: the file to produce. A Luigi task passes its ``temporary_path()`` with ``atomic=False``.
        n_rows_max: capacity (videos x clips per video); appending more raises.
        num_joints: J of the dataset's skeleton.
        t_p: poses per clip.
        attrs: the ``CACHE_ATTRS`` (see ``make_attrs``).
        protocols: the protocol names whose split value every row carries.
        compression: a name accepted by ``compression_kwargs``, applied to features and poses.
        atomic: write ``<dir>/.<name>.tmp-*`` and ``os.replace`` it onto ``path`` on close.
        record_as: the final name the integrity record describes (default ``path``); a Luigi task writing its
            ``temporary_path()`` passes the output's path, so the record exists before the rename.
    """

    def __init__(self, path: str | Path, *, n_rows_max: int, num_joints: int, t_p: int,
                 attrs: Mapping[str, str], protocols: Sequence[str] = (),
                 compression: str = DEFAULT_COMPRESSION, atomic: bool = False, record_as: str | Path | None = None):
        _check_attrs(attrs)
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
        self._shapes = row_shapes(num_joints, t_p)
        self._write_path = _temp_path(self.path) if atomic else self.path
        self._write_path.parent.mkdir(parents=True, exist_ok=True)
        self._strings: dict[str, list[str]] = {name: [] for name in STRING_DATASETS}
        self._split_values: dict[str, list[str]] = {protocol: [] for protocol in self.protocols}
        self._file = h5py.File(self._write_path, "w", **FILE_KWARGS)
        try:
            self._create_datasets(attrs, compression)
        except BaseException:
            self.abort()
            raise

    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> ShardWriter:
        """Same as ``ShardWriter(path, **kwargs)``."""
        return cls(path, **kwargs)

    def _create_datasets(self, attrs: Mapping[str, str], compression: str) -> None:
        f, n = self._file, self.n_rows_max
        for name in CACHE_ATTRS:
            f.attrs[name] = str(attrs[name])
        bulky = compression_kwargs(compression)
        for name, shape in self._shapes.items():
            if name in STRING_DATASETS:
                continue
            chunk_rows = 1 if name in VIRTUAL_DATASETS else max(1, min(n, 4096))  # features/poses: one clip each
            f.create_dataset(name, shape=(n, *shape), maxshape=(None, *shape), dtype=_DTYPES[name],
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
            features: (1024, 8, 7, 7) Mixed_5c features (cast to float16; must stay finite).
            poses: (2, 3, J, t_p) float32 poses.
            sample_id: the manifest's sample id.
            label: the manifest's label (index into the dataset's full class list).
            action: the action name.
            clip_index: the clip's index within its video.
            frame_indices: (64,) source-frame index of every clip frame.
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
        self.failures.append(_failure_row((sample_id, stage, reason)))

    def close(self) -> None:
        """Trim every dataset to the rows written, store the strings and failures, close, record the file's
        size and sha256 beside ``record_as`` (``record_integrity``), and rename when atomic."""
        f, n = self._file, self.n_rows
        try:
            for ds in self._datasets.values():
                ds.resize(n, axis=0)
            for name, values in self._strings.items():
                _create_checked(f, name, _fixed_strings(values))
            group = f.create_group(SPLITS_GROUP)
            for protocol, values in self._split_values.items():
                _create_checked(group, protocol, _fixed_strings(values))
            failures = np.array(self.failures, dtype=object).reshape(-1, len(FAILURE_COLUMNS))
            _create_checked(f, FAILURES, _fixed_strings(failures))
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


def write_shard(path: str | Path, records: ShardRecords, *, attrs: Mapping[str, str],
                compression: str = DEFAULT_COMPRESSION, atomic: bool = False) -> None:
    """Write ``records`` as one shard file at ``path`` (a Luigi ``temporary_path()``, say).

    On any error the partial file is deleted. ``write_shard_atomic`` writes a temp file and renames it.

    Raises:
        ValueError: the records are inconsistent (lengths, shapes, split values) or attrs are incomplete.
    """
    n = len(records)
    lengths = {name: len(getattr(records, name)) for name in
               ("features", "poses", "labels", "actions", "clip_index", "frame_indices", "boxes")}
    lengths.update({f"splits/{p}": len(v) for p, v in records.splits.items()})
    wrong = {name: length for name, length in lengths.items() if length != n}
    if wrong:
        raise ValueError(f"ShardRecords fields disagree with {n} sample_ids: {wrong}")
    with ShardWriter(path, n_rows_max=n, num_joints=records.num_joints, t_p=records.t_p, attrs=attrs,
                     protocols=tuple(records.splits), compression=compression, atomic=atomic) as writer:
        for i in range(n):
            writer.append(features=records.features[i], poses=records.poses[i], sample_id=records.sample_ids[i],
                          label=records.labels[i], action=records.actions[i], clip_index=records.clip_index[i],
                          frame_indices=records.frame_indices[i], box=records.boxes[i],
                          splits={p: v[i] for p, v in records.splits.items()})
        for row in records.failures:
            writer.add_failure(*row)


def write_shard_atomic(path: str | Path, records: ShardRecords, *, attrs: Mapping[str, str],
                       compression: str = DEFAULT_COMPRESSION) -> None:
    """``write_shard`` into a temp file beside ``path``, then ``os.replace`` it onto ``path``."""
    write_shard(path, records, attrs=attrs, compression=compression, atomic=True)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


# ----------------------------------------------------------------------------------------------------------
# reading


class CacheReader:
    """Read a cache file (a shard or the merged ``cache.h5``) row by row.

    Per-row metadata (ids, labels, clip indices, actions, splits, frame indices, boxes) is loaded at open;
    features and poses are read one row (one chunk) at a time, or all at once after ``load_all_into_memory``.
    The HDF5 handle is reopened lazily in a new process, so a reader can be shared with DataLoader workers.

    Raises:
        CacheError: missing or unreadable file, missing dataset or attr, shape or dtype off the contract,
            or (for a merged view) a source shard that is missing or shorter than the view expects.
    """

    def __init__(self, path: str | Path, *, in_memory: bool = False):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid = -1
        self._memory: dict[str, np.ndarray] = {}
        f = self._h5()
        try:
            self._validate(f)
            self.raw_attrs = {name: _attr_str(f.attrs[name]) for name in CACHE_ATTRS}
            self.attrs: dict[str, Any] = {name: json.loads(value) if name.endswith("_json") else value
                                          for name, value in self.raw_attrs.items()}
            self.num_joints, self.t_p = f["poses"].shape[3:]
            self.is_merged = f["features"].is_virtual
            self.sample_ids = _strings(f["sample_ids"])
            self.actions = _strings(f[ACTIONS])
            self.labels = f["labels"][()]
            self.clip_index = f["clip_index"][()]
            self.frame_indices = f["frame_indices"][()]
            self.boxes = f["boxes"][()]
            self._splits = {name: _strings(ds) for name, ds in f[SPLITS_GROUP].items()}
            self.failures = pd.DataFrame(_strings(f[FAILURES]).reshape(-1, len(FAILURE_COLUMNS)),
                                         columns=list(FAILURE_COLUMNS))
        except (OSError, KeyError, ValueError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
            self.close()
            raise CacheError(f"{self.path}: unreadable cache file ({type(err).__name__}: {err})") from err
        except CacheError:
            self.close()
            raise
        if in_memory:
            self.load_all_into_memory()

    # -- opening and validation

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = _open_h5(self.path)
            self._pid = os.getpid()
            self._datasets: dict[str, h5py.Dataset] = {}
        return self._file

    def _dataset(self, name: str) -> h5py.Dataset:
        f = self._h5()
        if name not in self._datasets:
            self._datasets[name] = f[name]
        return self._datasets[name]

    def _validate(self, f: h5py.File) -> None:
        where = self.path
        missing = [d for d in (*CACHE_DATASETS, ACTIONS, FAILURES, SPLITS_GROUP) if d not in f]
        if missing:
            raise CacheError(f"{where}: missing datasets {missing}")
        missing_attrs = [a for a in CACHE_ATTRS if a not in f.attrs]
        if missing_attrs:
            raise CacheError(f"{where}: missing attrs {missing_attrs}")
        poses = f["poses"].shape
        if len(poses) != 5 or poses[1:3] != (MAX_BODIES, 3):
            raise CacheError(f"{where}: poses has shape {poses}, expected (N, {MAX_BODIES}, 3, J, t_p)")
        n = f["features"].shape[0] if f["features"].ndim else -1
        for dname, shape in row_shapes(poses[3], poses[4]).items():
            ds = f[dname]
            if ds.shape != (n, *shape):
                raise CacheError(f"{where}: {dname} has shape {ds.shape}, expected {(n, *shape)}")
            if dname == "sample_ids":
                _check_str(where, dname, ds)
            elif ds.dtype != np.dtype(_DTYPES[dname]):
                raise CacheError(f"{where}: {dname} has dtype {ds.dtype}, expected {_DTYPES[dname]}")
        others = [f[ACTIONS], *f[SPLITS_GROUP].values()]
        for ds in others:
            if ds.shape != (n,):
                raise CacheError(f"{where}: {ds.name} has shape {ds.shape}, expected ({n},)")
            _check_str(where, ds.name, ds)
        if f[FAILURES].ndim != 2 or f[FAILURES].shape[1] != len(FAILURE_COLUMNS):
            raise CacheError(f"{where}: failures has shape {f[FAILURES].shape}, expected (n, 3)")
        self._sources = _check_virtual_sources(self.path, f)

    # -- metadata

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols whose split column the cache carries."""
        return tuple(self._splits)

    def splits(self, protocol: str) -> np.ndarray:
        """``train``/``val``/``test``/empty for every row under ``protocol``."""
        if protocol not in self._splits:
            raise CacheError(f"{self.path}: no split column for protocol {protocol!r}; it has {self.protocols}")
        return self._splits[protocol]

    # -- bulk data

    def _check_index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {self.path.name} with {len(self)} rows")
        return int(i) % len(self)

    def read_features(self, i: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Features of row ``i``: (1024, 8, 7, 7), one chunk read.

        Args:
            i: the row.
            dtype: float32 (default), or float16 as stored (half the bytes; convert on the GPU instead).
        """
        row = self._read_row("features", self._check_index(i))
        return float16_to_float32(row) if np.dtype(dtype) == np.float32 else row.astype(dtype, copy=False)

    def read_poses(self, i: int) -> np.ndarray:
        """Poses of row ``i``: float32 (2, 3, J, t_p)."""
        return self._read_row("poses", self._check_index(i))

    def _read_row(self, name: str, i: int) -> np.ndarray:
        """Row ``i`` of ``features`` or ``poses``; a chunk that fails its checksum or holds a non-finite value
        raises ``CacheError`` naming the file the row lives in and the row's sample."""
        if name in self._memory:
            return self._memory[name][i].copy()
        ds = self._dataset(name)
        out = np.empty(ds.shape[1:], dtype=ds.dtype)
        try:
            ds.read_direct(out, source_sel=np.s_[i])
        except OSError as err:
            raise CacheError(f"{self.shard_of(i)}: cannot read {name} of row {i} ({self.sample_ids[i]}): {err}; "
                             "the file is corrupt: run `make verify`, then `make cache` rebuilds it") from None
        self._check_finite(name, out, i)
        return out

    def _check_finite(self, name: str, values: np.ndarray, first_row: int) -> None:
        """Raise unless ``values`` (one row, or rows from ``first_row`` on) are all finite; names the first bad row.

        Cheap: float16 by its exponent bits (one pass, no float conversion)."""
        if values.dtype == np.float16:
            finite = (values.view(np.uint16) & 0x7C00) != 0x7C00
        else:
            finite = np.isfinite(values)
        if finite.all():
            return
        per_row = finite.reshape(-1, int(np.prod(self._dataset(name).shape[1:]))).all(axis=1)
        i = first_row + int(np.flatnonzero(~per_row)[0])
        raise CacheError(f"{self.shard_of(i)}: non-finite {name} in row {i} ({self.sample_ids[i]}); the cache is "
                         "damaged: run `make verify`, then `make cache` rebuilds what is bad")

    def shard_of(self, i: int) -> Path:
        """The file row ``i`` is stored in: the shard behind a merged view, else this file."""
        for start, stop, source in self._sources:
            if start <= i < stop:
                return source
        return self.path

    def read_rows(self, indices: Sequence[int] | np.ndarray,
                  dtype: np.dtype | type = np.float32) -> dict[str, np.ndarray]:
        """A batch of rows, in the order given (features as ``dtype``, see ``read_features``).

        Returns:
            ``features`` (B, 1024, 8, 7, 7), ``poses`` float32 (B, 2, 3, J, t_p), ``labels`` (B,),
            ``sample_ids`` (B,), ``clip_index`` (B,), ``frame_indices`` (B, 64), ``boxes`` (B, 4).
        """
        rows = np.array([self._check_index(i) for i in indices], dtype=np.int64)
        features = np.empty((len(rows), *FEATURE_SHAPE), dtype=dtype)  # (B, 1024, 8, 7, 7)
        poses = np.empty((len(rows), MAX_BODIES, 3, self.num_joints, self.t_p), dtype=np.float32)
        for k, i in enumerate(rows):
            row = self._read_row("features", i)
            if features.dtype == np.float32:
                float16_to_float32(row, out=features[k])
            else:
                features[k] = row
            poses[k] = self._read_row("poses", i)
        return {"features": features, "poses": poses, "labels": self.labels[rows],
                "sample_ids": self.sample_ids[rows], "clip_index": self.clip_index[rows],
                "frame_indices": self.frame_indices[rows], "boxes": self.boxes[rows]}

    def load_all_into_memory(self) -> None:
        """Read features (kept float16) and poses whole; later reads come from memory."""
        for name in VIRTUAL_DATASETS:
            ds = self._dataset(name)
            values = np.empty(ds.shape, dtype=ds.dtype)
            for start, stop in _blocks(len(self)):  # block by block, so an error names its row
                try:
                    ds.read_direct(values, source_sel=np.s_[start:stop], dest_sel=np.s_[start:stop])
                except OSError:  # find the row, for an error naming its shard and sample
                    for i in range(start, stop):
                        values[i] = self._read_row(name, i)
                    raise
                self._check_finite(name, values[start:stop], start)
            self._memory[name] = values
        log.info("%s: loaded %d rows into memory (%.1f MiB)", self.path, len(self),
                 sum(a.nbytes for a in self._memory.values()) / 2**20)

    # -- lifetime

    def close(self) -> None:
        """Close the HDF5 file (memory-loaded arrays stay usable)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"], state["_datasets"] = None, -1, {}
        return state


def _blocks(n: int, size: int = 64) -> list[tuple[int, int]]:
    return [(start, min(n, start + size)) for start in range(0, n, size)]


_FLOAT16_TO_FLOAT32 = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def float16_to_float32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Exact float16 -> float32 by table lookup (3x faster than numpy's cast on our CPUs).

    Args:
        x: float16 array.
        out: optional contiguous float32 array of ``x``'s shape to write into.
    """
    return np.take(_FLOAT16_TO_FLOAT32, x.view(np.uint16), out=out)


def open_cache(path: str | Path, *, in_memory: bool = False) -> CacheReader:
    """Open a merged ``cache.h5``, a single shard, or a cache directory (its ``cache.h5``).

    Raises:
        CacheError: see ``CacheReader``.
    """
    path = Path(path)
    if path.is_dir():
        merged = path / MERGED_NAME
        if not merged.exists():
            shards = sorted(p.name for p in path.glob("*.h5"))
            raise CacheError(f"{path} has no {MERGED_NAME} (shards present: {len(shards)}); run the merge step")
        path = merged
    return CacheReader(path, in_memory=in_memory)


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise CacheError(f"{path}: cache file does not exist")
    if not path.is_file():
        raise CacheError(f"{path}: not a file")
    try:
        if not h5py.is_hdf5(path):
            raise CacheError(f"{path}: not an HDF5 file (corrupt or truncated)")
        return h5py.File(path, "r")
    except OSError as err:
        raise CacheError(f"{path}: cannot open as HDF5 ({err})") from err


def _check_virtual_sources(path: Path, f: h5py.File) -> list[tuple[int, int, Path]]:
    """Raise if a source shard of a virtual dataset in ``f`` is missing or shorter than its mapping.

    HDF5 resolves a relative source name against the virtual file's folder, so that is where we look.
    Opening a virtual dataset costs time in proportion to its mappings (one per shard), so each is opened once:
    ``f[name]`` inside the per-shard loop made opening a 573-shard view quadratic (``bench/bench_scale.py``).

    Returns:
        ``(first_row, stop_row, shard)`` of every features mapping, so a read error can name its shard.
    """
    row_shape = {name: f[name].shape[1:] for name in VIRTUAL_DATASETS}
    needed: dict[str, dict[str, int]] = {}  # file name -> dataset -> rows mapped
    spans: list[tuple[int, int, Path]] = []
    for name in VIRTUAL_DATASETS:
        dataset = f[name]
        if not dataset.is_virtual:
            continue
        for vmap in dataset.virtual_sources():
            start, stop = vmap.vspace.get_select_bounds()
            if vmap.src_space.get_select_type() == h5py.h5s.SEL_ALL:  # the whole source fills this slab
                extent = stop[0] - start[0] + 1
            else:
                extent = vmap.src_space.get_select_bounds()[1][0] + 1
            rows = needed.setdefault(vmap.file_name, {})
            rows[vmap.dset_name] = max(rows.get(vmap.dset_name, 0), extent)
            if name == "features":
                spans.append((start[0], stop[0] + 1, _source_path(path, vmap.file_name)))
    for file_name, datasets in needed.items():
        source = _source_path(path, file_name)
        if not source.exists():
            raise CacheError(f"{path}: the view maps missing shard {source} (HDF5 would silently read fill "
                             "values there); rebuild that shard and re-merge")
        with _open_h5(source) as src:
            for name, rows in datasets.items():
                if name not in src or src[name].shape[0] < rows or src[name].shape[1:] != row_shape[name]:
                    found = src[name].shape if name in src else "nothing"
                    raise CacheError(f"{path}: shard {source} holds {found} at {name}, the view maps {rows} rows "
                                     f"of {row_shape[name]}; the shard changed after the merge, re-merge")
    return sorted(spans, key=lambda span: span[0])


def _source_path(view: Path, file_name: str) -> Path:
    return Path(file_name) if Path(file_name).is_absolute() else view.parent / file_name


def _check_str(path: Path, name: str, ds: h5py.Dataset) -> None:
    info = h5py.check_string_dtype(ds.dtype)
    if info is None or info.encoding != "utf-8":
        raise CacheError(f"{path}: {name} has dtype {ds.dtype}, expected utf-8 strings")


def _strings(ds: h5py.Dataset) -> np.ndarray:
    values = ds.asstr()[()]
    return np.asarray(values, dtype=str) if values.size else np.zeros(values.shape, dtype=str)


def _attr_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------------------------------------
# merging


def merge_shards(shard_paths: Sequence[str | Path], out_path: str | Path) -> None:
    """Merge shard files into ``out_path`` (``cache.h5``) and rewrite ``failures.csv`` beside it.

    ``features`` and ``poses`` become virtual datasets mapping each shard's rows in the order given, with
    source paths relative to ``out_path``'s folder (move the folder freely). Per-row metadata is copied.
    Zero-row shards contribute only their failures. Both outputs are written atomically; rerunning is
    idempotent.

    Raises:
        CacheError: no shards; a shard unreadable or off the contract; shards disagree on config_json,
            i3d_weights_sha256, pose shape or protocols; a (sample_id, clip_index) appears twice.
    """
    out_path = Path(out_path)
    if not shard_paths:
        raise CacheError(f"{out_path}: no shards to merge")
    readers = [CacheReader(p) for p in tqdm(shard_paths, desc="merge", unit="shard", leave=False)]
    try:
        for reader in readers:
            if reader.is_merged or reader.path.resolve() == out_path.resolve():
                raise CacheError(f"{reader.path} is a merged view, not a shard; merge the shard files themselves")
        _check_shards_agree(readers)
        failures = pd.concat([r.failures for r in readers], ignore_index=True)
        tmp = _temp_path(out_path)
        try:
            with h5py.File(tmp, "w", **FILE_KWARGS) as f:
                _write_merged(f, readers, out_path.parent)
            record_integrity(tmp, out_path)
            os.replace(tmp, out_path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        for reader in readers:
            reader.close()
    write_failures(out_path.parent / FAILURES_NAME, failures.itertuples(index=False, name=None))
    log.info("merged %d shards into %s: %d clips, %d failures", len(readers), out_path,
             sum(len(r) for r in readers), len(failures))


def _reference(readers: list[CacheReader]) -> CacheReader:
    """The first shard with rows (zero-row shards may lack split protocols), else the first."""
    return next((r for r in readers if len(r)), readers[0])


def _check_shards_agree(readers: list[CacheReader]) -> None:
    first = _reference(readers)
    for reader in readers:
        if reader.attrs["config_json"] != first.attrs["config_json"]:
            a, b = first.attrs["config_json"], reader.attrs["config_json"]
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if isinstance(a, dict) else []
            detail = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:5])
            raise CacheError(f"config_json of {reader.path.name} differs from {first.path.name} ({detail}); "
                             "shards of one cache must come from one config")
        if reader.attrs["i3d_weights_sha256"] != first.attrs["i3d_weights_sha256"]:
            raise CacheError(f"i3d_weights_sha256 of {reader.path.name} differs from {first.path.name}")
        if (reader.num_joints, reader.t_p) != (first.num_joints, first.t_p):
            raise CacheError(f"poses of {reader.path.name} are (J={reader.num_joints}, t_p={reader.t_p}), "
                             f"{first.path.name} has (J={first.num_joints}, t_p={first.t_p})")
        if len(reader) and set(reader.protocols) != set(first.protocols):
            raise CacheError(f"{reader.path.name} has split protocols {sorted(reader.protocols)}, "
                             f"{first.path.name} has {sorted(first.protocols)}")
    keys = pd.Series([f"{s}#{c}" for r in readers for s, c in zip(r.sample_ids, r.clip_index)])
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        raise CacheError(f"{len(duplicated)} (sample_id, clip_index) pairs occur more than once across the shards, "
                         f"e.g. {duplicated.iloc[0]}")
    if len({r.attrs["code_version"] for r in readers}) > 1:
        log.warning("shards were written by different code versions: %s",
                    sorted({r.attrs["code_version"] for r in readers}))


def _write_merged(f: h5py.File, readers: list[CacheReader], folder: Path) -> None:
    first = _reference(readers)
    n = sum(len(r) for r in readers)
    for name in CACHE_ATTRS:
        f.attrs[name] = first.raw_attrs[name]
    f.attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    shapes = row_shapes(first.num_joints, first.t_p)
    for name in VIRTUAL_DATASETS:
        dtype = _DTYPES[name]
        if n == 0:
            f.create_dataset(name, shape=(0, *shapes[name]), dtype=dtype)
            continue
        layout = h5py.VirtualLayout(shape=(n, *shapes[name]), dtype=dtype)
        start = 0
        for reader in readers:
            if len(reader):
                source = os.path.relpath(reader.path.resolve(), folder.resolve())
                layout[start:start + len(reader)] = h5py.VirtualSource(
                    source, name, shape=(len(reader), *shapes[name]), dtype=dtype)
                start += len(reader)
        f.create_virtual_dataset(name, layout, fillvalue=np.nan)
    _create_checked(f, "sample_ids", _fixed_strings(np.concatenate([r.sample_ids for r in readers])))
    for name in ("labels", "clip_index", "frame_indices", "boxes"):
        _create_checked(f, name, np.concatenate([getattr(r, name) for r in readers]).astype(_DTYPES[name]))
    _create_checked(f, ACTIONS, _fixed_strings(np.concatenate([r.actions for r in readers])))
    group = f.create_group(SPLITS_GROUP)
    for protocol in first.protocols:
        values = [np.zeros(0, dtype=str), *(r.splits(protocol) for r in readers if len(r))]
        _create_checked(group, protocol, _fixed_strings(np.concatenate(values)))
    failures = np.concatenate([r.failures.to_numpy(dtype=object) for r in readers]).reshape(-1, 3)
    _create_checked(f, FAILURES, _fixed_strings(failures))


# ----------------------------------------------------------------------------------------------------------
# integrity


def integrity_path(path: str | Path) -> Path:
    """Where the integrity record of cache file ``path`` lives: ``<name>.integrity.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + INTEGRITY_SUFFIX)


def record_integrity(written: str | Path, final: str | Path) -> None:
    """Record the size, modification time and sha256 of ``written`` as those of ``final`` (the same bytes, before
    a rename onto ``final``), atomically."""
    written, final = Path(written), Path(final)
    stat = written.stat()
    _write_record(final, {"file": final.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                          "sha256": file_sha256(written)})


def _write_record(final: Path, record: dict[str, Any]) -> None:
    target = integrity_path(final)
    tmp = _temp_path(target)
    try:
        tmp.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_integrity(path: str | Path, *, full: bool = False, adopt_legacy: bool = False) -> str:
    """Check a cache file against its integrity record; return "" when it matches, else what is wrong.

    Cheap check (``full=False``, what a rerun of ``make cache`` does): the size must match the record, and the
    sha256 is recomputed only when the modification time differs from the record (a file changed by a program;
    a file copied without its times is hashed once and its record updated). Full check (``make verify``): the
    sha256 always, then every chunk of every dataset is read, so HDF5 verifies its Fletcher-32 checksums, and
    features and poses must be finite. ``adopt_legacy`` (what a rerun does): a file without a record, written by
    a version before integrity records (its shards were renamed into place only when complete), is read back
    whole once and recorded when every chunk reads and every value is finite, instead of being rebuilt.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        record = json.loads(integrity_path(path).read_text(encoding="utf-8"))
        size, mtime_ns, sha256 = int(record["bytes"]), int(record["mtime_ns"]), str(record["sha256"])
    except FileNotFoundError:
        if adopt_legacy:  # a finished file from before integrity records: read it all once, then record it
            problem = _read_every_chunk(path)
            if problem:
                return f"no integrity record and a full read fails: {problem}"
            record_integrity(path, path)
            log.warning("%s predates integrity records: read back whole, recorded as it is", path)
            return ""
        return f"no integrity record {integrity_path(path).name} (written before checksums, or interrupted)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable integrity record {integrity_path(path).name} ({type(err).__name__}: {err})"
    stat = path.stat()
    if stat.st_size != size:
        return f"{stat.st_size} bytes, {size} recorded (truncated or overwritten)"
    if full or stat.st_mtime_ns != mtime_ns:
        if file_sha256(path) != sha256:
            return "sha256 differs from the one recorded when it was written (bytes changed)"
        if stat.st_mtime_ns != mtime_ns:  # same bytes with a new time (a copy): hash once, not on every run
            _write_record(path, {**record, "mtime_ns": stat.st_mtime_ns})
    return _read_every_chunk(path) if full else ""


def _read_every_chunk(path: Path) -> str:
    """Read every stored chunk of every dataset (virtual ones are their shards' business); "" or the problem."""
    problems: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if problems or not isinstance(obj, h5py.Dataset) or obj.is_virtual or obj.size == 0:
            return
        for chunk in (obj.iter_chunks() if obj.chunks else [()]):
            try:
                values = obj[chunk]
            except OSError as err:
                problems.append(f"dataset {name}, chunk {chunk}: {err}")
                return
            if name in VIRTUAL_DATASETS and not np.isfinite(values).all():
                problems.append(f"dataset {name}, chunk {chunk}: non-finite values")
                return

    try:
        with _open_h5(path) as f:
            f.visititems(visit)
    except (CacheError, OSError) as err:
        return str(err)
    return "; ".join(problems)


def cache_folders(path: str | Path) -> list[Path]:
    """The cache folders at or under ``path`` (a folder holding shards or ``cache.h5``, or a cache root)."""
    path = Path(path)
    if path.is_file():
        return [path.parent]
    return sorted({p.parent for pattern in ("shard_*.h5", MERGED_NAME) for p in path.rglob(pattern)})


def verify_folder(folder: str | Path) -> dict[Path, str]:
    """Full check (``check_integrity(full=True)``) of every shard and the merged view of one cache folder, and of
    the view's mapping onto its shards; returns the bad files with what is wrong."""
    folder = Path(folder)
    bad = {}
    for path in sorted(folder.glob("shard_*.h5")) + sorted(folder.glob(MERGED_NAME)):
        problem = check_integrity(path, full=True)
        if problem:
            bad[path] = problem
    merged = folder / MERGED_NAME
    if merged.exists() and not bad:  # a bad shard already explains a view that does not open
        try:
            CacheReader(merged).close()
        except CacheError as err:
            bad[merged] = str(err)
    return bad


LOCK_NAME = ".build.lock"


class CacheBusyError(CacheError):
    """Another process holds the cache folder's build lock."""


class BuildLock:
    """An exclusive, non-blocking ``flock`` on ``<cache_dir>/.build.lock``: one cache build per folder at a time.

    The kernel drops the lock when its holder exits, ``kill -9`` included, so a stale lock cannot outlive a run.
    The file holds the holder's host, pid and start time for the message a second run prints.

    Raises:
        CacheBusyError: on ``__enter__``, when another process holds the lock.
    """

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / LOCK_NAME
        self._fd = -1

    def __enter__(self) -> BuildLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise CacheBusyError(f"{self.path.parent} is being built by {holder}; wait for it to finish "
                                 "(or use a luigid scheduler, SCHEDULER=host:port, to share the work)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()} since "
                      f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = -1


# ----------------------------------------------------------------------------------------------------------
# failures


def _failure_row(row: Sequence[Any]) -> tuple[str, str, str]:
    if len(row) != len(FAILURE_COLUMNS):
        raise ValueError(f"a failure row needs {FAILURE_COLUMNS}, got {tuple(row)!r}")
    sample_id, stage, reason = (str(v) for v in row)
    if not sample_id or not stage:
        raise ValueError(f"a failure row needs a sample_id and a stage, got {tuple(row)!r}")
    return sample_id, stage, reason


def append_failures(path: str | Path, rows: Sequence[Sequence[Any]]) -> None:
    """Append ``(sample_id, stage, reason)`` rows to a failures.csv, writing the header when it is new.

    Safe with concurrent writers: one locked, O_APPEND write per call.
    """
    rows = [_failure_row(r) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if os.fstat(fd).st_size == 0:
            writer.writerow(FAILURE_COLUMNS)
        writer.writerows(rows)
        os.write(fd, buffer.getvalue().encode("utf-8"))
    finally:
        os.close(fd)


def write_failures(path: str | Path, rows: Any) -> None:
    """Replace ``path`` atomically with a failures.csv holding exactly ``rows`` (header only when none)."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(FAILURE_COLUMNS)
            writer.writerows(_failure_row(r) for r in rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_failures(path: str | Path) -> pd.DataFrame:
    """Read a failures.csv into a DataFrame of strings with columns ``FAILURE_COLUMNS``.

    Raises:
        CacheError: the file is missing or its header is not ``sample_id,stage,reason``.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: failures file does not exist")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(frame.columns) != FAILURE_COLUMNS:
        raise CacheError(f"{path}: header is {tuple(frame.columns)}, expected {FAILURE_COLUMNS}")
    return frame


def read_shard_failures(path: str | Path) -> pd.DataFrame:
    """The failures stored inside one shard (or merged) file, as ``read_failures`` returns them."""
    with _open_h5(Path(path)) as f:
        if FAILURES not in f:
            raise CacheError(f"{path}: missing dataset {FAILURES}")
        values = _strings(f[FAILURES]).reshape(-1, len(FAILURE_COLUMNS))
    return pd.DataFrame(values, columns=list(FAILURE_COLUMNS))


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.cache verify PATH``: full check of every cache file at or under PATH, no rebuild.

    Prints one line per bad file and exits 1 when there is one; 2 when PATH holds no cache.
    """
    import argparse
    import sys
    import time

    parser = argparse.ArgumentParser(prog="python -m pipeline.cache", description=main.__doc__.split("\n")[0])
    parser.add_argument("command", choices=("verify",))
    parser.add_argument("path", help="a cache folder, a cache root (every cache under it) or a cache file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folders = cache_folders(args.path)
    if not folders:
        print(f"error: no cache (shard_*.h5 or {MERGED_NAME}) at or under {args.path}", file=sys.stderr)
        return 2
    start, n_files, n_bad = time.perf_counter(), 0, 0
    for folder in folders:
        n_files += len(list(folder.glob("shard_*.h5"))) + (folder / MERGED_NAME).exists()
        for path, problem in verify_folder(folder).items():
            print(f"BAD {path}: {problem}")
            n_bad += 1
    verdict = f"{n_bad} bad; `make cache` with the same settings rebuilds them" if n_bad else "all good"
    print(f"verified {n_files} files in {len(folders)} cache folder(s) in {time.perf_counter() - start:.1f} s: "
          f"{verdict}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
