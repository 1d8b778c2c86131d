"""Crop-store benchmark (``make bench ONLY=crops``): decode cost of the person-crop store vs the 1080p source, the
candidate store formats, the decode backends, and the fine-tune's epoch time with each pixel source.

In one run, one thread, on every real NTU ``_rgb.avi`` of ``--samples``:

- ``source``: one 64-frame training clip as the fine-tune's source path reads it (``pipeline.video.reader.read_clip`` with
  the default backend, then ``pipeline.video.crop.to_uint8_crops`` to 224), per backend (``opencv``, ``pyav``,
  ``decord``; ``torchcodec``'s import is tried and its exact error recorded: torchcodec 0.17.0 is the release for
  torch 2.13, and its wheel needs CUDA's ``libnvrtc.so.13`` and FFmpeg's shared libraries, absent here);
- ``formats``: the video's store region (``pipeline.crops.store_build.store_region`` of a centred box of 0.8 x the frame
  height, default size and margins) encoded once per candidate, its bytes, and the same clip decoded from it and
  cropped to 224: ``h264`` (the store's defaults: ``store_build.encode_h264`` / ``decode_h264`` through an HDF5
  file, as ``CropStore.read``), ``h264-no-tune`` (preset fast, no fastdecode), ``jpeg-h5`` (one JPEG q90 per frame in HDF5), ``raw-zstd-h5`` (uint8 frames,
  one chunk each, zstd-1);
- ``ratio_store_vs_source``: clips/s per core of the store (``h264``) over the source (default backend), for
  decoding the clip's 64 frames; ``ratio_store_vs_source_with_crop`` with the crop to 224 included (the same
  ``to_uint8_crops`` in both paths, from a ~256 px box in the store and a ~860 px one in the source).

Times are the best of ``--repeats`` in process CPU seconds (steadier than wall time on a shared machine) and wall
seconds. ``finetune`` (``--finetune-videos`` > 0): one epoch of ``vpn_head.train.finetune`` on synthetic 1920 x 1080 NTU
videos at ``--clip-len`` x ``--crop-size`` (random I3D, CPU, no DataLoader workers), with ``PIXELS=source`` and
``PIXELS=store``: ``epoch_time_s`` of each from its ``train_log.csv``.

Usage:
    python -m bench.bench_crops --out bench/results/crops.json [--samples ../shared/samples/ntu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import h5py
import hdf5plugin
import numpy as np
import pandas as pd

from pipeline.crops import store as crop_store
from pipeline.crops import store_build
from pipeline.datasets import manifest
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE
from pipeline.synthetic.dataset import SyntheticConfig, generate
from pipeline.video import crop
from pipeline.video import reader as video
from pipeline.video.sampling import sample_frame_indices

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES = REPO.parent / "shared" / "samples" / "ntu"
BACKENDS = ("opencv", "pyav", "decord")


def best_of(repeats: int, fn: Callable[[], object]) -> dict[str, float]:
    """Smallest process CPU time and smallest wall time of ``repeats`` calls, seconds."""
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return {"cpu_s": min(cpu), "wall_s": min(wall)}


def torchcodec_status() -> str:
    """"" when torchcodec's decoder imports, else its error's first line (no project backend uses it then)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as err:  # ImportError when absent; OSError when its libraries do not load
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return ""


def encode_candidates(frames: np.ndarray, size: tuple[int, int]) -> dict[str, bytes]:
    """The store region's frames in every candidate format, as the bytes a store would keep per video."""
    store = crop_store.StoreConfig(dataset="ntu60", manifest_sha256="bench", crop_pad=0.0)
    out = {"h264": store_build.encode_h264(iter(frames), size, store.crf, store.preset, store.tune)[0],
           "h264-no-tune": store_build.encode_h264(iter(frames), size, store.crf, "fast")[0]}
    for name, write in (("jpeg-h5", _write_jpeg), ("raw-zstd-h5", _write_raw)):
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as f:
            write(f, frames)
        out[name] = buffer.getvalue()
    return out


def _write_jpeg(f: h5py.File, frames: np.ndarray) -> None:
    data = f.create_dataset("frames", (len(frames),), dtype=h5py.vlen_dtype(np.uint8))
    for i, frame in enumerate(frames):
        data[i] = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]


