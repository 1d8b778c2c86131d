"""Cost of every cache stage against the number of videos N, up to NTU-120's 114,480 (``make bench ONLY=scale``).

Each stage is measured on its own, with cheap stand-ins where the real work does not matter to the question:

- ``manifest``: ``pipeline.datasets.manifest.scan`` + ``write_manifest`` of an NTU-120-shaped tree of empty files with
  official names (``nturgb+d_rgb/<id>_rgb.avi``, ``nturgb+d_skeletons/<id>.skeleton``; setups, cameras and action
  ranges of the real id space, every id of the official missing-skeleton list present without its skeleton).
- ``luigi_*``: the real ``tasks.cache.BuildCache`` / ``CacheShard`` tasks over that manifest (shards of 200),
  with ``pipeline.build.extract.extract_shard`` replaced by a stand-in that copies a pre-written shard of zero features
  and writes the shard's real ids, labels and splits into it. Reported: wall time of the whole build, time before
  the first shard starts, per-task overhead ((wall - stand-in work - merge) / shards), and the time to find
  everything complete on a second run (``resume``). Local scheduler, and ``luigid`` on 127.0.0.1.
- ``merge`` / ``open``: ``pipeline.cache.merge.merge_shards`` of those shards into ``cache.h5``; ``open_cache`` of it.
- ``read_*``: head-training reads (``vpn_head.data.clips.CachedClips`` through the trainer's ``make_loader``, batch 16,
  random order, two epochs with persistent workers) of the same clips (ReLU-noise features like real Mixed_5c)
  stored in one shard file vs merged views over 50 and 573 shards, with 0/2/4 DataLoader workers: steady
  samples/s (second epoch), the first epoch's seconds (every process opens the cache), and the open file
  handles of the main process and of one worker.
- ``failures_*``, ``run_log_*``, ``latest``: ``failures.csv`` appended per shard, rewritten and read with N rows;
  ``run_log.jsonl`` with one line per shard, appended and parsed; ``pipeline.build.steps.status`` over the shard files;
  ``pipeline.cache.layout.resolve`` (what ``vpn_head.data.clips.resolve_cache`` runs) with a ``LATEST`` pointer among 10..1000
  cache folders.

Every cost is fitted as ``seconds = a * N ** slope`` over the measured sizes (least squares in log-log); a stage
not measured at 114,480 is extrapolated with its slope and marked so. Writes ``--out`` (JSON), and beside it
``<stem>.md`` (tables) and ``<stem>.png`` (log-log plot).

Usage::

    python -m bench.bench_scale --out bench/results/scale.json [--sizes 1000 10000 114480] [--skip-luigid]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import h5py
import luigi
import numpy as np
import torch
from torch.utils.data import RandomSampler

import tasks.cache as cache_tasks
from pipeline.build import steps as cache_build
from pipeline.build.extract import ShardStats
from pipeline.cache import format as cache_format
from pipeline.cache import layout
from pipeline.cache import reader as cache
from pipeline.cache.config import CacheConfig
from pipeline.cache.failures import append_failures, read_failures, write_failures
from pipeline.cache.integrity import record_integrity
from pipeline.cache.merge import merge_shards
from pipeline.cache.provenance import make_attrs
from pipeline.cache.writer import ShardWriter, write_rows
from pipeline.datasets.manifest import read_manifest, read_manifest_root, scan, write_manifest
from pipeline.datasets.ntu import format_sample_id, parse_sample_id, read_missing_list
from pipeline.datasets.registry import get_dataset
from pipeline.defaults import DEFAULT_COMPRESSION
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE, FEATURE_SHAPE
from vpn_head.data.clips import CachedClips, resolve_cache
from vpn_head.runtime import make_loader

log = logging.getLogger("bench_scale")

REPO = Path(__file__).resolve().parents[1]
MISSING_LIST = REPO.parent / "shared" / "samples" / "lists" / "NTU_RGBD120_samples_with_missing_skeletons.txt"
NTU120_VIDEOS = 114_480
NTU60_VIDEOS = 56_880
"""NTU-120 = NTU-60 (setups 1-17, actions 1-60) + 57,600 videos of setups 18-32, actions 61-120."""
SUBJECTS_PER_SETUP = 12
"""Performers drawn per setup for the synthetic ids (the official per-setup lists are not in ../shared)."""
SHARD_SIZE = 200
DEFAULT_SIZES = (1_000, 10_000, NTU120_VIDEOS)
READ_SHARDS = (1, 50, 573)
READ_WORKERS = (0, 2, 4)
LATEST_FOLDERS = (10, 100, 1000)
ZERO_FRACTION_SHIFT = 0.61
"""ReLU(z - 0.61) of standard normal z is zero ~73% of the time, like real Mixed_5c features."""


# ----------------------------------------------------------------------------------------------------------
# the NTU-120 id space


def ntu120_ids(missing: set[str], seed: int = 0) -> list[str]:
    """114,480 NTU-120 sample ids: the official missing-skeleton ids plus seeded draws from the real id space.

    Setups 1-17 hold actions 1-60 (56,880 videos), setups 18-32 actions 61-120; cameras 1-3, replications 1-2;
    ``SUBJECTS_PER_SETUP`` performers per setup (those of the missing list first). Sorted.
    """
    rng = np.random.default_rng(seed)
    missing_by_setup: dict[int, set[int]] = {}
    for sid in map(parse_sample_id, missing):
        missing_by_setup.setdefault(sid.setup, set()).add(sid.subject)
    chosen: list[str] = []
    parts = ((range(1, 18), range(1, 61), NTU60_VIDEOS), (range(18, 33), range(61, 121), NTU120_VIDEOS - NTU60_VIDEOS))
    for setups, actions, total in parts:
        pool = []
        for setup in setups:
            subjects = sorted(missing_by_setup.get(setup, set()))
            others = [p for p in rng.permutation(np.arange(1, 107)).tolist() if p not in subjects]
            subjects += others[:max(0, SUBJECTS_PER_SETUP - len(subjects))]
            pool += [format_sample_id(setup, c, p, r, a) for c in (1, 2, 3) for p in subjects for r in (1, 2)
                     for a in actions]
        forced = sorted(m for m in missing if parse_sample_id(m).setup in setups)
        rest = sorted(set(pool) - set(forced))
        chosen += forced + [rest[i] for i in rng.choice(len(rest), total - len(forced), replace=False)]
    return sorted(chosen)


def make_tree(root: Path, ids: list[str], missing: set[str]) -> None:
    """Empty files with the official names: a video per id, a skeleton per id not in ``missing``."""
    videos, skeletons = root / "nturgb+d_rgb", root / "nturgb+d_skeletons"
    videos.mkdir(parents=True)
    skeletons.mkdir()
    for sid in ids:
        os.close(os.open(videos / f"{sid}_rgb.avi", os.O_CREAT | os.O_WRONLY, 0o644))
        if sid not in missing:
            os.close(os.open(skeletons / f"{sid}.skeleton", os.O_CREAT | os.O_WRONLY, 0o644))


def bench_manifest(work: Path, sizes: list[int], missing_list: Path | None) -> tuple[list[dict], dict[int, Path]]:
    """Scan + write the manifest of an n-video tree for every n; returns rows and the manifests written."""
    missing = read_missing_list(missing_list) if missing_list else set()
    all_ids = ntu120_ids(missing)
    order = np.random.default_rng(1).permutation(len(all_ids))
    rows, manifests = [], {}
    for n in sizes:
        ids = sorted(all_ids[i] for i in order[:n])
        root = work / f"tree_{n}"
        t0 = time.perf_counter()
        make_tree(root, ids, missing)
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        df, _ = scan("ntu120", root, missing_list=missing_list)
        scanned = time.perf_counter() - t0
        manifests[n] = work / f"manifest_{n}.csv"
        t0 = time.perf_counter()
        write_manifest(df, manifests[n], data_root=root)
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_manifest(manifests[n])
        read = time.perf_counter() - t0
        problems = int((df["problem"] != "").sum())
        rows.append({"n": n, "scan_s": scanned, "write_s": written, "read_s": read, "make_tree_s": made,
                     "rows": len(df), "problems": problems})
        log.info("manifest n=%d: scan %.2f s, write %.2f s, read %.2f s (%d problems)", n, scanned, written, read,
                 problems)
    return rows, manifests


# ----------------------------------------------------------------------------------------------------------
# Luigi, merge, open


class StandInExtractor:
    """Replaces ``pipeline.build.extract.extract_shard``: a copy of a pre-written zero-feature shard with the rows' ids.

    Records when each call started and how long the calls took, so that Luigi's own cost can be separated.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.templates: dict[int, Path] = {}
        self.starts: list[float] = []
        self.seconds = 0.0

    def _template(self, n: int, config: CacheConfig, attrs: dict) -> Path:
        if n not in self.templates:
            spec = get_dataset(config.dataset)
            path = self.folder / f"template_{n}.h5"
            with ShardWriter(path, n_rows_max=n, num_joints=spec.num_joints, t_p=config.t_p, attrs=attrs,
                             protocols=tuple(spec.protocols), compression=config.compression) as writer:
                # strings are stored fixed-length: the template's must be as wide as any real value
                widest_action = max(spec.classes, key=lambda name: len(name.encode()))
                for i in range(n):
                    writer.append(features=np.zeros(FEATURE_SHAPE, np.float16),
                                  poses=np.zeros((2, 3, spec.num_joints, config.t_p), np.float32),
                                  sample_id=f"S000C000P000R000A{i:03d}"[-20:], label=0, action=widest_action,
                                  clip_index=0, frame_indices=np.arange(CLIP_FRAMES), box=np.zeros(4),
                                  splits={p: "train" for p in spec.protocols})
            self.templates[n] = path
        return self.templates[n]

    def __call__(self, rows, data_root, config, model, out_path, *, attrs, record_as=None,
                 **_: object) -> ShardStats:
        start = time.perf_counter()
        self.starts.append(start)
        shutil.copyfile(self._template(len(rows), config, attrs), out_path)
        with h5py.File(out_path, "r+") as f:
            f["sample_ids"][:] = np.array([r["sample_id"] for r in rows], dtype=object)
            f["labels"][:] = np.array([int(r["label"]) for r in rows])
            f[cache_format.ACTIONS][:] = np.array([r["action"] for r in rows], dtype=object)
            for protocol, ds in f[cache_format.SPLITS_GROUP].items():
                ds[:] = np.array([r[protocol] for r in rows], dtype=object)
        record_integrity(out_path, record_as if record_as is not None else out_path)  # as extract_shard does
        seconds = time.perf_counter() - start
        self.seconds += seconds
        return ShardStats(samples=len(rows), clips=len(rows), seconds=seconds)


