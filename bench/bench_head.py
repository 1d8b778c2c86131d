"""Benchmark the head's data path: raw cache reads vs full head-training steps, in one run.

Throughputs on the same cache, in clips per second:

- ``read``: ``CacheReader.read_features`` + ``read_poses`` one row at a time in random order, after opening
  the file (HDF5 chunk cache cold, OS page cache warm): what the disk format alone allows.
- ``train_<variant>``: full training steps (``vpn_head.train.head.train_epoch``: DataLoader over ``CachedClips``
  with the trainer's sampler and float16 hand-over, forward, loss, backward, SGD) reading from the cache.
- ``train_<variant>_in_memory``: the same steps with the split preloaded (``in_memory=True``): the
  compute-bound ceiling.

Per variant it reports ``train / read`` (goal >= 0.8: the trainer keeps up with the raw reads; reachable only
where the step costs less than a read, as for ``i3d`` on a CPU) and ``train / in_memory`` (how much the reads
slow training; 1.0 means the data path is hidden). Each throughput is the median of ``--repeats`` passes,
interleaved so that machine load hits them alike.

Without ``--cache-dir`` it writes a temporary NTU-shaped cache (J=25, t_p=20) with the cache's default
compression, features a ReLU of shifted Gaussian noise with ~73% zeros (as real Mixed_5c features).

Usage::

    python -m bench.bench_head --out bench/head.json [--cache-dir DIR --dataset D --protocol P] [--variants i3d vpn]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from pipeline.cache import reader as cache_lib
from pipeline.cache.merge import merge_shards
from pipeline.cache.provenance import make_attrs
from pipeline.cache.writer import ShardWriter
from pipeline.datasets.registry import get_dataset
from pipeline.i3d.spec import CLIP_FRAMES, FEATURE_SHAPE
from vpn_head.data.clips import CachedClips
from vpn_head.model.config import VPNConfig
from vpn_head.model.vpn import VPN
from vpn_head.runtime import make_loader
from vpn_head.train.head import EpochShuffleSampler, train_epoch

log = logging.getLogger("bench_head")

ZERO_FRACTION_SHIFT = 0.61
"""ReLU(z - 0.61) of standard normal z is zero ~73% of the time, like real Mixed_5c features."""


def write_synthetic_cache(folder: Path, clips: int, dataset: str, protocol: str, seed: int = 0) -> Path:
    """A one-shard cache of ``clips`` train clips with ReLU-noise features, merged into ``cache.h5``."""
    spec = get_dataset(dataset)
    rng = np.random.default_rng(seed)
    shard = folder / "shard_00000.h5"
    attrs = make_attrs({"dataset": dataset, "t_p": spec.t_p, "bench": True}, "")
    protocols = tuple(spec.protocols)
    classes = spec.protocol_classes(protocol)
    with ShardWriter(shard, n_rows_max=clips, num_joints=spec.num_joints, t_p=spec.t_p, attrs=attrs,
                     protocols=protocols) as writer:
        for i in range(clips):
            features = np.maximum(rng.standard_normal(FEATURE_SHAPE, dtype=np.float32) - ZERO_FRACTION_SHIFT, 0)
            action = classes[i % len(classes)]
            writer.append(features=features, poses=rng.normal(size=(2, 3, spec.num_joints, spec.t_p)),
                          sample_id=f"bench{i:05d}", label=spec.classes.index(action), action=action,
                          clip_index=0, frame_indices=np.arange(CLIP_FRAMES), box=np.array([0, 0, 224, 224]),
                          splits={p: "train" for p in protocols})
    merge_shards([shard], folder / cache_lib.MERGED_NAME)
    return folder


def read_pass(path: Path, rows: np.ndarray, seed: int) -> float:
    """Clips per second reading ``rows`` in random order, one row at a time, after opening the cache."""
    order = np.random.default_rng(seed).permutation(rows)
    with cache_lib.open_cache(path) as reader:
        start = time.perf_counter()
        for i in order:
            reader.read_features(int(i))
            reader.read_poses(int(i))
        return len(order) / (time.perf_counter() - start)


class TrainLoop:
    """Training epochs over one dataset with one persistent DataLoader, as ``vpn_head.train.head`` runs them."""

    def __init__(self, clips: torch.utils.data.Dataset, model: VPN, batch_size: int, num_workers: int) -> None:
        self.device = torch.device("cpu")
        self.model = model
        self.sampler = EpochShuffleSampler(len(clips), seed=0)
        self.loader = make_loader(clips, batch_size, num_workers, self.device, self.sampler)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)

    def epoch(self, epoch: int) -> float:
        """Clips per second of one epoch (data wait included)."""
        self.sampler.set_epoch(epoch)
        return train_epoch(self.model, self.loader, self.optimizer, self.scaler, self.device, False,
                           "bench")["train_samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--cache-dir", dest="cache", type=Path, help="cache directory or .h5 (default: a synthetic one)")
    parser.add_argument("--dataset", help="dataset of --cache-dir (checked), or of the synthetic cache (ntu60)")
    parser.add_argument("--protocol", default="cs")
    parser.add_argument("--split", default="train")
    parser.add_argument("--clips", type=int, default=128, help="clips of the synthetic cache / clips used")
    parser.add_argument("--variants", nargs="+", default=["i3d", "vpn"], choices=("i3d", "attention", "vpn"),
                        help="head variants to train (i3d: lightest compute, so the data path shows most)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--feature-dtype", default="float16", choices=("float16", "float32"),
                        help="dtype CachedClips hands out (the trainer uses float16 and casts on its device)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: system temp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pipeline.cache.writer", "pipeline.cache.merge"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.cache is None:
            dataset = args.dataset or "ntu60"
            log.info("writing a synthetic %s cache of %d clips", dataset, args.clips)
            path = write_synthetic_cache(Path(tmp), args.clips, dataset, args.protocol)
        else:
            path, dataset = args.cache, args.dataset
        dtype = getattr(torch, args.feature_dtype)
        disk = CachedClips(path, args.protocol, args.split, dataset=dataset, feature_dtype=dtype)
        memory = CachedClips(path, args.protocol, args.split, in_memory=True, dataset=dataset, feature_dtype=dtype)
        if not memory.in_memory:
            parser.error(f"the {args.split} split does not fit in RAM; pass a smaller cache")
        rows = disk.rows[:args.clips]
        subset = range(len(rows))
        loops: dict[str, TrainLoop] = {}
        for variant in args.variants:
            torch.manual_seed(0)
            model = VPN(VPNConfig.for_dataset(disk.spec.name, args.protocol, variant=variant))
            loops[f"train_{variant}"] = TrainLoop(Subset(disk, subset), model, args.batch_size, args.num_workers)
            loops[f"train_{variant}_in_memory"] = TrainLoop(Subset(memory, subset), model, args.batch_size, 0)
        for loop in loops.values():  # warm-up: workers, allocator, kernels, page cache
            loop.epoch(0)
        read_pass(path, rows, 0)
        passes: dict[str, list[float]] = {"read": [], **{name: [] for name in loops}}
        for repeat in range(args.repeats):
            passes["read"].append(read_pass(path, rows, repeat))
            for name, loop in loops.items():
                passes[name].append(loop.epoch(repeat + 1))
            log.info("pass %d: %s", repeat + 1, {k: round(v[-1], 1) for k, v in passes.items()})
        disk.close()
    median = {k: statistics.median(v) for k, v in passes.items()}
    ratios = {}
    for variant in args.variants:
        train, in_memory = median[f"train_{variant}"], median[f"train_{variant}_in_memory"]
        ratios[variant] = {"train_over_read": train / median["read"], "train_over_in_memory": train / in_memory}
        log.info("%s: read %.1f clips/s, train %.1f clips/s (in memory %.1f): train/read %.2f (goal >= 0.8), "
                 "train/in-memory %.2f", variant, median["read"], train, in_memory,
                 ratios[variant]["train_over_read"], ratios[variant]["train_over_in_memory"])
    report = {
        "clips_per_s": median, "passes": passes, "ratios": ratios, "goal_train_over_read": 0.8,
        "cache": "synthetic" if args.cache is None else str(args.cache), "dataset": disk.spec.name,
        "protocol": args.protocol, "split": args.split, "clips": int(len(rows)), "batch_size": args.batch_size,
        "num_workers": args.num_workers, "feature_dtype": args.feature_dtype,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "machine": platform.platform(), "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
