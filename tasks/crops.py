"""Luigi tasks that cut the person-crop store of a manifest: one ``CropShard`` per N videos behind one ``BuildCrops``.

``python -m tasks.crops --dataset ntu60 [--manifest manifests/ntu60.csv] [--cache-dir cache] [--store-size 256]
[--crop-pad 0.15] [--margin-scale 0.1] [--margin-shift 0.1] [--crf 18] [--shard-size 200] [--workers 1]``

* The first stage after the manifest: the store needs no cache (boxes come from the skeleton files). It goes into
  ``<cache-dir>/<dataset>/crops/<hash>/``, beside the caches that read it; the hash is
  ``pipeline.crops.store.StoreConfig.digest()`` (the manifest's sha256, box padding, backend, size, margins, codec).
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

from pipeline.build.lock import BuildLock, CacheBusyError
from pipeline.build.steps import shard_failure_line
from pipeline.cache import layout
from pipeline.cache.failures import read_failures
from pipeline.crops import store as crop_store
from pipeline.crops import store_build
from pipeline.datasets.manifest import resolve_data_root
from pipeline.datasets.registry import get_dataset
from pipeline.utils.fileio import atomic_write_json, file_sha256

log = logging.getLogger("tasks.crops")


class _CropsTask(luigi.Task):
    """Identity: the ``StoreConfig`` (as JSON) and the dataset folder; the manifest and DATA_ROOT say where videos
    are (the config holds the manifest's hash)."""

    config_json = luigi.Parameter(description="the StoreConfig as JSON: the identity of the store")
    dataset_folder = luigi.Parameter()
    manifest = luigi.Parameter(significant=False)
    data_root = luigi.Parameter(significant=False)

    @property
    def config(self) -> crop_store.StoreConfig:
        return crop_store.StoreConfig.from_json(self.config_json)

    @property
    def folder(self) -> Path:
        return layout.crops_dir(self.dataset_folder, self.config.digest())


class CropShard(_CropsTask):
    """Cut and encode one shard of videos into ``crops_NNNNN.h5``."""

    shard_index = luigi.IntParameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(layout.crops_shard_path(self.folder, self.shard_index)))

    def run(self) -> None:
        with self.output().temporary_path() as tmp:
            store_build.run_shard(self.config, self.shard_index, self.manifest, self.data_root, tmp)


_SHARD_ERRORS: list[str] = []
"""One line per shard that raised in this process (a full disk, a file-size limit), printed after the build."""


@CropShard.event_handler(luigi.Event.FAILURE)
def _shard_failed(task: CropShard, error: BaseException) -> None:
    _SHARD_ERRORS.append(shard_failure_line(task.shard_index, error))


class BuildCrops(_CropsTask):
    """Wrapper: every shard of a store, then ``index.json``, ``failures.csv`` and ``crops/LATEST``."""

    def requires(self) -> list[CropShard]:
        n = store_build.shard_count(self.manifest, self.config)
        return [CropShard(shard_index=i, **self.param_kwargs) for i in range(n)]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.folder / layout.CROPS_INDEX))

    def run(self) -> None:
        store_build.merge_store(self.config, self.dataset_folder, self.manifest)


def main(argv: list[str] | None = None) -> int:
    defaults = crop_store.StoreConfig(dataset="defaults", manifest_sha256="defaults")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--cache-dir", default="cache", help="cache root: the store goes into <cache-dir>/<dataset>/crops/")
    parser.add_argument("--manifest", default="", help="manifest CSV (default manifests/<dataset>.csv)")
    parser.add_argument("--data-root", default="", help="folder the manifest's paths are relative to "
                                                        "(default: recorded beside the manifest)")
    parser.add_argument("--crop-pad", type=float, default=defaults.crop_pad,
                        help="box padding of the caches that will read the store (the cache's CROP_PAD)")
    parser.add_argument("--backend", default=defaults.backend, choices=("opencv", "pyav", "decord"))
    parser.add_argument("--store-size", type=int, default=defaults.size,
                        help="short side of a video's whole person box in the store, px")
    parser.add_argument("--margin-scale", type=float, default=defaults.margin_scale,
                        help="box jitter scale the store must hold (the fine-tune's BOX_SCALE)")
    parser.add_argument("--margin-shift", type=float, default=defaults.margin_shift,
                        help="box jitter shift the store must hold (the fine-tune's BOX_SHIFT)")
    parser.add_argument("--crf", type=int, default=defaults.crf, help="libx264 constant rate factor")
    parser.add_argument("--preset", default=defaults.preset, help="libx264 preset")
    parser.add_argument("--tune", default=defaults.tune, help="libx264 tune (\"\": none)")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size)
    parser.add_argument("--workers", type=int, default=1, help="Luigi worker processes (shards in parallel)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = args.manifest or f"manifests/{args.dataset}.csv"
    try:
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"manifest {manifest} does not exist (run `make manifest` first)")
        get_dataset(args.dataset)
        if not store_build.manifest_rows(str(manifest)):
            raise ValueError(f"{manifest} has no sample")
        data_root = resolve_data_root(manifest, args.data_root)
        if not Path(data_root).is_dir():
            raise FileNotFoundError(f"DATA_ROOT {data_root} does not exist or is not a folder")
        config = crop_store.StoreConfig(dataset=args.dataset, manifest_sha256=file_sha256(manifest),
                                        crop_pad=args.crop_pad, backend=args.backend, size=args.store_size,
                                        margin_scale=args.margin_scale, margin_shift=args.margin_shift,
                                        crf=args.crf, preset=args.preset, tune=args.tune,
                                        shard_size=args.shard_size)
    except (ValueError, FileNotFoundError, KeyError, layout.CacheError) as err:
        print(f"error: {str(err).strip(chr(39))}", file=sys.stderr)
        return 2
    dataset_folder = Path(args.cache_dir) / args.dataset
    folder = layout.crops_dir(dataset_folder, config.digest())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot write the crop store {folder} ({err.strerror or err}): the cache folder is read-only?",
              file=sys.stderr)
        return 2
    try:
        with BuildLock(folder):
            return _build(config, dataset_folder, manifest, str(data_root), args.workers)
    except CacheBusyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3


def _build(config: crop_store.StoreConfig, dataset_folder: Path, manifest: str, data_root: str, workers: int) -> int:
    """Clean up after killed runs, then run the Luigi build of the store (under its build lock)."""
    folder = layout.crops_dir(dataset_folder, config.digest())
    atomic_write_json(folder / layout.CONFIG_NAME, json.loads(config.to_json()))
    for path in folder.glob(layout.CROPS_TEMP_GLOB):
        path.unlink(missing_ok=True)
        log.info("removed %s, left by a killed run", path.name)
    print(store_build.store_status(config, dataset_folder, manifest))
    task = BuildCrops(config_json=config.to_json(), dataset_folder=str(dataset_folder), manifest=str(manifest),
                      data_root=data_root)
    start = time.perf_counter()
    result = luigi.build([task], workers=workers, detailed_summary=True, log_level="WARNING",
                         local_scheduler=True)
    print(result.summary_text)
    print(store_build.store_status(config, dataset_folder, manifest) + f" ({time.perf_counter() - start:.1f} s)")
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
