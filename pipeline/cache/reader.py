"""Reading the HDF5 feature cache: ``open_cache`` / ``CacheReader``, and the check of a merged view's source shards.

A cache folder (``pipeline.cache.layout``) holds one file per shard (``pipeline.cache.writer.ShardWriter``) and the
merged view ``cache.h5`` (``pipeline.cache.merge.merge_shards``): there ``features`` and ``poses`` are HDF5
virtual datasets over the shards, with source paths relative to the folder, and the small per-row metadata (ids,
labels, splits, frame indices, boxes) is copied, since it is read whole at open. The file format is in
``pipeline.cache.format``; integrity records in ``pipeline.cache.integrity``.

An HDF5 virtual dataset silently returns its fill value where a source file is missing, so ``open_cache``
checks every source shard of a merged view and raises ``CacheError`` naming the one that is missing or short.
A read that fails a checksum, or finds a non-finite feature or pose, raises ``CacheError`` naming the shard and
the sample.

Reading float16 (``dtype=np.float16``) and converting on the GPU skips the float32 conversion per clip;
DataLoader workers scale reads per core (``bench/bench_cache.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from pipeline.cache.format import (
    ACTIONS,
    DTYPES,
    FAILURES,
    SPLITS_GROUP,
    VIRTUAL_DATASETS,
    attr_str,
    check_str,
    open_h5,
    row_shapes,
    strings,
)
from pipeline.cache.layout import MERGED_NAME, CacheError
from pipeline.contracts import CACHE_ATTRS, CACHE_DATASETS, FAILURE_COLUMNS, MAX_BODIES
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE
from pipeline.utils.per_process import PerProcess

__all__ = ["MERGED_NAME", "CacheError", "CacheReader", "float16_to_float32", "open_cache"]

log = logging.getLogger(__name__)


class _OpenFile:
    """One process's open cache file and the datasets looked up in it so far."""

    def __init__(self, path: Path) -> None:
        self.file = open_h5(path)
        self._datasets: dict[str, h5py.Dataset] = {}

    def dataset(self, name: str) -> h5py.Dataset:
        if name not in self._datasets:
            self._datasets[name] = self.file[name]
        return self._datasets[name]

    def close(self) -> None:
        self.file.close()


class CacheReader:
    """Read a cache file (a shard or the merged ``cache.h5``) row by row.

    Per-row metadata (ids, labels, clip indices, actions, splits, frame indices, boxes) is loaded at open;
    features and poses are read one row (one chunk) at a time, or all at once after ``load_all_into_memory``.
    The HDF5 handle is a ``PerProcess``: reopened lazily in a new process, so a reader can be shared with
    DataLoader workers.

    Raises:
        CacheError: missing or unreadable file, missing dataset or attr, shape or dtype off the contract,
            or (for a merged view) a source shard that is missing or shorter than the view expects.
    """

    def __init__(self, path: str | Path, *, in_memory: bool = False):
        self.path = Path(path)
        self._handle: PerProcess[_OpenFile] = PerProcess(partial(_OpenFile, self.path))
        self._memory: dict[str, np.ndarray] = {}
        try:
            f = self._handle.get().file
            self._validate(f)
            self.raw_attrs = {name: attr_str(f.attrs[name]) for name in CACHE_ATTRS}
            self.attrs: dict[str, Any] = {name: json.loads(value) if name.endswith("_json") else value
                                          for name, value in self.raw_attrs.items()}
            self.num_joints, self.t_p = f["poses"].shape[3:]
            self.clip_len = f["frame_indices"].shape[1]
            self.feature_shape: tuple[int, ...] = f["features"].shape[1:]
            self.is_merged = f["features"].is_virtual
            self.sample_ids = strings(f["sample_ids"])
            self.actions = strings(f[ACTIONS])
            self.labels = f["labels"][()]
            self.clip_index = f["clip_index"][()]
            self.frame_indices = f["frame_indices"][()]
            self.boxes = f["boxes"][()]
            self._splits = {name: strings(ds) for name, ds in f[SPLITS_GROUP].items()}
            self.failures = pd.DataFrame(strings(f[FAILURES]).reshape(-1, len(FAILURE_COLUMNS)),
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

    def _dataset(self, name: str) -> h5py.Dataset:
        return self._handle.get().dataset(name)

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
        config = json.loads(attr_str(f.attrs["config_json"]))
        sizes = config if isinstance(config, dict) else {}
        shapes = row_shapes(poses[3], poses[4], sizes.get("clip_len", CLIP_FRAMES), sizes.get("crop_size", CROP_SIZE))
        for dname, shape in shapes.items():
            ds = f[dname]
            if ds.shape != (n, *shape):
                raise CacheError(f"{where}: {dname} has shape {ds.shape}, expected {(n, *shape)}")
            if dname == "sample_ids":
                check_str(where, dname, ds)
            elif ds.dtype != np.dtype(DTYPES[dname]):
                raise CacheError(f"{where}: {dname} has dtype {ds.dtype}, expected {DTYPES[dname]}")
        others = [f[ACTIONS], *f[SPLITS_GROUP].values()]
        for ds in others:
            if ds.shape != (n,):
                raise CacheError(f"{where}: {ds.name} has shape {ds.shape}, expected ({n},)")
            check_str(where, ds.name, ds)
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
        """Features of row ``i``: ``feature_shape`` ((1024, 8, 7, 7) for the paper's clip), one chunk read.

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
            ``features`` (B, *feature_shape), ``poses`` float32 (B, 2, 3, J, t_p), ``labels`` (B,),
            ``sample_ids`` (B,), ``clip_index`` (B,), ``frame_indices`` (B, clip_len), ``boxes`` (B, 4).
        """
        rows = np.array([self._check_index(i) for i in indices], dtype=np.int64)
        features = np.empty((len(rows), *self.feature_shape), dtype=dtype)  # (B, 1024, 8, 7, 7)
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
        """Close the HDF5 file (memory-loaded arrays stay usable; a later read reopens it)."""
        self._handle.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blocks(n: int, size: int = 64) -> list[tuple[int, int]]:
    return [(start, min(n, start + size)) for start in range(0, n, size)]


_FLOAT16_TO_FLOAT32 = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def float16_to_float32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Exact float16 -> float32 by table lookup (faster than numpy's cast on our CPUs; README "Measured performance").

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
        with open_h5(source) as src:
            for name, rows in datasets.items():
                if name not in src or src[name].shape[0] < rows or src[name].shape[1:] != row_shape[name]:
                    found = src[name].shape if name in src else "nothing"
                    raise CacheError(f"{path}: shard {source} holds {found} at {name}, the view maps {rows} rows "
                                     f"of {row_shape[name]}; the shard changed after the merge, re-merge")
    return sorted(spans, key=lambda span: span[0])


def _source_path(view: Path, file_name: str) -> Path:
    return Path(file_name) if Path(file_name).is_absolute() else view.parent / file_name
