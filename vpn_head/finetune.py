"""End-to-end fine-tuning of VPN: I3D (unfrozen) + the VPN head, on pixels decoded on the fly.

``make finetune DATASET=ntu60 PROTOCOL=cs [INIT=runs/ntu60_cs_vpn] [GPUS=4] [EPOCHS=30]`` runs
``python -m vpn_head.finetune ...``, or ``torchrun --standalone --nproc_per_node N -m vpn_head.finetune ...``.

Model: ``pipeline.i3d.InceptionI3d`` up to Mixed_5c (``--i3d-weights``; ``--freeze-until Mixed_3c`` keeps the
blocks up to Mixed_3c frozen, their BatchNorm in eval mode) followed by the VPN head, initialised from a head
run (``--init runs/<name>``: its ``best.pt``, else ``last.pt``, and its ``VPNConfig``). Paper schedule: SGD with
momentum 0.9, lr 0.01 divided by 10 every 10 epochs, 16 clips per step, the losses of ``vpn_head.losses``.

Input without a second pass of the pipeline: every cache row holds its clip's 64 frame indices and person box,
the manifest the video path (relative to DATA_ROOT). DataLoader workers decode (``pipeline.video.read_clip``),
crop (``pipeline.crop``) and augment (``vpn_head.augment``) each clip. The poses are the cache's when the clip
shows exactly the cached frames, else they are recomputed from the skeleton file at the frames shown
(``pipeline.poses``, as the cache pipeline does). The frame count a video was sampled over is its largest
cached frame index + 1, since every sampling ends on the last frame.

Several GPUs: one process per GPU, ``DistributedDataParallel`` (nccl on CUDA, gloo on the CPU). One optimizer
step always sees ``batch_size`` clips: ``accum = batch_size / (per_gpu_batch * world_size)`` micro-batches per
step (an error when not integral). The ``StepSampler`` (a ``DistributedSampler``) interleaves one permutation
per ``(seed, epoch)`` over the ranks and keeps whole steps only, so step k uses the same clips whatever the
GPU count; augmentation draws from a generator seeded by ``(seed, epoch, clip)``; the spectral-norm power
iteration of the embedding runs once per step. Hence 1 and N processes reach the same weights up to float
summation order, provided BatchNorm sees the same micro-batches (equal ``per_gpu_batch``) and dropout is off
(each rank draws its own dropout masks). Under DDP the BatchNorm running statistics are rank 0's.

Run directory (as the head trainer's): ``runs/<name>/config.json``, ``last.pt`` every epoch (atomic; model,
optimizer, scheduler, scaler, every rank's RNG state, progress: the sampler's state is the epoch), ``best.pt``,
``train_log.csv`` (``train_samples_per_s`` is clips per second over all GPUs), ``metrics.json``. Rerunning the
same command resumes after the last finished epoch; more epochs extend the run; another experiment is refused
unless ``--force-new`` or another ``--run``. Each epoch ends with a quick score on the eval split (each cached
clip, no augmentation, the training crop). When training completes, ``best.pt`` is scored the paper's way on
the test split into ``eval_test/`` (the files ``make eval`` writes): ``eval_clips`` evenly spaced clips per
video, the whole person box resized to short side ``eval_crop_size`` (256 gives an 8 x 8 Mixed_5c map), the
head applied to every ``feature_size`` x ``feature_size`` window of the map (its training grid, where the pose
attention was learned), and the softmax scores max-pooled over clips and windows.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from pipeline import crop, video
from pipeline.cache import CacheError, open_cache
from pipeline.contracts import CLIP_FRAMES, CROP_SIZE
from pipeline.datasets import get_dataset
from pipeline.i3d import InceptionI3d, load_i3d
from pipeline.manifest import read_manifest, read_manifest_root
from pipeline.poses import align_frames, clip_poses, load_skeleton
from vpn_head.augment import AugmentConfig, clip_indices, crop_keep_aspect, flip_clip, flip_poses, jitter_box
from vpn_head.config import VARIANTS, VPNConfig
from vpn_head.data import CachedClips, resolve_cache, selection_split, video_groups
from vpn_head.evaluate import (
    CHECKPOINT_NAMES, CheckpointError, amp_dtype, atomic_write_csv, atomic_write_json, autocast, load_checkpoint, load_weights, model_from_checkpoint, resolve_device, score_clips, summarise, video_scores,
    write_eval_reports,
)
from vpn_head.losses import vpn_loss
from vpn_head.splits import CARVED_VAL
from vpn_head.model import VPN, VPNOutput
from vpn_head.train import (
    EVAL_SPLITS, LOG_COLUMNS, LOSS_KEYS, POSTFIX_EVERY, RunConfigError, _Progress, parse_args_with_config,
    parse_override, raise_if_other_experiment, rng_state, save_checkpoint, seed_everything, set_rng_state,
)

log = logging.getLogger(__name__)

LATEST_NAME = "LATEST"
"""File in ``<cache_root>/<dataset>/`` naming the last completed cache (written by ``tasks.cache``)."""
RESUME_FREE_FIELDS: tuple[str, ...] = (
    "epochs", "per_gpu_batch", "num_workers", "amp", "device", "manifest", "data_root", "cache", "runs_dir",
    "run_name", "eval_clips", "eval_crop_size",
)
"""FinetuneConfig fields a resumed run may change: hardware, paths, the final evaluation, more epochs."""
FINETUNE_LOG_COLUMNS: tuple[str, ...] = (*(c for c in LOG_COLUMNS if not c.startswith("grad_")), "world_size", "accum_steps")
I3D_STRIDE = (8, 32)
"""Mixed_5c downsamples time by 8 and space by 32 (TF SAME padding rounds up)."""


# ----------------------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a fine-tuning run.

    Attributes:
        dataset: registry name (``ntu60``, ``ntu120``, ``smarthome``, ``nucla``).
        protocol: protocol of the dataset.
        epochs: epochs to train in total (paper: 30).
        batch_size: clips per optimizer step over all GPUs (paper: 16).
        per_gpu_batch: clips per forward pass on one GPU; ``batch_size / (per_gpu_batch * GPUs)`` must be an
            integer (the gradient-accumulation steps).
        lr: initial learning rate (paper: 0.01).
        momentum: SGD momentum (0.9).
        weight_decay: SGD L2 weight decay (the paper gives none).
        lr_step: epochs between learning-rate decays (paper: 10).
        lr_gamma: learning-rate decay factor (paper: 0.1).
        freeze_until: last I3D block kept frozen (requires_grad off, BatchNorm in eval), e.g. ``Mixed_3c``;
            empty: everything trains.
        frozen_bn: keep every I3D BatchNorm in eval mode (running statistics), e.g. for small per-GPU batches.
        clip_len: frames per training clip (paper: 64); Mixed_5c has ``ceil(clip_len / 8)`` time steps.
        crop_size: side of the training crop (paper: 224); Mixed_5c is ``ceil(crop_size / 32)`` square.
        augment: training augmentation (``vpn_head.augment``).
        variant: head variant for a new head (``i3d``, ``attention``, ``vpn``); empty: the init run's, or
            ``vpn`` without one. A run given with ``init`` must agree.
        model: further ``VPNConfig`` overrides for a new head (not allowed with ``init``).
        eval_split: split scored after each epoch, picks ``best.pt``: ``auto`` (val, else ``val_carved``: training
            subjects held out, as the head trainer), ``val``, ``val_carved``, ``test``.
        val_fraction: share of the training subjects carved out as ``val_carved``.
        eval_clips: clips per video in the final evaluation (evenly spaced windows).
        eval_crop_size: short side of the resized person box in the final evaluation.
        seed: seeds Python, NumPy, torch (plus the rank), the sampler and the augmentation.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only) and no cuDNN autotuning.
        num_workers: DataLoader processes per GPU that decode and crop.
        amp: bf16 autocast (float16 with loss scaling where bf16 is missing); None: on for CUDA.
        device: ``auto``, ``cpu``, ``cuda`` (each process takes ``cuda:LOCAL_RANK``).
        manifest: manifest CSV; empty: ``manifests/<dataset>.csv``.
        data_root: folder the manifest's paths are relative to; empty: from the manifest's side file.
        cache: cache root (``<cache>/<dataset>/LATEST`` names the cache), cache directory or ``cache.h5``.
        runs_dir: folder of run directories.
        run_name: run directory name; empty: ``<dataset>_<protocol>_finetune``.
        init: head run directory to start the head from; empty: a new head (warns).
        i3d_weights: I3D state-dict file; empty: random init (warns loudly).
    """

    dataset: str
    protocol: str
    epochs: int = 30
    batch_size: int = 16
    per_gpu_batch: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 10
    lr_gamma: float = 0.1
    freeze_until: str = ""
    frozen_bn: bool = False
    clip_len: int = CLIP_FRAMES
    crop_size: int = CROP_SIZE
    augment: AugmentConfig = AugmentConfig()
    variant: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    eval_split: str = "auto"
    val_fraction: float = 0.2
    eval_clips: int = 3
    eval_crop_size: int = 256
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 4
    amp: bool | None = None
    device: str = "auto"
    manifest: str = ""
    data_root: str = ""
    cache: str = "cache"
    runs_dir: str = "runs"
    run_name: str = ""
    init: str = ""
    i3d_weights: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.run_name or f"{self.dataset}_{self.protocol}_finetune")

    @property
    def manifest_path(self) -> Path:
        return Path(self.manifest or f"manifests/{self.dataset}.csv")

    @property
    def feature_time(self) -> int:
        """Time steps of the Mixed_5c map of a training clip."""
        return math.ceil(self.clip_len / I3D_STRIDE[0])

    @property
    def feature_size(self) -> int:
        """Side of the Mixed_5c map of a training crop."""
        return math.ceil(self.crop_size / I3D_STRIDE[1])

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        get_dataset(self.dataset).protocol_classes(self.protocol)
        positive = ("epochs", "batch_size", "per_gpu_batch", "lr_step", "clip_len", "crop_size", "eval_clips",
                    "eval_crop_size")
        bad = [n for n in positive if isinstance(getattr(self, n), bool) or not isinstance(getattr(self, n), int)
               or getattr(self, n) < 1]
        bad += [n for n in ("num_workers", "seed") if not isinstance(getattr(self, n), int) or getattr(self, n) < 0]
        checks = {"lr": self.lr > 0, "momentum": 0 <= self.momentum < 1, "weight_decay": self.weight_decay >= 0,
                  "lr_gamma": 0 < self.lr_gamma <= 1, "eval_split": self.eval_split in EVAL_SPLITS,
                  "val_fraction": 0 < self.val_fraction < 1,
                  "variant": self.variant in ("", *VARIANTS)}
        bad += [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("bad FinetuneConfig value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))
        if self.init and self.model:
            raise ValueError("model overrides apply to a new head only; the head of --init keeps its config")
        self.augment.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown FinetuneConfig field(s) {unknown}")
        values = dict(values)
        if isinstance(values.get("augment"), Mapping):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (all but ``RESUME_FREE_FIELDS``)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_FREE_FIELDS}


def accumulation_steps(batch_size: int, per_gpu_batch: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that a step sees ``batch_size`` clips over all processes.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``per_gpu_batch * world_size``.
    """
    per_pass = per_gpu_batch * world_size
    if batch_size % per_pass:
        raise ValueError(f"batch_size {batch_size} is not a multiple of per_gpu_batch {per_gpu_batch} x {world_size} "
                         f"processes = {per_pass}; every step must see exactly {batch_size} clips")
    return batch_size // per_pass


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


def _gather(value: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``value``, in rank order (a one-element list without a process group)."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------
# data


def find_cache(cache: str | os.PathLike, dataset: str) -> Path:
    """The cache to read: ``<cache>/<dataset>/LATEST`` when present, else ``vpn_head.data.resolve_cache``.

    Raises:
        CacheError: LATEST names a folder without ``cache.h5``, or ``resolve_cache`` finds none or several.
    """
    latest = Path(cache) / dataset / LATEST_NAME
    if latest.is_file():
        folder = latest.parent / latest.read_text().strip()
        if not (folder / "cache.h5").is_file():
            raise CacheError(f"{latest} names {folder}, which holds no cache.h5; rebuild it with `make cache`")
        return folder
    return resolve_cache(cache, dataset)


def sample_paths(manifest: str | os.PathLike, data_root: str | os.PathLike = "") -> dict[str, tuple[Path, Path]]:
    """sample_id -> (video path, skeleton path), absolute, from a manifest.

    Args:
        manifest: manifest CSV.
        data_root: folder its paths are relative to; empty: the one recorded beside the manifest.

    Raises:
        FileNotFoundError: no manifest, or no DATA_ROOT given nor recorded.
    """
    df = read_manifest(manifest)
    root = Path(data_root) if data_root else read_manifest_root(manifest)
    return {sid: (root / v, root / s) for sid, v, s in zip(df["sample_id"], df["video_path"], df["skeleton_path"])}


class PixelClips(Dataset):
    """The cached clips of one protocol split, as pixels decoded from the videos.

    Items are ``(clip, poses, label, row)``: float32 ``(3, clip_len, crop, crop)`` RGB in [-1, 1], float32
    ``(2, 3, J, t_p)`` poses, the protocol label and the cache row. A key is an index, or ``(epoch, index)``
    from ``StepSampler``: with ``augment`` the augmentation draws from a generator seeded by
    ``(seed, epoch, index)``, so a clip's augmentation does not depend on workers, ranks or resumption.

    Attributes:
        spec: the dataset's registry entry.
        rows, labels, sample_ids, class_names: as ``vpn_head.data.CachedClips``.
        frame_indices: (N, 64) cached frame indices of each row.
        boxes: (N, 4) cached person boxes.
        num_frames: sample_id -> frames the cache sampled the video over.
        t_p: poses per clip.
    """

    def __init__(self, cache: str | os.PathLike, protocol: str, split: str, dataset: str,
                 paths: Mapping[str, tuple[Path, Path]], clip_len: int = CLIP_FRAMES, crop_size: int = CROP_SIZE,
                 augment: AugmentConfig | None = None, seed: int = 0, carve_fraction: float = 0.0,
                 carve_seed: int = 0) -> None:
        """Index the split and check that its videos are where the manifest says (``carve_fraction`` and
        ``carve_seed``: the validation set carved from train by subject, as ``CachedClips``).

        Raises:
            CacheError: as ``CachedClips``; a sample missing from the manifest.
            FileNotFoundError: the first video of the split does not exist (wrong DATA_ROOT).
        """
        index = CachedClips(cache, protocol, split, dataset=dataset, carve_fraction=carve_fraction,
                            carve_seed=carve_seed)
        self.path, self.spec, self.split = index.path, index.spec, split
        self.rows, self.labels, self.sample_ids = index.rows, index.labels, index.sample_ids
        self.class_names = index.class_names
        with open_cache(self.path) as reader:
            self.frame_indices = reader.frame_indices[self.rows]  # (N, 64)
            self.boxes = reader.boxes[self.rows]  # (N, 4)
            self.t_p = int(reader.t_p)
            last: dict[str, int] = {}
            for sid, indices in zip(reader.sample_ids, reader.frame_indices):
                last[sid] = max(last.get(sid, 0), int(indices.max()))
            config = reader.attrs["config_json"]
        self.num_frames = {sid: n + 1 for sid, n in last.items()}
        self.backends = (config.get("backend", video.DEFAULT_BACKEND),
                         *config.get("fallback", video.DEFAULT_FALLBACK))
        missing = sorted(set(self.sample_ids) - set(paths))
        if missing:
            raise CacheError(f"{self.path}: {len(missing)} {split} samples are not in the manifest, e.g. "
                             f"{missing[0]}; give the manifest the cache was built from")
        self.paths = {sid: paths[sid] for sid in np.unique(self.sample_ids)}
        first_video = self.paths[self.sample_ids[0]][0]
        if not first_video.exists():
            raise FileNotFoundError(f"video {first_video} does not exist: wrong DATA_ROOT (--data-root) for "
                                    f"this manifest?")
        self.clip_len, self.crop_size = clip_len, crop_size
        self.augment, self.seed = augment, seed
        self._reader = None
        self._reader_pid = -1

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"], state["_reader_pid"] = None, -1
        return state

    def cached_poses(self, index: int) -> np.ndarray:
        """Poses of item ``index`` as cached, (2, 3, J, t_p); the reader opens lazily per process."""
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = open_cache(self.path)
            self._reader_pid = os.getpid()
        return self._reader.read_poses(int(self.rows[index]))

    def read_frames(self, sample_id: str, indices: np.ndarray) -> np.ndarray:
        """Decode frames ``indices`` of a sample's video: uint8 (len(indices), H, W, 3)."""
        path = self.paths[sample_id][0]
        backends = ("frames",) if path.is_dir() else self.backends
        frames, _ = video.read_clip(path, indices, backends)
        return frames

    def poses_at(self, sample_id: str, indices: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
        """Poses of the clip showing video frames ``indices``, computed as the cache pipeline does.

        Args:
            sample_id: the sample.
            indices: (clip_len,) video frame indices.
            frame_size: (width, height) of the decoded video.

        Returns:
            float32 (2, 3, J, t_p).
        """
        skeleton = load_skeleton(self.spec, self.paths[sample_id][1], frame_size)
        skeleton_frames = align_frames(indices, self.num_frames[sample_id], skeleton.num_frames)
        return clip_poses(skeleton.joints3d[skeleton_frames], self.t_p, self.spec.centre_joint)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        aug = self.augment
        rng = np.random.default_rng([self.seed, epoch, index]) if aug is not None else None
        sample_id, cached = self.sample_ids[index], self.frame_indices[index]
        indices = clip_indices(cached, self.clip_len, rng if aug and aug.temporal_jitter else None)  # (clip_len,)
        frames = self.read_frames(sample_id, indices)  # (T, H, W, 3)
        height, width = frames.shape[1:3]
        box = self.boxes[index]
        if aug is not None and (aug.box_scale or aug.box_shift):
            box = jitter_box(box, width, height, rng, aug.box_scale, aug.box_shift)
        crops = crop.to_uint8_crops(frames, box, self.crop_size)  # (T, S, S, 3)
        if np.array_equal(indices, cached):
            poses = self.cached_poses(index)  # (2, 3, J, t_p)
        else:
            poses = self.poses_at(sample_id, indices, (width, height))  # (2, 3, J, t_p)
        if aug is not None and rng.random() < aug.flip_prob:
            crops, poses = flip_clip(crops), flip_poses(poses, self.spec.left_right)
        clip = torch.from_numpy(crop.normalize_crops(crops))  # (3, T, S, S)
        return clip, torch.from_numpy(poses.astype(np.float32)), int(self.labels[index]), int(self.rows[index])


class PixelVideos(Dataset):
    """The videos of a ``PixelClips`` split for the paper's evaluation: K clips over the whole person box.

    Items are ``(clips, poses, label, video)``: float32 ``(K, 3, clip_len, h, w)`` (short side
    ``short_side``), float32 ``(K, 2, 3, J, t_p)`` poses recomputed at each clip's frames, the label and the
    video's index. A video's box encloses the cached boxes of all its clips; its K windows are
    ``pipeline.video.sample_frame_indices(num_frames, clip_len, K)``.
    """

    def __init__(self, clips: PixelClips, num_clips: int, short_side: int) -> None:
        self.clips, self.num_clips, self.short_side = clips, num_clips, short_side
        groups, self.video_ids = video_groups(clips.sample_ids)
        self.labels = np.zeros(len(self.video_ids), np.int64)
        self.labels[groups] = clips.labels
        boxes = [clips.boxes[groups == v] for v in range(len(self.video_ids))]  # each (clips of v, 4)
        self.boxes = np.stack([np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)]) for b in boxes])  # (V, 4)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        sample_id = self.video_ids[index]
        indices = video.sample_frame_indices(self.clips.num_frames[sample_id], self.clips.clip_len,
                                             self.num_clips)  # (K, clip_len)
        frames = self.clips.read_frames(sample_id, indices.ravel())  # (K * clip_len, H, W, 3)
        height, width = frames.shape[1:3]
        crops = crop_keep_aspect(frames, self.boxes[index], self.short_side)  # (K * clip_len, h, w, 3)
        crops = crops.reshape(*indices.shape, *crops.shape[1:])  # (K, clip_len, h, w, 3)
        clips = np.stack([crop.normalize_crops(c) for c in crops])  # (K, 3, clip_len, h, w)
        poses = np.stack([self.clips.poses_at(sample_id, i, (width, height)) for i in indices])  # (K, 2, 3, J, t_p)
        return torch.from_numpy(clips), torch.from_numpy(poses), int(self.labels[index]), index


