"""Scoring a fine-tune run: the quick per-epoch score and the paper's evaluation from pixels.

The quick score (``score_split``, after every epoch) runs each cached clip of the eval split at the training crop,
without augmentation. The paper's evaluation (``evaluate_finetuned``: at the end of training, and ``make eval`` on
a fine-tune run) scores ``eval_clips`` evenly spaced clips per video, the whole person box resized to short side
``eval_crop_size`` (256 gives an 8 x 8 Mixed_5c map), the head applied to every ``feature_size`` x
``feature_size`` window of the map (its training grid, where the pose attention was learned), and the softmax
scores max-pooled over clips and windows. Under torchrun every rank scores a share and rank 0 gathers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from pipeline.utils.progress import show_progress
from vpn_head.data.clips import resolve_cache
from vpn_head.data.pixels import PixelClips, PixelVideos, sample_paths
from vpn_head.engine.checkpoints import FINETUNE, checkpoint_path, load_checkpoint, model_from_checkpoint
from vpn_head.engine.config import FinetuneConfig
from vpn_head.engine.metrics import summarise, video_scores
from vpn_head.engine.scoring import score_clips, write_eval_reports
from vpn_head.model.finetune_vpn import FinetuneVPN
from vpn_head.runtime import DistContext, autocast, gather, make_loader, resolve_device

log = logging.getLogger(__name__)
PREFETCH = 4
"""Batches each DataLoader worker decodes ahead."""


def _rank_share(dataset: Dataset, ctx: DistContext) -> tuple[Subset, list[int]]:
    positions = list(range(ctx.rank, len(dataset), ctx.world_size))
    return Subset(dataset, positions), positions


def score_split(model: FinetuneVPN, clips: PixelClips, config: FinetuneConfig, device: torch.device, amp: bool,
                ctx: DistContext) -> dict[str, float] | None:
    """Quick score: every cached clip of ``clips`` at the training crop, max-pooled per video.

    Every rank scores its share; rank 0 gets the metrics (``summarise``), the others None.
    """
    share, positions = _rank_share(clips, ctx)
    if positions:
        loader = make_loader(share, config.per_gpu_batch, config.num_workers, device, seed=config.seed,
                             prefetch_factor=PREFETCH)
        probs, labels, _ = score_clips(model, loader, device, amp)
    else:  # more ranks than clips
        probs, labels = np.zeros((0, len(clips.class_names)), np.float32), np.zeros(0, np.int64)
    gathered = gather((positions, probs, labels), ctx)
    if not ctx.is_main:
        return None
    order = np.argsort(np.concatenate([g[0] for g in gathered]), kind="stable")
    probs = np.concatenate([g[1] for g in gathered])[order]  # (N, num_classes)
    labels = np.concatenate([g[2] for g in gathered])[order]  # (N,)
    video_probs, video_labels, _ = video_scores(probs, labels, clips.sample_ids)
    return summarise(video_labels, video_probs.argmax(axis=1))


@torch.no_grad()
def score_videos(model: FinetuneVPN, videos: PixelVideos, config: FinetuneConfig, device: torch.device, amp: bool,
                 ctx: DistContext) -> tuple[np.ndarray, np.ndarray] | None:
    """The paper's scores: ``FinetuneVPN.score_windows`` on every video, each rank a share.

    Returns:
        On rank 0 ``(probs (V, num_classes), labels (V,))`` in video order; None elsewhere.
    """
    model.eval()
    uses_pose = model.config.variant != "i3d"
    share, positions = _rank_share(videos, ctx)
    loader = make_loader(share, None, config.num_workers, device, seed=config.seed, prefetch_factor=PREFETCH)
    scores = []
    for clips, poses, _, _ in show_progress(loader, "evaluate", unit="video", disable=not ctx.is_main):
        clips = clips.to(device, non_blocking=True)  # (K, 3, T, h, w)
        poses = poses.to(device, non_blocking=True) if uses_pose else None  # (K, 2, 3, J, t_p)
        with autocast(device, amp):
            scores.append(model.score_windows(clips, poses, config.per_gpu_batch).cpu().numpy())
    gathered = gather((positions, scores), ctx)
    if not ctx.is_main:
        return None
    order = np.argsort(np.concatenate([g[0] for g in gathered]), kind="stable")
    probs = np.stack([s for g in gathered for s in g[1]])[order]  # (V, num_classes)
    return probs, videos.labels


def evaluate_finetuned(run_dir: str | os.PathLike, split: str = "test", checkpoint: str = "best",
                       config: FinetuneConfig | None = None, ctx: DistContext | None = None,
                       device: torch.device | None = None, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score a fine-tune checkpoint the paper's way (see the module doc) and write ``<run_dir>/eval_<split>/``.

    Args:
        run_dir: ``runs/<name>`` of a fine-tune run.
        split: ``train``, ``val`` or ``test``.
        checkpoint: ``best`` or ``last``.
        config: paths, clip and evaluation settings; default: the run's own config.
        ctx: process group context (each rank scores a share of the videos); default: this process alone.
        device: default: the config's.
        out_dir: default ``<run_dir>/eval_<split>``.

    Returns:
        The metrics (on every rank; only rank 0 writes files).

    Raises:
        CheckpointError: missing or bad checkpoint.
        CacheError: missing cache or empty split.
    """
    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path, FINETUNE)
    config = config or FinetuneConfig.from_dict(ckpt["train_config"])
    ctx = ctx or DistContext()
    device = device or resolve_device(config.device)
    model = model_from_checkpoint(ckpt, path).to(device)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    clips = PixelClips(resolve_cache(config.cache, config.dataset), config.protocol, split, config.dataset,
                       sample_paths(config.manifest_path, config.data_root), config.clip_len, config.crop_size,
                       pixels=config.pixels)
    videos = PixelVideos(clips, config.eval_clips, config.eval_crop_size)
    scored = score_videos(model, videos, config, device, amp, ctx)
    metrics: dict[str, Any] = {}
    if ctx.is_main:
        probs, labels = scored
        metrics = {"run": str(run_dir), "checkpoint": path.name, "epoch": int(ckpt["epoch"]),
                   "cache": str(clips.path), "dataset": config.dataset, "protocol": config.protocol,
                   "variant": model.config.variant, "split": split, "headline_metric": clips.spec.metric,
                   **summarise(labels, probs.argmax(axis=1)), "clips_per_video": config.eval_clips,
                   "eval_crop_size": config.eval_crop_size, "finetune": True}
        write_eval_reports(Path(out_dir) if out_dir else run_dir / f"eval_{split}", metrics, videos.video_ids, labels,
                           probs, clips.class_names)
        log.info("%s %s: top-1 %.4f, mean-class %.4f over %d videos", run_dir.name, split, metrics["top1"],
                 metrics["mean_class"], metrics["num_videos"])
    return gather(metrics, ctx)[0]
