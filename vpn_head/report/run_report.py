"""Figures for a trained head run (``make report RUN=name``); fine-tune runs are refused (exit code 2).

``python -m vpn_head.report.run_report --runs-dir runs --run NAME [--cache-dir C] [--manifest M] [--data-root D] [--samples 8]
[--split test] [--checkpoint best] [--tsne-clips 500]`` writes to ``runs/NAME/report/``:

* ``training_curves.png``: the train loss terms per epoch (one panel per term that is not identically zero),
  train clip accuracy and the per-epoch evaluation scores, with the learning rate on a secondary axis;
* ``per_class_accuracy.png``: per-class video accuracy on the split, from ``eval_<split>/predictions.csv``
  (``vpn_head.eval.evaluate.evaluate_run`` runs first when that is missing or from another checkpoint);
* ``attention_<k>_<sample_id>.png`` (variants ``attention`` and ``vpn``): for ``--samples`` clips of the split,
  the spatial attention A_S (7 x 7) upsampled over the middle frame of the clip's person crop (re-decoded from
  the video with the cache's frame indices and box), and the temporal attention A_T as bars under it. When the
  video cannot be read the 7 x 7 map is drawn alone and the caption says why;
* ``tsne_embedding.png`` (variant ``vpn``): t-SNE of the split's f_e and P_e, coloured by class, circles for
  video and triangles for pose (``vpn_head.report.tsne``; up to ``--tsne-clips`` clips, chosen as the attention
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

import numpy as np
import pandas as pd
import torch

from pipeline.cache.reader import CacheError, open_cache
from pipeline.datasets.manifest import read_manifest, resolve_data_root
from pipeline.datasets.registry import get_dataset
from pipeline.i3d.spec import CROP_SIZE
from pipeline.utils.fileio import atomic_write_text
from pipeline.video.crop import to_uint8_crops
from pipeline.video.reader import DEFAULT_BACKEND, DEFAULT_FALLBACK, DecodeError, backends_for, read_clip
from vpn_head.data.clips import SPLITS, CachedClips, resolve_cache
from vpn_head.engine.checkpoints import (
    CHECKPOINT_NAMES,
    FINETUNE,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
)
from vpn_head.engine.config import run_folder
from vpn_head.engine.metrics import per_class_accuracy
from vpn_head.eval.evaluate import evaluate_run
from vpn_head.report.figures import (
    ReportError,
    new_figure,
    plot_attention,
    plot_per_class_accuracy,
    plot_training_curves,
    save_png,
)
from vpn_head.report.tsne import MIN_CLIPS, clip_embeddings, draw_tsne, embed_tsne

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_NAME = "index.md"
ATTENTION_VARIANTS: tuple[str, ...] = ("attention", "vpn")
TSNE_NAME = "tsne_embedding.png"
TSNE_CLIPS = 500
"""Clips in the t-SNE figure by default (2 points each; t-SNE's cost grows with the square of the points)."""


class UnsupportedRunError(ReportError):
    """The run is of a kind the report does not draw (an end-to-end fine-tune)."""


@dataclass(frozen=True)
class ReportFigure:
    """One file of the report and its one-line caption."""

    file: str
    caption: str


def _safe_name(text: str) -> str:
    """``text`` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "sample"


def _fresh_eval(eval_dir: Path, checkpoint: str, epoch: int, cache: Path) -> bool:
    """Whether ``eval_dir`` holds predictions of this checkpoint (name and epoch) on this cache."""
    try:
        metrics = json.loads((eval_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return ((eval_dir / "predictions.csv").is_file() and metrics.get("checkpoint") == f"{checkpoint}.pt"
            and metrics.get("epoch") == epoch and metrics.get("cache") == str(cache))


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
        run_dir: ``runs/<name>`` (from ``vpn_head.train.head``).
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
    fig = new_figure(9.0, 7.0)
    caption = draw_tsne(fig, emb, clips.class_names, f"{heading}: spatial embeddings", split)
    save_png(fig, path)
    return ReportFigure(path.name, caption)


def _write_index(path: Path, title: str, summary: str, figures: list[ReportFigure], notes: list[str]) -> None:
    lines = [f"# {title}", "", f"{summary[0].upper()}{summary[1:]}.", ""]
    lines += [f"- [{fig.file}]({fig.file}): {' '.join(fig.caption.split())}" for fig in figures]
    lines += ["", *notes]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.report.run_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--run", required=True, help="run name (a folder of --runs-dir)")
    parser.add_argument("--cache-dir", dest="cache", help="cache path (default: the one the run was trained on)")
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
    try:
        run_dir = run_folder(args.runs_dir, args.run)
        figures = make_report(run_dir, args.split, args.samples, args.checkpoint, args.cache, args.manifest,
                              args.data_root, args.tsne_clips)
    except (ReportError, CacheError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UnsupportedRunError) else 1
    print(f"{run_dir / REPORT_DIR / INDEX_NAME}: {len(figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
