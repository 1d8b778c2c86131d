"""Where and how training runs: device, mixed precision, DataLoaders, RNG state and torchrun processes.

Nothing here knows about the model or the data; the head trainer, the fine-tune, evaluation and the benchmarks
share these helpers.
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device supports it (no loss scaling needed), else float16."""
    return torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, amp: bool) -> torch.autocast | nullcontext:
    """Mixed-precision context for the forward pass (a no-op when ``amp`` is False)."""
    return torch.autocast(device.type, dtype=amp_dtype(device)) if amp else nullcontext()


def loss_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """A loss scaler, enabled only where autocast runs in float16 (bfloat16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)


def make_loader(dataset: Dataset, batch_size: int | None, num_workers: int, device: torch.device,
                sampler: Sampler | None = None, seed: int = 0, prefetch_factor: int | None = None) -> DataLoader:
    """The DataLoader used for training and scoring (sequential unless a sampler is given).

    A private generator seeds the workers, so creating a loader never draws from the global torch RNG.

    Args:
        dataset: the items.
        batch_size: items per batch; None yields the items one by one, unbatched.
        num_workers: worker processes (0: load in this process).
        device: where the batches go (pinned memory for CUDA).
        sampler: the order; default sequential.
        seed: seeds the workers' generator.
        prefetch_factor: batches each worker loads ahead (with workers only); None: PyTorch's default.
    """
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed), **extra)


# ----------------------------------------------------------------------------------------------------------
# RNG state


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels (process-wide, warn-only:
    an op without a deterministic kernel warns instead of failing)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read at its init
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------
# processes


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> tuple[DistContext, torch.device]:
    """Read torchrun's environment, pick this process's device and join the process group.

    Args:
        device: ``auto``, ``cpu``, ``cuda``...; with CUDA each process takes ``cuda:LOCAL_RANK``.

    Returns:
        The context and the device.
    """
    ctx = DistContext(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", ctx.local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if ctx.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return ctx, torch_device


def gather(value: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``value``, in rank order (a one-element list without a process group)."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()
