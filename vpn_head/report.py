"""Figures for a trained head run (``make report RUN=name``); fine-tune runs are refused (exit code 2).

``python -m vpn_head.report --runs-dir runs --run NAME [--cache C] [--manifest M] [--data-root D] [--samples 8]
[--split test] [--checkpoint best] [--tsne-clips 500]`` writes to ``runs/NAME/report/``:

* ``training_curves.png``: the train loss terms per epoch (one panel per term that is not identically zero),
  train clip accuracy and the per-epoch evaluation scores, with the learning rate on a secondary axis;
* ``per_class_accuracy.png``: per-class video accuracy on the split, from ``eval_<split>/predictions.csv``
  (``vpn_head.evaluate.evaluate_run`` runs first when that is missing or from another checkpoint);
* ``attention_<k>_<sample_id>.png`` (variants ``attention`` and ``vpn``): for ``--samples`` clips of the split,
  the spatial attention A_S (7 x 7) upsampled over the middle frame of the clip's person crop (re-decoded from
  the video with the cache's frame indices and box), and the temporal attention A_T as bars under it. When the
  video cannot be read the 7 x 7 map is drawn alone and the caption says why;
* ``tsne_embedding.png`` (variant ``vpn``): t-SNE of the split's f_e and P_e, coloured by class, circles for
  video and triangles for pose (``vpn_head.report_tsne``; up to ``--tsne-clips`` clips, chosen as the attention
  clips are). Variants without the spatial embedding get a note in ``index.md`` instead;
* ``index.md``: every figure with a one-line caption.

Clips are chosen deterministically (one per class in class order, then a second per class, ...), the model runs
in eval mode on the CPU, and the figures carry no timestamps, so the same run gives the same files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.cache import CacheError, open_cache
from pipeline.crop import to_uint8_crops
from pipeline.datasets import get_dataset
from pipeline.fileio import atomic_path, atomic_write_text
from pipeline.i3d_spec import CROP_SIZE
from pipeline.manifest import read_manifest, resolve_data_root
from pipeline.video import DEFAULT_BACKEND, DEFAULT_FALLBACK, DecodeError, backends_for, read_clip
from vpn_head.checkpoints import (
    CHECKPOINT_NAMES, FINETUNE, CheckpointError, checkpoint_path, load_checkpoint, model_from_checkpoint,
)
from vpn_head.data import SPLITS, CachedClips, resolve_cache
from vpn_head.evaluate import evaluate_run
from vpn_head.report_tsne import MIN_CLIPS, clip_embeddings, draw_tsne, embed_tsne

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_NAME = "index.md"
LOSS_COLUMNS: dict[str, str] = {
    "train_loss": "total", "train_classification": "classification", "train_embedding": "embedding",
    "train_attention": "attention regulariser",
}
"""train_log.csv loss column -> panel title (``vpn_head.train.LOG_COLUMNS``)."""
SCORE_COLUMNS: dict[str, str] = {
    "train_acc": "train clip accuracy", "eval_top1": "eval top-1", "eval_mean_class": "eval mean per-class",
}
ATTENTION_VARIANTS: tuple[str, ...] = ("attention", "vpn")
TSNE_NAME = "tsne_embedding.png"
TSNE_CLIPS = 500
"""Clips in the t-SNE figure by default (2 points each; t-SNE's cost grows with the square of the points)."""
DPI = 100


class ReportError(RuntimeError):
    """The run cannot be reported on (missing run directory or training log)."""


class UnsupportedRunError(ReportError):
    """The run is of a kind the report does not draw (an end-to-end fine-tune)."""


@dataclass(frozen=True)
class ReportFigure:
    """One file of the report and its one-line caption."""

    file: str
    caption: str


# ----------------------------------------------------------------------------------------------------------
# figure helpers


def _new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (no pyplot: no global state, nothing to close)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG through a temporary file and ``os.replace``; no metadata, so the bytes are
    reproducible."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, metadata={"Software": None}, format="png")


def _safe_name(text: str) -> str:
    """``text`` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "sample"


# ----------------------------------------------------------------------------------------------------------
# 1. training curves


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
    fig = _new_figure(max(3.2 * len(top), 7.0), 7.0)
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
    _save(fig, path)
    dropped = [LOSS_COLUMNS[c] for c in LOSS_COLUMNS if c in log_df.columns and c not in losses]
    caption = (f"training curves over {len(log_df)} epoch(s): train loss ("
               f"{', '.join(LOSS_COLUMNS[c] for c in losses) or 'none logged'})")
    caption += f", {' and '.join(dropped)} zero throughout and not drawn" if dropped else ""
    return caption + f"; {', '.join(SCORE_COLUMNS[c] for c in scores) or 'no accuracies'} on {split}; lr dashed"


def _nonzero(column: pd.Series) -> bool:
    """Whether a log column holds a finite non-zero value (a variant logs 0 for the loss terms it lacks)."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    return bool((np.isfinite(values) & (values != 0)).any())


# ----------------------------------------------------------------------------------------------------------
# 2. per-class accuracy


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each class's videos predicted right.

    Args:
        labels: (V,) true protocol labels.
        preds: (V,) predicted labels.
        num_classes: K.

    Returns:
        ``(accuracy, count)``: (K,) float, NaN for a class without videos, and (K,) int64 videos per class.
    """
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels and preds must be equal-length 1-d arrays, got {labels.shape} and {preds.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    count = np.bincount(labels, minlength=num_classes)  # (K,)
    correct = np.bincount(labels[labels == preds], minlength=num_classes)  # (K,)
    accuracy = np.divide(correct, count, out=np.full(num_classes, np.nan), where=count > 0)
    return accuracy, count


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
    fig = _new_figure(8.0, 1.8 + 0.22 * len(present))
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
    _save(fig, path)


def _fresh_eval(eval_dir: Path, checkpoint: str, epoch: int, cache: Path) -> bool:
    """Whether ``eval_dir`` holds predictions of this checkpoint (name and epoch) on this cache."""
    try:
        metrics = json.loads((eval_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return ((eval_dir / "predictions.csv").is_file() and metrics.get("checkpoint") == f"{checkpoint}.pt"
            and metrics.get("epoch") == epoch and metrics.get("cache") == str(cache))


# ----------------------------------------------------------------------------------------------------------
# 3. attention


def select_clips(labels: np.ndarray, n: int) -> np.ndarray:
    """Deterministic choice of ``n`` clips: the first clip of each class in class order, then the second, ...

    Args:
        labels: (N,) labels of the split's clips, in split order.
        n: clips wanted (fewer come back when the split is smaller).

    Returns:
        (min(n, N),) indices into ``labels``.
    """
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)  # (N,) position of each clip among its class's clips
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    return np.lexsort((np.arange(len(labels)), labels, rank))[:n]


def upsample_attention(a_s: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an S x S attention grid to ``size x size`` pixels (cell centres aligned, as
    ``F.interpolate(align_corners=False)``): each cell covers ``size / S`` pixels of the crop."""
    a_s = np.asarray(a_s, dtype=np.float32)
    if a_s.ndim != 2 or a_s.shape[0] != a_s.shape[1]:
        raise ValueError(f"a_s must be a square 2-d grid, got shape {a_s.shape}")
    return cv2.resize(a_s, (size, size), interpolation=cv2.INTER_LINEAR)  # (size, size)


@dataclass(frozen=True)
class _VideoSource:
    """Where the report finds the videos: the manifest's video paths under ``data_root``, or why it cannot."""

    paths: dict[str, Path]
    problem: str
    backend: str
    fallback: tuple[str, ...]
    crop_size: int


def _video_source(manifest: Path, data_root: str | None, cache_config: dict[str, Any]) -> _VideoSource:
    backend = cache_config.get("backend", DEFAULT_BACKEND)
    fallback = tuple(cache_config.get("fallback", DEFAULT_FALLBACK))
    crop_size = int(cache_config.get("crop_size", CROP_SIZE))
    try:
        root = resolve_data_root(manifest, data_root)
        df = read_manifest(manifest)
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as error:
        return _VideoSource({}, f"no videos ({error})", backend, fallback, crop_size)
    paths = {sid: root / rel for sid, rel in zip(df["sample_id"], df["video_path"])}
    return _VideoSource(paths, "", backend, fallback, crop_size)


def _middle_crop(source: _VideoSource, sample_id: str, frame_indices: np.ndarray, box: np.ndarray
                 ) -> tuple[np.ndarray | None, str]:
    """The person crop of the clip's middle frame, uint8 (S, S, 3), or None and why not."""
    if source.problem:
        return None, source.problem
    path = source.paths.get(sample_id)
    if path is None:
        return None, f"{sample_id} is not in the manifest"
    if not path.exists():
        return None, f"video not found: {path}"
    backends = backends_for(path, source.backend, source.fallback)
    middle = np.asarray(frame_indices, dtype=np.int64)[[len(frame_indices) // 2]]  # (1,)
    try:
        frames, _ = read_clip(path, middle, backends)  # (1, H, W, 3)
    except (DecodeError, IndexError) as error:
        return None, f"video unreadable: {error}"
    return to_uint8_crops(frames, box, source.crop_size)[0], ""  # (S, S, 3)


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
    fig = _new_figure(4.8, 6.4)
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
    _save(fig, path)


@torch.no_grad()
def attention_figures(model: torch.nn.Module, clips: CachedClips, cache_path: Path, manifest: Path,
                      data_root: str | None, samples: int, out_dir: Path) -> list[ReportFigure]:
    """One attention figure per chosen clip of ``clips``.

    Args:
        model: a VPN of variant ``attention`` or ``vpn`` (run in eval mode on the CPU).
        clips: the split to draw from.
        cache_path: the cache the clips come from (for frame indices, boxes and the decoding config).
        manifest: the manifest whose video paths (relative to the data root) point at the clips' videos.
        data_root: folder the manifest's paths are relative to; None = the manifest's side file.
        samples: clips to draw.
        out_dir: where the PNGs go.

    Returns:
        The figures written.
    """
    chosen = select_clips(clips.labels, samples)
    if len(chosen) == 0:
        return []
    items = [clips[int(i)] for i in chosen]
    features = torch.stack([item[0] for item in items])  # (n, C, T, H, W)
    poses = torch.stack([item[1] for item in items])  # (n, 2, 3, J, t_p)
    model.eval()
    out = model(features, poses)
    probs = torch.softmax(out.logits, dim=1).numpy()  # (n, K)
    a_s, a_t = out.attention_spatial.numpy(), out.attention_temporal.numpy()  # (n, S, S), (n, T)
    with open_cache(cache_path) as reader:
        rows = clips.rows[chosen]
        frame_indices, boxes = reader.frame_indices[rows], reader.boxes[rows]  # (n, F), (n, 4)
        clip_index = reader.clip_index[rows]
        source = _video_source(manifest, data_root, reader.attrs["config_json"])
    figures = []
    for k, i in enumerate(chosen):
        sample_id = str(clips.sample_ids[i])
        true, pred = int(clips.labels[i]), int(probs[k].argmax())
        crop, problem = _middle_crop(source, sample_id, frame_indices[k], boxes[k])
        name = f"attention_{k:02d}_{_safe_name(sample_id)}.png"
        title = (f"{sample_id} clip {clip_index[k]}\ntrue: {clips.class_names[true]}\n"
                 f"predicted: {clips.class_names[pred]} (p={probs[k, pred]:.2f})")
        plot_attention(a_s[k], a_t[k], crop, frame_indices[k], title, true == pred, out_dir / name)
        where = ("A_S over the middle frame's person crop" if crop is not None
                 else f"A_S heatmap alone, no frame ({problem})")
        figures.append(ReportFigure(name, f"{sample_id} clip {clip_index[k]}: {where}; A_T bars; true "
                                          f"{clips.class_names[true]}, predicted {clips.class_names[pred]}"))
        if problem:
            log.warning("%s: drawing the attention without a frame: %s", sample_id, problem)
    return figures


# ----------------------------------------------------------------------------------------------------------
# the report


def make_report(run_dir: str | os.PathLike, split: str = "test", samples: int = 8, checkpoint: str = "best",
                cache: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None,
                data_root: str | os.PathLike | None = None, tsne_clips: int = TSNE_CLIPS) -> list[ReportFigure]:
    """Write the figures of a head run and their ``index.md`` to ``<run_dir>/report/``.

    Args:
        run_dir: ``runs/<name>`` (from ``vpn_head.train``).
        split: split for the per-class accuracy and the attention clips.
        samples: attention figures to draw (variants ``attention``/``vpn``).
        checkpoint: ``best`` or ``last``.
        cache: cache path; default the one the run was trained on.
        manifest: manifest CSV for the video paths; default ``manifests/<dataset>.csv``.
        data_root: folder the manifest's paths are relative to; default the manifest's side file.
        tsne_clips: clips of the split in the t-SNE figure of f_e and P_e (variant ``vpn``; 0: no figure).

    Returns:
        The figures written, in index order.

    Raises:
        ReportError: no such run, or it has no training log.
        CheckpointError: missing or bad checkpoint.
        CacheError: missing cache or empty split.
        ValueError: bad arguments.
    """
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ckpt_path = checkpoint_path(run_dir, checkpoint)
    for name, value in (("samples", samples), ("tsne_clips", tsne_clips)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run (train it first with `make train-head`)")
    log_path = run_dir / "train_log.csv"
    if not log_path.is_file():
        raise ReportError(f"{run_dir} has no train_log.csv: no epoch of it has finished")
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["kind"] == FINETUNE:
        raise UnsupportedRunError(f"{run_dir.name} is an end-to-end fine-tune run: its attention comes from pixels "
                                  f"through its fine-tuned I3D, not from the cached features the report draws "
                                  f"from; report its head run instead")
    model = model_from_checkpoint(ckpt, ckpt_path)
    train_config = ckpt["train_config"]
    dataset, protocol, variant = train_config["dataset"], train_config["protocol"], model.config.variant
    cache_path = resolve_cache(cache if cache is not None else train_config["cache"], dataset)
    out_dir = run_dir / REPORT_DIR
    out_dir.mkdir(exist_ok=True)
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    heading = f"{run_dir.name}: {dataset} {protocol}, variant {variant}"
    figures = [ReportFigure("training_curves.png", plot_training_curves(
        pd.read_csv(log_path), out_dir / "training_curves.png", heading))]

    eval_dir = run_dir / f"eval_{split}"
    if not _fresh_eval(eval_dir, checkpoint, int(ckpt["epoch"]), cache_path):
        log.info("scoring %s on %s first (no up-to-date %s)", ckpt_path, split, eval_dir)
        evaluate_run(run_dir, split, checkpoint, cache_path, device="cpu")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    predictions = pd.read_csv(eval_dir / "predictions.csv", keep_default_na=False)
    class_names = get_dataset(dataset).protocol_classes(protocol)
    accuracy, count = per_class_accuracy(predictions["label"].to_numpy(), predictions["pred"].to_numpy(),
                                         len(class_names))
    summary = (f"{split}: top-1 {metrics['top1']:.3f}, mean per-class {metrics['mean_class']:.3f} over "
               f"{metrics['num_videos']} videos, {ckpt_path.name} (epoch {ckpt['epoch']})")
    plot_per_class_accuracy(accuracy, count, class_names, out_dir / "per_class_accuracy.png",
                            f"{heading}\n{summary}")
    figures.append(ReportFigure("per_class_accuracy.png", f"per-class video accuracy on {split} "
                                f"({int((count > 0).sum())} of {len(class_names)} classes have videos and are "
                                f"drawn), mean per-class dashed"))

    notes = [f"Confusion matrix: [../eval_{split}/confusion.png](../eval_{split}/confusion.png)."]
    clips = CachedClips(cache_path, protocol, split, dataset=dataset,
                        crop_joints=model.config.spatial_attention == "joints")
    if variant in ATTENTION_VARIANTS:
        manifest_path = Path(manifest) if manifest is not None else Path("manifests") / f"{dataset}.csv"
        figures += attention_figures(model, clips, cache_path, manifest_path,
                                     str(data_root) if data_root is not None else None, samples, out_dir)
    else:
        notes.append(f"Variant {variant!r} has no pose attention: no attention figures.")
    if model.embedding is None:
        notes.append(f"Variant {variant!r} has no spatial embedding (f_e, P_e): no t-SNE figure.")
        log.info("%s: variant %s has no spatial embedding: no t-SNE figure", run_dir.name, variant)
    elif tsne_clips:
        figure = _tsne_figure(model, clips, tsne_clips, out_dir / TSNE_NAME, heading, split)
        if isinstance(figure, ReportFigure):
            figures.append(figure)
        else:
            notes.append(figure)
    _write_index(out_dir / INDEX_NAME, f"Report: {heading}", summary, figures, notes)
    log.info("wrote %d figures to %s", len(figures), out_dir)
    return figures


def _tsne_figure(model: torch.nn.Module, clips: CachedClips, n: int, path: Path, heading: str, split: str
                 ) -> ReportFigure | str:
    """The t-SNE figure of up to ``n`` clips of ``clips``, or the note saying why there is none."""
    chosen = select_clips(clips.labels, n)
    if len(chosen) < MIN_CLIPS:
        log.warning("%s has %d clip(s): no t-SNE figure (it needs %d)", split, len(chosen), MIN_CLIPS)
        return f"The {split} split has {len(chosen)} clip(s): too few for the t-SNE figure (at least {MIN_CLIPS})."
    f_e, p_e = clip_embeddings(model, clips, chosen)
    emb = embed_tsne(f_e, p_e, clips.labels[chosen])
    fig = _new_figure(9.0, 7.0)
    caption = draw_tsne(fig, emb, clips.class_names, f"{heading}: spatial embeddings", split)
    _save(fig, path)
    return ReportFigure(path.name, caption)


def _write_index(path: Path, title: str, summary: str, figures: list[ReportFigure], notes: list[str]) -> None:
    lines = [f"# {title}", "", f"{summary[0].upper()}{summary[1:]}.", ""]
    lines += [f"- [{fig.file}]({fig.file}): {' '.join(fig.caption.split())}" for fig in figures]
    lines += ["", *notes]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--run", required=True, help="run name (a folder of --runs-dir)")
    parser.add_argument("--cache", help="cache path (default: the one the run was trained on)")
    parser.add_argument("--manifest", help="manifest CSV with the video paths (default: manifests/<dataset>.csv)")
    parser.add_argument("--data-root", help="folder the manifest's paths are relative to (default: from the "
                                            "manifest's side file)")
    parser.add_argument("--samples", type=int, default=8, help="clips with attention figures")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINT_NAMES)
    parser.add_argument("--tsne-clips", type=int, default=TSNE_CLIPS,
                        help="clips in the t-SNE figure of f_e and P_e (variant vpn; 0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.samples < 0 or args.tsne_clips < 0:
        parser.error(f"--samples and --tsne-clips must be >= 0, got {args.samples} and {args.tsne_clips}")
    run_dir = Path(args.runs_dir) / args.run
    try:
        figures = make_report(run_dir, args.split, args.samples, args.checkpoint, args.cache, args.manifest,
                              args.data_root, args.tsne_clips)
    except (ReportError, CacheError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UnsupportedRunError) else 1
    print(f"{run_dir / REPORT_DIR / INDEX_NAME}: {len(figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
