"""Merging shards into a cache's ``cache.h5``: a virtual-dataset view over the shards, plus ``failures.csv``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pipeline.cache.failures import write_failures
from pipeline.cache.format import (
    ACTIONS,
    DTYPES,
    FAILURES,
    FILE_KWARGS,
    SPLITS_GROUP,
    VIRTUAL_DATASETS,
    create_checked,
    fixed_strings,
    row_shapes,
)
from pipeline.cache.integrity import record_integrity
from pipeline.cache.layout import FAILURES_NAME, CacheError
from pipeline.cache.provenance import utc_now
from pipeline.cache.reader import CacheReader
from pipeline.contracts import CACHE_ATTRS
from pipeline.utils.fileio import atomic_path
from pipeline.utils.progress import show_progress

log = logging.getLogger(__name__)


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
    readers = [CacheReader(p) for p in show_progress(shard_paths, "merge", unit="shard")]
    try:
        for reader in readers:
            if reader.is_merged or reader.path.resolve() == out_path.resolve():
                raise CacheError(f"{reader.path} is a merged view, not a shard; merge the shard files themselves")
        _check_shards_agree(readers)
        failures = pd.concat([r.failures for r in readers], ignore_index=True)
        with atomic_path(out_path) as tmp:
            with h5py.File(tmp, "w", **FILE_KWARGS) as f:
                _write_merged(f, readers, out_path.parent)
            record_integrity(tmp, out_path)
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
    f.attrs["created_utc"] = utc_now()
    shapes = {**row_shapes(first.num_joints, first.t_p, first.clip_len), "features": first.feature_shape}
    for name in VIRTUAL_DATASETS:
        dtype = DTYPES[name]
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
    create_checked(f, "sample_ids", fixed_strings(np.concatenate([r.sample_ids for r in readers])))
    for name in ("labels", "clip_index", "frame_indices", "boxes"):
        create_checked(f, name, np.concatenate([getattr(r, name) for r in readers]).astype(DTYPES[name]))
    create_checked(f, ACTIONS, fixed_strings(np.concatenate([r.actions for r in readers])))
    group = f.create_group(SPLITS_GROUP)
    for protocol in first.protocols:
        values = [np.zeros(0, dtype=str), *(r.splits(protocol) for r in readers if len(r))]
        create_checked(group, protocol, fixed_strings(np.concatenate(values)))
    failures = np.concatenate([r.failures.to_numpy(dtype=object) for r in readers]).reshape(-1, 3)
    create_checked(f, FAILURES, fixed_strings(failures))
