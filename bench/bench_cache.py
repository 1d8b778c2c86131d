"""Benchmark the cache's feature compression: bytes per clip, write speed and random-access read speed.

For every compression name, writes ``--clips`` clips as 4 shards with ``pipeline.cache.writer.ShardWriter``, merges
them into a virtual-dataset view, then reads every clip once in random order, one clip at a time, through
``CacheReader.read_features`` after reopening the file (HDF5 chunk cache cold; the OS page cache is warm, so
this measures decompression and HDF5 overhead, not the disk): from one shard directly and through the merged
``cache.h5``, as float32 (the default) and as float16 (as stored). Passes interleave the codecs and the median
pass is reported, both per wall second and per CPU second of this process; on a shared, loaded machine the
CPU-second figure is the stable one (every read is single-threaded).

Features come from the real I3D (``pipeline.i3d.model``) with DeepMind's rgb_scratch weights on the CricketShot
sample in ``../shared/i3d`` (Mixed_5c is ~73% exact zeros, max ~17); the 64-frame windows at several
offsets, also mirrored, give distinct clips that are then repeated (each chunk is compressed on its own, so
repeats do not help compression). Without those files, or with ``--source simulated``, it uses a ReLU of a
smoothed Gaussian field calibrated to the same zero fraction. Random-init I3D features are not used: their
values are ~1e-6, float16 subnormals, nothing like real ones.

Checksums: every codec is written twice in the same run, with the cache's integrity checks (Fletcher-32 on every
dataset, verified by HDF5 on each chunk read, and the sha256 record written beside each file) and without them (as
before they existed), and read back alike, so ``write_ratio`` and ``read_*_ratio`` (with / without) are measured
under the same load. For the checked copy it also times the integrity passes: the sha256 of the shards (MiB/s), the
cheap recheck a rerun of ``make cache`` does (size and modification time only) and the full ``make verify`` pass
(clips/s).

Usage::

    python -m bench.bench_cache --out bench/cache.json [--clips 64] [--source auto|i3d|simulated] [--compressions ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter

from pipeline.cache import format as cache_format
from pipeline.cache import merge as cache_merge
from pipeline.cache import reader as cache
from pipeline.cache import writer as cache_writer
from pipeline.cache.integrity import check_integrity
from pipeline.cache.provenance import library_versions, make_attrs
from pipeline.cache.writer import write_rows
from pipeline.i3d.spec import CLIP_FRAMES, FEATURE_SHAPE
from pipeline.tools import verify_cache
from pipeline.utils.fileio import file_sha256

log = logging.getLogger("bench_cache")

SHARED_I3D = Path(os.environ.get("VPN_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "i3d"
COMPRESSIONS = (
    "none", "lzf", "gzip-1", "gzip-4", "zstd-1", "zstd-3", "zstd-9", "bshuf-lz4", "bshuf-zstd-3",
    "blosc2-lz4-shuffle-5", "blosc2-lz4-bitshuffle-5", "blosc2-zstd-bitshuffle-3", "blosc2-zstd-shuffle-3",
)
NUM_SHARDS = 4
J, T_P = 25, 20


def i3d_features(n_distinct: int) -> np.ndarray:
    """Real Mixed_5c features of 64-frame CricketShot windows (offsets spread over the 79 frames, mirrored)."""
    import torch  # only this source needs torch

    from pipeline.i3d.model import extract_features, load_i3d

    sample = np.load(SHARED_I3D / "cricketshot_rgb_u8.npz")
    video = sample["lut_float32"][sample["frames"]]  # (79, 224, 224, 3) in [-1, 1]
    offsets = np.linspace(0, len(video) - CLIP_FRAMES, (n_distinct + 1) // 2).astype(int)
    clips = [video[o:o + CLIP_FRAMES] for o in offsets]
    clips += [c[:, :, ::-1] for c in clips]  # mirrored copies
    x = torch.from_numpy(np.stack(clips[:n_distinct]).transpose(0, 4, 1, 2, 3).copy())  # (n, 3, 64, 224, 224)
    model = load_i3d(SHARED_I3D / "rgb_scratch.pt")
    return extract_features(model, x, batch_size=1, device="cpu", amp_bf16=False)  # (n, 1024, 8, 7, 7)


def simulated_features(n_distinct: int, zero_fraction: float = 0.73, mean: float = 0.19,
                       seed: int = 0) -> np.ndarray:
    """ReLU of a smoothed Gaussian field with per-channel scales, with the zero fraction and mean of real
    Mixed_5c features (measured on CricketShot with rgb_scratch)."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal((n_distinct, *FEATURE_SHAPE)), sigma=(0, 0, 1, 1, 1))
    field /= field.std(axis=(2, 3, 4), keepdims=True)
    field *= rng.lognormal(0.0, 0.7, size=(1, FEATURE_SHAPE[0], 1, 1, 1))  # channel scales
    field = np.maximum(field - np.quantile(field, zero_fraction), 0.0)  # (n, 1024, 8, 7, 7)
    return field * (mean / field.mean())


