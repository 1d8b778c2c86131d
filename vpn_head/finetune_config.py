"""The fine-tune's configuration: every value that defines an end-to-end run, and its checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.crop_store import PIXELS_CHOICES
from pipeline.datasets import get_dataset
from pipeline.i3d_spec import CLIP_FRAMES, CROP_SIZE, feature_shape
from vpn_head.augment import AugmentConfig
from vpn_head.config import VARIANTS
from vpn_head.trainer_config import TrainerConfig, check_fields, is_int

@dataclass(frozen=True)
class FinetuneConfig(TrainerConfig):
    """Everything that defines a fine-tuning run: the fields of ``TrainerConfig`` and these.

    Attributes:
        per_gpu_batch: clips per forward pass on one GPU; ``batch_size / (per_gpu_batch * GPUs)`` must be an
            integer (the gradient-accumulation steps).
        freeze_until: last I3D block kept frozen (requires_grad off, BatchNorm in eval), e.g. ``Mixed_3c``;
            empty: everything trains.
        frozen_bn: keep every I3D BatchNorm in eval mode (running statistics), e.g. for small per-GPU batches.
        clip_len: frames per training clip (paper: 64); Mixed_5c has ``ceil(clip_len / 8)`` time steps.
        crop_size: side of the training crop (paper: 224); Mixed_5c is ``ceil(crop_size / 32)`` square.
        augment: training augmentation (``vpn_head.augment``).
        variant: head variant for a new head (``i3d``, ``attention``, ``vpn``); empty: the init run's, or
            ``vpn`` without one. A run given with ``init`` must agree.
        model: further ``VPNConfig`` overrides for a new head (not allowed with ``init``).
        eval_clips: clips per video in the final evaluation (evenly spaced windows).
        eval_crop_size: short side of the resized person box in the final evaluation.
        manifest: manifest CSV; empty: ``manifests/<dataset>.csv``.
        data_root: folder the manifest's paths are relative to; empty: from the manifest's side file.
        init: head run directory to start the head from; empty: a new head (warns).
        i3d_weights: I3D state-dict file; empty: random init (warns loudly).
        pixels: where clips are decoded (``pipeline.crop_store.PIXELS_CHOICES``): ``auto`` reads the cache's
            person-crop store (``make crops``) when one holds the box jitter, else the source videos.

    ``run_name`` defaults to ``<dataset>_<protocol>_finetune``; ``num_workers`` DataLoader processes per GPU decode
    and crop.
    """

    RESUME_FREE_FIELDS: ClassVar[tuple[str, ...]] = (
        "epochs", "per_gpu_batch", "num_workers", "amp", "device", "manifest", "data_root", "cache", "runs_dir",
        "run_name", "eval_clips", "eval_crop_size", "pixels",
    )
    """Hardware, paths, the final evaluation, more epochs, where the pixels are read."""

    num_workers: int = 4
    per_gpu_batch: int = 4
    freeze_until: str = ""
    frozen_bn: bool = False
    clip_len: int = CLIP_FRAMES
    crop_size: int = CROP_SIZE
    augment: AugmentConfig = AugmentConfig()
    variant: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    eval_clips: int = 3
    eval_crop_size: int = 256
    manifest: str = ""
    data_root: str = ""
    init: str = ""
    i3d_weights: str = ""
    pixels: str = "auto"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.run_name or f"{self.dataset}_{self.protocol}_finetune")

    @property
    def manifest_path(self) -> Path:
        return Path(self.manifest or f"manifests/{self.dataset}.csv")

    @property
    def feature_time(self) -> int:
        """Time steps of the Mixed_5c map of a training clip."""
        return feature_shape(self.clip_len, self.crop_size)[1]

    @property
    def feature_size(self) -> int:
        """Side of the Mixed_5c map of a training crop."""
        return feature_shape(self.clip_len, self.crop_size)[2]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        get_dataset(self.dataset).protocol_classes(self.protocol)
        positive = ("per_gpu_batch", "clip_len", "crop_size", "eval_clips", "eval_crop_size")
        check_fields(self, {**{n: is_int(getattr(self, n), 1) for n in positive},
                            "variant": self.variant in ("", *VARIANTS), "pixels": self.pixels in PIXELS_CHOICES})
        if self.init and self.model:
            raise ValueError("model overrides apply to a new head only; the head of --init keeps its config")
        self.augment.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Inverse of ``to_dict`` (``augment`` may be a dict)."""
        values = dict(values)
        if isinstance(values.get("augment"), Mapping):
            values["augment"] = AugmentConfig(**values["augment"])
        return super().from_dict(values)


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
