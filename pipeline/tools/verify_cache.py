"""``make verify``: the full check of every cache file at or under a path (checksums, the merged view's mapping
onto its shards, changed inputs) and of every person-crop store there (``pipeline.crops.store_build.verify_store``:
each stream decodes to its frame count), without rebuilding anything."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pipeline.cache.input_stats import describe, shard_changes
from pipeline.cache.integrity import check_integrity
from pipeline.cache.layout import CROPS_INDEX, MERGED_NAME, SHARD_GLOB, CacheError, cache_folders
from pipeline.cache.reader import CacheReader
from pipeline.crops.store_build import verify_store


def verify_folder(folder: str | Path) -> dict[Path, str]:
    """Full check (``check_integrity(full=True)``) of every shard and the merged view of one cache folder, and of
    the view's mapping onto its shards, and whether a shard's input files changed since it was built
    (``pipeline.cache.input_stats``); returns the bad files with what is wrong."""
    folder = Path(folder)
    bad = {}
    for path in sorted(folder.glob(SHARD_GLOB)) + sorted(folder.glob(MERGED_NAME)):
        problem = check_integrity(path, full=True)
        if not problem and path.name != MERGED_NAME:
            changes = shard_changes(path)
            problem = f"stale: {describe(changes)}; `make cache REBUILD_CHANGED=1` rebuilds it" if changes else ""
        if problem:
            bad[path] = problem
    merged = folder / MERGED_NAME
    if merged.exists() and not bad:  # a bad shard already explains a view that does not open
        try:
            CacheReader(merged).close()
        except CacheError as err:
            bad[merged] = str(err)
    return bad


def store_folders(path: str | Path) -> list[Path]:
    """The finished crop stores at or under ``path`` (folders holding ``index.json`` inside a ``crops`` folder)."""
    path = Path(path)
    if not path.is_dir():
        return []
    if (path / CROPS_INDEX).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(CROPS_INDEX) if p.parent.parent.name == "crops")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.tools.verify_cache PATH``: full check of every cache file at or under PATH, no rebuild.

    Prints one line per bad file and exits 1 when there is one; 2 when PATH holds no cache.
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.verify_cache",
                                     description=main.__doc__.split("\n")[0])
    parser.add_argument("path", help="a cache folder, a cache root (every cache under it) or a cache file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folders = cache_folders(args.path)
    stores = store_folders(args.path)
    if not folders and not stores:
        print(f"error: no cache ({SHARD_GLOB} or {MERGED_NAME}) nor crop store at or under {args.path}",
              file=sys.stderr)
        return 2
    start, n_files, n_bad = time.perf_counter(), 0, 0
    for folder in folders:
        n_files += len(list(folder.glob(SHARD_GLOB))) + (folder / MERGED_NAME).exists()
        for path, problem in verify_folder(folder).items():
            print(f"BAD {path}: {problem}")
            n_bad += 1
    for folder in stores:
        n_files += 1
        for what, problem in verify_store(folder).items():
            print(f"BAD {what}: {problem}")
            n_bad += 1
    verdict = (f"{n_bad} bad; `make cache` / `make crops` with the same settings rebuilds them" if n_bad
               else "all good")
    print(f"verified {n_files} files in {len(folders)} cache folder(s) and {len(stores)} crop store(s) in "
          f"{time.perf_counter() - start:.1f} s: {verdict}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
