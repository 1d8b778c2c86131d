"""Luigi tasks that build a cache: one ``CacheShard`` per N videos behind one ``BuildCache`` wrapper.

``python -m tasks.cache --dataset ntu60 --manifest manifests/ntu60.csv --cache-dir cache [--protocol cs]
[--shard-size 200] [--workers 1] [--decode-workers N] [--scheduler host:port] [--i3d-weights W] [--resume]``

* The task parameters that change the output are the ``CacheConfig`` (as JSON) and the cache root; the config's
  hash names the folder ``<cache-dir>/<dataset>/<hash>/``. Worker counts, batch size and device do not change
  the output and are insignificant parameters.
* Every shard is written through ``temporary_path()`` (atomic rename): a crash or ``kill -9`` leaves no partial
  file under a final name, and re-running the same command redoes only the shards that are missing.
* With ``--scheduler host:port`` the tasks go to a central ``luigid``: several machines sharing the cache folder
  each take different shards and none is done twice. Tasks on a GPU declare ``resources={"gpu": 1}``.
* Without it, a build holds ``<cache folder>/.build.lock``: a second build of the same folder exits at once
  (code 3) naming the process that holds it, so no shard is computed twice.
* The work is ``pipeline.cache_build``'s (each ``run()`` calls it); the folder layout is ``pipeline.layout``'s.
* Before any task runs: DATA_ROOT must exist and hold the first samples' files, and the I3D weights must load
  (else one line, exit 2); finished shards are re-checked against their integrity records
  (``pipeline.integrity.check_integrity``) and rebuilt when bad or when they hold environment failures
  (``--retry-failed``: any failure), with the merged view; shards whose input files changed since they were
  built (``pipeline.input_stats``) are named, and rebuilt with ``--rebuild-changed``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import luigi
import torch

from pipeline import cache_build, devices, extract
from pipeline.config import CacheConfig
from pipeline.i3d_spec import CLIP_FRAMES, CROP_SIZE
from pipeline.defaults import DEFAULT_BACKEND, DEFAULT_COMPRESSION, DEFAULT_CROP_PAD, DEFAULT_SHARD_SIZE
from pipeline.layout import FAILURES_NAME, MERGED_NAME, remove_stale_temp_files, shard_path, write_config
from pipeline.manifest import resolve_data_root

log = logging.getLogger("tasks.cache")


class _CacheTask(luigi.Task):
    """The parameters every task of one cache build shares; only ``config_json`` and ``cache_root`` are its
    identity, the rest says where inputs are and how to run."""

    config_json = luigi.Parameter(description="the CacheConfig as JSON: the identity of the cache")
    cache_root = luigi.Parameter()
    manifest = luigi.Parameter(significant=False)
    data_root = luigi.Parameter(significant=False)
    i3d_weights = luigi.Parameter(default="", significant=False)
    decode_workers = luigi.IntParameter(default=1, significant=False)
    batch_size = luigi.IntParameter(default=4, significant=False)
    device = luigi.Parameter(default="cpu", significant=False)

    @property
    def config(self) -> CacheConfig:
        return CacheConfig.from_json(self.config_json)

    @property
    def job(self) -> cache_build.ShardJob:
        return cache_build.ShardJob(manifest=self.manifest, data_root=self.data_root, i3d_weights=self.i3d_weights,
                                    decode_workers=self.decode_workers, batch_size=self.batch_size)


class CacheShard(_CacheTask):
    """Decode, crop, pose and I3D-encode one shard of videos into ``shard_NNNNN.h5``."""

    shard_index = luigi.IntParameter()

    @property
    def resources(self) -> dict[str, int]:
        return {"gpu": 1} if str(self.device).startswith("cuda") else {}

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(shard_path(self.config.cache_dir(self.cache_root), self.shard_index)))

    def run(self) -> None:
        """On ``cuda`` with several GPUs, the shard holds one GPU of its own while it runs (``pipeline.devices``)."""
        count = torch.cuda.device_count() if self.device == "cuda" else 1
        with devices.claim_device(self.device, self.shard_index, count) as device:
            with self.output().temporary_path() as tmp:
                entry = cache_build.run_shard(self.config, self.cache_root, self.shard_index, self.job, device, tmp)
        cache_build.log_shard(self.config, self.cache_root, self.manifest, entry)


class BuildCache(_CacheTask):
    """Wrapper: all shards of a cache, then the merged view ``cache.h5`` and ``failures.csv``."""

    def requires(self) -> list[CacheShard]:
        n = cache_build.shard_count(self.config, self.manifest)
        return [CacheShard(shard_index=i, **self.param_kwargs) for i in range(n)]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.config.cache_dir(self.cache_root) / MERGED_NAME))

    def run(self) -> None:
        cache_build.merge_build(self.config, self.cache_root, self.manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--data-root", help="folder the manifest's paths are relative to (default: from the "
                                            "manifest's side file)")
    parser.add_argument("--protocol", default="")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--clips-per-video", type=int, default=1)
    parser.add_argument("--t-p", type=int, default=0, help="poses per clip (default: the dataset's)")
    parser.add_argument("--clip-len", type=int, default=CLIP_FRAMES,
                        help="frames per I3D clip (the paper's 64; e.g. 32 for a CPU-sized two-stage run)")
    parser.add_argument("--crop-size", type=int, default=CROP_SIZE, help="side of the I3D input (the paper's 224)")
    parser.add_argument("--crop-pad", type=float, default=DEFAULT_CROP_PAD)
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=("opencv", "pyav", "decord"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--compression", default=DEFAULT_COMPRESSION)
    parser.add_argument("--i3d-weights", default="")
    parser.add_argument("--extractor", default="i3d", choices=("i3d", "pixels"),
                        help="pixels: a fast stand-in for I3D, for smoke tests only")
    parser.add_argument("--workers", type=int, default=1, help="Luigi worker processes (shards in parallel)")
    parser.add_argument("--decode-workers", type=int, default=-1,
                        help="decode/crop processes per shard (default: see default_decode_workers)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per I3D forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.device_count() else "cpu",
                        help="cuda: every GPU of this machine, one per running shard (WORKERS=n runs n at once); "
                             "cuda:k: that GPU only")
    parser.add_argument("--scheduler", default="", help="host:port of a central luigid (default: local)")
    parser.add_argument("--resume", action="store_true", help="print done/remaining shards first")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also retry samples whose failures are recorded (content failures are final otherwise)")
    parser.add_argument("--rebuild-changed", action="store_true",
                        help="rebuild the shards whose videos or skeletons changed (size or mtime) since they were "
                             "built (otherwise they are only named)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not Path(args.manifest).is_file():
            raise FileNotFoundError(f"manifest {args.manifest} does not exist (run `make manifest` first)")
        config = cache_build.build_config(args)
        data_root = resolve_data_root(args.manifest, args.data_root)
        rows = cache_build.manifest_rows(args.manifest, config.protocol)
        if not rows:
            raise ValueError(f"{args.manifest} has no sample{' in protocol ' + args.protocol if args.protocol else ''}")
        extract.check_data_root(rows, data_root)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # once, before any task: a bad file is one line here, not one traceback per shard
        cache_build.load_extractor(config.extractor, args.i3d_weights, args.device)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: I3D_WEIGHTS {args.i3d_weights}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if config.extractor == "i3d" and config.i3d_weights_sha256 == "random-init":
        log.warning("NO I3D WEIGHTS GIVEN (I3D_WEIGHTS=): features come from a RANDOMLY INITIALISED I3D and are "
                    "meaningless for real data")
    cache_dir = config.cache_dir(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.nullcontext() if args.scheduler else cache_build.BuildLock(cache_dir):
            return _build(args, config, str(data_root), cache_dir)
    except cache_build.CacheBusyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3


MERGE_WAIT_S = 120.0
"""How long a worker under luigid waits for the merged view that another worker is writing."""


def _wait_for_merge(task: luigi.Task) -> None:
    """Under luigid a worker whose shards are done may exit while another worker still writes ``cache.h5`` (Luigi
    reports that task as run by another worker): wait for it, so both report the finished cache."""
    deadline = time.monotonic() + MERGE_WAIT_S
    while not task.complete() and time.monotonic() < deadline:
        time.sleep(0.5)


def _build(args: argparse.Namespace, config: CacheConfig, data_root: str, cache_dir: Path) -> int:
    """Recheck, then run the Luigi build of ``config`` (under the build lock unless a luigid coordinates)."""
    write_config(cache_dir, config.to_dict())
    if not args.scheduler:
        for path in remove_stale_temp_files(cache_dir):
            log.info("removed %s, left by a killed run", path.name)
    for line in cache_build.recheck(config, args.cache_dir, args.manifest, args.retry_failed, args.rebuild_changed):
        print(line)
    print(cache_build.status(config, args.cache_dir, args.manifest))
    task = BuildCache(config_json=config.to_json(), cache_root=str(args.cache_dir), manifest=str(args.manifest),
                      data_root=str(data_root), i3d_weights=args.i3d_weights,
                      decode_workers=args.decode_workers if args.decode_workers >= 0 else
                      cache_build.default_decode_workers(args.device, os.cpu_count() or 1),
                      batch_size=args.batch_size, device=args.device)
    scheduler = {"local_scheduler": True}
    if not luigi.configuration.get_config().has_option("resources", "gpu"):  # a luigi.cfg setting wins
        slots = cache_build.gpu_slots(args.device, args.workers, torch.cuda.device_count())
        luigi.configuration.get_config().set("resources", "gpu", str(slots))
    if args.scheduler:
        host, _, port = args.scheduler.partition(":")
        scheduler = {"scheduler_host": host, "scheduler_port": int(port or 8082)}
        # stay alive while other machines still run shards this run's wrapper needs, then merge or exit
        luigi.configuration.get_config().set("worker", "keep_alive", "true")
        luigi.configuration.get_config().set("worker", "wait_interval", "2")
    start = time.perf_counter()
    result = luigi.build([task], workers=args.workers, detailed_summary=True, log_level="WARNING",
                         **scheduler)
    if args.scheduler and result.scheduling_succeeded:
        _wait_for_merge(task)
    print(result.summary_text)
    print(cache_build.status(config, args.cache_dir, args.manifest) + f" ({time.perf_counter() - start:.1f} s)")
    skipped, unreachable = cache_build.failure_counts(cache_dir)
    failures = cache_dir / FAILURES_NAME
    if failures.exists():
        print(f"{skipped} samples skipped, listed in {failures}")
    if unreachable:
        print(f"error: {unreachable} samples could not be reached (stage {extract.ENVIRONMENT_STAGE!r} in {failures}); "
              f"check DATA_ROOT {data_root}, then rerun: they are retried", file=sys.stderr)
    return 0 if result.scheduling_succeeded and task.complete() and not unreachable else 1


if __name__ == "__main__":
    sys.exit(main())
