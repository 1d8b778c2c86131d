"""The run configs, in one home: the fields both trainers share (``TrainerConfig``), the head trainer's
(``TrainConfig``) and the end-to-end fine-tune's (``FinetuneConfig``), with their checks and (de)serialisation."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from pipeline.crops.store import PIXELS_CHOICES
from pipeline.datasets.registry import get_dataset
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE, feature_shape
from vpn_head.data.augment import AugmentConfig
from vpn_head.data.splits import CARVED_VAL
from vpn_head.model.config import VARIANTS, VPNConfig

EVAL_SPLITS: tuple[str, ...] = ("auto", "val", CARVED_VAL, "test")
"""Splits that may pick ``best.pt``: ``auto`` is the protocol's ``val``, else ``val_carved``."""
TRAIN_READINGS: dict[str, dict[str, Any]] = {"paper": {}, "official": {"lr_gamma": 1.0}}
"""The trainer values of each ``READING`` (``vpn_head.model.config.READINGS`` holds the model's): the paper's
schedule is the default; the authors' ``train_ST_gcnn_attention.py`` keeps lr 0.01 throughout (its
ReduceLROnPlateau is built but never passed to ``fit``). Their lack of model selection is not reproduced: every
reading's ``best.pt`` is chosen on the same split, so the readings compare on one footing."""


RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,199}")
"""A run name: one folder directly under RUNS_DIR (no ``/``, no leading dot or dash, at most 200 characters)."""


def check_run_name(name: str) -> str:
    """``name`` when it names one folder directly under RUNS_DIR; the one check every run name goes through
    (``RUN=``, ``--config`` replay, an experiment's generated names, ``make eval``/``make report``).

    Raises:
        ValueError: one line naming the bad name (``.``, ``..``, ``../x``, ``a/b``, a hidden or empty name).
    """
    if not isinstance(name, str) or not RUN_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"run name {name!r} is not one folder under RUNS_DIR: use letters, digits and ._+=,@- "
                         "(not starting with . or -, no /, at most 200 characters)")
    return name


def run_folder(runs_dir: str | Path, name: str) -> Path:
    """``<runs_dir>/<name>`` for a valid run name (``check_run_name``)."""
    return Path(runs_dir) / check_run_name(name)


def is_int(value: Any, minimum: int) -> bool:
    """An int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def type_matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the annotated type ``hint`` exactly as JSON and argparse give it: a bool is no int, a
    string is no bool or number (``"false"`` is not ``False``), an int is a float."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    return isinstance(value, origin or hint)


def check_types(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` against its annotation (``type_matches``), so that a
    value of the wrong type from any source (a ``CONFIG=`` file, a saved run, code) is refused, not coerced.

    Raises:
        ValueError: one line naming every field of the wrong type, its value and the type it needs.
    """
    hints = typing.get_type_hints(type(config))
    bad = [f"{f.name}={getattr(config, f.name)!r} (needs {_type_name(hints[f.name])})"
           for f in dataclasses.fields(config) if not type_matches(getattr(config, f.name), hints[f.name])]
    if bad:
        raise ValueError(f"{type(config).__name__} value(s) of the wrong type: {', '.join(bad)}")


