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
* Before any task runs: DATA_ROOT must exist and hold the first samples' files, and the I3D weights must load
  (else one line, exit 2); finished shards are re-checked against their integrity records
  (``cache.check_integrity``) and rebuilt when bad or when they hold environment failures (``--retry-failed``:
  any failure), with the merged view.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import luigi
import torch

from pipeline import cache, devices, extract, video
from pipeline.config import CacheConfig
from pipeline.datasets import get_dataset
from pipeline.manifest import read_manifest, read_manifest_root

log = logging.getLogger("tasks.cache")

RUN_LOG = "run_log.jsonl"
CONFIG_NAME = "config.json"
LATEST = "LATEST"


@lru_cache(maxsize=4)
def _manifest_rows(manifest: str, protocol: str) -> tuple[dict, ...]:
    """The manifest rows a cache covers (all, or those in ``protocol``'s splits), in manifest order."""
    df = read_manifest(manifest)
    if protocol:
        df = df[df[protocol] != ""]
    return tuple(df.to_dict("records"))


@lru_cache(maxsize=2)
def _model(extractor: str, weights: str, device: str) -> torch.nn.Module:
    return extract.make_extractor(extractor, weights, device)


SHARD_NAME = "shard_{:05d}.h5"


def shard_path(cache_dir: Path, index: int) -> Path:
    return cache_dir / SHARD_NAME.format(index)


def shards_done(cache_dir: Path, total: int) -> list[int]:
    """Indices (< ``total``) of the finished shard files in ``cache_dir``, from one directory listing.

    A ``stat`` per shard cost 6-10 ms per progress line at 573 shards (3-6 s per build, growing with shards^2);
    the listing costs ~1 ms there (``bench/bench_scale.py``). It is still O(shards) per line, ~10 ms at 10x
    NTU-120's 573 shards: under 0.1 % of a shard's work, so it is not worth a shared counter.
    """
    try:
        names = {entry.name for entry in os.scandir(cache_dir)}
    except FileNotFoundError:
        return []
    return [i for i in range(total) if SHARD_NAME.format(i) in names]