def cache_config(manifest: Path, shard_size: int) -> CacheConfig:
    """The ``pixels``-extractor NTU-120 config of ``manifest`` (as ``make cache`` would build it)."""
    args = argparse.Namespace(dataset="ntu120", protocol="", extractor="pixels", i3d_weights="", manifest=manifest,
                              clips_per_video=1, t_p=0, crop_pad=0.15, backend="opencv", precision="fp32",
                              compression=DEFAULT_COMPRESSION, shard_size=shard_size, clip_len=CLIP_FRAMES,
                              crop_size=CROP_SIZE, pixels="source", cache_dir="")
    return cache_build.build_config(args)


@contextlib.contextmanager
def luigid(folder: Path) -> Iterator[dict]:
    """Run a fresh ``luigid`` on 127.0.0.1 (a free port) for the ``with`` block; yields ``luigi.build``'s arguments.

    Each call gets its own state folder under ``folder``: luigid reloads its pickled task states at start.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=folder))
    exe = Path(sys.executable).with_name("luigid")
    proc = subprocess.Popen([str(exe), "--address", "127.0.0.1", "--port", str(port), "--logdir", str(folder),
                             "--state-path", str(folder / "state.pickle")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"luigid did not start on 127.0.0.1:{port} (exit code {proc.poll()})")
            time.sleep(0.2)
        yield {"scheduler_host": "127.0.0.1", "scheduler_port": port}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_build(manifest: Path, cache_root: Path, shard_size: int,
              scheduler: Callable[[], contextlib.AbstractContextManager[dict]]) -> dict:
    """One ``BuildCache`` from scratch; then, with ``cache.h5`` deleted, again (completion checks + merge).

    ``scheduler()`` gives the ``luigi.build`` scheduler arguments for one build. Each build gets its own, since
    ``luigid`` ignores a task's return to PENDING for ``stable_done_cooldown_secs`` (10 s) after it was DONE.

    Returns:
        ``wall_s`` of the first build, ``first_shard_s`` (start of the build to the first shard's start),
        ``per_task_overhead_s`` ((wall - stand-in work - merge) / shards), ``resume_check_s`` (second build
        minus its merge: finding every shard complete), and the cache folder.
    """
    config = cache_config(manifest, shard_size)
    extractor = StandInExtractor(cache_root.parent)
    merge_seconds = []
    real_merge = merge_shards

    def timed_merge(*args, **kwargs) -> None:
        t0 = time.perf_counter()
        real_merge(*args, **kwargs)
        merge_seconds.append(time.perf_counter() - t0)

    def task() -> cache_tasks.BuildCache:
        return cache_tasks.BuildCache(config_json=config.to_json(), cache_root=str(cache_root),
                                      manifest=str(manifest), data_root=str(read_manifest_root(manifest)),
                                      decode_workers=0,
                                      device="cpu")

    build = {"workers": 1, "detailed_summary": True, "log_level": "WARNING"}
    cache_build.manifest_rows.cache_clear()  # every build reads its manifest, as a fresh process would
    with mock.patch.object(cache_build.extract, "extract_shard", extractor), \
            mock.patch.object(cache_build, "merge_shards", timed_merge), \
            mock.patch.object(cache_build, "_SHARD_SECONDS", []):
        with scheduler() as where:
            start = time.perf_counter()
            result = luigi.build([task()], **build, **where)
            wall = time.perf_counter() - start
        if not result.scheduling_succeeded or not task().complete():
            raise RuntimeError(f"the build over {manifest} failed:\n{result.summary_text}")
        (config.cache_dir(cache_root) / cache.MERGED_NAME).unlink()  # a run that died before its merge
        with scheduler() as where:
            t0 = time.perf_counter()
            luigi.build([task()], **build, **where)
            resume = time.perf_counter() - t0 - merge_seconds[-1]
        if len(merge_seconds) != 2 or not task().complete():
            raise RuntimeError(f"the resumed build over {manifest} did not merge")
    shards = len(extractor.starts)
    overhead = wall - extractor.seconds - merge_seconds[0]
    return {"shards": shards, "wall_s": wall, "first_shard_s": min(extractor.starts) - start,
            "stand_in_work_s": extractor.seconds, "merge_in_build_s": merge_seconds[0],
            "per_task_overhead_s": overhead / shards, "resume_check_s": resume,
            "cache_dir": str(config.cache_dir(cache_root))}


def open_fds(pid: int | str = "self") -> int:
    """Open file descriptors of a process (Linux ``/proc``); -1 where unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def child_pids() -> list[int]:
    """Direct children of this process (Linux ``/proc/self/task/*/children``)."""
    pids = []
    for task in Path("/proc/self/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def bench_merge(cache_dir: Path) -> dict:
    """``merge_shards`` of a cache folder's shards into a fresh view, then ``open_cache`` of it."""
    shards = sorted(cache_dir.glob("shard_*.h5"))
    out = cache_dir / "bench_merged.h5"
    t0 = time.perf_counter()
    merge_shards(shards, out)
    merged = time.perf_counter() - t0
    fds_before = open_fds()
    t0 = time.perf_counter()
    reader = cache.open_cache(out)
    opened = time.perf_counter() - t0
    fds_open = open_fds() - fds_before
    t0 = time.perf_counter()
    reader.read_rows(np.arange(0, len(reader), max(1, len(reader) // 64)))
    read64 = time.perf_counter() - t0
    fds_read = open_fds() - fds_before
    reader.close()
    out.unlink()
    return {"shards": len(shards), "merge_s": merged, "open_s": opened, "read_64_spread_rows_s": read64,
            "fds_after_open": fds_open, "fds_after_reads": fds_read}


def run_luigi_and_merge(manifests: dict[int, Path], work: Path, shard_size: int, use_luigid: bool) -> dict:
    """Luigi builds (local scheduler; ``luigid`` too when asked), then merge/open, for every n."""
    out: dict[str, list[dict]] = {"luigi_local": [], "luigi_luigid": [], "merge": []}
    for n, manifest in manifests.items():
        local = run_build(manifest, work / f"cache_local_{n}", shard_size,
                          lambda: contextlib.nullcontext({"local_scheduler": True}))
        out["luigi_local"].append({"n": n, **local})
        log.info("luigi local n=%d: %s", n, {k: v for k, v in local.items() if k != "cache_dir"})
        out["merge"].append({"n": n, **bench_merge(Path(local["cache_dir"]))})
        log.info("merge n=%d: %s", n, out["merge"][-1])
        if use_luigid:
            central = run_build(manifest, work / f"cache_luigid_{n}", shard_size,
                                lambda: luigid(work / f"luigid_{n}"))
            out["luigi_luigid"].append({"n": n, **central})
            log.info("luigid n=%d: %s", n, {k: v for k, v in central.items() if k != "cache_dir"})
            shutil.rmtree(work / f"cache_luigid_{n}")
    return out


# ----------------------------------------------------------------------------------------------------------
# head-training reads over many shards


def write_read_caches(folder: Path, clips: int, shard_counts: tuple[int, ...], seed: int = 0) -> dict[int, Path]:
    """The same ``clips`` noise-feature clips as one shard, and as merged views over each of ``shard_counts``."""
    spec = get_dataset("ntu120")
    rng = np.random.default_rng(seed)
    attrs = make_attrs({"dataset": spec.name, "t_p": spec.t_p, "bench": "scale"}, "")
    rows = []
    for i in range(clips):
        features = np.maximum(rng.standard_normal(FEATURE_SHAPE, dtype=np.float32) - ZERO_FRACTION_SHIFT, 0)
        action = spec.classes[i % len(spec.classes)]
        rows.append(dict(features=features.astype(np.float16),
                         poses=rng.normal(size=(2, 3, spec.num_joints, spec.t_p)), sample_id=f"read{i:06d}",
                         label=spec.classes.index(action), action=action, clip_index=0,
                         frame_indices=np.arange(CLIP_FRAMES), box=np.array([0, 0, 224, 224]),
                         splits={p: "train" for p in spec.protocols}))
    paths = {}
    for count in shard_counts:
        sub = folder / f"shards_{count}"
        bounds = np.linspace(0, clips, count + 1).astype(int)
        shard_paths = []
        for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            shard_paths.append(sub / f"shard_{k:05d}.h5")
            write_rows(shard_paths[-1], rows[lo:hi], num_joints=spec.num_joints, t_p=spec.t_p, attrs=attrs,
                       protocols=tuple(spec.protocols))
        if count == 1:
            paths[count] = shard_paths[0]
        else:
            merge_shards(shard_paths, sub / cache.MERGED_NAME)
            paths[count] = sub / cache.MERGED_NAME
    return paths


def read_pass(path: Path, workers: int, batch_size: int = 16, seed: int = 0) -> dict:
    """Two epochs of head-training reads: ``CachedClips`` through the trainer's ``make_loader``, random order.

    The first epoch includes opening the cache in every process (workers persist, as in training); the second
    is the steady rate an epoch of a long run sees.
    """
    clips = CachedClips(path, "cs1", "train", feature_dtype=torch.float16)
    sampler = RandomSampler(clips, generator=torch.Generator().manual_seed(seed))
    loader = make_loader(clips, batch_size, workers, torch.device("cpu"), sampler=sampler, seed=seed)
    seconds = []
    for _ in range(2):
        t0, n = time.perf_counter(), 0
        for features, _, _, _ in loader:
            n += len(features)
        seconds.append(time.perf_counter() - t0)
    fds = {"main": open_fds(), "workers": [open_fds(pid) for pid in child_pids()]}
    del loader
    return {"samples_per_s": n / seconds[1], "first_epoch_s": seconds[0], "samples": n, "fds_main": fds["main"],
            "fds_per_worker": max(fds["workers"], default=0)}


def bench_reads(folder: Path, clips: int, shard_counts: tuple[int, ...], workers: tuple[int, ...]) -> list[dict]:
    """Steady samples/s, first-epoch seconds and open files for every (shard count, workers)."""
    paths = write_read_caches(folder, clips, shard_counts)
    rows = []
    for count, path in paths.items():
        for w in workers:
            rows.append({"shards": count, "workers": w, "clips": clips, **read_pass(path, w)})
            log.info("read shards=%d workers=%d: %.0f samples/s (first epoch %.1f s), fds main %d, per worker %d",
                     count, w, rows[-1]["samples_per_s"], rows[-1]["first_epoch_s"], rows[-1]["fds_main"],
                     rows[-1]["fds_per_worker"])
    return rows


# ----------------------------------------------------------------------------------------------------------
# failures.csv, run_log.jsonl, status, LATEST


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_logs(folder: Path, sizes: list[int], shard_size: int) -> list[dict]:
    """failures.csv / run_log.jsonl / ``status`` with n rows (every video failed: the worst case)."""
    rows = []
    for n in sizes:
        sub = folder / f"logs_{n}"
        sub.mkdir(parents=True)
        shards = layout.num_shards(n, shard_size)
        failures = [(f"S{i:019d}", "decode", "video is an empty file") for i in range(n)]
        per_shard = np.array_split(np.arange(n), shards)

        def append_all() -> None:
            for idx in per_shard:
                append_failures(sub / "appended.csv", [failures[i] for i in idx])

        def run_log() -> None:
            for k in range(shards):
                layout.append_run_log(sub, {"shard": k, "videos": shard_size, "seconds": 1.0, "host": "bench"})

        row = {"n": n, "shards": shards,
               "failures_append_s": timed(append_all),
               "failures_write_s": timed(lambda: write_failures(sub / layout.FAILURES_NAME, failures)),
               "failures_read_s": timed(lambda: read_failures(sub / layout.FAILURES_NAME)),
               "run_log_append_s": timed(run_log),
               "run_log_parse_s": timed(lambda: [json.loads(line) for line in
                                                 (sub / layout.RUN_LOG).read_text().splitlines()])}
        rows.append(row)
        log.info("logs n=%d: %s", n, row)
    return rows


def bench_status(manifests: dict[int, Path], work: Path, shard_size: int) -> list[dict]:
    """``cache_build.status`` (what ``make resume`` prints first) over each finished local build."""
    rows = []
    for n, manifest in manifests.items():
        config = cache_config(manifest, shard_size)
        root = str(work / f"cache_local_{n}")
        cache_build.manifest_rows.cache_clear()
        rows.append({"n": n, "status_s": timed(lambda: cache_build.status(config, root, str(manifest)))})
    return rows


def bench_latest(folder: Path, counts: tuple[int, ...]) -> list[dict]:
    """``resolve_cache`` through ``LATEST`` among k cache folders (the newest of them holds a cache.h5)."""
    rows = []
    for k in counts:
        root = folder / f"latest_{k}"
        for i in range(k):
            (root / "ntu120" / f"{i:012x}").mkdir(parents=True)
            (root / "ntu120" / f"{i:012x}" / cache.MERGED_NAME).touch()
        (root / "ntu120" / layout.LATEST).write_text(f"{k - 1:012x}\n")
        rows.append({"caches": k, "resolve_cache_s": timed(lambda: resolve_cache(root, "ntu120"))})
    return rows


# ----------------------------------------------------------------------------------------------------------
# slopes, tables, plot

SCALING = {
    # stage name -> (result group, key): seconds against n
    "manifest scan": ("manifest", "scan_s"),
    "manifest write": ("manifest", "write_s"),
    "manifest read": ("manifest", "read_s"),
    "luigi local: overhead of the whole build": ("luigi_local", "overhead_s"),
    "luigi local: start to first shard": ("luigi_local", "first_shard_s"),
    "luigi local: resume completion checks": ("luigi_local", "resume_check_s"),
    "luigid: overhead of the whole build": ("luigi_luigid", "overhead_s"),
    "luigid: start to first shard": ("luigi_luigid", "first_shard_s"),
    "luigid: resume completion checks": ("luigi_luigid", "resume_check_s"),
    "merge into cache.h5": ("merge", "merge_s"),
    "open cache.h5": ("merge", "open_s"),
    "resume status line": ("status", "status_s"),
    "failures.csv: append per shard": ("logs", "failures_append_s"),
    "failures.csv: rewrite at merge": ("logs", "failures_write_s"),
    "failures.csv: read": ("logs", "failures_read_s"),
    "run_log.jsonl: append per shard": ("logs", "run_log_append_s"),
    "run_log.jsonl: parse": ("logs", "run_log_parse_s"),
}
EXTRAPOLATE_TO = (NTU120_VIDEOS, 10 * NTU120_VIDEOS)


def fit_slope(ns: list[int], seconds: list[float]) -> tuple[float, float]:
    """``(slope, a)`` of ``seconds = a * n ** slope`` by least squares in log-log (two points or more)."""
    slope, intercept = np.polyfit(np.log(ns), np.log(np.maximum(seconds, 1e-9)), 1)
    return float(slope), float(np.exp(intercept))


def scaling_table(results: dict) -> list[dict]:
    """One row per stage: measured seconds per n, the fitted slope, and NTU-120 / 10x NTU-120 times."""
    table = []
    for stage, (group, key) in SCALING.items():
        points = [(r["n"], r[key]) for r in results.get(group, []) if r.get(key) is not None]
        if len(points) < 2:
            continue
        ns, secs = zip(*points)
        slope, a = fit_slope(list(ns), list(secs))
        row = {"stage": stage, "seconds": {str(n): s for n, s in points}, "slope": slope}
        for target in EXTRAPOLATE_TO:
            measured = dict(points).get(target)
            row[f"at_{target}"] = {"seconds": measured if measured is not None else a * target ** slope,
                                   "extrapolated": measured is None}
        table.append(row)
    return table


def _fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(results: dict) -> str:
    """The tables of a result as markdown (``*`` marks a value extrapolated with the fitted slope)."""
    sizes = results["sizes"]
    lines = [f"# Cost at scale ({results['machine']}, {results['cpu_count']} CPUs; shared machine, noisy)", "",
             f"Shards of {results['shard_size']} videos. `*` = extrapolated with the fitted log-log slope.", "",
             "| stage | " + " | ".join(f"N={n:,}" for n in sizes) + " | slope | NTU-120 (114,480) | 10x NTU-120 |",
             "|---|" + "---|" * len(sizes) + "---|---|---|"]
    for row in results["scaling"]:
        cells = [_fmt_s(row["seconds"][str(n)]) if str(n) in row["seconds"] else "" for n in sizes]
        ext = [_fmt_s(row[f"at_{t}"]["seconds"]) + ("*" if row[f"at_{t}"]["extrapolated"] else "")
               for t in EXTRAPOLATE_TO]
        lines.append(f"| {row['stage']} | " + " | ".join(cells) + f" | {row['slope']:.2f} | " + " | ".join(ext) + " |")
    for group in ("luigi_local", "luigi_luigid"):
        if results.get(group):
            lines += ["", f"**{group}**: per-task overhead " + ", ".join(
                f"{r['shards']} shards {r['per_task_overhead_s'] * 1000:.1f} ms" for r in results[group])]
    if results.get("reads"):
        lines += ["", f"Head-training reads, {results['reads'][0]['clips']} clips, batch 16, random order: "
                  "steady samples/s (second epoch); first epoch in s (opens the cache in every process); open "
                  "files of the main process / of one worker:", "",
                  "| layout | " + " | ".join(f"{w} workers" for w in results["read_workers"]) + " |",
                  "|---|" + "---|" * len(results["read_workers"])]
        for count in results["read_shards"]:
            cells = [f"{r['samples_per_s']:.0f}; {r['first_epoch_s']:.1f} s; {r['fds_main']}/{r['fds_per_worker']}"
                     for r in results["reads"] if r["shards"] == count]
            name = "one shard file" if count == 1 else f"cache.h5 over {count} shards"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if results.get("latest"):
        lines += ["", "`resolve_cache` via LATEST: " + ", ".join(
            f"{r['caches']} caches {_fmt_s(r['resolve_cache_s'])}" for r in results["latest"])]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Log-log plot of every scaling stage, measured points and the fitted line out to 10x NTU-120."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    grid = np.geomspace(min(results["sizes"]), EXTRAPOLATE_TO[-1], 50)
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for k, row in enumerate(results["scaling"]):
        ns = [int(n) for n in row["seconds"]]
        (line,) = ax.plot(ns, list(row["seconds"].values()), "os^v"[k // 20 % 4] + "-", color=colors[k % 20],
                          label=f"{row['stage']} (slope {row['slope']:.2f})")
        a = row["seconds"][str(ns[-1])] / ns[-1] ** row["slope"]
        ax.plot(grid[grid >= ns[-1]], a * grid[grid >= ns[-1]] ** row["slope"], "--", color=line.get_color())
    ax.axvline(NTU120_VIDEOS, color="grey", lw=0.8)
    ax.plot(grid, 1e-2 * grid / grid[0], ":", color="grey", label="slope 1 (linear), for reference")
    ax.set(xscale="log", yscale="log", xlabel="videos N", ylabel="seconds",
           title="Cost of each stage vs N (dashed: extrapolated with the fitted slope)")
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON; the .md and .png go beside it")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    parser.add_argument("--read-clips", type=int, default=2 * 573, help="clips in the head-read caches")
    parser.add_argument("--read-shards", type=int, nargs="+", default=list(READ_SHARDS))
    parser.add_argument("--read-workers", type=int, nargs="+", default=list(READ_WORKERS))
    parser.add_argument("--latest-caches", type=int, nargs="+", default=list(LATEST_FOLDERS))
    parser.add_argument("--skip-luigid", action="store_true")
    parser.add_argument("--work-dir", type=Path, help="keep the generated trees and caches here (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # this bench's progress; the libraries' per-shard INFO lines stay quiet
    sizes = sorted(set(args.sizes))
    missing_list = MISSING_LIST if MISSING_LIST.is_file() else None
    if missing_list is None:
        log.warning("%s is absent: the tree has no official missing-skeleton ids", MISSING_LIST)
    if args.work_dir and args.work_dir.exists():
        parser.error(f"--work-dir {args.work_dir} exists; give a new folder")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_scale_")))
        work.mkdir(parents=True, exist_ok=True)
        results: dict = {"sizes": sizes, "shard_size": args.shard_size, "machine": platform.machine(),
                         "cpu_count": os.cpu_count(), "missing_list": str(missing_list or ""),
                         "read_shards": args.read_shards, "read_workers": args.read_workers}
        results["manifest"], manifests = bench_manifest(work, sizes, missing_list)
        builds = run_luigi_and_merge(manifests, work, args.shard_size, not args.skip_luigid)
        for group, rows in builds.items():
            for row in rows:
                if "wall_s" in row:
                    row["overhead_s"] = row["wall_s"] - row["stand_in_work_s"] - row["merge_in_build_s"]
            results[group] = rows
        results["status"] = bench_status(manifests, work, args.shard_size)
        results["logs"] = bench_logs(work, sizes, args.shard_size)
        results["latest"] = bench_latest(work, tuple(args.latest_caches))
        results["reads"] = bench_reads(work / "reads", args.read_clips, tuple(args.read_shards),
                                       tuple(args.read_workers))
    results["scaling"] = scaling_table(results)
    results["total_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    plot(results, args.out.with_suffix(".png"))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
