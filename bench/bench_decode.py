"""Decode and crop benchmark on the real 1080p NTU samples; chooses ``pipeline.defaults.DEFAULT_BACKEND``.

For every NTU ``.avi`` and every backend, one thread each, it times reading a 64-frame uniform sample
(``sample_frame_indices``; open + decode + RGB), best of ``--repeats``. ``opencv_read`` is the OpenCV reader with
``read()`` instead of ``grab()`` for skipped frames; both OpenCV variants are also timed on a sparse
``--sparse-clip-len``-frame sample, where most frames are skipped, to measure what ``grab()`` saves. It also times
``to_uint8_crops`` / ``crop_and_resize`` per 64-frame clip for three box sizes (shrink and grow).

Usage (from the repository root):
    python -m bench.bench_decode --out bench/results/decode.json [--samples ../shared/samples/ntu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import decord
import numpy as np

from pipeline.i3d.spec import CLIP_FRAMES
from pipeline.video.crop import crop_and_resize, to_uint8_crops
from pipeline.video.reader import BACKENDS, FrameCountError, OpenCVReader, sample_frame_indices

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLES = REPO.parent / "shared" / "samples" / "ntu"
SPARSE_CLIP_LEN = 16
CROP_SIDES = (180, 700, 1080)
"""Crop box sides benchmarked: a small box (grows: INTER_LINEAR), a one-person box and a two-person box."""


class OpenCVReadAllReader(OpenCVReader):
    """OpenCV reader that ``read()``s (decode + BGR conversion) skipped frames instead of ``grab()``-ing them."""

    def _decode_into(self, wanted: np.ndarray, slots: list[np.ndarray], out: np.ndarray) -> None:
        for index, rows in zip(wanted.tolist(), slots):
            while self._next <= index:
                ok, frame = self._cap.read()
                if not ok:
                    raise FrameCountError(self.path, self.num_frames, self._next, int(wanted[-1]))
                self._next += 1
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out[rows[0]])
            out[rows[1:]] = out[rows[0]]


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Smallest wall time and smallest process CPU time (all threads) of ``repeats`` calls, in seconds.

    CPU time is the steadier number on a shared machine, where wall time also counts waiting for a core.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def read_uniform_clip(factory: Callable[..., object], path: Path, clip_len: int = CLIP_FRAMES) -> np.ndarray:
    """Open ``path``, read a ``clip_len``-frame uniform sample, close; what one video costs the cache pipeline."""
    with factory(path, threads=1) as reader:
        indices = sample_frame_indices(reader.num_frames, clip_len)[0]
        return reader.get_frames(indices)


def bench_decode(videos: list[Path], repeats: int, factories: dict[str, Callable[..., object]], clip_len: int) -> dict:
    """Wall and CPU seconds per video for each backend (best of ``repeats``), plus means over videos."""
    results = {}
    for name, factory in factories.items():
        times = {
            video.name: best_of(repeats, lambda: read_uniform_clip(factory, video, clip_len)) for video in videos
        }
        results[name] = {
            "wall_s_per_video": {video: wall for video, (wall, _) in times.items()},
            "cpu_s_per_video": {video: cpu for video, (_, cpu) in times.items()},
            "mean_wall_s_per_video": float(np.mean([wall for wall, _ in times.values()])),
            "mean_cpu_s_per_video": float(np.mean([cpu for _, cpu in times.values()])),
        }
    fastest = min(results, key=lambda name: results[name]["mean_cpu_s_per_video"])
    for entry in results.values():
        entry["cpu_ratio_to_fastest"] = entry["mean_cpu_s_per_video"] / results[fastest]["mean_cpu_s_per_video"]
    return {"clip_len": clip_len, "backends": results, "fastest_by_cpu": fastest}


def bench_crop(frames: np.ndarray, repeats: int) -> dict:
    """Milliseconds (wall, CPU) per 64-frame clip for uint8 crops and for the normalised float32 I3D input."""
    height, width = frames.shape[1:3]
    results = {}
    for side in CROP_SIDES:
        x0, y0 = (width - side) / 2 + 0.4, (height - side) / 2 + 0.4
        box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
        uint8_wall, uint8_cpu = best_of(repeats, lambda: to_uint8_crops(frames, box))
        float_wall, float_cpu = best_of(repeats, lambda: crop_and_resize(frames, box))
        results[str(side)] = {
            "to_uint8_crops_wall_ms": 1000 * uint8_wall,
            "to_uint8_crops_cpu_ms": 1000 * uint8_cpu,
            "crop_and_resize_wall_ms": 1000 * float_wall,
            "crop_and_resize_cpu_ms": 1000 * float_cpu,
        }
    return results


def main(argv: list[str] | None = None) -> dict:
    """Run both benchmarks, print a summary, write JSON to ``--out``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder of NTU *.avi files")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparse-clip-len", type=int, default=SPARSE_CLIP_LEN)
    args = parser.parse_args(argv)
    videos = sorted(args.samples.glob("*.avi"))
    if not videos:
        parser.error(f"no .avi files in {args.samples}")
    cv2.setNumThreads(1)
    factories = {name: BACKENDS[name] for name in ("opencv", "pyav", "decord")}
    opencv_variants = {"opencv": BACKENDS["opencv"], "opencv_read": OpenCVReadAllReader}
    decode = bench_decode(videos, args.repeats, {**factories, "opencv_read": OpenCVReadAllReader}, CLIP_FRAMES)
    sparse = bench_decode(videos, args.repeats, opencv_variants, args.sparse_clip_len)
    crop = bench_crop(read_uniform_clip(BACKENDS["opencv"], videos[0]), args.repeats)
    results = {
        "what": "seconds to open + decode a 64-frame uniform sample of each NTU video, one thread, best of repeats; "
        "crop + resize ms per 64-frame clip",
        "videos": [video.name for video in videos],
        "repeats": args.repeats,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "versions": {
            "opencv": cv2.__version__, "av": av.__version__, "decord": decord.__version__, "numpy": np.__version__,
        },
        "load_average_1min": os.getloadavg()[0],
        "decode": decode,
        "decode_sparse": sparse,
        "crop": crop,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for name, entry in [*decode["backends"].items(), *(("sparse_" + n, e) for n, e in sparse["backends"].items())]:
        print(
            f"{name:18s} wall {entry['mean_wall_s_per_video']:.3f} s/video  cpu {entry['mean_cpu_s_per_video']:.3f} "
            f"s/video  (cpu x{entry['cpu_ratio_to_fastest']:.2f})"
        )
    for side, entry in crop.items():
        print(
            f"crop {side:>4s}px  uint8 {entry['to_uint8_crops_wall_ms']:.1f} ms wall / "
            f"{entry['to_uint8_crops_cpu_ms']:.1f} ms cpu  float32 {entry['crop_and_resize_wall_ms']:.1f} ms wall / "
            f"{entry['crop_and_resize_cpu_ms']:.1f} ms cpu"
        )
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
