"""The HDF5 cache file format: dataset names, dtypes and per-row shapes, compression codecs, HDF5 helpers.

Every cache file holds one row per clip: the datasets of ``contracts.CACHE_DATASETS`` plus ``actions`` (action
name per row), ``splits/<protocol>`` (``train``/``val``/``test``/empty per row, so the cache is self-contained)
and ``failures`` ((n, 3) strings ``sample_id, stage, reason``), and carries the attrs of
``contracts.CACHE_ATTRS``. Every dataset is chunked with HDF5's Fletcher-32 filter (so strings are fixed-length
UTF-8). Row shapes follow from the dataset's joints, ``t_p`` and the clip's I3D input (``pipeline.i3d.spec``).

Compression (``pipeline.defaults.DEFAULT_COMPRESSION``, ``zstd-1``): the cached features are mostly exact zeros,
so plain zstd beats the bit/byte-shuffle codecs; level 1 is within a few per cent of the smallest codec at
several times its write speed and reads faster than gzip; ``none`` reads faster per core but triples the disk
and page-cache footprint. Numbers: ``bench/bench_cache.py``, in the README's "Measured performance" section.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd/blosc2/bitshuffle filters before any file is opened)
import numpy as np

from pipeline.cache.layout import CacheError
from pipeline.contracts import CACHE_DATASETS, MAX_BODIES
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE, feature_shape

SPLITS_GROUP = "splits"
ACTIONS = "actions"
FAILURES = "failures"
VIRTUAL_DATASETS = ("features", "poses")
"""The bulky datasets that ``cache.h5`` maps from the shards; everything else is copied."""
DTYPES = {name: dtype for name, (dtype, _) in CACHE_DATASETS.items()}
STRING_DATASETS = ("sample_ids", ACTIONS)
"""Per-row string datasets (plus ``splits/<protocol>``): fixed-length UTF-8, written whole when a file closes."""
FILE_KWARGS: dict[str, Any] = {"libver": ("v110", "latest")}
"""HDF5 >= 1.10 file format: its object headers and B-trees carry their own checksums."""
CHECKSUM = {"fletcher32": True}
"""Every dataset of every cache file: HDF5 verifies each chunk's Fletcher-32 checksum on read."""
METADATA_CHUNK_ROWS = 4096
"""Rows per chunk of the small per-row datasets (features and poses: one clip per chunk)."""


def row_shapes(num_joints: int, t_p: int, clip_len: int = CLIP_FRAMES,
               crop_size: int = CROP_SIZE) -> dict[str, tuple[int, ...]]:
    """Per-row shape of every dataset in ``CACHE_DATASETS`` for ``num_joints`` joints, ``t_p`` poses per clip and
    clips of ``clip_len`` frames cropped to ``crop_size`` pixels."""
    return {
        "features": feature_shape(clip_len, crop_size),
        "poses": (MAX_BODIES, 3, num_joints, t_p),
        "sample_ids": (),
        "labels": (),
        "clip_index": (),
        "frame_indices": (clip_len,),
        "boxes": (4,),
    }


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


def fixed_strings(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """UTF-8 bytes in a fixed-length HDF5 string array (filters such as fletcher32 need fixed-size elements)."""
    encoded = [str(v).encode("utf-8") for v in np.asarray(values, dtype=object).reshape(-1)]
    width = max([1, *(len(b) for b in encoded)])
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", width)).reshape(np.shape(values))


def create_checked(group: h5py.Group, name: str, data: np.ndarray, **kwargs: Any) -> h5py.Dataset:
    """A chunked, Fletcher-32-checked dataset holding ``data`` (chunks of up to ``METADATA_CHUNK_ROWS`` rows)."""
    rows = max(1, min(len(data), METADATA_CHUNK_ROWS))
    return group.create_dataset(name, data=data, chunks=(rows, *(max(1, d) for d in data.shape[1:])),
                                maxshape=(None, *data.shape[1:]), **CHECKSUM, **kwargs)


def strings(ds: h5py.Dataset) -> np.ndarray:
    """A string dataset as a numpy ``str`` array."""
    values = ds.asstr()[()]
    return np.asarray(values, dtype=str) if values.size else np.zeros(values.shape, dtype=str)


def attr_str(value: Any) -> str:
    """An HDF5 string attr as ``str``."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def check_str(path: Path, name: str, ds: h5py.Dataset) -> None:
    """Raise ``CacheError`` unless ``ds`` holds UTF-8 strings."""
    info = h5py.check_string_dtype(ds.dtype)
    if info is None or info.encoding != "utf-8":
        raise CacheError(f"{path}: {name} has dtype {ds.dtype}, expected utf-8 strings")


def open_h5(path: Path) -> h5py.File:
    """Open a cache file read-only, refusing one that would read bytes outside its folder (``check_contained``).

    Every reader of a cache opens its files here: ``CacheReader`` (training, evaluation, ``make inspect``),
    the integrity check of ``make verify`` and of a rerun, and the failures of a shard.

    Raises:
        CacheError: missing, not a file, not HDF5, or an object stored outside the cache folder.
    """
    if not path.exists():
        raise CacheError(f"{path}: cache file does not exist")
    if not path.is_file():
        raise CacheError(f"{path}: not a file")
    try:
        if not h5py.is_hdf5(path):
            raise CacheError(f"{path}: not an HDF5 file (corrupt or truncated)")
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            if "lock" not in str(err).lower():
                raise
            f = h5py.File(path, "r", locking=False)  # a read-only filesystem that refuses HDF5's file lock
    except OSError as err:
        raise CacheError(f"{path}: cannot open as HDF5 ({err})") from err
    try:
        check_contained(path, f)
    except BaseException:
        f.close()
        raise
    return f


def check_contained(path: Path, f: h5py.File) -> None:
    """Raise ``CacheError`` unless every object of ``f`` (opened from ``path``) lives in the cache folder.

    A cache file is data from disk, and HDF5 can make a file read other files: a dataset with external storage
    (raw bytes of any file, e.g. ``/etc/passwd``), an external link (an object of another HDF5 file), and a
    virtual dataset whose source is another file. The cache writes none of the first two, and its merged view's
    sources are shard files beside it (``shard_00000.h5``), so a source that is absolute, or that resolves
    (``..``, symlinks) outside the folder of ``path``, is refused as well. Links are walked without following
    them, so nothing outside is opened to find out.
    """
    folder = path.parent.resolve()
    problems: list[str] = []

    def visit(name: str, link: h5py.HardLink | h5py.SoftLink | h5py.ExternalLink) -> None:
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{name} is an external link to {link.filename}:{link.path}")
            return
        if not isinstance(link, h5py.HardLink):  # a soft link names an object of this file, visited by itself
            return
        obj = f[name]
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.external:
            problems.append(f"dataset {name} has external storage in {obj.external[0][0]!r}")
        elif obj.is_virtual:
            for source in obj.virtual_sources():
                if source.file_name == ".":  # a source in this same file
                    continue
                where = Path(source.file_name)
                if where.is_absolute() or not (path.parent / where).resolve().is_relative_to(folder):
                    problems.append(f"dataset {name} maps virtual source {source.file_name!r}, outside {folder}")
                    return

    f.visititems_links(visit)
    if problems:
        raise CacheError(f"{path}: refused, it would read outside its folder: {problems[0]}"
                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
