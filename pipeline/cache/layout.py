"""Where a cache lives on disk, and how a path given by a user is resolved to one cache. No heavy imports.

Layout of a cache root (``CACHE_DIR``, default ``cache/``)::

    <cache_root>/<dataset>/LATEST                  the config hash of the build that completed last
    <cache_root>/<dataset>/<config hash>/          one cache: its name is ``CacheConfig.digest()``
        config.json                                the CacheConfig the folder was built from
        shard_00000.h5 ... shard_000NN.h5          one file per shard task
        cache.h5                                   the merged view over the shards
        <file>.integrity.json                      size, mtime and sha256 of each file above
        failures.csv                               every skipped sample (rebuilt by the merge)
        run_log.jsonl                              one JSON line per shard run and per merge
        .build.lock                                held by the build running in this folder

Lookup order (``resolve``), the one rule every reader of a cache follows (training, fine-tune, inspect):

1. a file (``cache.h5`` or a shard) is itself;
2. a folder holding ``cache.h5`` (or shards not merged yet, which ``open_cache`` then reports) is that cache;
3. otherwise the dataset folder (``<path>/<dataset>``; ``<path>`` itself when no dataset is given or when
   ``<path>/<dataset>`` is no folder, so ``cache/ntu60`` works with or without the dataset's name) is searched: its ``LATEST`` when present (an error when it names a folder without ``cache.h5``), else its only
   ``<hash>/cache.h5``; none, or several without ``LATEST``, is an error that lists what is there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.utils.fileio import atomic_write_json, atomic_write_text

MERGED_NAME = "cache.h5"
FAILURES_NAME = "failures.csv"
CONFIG_NAME = "config.json"
RUN_LOG = "run_log.jsonl"
LATEST = "LATEST"
LOCK_NAME = ".build.lock"
SHARD_NAME = "shard_{:05d}.h5"
SHARD_GLOB = "shard_*.h5"
INTEGRITY_SUFFIX = ".integrity.json"
"""Beside every finished cache file: its byte size and sha256 when it was written."""
LUIGI_TEMP_GLOB = "shard_*.h5-luigi-tmp-*"
"""A shard being written through Luigi's ``temporary_path()``."""
STALE_TEMP_GLOBS = (LUIGI_TEMP_GLOB, ".*.tmp-*")
"""Temporary files a killed run can leave: Luigi's ``temporary_path()`` and ``pipeline.utils.fileio.temp_path``."""


class CacheError(Exception):
    """A cache file is missing, unreadable, or does not match the contract."""


def cache_dir(cache_root: str | Path, dataset: str, digest: str) -> Path:
    """``<cache_root>/<dataset>/<digest>/``: the folder of the cache whose config hashes to ``digest``."""
    return Path(cache_root) / dataset / digest


def shard_path(folder: str | Path, index: int) -> Path:
    """The file of shard ``index`` in a cache folder."""
    return Path(folder) / SHARD_NAME.format(index)


