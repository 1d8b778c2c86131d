"""What the head trainer's and the fine-tune's configs share: their common fields, checks and (de)serialisation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from vpn_head.splits import CARVED_VAL

EVAL_SPLITS: tuple[str, ...] = ("auto", "val", CARVED_VAL, "test")
"""Splits that may pick ``best.pt``: ``auto`` is the protocol's ``val``, else ``val_carved``."""


def is_int(value: Any, minimum: int) -> bool:
    """An int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        ValueError: naming every bad field and its value.
    """
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