def make_rows(features: np.ndarray, first: int, n: int, rng: np.random.Generator) -> list[dict]:
    """n clips cycling through ``features``, with plausible poses and metadata (``ShardWriter.append`` kwargs)."""
    return [dict(features=features[i % len(features)].astype(np.float16),
                 poses=rng.normal(size=(2, 3, J, T_P)).astype(np.float32), sample_id=f"S001A{i:03d}",
                 label=i % 60, action="drink water", clip_index=0, frame_indices=np.arange(CLIP_FRAMES),
                 box=(0, 0, 224, 224), splits={"cs": "train", "cv": "test"}) for i in range(first, first + n)]


def read_pass(path: Path, order: np.ndarray, dtype: type) -> tuple[float, float]:
    """Read ``order`` one clip at a time as ``dtype`` after reopening ``path``; return (wall s, CPU s).

    The open itself (which loads the per-row metadata and checks the shards) is not timed."""
    with cache.open_cache(path) as reader:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in order:
            reader.read_features(int(i), dtype=dtype)
        return time.perf_counter() - wall, time.process_time() - cpu


@contextlib.contextmanager
def integrity_checks(enabled: bool):
    """Write with the cache's checksums (the default), or without any: no Fletcher-32, no sha256 record."""
    patched = [(cache_format, "CHECKSUM", {}), (cache_writer, "CHECKSUM", {}),
               (cache_writer, "record_integrity", lambda written, final: None),
               (cache_merge, "record_integrity", lambda written, final: None)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    if not enabled:
        for module, name, value in patched:
            setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def integrity_timings(folder: Path, n_clips: int) -> dict:
    """sha256 speed over the shards, the cheap recheck of a rerun, and the full verify pass of one cache folder."""
    shards = sorted(folder.glob("shard_*.h5"))
    size = sum(p.stat().st_size for p in shards)
    start = time.perf_counter()
    for path in shards:
        file_sha256(path)
    sha_s = time.perf_counter() - start
    start = time.perf_counter()
    assert all(check_integrity(path) == "" for path in shards)
    cheap_s = time.perf_counter() - start
    start = time.perf_counter()
    assert verify_cache.verify_folder(folder) == {}
    verify_s = time.perf_counter() - start
    return {"sha256_mib_per_s": size / 2**20 / sha_s, "recheck_ms_per_shard": 1000 * cheap_s / len(shards),
            "verify_clips_per_s": n_clips / verify_s}


def write_cache(name: str, features: np.ndarray, n_clips: int, folder: Path) -> dict:
    """Write ``n_clips`` clips with compression ``name`` as 4 shards, merge them; sizes and write speed."""
    rng = np.random.default_rng(0)
    attrs = make_attrs({"bench": True}, "")
    per_shard = n_clips // NUM_SHARDS
    folder.mkdir()
    shards = [folder / f"shard_{k:05d}.h5" for k in range(NUM_SHARDS)]
    wall = cpu = 0.0
    for k, path in enumerate(shards):
        rows = make_rows(features, k * per_shard, per_shard, rng)
        w, c = time.perf_counter(), time.process_time()
        write_rows(path, rows, num_joints=J, t_p=T_P, attrs=attrs, protocols=("cs", "cv"), compression=name,
                   atomic=True)
        wall, cpu = wall + time.perf_counter() - w, cpu + time.process_time() - c
    cache_merge.merge_shards(shards, folder / cache.MERGED_NAME)
    n = per_shard * NUM_SHARDS
    feature_bytes = sum(_feature_bytes(p) for p in shards)
    return {"compression": name, "kib_per_clip": feature_bytes / n / 1024,
            "ratio": n * np.prod(FEATURE_SHAPE) * 2 / feature_bytes,
            "file_kib_per_clip": sum(p.stat().st_size for p in shards) / n / 1024,
            "write_clips_per_s": n / wall, "write_clips_per_cpu_s": n / cpu}


def _feature_bytes(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return f["features"].id.get_storage_size()


READS = {  # result key -> (file, dtype)
    "shard_fp32": ("shard_00000.h5", np.float32),
    "merged_fp32": (cache.MERGED_NAME, np.float32),
    "merged_fp16": (cache.MERGED_NAME, np.float16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--clips", type=int, default=64, help="clips per compression (split over 4 shards)")
    parser.add_argument("--distinct", type=int, default=6, help="distinct feature clips to cycle through")
    parser.add_argument("--source", choices=("auto", "i3d", "simulated"), default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="read passes (the median is reported)")
    parser.add_argument("--compressions", nargs="*", default=COMPRESSIONS)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: system temp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pipeline.cache.writer", "pipeline.cache.merge"):
        logging.getLogger(name).setLevel(logging.WARNING)

    have_i3d = (SHARED_I3D / "rgb_scratch.pt").is_file() and (SHARED_I3D / "cricketshot_rgb_u8.npz").is_file()
    if args.source == "i3d" and not have_i3d:
        parser.error(f"--source i3d needs rgb_scratch.pt and cricketshot_rgb_u8.npz in {SHARED_I3D}")
    source = "i3d" if args.source == "i3d" or (args.source == "auto" and have_i3d) else "simulated"
    log.info("computing %d distinct %s feature clips", args.distinct, source)
    features = i3d_features(args.distinct) if source == "i3d" else simulated_features(args.distinct)
    f16 = features.astype(np.float16)
    stats = {"zero_fraction": float((f16 == 0).mean()), "max": float(f16.max()), "mean": float(f16.mean())}
    log.info("features: %s", stats)

    variants = [(name, checks) for name in args.compressions for checks in (True, False)]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folders = {v: Path(tmp) / f"{v[0]}-{'checked' if v[1] else 'plain'}" for v in variants}
        results = {}
        for variant in variants:
            with integrity_checks(variant[1]):
                results[variant] = {**write_cache(variant[0], features, args.clips, folders[variant]),
                                    "checksums": variant[1]}
        n = args.clips // NUM_SHARDS * NUM_SHARDS
        rng = np.random.default_rng(1)
        timings = {(v, key): [] for v in variants for key in READS}
        for _ in range(args.repeats):  # interleave codecs and variants so that machine load hits them alike
            for variant in variants:
                for key, (file_name, dtype) in READS.items():
                    rows = n // NUM_SHARDS if file_name.startswith("shard") else n
                    wall, cpu = read_pass(folders[variant] / file_name, rng.permutation(rows), dtype)
                    timings[variant, key].append((rows / wall, rows / cpu))
        for name in args.compressions:
            results[name, True].update(integrity_timings(folders[name, True], n))
    for (variant, key), passes in timings.items():
        results[variant][f"read_{key}_clips_per_s"] = float(np.median([per_s for per_s, _ in passes]))
        results[variant][f"read_{key}_clips_per_cpu_s"] = float(np.median([per_cpu_s for _, per_cpu_s in passes]))
    for name in args.compressions:  # checked / plain, same run
        checked, plain = results[name, True], results[name, False]
        checked["ratios_vs_plain"] = {key: checked[key] / plain[key] for key in checked
                                      if key.startswith(("write_", "read_")) and key in plain}
    for r in results.values():
        log.info("%-25s %-7s %6.1f KiB/clip x%4.2f | write %4.0f/s %4.0f/cpu-s | read fp32 shard %5.0f/cpu-s "
                 "merged %5.0f/s %5.0f/cpu-s | fp16 merged %5.0f/s %5.0f/cpu-s",
                 r["compression"], "checked" if r["checksums"] else "plain", r["kib_per_clip"], r["ratio"],
                 r["write_clips_per_s"], r["write_clips_per_cpu_s"], r["read_shard_fp32_clips_per_cpu_s"],
                 r["read_merged_fp32_clips_per_s"], r["read_merged_fp32_clips_per_cpu_s"],
                 r["read_merged_fp16_clips_per_s"], r["read_merged_fp16_clips_per_cpu_s"])
        if "ratios_vs_plain" in r:
            log.info("%-25s checked/plain: %s; sha256 %.0f MiB/s, recheck %.2f ms/shard, verify %.0f clips/s",
                     r["compression"], ", ".join(f"{k.removesuffix('_clips_per_cpu_s')} {v:.3f}"
                                                 for k, v in r["ratios_vs_plain"].items() if k.endswith("cpu_s")),
                     r["sha256_mib_per_s"], r["recheck_ms_per_shard"], r["verify_clips_per_s"])
    report = {"source": source, "feature_stats": stats, "clips": args.clips, "distinct_clips": args.distinct,
              "cpu_count": os.cpu_count(), "machine": platform.platform(),
              "versions": library_versions(),
              "results": list(results.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
