"""TensorBoard scalars of a run, ``runs/<name>/tensorboard/``, when the ``tensorboard`` package is installed.

The event log (``vpn_head.engine.events``) mirrors every epoch record here: the losses under ``loss/``, ``lr``,
the training accuracy and the eval split's scores under ``<eval split>/`` (``val_carved/top1`` ...), the relative
gradients and the timings. ``make eval`` adds its metrics under ``eval_<split>/`` (top-1, mean per-class, the
pose-shuffle drop and the attention statistics of ``vpn_head.eval.diagnostics``) at the checkpoint's epoch.
``make tensorboard RUNS_DIR=…`` shows every run under a folder. Without the package nothing is written and
nothing fails: ``events.jsonl`` and ``train_log.csv`` hold the same numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BOARD_DIR = "tensorboard"
"""The run sub-folder the TensorBoard event files go to."""
EPOCH_TAGS: dict[str, str] = {
    "train_loss": "loss/total", "train_classification": "loss/classification", "train_embedding": "loss/embedding",
    "train_attention": "loss/attention", "train_acc": "train/clip_accuracy", "lr": "lr",
    "epoch_time_s": "time/epoch_s", "train_samples_per_s": "time/train_samples_per_s",
}
"""``train_log.csv`` column -> TensorBoard tag; ``eval_*`` go under the eval split, ``grad_*`` under ``grad/``."""
_warned = False


def _writer(folder: Path) -> Any | None:
    """A ``SummaryWriter`` on ``folder``, or None (once logged) when tensorboard is not installed."""
    global _warned
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package
        if not _warned:
            log.info("tensorboard is not installed: no TensorBoard scalars (events.jsonl has the same numbers)")
            _warned = True
        return None
    return SummaryWriter(log_dir=str(folder))


def flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) mapping as ``{"a/b": x}``; booleans, strings and lists are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_scalars(value, tag))
        elif isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[tag] = float(value)
    return out


class ScalarBoard:
    """TensorBoard scalars of one run (a no-op without the package).

    Args:
        run_dir: the run folder; the event files go to ``<run_dir>/tensorboard/``.
    """

    def __init__(self, run_dir: str | Path):
        self.folder = Path(run_dir) / BOARD_DIR
        self.writer = _writer(self.folder)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def add(self, scalars: Mapping[str, float], step: int) -> None:
        """Write ``{tag: value}`` at ``step`` and flush."""
        if self.writer is None:
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def epoch(self, row: Mapping[str, Any]) -> None:
        """One ``train_log.csv`` row (see ``EPOCH_TAGS``) at its epoch."""
        split = str(row.get("eval_split") or "eval")
        scalars = {}
        for column, value in flat_scalars(row).items():
            if column == "epoch":
                continue
            if column in EPOCH_TAGS:
                scalars[EPOCH_TAGS[column]] = value
            elif column.startswith("eval_"):
                scalars[f"{split}/{column.removeprefix('eval_')}"] = value
            elif column.startswith("grad_"):
                scalars[f"grad/{column.removeprefix('grad_')}"] = value
            else:
                scalars[f"other/{column}"] = value
        self.add(scalars, int(row["epoch"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_eval(run_dir: str | Path, metrics: Mapping[str, Any], step: int) -> bool:
    """``make eval``'s numbers (top-1, mean-class, pose shuffle, attention statistics) under ``eval_<split>/`` at
    the checkpoint's epoch; returns whether anything was written."""
    board = ScalarBoard(run_dir)
    if not board.active:
        return False
    keep = {k: v for k, v in metrics.items() if k not in ("epoch", "num_clips", "num_videos")}
    suffix = "_shuffled_poses" if metrics.get("poses_shuffled") else ""
    board.add(flat_scalars(keep, f"eval_{metrics.get('split', 'test')}{suffix}"), step)
    board.close()
    return True