def _write_raw(f: h5py.File, frames: np.ndarray) -> None:
    f.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]), **hdf5plugin.Zstd(clevel=1))


def decode_candidate(name: str, data: bytes, positions: np.ndarray) -> np.ndarray:
    """Frames ``positions`` of a candidate's bytes, read through an HDF5 file where the store would keep them."""
    if name.startswith("h264"):
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as f:
            f.create_dataset("video", data=np.frombuffer(data, np.uint8))
        with h5py.File(buffer, "r") as f:
            stream = f["video"][()].tobytes()
        return crop_store.decode_h264(stream, positions)
    with h5py.File(io.BytesIO(data), "r") as f:
        if name == "jpeg-h5":
            return np.stack([cv2.cvtColor(cv2.imdecode(f["frames"][int(p)], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                             for p in positions])
        unique, inverse = np.unique(positions, return_inverse=True)
        return f["frames"][unique][inverse]


def bench_video(path: Path, repeats: int, backends: list[str]) -> dict:
    """Source and candidate clip times and bytes for one video."""
    with video.open_video(path) as reader:
        num_frames, width, height = reader.num_frames, reader.width, reader.height
        frames = reader.get_frames(np.arange(num_frames))  # (N, H, W, 3)
    side = 0.8 * height
    box = np.array([(width - side) / 2, 0.1 * height, (width + side) / 2, 0.9 * height], np.float32)
    config = crop_store.StoreConfig(dataset="ntu60", manifest_sha256="bench", crop_pad=0.0)
    joints = box.astype(np.float64).reshape(1, 1, 2, 2)  # its two corners as the joints: at crop_pad 0 the box
    region, size = store_build.store_region(joints, width, height, config)
    x0, y0, x1, y1 = region
    stored = np.stack([cv2.resize(f[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA) for f in frames])
    del frames
    view = crop_store.StoreView((width, height), (float(x0), float(y0)), (size[0] / (x1 - x0), size[1] / (y1 - y0)))
    indices = sample_frame_indices(num_frames, CLIP_FRAMES, 1)[0]  # (64,)
    result = {"frames": num_frames, "frame_size": [width, height], "store_frame_size": list(size), "source": {},
              "formats": {}}
    for backend in backends:
        def read_source(backend: str = backend) -> np.ndarray:
            return video.read_clip(path, indices, (backend,))[0]
        result["source"][backend] = {**best_of(repeats, read_source),
                                     "with_crop": best_of(repeats, lambda f=read_source: crop.to_uint8_crops(
                                         f(), box, CROP_SIZE))}
    reference = crop.to_uint8_crops(video.read_clip(path, indices)[0], box, CROP_SIZE).astype(np.int16)
    for name, data in encode_candidates(stored, size).items():
        def read_store(name: str = name, data: bytes = data) -> np.ndarray:
            return decode_candidate(name, data, indices)
        def cut(read: Callable[[], np.ndarray] = read_store) -> np.ndarray:
            return crop.to_uint8_crops(read(), view.box(box), CROP_SIZE)
        error = float(np.abs(cut().astype(np.int16) - reference).mean())
        result["formats"][name] = {"bytes": len(data), **best_of(repeats, read_store),
                                   "with_crop": best_of(repeats, cut), "mean_abs_error_vs_source": error}
    return result


def summarise(videos: dict[str, dict], backends: list[str]) -> dict:
    """Means over videos: clips/s per core for each source backend and candidate, bytes per video."""
    def rate(times: list[float]) -> float:
        return 1.0 / statistics.mean(times)
    source = {b: {"clips_per_s_per_core": rate([v["source"][b]["cpu_s"] for v in videos.values()]),
                  "with_crop_clips_per_s_per_core": rate([v["source"][b]["with_crop"]["cpu_s"]
                                                          for v in videos.values()])} for b in backends}
    names = next(iter(videos.values()))["formats"]
    formats = {n: {"bytes_per_video": statistics.mean(v["formats"][n]["bytes"] for v in videos.values()),
                   "clips_per_s_per_core": rate([v["formats"][n]["cpu_s"] for v in videos.values()]),
                   "with_crop_clips_per_s_per_core": rate([v["formats"][n]["with_crop"]["cpu_s"]
                                                           for v in videos.values()]),
                   "mean_abs_error_vs_source": statistics.mean(v["formats"][n]["mean_abs_error_vs_source"]
                                                               for v in videos.values())} for n in names}
    return {"source": source, "formats": formats}


def bench_finetune(videos: int, clip_len: int, crop_size: int, folder: Path) -> dict:
    """One fine-tune epoch per pixel source on synthetic 1080p videos: epoch seconds from each train_log.csv."""
    from tasks import cache as cache_tasks  # building the bench data needs the Luigi tasks
    from tasks import crops as crops_tasks
    from vpn_head.engine.config import FinetuneConfig
    from vpn_head.train.finetune import finetune

    generate(folder / "data", SyntheticConfig(n=videos, seed=0, min_frames=60, max_frames=90, num_classes=2,
                                              frame_size=(1920, 1080)))
    df, _ = manifest.scan("ntu60", folder / "data")
    manifest.write_manifest(df, folder / "manifest.csv", data_root=folder / "data")
    common = ["--dataset", "ntu60", "--manifest", str(folder / "manifest.csv"), "--cache-dir", str(folder / "cache")]
    if cache_tasks.main([*common, "--extractor", "pixels", "--shard-size", str(videos)]) != 0:
        raise RuntimeError("building the benchmark cache failed")
    start = time.perf_counter()
    if crops_tasks.main(common) != 0:
        raise RuntimeError("building the benchmark crop store failed")
    out = {"videos": videos, "clip_len": clip_len, "crop_size": crop_size, "frame_size": [1920, 1080],
           "make_crops_s": time.perf_counter() - start}
    for pixels in ("source", "store"):
        config = FinetuneConfig(dataset="ntu60", protocol="cs", eval_split="test", epochs=1, batch_size=2,
                                per_gpu_batch=2, clip_len=clip_len, crop_size=crop_size, eval_clips=1,
                                eval_crop_size=crop_size, num_workers=0, manifest=str(folder / "manifest.csv"),
                                cache=str(folder / "cache"), runs_dir=str(folder / "runs"), run_name=pixels,
                                device="cpu", pixels=pixels)
        finetune(config)
        log = pd.read_csv(folder / "runs" / pixels / "train_log.csv")
        out[f"epoch_time_s_{pixels}"] = float(log["epoch_time_s"].iloc[-1])
        out[f"train_clips_per_s_{pixels}"] = float(log["train_samples_per_s"].iloc[-1])
    out["epoch_speedup_store_vs_source"] = out["epoch_time_s_source"] / out["epoch_time_s_store"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--finetune-videos", type=int, default=8, help="0: skip the fine-tune epoch timing")
    parser.add_argument("--clip-len", type=int, default=32)
    parser.add_argument("--crop-size", type=int, default=112)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths = sorted(args.samples.glob("*_rgb.avi"))
    if not paths:
        raise SystemExit(f"error: no *_rgb.avi under {args.samples}")
    tc_error = torchcodec_status()
    backends = list(BACKENDS)
    videos = {p.name: bench_video(p, args.repeats, backends) for p in paths}
    summary = summarise(videos, backends)
    source, store = summary["source"][video.DEFAULT_BACKEND], summary["formats"]["h264"]
    report = {"machine": platform.processor() or platform.machine(), "threads": 1, "repeats": args.repeats,
              "clip": [CLIP_FRAMES, CROP_SIZE], "source_backend": video.DEFAULT_BACKEND,
              "store_format": crop_store.StoreConfig(dataset="ntu60", manifest_sha256="bench", crop_pad=0.0).to_json(),
              "source_clips_per_s_per_core": source["clips_per_s_per_core"],
              "store_clips_per_s_per_core": store["clips_per_s_per_core"],
              "ratio_store_vs_source": store["clips_per_s_per_core"] / source["clips_per_s_per_core"],
              "ratio_store_vs_source_with_crop": (store["with_crop_clips_per_s_per_core"]
                                                  / source["with_crop_clips_per_s_per_core"]), **summary,
              "torchcodec": {"available": not tc_error, "error": tc_error}, "videos": videos}
    if args.finetune_videos > 0:
        with tempfile.TemporaryDirectory(prefix="bench_crops_") as tmp:
            report["finetune"] = bench_finetune(args.finetune_videos, args.clip_len, args.crop_size, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "videos"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