def num_shards(num_rows: int, shard_size: int) -> int:
    return max(1, -(-num_rows // shard_size))


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
            self._run_on(device)

    def _run_on(self, device: str) -> None:
        config = self.config
        rows = _manifest_rows(self.manifest, config.protocol)
        chunk = rows[self.shard_index * config.shard_size:(self.shard_index + 1) * config.shard_size]
        attrs = cache.make_attrs(config, config.i3d_weights_sha256)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        model = _model(config.extractor, self.i3d_weights, device)
        with self.output().temporary_path() as tmp:
            stats = extract.extract_shard(chunk, self.data_root, config, model, tmp, attrs=attrs,
                                          workers=self.decode_workers, batch_size=self.batch_size, device=device,
                                          record_as=self.output().path)
        entry = {"shard": self.shard_index, "started": started, "host": socket.gethostname(), "pid": os.getpid(),
                 "device": device,
                 "videos": stats.samples, "clips": stats.clips, "failures": stats.failures,
                 "seconds": round(stats.seconds, 2), "i3d_seconds": round(stats.i3d_seconds, 2),
                 "videos_per_s": round(stats.samples / stats.seconds, 3) if stats.seconds else 0.0,
                 "backends": stats.backends}
        _append_log(Path(self.output().path).parent, entry)
        done, total = _progress(config, self.cache_root, self.manifest)
        _SHARD_SECONDS.append(stats.seconds)
        eta = (total - done) * sum(_SHARD_SECONDS) / len(_SHARD_SECONDS)
        log.info("shard %d: %d videos, %d clips, %d failures in %.1f s; %d/%d shards complete, ETA %s at this "
                 "worker's pace", self.shard_index, stats.samples, stats.clips, stats.failures, stats.seconds, done,
                 total, _duration(eta))


class BuildCache(_CacheTask):
    """Wrapper: all shards of a cache, then the merged view ``cache.h5`` and ``failures.csv``."""

    def requires(self) -> list[CacheShard]:
        config = self.config
        n = num_shards(len(_manifest_rows(self.manifest, config.protocol)), config.shard_size)
        return [CacheShard(shard_index=i, **self.param_kwargs) for i in range(n)]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.config.cache_dir(self.cache_root) / cache.MERGED_NAME))

    def run(self) -> None:
        cache_dir = self.config.cache_dir(self.cache_root)
        cache.merge_shards([Path(t.output().path) for t in self.requires()], cache_dir / cache.MERGED_NAME)
        for stale in cache_dir.glob("shard_*.h5-luigi-tmp-*"):  # left by killed runs; every shard is done now
            stale.unlink(missing_ok=True)
        with cache.open_cache(cache_dir) as merged:
            clips = len(merged)
        if clips:
            (cache_dir.parent / LATEST).write_text(cache_dir.name + "\n")
        else:
            log.warning("%s holds no clip (every sample failed, see %s); %s left unchanged", cache_dir,
                        cache.FAILURES_NAME, LATEST)
        _append_log(cache_dir, {"merged": cache.MERGED_NAME, "host": socket.gethostname(),
                                "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


_SHARD_SECONDS: list[float] = []
"""Durations of the shards this process ran, for the ETA."""


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _append_log(cache_dir: Path, entry: dict) -> None:
    with open(cache_dir / RUN_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _progress(config: CacheConfig, cache_root: str, manifest: str) -> tuple[int, int]:
    total = num_shards(len(_manifest_rows(manifest, config.protocol)), config.shard_size)
    cache_dir = config.cache_dir(cache_root)
    return len(shards_done(cache_dir, total)), total


def default_decode_workers(device: str, cpu_count: int) -> int:
    """Decode processes per shard when not given.

    With I3D on a GPU, decoding is the CPU's only work: use up to 4 processes. With I3D on the CPU both stages
    share the cores; on <= 2 cores decoding in-process was measured faster (``bench/bench_pipeline.py``: 0.43 vs
    0.39 videos/s) because a worker steals I3D's threads, so it only overlaps when there are cores to spare.
    """
    if device.startswith("cuda"):
        return max(1, min(4, cpu_count - 1))
    return 0 if cpu_count <= 2 else max(1, min(4, cpu_count // 8))


def gpu_slots(device: str, workers: int, device_count: int) -> int:
    """Shards that may run at once on the GPUs of this machine (Luigi's ``gpu`` resource of the local scheduler).

    ``cuda`` spreads shards over every GPU, one shard per GPU; a named GPU (``cuda:1``) runs one shard at a time.
    """
    return max(1, min(workers, device_count)) if device == "cuda" else 1


def build_config(args: argparse.Namespace) -> CacheConfig:
    """The CacheConfig of a command line (hashes the manifest and the weights)."""
    spec = get_dataset(args.dataset)
    if args.protocol and args.protocol not in spec.protocols:
        raise ValueError(f"{args.dataset} has no protocol {args.protocol!r}; choose one of {sorted(spec.protocols)}")
    weights_sha = "random-init" if args.extractor == "i3d" else "none"
    if args.i3d_weights and args.extractor == "i3d":
        if not Path(args.i3d_weights).is_file():
            raise FileNotFoundError(f"I3D_WEIGHTS {args.i3d_weights} does not exist")
        weights_sha = cache.file_sha256(args.i3d_weights)
    return CacheConfig(dataset=args.dataset, protocol=args.protocol or "",
                       manifest_sha256=cache.file_sha256(args.manifest),
                       i3d_weights_sha256=weights_sha, extractor=args.extractor, clips_per_video=args.clips_per_video,
                       t_p=args.t_p or spec.t_p, crop_pad=args.crop_pad, backend=args.backend,
                       precision=args.precision, compression=args.compression, shard_size=args.shard_size)


def status(config: CacheConfig, cache_root: str, manifest: str) -> str:
    """One line per state: done and remaining shards."""
    cache_dir = config.cache_dir(cache_root)
    total = num_shards(len(_manifest_rows(manifest, config.protocol)), config.shard_size)
    done = shards_done(cache_dir, total)
    merged = (cache_dir / cache.MERGED_NAME).exists()
    return (f"{cache_dir}: {len(done)}/{total} shards complete, {total - len(done)} remaining"
            + ("; merged view present" if merged else ""))


def remove_stale_temp_files(cache_dir: Path) -> list[Path]:
    """Delete the temp files of killed runs (call only while holding the build lock, without a luigid)."""
    stale = [*cache_dir.glob("shard_*.h5-luigi-tmp-*"), *cache_dir.glob(".*.tmp-*")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def recheck(config: CacheConfig, cache_root: str, manifest: str, retry_failed: bool) -> list[str]:
    """Send bad or retryable finished shards back to work (``extract.shards_to_rebuild``); drop the merged view
    when a shard is redone, missing or the view itself fails its check. Returns one line per action."""
    cache_dir = config.cache_dir(cache_root)
    total = num_shards(len(_manifest_rows(manifest, config.protocol)), config.shard_size)
    shards = [shard_path(cache_dir, i) for i in range(total)]
    lines = []
    for path, why in extract.shards_to_rebuild(shards, retry_failed=retry_failed).items():
        lines.append(f"rebuilding {path}: {why}")
        path.unlink(missing_ok=True)
        cache.integrity_path(path).unlink(missing_ok=True)
    merged = cache_dir / cache.MERGED_NAME
    if merged.exists():
        why = cache.check_integrity(merged) or ("shards to (re)build" if not all(p.exists() for p in shards) else "")
        if why:
            lines.append(f"re-merging {merged}: {why}")
            merged.unlink()
            cache.integrity_path(merged).unlink(missing_ok=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--data-root", help="folder the manifest's paths are relative to (default: from the "
                                            "manifest's side file)")
    parser.add_argument("--protocol", default="")
    parser.add_argument("--shard-size", type=int, default=200)
    parser.add_argument("--clips-per-video", type=int, default=1)
    parser.add_argument("--t-p", type=int, default=0, help="poses per clip (default: the dataset's)")
    parser.add_argument("--crop-pad", type=float, default=0.15)
    parser.add_argument("--backend", default=video.DEFAULT_BACKEND, choices=("opencv", "pyav", "decord"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--compression", default=cache.DEFAULT_COMPRESSION)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not Path(args.manifest).is_file():
            raise FileNotFoundError(f"manifest {args.manifest} does not exist (run `make manifest` first)")
        config = build_config(args)
        data_root = args.data_root or read_manifest_root(args.manifest)
        rows = _manifest_rows(args.manifest, config.protocol)
        if not rows:
            raise ValueError(f"{args.manifest} has no sample{' in protocol ' + args.protocol if args.protocol else ''}")
        extract.check_data_root(rows, data_root)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # once, before any task: a bad file is one line here, not one traceback per shard
        _model(config.extractor, args.i3d_weights, args.device)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: I3D_WEIGHTS {args.i3d_weights}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if config.extractor == "i3d" and config.i3d_weights_sha256 == "random-init":
        log.warning("NO I3D WEIGHTS GIVEN (I3D_WEIGHTS=): features come from a RANDOMLY INITIALISED I3D and are "
                    "meaningless for real data")
    cache_dir = config.cache_dir(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.nullcontext() if args.scheduler else cache.BuildLock(cache_dir):
            return _build(args, config, str(data_root), cache_dir)
    except cache.CacheBusyError as err:
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
    (cache_dir / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    if not args.scheduler:
        for path in remove_stale_temp_files(cache_dir):
            log.info("removed %s, left by a killed run", path.name)
    for line in recheck(config, args.cache_dir, args.manifest, args.retry_failed):
        print(line)
    print(status(config, args.cache_dir, args.manifest))
    task = BuildCache(config_json=config.to_json(), cache_root=str(args.cache_dir), manifest=str(args.manifest),
                      data_root=str(data_root), i3d_weights=args.i3d_weights,
                      decode_workers=args.decode_workers if args.decode_workers >= 0 else
                      default_decode_workers(args.device, os.cpu_count() or 1),
                      batch_size=args.batch_size, device=args.device)
    scheduler = {"local_scheduler": True}
    if not luigi.configuration.get_config().has_option("resources", "gpu"):  # a luigi.cfg setting wins
        luigi.configuration.get_config().set("resources", "gpu", str(gpu_slots(args.device, args.workers,
                                                                              torch.cuda.device_count())))
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
    print(status(config, args.cache_dir, args.manifest) + f" ({time.perf_counter() - start:.1f} s)")
    failures = cache_dir / cache.FAILURES_NAME
    unreachable = 0
    if failures.exists():
        stages = cache.read_failures(failures)["stage"]
        unreachable = int((stages == extract.ENVIRONMENT_STAGE).sum())
        print(f"{len(stages)} samples skipped, listed in {failures}")
    if unreachable:
        print(f"error: {unreachable} samples could not be reached (stage {extract.ENVIRONMENT_STAGE!r} in {failures}); "
              f"check DATA_ROOT {data_root}, then rerun: they are retried", file=sys.stderr)
    return 0 if result.scheduling_succeeded and task.complete() and not unreachable else 1


if __name__ == "__main__":
    sys.exit(main())
