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
* The work is ``pipeline.build.steps``'s (each ``run()`` calls it); the folder layout is ``pipeline.cache.layout``'s.
* Before any task runs: DATA_ROOT must exist and hold the first samples' files, and the I3D weights must load
  (else one line, exit 2); finished shards are re-checked against their integrity records
  (``pipeline.cache.integrity.check_integrity``) and rebuilt when bad or when they hold environment failures
  (``--retry-failed``: any failure), with the merged view; shards whose input files changed since they were
  built (``pipeline.cache.input_stats``) are named, and rebuilt with ``--rebuild-changed``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

import luigi
import torch

from pipeline.build import devices, steps
from pipeline.build.lock import BuildLock, CacheBusyError
from pipeline.build.steps import ShardJob
from pipeline.cache.config import CacheConfig
from pipeline.cache.layout import MERGED_NAME, shard_path
from pipeline.crops.store import PIXELS_CHOICES
from pipeline.utils.cli import add_config_options

log = logging.getLogger("tasks.cache")


class _CacheTask(luigi.Task):
    """The parameters every task of one cache build shares; only ``config_json`` and ``cache_root`` are its
    identity, the rest says where inputs are and how to run."""

    config_json = luigi.Parameter(description="the CacheConfig as JSON: the identity of the cache")
    cache_root = luigi.Parameter()
    manifest = luigi.Parameter(significant=False)
    data_root = luigi.Parameter(significant=False)
    i3d_weights = luigi.Parameter(default="", significant=False)
    decode_workers = luigi.IntParameter(default=ShardJob.decode_workers, significant=False)
    batch_size = luigi.IntParameter(default=ShardJob.batch_size, significant=False)
    device = luigi.Parameter(default="cpu", significant=False)
    crops_root = luigi.Parameter(default="", significant=False)

    @property
    def config(self) -> CacheConfig:
        return CacheConfig.from_json(self.config_json)

    @property
    def job(self) -> ShardJob:
        return ShardJob(manifest=self.manifest, data_root=self.data_root, i3d_weights=self.i3d_weights,
                                    decode_workers=self.decode_workers, batch_size=self.batch_size,
                        crops_root=self.crops_root)


class CacheShard(_CacheTask):
    """Decode, crop, pose and I3D-encode one shard of videos into ``shard_NNNNN.h5``."""

    shard_index = luigi.IntParameter()

    @property
    def resources(self) -> dict[str, int]:
        return {"gpu": 1} if str(self.device).startswith("cuda") else {}

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(shard_path(self.config.cache_dir(self.cache_root), self.shard_index)))

    def run(self) -> None:
        """On ``cuda`` with several GPUs, the shard holds one GPU of its own while it runs (``pipeline.build.devices``)."""
        count = torch.cuda.device_count() if self.device == "cuda" else 1
        with devices.claim_device(self.device, self.shard_index, count) as device:
            with self.output().temporary_path() as tmp:
                entry = steps.run_shard(self.config, self.cache_root, self.shard_index, self.job, device, tmp)
        steps.log_shard(self.config, self.cache_root, self.manifest, entry)


_SHARD_ERRORS: list[str] = []
"""One line per shard that raised in this process (a full disk, a file-size limit), printed after the build."""


@CacheShard.event_handler(luigi.Event.FAILURE)
def _shard_failed(task: CacheShard, error: BaseException) -> None:
    _SHARD_ERRORS.append(steps.shard_failure_line(task.shard_index, error))


class BuildCache(_CacheTask):
    """Wrapper: all shards of a cache, then the merged view ``cache.h5`` and ``failures.csv``."""

    def requires(self) -> list[CacheShard]:
        n = steps.shard_count(self.config, self.manifest)
        return [CacheShard(shard_index=i, **self.param_kwargs) for i in range(n)]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.config.cache_dir(self.cache_root) / MERGED_NAME))

    def run(self) -> None:
        steps.merge_build(self.config, self.cache_root, self.manifest)


def _parser() -> argparse.ArgumentParser:
    """The command line; every default that changes a cache is ``CacheConfig``'s (declared once, there)."""
    defaults = CacheConfig(dataset="")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--data-root", help="folder the manifest's paths are relative to (default: from the "
                                            "manifest's side file)")
    parser.add_argument("--protocol", default="")
    add_config_options(parser, defaults, ("shard_size", "clips_per_video"))
    parser.add_argument("--t-p", type=int, default=0, help="poses per clip (default: the dataset's)")
    add_config_options(parser, defaults, ("clip_len", "crop_size", "crop_pad"), helps={
        "clip_len": "frames per I3D clip (the paper's 64; e.g. 32 for a CPU-sized two-stage run)",
        "crop_size": "side of the I3D input (the paper's 224)"})
    parser.add_argument("--backend", default=defaults.backend, choices=("opencv", "pyav", "decord"))
    parser.add_argument("--precision", default=defaults.precision, choices=("fp32", "bf16"))
    add_config_options(parser, defaults, ("compression",))
    parser.add_argument("--i3d-weights", default="")
    parser.add_argument("--pixels", default="auto", choices=PIXELS_CHOICES,
                        help="auto: the manifest's crop store (make crops) when one fits, else the source videos; "
                             "store: the store or an error; source: the videos")
    parser.add_argument("--crops-root", default="", help="cache root whose <dataset>/crops/ holds the crop stores "
                                                          "(default: --cache-dir)")
    parser.add_argument("--extractor", default=defaults.extractor, choices=("i3d", "pixels"),
                        help="pixels: a fast stand-in for I3D, for smoke tests only")
    parser.add_argument("--workers", type=int, default=1, help="Luigi worker processes (shards in parallel)")
    parser.add_argument("--decode-workers", type=int, default=-1,
                        help="decode/crop processes per shard (default: see default_decode_workers)")
    parser.add_argument("--batch-size", type=int, default=ShardJob.batch_size, help="clips per I3D forward pass")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        plan = steps.plan_build(args)
    except steps.BuildRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with contextlib.nullcontext() if args.scheduler else BuildLock(plan.cache_dir):
            return _build(args, plan)
    except CacheBusyError as err:
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


def _build(args: argparse.Namespace, plan: steps.BuildPlan) -> int:
    """Prepare the folder, then run the Luigi build of ``plan`` (under the build lock unless a luigid coordinates)."""
    for line in steps.prepare(plan, coordinated=bool(args.scheduler), retry_failed=args.retry_failed,
                              rebuild_changed=args.rebuild_changed):
        print(line)
    task = BuildCache(**plan.task_params())
    scheduler = {"local_scheduler": True}
    if not luigi.configuration.get_config().has_option("resources", "gpu"):  # a luigi.cfg setting wins
        slots = steps.gpu_slots(args.device, args.workers, torch.cuda.device_count())
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
    lines, error = steps.outcome(plan, time.perf_counter() - start)
    print("\n".join(lines))
    error = _SHARD_ERRORS[0] if _SHARD_ERRORS and not task.complete() else error
    _SHARD_ERRORS.clear()
    if error:
        print(f"error: {error}", file=sys.stderr)
    return 0 if result.scheduling_succeeded and task.complete() and not error else 1


if __name__ == "__main__":
    sys.exit(main())
