"""What the head trainer's and the fine-tune's configs share: the eval-split choices and the field checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

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


def check_fields(config: Any, extra: dict[str, bool]) -> None:
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
