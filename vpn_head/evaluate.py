"""Scoring a trained VPN head: metrics, checkpoint reading, and the ``make eval`` backend.

A video's class is the argmax of the max-pool over its clips (and spatial positions, when the cache holds
several rows per video) of the softmax scores (paper section 4). Two metrics: top-1 accuracy over videos, and
mean per-class accuracy (balanced accuracy: the mean over the classes present in ``y_true`` of their recall,
Smarthome's headline metric).

``python -m vpn_head.evaluate --dataset smarthome --protocol cs`` scores ``runs/smarthome_cs_vpn/best.pt`` on
the test split and writes ``confusion.csv``, ``confusion.png``, ``predictions.csv`` and ``metrics.json`` to
``runs/smarthome_cs_vpn/eval_test/``. This module reads runs; ``train.py`` writes them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.cache import CacheError
from vpn_head.config import VPNConfig
from vpn_head import diagnostics as diag
from vpn_head.data import CachedClips, resolve_cache, video_groups
from vpn_head.model import VPN

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vpn_head.checkpoint/1"
CHECKPOINT_KEYS: tuple[str, ...] = ("format", "epoch", "model", "train_config", "vpn_config")
CHECKPOINT_NAMES: tuple[str, ...] = ("best", "last")
MAX_TICK_LABELS = 40
"""The confusion-matrix figure names its classes on the axes up to this many classes."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model or the requested run."""


# ----------------------------------------------------------------------------------------------------------
# metrics (pure)


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
    classes = np.unique(y_true)
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


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


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-d and equal length; got {y_true.shape}, "
                         f"{y_pred.shape}")
    return y_true, y_pred


# ----------------------------------------------------------------------------------------------------------
# scoring


