"""The fine-tune's configuration: every value that defines an end-to-end run, and its checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.contracts import CLIP_FRAMES, CROP_SIZE
from pipeline.datasets import get_dataset
from vpn_head.augment import AugmentConfig
from vpn_head.config import VARIANTS
from vpn_head.trainer_config import check_fields, is_int, reject_unknown_fields

RESUME_FREE_FIELDS: tuple[str, ...] = (
    "epochs", "per_gpu_batch", "num_workers", "amp", "device", "manifest", "data_root", "cache", "runs_dir",
    "run_name", "eval_clips", "eval_crop_size",
)
"""FinetuneConfig fields a resumed run may change: hardware, paths, the final evaluation, more epochs."""
I3D_STRIDE = (8, 32)
"""Mixed_5c downsamples time by 8 and space by 32 (TF SAME padding rounds up)."""


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
        positive = ("per_gpu_batch", "clip_len", "crop_size", "eval_clips", "eval_crop_size")
        check_fields(self, {**{n: is_int(getattr(self, n), 1) for n in positive},
                            "variant": self.variant in ("", *VARIANTS)})
        if self.init and self.model:
            raise ValueError("model overrides apply to a new head only; the head of --init keeps its config")
        self.augment.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        reject_unknown_fields(cls, values)
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
