"""Benchmark the end-to-end fine-tune: training clips/s and peak memory per clip, fp32 vs bf16, plus the data path.

Two measurements in one run:

- ``train``: full optimizer steps of ``vpn_head.model.finetune_vpn.FinetuneVPN`` (I3D to Mixed_5c, unfrozen, + the
  full-width VPN head; forward, ``vpn_loss``, backward, SGD) on random clips of ``--clip-len`` x ``--crop-size``, in fp32
  and, on CUDA, with bf16 autocast. Clips per second is the median over ``--repeats`` timed passes of ``--steps``
  steps after one warm-up pass, the precisions interleaved. Peak memory per clip: on CUDA
  ``torch.cuda.max_memory_allocated`` over a pass divided by ``--batch``; on the CPU the growth of the process's
  peak RSS during the first pass divided by ``--batch`` (an upper bound: it includes allocator slack).
- ``data``: ``vpn_head.data.pixels.PixelClips`` items per second in one process (decode with the cache's video
  backend, crop, temporal/spatial jitter, flip, pose recomputation from the skeleton), on a small synthetic NTU
  dataset (640 x 360 AVI) written to a temporary folder: what one DataLoader worker delivers.

Defaults: the paper's 64 x 224 x 224 clips on CUDA; 8 x 64 x 64 on the CPU (a 64 x 224 step takes minutes
there). Usage::

    python -m bench.bench_finetune --out bench/results/finetune.json [--clip-len 64 --crop-size 224]
        [--batch 4] [--steps 5] [--repeats 3] [--i3d-weights W] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipeline.datasets import manifest
from pipeline.i3d.model import load_i3d
from pipeline.synthetic.dataset import SyntheticConfig, generate
from vpn_head.data.augment import AugmentConfig
from vpn_head.data.clips import resolve_cache
from vpn_head.data.pixels import PixelClips, sample_paths
from vpn_head.model.config import VPNConfig
from vpn_head.model.finetune_vpn import FinetuneVPN
from vpn_head.model.losses import vpn_loss
from vpn_head.model.vpn import VPN
from vpn_head.runtime import autocast, resolve_device

log = logging.getLogger("bench_finetune")


def build(clip_len: int, crop_size: int, weights: str | None, device: torch.device) -> FinetuneVPN:
    """Random-init (or ``weights``) I3D + a full-width NTU-60 VPN head sized for the clip."""
    head = VPN(VPNConfig.for_dataset("ntu60", "cs", feature_time=-(-clip_len // 8), feature_size=-(-crop_size // 32)))
    return FinetuneVPN(load_i3d(weights), head).to(device)


def timed_pass(model: FinetuneVPN, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...], steps: int,
               device: torch.device, amp: bool) -> tuple[float, float]:
    """``steps`` SGD steps; returns (clips per second, peak memory in MiB: CUDA allocated, else RSS growth)."""
    clips, poses, labels = batch
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device, amp):
            losses = vpn_loss(model(clips, poses), labels, model.config)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**10  # ru_maxrss is KiB
    return steps * len(clips) / (time.perf_counter() - start), peak


def bench_train(args: argparse.Namespace, device: torch.device) -> dict:
    model = build(args.clip_len, args.crop_size, args.i3d_weights, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(args.batch, 3, args.clip_len, args.crop_size, args.crop_size, generator=generator) * 2 - 1,
             torch.randn(args.batch, 2, 3, 25, model.config.t_p, generator=generator),
             torch.randint(0, model.config.num_classes, (args.batch,), generator=generator))
    batch = tuple(t.to(device) for t in batch)
    precisions = {"fp32": False, **({"bf16": True} if device.type == "cuda" else {})}
    rates: dict[str, list[float]] = {name: [] for name in precisions}
    peaks: dict[str, float] = {}
    for name, amp in precisions.items():  # warm-up (cuDNN autotuning, allocator); CPU peak RSS from here
        _, peaks[name] = timed_pass(model, optimizer, batch, 1, device, amp)
    for _ in range(args.repeats):
        for name, amp in precisions.items():
            rate, peak = timed_pass(model, optimizer, batch, args.steps, device, amp)
            rates[name].append(rate)
            if device.type == "cuda":
                peaks[name] = peak
    results = {name: {"clips_per_s": statistics.median(rates[name]), "clips_per_s_all": rates[name],
                      "peak_mem_mib": peaks[name], "peak_mem_mib_per_clip": peaks[name] / args.batch}
               for name in precisions}
    if "bf16" in results:
        results["bf16_speedup"] = results["bf16"]["clips_per_s"] / results["fp32"]["clips_per_s"]
        results["bf16_memory_ratio"] = results["bf16"]["peak_mem_mib"] / results["fp32"]["peak_mem_mib"]
    return results


def bench_data(args: argparse.Namespace, folder: Path) -> dict:
    """PixelClips items per second (one process) on a synthetic dataset written into ``folder``."""
    from tasks import cache as cache_tasks  # the cache builder (Luigi) is needed only to make the bench data

    generate(folder / "data", SyntheticConfig(n=args.videos, seed=0, min_frames=60, max_frames=90))
    df, _ = manifest.scan("ntu60", folder / "data")
    manifest.write_manifest(df, folder / "manifest.csv", data_root=folder / "data")
    if cache_tasks.main(["--dataset", "ntu60", "--manifest", str(folder / "manifest.csv"), "--cache-dir",
                         str(folder / "cache"), "--extractor", "pixels", "--shard-size", str(args.videos),
                         "--decode-workers", "0"]) != 0:
        raise RuntimeError("building the benchmark cache failed")
    clips = PixelClips(resolve_cache(folder / "cache", "ntu60"), "cs", "train", "ntu60",
                       sample_paths(folder / "manifest.csv"), args.clip_len, args.crop_size, AugmentConfig(), seed=0)
    _ = clips[0]  # warm-up: imports, decoder start-up
    start = time.perf_counter()
    for index in range(len(clips)):
        _ = clips[(1, index)]
    return {"items": len(clips), "clips_per_s_one_process": len(clips) / (time.perf_counter() - start),
            "frame_size": [640, 360]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clip-len", type=int, default=0, help="default 64 on CUDA, 8 on the CPU")
    parser.add_argument("--crop-size", type=int, default=0, help="default 224 on CUDA, 64 on the CPU")
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos for the data-path measurement")
    parser.add_argument("--i3d-weights", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.clip_len = args.clip_len or (64 if cuda else 8)
    args.crop_size = args.crop_size or (224 if cuda else 64)
    report = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "clip_len": args.clip_len,
        "crop_size": args.crop_size, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
        "i3d_weights": args.i3d_weights or "random-init",
    }
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        report["data"] = bench_data(args, Path(tmp))
    report["train"] = bench_train(args, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