def saved_type_problem(cls: type, values: Mapping[str, Any]) -> str:
    """Why the saved fields ``values`` of the config dataclass ``cls`` cannot be trusted, or '': each field it
    knows must have its annotated type (fields it does not know are left to the caller: old runs are readable)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    bad = [f"{k}={v!r}"[:80] for k, v in values.items() if k in known and k != "augment"
           and not type_matches(v, hints[k])]
    if "augment" in values and "augment" in known and not isinstance(values["augment"], Mapping):
        bad.append(f"augment={values['augment']!r}"[:80])
    return f"value(s) of the wrong type: {', '.join(bad)}" if bad else ""


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


def reject_unknown_fields(cls: type, values: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the keys of ``values`` that are not fields of the dataclass ``cls``."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}")


@dataclass(frozen=True)
class TrainerConfig:
    """The fields of a run both trainers have (``TrainConfig`` and ``FinetuneConfig`` add their own).

    Attributes:
        dataset: registry name (``ntu60``, ``ntu120``, ``smarthome``, ``nucla``).
        protocol: protocol of the dataset (``cs``, ``cv``, ``cs1``, ``cv2``, ``v3_12``, ...).
        epochs: epochs to train in total (paper: 30).
        batch_size: clips per optimizer step, over all GPUs (paper: 16).
        lr: initial learning rate (paper: 0.01).
        momentum: SGD momentum (0.9).
        weight_decay: SGD L2 weight decay. The paper gives none, so the default 0 trains exactly the stated
            objective (eq. 6, whose lambda2 term already regularises the attention); 5e-4 is a usual choice
            when the head over-fits a small dataset.
        lr_step: epochs between learning-rate decays (paper: 10).
        lr_gamma: learning-rate decay factor (paper: 0.1).
        eval_split: split scored after each epoch and used to pick ``best.pt``: ``auto`` (``val`` when the
            protocol has one, else ``val_carved``: training subjects held out), ``val``, ``val_carved`` or
            ``test`` (choosing on the test split is allowed for comparison with papers that did, and says so in
            ``metrics.json``).
        val_fraction: share of the training subjects carved out as ``val_carved`` (0.2).
        seed: seeds Python, NumPy, torch (plus the rank), the shuffling and the augmentation.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only) and no cuDNN autotuning.
        num_workers: DataLoader worker processes (per GPU).
        amp: mixed precision, bf16 where supported (float16 with loss scaling elsewhere); None: on for CUDA.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ... (under torchrun each process
            takes ``cuda:LOCAL_RANK``).
        cache: cache root (``cache/``), cache directory or ``cache.h5``.
        runs_dir: folder of run directories.
        run_name: run directory name; empty: the trainer's default name.
    """

    RESUME_FREE_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Fields a resumed run may change: they do not define the experiment (``epochs`` may grow)."""

    dataset: str
    protocol: str
    epochs: int = 30
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 10
    lr_gamma: float = 0.1
    eval_split: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 2
    amp: bool | None = None
    device: str = "auto"
    cache: str = "cache"
    runs_dir: str = "runs"
    run_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainerConfig:
        reject_unknown_fields(cls, values)
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment: all but ``RESUME_FREE_FIELDS``."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RESUME_FREE_FIELDS}


def check_fields(config: TrainerConfig, extra: dict[str, bool]) -> None:
    """Check the optimisation fields both trainers' configs have, plus ``extra`` (field -> ok).

    Raises:
        ValueError: naming every field of the wrong type (``check_types``), else every bad field and its value.
    """
    check_types(config)
    if config.run_name:
        check_run_name(config.run_name)
    checks = {
        "epochs": is_int(config.epochs, 1), "batch_size": is_int(config.batch_size, 1),
        "lr_step": is_int(config.lr_step, 1), "num_workers": is_int(config.num_workers, 0),
        "seed": is_int(config.seed, 0),
        "lr": is_number(config.lr) and config.lr > 0,
        "momentum": is_number(config.momentum) and 0 <= config.momentum < 1,
        "weight_decay": is_number(config.weight_decay) and config.weight_decay >= 0,
        "lr_gamma": is_number(config.lr_gamma) and 0 < config.lr_gamma <= 1,
        "eval_split": config.eval_split in EVAL_SPLITS,
        "val_fraction": is_number(config.val_fraction) and 0 < config.val_fraction < 1,
        **extra,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"bad {type(config).__name__} value(s): "
                         + ", ".join(f"{n}={getattr(config, n)!r}" for n in bad))


def default_run_name(dataset: str, protocol: str, variant: str) -> str:
    """The run directory name ``make train-head`` uses when RUN is not given."""
    return f"{dataset}_{protocol}_{variant}"


OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig(TrainerConfig):
    """Everything that defines a head-training run: the fields of ``TrainerConfig`` and these.

    Attributes:
        variant: ``i3d`` | ``attention`` | ``vpn`` (paper Table 1).
        model: further ``VPNConfig`` overrides (``pose_backbone``, ``coupler``, ``embedding_loss``, ...).
        pose_lr_scale: learning-rate multiplier of the pose branch (pose backbone and attention network). The
            paper uses one learning rate (1.0); on frozen features the pose branch's relative gradient is orders of
            magnitude below the classifier's (see ``grad_*`` in ``train_log.csv``), so it barely moves at 1.0.
        in_memory: load the splits into RAM first, when they fit.
        optimizer: ``sgd`` (the paper: momentum ``momentum``, L2 ``weight_decay``) or ``adamw`` (Adam with
            decoupled ``weight_decay``; ``momentum`` unused).

    ``run_name`` defaults to ``<dataset>_<protocol>_<variant>``; each DataLoader worker opens the HDF5 file itself.
    """

    RESUME_FREE_FIELDS: ClassVar[tuple[str, ...]] = (
        "epochs", "num_workers", "in_memory", "amp", "device", "cache", "runs_dir", "run_name",
    )

    variant: str = "vpn"
    model: dict[str, Any] = field(default_factory=dict)
    pose_lr_scale: float = 1.0
    in_memory: bool = False
    optimizer: str = "sgd"

    @property
    def run_dir(self) -> Path:
        return run_folder(self.runs_dir, self.run_name or default_run_name(self.dataset, self.protocol, self.variant))

    def vpn_config(self) -> VPNConfig:
        """The model config: dataset facts + ``variant`` + ``model`` overrides (validated)."""
        return VPNConfig.for_dataset(self.dataset, self.protocol, variant=self.variant, **self.model)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_types(self)
        get_dataset(self.dataset).protocol_classes(self.protocol)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if "variant" in self.model:
            raise ValueError("give the variant as TrainConfig.variant, not in model overrides")
        check_fields(self, {"pose_lr_scale": is_number(self.pose_lr_scale) and self.pose_lr_scale > 0,
                            "optimizer": self.optimizer in OPTIMIZERS})
        self.vpn_config()

    def identity(self) -> dict[str, Any]:
        """The training fields that define the experiment: all but ``RESUME_FREE_FIELDS``, and all but
        ``variant``/``model``, which the resolved ``VPNConfig`` covers (so ``--model embed_dim=256`` equals the
        default)."""
        return {k: v for k, v in super().identity().items() if k not in ("variant", "model")}


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
        augment: training augmentation (``vpn_head.data.augment``).
        variant: head variant for a new head (``i3d``, ``attention``, ``vpn``); empty: the init run's, or
            ``vpn`` without one. A run given with ``init`` must agree.
        model: further ``VPNConfig`` overrides for a new head (not allowed with ``init``).
        eval_clips: clips per video in the final evaluation (evenly spaced windows).
        eval_crop_size: short side of the resized person box in the final evaluation.
        manifest: manifest CSV; empty: ``manifests/<dataset>.csv``.
        data_root: folder the manifest's paths are relative to; empty: from the manifest's side file.
        init: head run directory to start the head from; empty: a new head (warns).
        i3d_weights: I3D state-dict file; empty: random init (warns loudly); a path that names no file is refused.
        pixels: where clips are decoded (``pipeline.crops.store.PIXELS_CHOICES``): ``auto`` reads the cache's
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
        return run_folder(self.runs_dir, self.run_name or f"{self.dataset}_{self.protocol}_finetune")

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
        check_types(self)
        get_dataset(self.dataset).protocol_classes(self.protocol)
        positive = ("per_gpu_batch", "clip_len", "crop_size", "eval_clips", "eval_crop_size")
        check_fields(self, {**{n: is_int(getattr(self, n), 1) for n in positive},
                            "variant": self.variant in ("", *VARIANTS), "pixels": self.pixels in PIXELS_CHOICES})
        if self.init and self.model:
            raise ValueError("model overrides apply to a new head only; the head of --init keeps its config")
        if self.i3d_weights and not Path(self.i3d_weights).is_file():
            raise ValueError(f"I3D_WEIGHTS {self.i3d_weights} does not exist (leave it empty for a random-init I3D)")
        check_types(self.augment)
        self.augment.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Inverse of ``to_dict`` (``augment`` may be a dict)."""
        values = dict(values)
        if isinstance(values.get("augment"), Mapping):
            reject_unknown_fields(AugmentConfig, values["augment"])
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
