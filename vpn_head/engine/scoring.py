"""Running a model over a split and writing what an evaluation leaves behind.

``score_clips`` turns a loader of ``(inputs, poses, label, row)`` batches into softmax scores (the head on cached
features and the fine-tune model on pixels both fit); ``write_eval_reports`` writes the files ``make eval`` leaves
in ``<run>/eval_<split>/``: ``confusion.csv``, ``confusion.png``, ``predictions.csv`` and ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.utils.fileio import atomic_path, atomic_write_csv, atomic_write_json
from pipeline.utils.progress import show_progress
from vpn_head.engine.metrics import confusion_matrix
from vpn_head.runtime import autocast

MAX_TICK_LABELS = 40
"""The confusion-matrix figure names its classes on the axes up to this many classes."""


@torch.no_grad()
def score_clips(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = False,
                replace_poses: np.ndarray | None = None, record: dict[str, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax scores of every clip the loader yields, in loader order.

    Args:
        model: a ``VPN`` head (inputs: cached features) or a ``FinetuneVPN`` (inputs: pixel clips).
        loader: yields ``(features, poses, label, row)`` batches, in a fixed order.
        device: where to run.
        amp: autocast.
        replace_poses: (N, B, 3, J, t_p) poses used instead of the loader's, by position in loader order (the
            pose-shuffle diagnostic).
        record: when given, receives ``poses`` (N, B, 3, J, t_p) as fed to the model and, for pose variants,
            ``attention_spatial`` (N, S, S) and ``attention_temporal`` (N, T).

    Returns:
        ``(probs, labels, rows)``: (N, K) float32, (N,) int64 labels, (N,) int64 cache rows.
    """
    model.eval()
    uses_pose = model.config.variant != "i3d"
    probs, labels, rows, kept = [], [], [], {"poses": [], "attention_spatial": [], "attention_temporal": []}
    seen = 0
    for features, poses, label, row in show_progress(loader, "score", unit="batch"):
        if replace_poses is not None:
            poses = torch.from_numpy(replace_poses[seen:seen + len(label)])
        seen += len(label)
        features = features.to(device, non_blocking=True).float()  # (B, C, T, H, W) features, or (B, 3, T, S, S)
        with autocast(device, amp):
            out = model(features, poses.to(device, non_blocking=True) if uses_pose else None)
        probs.append(F.softmax(out.logits.float(), dim=1).cpu())
        labels.append(label)
        rows.append(row)
        if record is not None:
            kept["poses"].append(poses.cpu())
            if out.attention_spatial is not None:
                kept["attention_spatial"].append(out.attention_spatial.float().cpu())
                kept["attention_temporal"].append(out.attention_temporal.float().cpu())
    if record is not None:
        record.update({k: torch.cat(v).numpy() for k, v in kept.items() if v})
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(rows).numpy()


def write_confusion_png(matrix: np.ndarray, class_names: tuple[str, ...], path: Path, title: str) -> None:
    """Row-normalised confusion matrix as a heat map (class names on the axes up to ``MAX_TICK_LABELS``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    k = len(class_names)
    side = min(4 + 0.25 * k, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= MAX_TICK_LABELS:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_eval_reports(out: Path, metrics: dict[str, Any], video_ids: np.ndarray, video_labels: np.ndarray,
                       video_probs: np.ndarray, class_names: tuple[str, ...], probabilities: bool = False) -> None:
    """Write an evaluation's files: ``confusion.csv``/``.png``, ``predictions.csv`` (one row per video, every class
    probability too with ``probabilities``) and ``metrics.json`` (which must hold dataset, protocol, split, top1 and
    mean_class)."""
    out.mkdir(parents=True, exist_ok=True)
    video_pred = video_probs.argmax(axis=1)
    matrix = confusion_matrix(video_labels, video_pred, len(class_names))
    atomic_write_csv(out / "confusion.csv", ["true\\predicted", *class_names],
                     ([class_names[i], *matrix[i].tolist()] for i in range(len(class_names))))
    write_confusion_png(matrix, class_names, out / "confusion.png",
                        f"{metrics['dataset']} {metrics['protocol']} {metrics['split']}: top-1 {metrics['top1']:.3f}, "
                        f"mean-class {metrics['mean_class']:.3f}")
    header = ["sample_id", "label", "pred", "score", "label_name", "pred_name"]
    header += [f"p_{k}" for k in range(len(class_names))] if probabilities else []
    atomic_write_csv(out / "predictions.csv", header, (
        [video_ids[v], int(video_labels[v]), int(video_pred[v]), f"{video_probs[v, video_pred[v]]:.6f}",
         class_names[video_labels[v]], class_names[video_pred[v]],
         *([f"{p:.6f}" for p in video_probs[v]] if probabilities else [])]
        for v in range(len(video_ids))))
    atomic_write_json(out / "metrics.json", metrics)