@torch.no_grad()
def score_clips(model: VPN, loader: Iterable, device: torch.device, amp: bool = False,
                replace_poses: np.ndarray | None = None, record: dict[str, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax scores of every clip the loader yields, in loader order.

    Args:
        model: the head.
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
    for features, poses, label, row in tqdm(loader, desc="score", unit="batch", leave=False, dynamic_ncols=True):
        if replace_poses is not None:
            poses = torch.from_numpy(replace_poses[seen:seen + len(label)])
        seen += len(label)
        features = features.to(device, non_blocking=True).float()  # (B, C, T, H, W) float16 -> float32
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


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                sampler: torch.utils.data.Sampler | None = None, seed: int = 0) -> DataLoader:
    """The DataLoader used for training and scoring (sequential unless a sampler is given).

    A private generator seeds the workers, so creating a loader never draws from the global torch RNG.
    """
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device supports it (no loss scaling needed), else float16."""
    return torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, amp: bool) -> torch.autocast | nullcontext:
    """Mixed-precision context for the forward pass (a no-op when ``amp`` is False)."""
    return torch.autocast(device.type, dtype=amp_dtype(device)) if amp else nullcontext()


# ----------------------------------------------------------------------------------------------------------
# runs and checkpoints


def default_run_name(dataset: str, protocol: str, variant: str) -> str:
    """The run directory name ``make train-head`` uses when RUN is not given."""
    return f"{dataset}_{protocol}_{variant}"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``vpn_head.train``, on the CPU.

    Raises:
        CheckpointError: the file is missing, not a torch file, or not one of our checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:200]}); delete it to start "
                              f"over") from error
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it is damaged or from another program")
    return ckpt


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``, with an error naming the checkpoint when the shapes or keys differ."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{path}: its weights do not fit the model ({detail[:300]})") from error


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> VPN:
    """Rebuild the model a checkpoint was saved from and load its weights."""
    try:
        config = VPNConfig.from_dict(ckpt["vpn_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad model config ({error})") from error
    model = VPN(config)
    load_weights(model, ckpt["model"], path)
    return model


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


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


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", checkpoint: str = "best",
                 cache: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                 batch_size: int = 32, num_workers: int = 0, device: str = "auto",
                 probabilities: bool = False, shuffle_poses: bool = False,
                 manifest: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None
                 ) -> dict[str, Any]:
    """Score a run's checkpoint on a split and write the evaluation files.

    Args:
        run_dir: ``runs/<name>``.
        split: ``train``, ``val`` or ``test``.
        checkpoint: ``best`` or ``last``.
        cache: cache path; default: the one the run was trained on.
        out_dir: where to write; default ``<run_dir>/eval_<split>``.
        batch_size: clips per forward pass.
        num_workers: DataLoader workers.
        device: ``auto``, ``cpu``, ``cuda``, ...
        probabilities: add every class probability to ``predictions.csv``.
        shuffle_poses: report the scores with every video's poses taken from another video (the predictions and
            headline numbers then are the shuffled ones; ``metrics.json`` says so).
        manifest: for pose variants, the manifest whose skeletons locate the key joint in each crop (where A_S
            should peak); default ``manifests/<dataset>.csv`` when it exists.
        data_root: where the manifest's paths start; default the manifest's side file.

    For pose variants ``metrics.json`` also holds the diagnostics of ``vpn_head.diagnostics``: accuracy with the
    poses shuffled across videos, A_S spread across videos, A_T entropy, and where A_S peaks.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        CheckpointError: missing or bad checkpoint.
        CacheError: missing cache or empty split.
    """
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINT_NAMES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_NAMES}, got {checkpoint!r}")
    ckpt_path = run_dir / f"{checkpoint}.pt"
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run (train it first with `make train-head`)")
    ckpt = load_checkpoint(ckpt_path)
    if "i3d" in ckpt:  # an end-to-end fine-tune: score it from pixels, the paper's way, not on cached features
        from vpn_head.finetune import evaluate_finetuned

        return evaluate_finetuned(run_dir, split=split, checkpoint=checkpoint, out_dir=out_dir)
    model = model_from_checkpoint(ckpt, ckpt_path)
    train_config = ckpt["train_config"]
    dataset, protocol = train_config["dataset"], train_config["protocol"]
    cache_path = resolve_cache(cache if cache is not None else train_config["cache"], dataset)
    uses_pose = model.config.variant != "i3d"
    # pose variants are scored twice (own and shuffled poses): hold the split in RAM when it fits, read it once
    clips = CachedClips(cache_path, protocol, split, in_memory=uses_pose, dataset=dataset,
                        feature_dtype=torch.float16)
    torch_device = resolve_device(device)
    model.to(torch_device)
    amp = torch_device.type == "cuda" and train_config.get("amp") is not False
    record: dict[str, np.ndarray] = {}
    probs, labels, rows = score_clips(model, make_loader(clips, batch_size, num_workers, torch_device),
                                      torch_device, amp, record=record if uses_pose else None)
    sample_ids = clips.sample_ids_of(rows)
    diagnostics: dict[str, Any] = {}
    if uses_pose:
        source = diag.shuffle_poses(sample_ids, seed=0)
        shuffled_probs, _, _ = score_clips(model, make_loader(clips, batch_size, num_workers, torch_device),
                                           torch_device, amp, replace_poses=record["poses"][source])
        manifest_path = Path(manifest) if manifest else Path("manifests") / f"{dataset}.csv"
        cells, note = diag.clip_joint_cells(cache_path, rows, sample_ids, record["poses"], clips.spec,
                                            manifest_path, Path(data_root) if data_root else None,
                                            model.config.feature_size)
        own_video, video_labels, _ = video_scores(probs, labels, sample_ids)
        shuffled_video, _, _ = video_scores(shuffled_probs, labels, sample_ids)
        diagnostics = diag.pose_diagnostics(
            summarise(video_labels, own_video.argmax(axis=1)), summarise(video_labels, shuffled_video.argmax(axis=1)),
            float((own_video.argmax(axis=1) != shuffled_video.argmax(axis=1)).mean()), record, cells, note)
        if shuffle_poses:
            probs = shuffled_probs
    elif shuffle_poses:
        diagnostics = {"pose_shuffle": "variant i3d does not read poses: shuffling them changes nothing"}
    video_probs, video_labels, video_ids = video_scores(probs, labels, sample_ids)
    video_pred = video_probs.argmax(axis=1)
    metrics: dict[str, Any] = {
        "run": str(run_dir), "checkpoint": ckpt_path.name, "epoch": int(ckpt["epoch"]), "cache": str(cache_path),
        "dataset": dataset, "protocol": protocol, "variant": model.config.variant, "split": split,
        "headline_metric": clips.spec.metric, **summarise(video_labels, video_pred),
        "clip_top1": top1_accuracy(labels, probs.argmax(axis=1)), "num_clips": int(len(rows)),
        "checkpoint_selected_on": _selected_on(run_dir, checkpoint), "poses_shuffled": bool(shuffle_poses),
        **diagnostics,
    }
    default_out = run_dir / (f"eval_{split}_shuffled_poses" if shuffle_poses else f"eval_{split}")
    out = Path(out_dir) if out_dir is not None else default_out
    write_eval_reports(out, metrics, video_ids, video_labels, video_probs, clips.class_names, probabilities)
    log.info("%s %s: top-1 %.4f, mean-class %.4f over %d videos -> %s", run_dir.name, split,
             metrics["top1"], metrics["mean_class"], metrics["num_videos"], out)
    return metrics


def _selected_on(run_dir: Path, checkpoint: str) -> str:
    """Which split chose ``checkpoint``: the run's ``checkpoint_selected_on`` (older runs: ``eval_split``) for
    ``best``; ``last`` is chosen by nobody."""
    if checkpoint == "last":
        return "none (last epoch)"
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown"
    return str(summary.get("checkpoint_selected_on", summary.get("eval_split", "unknown")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", help="run directory (default: <runs-dir>/<run>)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--run", default="", help="run name (default: <dataset>_<protocol>_<variant>)")
    parser.add_argument("--dataset", help="dataset, to derive the default run name")
    parser.add_argument("--protocol", help="protocol, to derive the default run name")
    parser.add_argument("--variant", default="vpn", help="variant, to derive the default run name")
    parser.add_argument("--split", default="test", choices=("train", "val", "val_carved", "test"))
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINT_NAMES)
    parser.add_argument("--cache", help="cache path (default: the one the run was trained on)")
    parser.add_argument("--out", help="output directory (default: <run-dir>/eval_<split>)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--probabilities", action="store_true", help="write every class probability")
    parser.add_argument("--shuffle-poses", action="store_true",
                        help="score with every video's poses taken from another video")
    parser.add_argument("--manifest", help="manifest for the key-joint positions (default manifests/<dataset>.csv)")
    parser.add_argument("--data-root", help="where the manifest's paths start (default: its side file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.run_dir:
        run_dir = Path(args.run_dir)
    elif args.run:
        run_dir = Path(args.runs_dir) / args.run
    elif args.dataset and args.protocol:
        run_dir = Path(args.runs_dir) / default_run_name(args.dataset, args.protocol, args.variant)
    else:
        parser.error("give --run-dir, --run, or --dataset and --protocol")
    try:
        metrics = evaluate_run(run_dir, args.split, args.checkpoint, args.cache, args.out, args.batch_size,
                               args.num_workers, args.device, args.probabilities, args.shuffle_poses,
                               args.manifest, args.data_root)
    except (CacheError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    summary = {k: metrics[k] for k in ("split", "checkpoint_selected_on", "top1", "mean_class", "num_videos")}
    if isinstance(metrics.get("pose_shuffle"), dict):
        summary["shuffled_poses_top1"] = metrics["pose_shuffle"]["top1"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