class StepSampler(DistributedSampler):
    """A ``DistributedSampler`` over whole optimizer steps that yields ``(epoch, index)`` keys.

    Every epoch one permutation of the dataset (seeded by ``seed + epoch``) is dealt to the ranks in turn; only
    its first ``floor(N / step_clips) * step_clips`` entries are used, so every step has ``step_clips`` clips and
    step k of any world size holds the permutation's entries ``[k * step_clips, (k + 1) * step_clips)``. The
    sampler's state is its epoch.
    """

    def __init__(self, dataset: Dataset, ctx: DistContext, step_clips: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        steps = len(dataset) // step_clips
        if steps == 0:
            raise ValueError(f"the training split has {len(dataset)} clips, fewer than one step of {step_clips}")
        self.num_keys = steps * step_clips // ctx.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in islice(super().__iter__(), self.num_keys))

    def __len__(self) -> int:
        return self.num_keys


def _loader(dataset: Dataset, batch_size: int | None, num_workers: int, device: torch.device, seed: int,
            sampler: torch.utils.data.Sampler | None = None) -> DataLoader:
    """A DataLoader whose worker seeding draws from a private generator (never the global RNG)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# model


class FinetuneVPN(nn.Module):
    """I3D to Mixed_5c followed by the VPN head: ``(clips, poses) -> VPNOutput``.

    Args:
        i3d: the trunk (its ``freeze_until`` already applied).
        head: the VPN head; ``config`` is the head's, so ``vpn_head.evaluate.score_clips`` can drive the model.
        frozen_bn: keep every I3D BatchNorm in eval mode.
    """

    def __init__(self, i3d: InceptionI3d, head: VPN, frozen_bn: bool = False) -> None:
        super().__init__()
        self.i3d, self.head, self.frozen_bn = i3d, head, frozen_bn
        self.config = head.config

    def train(self, mode: bool = True) -> FinetuneVPN:
        super().train(mode)
        if self.frozen_bn:
            for module in self.i3d.modules():
                if isinstance(module, nn.BatchNorm3d):
                    module.train(False)
        return self

    def forward(self, clips: torch.Tensor, poses: torch.Tensor | None) -> VPNOutput:
        """Score clips.

        Args:
            clips: (N, 3, T, H, W) RGB in [-1, 1].
            poses: (N, 2, 3, J, t_p); None for the head variant ``i3d``.
        """
        features = self.i3d.forward_features(clips)  # (N, 1024, ceil(T/8), ceil(H/32), ceil(W/32))
        return self.head(features, poses)

    def score_windows(self, clips: torch.Tensor, poses: torch.Tensor | None, chunk: int) -> torch.Tensor:
        """Max-pooled softmax over clips and every head-sized spatial window of their Mixed_5c maps.

        Args:
            clips: (K, 3, T, h, w) clips of one video (any h, w).
            poses: (K, 2, 3, J, t_p) or None.
            chunk: clips (and windows) per forward pass.

        Returns:
            (num_classes,) float32 scores.
        """
        size = self.config.feature_size
        best = None
        for start in range(0, len(clips), chunk):
            features = self.i3d.forward_features(clips[start:start + chunk])  # (k, 1024, T', h', w')
            if min(features.shape[-2:]) >= size:
                features = features.unfold(3, size, 1).unfold(4, size, 1)  # (k, 1024, T', h'-s+1, w'-s+1, s, s)
                positions = features.shape[3] * features.shape[4]
                features = features.permute(0, 3, 4, 1, 2, 5, 6).flatten(0, 2)  # (k * P, 1024, T', s, s)
            else:
                positions = 1
            repeated = None if poses is None else poses[start:start + chunk].repeat_interleave(positions, 0)
            for first in range(0, len(features), chunk):
                window_poses = None if repeated is None else repeated[first:first + chunk]
                logits = self.head(features[first:first + chunk], window_poses).logits  # (c, num_classes)
                probs = F.softmax(logits.float(), dim=1).amax(dim=0)  # (num_classes,)
                best = probs if best is None else torch.maximum(best, probs)
        return best


def load_init_head(run_dir: str | os.PathLike) -> tuple[VPN, dict[str, Any], Path]:
    """The head of a head-training run: its ``best.pt``, else ``last.pt``.

    Returns:
        ``(head, train_config, checkpoint path)``.

    Raises:
        CheckpointError: no run, no checkpoint, or a damaged one.
    """
    run_dir = Path(run_dir)
    for name in CHECKPOINT_NAMES:
        path = run_dir / f"{name}.pt"
        if path.is_file():
            ckpt = load_checkpoint(path)
            return model_from_checkpoint(ckpt, path), ckpt["train_config"], path
    raise CheckpointError(f"{run_dir}: no best.pt or last.pt to start the head from (train it with "
                          f"`make train-head`, or leave INIT= empty for a new head)")


def build_model(config: FinetuneConfig, t_p: int) -> FinetuneVPN:
    """I3D (``config.i3d_weights``, frozen up to ``config.freeze_until``) + the head (``config.init`` or new).

    Raises:
        CheckpointError: a bad ``init`` run.
        ValueError: an init head that does not fit the dataset, protocol, clip or crop size, or ``t_p``.
    """
    i3d = load_i3d(config.i3d_weights or None)
    i3d.freeze_until(config.freeze_until or None)
    if config.init:
        head, head_train, source = load_init_head(config.init)
        where = (head_train.get("dataset"), head_train.get("protocol"))
        if where != (config.dataset, config.protocol):
            raise ValueError(f"{source} was trained on {where[0]}/{where[1]}, not {config.dataset}/{config.protocol}")
        if config.variant and config.variant != head.config.variant:
            raise ValueError(f"{source} is a {head.config.variant!r} head, not {config.variant!r}")
        log.info("head initialised from %s (%s)", source, head.config.variant)
    else:
        log.warning("no --init head run: the VPN head starts from RANDOM weights")
        overrides = {"t_p": t_p, "feature_time": config.feature_time, "feature_size": config.feature_size,
                     **config.model}
        head = VPN(VPNConfig.for_dataset(config.dataset, config.protocol, variant=config.variant or "vpn",
                                         **overrides))
    want = {"feature_time": config.feature_time, "feature_size": config.feature_size, "t_p": t_p}
    have = {name: getattr(head.config, name) for name in want}
    if have != want:
        raise ValueError(f"the head expects {have} but clip_len {config.clip_len}, crop_size {config.crop_size} and "
                         f"the cache's poses give {want}")
    return FinetuneVPN(i3d, head, config.frozen_bn)


def _set_power_iteration(model: FinetuneVPN, enabled: bool) -> None:
    """Let spectral-norm parametrizations update their power iteration (train mode) or only read it (eval)."""
    for module in model.head.modules():
        if parametrize.is_parametrized(module):
            module.parametrizations.train(enabled and model.training)


# ----------------------------------------------------------------------------------------------------------
# training


def train_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                device: torch.device, amp: bool, accum: int, ctx: DistContext, description: str) -> dict[str, float]:
    """One pass over ``loader``: ``accum`` micro-batches per optimizer step.

    Args:
        model: a ``FinetuneVPN``, or its ``DistributedDataParallel`` wrapper.
        loader: yields ``(clips, poses, labels, rows)``; its length is a multiple of ``accum``.
        optimizer: SGD over the trainable parameters.
        scaler: loss scaler (enabled only for float16 autocast).
        device: this process's device.
        amp: autocast.
        accum: micro-batches per step.
        ctx: the process group context (losses and throughput are summed over ranks).
        description: progress-bar label (shown on rank 0).

    Returns:
        Mean losses, clip accuracy and ``train_samples_per_s`` (clips per second over all ranks).
    """
    core: FinetuneVPN = model.module if isinstance(model, DistributedDataParallel) else model
    core.train()
    config = core.config
    uses_pose = config.variant != "i3d"
    sums = torch.zeros(len(LOSS_KEYS) + 2, device=device)  # loss terms * n, correct, n
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    bar = tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True, disable=not ctx.is_main)
    for step, (clips, poses, labels, _) in enumerate(bar):
        micro = step % accum
        clips = clips.to(device, non_blocking=True)  # (B, 3, T, S, S)
        poses = poses.to(device, non_blocking=True) if uses_pose else None  # (B, 2, 3, J, t_p)
        labels = labels.to(device, non_blocking=True)  # (B,)
        _set_power_iteration(core, micro == 0)
        sync = model.no_sync() if ctx.distributed and micro < accum - 1 else nullcontext()
        with sync:
            with autocast(device, amp):
                out = model(clips, poses)
                losses = vpn_loss(out, labels, config)
            scaler.scale(losses["total"] / accum).backward()
        if micro == accum - 1:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        n = labels.shape[0]
        correct = (out.logits.argmax(dim=1) == labels).sum()
        sums += torch.stack([*(losses[k].detach().float() * n for k in LOSS_KEYS), correct.float(),
                             torch.tensor(float(n), device=device)])
        if ctx.is_main and (step % POSTFIX_EVERY == 0 or step == len(loader) - 1):
            values = sums.tolist()
            bar.set_postfix(loss=f"{values[0] / values[-1]:.4f}", acc=f"{values[-2] / values[-1]:.3f}")
    _set_power_iteration(core, True)
    if ctx.distributed:
        dist.all_reduce(sums)
    elapsed = time.perf_counter() - start
    values = sums.tolist()
    seen = values[-1]
    row = {f"train_{k}" if k != "total" else "train_loss": v / seen for k, v in zip(LOSS_KEYS, values)}
    return {**row, "train_acc": values[-2] / seen, "train_samples_per_s": seen / elapsed}


# ----------------------------------------------------------------------------------------------------------
# scoring


def _rank_share(dataset: Dataset, ctx: DistContext) -> tuple[Subset, list[int]]:
    positions = list(range(ctx.rank, len(dataset), ctx.world_size))
    return Subset(dataset, positions), positions


def score_split(model: FinetuneVPN, clips: PixelClips, config: FinetuneConfig, device: torch.device, amp: bool,
                ctx: DistContext) -> dict[str, float] | None:
    """Quick score: every cached clip of ``clips`` at the training crop, max-pooled per video.

    Every rank scores its share; rank 0 gets the metrics (``summarise``), the others None.
    """
    share, positions = _rank_share(clips, ctx)
    if positions:
        loader = _loader(share, config.per_gpu_batch, config.num_workers, device, config.seed)
        probs, labels, _ = score_clips(model, loader, device, amp)
    else:  # more ranks than clips
        probs, labels = np.zeros((0, len(clips.class_names)), np.float32), np.zeros(0, np.int64)
    gathered = _gather((positions, probs, labels), ctx)
    if not ctx.is_main:
        return None
    order = np.argsort(np.concatenate([g[0] for g in gathered]), kind="stable")
    probs = np.concatenate([g[1] for g in gathered])[order]  # (N, num_classes)
    labels = np.concatenate([g[2] for g in gathered])[order]  # (N,)
    video_probs, video_labels, _ = video_scores(probs, labels, clips.sample_ids)
    return summarise(video_labels, video_probs.argmax(axis=1))


@torch.no_grad()
def score_videos(model: FinetuneVPN, videos: PixelVideos, config: FinetuneConfig, device: torch.device, amp: bool,
                 ctx: DistContext) -> tuple[np.ndarray, np.ndarray] | None:
    """The paper's scores: ``FinetuneVPN.score_windows`` on every video, each rank a share.

    Returns:
        On rank 0 ``(probs (V, num_classes), labels (V,))`` in video order; None elsewhere.
    """
    model.eval()
    uses_pose = model.config.variant != "i3d"
    share, positions = _rank_share(videos, ctx)
    loader = _loader(share, None, config.num_workers, device, config.seed)
    scores = []
    for clips, poses, _, _ in tqdm(loader, desc="evaluate", unit="video", leave=False, disable=not ctx.is_main):
        clips = clips.to(device, non_blocking=True)  # (K, 3, T, h, w)
        poses = poses.to(device, non_blocking=True) if uses_pose else None  # (K, 2, 3, J, t_p)
        with autocast(device, amp):
            scores.append(model.score_windows(clips, poses, config.per_gpu_batch).cpu().numpy())
    gathered = _gather((positions, scores), ctx)
    if not ctx.is_main:
        return None
    order = np.argsort(np.concatenate([g[0] for g in gathered]), kind="stable")
    probs = np.stack([s for g in gathered for s in g[1]])[order]  # (V, num_classes)
    return probs, videos.labels


# ----------------------------------------------------------------------------------------------------------
# runs


def prepare_run_dir(config: FinetuneConfig, vpn_config: VPNConfig, force_new: bool, ctx: DistContext) -> Path:
    """Create the run directory (moving an old one aside with ``force_new``) and write ``config.json``.

    Every rank checks the saved config, so a refused run fails in all processes; rank 0 writes.

    Raises:
        RunConfigError: the directory holds another experiment.
    """
    run_dir = config.run_dir
    config_path = run_dir / "config.json"
    if force_new and ctx.is_main and run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}")
        run_dir.rename(aside)
        log.warning("--force-new: moved the old run %s to %s", run_dir, aside)
    _barrier(ctx)
    if config_path.exists():
        try:
            saved = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunConfigError(f"{config_path}: unreadable ({error}); use --force-new or another --run") from error
        check_same_experiment(saved, config, vpn_config, config_path)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_path, {"finetune": config.to_dict(), "model": vpn_config.to_dict()})
    _barrier(ctx)
    return run_dir


def check_same_experiment(saved: Mapping[str, Any], config: FinetuneConfig, vpn_config: VPNConfig,
                          source: Path) -> None:
    """Raise ``RunConfigError`` when ``saved`` (``{"finetune": ..., "model": ...}``) is another experiment."""
    try:
        have = {**{f"finetune.{k}": v for k, v in FinetuneConfig.from_dict(saved["finetune"]).identity().items()},
                **{f"model.{k}": v for k, v in saved["model"].items()}}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RunConfigError(f"{source}: not a fine-tune run config ({error}); use --force-new or another --run"
                             ) from error
    wanted = {**{f"finetune.{k}": v for k, v in config.identity().items()},
              **{f"model.{k}": v for k, v in vpn_config.to_dict().items()}}
    raise_if_other_experiment(have, wanted, source)


def _write_logs(run_dir: Path, config: FinetuneConfig, vpn_config: VPNConfig, progress: _Progress, metric: str,
                ctx: DistContext, accum: int) -> dict[str, Any]:
    atomic_write_csv(run_dir / "train_log.csv", list(FINETUNE_LOG_COLUMNS),
                     ([row[c] for c in FINETUNE_LOG_COLUMNS] for row in progress.history))
    best = progress.history[progress.best_epoch - 1]
    last = progress.history[-1]
    summary = {
        "run": run_dir.name, "dataset": config.dataset, "protocol": config.protocol, "variant": vpn_config.variant,
        "finetune": True, "headline_metric": metric, "eval_split": best["eval_split"],
        "checkpoint_selected_on": best["eval_split"],
        "epochs_done": progress.epoch, "epochs": config.epochs, "complete": progress.epoch >= config.epochs,
        "best_epoch": progress.best_epoch, "best": {"top1": best["eval_top1"], "mean_class": best["eval_mean_class"]},
        "last": {"top1": last["eval_top1"], "mean_class": last["eval_mean_class"]},
        "world_size": ctx.world_size, "accum_steps": accum, "train_clips_per_s": last["train_samples_per_s"],
    }
    atomic_write_json(run_dir / "metrics.json", summary)
    return summary


def _eval_clips(config: FinetuneConfig, cache: Path, paths: Mapping[str, tuple[Path, Path]], split: str
                ) -> PixelClips:
    return PixelClips(cache, config.protocol, split, config.dataset, paths, config.clip_len, config.crop_size,
                      carve_fraction=config.val_fraction if split == CARVED_VAL else 0.0, carve_seed=config.seed)


def finetune(config: FinetuneConfig, force_new: bool = False) -> dict[str, Any]:
    """Fine-tune (or resume, or extend) the run ``config`` describes, then score ``best.pt`` on the test split.

    Call it in every process of a torchrun job (it joins the process group from the environment).

    Args:
        config: the run.
        force_new: move an existing run directory aside and start over.

    Returns:
        The run's ``metrics.json`` content, with the final test scores under ``test`` when they were computed.

    Raises:
        ValueError: bad config values, batch sizes that do not divide, an init head that does not fit.
        RunConfigError: the run directory holds another experiment.
        CacheError: missing cache, empty split, samples missing from the manifest.
        CheckpointError: a damaged ``last.pt`` or init run.
        FileNotFoundError: missing manifest or videos (wrong DATA_ROOT).
    """
    config.validate()
    ctx, device = init_distributed(config.device)
    accum = accumulation_steps(config.batch_size, config.per_gpu_batch, ctx.world_size)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    cache = find_cache(config.cache, config.dataset)
    paths = sample_paths(config.manifest_path, config.data_root)
    chooser = selection_split(cache, config.protocol, config.dataset, config.eval_split)
    train_set = PixelClips(cache, config.protocol, "train", config.dataset, paths, config.clip_len, config.crop_size,
                           augment=config.augment, seed=config.seed,
                           carve_fraction=config.val_fraction if chooser == CARVED_VAL else 0.0,
                           carve_seed=config.seed)
    eval_set = _eval_clips(config, cache, paths, chooser)
    metric = train_set.spec.metric

    seed_everything(config.seed + ctx.rank, config.deterministic)
    model = build_model(config, train_set.t_p).to(device)
    vpn_config = model.config
    run_dir = prepare_run_dir(config, vpn_config, force_new, ctx)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    progress = _Progress()
    last_path = run_dir / "last.pt"
    if last_path.exists():
        progress = _resume(last_path, model, optimizer, scheduler, scaler, config, vpn_config, ctx)
    if progress.epoch >= config.epochs:
        log.info("%s already trained for %d epochs (asked %d); nothing to do", run_dir, progress.epoch, config.epochs)
        return json.loads((run_dir / "metrics.json").read_text())

    trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ctx.distributed else model
    sampler = StepSampler(train_set, ctx, config.batch_size, config.seed)
    loader = _loader(train_set, config.per_gpu_batch, config.num_workers, device, config.seed, sampler)
    log.info("fine-tuning %s: %s head, %d train clips (%d steps of %d = %d processes x %d clips x %d accumulation), "
             "scoring %d %s clips each epoch, device %s, amp %s", run_dir.name, vpn_config.variant, len(train_set),
             len(sampler) * ctx.world_size // config.batch_size, config.batch_size, ctx.world_size,
             config.per_gpu_batch, accum, len(eval_set), eval_set.split, device, amp)
    summary: dict[str, Any] = {}
    for epoch in range(progress.epoch, config.epochs):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        row = train_epoch(trained, loader, optimizer, scaler, device, amp, accum, ctx,
                          f"{run_dir.name} epoch {epoch + 1}/{config.epochs}")
        scheduler.step()
        scores = score_split(model, eval_set, config, device, amp, ctx)
        rng = _gather(rng_state(), ctx)
        if ctx.is_main:
            row = {"epoch": epoch + 1, "lr": lr, **row, "eval_split": eval_set.split, "eval_top1": scores["top1"],
                   "eval_mean_class": scores["mean_class"], "epoch_time_s": time.perf_counter() - start,
                   "world_size": ctx.world_size, "accum_steps": accum}
            progress.epoch = epoch + 1
            progress.history.append(row)
            state = dict(epoch=progress.epoch, model=model.head.state_dict(), i3d=model.i3d.state_dict(),
                         train_config=config.to_dict(), vpn_config=vpn_config.to_dict())
            if scores[metric] > progress.best_value:
                progress.best_value, progress.best_epoch = scores[metric], progress.epoch
                save_checkpoint(run_dir / "best.pt", **state)
            save_checkpoint(last_path, **state, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict(), rng=rng, progress=asdict(progress))
            summary = _write_logs(run_dir, config, vpn_config, progress, metric, ctx, accum)
            log.info("epoch %d/%d: loss %.4f, train acc %.3f, %s top-1 %.4f, mean-class %.4f, %.1f clips/s",
                     epoch + 1, config.epochs, row["train_loss"], row["train_acc"], eval_set.split, scores["top1"],
                     scores["mean_class"], row["train_samples_per_s"])
        else:
            progress.epoch = epoch + 1
        _barrier(ctx)
    del loader, trained
    test = evaluate_finetuned(run_dir, "test", "best", config, ctx, device)
    if ctx.is_main:
        summary["test"] = {k: test[k] for k in ("top1", "mean_class", "num_videos")}
        atomic_write_json(run_dir / "metrics.json", summary)
    return summary


def _resume(path: Path, model: FinetuneVPN, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, config: FinetuneConfig,
            vpn_config: VPNConfig, ctx: DistContext) -> _Progress:
    """Load ``last.pt`` into the model and the training state; returns the progress."""
    ckpt = load_checkpoint(path)
    check_same_experiment({"finetune": ckpt["train_config"], "model": ckpt["vpn_config"]}, config, vpn_config, path)
    if "i3d" not in ckpt:
        raise CheckpointError(f"{path} holds no I3D weights; it is not a fine-tune checkpoint")
    load_weights(model.head, ckpt["model"], path)
    load_weights(model.i3d, ckpt["i3d"], path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        progress = _Progress(**ckpt["progress"])
        if len(ckpt["rng"]) == ctx.world_size:
            set_rng_state(ckpt["rng"][ctx.rank])
        else:
            log.warning("%s was written by %d processes, this run has %d: RNG states (dropout) start afresh",
                        path, len(ckpt["rng"]), ctx.world_size)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: damaged training state ({error})") from error
    log.info("resuming %s after epoch %d", path.parent, progress.epoch)
    return progress


def evaluate_finetuned(run_dir: str | os.PathLike, split: str = "test", checkpoint: str = "best",
                       config: FinetuneConfig | None = None, ctx: DistContext | None = None,
                       device: torch.device | None = None, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score a fine-tune checkpoint the paper's way (see the module doc) and write ``<run_dir>/eval_<split>/``.

    Args:
        run_dir: ``runs/<name>`` of a fine-tune run.
        split: ``train``, ``val`` or ``test``.
        checkpoint: ``best`` or ``last``.
        config: paths, clip and evaluation settings; default: the run's own config.
        ctx: process group context (each rank scores a share of the videos); default: this process alone.
        device: default: the config's.
        out_dir: default ``<run_dir>/eval_<split>``.

    Returns:
        The metrics (on every rank; only rank 0 writes files).

    Raises:
        CheckpointError: missing or bad checkpoint.
        CacheError: missing cache or empty split.
    """
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINT_NAMES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_NAMES}, got {checkpoint!r}")
    path = run_dir / f"{checkpoint}.pt"
    ckpt = load_checkpoint(path)
    if "i3d" not in ckpt:
        raise CheckpointError(f"{path} holds no I3D weights; score head runs with `make eval`")
    config = config or FinetuneConfig.from_dict(ckpt["train_config"])
    ctx = ctx or DistContext()
    device = device or resolve_device(config.device)
    i3d = InceptionI3d()
    load_weights(i3d, ckpt["i3d"], path)
    model = FinetuneVPN(i3d, model_from_checkpoint(ckpt, path)).to(device)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    clips = PixelClips(find_cache(config.cache, config.dataset), config.protocol, split, config.dataset,
                       sample_paths(config.manifest_path, config.data_root), config.clip_len, config.crop_size)
    videos = PixelVideos(clips, config.eval_clips, config.eval_crop_size)
    scored = score_videos(model, videos, config, device, amp, ctx)
    metrics: dict[str, Any] = {}
    if ctx.is_main:
        probs, labels = scored
        metrics = {"run": str(run_dir), "checkpoint": path.name, "epoch": int(ckpt["epoch"]),
                   "cache": str(clips.path), "dataset": config.dataset, "protocol": config.protocol,
                   "variant": model.config.variant, "split": split, "headline_metric": clips.spec.metric,
                   **summarise(labels, probs.argmax(axis=1)), "clips_per_video": config.eval_clips,
                   "eval_crop_size": config.eval_crop_size, "finetune": True}
        write_eval_reports(Path(out_dir) if out_dir else run_dir / f"eval_{split}", metrics, videos.video_ids, labels,
                           probs, clips.class_names)
        log.info("%s %s: top-1 %.4f, mean-class %.4f over %d videos", run_dir.name, split, metrics["top1"],
                 metrics["mean_class"], metrics["num_videos"])
    return _gather(metrics, ctx)[0]


