"""The report's figures, drawn with Matplotlib on an Agg canvas: training curves, per-class accuracy bars, and the
spatial attention A_S over a person crop with the temporal attention A_T under it. Each writes one PNG with no
metadata, so the same inputs give the same bytes; what to draw is ``vpn_head.report.run_report``'s."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.utils.fileio import atomic_path


class ReportError(RuntimeError):
    """The run cannot be reported on (missing run directory or training log)."""


LOSS_COLUMNS: dict[str, str] = {
    "train_loss": "total", "train_classification": "classification", "train_embedding": "embedding",
    "train_attention": "attention regulariser",
}
"""train_log.csv loss column -> panel title (``vpn_head.train.head.LOG_COLUMNS``)."""


SCORE_COLUMNS: dict[str, str] = {
    "train_acc": "train clip accuracy", "eval_top1": "eval top-1", "eval_mean_class": "eval mean per-class",
}


DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (no pyplot: no global state, nothing to close)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG through a temporary file and ``os.replace``; no metadata, so the bytes are
    reproducible."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, metadata={"Software": None}, format="png")


def plot_training_curves(log_df: pd.DataFrame, path: Path, title: str) -> str:
    """Loss terms, accuracies and the learning rate per epoch, from a ``train_log.csv``.

    Args:
        log_df: the training log (``epoch`` column plus any of ``LOSS_COLUMNS``, ``SCORE_COLUMNS``, ``lr``).
        path: the PNG to write.
        title: the figure title.

    Returns:
        The figure's caption.

    Raises:
        ReportError: the log has no ``epoch`` column or no rows.
    """
    if "epoch" not in log_df.columns or log_df.empty:
        raise ReportError(f"training log for {title!r} has no epochs (columns {list(log_df.columns)})")
    epochs = log_df["epoch"].to_numpy()
    losses = [c for c in LOSS_COLUMNS if c in log_df.columns and _nonzero(log_df[c])]
    scores = [c for c in SCORE_COLUMNS if c in log_df.columns]
    top = losses or ["none"]
    fig = new_figure(max(3.2 * len(top), 7.0), 7.0)
    axes = fig.subplot_mosaic([top, ["scores"] * len(top)])
    for column in losses:
        ax = axes[column]
        ax.plot(epochs, log_df[column].to_numpy(), marker="o", markersize=3)
        ax.set_title(f"train loss: {LOSS_COLUMNS[column]}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if not losses:
        axes["none"].text(0.5, 0.5, "no loss columns in train_log.csv", ha="center", va="center")
        axes["none"].set_axis_off()
    ax = axes["scores"]
    split = log_df["eval_split"].iloc[0] if "eval_split" in log_df.columns else "eval"
    for column in scores:
        label = SCORE_COLUMNS[column].replace("eval", str(split))
        ax.plot(epochs, log_df[column].to_numpy(), marker="o", markersize=3, label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "lr" in log_df.columns:
        lr_ax = ax.twinx()
        line = lr_ax.step(epochs, log_df["lr"].to_numpy(), where="post", color="grey", linestyle="--",
                          label="learning rate")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate")
        handles, labels = handles + line, labels + ["learning rate"]
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)
    dropped = [LOSS_COLUMNS[c] for c in LOSS_COLUMNS if c in log_df.columns and c not in losses]
    caption = (f"training curves over {len(log_df)} epoch(s): train loss ("
               f"{', '.join(LOSS_COLUMNS[c] for c in losses) or 'none logged'})")
    caption += f", {' and '.join(dropped)} zero throughout and not drawn" if dropped else ""
    return caption + f"; {', '.join(SCORE_COLUMNS[c] for c in scores) or 'no accuracies'} on {split}; lr dashed"


def _nonzero(column: pd.Series) -> bool:
    """Whether a log column holds a finite non-zero value (a variant logs 0 for the loss terms it lacks)."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    return bool((np.isfinite(values) & (values != 0)).any())


