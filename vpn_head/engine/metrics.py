"""Scores of a classifier over videos: top-1, mean per-class accuracy, the confusion matrix, max-pooling.

A video's class is the argmax of the max-pool over its clips (and spatial positions, when the cache holds
several rows per video) of the softmax scores (paper section 4). Two metrics: top-1 accuracy over videos, and
mean per-class accuracy (balanced accuracy: the mean over the classes present in ``y_true`` of their recall,
Smarthome's headline metric). Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from vpn_head.data.clips import video_groups


def top1_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions equal to the label."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float((y_true == y_pred).mean())


def mean_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy: mean over the classes present in ``y_true`` of the fraction predicted right.

    Classes absent from ``y_true`` do not count, even when predicted (as sklearn's
    ``balanced_accuracy_score`` and the Smarthome evaluation scripts).
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    accuracy, count = per_class_accuracy(y_true, y_pred, int(max(y_true.max(), y_pred.max())) + 1)
    return float(accuracy[count > 0].mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``m[true, pred]``, int64 (num_classes, num_classes)."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    if max(y_true.max(), y_pred.max()) >= num_classes or min(y_true.min(), y_pred.min()) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def max_pool_scores(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Max over the rows of each group (clips of a video): (N, K) scores, (N,) group ids 0..G-1 -> (G, K)."""
    scores, groups = np.asarray(scores), np.asarray(groups)
    if scores.ndim != 2 or groups.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (N, K) and groups (N,); got {scores.shape} and {groups.shape}")
    num_groups = int(groups.max()) + 1
    if groups.min() < 0 or len(np.unique(groups)) != num_groups:
        raise ValueError("groups must number the videos 0..G-1 with none empty")
    pooled = np.full((num_groups, scores.shape[1]), -np.inf, dtype=scores.dtype)  # (G, K)
    np.maximum.at(pooled, groups, scores)
    return pooled


def video_scores(probs: np.ndarray, labels: np.ndarray, sample_ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool clip scores into video scores (max over each video's clips).

    Returns:
        ``(video_probs (V, K), video_labels (V,), video_ids (V,))``.
    """
    groups, video_ids = video_groups(sample_ids)
    _, first_row = np.unique(groups, return_index=True)  # (V,) first row of each video
    return max_pool_scores(probs, groups), np.asarray(labels)[first_row], video_ids


def summarise(video_labels: np.ndarray, video_pred: np.ndarray) -> dict[str, float]:
    """Both metrics over videos."""
    return {"top1": top1_accuracy(video_labels, video_pred),
            "mean_class": mean_class_accuracy(video_labels, video_pred),
            "num_videos": int(len(video_labels))}


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-d and equal length; got {y_true.shape}, "
                         f"{y_pred.shape}")
    return y_true, y_pred


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
