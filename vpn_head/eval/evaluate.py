"""``make eval``: score a run's checkpoint on a split and write its evaluation files.

A head run is scored on the cached features (``vpn_head.engine.metrics``: max-pool over a video's clips, top-1 and mean
per-class accuracy), with the pose diagnostics for pose variants; a fine-tune run from pixels, the paper's way
(``vpn_head.eval.finetune``). The checkpoint's ``kind`` decides.

``python -m vpn_head.eval.evaluate --dataset smarthome --protocol cs`` scores ``runs/smarthome_cs_vpn/best.pt`` on
the test split and writes ``confusion.csv``, ``confusion.png``, ``predictions.csv`` and ``metrics.json`` to
``runs/smarthome_cs_vpn/eval_test/``. This module reads runs; ``train.py`` writes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache.reader import CacheError
from vpn_head.data.clips import CachedClips, resolve_cache
from vpn_head.engine.board import write_eval
from vpn_head.engine.checkpoints import (
    CHECKPOINT_NAMES,
    FINETUNE,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
)
from vpn_head.engine.config import default_run_name, run_folder
from vpn_head.engine.metrics import summarise, top1_accuracy, video_scores
from vpn_head.engine.scoring import score_clips, write_eval_reports
from vpn_head.eval import diagnostics as diag
from vpn_head.eval.finetune import evaluate_finetuned
from vpn_head.runtime import make_loader, resolve_device

log = logging.getLogger(__name__)


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
        cache: a cache file, cache folder, dataset folder or cache root (``pipeline.cache.layout.resolve``); default:
            the one the run was trained on.
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

    For pose variants ``metrics.json`` also holds the diagnostics of ``vpn_head.eval.diagnostics``: accuracy with the
    poses shuffled across videos, A_S spread across videos, A_T entropy, and where A_S peaks; on synthetic data
    (``synthetic_truth.csv``) also ``hand_shuffle``: the poses taken from a video whose class-carrying hand differs,
    and the share of plain-shuffle partners that hold the same hand (``pose_shuffle.same_hand_partners``).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        CheckpointError: missing or bad checkpoint.
        CacheError: missing cache or empty split.
    """
    run_dir = Path(run_dir)
    ckpt_path = checkpoint_path(run_dir, checkpoint)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run (train it first with `make train-head`)")
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["kind"] == FINETUNE:  # score it from pixels, the paper's way, not on cached features
        return evaluate_finetuned(run_dir, split=split, checkpoint=checkpoint, out_dir=out_dir)
    model = model_from_checkpoint(ckpt, ckpt_path)
    train_config = ckpt["train_config"]
    if "dataset" not in train_config or "protocol" not in train_config:
        raise CheckpointError(f"{ckpt_path}: its train_config names no dataset and protocol; it is damaged")
    dataset, protocol = train_config["dataset"], train_config["protocol"]
    cache_path = resolve_cache(cache if cache is not None else _trained_on(run_dir, train_config), dataset)
    uses_pose = model.config.variant != "i3d"
    # pose variants are scored twice (own and shuffled poses): hold the split in RAM when it fits, read it once
    clips = CachedClips(cache_path, protocol, split, in_memory=uses_pose, dataset=dataset,
                        feature_dtype=torch.float16, crop_joints=model.config.spatial_attention == "joints")
    torch_device = resolve_device(device)
    model.to(torch_device)
    amp = torch_device.type == "cuda" and train_config.get("amp") is not False
    record: dict[str, np.ndarray] = {}
    probs, labels, rows = score_clips(model, make_loader(clips, batch_size, num_workers, torch_device),
                                      torch_device, amp, record=record if uses_pose else None)
    if not np.isfinite(probs).all():  # never report a number from scores that are not numbers
        raise CheckpointError(f"{ckpt_path}: the model scores {int((~np.isfinite(probs)).any(axis=1).sum())} of "
                              f"{len(probs)} {split} clips as NaN or inf; no accuracy can be reported from it")
    sample_ids = clips.sample_ids_of(rows)
    diagnostics: dict[str, Any] = {}
    if uses_pose:
        source = diag.shuffle_poses(sample_ids, seed=0)
        shuffled_probs, _, _ = score_clips(model, make_loader(clips, batch_size, num_workers, torch_device),
                                           torch_device, amp, replace_poses=record["poses"][source])
        manifest_path = Path(manifest) if manifest else Path("manifests") / f"{dataset}.csv"
        cells, note = diag.clip_joint_cells(cache_path, rows, sample_ids, record["poses"][:, :, :3], clips.spec,
                                            manifest_path, Path(data_root) if data_root else None,
                                            model.config.feature_size)
        own_video, video_labels, _ = video_scores(probs, labels, sample_ids)
        shuffled_video, _, _ = video_scores(shuffled_probs, labels, sample_ids)
        own_summary = summarise(video_labels, own_video.argmax(axis=1))
        diagnostics = diag.pose_diagnostics(
            own_summary, summarise(video_labels, shuffled_video.argmax(axis=1)),
            float((own_video.argmax(axis=1) != shuffled_video.argmax(axis=1)).mean()), record, cells, note)
        hands = diag.read_hands(manifest_path, Path(data_root) if data_root else None)
        hand_source = diag.hand_aware_shuffle(sample_ids, hands, seed=0) if hands else None
        if hand_source is not None:
            hand_probs, _, _ = score_clips(model, make_loader(clips, batch_size, num_workers, torch_device),
                                           torch_device, amp, replace_poses=record["poses"][hand_source])
            hand_video, _, _ = video_scores(hand_probs, labels, sample_ids)
            diagnostics["pose_shuffle"]["same_hand_partners"] = diag.same_hand_share(sample_ids, source, hands)
            diagnostics["hand_shuffle"] = diag.shuffle_block(
                own_summary, summarise(video_labels, hand_video.argmax(axis=1)),
                float((own_video.argmax(axis=1) != hand_video.argmax(axis=1)).mean()))
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
    write_eval(run_dir, metrics, int(ckpt["epoch"]))
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


