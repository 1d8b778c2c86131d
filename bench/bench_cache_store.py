"""Cache-build throughput from the person-crop store vs from the source videos, in one run (issue 28).

``python -m bench.bench_cache_store --out bench/results/cache_store.json [--samples ../shared/samples/ntu]
[--weights W] [--videos 3] [--repeats 5] [--device cpu]``

The videos: the real 1080p NTU pair of ``--samples`` (video + skeleton) copied ``--videos`` times (the decode
cost of NTU's MPEG-4 originals; the copies have other names, so nothing is cached between them), else synthetic
1920x1080 NTU-format videos. One thread everywhere (``torch``, OpenCV): every rate is per core.

* ``crops``: ``make crops`` of the videos (``store_build.run_shard``), videos/s: the one source decode;
* ``input_path``: ``extract.extract_shard`` with the ``pixels`` stand-in extractor (decode or store read, skeleton,
  crop, poses; no I3D), in-process, videos/s from the ``source`` and from the ``store``, and their ratio
  ``ratio_cache_store_vs_source``. The two are measured interleaved (source, store, source, store, ...,
  ``--repeats`` shards of each after one warm-up each) and each rate is the median over its repeats, so a load
  that comes and goes on a shared machine weighs on both alike; the JSON keeps every repeat's wall time;
* ``i3d``: the same with I3D (``--weights``; on ``--device``), from both, interleaved once each (a CPU I3D takes
  ~10 s per clip);
* ``decode_workers_per_gpu_node``: from the per-core input-path rates (one clip per video), the decode workers a
  GPU node needs to feed I3D at 500, 1,500 and 4,000 clips/s: ``ceil(rate / per-core rate)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch

from pipeline.build import extract
from pipeline.cache.config import STORE_PREFIX, CacheConfig
from pipeline.cache.layout import crops_dir
from pipeline.cache.provenance import make_attrs
from pipeline.crops import store_build
from pipeline.crops.store import StoreConfig
from pipeline.datasets import manifest
from pipeline.features.extractor import make_extractor
from pipeline.synthetic.dataset import SyntheticConfig, generate
from pipeline.utils.fileio import file_sha256

REAL_ID = "S001C001P001R001A001"
GPU_RATES = (500, 1500, 4000)
"""Clips/s an I3D on one GPU node may consume (H100: hundreds to thousands, by precision and batch)."""


def _dataset(root: Path, samples: Path | None, videos: int) -> str:
    """Write the videos and their manifest under ``root``; returns what they are."""
    data = root / "data"
    data.mkdir(parents=True)
    if samples is not None and (samples / f"{REAL_ID}_rgb.avi").is_file():
        for i in range(videos):
            sample_id = f"S001C001P001R{i + 1:03d}A001"
            shutil.copy(samples / f"{REAL_ID}_rgb.avi", data / f"{sample_id}_rgb.avi")
            shutil.copy(samples / f"{REAL_ID}.skeleton", data / f"{sample_id}.skeleton")
        what = f"the real 1080p NTU pair {REAL_ID} x {videos}"
    else:
        generate(data, SyntheticConfig(n=videos, seed=1, frame_size=(1920, 1080), min_frames=70, max_frames=110))
        what = f"{videos} synthetic 1920x1080 NTU-format videos"
    df, _ = manifest.scan("ntu60", data)
    manifest.write_manifest(df, root / "manifest.csv", data_root=data)
    return what


def _shard_seconds(rows, data: Path, config: CacheConfig, model, out: Path, store: Path | None,
                   device: str) -> float:
    """Wall seconds of one shard of ``rows`` (the file is removed after)."""
    stats = extract.extract_shard(rows, data, config, model, out, attrs=make_attrs(config, config.i3d_weights_sha256),
                                  workers=0, batch_size=1, device=device, progress=False, store=store)
    out.unlink()
    if stats.failures:
        raise RuntimeError(f"{stats.failures} samples failed in the benchmark")
    return stats.seconds


def run(out: Path, samples: Path | None, weights: str | None, videos: int, device: str, repeats: int = 5) -> dict:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        what = _dataset(root, samples, videos)
        rows = manifest.read_manifest(root / "manifest.csv").to_dict("records")
        data = root / "data"
        sha = file_sha256(root / "manifest.csv")
        store_config = StoreConfig(dataset="ntu60", manifest_sha256=sha, shard_size=len(rows))
        folder = crops_dir(root / "cache" / "ntu60", store_config.digest())
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(store_config.to_json())
        start = time.perf_counter()
        store_build.run_shard(store_config, 0, root / "manifest.csv", data, folder / "crops_00000.h5")
        crops_rate = len(rows) / (time.perf_counter() - start)
        store_build.merge_store(store_config, root / "cache" / "ntu60", root / "manifest.csv")
        store_bytes = (folder / "crops_00000.h5").stat().st_size
        result = {"videos": what, "device": device, "cpu": platform.processor() or platform.machine(),
                  "cpu_count": os.cpu_count(), "threads": 1, "repeats": repeats,
                  "crops_videos_per_s": round(crops_rate, 3), "store_bytes_per_video": store_bytes // len(rows)}
        weights_sha = file_sha256(weights) if weights else "random-init"
        for extractor in ("pixels", "i3d"):
            model = make_extractor(extractor, weights, device)
            paths = {"source": None, "store": folder}
            configs = {pixels: CacheConfig(dataset="ntu60", manifest_sha256=sha, extractor=extractor,
                                           i3d_weights_sha256=weights_sha if extractor == "i3d" else "none",
                                           pixels="source" if store is None else STORE_PREFIX + folder.name)
                       for pixels, store in paths.items()}
            seconds: dict[str, list[float]] = {"source": [], "store": []}
            for pixels, store in paths.items():  # warm-up: imports, codec set-up, first-touch allocations
                _shard_seconds(rows[:1], data, configs[pixels], model, root / "warm.h5", store, device)
            for _ in range(repeats if extractor == "pixels" else 1):
                for pixels, store in paths.items():  # interleaved: source, store, source, store, ...
                    seconds[pixels].append(_shard_seconds(rows, data, configs[pixels], model, root / "shard.h5",
                                                          store, device))
            rates = {pixels: len(rows) / statistics.median(s) for pixels, s in seconds.items()}
            key = "input_path" if extractor == "pixels" else "i3d"
            result[key] = {"source_videos_per_s": round(rates["source"], 3),
                           "store_videos_per_s": round(rates["store"], 3),
                           "store_over_source": round(rates["store"] / rates["source"], 2),
                           "shard_seconds": {p: [round(x, 3) for x in s] for p, s in seconds.items()}}
    result["ratio_cache_store_vs_source"] = result["input_path"]["store_over_source"]
    per_core = {"source": result["input_path"]["source_videos_per_s"], "store": result["input_path"]["store_videos_per_s"]}
    result["decode_workers_per_gpu_node"] = {
        str(rate): {pixels: math.ceil(rate / per_core[pixels]) for pixels in per_core} for rate in GPU_RATES}
    result["goal"] = "ratio_cache_store_vs_source >= 8 (the input path, per core)"
    result["wall_seconds"] = round(time.perf_counter() - wall, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=Path, default=None, help="folder with the real NTU pair")
    parser.add_argument("--weights", default=None, help="I3D weights (speed does not depend on them)")
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved shards of each path (input path)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.out, args.samples, args.weights, args.videos, args.device, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
