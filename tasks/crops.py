"""Luigi tasks that cut a cache's person-crop store: one ``CropShard`` per N videos behind one ``BuildCrops``.

``python -m tasks.crops --dataset ntu60 --cache-dir cache [--manifest manifests/ntu60.csv] [--size 256]
[--margin-scale 0.1] [--margin-shift 0.1] [--crf 18] [--shard-size 200] [--workers 1]``

* The store is cut from a finished cache (its boxes and frame windows) into ``<cache folder>/crops/<hash>/``;
  the hash is ``pipeline.crops.store.StoreConfig.digest()`` (the cache's digest, size, margins, codec settings).
* Every shard is written through ``temporary_path()`` (atomic rename): after a crash or ``kill -9`` the same
  command redoes only the missing shards; temp files of killed runs are removed first, under the build lock.
* A video that cannot be decoded or is missing is skipped and recorded in the store's ``failures.csv``.
* The work is ``pipeline.crops.store_build``'s; the folder layout is ``pipeline.cache.layout``'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import luigi

from pipeline.crops import store as crop_store
from pipeline.crops import store_build
from pipeline.cache import layout
from pipeline.build.lock import BuildLock, CacheBusyError
from pipeline.build.steps import shard_failure_line
from pipeline.defaults import DEFAULT_BOX_SCALE, DEFAULT_BOX_SHIFT, DEFAULT_SHARD_SIZE
from pipeline.cache.failures import read_failures
from pipeline.utils.fileio import atomic_write_json

log = logging.getLogger("tasks.crops")


class _CropsTask(luigi.Task):
    """Identity: the ``StoreConfig`` (as JSON) and the cache folder; the manifest and DATA_ROOT say where videos are."""

    config_json = luigi.Parameter(description="the StoreConfig as JSON: the identity of the store")
    cache_folder = luigi.Parameter()
    manifest = luigi.Parameter(significant=False)
    data_root = luigi.Parameter(significant=False)

    @property
    def config(self) -> crop_store.StoreConfig:
        return crop_store.StoreConfig.from_json(self.config_json)

    @property
    def folder(self) -> Path:
        return layout.crops_dir(self.cache_folder, self.config.digest())


class CropShard(_CropsTask):
    """Cut and encode one shard of videos into ``crops_NNNNN.h5``."""

    shard_index = luigi.IntParameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(layout.crops_shard_path(self.folder, self.shard_index)))

    def run(self) -> None:
        with self.output().temporary_path() as tmp:
            store_build.run_shard(self.config, self.cache_folder, self.shard_index, self.manifest, self.data_root, tmp)


_SHARD_ERRORS: list[str] = []
"""One line per shard that raised in this process (a full disk, a file-size limit), printed after the build."""


@CropShard.event_handler(luigi.Event.FAILURE)
def _shard_failed(task: CropShard, error: BaseException) -> None:
    _SHARD_ERRORS.append(shard_failure_line(task.shard_index, error))


class BuildCrops(_CropsTask):
    """Wrapper: every shard of a store, then ``index.json``, ``failures.csv`` and ``crops/LATEST``."""

    def requires(self) -> list[CropShard]:
        n = store_build.shard_count(self.cache_folder, self.config)
        return [CropShard(shard_index=i, **self.param_kwargs) for i in range(n)]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.folder / layout.CROPS_INDEX))

    def run(self) -> None:
        store_build.merge_store(self.config, self.cache_folder)


def main(argv: list[str] | None = None) -> int:
    defaults = crop_store.StoreConfig(cache_digest="defaults")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--cache-dir", default="cache", help="cache root, dataset folder, cache folder or cache.h5")
    parser.add_argument("--manifest", default="", help="manifest CSV (default manifests/<dataset>.csv)")
    parser.add_argument("--data-root", default="", help="folder the manifest's paths are relative to "
                                                        "(default: recorded beside the manifest)")
    parser.add_argument("--store-size", type=int, default=defaults.size, help="short side of the person box in the store, px")
    parser.add_argument("--margin-scale", type=float, default=DEFAULT_BOX_SCALE,
                        help="box jitter scale the store must hold (the fine-tune's BOX_SCALE)")
    parser.add_argument("--margin-shift", type=float, default=DEFAULT_BOX_SHIFT,
                        help="box jitter shift the store must hold (the fine-tune's BOX_SHIFT)")
    parser.add_argument("--crf", type=int, default=defaults.crf, help="libx264 constant rate factor")
    parser.add_argument("--preset", default=defaults.preset, help="libx264 preset")
    parser.add_argument("--tune", default=defaults.tune, help="libx264 tune (\"\": none)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--workers", type=int, default=1, help="Luigi worker processes (shards in parallel)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = args.manifest or f"manifests/{args.dataset}.csv"
    try:
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"manifest {manifest} does not exist (give the one the cache was built from)")
        resolved = layout.resolve(args.cache_dir, args.dataset)
        cache_folder = resolved if resolved.is_dir() else resolved.parent
        store_build.read_cache_source(str(cache_folder))
        config = crop_store.StoreConfig(cache_digest=cache_folder.name, size=args.store_size,
                                        margin_scale=args.margin_scale, margin_shift=args.margin_shift,
                                        crf=args.crf, preset=args.preset, tune=args.tune,
                                        shard_size=args.shard_size)
    except (ValueError, FileNotFoundError, layout.CacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = layout.crops_dir(cache_folder, config.digest())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot write the crop store {folder} ({err.strerror or err}): the cache folder is read-only?",
              file=sys.stderr)
        return 2
    try:
        with BuildLock(folder):
            return _build(config, cache_folder, manifest, args)
    except CacheBusyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3


def _build(config: crop_store.StoreConfig, cache_folder: Path, manifest: str, args: argparse.Namespace) -> int:
    """Clean up after killed runs, then run the Luigi build of the store (under its build lock)."""
    folder = layout.crops_dir(cache_folder, config.digest())
    atomic_write_json(folder / layout.CONFIG_NAME, json.loads(config.to_json()))
    for path in folder.glob(layout.CROPS_TEMP_GLOB):
        path.unlink(missing_ok=True)
        log.info("removed %s, left by a killed run", path.name)
    print(store_build.store_status(config, cache_folder))
    task = BuildCrops(config_json=config.to_json(), cache_folder=str(cache_folder), manifest=str(manifest),
                      data_root=args.data_root)
    start = time.perf_counter()
    result = luigi.build([task], workers=args.workers, detailed_summary=True, log_level="WARNING",
                         local_scheduler=True)
    print(result.summary_text)
    print(store_build.store_status(config, cache_folder) + f" ({time.perf_counter() - start:.1f} s)")
    if not (result.scheduling_succeeded and task.complete()):
        if _SHARD_ERRORS:
            print(f"error: {_SHARD_ERRORS[0]}", file=sys.stderr)
        _SHARD_ERRORS.clear()
        return 1
    stored, skipped = len(crop_store.CropStore(folder).index), len(read_failures(folder / layout.FAILURES_NAME))
    print(f"{stored} videos in the store, {skipped} skipped (listed in {folder / layout.FAILURES_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