def num_shards(num_rows: int, shard_size: int) -> int:
    """Shards of ``shard_size`` videos that ``num_rows`` manifest rows make (at least one)."""
    return max(1, -(-num_rows // shard_size))


def shards_done(folder: str | Path, total: int) -> list[int]:
    """Indices (< ``total``) of the finished shard files in a cache folder, from one directory listing.

    One listing instead of a ``stat`` per shard: the per-shard ``stat`` grew with shards squared over a build
    (``bench/bench_scale.py``); the listing stays a small fraction of a shard's work even at 10x NTU-120.
    """
    try:
        names = {entry.name for entry in os.scandir(folder)}
    except FileNotFoundError:
        return []
    return [i for i in range(total) if SHARD_NAME.format(i) in names]


def integrity_path(path: str | Path) -> Path:
    """Where the integrity record of cache file ``path`` lives: ``<name>.integrity.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + INTEGRITY_SUFFIX)


def cache_folders(path: str | Path) -> list[Path]:
    """The cache folders at or under ``path`` (a cache file, a folder holding shards or ``cache.h5``, or a cache
    root); none for a file that is not named as a cache file (``/etc/passwd`` is no cache)."""
    path = Path(path)
    if path.is_file():
        return [path.parent] if path.match(SHARD_GLOB) or path.name == MERGED_NAME else []
    return sorted({p.parent for pattern in (SHARD_GLOB, MERGED_NAME) for p in path.rglob(pattern)})


def write_latest(folder: str | Path) -> None:
    """Point ``LATEST`` of the folder's dataset folder at this cache (the build that completed last), atomically."""
    folder = Path(folder)
    atomic_write_text(folder.parent / LATEST, folder.name + "\n")


def write_config(folder: str | Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` (indented, sorted keys) into a cache folder, atomically."""
    atomic_write_json(Path(folder) / CONFIG_NAME, config)


def append_run_log(folder: str | Path, entry: dict[str, Any]) -> None:
    """Append one JSON line to the folder's ``run_log.jsonl``."""
    with open(Path(folder) / RUN_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files of killed runs (only while holding the build lock, without a luigid)."""
    stale = [p for pattern in STALE_TEMP_GLOBS for p in Path(folder).glob(pattern)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def resolve(path: str | os.PathLike, dataset: str | None = None) -> Path:
    """The cache that ``path`` names, by the lookup order of this module's docstring.

    Args:
        path: a cache file, a cache folder, a dataset folder (``cache/ntu60``) or a cache root (``cache/``).
        dataset: registry name, to look under a cache root; None, or the same name, when ``path`` is a dataset
            folder.

    Returns:
        A file or a cache folder, for ``pipeline.cache.reader.open_cache``.

    Raises:
        CacheError: nothing there, ``LATEST`` names a folder without ``cache.h5``, or several caches and no
            ``LATEST`` (the message lists them).
    """
    path = Path(path)
    if path.is_file() or (path / MERGED_NAME).is_file() or (path.is_dir() and any(path.glob(SHARD_GLOB))):
        return path
    folder = path / dataset if dataset and (path / dataset).is_dir() else path
    latest = folder / LATEST
    if latest.is_file():
        named = folder / latest.read_text().strip()
        if not (named / MERGED_NAME).is_file():
            raise CacheError(f"{latest} names {named}, which holds no {MERGED_NAME}; rebuild it with `make cache`")
        return named
    caches = sorted(p.parent for p in folder.glob(f"*/{MERGED_NAME}")) if folder.is_dir() else []
    if len(caches) == 1:
        return caches[0]
    if caches:
        raise CacheError(f"several caches under {folder} and no {LATEST}: {[str(c) for c in caches]}; "
                         "pass one of them explicitly")
    build = f" (build it with `make cache DATASET={dataset}`)" if dataset else " (build one with `make cache`)"
    raise CacheError(f"no cache at {path}: expected a .h5 file, a folder with {MERGED_NAME}, or "
                     f"{folder}/<hash>/{MERGED_NAME}{build}")


# -- the person-crop store (``pipeline.crops.store_build``), cut from a manifest's videos, beside the caches of
#    that dataset that read it:
#
#    <cache_root>/<dataset>/crops/LATEST           the store digest of the crops build that completed last
#    <cache_root>/<dataset>/crops/<store digest>/  one store: its name is ``StoreConfig.digest()``
#        config.json                               the StoreConfig the folder was built from
#        crops_00000.h5 ... crops_000NN.h5         one file per shard task (one H.264 stream per video)
#        index.json                                sample_id -> shard file; written last (the build is done)
#        failures.csv                              every video the store skipped

CROPS_FOLDER = "crops"
CROPS_SHARD_NAME = "crops_{:05d}.h5"
CROPS_INDEX = "index.json"
CROPS_TEMP_GLOB = "crops_*.h5-luigi-tmp-*"


def crops_root(dataset_folder: str | Path) -> Path:
    """``<cache_root>/<dataset>/crops/``: where the dataset's crop stores live."""
    return Path(dataset_folder) / CROPS_FOLDER


def crops_dir(dataset_folder: str | Path, digest: str) -> Path:
    """``<cache_root>/<dataset>/crops/<digest>/``: the store whose config hashes to ``digest``."""
    return crops_root(dataset_folder) / digest


def crops_shard_path(folder: str | Path, index: int) -> Path:
    """The file of crop shard ``index`` in a store folder."""
    return Path(folder) / CROPS_SHARD_NAME.format(index)