def _trained_on(run_dir: Path, train_config: dict[str, Any]) -> str:
    """The cache a run was trained on: the folder its ``config.json`` recorded (``engine.cache_identity``) while it
    exists, so a later build that moved ``LATEST`` does not change what an evaluation reads; else the trainer's
    ``--cache-dir`` as given, resolved again."""
    try:
        recorded = json.loads((run_dir / "config.json").read_text())["cache"]["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return train_config["cache"]
    if Path(recorded).is_dir():
        return recorded
    log.warning("%s was trained on %s, which is gone; evaluating on %s as resolved now", run_dir, recorded,
                train_config["cache"])
    return train_config["cache"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.eval.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", help="run directory (default: <runs-dir>/<run>)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--run", default="", help="run name (default: <dataset>_<protocol>_<variant>)")
    parser.add_argument("--dataset", help="dataset, to derive the default run name")
    parser.add_argument("--protocol", help="protocol, to derive the default run name")
    parser.add_argument("--variant", default="vpn", help="variant, to derive the default run name")
    parser.add_argument("--split", default="test", choices=("train", "val", "val_carved", "test"))
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINT_NAMES)
    parser.add_argument("--cache-dir", dest="cache", help="a cache.h5, cache folder, dataset folder (<root>/<dataset>, its LATEST) or "
                                        "cache root (default: the one the run was trained on)")
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
    if not (args.run_dir or args.run or (args.dataset and args.protocol)):
        parser.error("give --run-dir, --run, or --dataset and --protocol")
    try:
        run_dir = (Path(args.run_dir) if args.run_dir else
                   run_folder(args.runs_dir, args.run or default_run_name(args.dataset, args.protocol, args.variant)))
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
