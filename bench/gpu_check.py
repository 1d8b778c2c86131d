"""One prepared GPU run (``make gpu-check``): every GPU number the project lacks, printed as one JSON object.

Sections, in this order (each timed on its own; a section that fails records its error under ``errors``, the
others still run, and the exit code is 1):

- ``i3d``: ``InceptionI3d.forward_features`` to Mixed_5c under ``torch.inference_mode``: clips/s for fp32 and
  bf16 autocast at batch 1/8/32, channels-last-3d on and off (``runs``, ``best``); ``bf16_vs_fp32``: max
  |bf16 - fp32| over the Mixed_5c maps of the same 4 clips, absolute and relative to max |fp32|.
- ``pipeline``: the whole cache pipeline (``pipeline.build.extract.extract_shard``: decode + crop + poses in
  DataLoader workers, I3D bf16 in the main process, HDF5 shard) over 160 symlinked copies of the real NTU pair
  of ``../shared/samples/ntu`` (1080p, H.264) plus 16 synthetic 1920x1080 NTU-format videos, for 4/8/15 decode
  workers. Its stages alone: ``decode_videos_per_s`` = the same ``extract_shard`` with the ``pixels`` stand-in
  extractor at the same worker count (decode-bound), ``extractor_clips_per_s`` = I3D on ready batches of 8.
  ``pipeline_over_slowest`` = pipeline / min(decode, I3D), goal >= 0.85.
- ``head``: VPN-head training samples/s (``vpn_head.train.head.train_epoch`` over ``CachedClips`` of a 512-clip
  synthetic NTU-60 cache, 4 DataLoader workers, bf16 autocast on CUDA), ``i3d`` and ``vpn`` variants; the
  second epoch is the one reported.
- ``finetune``: ``bench.bench_finetune``'s optimizer steps of I3D + the full VPN head at 64x224x224, batch 4,
  fp32 and bf16: clips/s and peak memory per clip (CUDA ``max_memory_allocated`` / batch).
- ``ddp``: a one-process ``DistributedDataParallel`` group (nccl; gloo on the CPU) around the fine-tune model,
  two steps of ``vpn_head.engine.loop.train_epoch``: loss, parameters updated.
- ``compile`` (CUDA only): ``torch.compile`` of I3D in the fastest ``i3d`` setting: compile seconds, clips/s,
  speedup over eager.

``--smoke`` runs the same code (``compile`` aside) at sizes a busy 2-core CPU runs in about a minute (CI keeps the
script alive): 8x32x32 I3D clips at batch 1, one real + one 320x180 synthetic video with the ``pixels`` extractor
and in-process decoding, 16 head clips read in-process, 8x64x64 fine-tune and DDP batches of 1, no warm-up. Its
numbers mean nothing. Usage::

    python -m bench.gpu_check [--smoke] [--out FILE.json] [--i3d-weights W] [--sections i3d pipeline ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bench.bench_finetune import build as build_finetune_model
from bench.bench_finetune import timed_pass
from bench.bench_head import write_synthetic_cache
from pipeline.build import extract
from pipeline.cache.config import CacheConfig
from pipeline.cache.provenance import make_attrs
from pipeline.datasets import manifest
from pipeline.features import extractor as features
from pipeline.i3d.model import extract_features, load_i3d
from pipeline.synthetic.dataset import SyntheticConfig, generate
from pipeline.utils.fileio import file_sha256
from vpn_head.data.clips import CachedClips
from vpn_head.engine import loop as engine
from vpn_head.model.config import VPNConfig
from vpn_head.model.vpn import VPN
from vpn_head.runtime import DistContext, make_loader
from vpn_head.train.head import EpochShuffleSampler, train_epoch

log = logging.getLogger("gpu_check")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_PAIR = "S001C001P001R001A001"
"""The one NTU sample in ../shared/samples/ntu with both its video and its skeleton."""
SECTIONS = ("i3d", "pipeline", "head", "finetune", "ddp", "compile")
"""In run order; ``compile`` last (slowest to start, and it needs ``i3d``'s fastest setting)."""
FULL = {"clip": (64, 224, 224), "batches": (1, 8, 32), "min_seconds": 2.0, "warmup": True,
        "real_copies": 160, "synthetic": 16, "frame_size": (1920, 1080), "decode_workers": (4, 8, 15),
        "extractor": "i3d", "head_clips": 512, "head_workers": 4, "finetune_batch": 4, "finetune_steps": 3}
SMOKE = {"clip": (8, 32, 32), "batches": (1,), "min_seconds": 0.0, "warmup": False,
         "real_copies": 1, "synthetic": 1, "frame_size": (320, 180), "decode_workers": (0,),
         "extractor": "pixels", "head_clips": 16, "head_workers": 0, "finetune_clip": (8, 64, 64),
         "finetune_batch": 1, "finetune_steps": 1}
"""Every code path of ``FULL`` at sizes a busy 2-core CPU runs in seconds; no warm-up, one timed call each."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step: Callable[[], object], items: int, device: torch.device, size: dict) -> float:
    """Items per second of ``step``: one warm-up call (unless smoke), then calls until ``size["min_seconds"]``
    have passed (at least two calls; one in smoke)."""
    if size["warmup"]:
        step()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < (2 if size["warmup"] else 1) or time.perf_counter() - start < size["min_seconds"]:
        step()
        calls += 1
    sync(device)
    return calls * items / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------
# sections


def check_i3d(size: dict, device: torch.device, weights: str | None) -> dict:
    """Mixed_5c clips/s per (precision, batch, channels-last); bf16 vs fp32 difference; torch.compile."""
    t, h, w = size["clip"]
    generator = torch.Generator().manual_seed(0)
    clips = (torch.rand(max(size["batches"]), 3, t, h, w, generator=generator) * 2 - 1).to(device)
    runs, models = [], {}
    for channels_last in (True, False):
        model = load_i3d(weights, device=device, channels_last=channels_last)
        models[channels_last] = model
        for precision in ("fp32", "bf16"):
            for batch in size["batches"]:
                def step(model=model, batch=batch, precision=precision) -> torch.Tensor:
                    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                                enabled=precision == "bf16"):
                        return model.forward_features(clips[:batch])  # (B, 1024, T/8, H/32, W/32)
                runs.append({"precision": precision, "batch": batch, "channels_last": channels_last,
                             "clips_per_s": rate(step, batch, device, size)})
                log.info("i3d %s", runs[-1])
    probe = clips[:min(4, len(clips))]
    with torch.inference_mode():
        fp32 = models[True].forward_features(probe).float()
        with torch.autocast(device.type, torch.bfloat16):
            bf16 = models[True].forward_features(probe).float()
    diff = (bf16 - fp32).abs().max().item()
    result = {"clip": [3, t, h, w], "weights": weights or "random-init", "runs": runs,
              "best": max(runs, key=lambda r: r["clips_per_s"]),
              "bf16_vs_fp32": {"max_abs_diff": diff, "max_abs_fp32": fp32.abs().max().item(),
                               "relative": diff / max(fp32.abs().max().item(), 1e-12), "clips": len(probe)}}
    return result


def check_compile(size: dict, device: torch.device, weights: str | None, best: dict) -> dict:
    """``torch.compile`` of I3D in the fastest eager setting of ``check_i3d``: compile seconds, clips/s, speedup."""
    t, h, w = size["clip"]
    clips = (torch.rand(best["batch"], 3, t, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    compiled = torch.compile(load_i3d(weights, device=device, channels_last=best["channels_last"]).forward_features)
    batch, amp = best["batch"], best["precision"] == "bf16"

    def step() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            return compiled(clips[:batch])

    start = time.perf_counter()
    step()
    sync(device)
    compile_seconds = time.perf_counter() - start
    clips_per_s = rate(step, batch, device, size)
    return {"setting": {k: best[k] for k in ("precision", "batch", "channels_last")},
            "compile_seconds": compile_seconds, "clips_per_s": clips_per_s,
            "speedup_over_eager": clips_per_s / best["clips_per_s"]}


def pipeline_data(folder: Path, size: dict) -> tuple[Path, list[dict], dict]:
    """Synthetic videos plus copies of the real NTU pair (distinct ids) in one folder; its manifest rows.

    The pair is copied once into the folder and hard-linked from there: the cache refuses paths that leave DATA_ROOT,
    symlinks to ../shared included."""
    root = folder / "data"
    generated = generate(root / "synthetic", SyntheticConfig(n=size["synthetic"], seed=1,
                                                              frame_size=size["frame_size"], min_frames=70,
                                                              max_frames=110))
    real = SHARED / "samples" / "ntu"
    copies = 0
    if (real / f"{REAL_PAIR}_rgb.avi").is_file():
        (root / "real").mkdir(parents=True)
        local = folder / "real_source"  # outside DATA_ROOT: the scan sees only the links
        local.mkdir()
        for name in (f"{REAL_PAIR}_rgb.avi", f"{REAL_PAIR}.skeleton"):
            shutil.copyfile(real / name, local / name.replace(REAL_PAIR, "pair"))
        taken = set(generated)
        for k in range(1, 1000):
            if copies == size["real_copies"]:
                break
            sid = f"S017C00{k % 3 + 1}P040R00{k // 3 % 2 + 1}A{k // 6 % 60 + 1:03d}"
            if sid in taken:
                continue
            taken.add(sid)
            os.link(local / "pair_rgb.avi", root / "real" / f"{sid}_rgb.avi")
            os.link(local / "pair.skeleton", root / "real" / f"{sid}.skeleton")
            copies += 1
    df, _ = manifest.scan("ntu60", root)
    return root, df.to_dict("records"), {"real_copies": copies, "synthetic": len(generated),
                                         "synthetic_frame_size": list(size["frame_size"])}


def check_pipeline(size: dict, device: torch.device, weights: str | None, folder: Path) -> dict:
    """Pipeline videos/s against its slowest stage, per decode-worker count."""
    root, rows, videos = pipeline_data(folder, size)
    precision = "bf16" if device.type == "cuda" else "fp32"
    config = CacheConfig(dataset="ntu60", extractor=size["extractor"], precision=precision,
                         i3d_weights_sha256=file_sha256(weights) if weights else "random-init")
    attrs = make_attrs(config, config.i3d_weights_sha256)
    model = features.make_extractor(size["extractor"], weights, str(device))
    pixels = features.make_extractor("pixels", None, str(device))
    batch = 8 if device.type == "cuda" else 2
    ready = torch.rand(batch, 3, config.clip_len, config.crop_size, config.crop_size) * 2 - 1
    stage_rate = rate(lambda: extract_features(model, ready, batch_size=batch, device=device,
                                                      amp_bf16=precision == "bf16"),
                      batch, device, size)
    by_workers = {}
    for workers in size["decode_workers"]:
        def shard(extractor: torch.nn.Module, name: str) -> float:
            stats = extract.extract_shard(rows, root, config, extractor, folder / f"{name}_{workers}.h5", attrs=attrs,
                                          workers=workers, batch_size=batch, device=str(device), progress=False)
            if stats.failures:
                raise RuntimeError(f"{stats.failures} of {len(rows)} pipeline videos failed")
            return stats.samples / stats.seconds
        decode = shard(pixels, "decode")
        whole = shard(model, "pipeline")
        slowest = min(decode, stage_rate)
        by_workers[str(workers)] = {"decode_videos_per_s": decode, "pipeline_videos_per_s": whole,
                                    "slowest_stage": "decode" if decode < stage_rate else "extractor",
                                    "pipeline_over_slowest": whole / slowest}
        log.info("pipeline workers=%d: %s", workers, by_workers[str(workers)])
    return {"videos": {"total": len(rows), **videos}, "extractor": size["extractor"], "precision": precision,
            "extractor_batch": batch, "extractor_clips_per_s": stage_rate, "by_decode_workers": by_workers,
            "goal": ">= 0.85"}


def check_head(size: dict, device: torch.device, folder: Path) -> dict:
    """Head-training samples/s (one warm-up epoch, then one timed) per variant."""
    path = write_synthetic_cache(folder / "head_cache", size["head_clips"], "ntu60", "cs")
    clips = CachedClips(path, "cs", "train", dataset="ntu60", feature_dtype=torch.float16)
    workers = min(size["head_workers"], max(0, (os.cpu_count() or 1) - 1))
    amp = device.type == "cuda"
    result = {"clips": len(clips), "num_workers": workers, "amp": amp, "batch_size": 16}
    for variant in ("i3d", "vpn"):
        torch.manual_seed(0)
        model = VPN(VPNConfig.for_dataset("ntu60", "cs", variant=variant)).to(device)
        sampler = EpochShuffleSampler(len(clips), seed=0)
        loader = make_loader(clips, 16, workers, device, sampler)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 autocast needs no loss scaling
        for epoch in range(2 if size["warmup"] else 1):
            sampler.set_epoch(epoch)
            stats = train_epoch(model, loader, optimizer, scaler, device, amp, "gpu_check")
        result[f"{variant}_samples_per_s"] = stats["train_samples_per_s"]
        log.info("head %s: %.1f samples/s", variant, stats["train_samples_per_s"])
    return result


def check_finetune(size: dict, device: torch.device, weights: str | None) -> dict:
    """Fine-tune clips/s and peak memory per clip, fp32 and bf16 (one warm-up step each, then a timed pass)."""
    t, h, w = size.get("finetune_clip", size["clip"])
    model = build_finetune_model(t, h, weights, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    n = size["finetune_batch"]
    batch = (torch.rand(n, 3, t, h, w, generator=generator) * 2 - 1,
             torch.randn(n, 2, 3, 25, model.config.t_p, generator=generator),
             torch.randint(0, model.config.num_classes, (n,), generator=generator))
    batch = tuple(x.to(device) for x in batch)
    result = {"clip": [3, t, h, w], "batch": n, "steps": size["finetune_steps"]}
    for precision in ("fp32", "bf16"):
        if size["warmup"]:
            timed_pass(model, optimizer, batch, 1, device, precision == "bf16")
        clips_per_s, peak = timed_pass(model, optimizer, batch, size["finetune_steps"], device, precision == "bf16")
        result[precision] = {"clips_per_s": clips_per_s, "peak_mem_mib": peak, "peak_mem_mib_per_clip": peak / n}
        log.info("finetune %s: %s", precision, result[precision])
    result["peak_memory"] = "cuda max_memory_allocated" if device.type == "cuda" else "growth of peak RSS (upper bound)"
    return result


def check_ddp(size: dict, device: torch.device, weights: str | None) -> dict:
    """A one-process ``DistributedDataParallel`` run: nccl (gloo on the CPU) process group of world size 1, the
    fine-tune model wrapped in DDP, two optimizer steps through ``vpn_head.engine.loop.train_epoch``.

    ``torchrun`` with one process does not wrap the model (``vpn_head.train.finetune`` uses DDP from two processes up),
    so the group is made here; a second rank would need a second GPU.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    start = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        t, h, w = size.get("finetune_clip", size["clip"])
        model = build_finetune_model(t, h, weights, device)
        wrapped = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        generator = torch.Generator().manual_seed(0)
        n = size["finetune_batch"]
        batches = [(torch.rand(n, 3, t, h, w, generator=generator) * 2 - 1,
                    torch.randn(n, 2, 3, 25, model.config.t_p, generator=generator),
                    torch.randint(0, model.config.num_classes, (n,), generator=generator), torch.arange(n))
                   for _ in range(2)]
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 autocast needs no loss scaling
        stats = engine.train_epoch(wrapped, batches, optimizer, scaler, device, device.type == "cuda", 1,
                                   DistContext(0, 1, 0), "ddp")
        after = [p for p in model.parameters() if p.requires_grad]
        moved = sum(not torch.equal(a, b) for a, b in zip(before, after))
        return {"backend": backend, "world_size": dist.get_world_size(), "steps": len(batches),
                "train_loss": stats["train_loss"], "parameters_updated": moved, "parameters": len(after),
                "seconds": time.perf_counter() - start}
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, seconds): keeps the script alive in CI")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--i3d-weights", default=None, help="default ../shared/i3d/rgb_scratch.pt when present")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS,
                        help="default: all (compile only on CUDA: on the CPU it needs a compiler and minutes)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)  # this script's progress; the libraries log warnings only
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    sections = args.sections or [s for s in SECTIONS if s != "compile" or device.type == "cuda"]
    weights = args.i3d_weights or (str(SHARED / "i3d" / "rgb_scratch.pt")
                                   if (SHARED / "i3d" / "rgb_scratch.pt").is_file() else None)
    size = SMOKE if args.smoke else FULL
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "smoke": args.smoke, "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "i3d_weights": weights or "random-init",
        "tf32": {"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "seconds": {}, "errors": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        runs = {"i3d": lambda: check_i3d(size, device, weights),
                "pipeline": lambda: check_pipeline(size, device, weights, Path(tmp) / "pipeline"),
                "head": lambda: check_head(size, device, Path(tmp) / "head"),
                "finetune": lambda: check_finetune(size, device, weights),
                "ddp": lambda: check_ddp(size, device, weights),
                "compile": lambda: check_compile(size, device, weights, report["i3d"]["best"])}
        for name in sorted(sections, key=SECTIONS.index):
            t0 = time.perf_counter()
            try:
                report[name] = runs[name]()
            except Exception as error:  # a GPU run must report every section it can, not stop at the first failure
                log.exception("section %s failed", name)
                report["errors"][name] = f"{type(error).__name__}: {error}"
            report["seconds"][name] = time.perf_counter() - t0
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["seconds"]["total"] = time.perf_counter() - start
    text = json.dumps(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
