"""The library side of a cache build (``tasks.cache`` runs it under Luigi): the config of a command line, one
shard's run, the merge step, the rerun's recheck, status lines and worker defaults (the lock is ``pipeline.build.lock``).

Folder names and lookups are ``pipeline.cache.layout``'s; a build writes ``config.json`` and ``run_log.jsonl`` into its
cache folder and, when the merged view holds a clip, points the dataset folder's ``LATEST`` at it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from pipeline.build import extract
from pipeline.cache.config import PIXELS_SOURCE, STORE_PREFIX, CacheConfig
from pipeline.cache.failures import read_failures
from pipeline.cache.format import open_h5
from pipeline.cache.input_stats import INPUT_COLUMNS, INPUTS_ATTR, describe, inputs_record, shard_changes
from pipeline.cache.integrity import check_integrity
from pipeline.cache.layout import (
    FAILURES_NAME,
    LUIGI_TEMP_GLOB,
    MERGED_NAME,
    CacheError,
    append_run_log,
    integrity_path,
    num_shards,
    remove_stale_temp_files,
    shard_path,
    shards_done,
    write_config,
    write_latest,
)
from pipeline.cache.merge import merge_shards
from pipeline.cache.provenance import make_attrs, utc_now
from pipeline.cache.reader import open_cache
from pipeline.crops import store as crop_store
from pipeline.datasets.manifest import inside_root, read_manifest, resolve_data_root
from pipeline.datasets.registry import get_dataset
from pipeline.features import extractor as features
from pipeline.utils.fileio import file_sha256

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def manifest_rows(manifest: str, protocol: str) -> tuple[dict, ...]:
    """The manifest rows a cache covers (all, or those in ``protocol``'s splits), in manifest order."""
    df = read_manifest(manifest)
    if protocol:
        df = df[df[protocol] != ""]
    return tuple(df.to_dict("records"))


@lru_cache(maxsize=2)
def load_extractor(extractor: str, weights: str, device: str) -> torch.nn.Module:
    """The feature extractor, loaded once per process and device."""
    return features.make_extractor(extractor, weights, device)


def resolve_pixels(pixels: str, dataset_folder: str | Path, manifest_sha256: str, crop_pad: float) -> str:
    """``CacheConfig.pixels`` for ``PIXELS=``: ``store:<digest>`` of the finished crop store that fits the manifest
    and box padding (``auto``, ``store``), else ``source``.

    Raises:
        ValueError: an unknown ``pixels``, or ``store`` and no fitting store.
    """
    if pixels not in crop_store.PIXELS_CHOICES:
        raise ValueError(f"PIXELS must be one of {crop_store.PIXELS_CHOICES}, got {pixels!r}")
    if pixels == "source":
        return PIXELS_SOURCE
    stores = crop_store.stores_of(dataset_folder, manifest_sha256, crop_pad)
    if stores:
        log.info("reading pixels from the crop store %s", stores[0])
        return STORE_PREFIX + stores[0].name
    if pixels == "store":
        raise ValueError(f"no finished crop store of this manifest at crop_pad {crop_pad} under "
                         f"{crop_store.crops_root(dataset_folder)}: build it with `make crops` (or PIXELS=source)")
    log.info("no crop store of this manifest under %s: decoding the source videos", crop_store.crops_root(dataset_folder))
    return PIXELS_SOURCE


def store_folder(config: CacheConfig, crops_root: str | Path) -> Path | None:
    """The crop store a cache reads (under ``crops_root``, the cache root ``make crops`` wrote to), or None for the
    source videos."""
    if not config.store_digest:
        return None
    return crop_store.crops_dir(Path(crops_root) / config.dataset, config.store_digest)


def build_config(args: argparse.Namespace) -> CacheConfig:
    """The CacheConfig of a ``tasks.cache`` command line (hashes the manifest and the weights; finds the crop
    store for ``--pixels``)."""
    spec = get_dataset(args.dataset)
    if args.protocol and args.protocol not in spec.protocols:
        raise ValueError(f"{args.dataset} has no protocol {args.protocol!r}; choose one of {sorted(spec.protocols)}")
    weights_sha = "random-init" if args.extractor == "i3d" else "none"
    if args.i3d_weights and args.extractor == "i3d":
        if not Path(args.i3d_weights).is_file():
            raise FileNotFoundError(f"I3D_WEIGHTS {args.i3d_weights} does not exist")
        weights_sha = file_sha256(args.i3d_weights)
    manifest_sha256 = file_sha256(args.manifest)
    crops_root = getattr(args, "crops_root", "") or args.cache_dir
    pixels = resolve_pixels(getattr(args, "pixels", "source"), Path(crops_root) / args.dataset, manifest_sha256,
                            args.crop_pad)
    return CacheConfig(dataset=args.dataset, protocol=args.protocol or "", pixels=pixels,
                       manifest_sha256=manifest_sha256,
                       i3d_weights_sha256=weights_sha, extractor=args.extractor, clips_per_video=args.clips_per_video,
                       t_p=args.t_p or spec.t_p, crop_pad=args.crop_pad, backend=args.backend,
                       clip_len=args.clip_len, crop_size=args.crop_size,
                       precision=args.precision, compression=args.compression, shard_size=args.shard_size)


def shard_count(config: CacheConfig, manifest: str) -> int:
    """Shards of the build of ``config`` over ``manifest``."""
    return num_shards(len(manifest_rows(manifest, config.protocol)), config.shard_size)


def shard_paths(config: CacheConfig, cache_root: str | Path, manifest: str) -> list[Path]:
    """Every shard file of the build, done or not."""
    folder = config.cache_dir(cache_root)
    return [shard_path(folder, i) for i in range(shard_count(config, manifest))]


def status(config: CacheConfig, cache_root: str | Path, manifest: str) -> str:
    """One line: done and remaining shards, and whether the merged view is there."""
    folder = config.cache_dir(cache_root)
    total = shard_count(config, manifest)
    done = shards_done(folder, total)
    merged = (folder / MERGED_NAME).exists()
    return (f"{folder}: {len(done)}/{total} shards complete, {total - len(done)} remaining"
            + ("; merged view present" if merged else ""))


def recheck(config: CacheConfig, cache_root: str | Path, manifest: str, retry_failed: bool,
            rebuild_changed: bool = False) -> list[str]:
    """Send bad or retryable finished shards back to work (``extract.shards_to_rebuild``), and those whose input
    files changed since they were built when ``rebuild_changed`` (else name them); drop the merged view when a
    shard is redone, missing or the view itself fails its check. Returns one line per action or warning."""
    shards = shard_paths(config, cache_root, manifest)
    lines = []
    rebuild = extract.shards_to_rebuild(shards, retry_failed=retry_failed)
    for path in shards:
        if path in rebuild or not path.exists():
            continue
        try:
            changes = shard_changes(path)
        except CacheError as err:  # passed its integrity check, yet does not open as a cache file
            rebuild[path] = str(err)
            continue
        if changes and rebuild_changed:
            rebuild[path] = describe(changes)
        elif changes:
            lines.append(f"warning: {path}: {describe(changes)}; its features are of the old files: "
                         "REBUILD_CHANGED=1 (--rebuild-changed) rebuilds it")
    for path, why in rebuild.items():
        lines.append(f"rebuilding {path}: {why}")
        path.unlink(missing_ok=True)
        integrity_path(path).unlink(missing_ok=True)
    merged = config.cache_dir(cache_root) / MERGED_NAME
    if merged.exists():
        why = (check_integrity(merged) or _refused(merged)
               or ("shards to (re)build" if not all(p.exists() for p in shards) else ""))
        if why:
            lines.append(f"re-merging {merged}: {why}")
            merged.unlink()
            integrity_path(merged).unlink(missing_ok=True)
    return lines


def _refused(path: Path) -> str:
    """Why ``open_h5`` refuses the file (one crafted to read outside its folder), or ""."""
    try:
        open_h5(path).close()
    except CacheError as err:
        return str(err)
    return ""


@dataclass(frozen=True)
class ShardJob:
    """Where one shard's inputs are and how to run it (none of this changes the shard's content)."""

    manifest: str
    data_root: str
    i3d_weights: str = ""
    decode_workers: int = 1
    batch_size: int = 4
    crops_root: str = ""


class BuildRefused(Exception):
    """A build that cannot start (no manifest, no data, weights that do not load): one line, exit status 2."""


@dataclass(frozen=True)
class BuildPlan:
    """One cache build, checked and ready to run: its identity (``config``) and how to run it.

    Attributes:
        config: the cache's identity; its hash names the folder.
        cache_root: the cache root (``CACHE_DIR``).
        job: where the inputs are and how to run a shard.
        device: ``cpu``, ``cuda`` (every GPU) or ``cuda:k``.
    """

    config: CacheConfig
    cache_root: str
    job: ShardJob
    device: str

    @property
    def cache_dir(self) -> Path:
        return self.config.cache_dir(self.cache_root)

    def task_params(self) -> dict[str, object]:
        """The parameters of the Luigi tasks of this build (only ``config_json`` and ``cache_root`` identify)."""
        return {"config_json": self.config.to_json(), "cache_root": self.cache_root, "manifest": self.job.manifest,
                "data_root": self.job.data_root, "i3d_weights": self.job.i3d_weights,
                "decode_workers": self.job.decode_workers, "batch_size": self.job.batch_size, "device": self.device,
                "crops_root": self.job.crops_root}


def plan_build(args: argparse.Namespace) -> BuildPlan:
    """Check a ``tasks.cache`` command line before any task runs and return its plan: the manifest and DATA_ROOT
    hold the first samples' files and the I3D weights load (a bad file is one line here, not one traceback per
    shard). Creates the cache folder.

    Raises:
        BuildRefused: with the one-line reason.
    """
    try:
        if not Path(args.manifest).is_file():
            raise FileNotFoundError(f"manifest {args.manifest} does not exist (run `make manifest` first)")
        config = build_config(args)
        data_root = resolve_data_root(args.manifest, args.data_root)
        rows = manifest_rows(args.manifest, config.protocol)
        if not rows:
            raise ValueError(f"{args.manifest} has no sample{' in protocol ' + args.protocol if args.protocol else ''}")
        extract.check_data_root(rows, data_root)
    except (ValueError, FileNotFoundError) as err:
        raise BuildRefused(str(err)) from err
    try:
        load_extractor(config.extractor, args.i3d_weights, args.device)
    except (ValueError, RuntimeError, OSError) as err:
        raise BuildRefused(f"I3D_WEIGHTS {args.i3d_weights}: {str(err).splitlines()[0]}") from err
    if config.extractor == "i3d" and config.i3d_weights_sha256 == "random-init":
        log.warning("NO I3D WEIGHTS GIVEN (I3D_WEIGHTS=): features come from a RANDOMLY INITIALISED I3D and are "
                    "meaningless for real data")
    workers = args.decode_workers if args.decode_workers >= 0 else default_decode_workers(args.device,
                                                                                          os.cpu_count() or 1)
    job = ShardJob(manifest=str(args.manifest), data_root=str(data_root), i3d_weights=args.i3d_weights,
                   decode_workers=workers, batch_size=args.batch_size, crops_root=getattr(args, "crops_root", ""))
    plan = BuildPlan(config, str(args.cache_dir), job, args.device)
    try:
        plan.cache_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(plan.cache_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(plan.cache_dir))
    except OSError as err:
        raise BuildRefused(f"CACHE_DIR {args.cache_dir}: cannot write {err.filename or plan.cache_dir} "
                           f"({err.strerror or err}); give a writable CACHE_DIR=") from err
    return plan


def prepare(plan: BuildPlan, *, coordinated: bool, retry_failed: bool, rebuild_changed: bool) -> list[str]:
    """Ready the folder of a build about to run: its ``config.json``, no temp files of killed runs (unless a luigid
    coordinates other machines, whose temp files are live), bad or retryable shards sent back to work
    (``recheck``). Returns the lines to print, the build's status last."""
    write_config(plan.cache_dir, plan.config.to_dict())
    if not coordinated:
        for path in remove_stale_temp_files(plan.cache_dir):
            log.info("removed %s, left by a killed run", path.name)
    lines = recheck(plan.config, plan.cache_root, plan.job.manifest, retry_failed, rebuild_changed)
    return [*lines, status(plan.config, plan.cache_root, plan.job.manifest)]


def outcome(plan: BuildPlan, seconds: float) -> tuple[list[str], str]:
    """What a finished build prints: its status and failure lines, and an error line ("" when none) when samples
    could not be reached (they are retried by a rerun)."""
    lines = [status(plan.config, plan.cache_root, plan.job.manifest) + f" ({seconds:.1f} s)"]
    skipped, unreachable = failure_counts(plan.cache_dir)
    failures = plan.cache_dir / FAILURES_NAME
    if failures.exists():
        lines.append(f"{skipped} samples skipped, listed in {failures}")
    error = (f"{unreachable} samples could not be reached or met a passing fault (memory, disk, interrupted I/O; "
             f"stage {extract.ENVIRONMENT_STAGE!r} in {failures}); check DATA_ROOT {plan.job.data_root} and free "
             "space, then rerun: they are retried") if unreachable else ""
    return lines, error


_SHARD_SECONDS: list[float] = []
"""Durations of the shards this process ran, for the ETA."""


def run_shard(config: CacheConfig, cache_root: str | Path, index: int, job: ShardJob, device: str,
              out_path: str | Path) -> dict:
    """Decode, crop, pose and encode shard ``index`` into ``out_path`` (a temporary path, renamed onto the shard's
    final path by the caller); returns its run-log entry for ``log_shard``."""
    final = shard_path(config.cache_dir(cache_root), index)
    rows = manifest_rows(job.manifest, config.protocol)
    chunk = rows[index * config.shard_size:(index + 1) * config.shard_size]
    inputs = inputs_record(input_paths(chunk, job.data_root))  # before any file is read
    attrs = {**make_attrs(config, config.i3d_weights_sha256), INPUTS_ATTR: inputs}
    started = utc_now()
    model = load_extractor(config.extractor, job.i3d_weights, device)
    stats = extract.extract_shard(chunk, job.data_root, config, model, out_path, attrs=attrs,
                                  workers=job.decode_workers, batch_size=job.batch_size, device=device,
                                  record_as=final, store=store_folder(config, job.crops_root or cache_root))
    return {"shard": index, "started": started, "host": socket.gethostname(), "pid": os.getpid(), "device": device,
            "videos": stats.samples, "clips": stats.clips, "failures": stats.failures,
            "seconds": round(stats.seconds, 2), "i3d_seconds": round(stats.i3d_seconds, 2),
            "videos_per_s": round(stats.samples / stats.seconds, 3) if stats.seconds else 0.0,
            "backends": stats.backends}


def input_paths(rows: tuple[dict, ...], data_root: str | Path) -> dict[str, dict[str, Path]]:
    """Each row's video and skeleton file under ``data_root`` (a path that leaves it is left out: that sample
    fails at the ``manifest`` stage, reading nothing)."""
    paths: dict[str, dict[str, Path]] = {}
    for row in rows:
        inputs = paths.setdefault(str(row["sample_id"]), {})
        for name, column in INPUT_COLUMNS.items():
            try:
                inputs[name] = inside_root(data_root, str(row.get(column) or ""))
            except ValueError:
                continue
    return paths


def log_shard(config: CacheConfig, cache_root: str | Path, manifest: str, entry: dict) -> None:
    """Append a finished shard's entry (``run_shard``'s) to the run log and log the build's progress and ETA."""
    folder = config.cache_dir(cache_root)
    seconds = entry["seconds"]
    append_run_log(folder, entry)
    total = shard_count(config, manifest)
    done = len(shards_done(folder, total))
    _SHARD_SECONDS.append(seconds)
    eta = (total - done) * sum(_SHARD_SECONDS) / len(_SHARD_SECONDS)
    log.info("shard %d: %d videos, %d clips, %d failures in %.1f s; %d/%d shards complete, ETA %s at this "
             "worker's pace", entry["shard"], entry["videos"], entry["clips"], entry["failures"], seconds, done,
             total, duration(eta))


def merge_build(config: CacheConfig, cache_root: str | Path, manifest: str) -> None:
    """Merge every shard into ``cache.h5``, drop the temp files of killed runs, point ``LATEST`` at the cache when
    it holds a clip, and log the merge."""
    folder = config.cache_dir(cache_root)
    merge_shards(shard_paths(config, cache_root, manifest), folder / MERGED_NAME)
    for stale in folder.glob(LUIGI_TEMP_GLOB):  # left by killed runs; every shard is done now
        stale.unlink(missing_ok=True)
    with open_cache(folder) as merged:
        clips = len(merged)
    if clips:
        write_latest(folder)
    else:
        log.warning("%s holds no clip (every sample failed, see %s); LATEST left unchanged", folder, FAILURES_NAME)
    append_run_log(folder, {"merged": MERGED_NAME, "host": socket.gethostname(), "at": utc_now()})


def shard_failure_line(shard_index: int, error: BaseException) -> str:
    """The one line a build prints for a shard that raised (a full disk, a file-size limit, an I/O error): the
    finished shards are kept and the failed one left no file, so a rerun continues where it stopped."""
    text = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {text[0] if text else ''}"[:400]
    number = getattr(error, "errno", None) or getattr(error.__cause__, "errno", None)
    hint = " (free some space, or raise the file-size limit)" if number in (errno.ENOSPC, errno.EDQUOT,
                                                                             errno.EFBIG) else ""
    if not isinstance(error, OSError):  # a bug, not the disk: its traceback is in the log above
        return f"shard {shard_index} could not be built: {reason} (traceback above); the finished shards are kept"
    return (f"shard {shard_index} could not be built: {reason}{hint}; the finished shards are kept and no partial "
            "file is left: rerun to continue")


def failure_counts(folder: str | Path) -> tuple[int, int]:
    """``(skipped samples, of which unreachable)`` from a cache folder's failures.csv ((0, 0) when absent)."""
    path = Path(folder) / FAILURES_NAME
    if not path.exists():
        return 0, 0
    stages = read_failures(path)["stage"]
    return len(stages), int((stages == extract.ENVIRONMENT_STAGE).sum())


def duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def default_decode_workers(device: str, cpu_count: int) -> int:
    """Decode processes per shard when not given.

    With I3D on a GPU, decoding is the CPU's only work: use up to 4 processes. With I3D on the CPU both stages
    share the cores; on <= 2 cores decoding in-process was measured faster (``bench/bench_pipeline.py``) because
    a worker steals I3D's threads, so it only overlaps when there are cores to spare.
    """
    if device.startswith("cuda"):
        return max(1, min(4, cpu_count - 1))
    return 0 if cpu_count <= 2 else max(1, min(4, cpu_count // 8))


def gpu_slots(device: str, workers: int, device_count: int) -> int:
    """Shards that may run at once on the GPUs of this machine (Luigi's ``gpu`` resource of the local scheduler).

    ``cuda`` spreads shards over every GPU, one shard per GPU; a named GPU (``cuda:1``) runs one shard at a time.
    """
    return max(1, min(workers, device_count)) if device == "cuda" else 1