# ----------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    defaults = FinetuneConfig("", "")
    aug = defaults.augment
    parser = argparse.ArgumentParser(prog="python -m vpn_head.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--manifest", default="", help="manifest CSV (default manifests/<dataset>.csv)")
    parser.add_argument("--data-root", default="", help="folder the manifest's paths are relative to "
                                                        "(default: recorded beside the manifest)")
    parser.add_argument("--cache-dir", default=defaults.cache, help="cache root, cache directory or cache.h5")
    parser.add_argument("--runs-dir", default=defaults.runs_dir)
    parser.add_argument("--run", "--run-name", dest="run", default="",
                        help="run name (default <dataset>_<protocol>_finetune); under torchrun spell it --run-name "
                             "(torchrun takes --run for its own --run-path)")
    parser.add_argument("--init", default="", help="head run directory to start the head from")
    parser.add_argument("--i3d-weights", default="", help="I3D state dict (default: random init, warns)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="clips per step, all GPUs")
    parser.add_argument("--per-gpu-batch", type=int, default=defaults.per_gpu_batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--lr-step", type=int, default=defaults.lr_step)
    parser.add_argument("--lr-gamma", type=float, default=defaults.lr_gamma)
    parser.add_argument("--freeze-until", default="", help="last frozen I3D block, e.g. Mixed_3c")
    parser.add_argument("--frozen-bn", action="store_true", help="keep every I3D BatchNorm in eval mode")
    parser.add_argument("--clip-len", type=int, default=defaults.clip_len)
    parser.add_argument("--crop-size", type=int, default=defaults.crop_size)
    parser.add_argument("--flip-prob", type=float, default=aug.flip_prob)
    parser.add_argument("--no-temporal-jitter", dest="temporal_jitter", action="store_false")
    parser.add_argument("--box-scale", type=float, default=aug.box_scale)
    parser.add_argument("--box-shift", type=float, default=aug.box_shift)
    parser.add_argument("--variant", default="", choices=("", *VARIANTS), help="head variant of a new head")
    parser.add_argument("--model", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                        help="VPNConfig field of a new head (repeatable)")
    parser.add_argument("--eval-split", default=defaults.eval_split, choices=EVAL_SPLITS)
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        help="share of training subjects carved out as val_carved")
    parser.add_argument("--eval-clips", type=int, default=defaults.eval_clips)
    parser.add_argument("--eval-crop-size", type=int, default=defaults.eval_crop_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA)")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--force-new", action="store_true", help="move an existing run aside and start over")
    parser.add_argument("--eval-only", action="store_true",
                        help="only score the run's checkpoint the paper's way (its own clip and crop settings; "
                             "paths and --eval-* options from this command line)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of --eval-only")
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINT_NAMES, help="checkpoint of --eval-only")
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The ``FinetuneConfig`` of a command line."""
    return FinetuneConfig(
        dataset=args.dataset, protocol=args.protocol, epochs=args.epochs, batch_size=args.batch_size,
        per_gpu_batch=args.per_gpu_batch, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        lr_step=args.lr_step, lr_gamma=args.lr_gamma, freeze_until=args.freeze_until, frozen_bn=args.frozen_bn,
        clip_len=args.clip_len, crop_size=args.crop_size,
        augment=AugmentConfig(args.flip_prob, args.temporal_jitter, args.box_scale, args.box_shift),
        variant=args.variant, model=dict(args.model), eval_split=args.eval_split,
        val_fraction=args.val_fraction, eval_clips=args.eval_clips,
        eval_crop_size=args.eval_crop_size, seed=args.seed, deterministic=args.deterministic,
        num_workers=args.num_workers, amp=args.amp, device=args.device, manifest=args.manifest,
        data_root=args.data_root, cache=args.cache_dir, runs_dir=args.runs_dir, run_name=args.run, init=args.init,
        i3d_weights=args.i3d_weights)


def main(argv: list[str] | None = None) -> int:
    args = parse_args_with_config(build_parser(), argv, "finetune", {"run_name": "run", "cache": "cache_dir"},
                                  nested=("augment",))
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(levelname)s rank{rank} %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        if args.eval_only:
            saved = load_checkpoint(config.run_dir / f"{args.checkpoint}.pt")["train_config"]
            config = replace(FinetuneConfig.from_dict(saved), **{k: getattr(config, k) for k in RESUME_FREE_FIELDS})
            ctx, device = init_distributed(config.device)
            result = evaluate_finetuned(config.run_dir, args.split, args.checkpoint, config, ctx, device)
            keys = ("split", "top1", "mean_class", "num_videos")
        else:
            result = finetune(config, force_new=args.force_new)
            keys = ("run", "epochs_done", "best_epoch", "best", "test")
    except (CacheError, CheckpointError, RunConfigError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({k: result[k] for k in keys if k in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