def plot_per_class_accuracy(accuracy: np.ndarray, count: np.ndarray, class_names: tuple[str, ...], path: Path,
                            title: str) -> None:
    """Horizontal bars with their values, one per class that has videos, mean per-class as a dashed line.

    Args:
        accuracy: (K,) per-class accuracy (NaN where a class has no videos).
        count: (K,) videos per class.
        class_names: the K class names.
        path: the PNG to write.
        title: the figure title.
    """
    present = np.flatnonzero(count > 0)  # (P,) classes drawn
    fig = new_figure(8.0, 1.8 + 0.22 * len(present))
    ax = fig.add_subplot()
    positions = np.arange(len(present))
    ax.barh(positions, accuracy[present], color="tab:blue")
    for y, c in zip(positions, present):
        ax.text(min(accuracy[c], 0.88) + 0.01, y, f"{accuracy[c]:.2f}", va="center", fontsize=7)
    if len(present):
        mean = float(np.mean(accuracy[present]))
        ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean per-class {mean:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(positions, [f"{class_names[c]} ({count[c]})" for c in present], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    missing = len(class_names) - len(present)
    ax.set_xlabel("video accuracy (videos per class in brackets)"
                  + (f"; {missing} classes without videos not shown" if missing else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def upsample_attention(a_s: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an S x S attention grid to ``size x size`` pixels (cell centres aligned, as
    ``F.interpolate(align_corners=False)``): each cell covers ``size / S`` pixels of the crop."""
    a_s = np.asarray(a_s, dtype=np.float32)
    if a_s.ndim != 2 or a_s.shape[0] != a_s.shape[1]:
        raise ValueError(f"a_s must be a square 2-d grid, got shape {a_s.shape}")
    return cv2.resize(a_s, (size, size), interpolation=cv2.INTER_LINEAR)  # (size, size)


def plot_attention(a_s: np.ndarray, a_t: np.ndarray, crop: np.ndarray | None, frame_indices: np.ndarray,
                   title: str, correct: bool, path: Path) -> None:
    """A_S over the crop of the middle frame (or the grid alone when ``crop`` is None), A_T as bars below.

    Args:
        a_s: (S, S) spatial attention.
        a_t: (T,) temporal attention.
        crop: uint8 (size, size, 3) RGB person crop of the middle frame, or None.
        frame_indices: (F,) source frames of the clip; step t of A_T covers clip frames [t F/T, (t+1) F/T).
        title: figure title (sample, true and predicted class).
        correct: colours the title green (right prediction) or red.
        path: the PNG to write.
    """
    steps = len(a_t)
    fig = new_figure(4.8, 6.4)
    grid = fig.add_gridspec(2, 1, height_ratios=(4, 1.6))
    ax = fig.add_subplot(grid[0])
    if crop is not None:
        ax.imshow(crop)
        heat = ax.imshow(upsample_attention(a_s, crop.shape[0]), cmap="jet", alpha=0.45,
                         vmin=float(a_s.min()), vmax=float(a_s.max()))
        ax.set_xlabel("middle frame of the person crop, A_S upsampled")
    else:
        heat = ax.imshow(a_s, cmap="jet", interpolation="nearest")
        ax.set_xlabel("A_S on the 7x7 feature grid (video not available)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04, label="spatial attention")
    ax.set_title(title, fontsize=9, color="tab:green" if correct else "tab:red")
    bars = fig.add_subplot(grid[1])
    per_step = len(frame_indices) // steps
    colours = ["tab:orange" if t == (len(frame_indices) // 2) // per_step else "tab:blue" for t in range(steps)]
    bars.bar(np.arange(steps), a_t, color=colours)
    bars.axhline(1.0 / steps, color="grey", linestyle=":", linewidth=1)
    ticks = [f"{frame_indices[t * per_step]}-{frame_indices[(t + 1) * per_step - 1]}" for t in range(steps)]
    bars.set_xticks(np.arange(steps), ticks, fontsize=6, rotation=30)
    bars.set_xlabel("source frames of each step (orange: holds the middle frame; dotted: uniform)", fontsize=7)
    bars.set_ylabel("A_T", fontsize=8)
    bars.set_ylim(0, max(float(a_t.max()) * 1.15, 2.0 / steps))
    fig.tight_layout()
    save_png(fig, path)
