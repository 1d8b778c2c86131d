"""``make predict``: a trained head run on raw videos, top-k classes out, through the cache's and eval's code path.

For every input (``pipeline.features.inputs``: a video, a folder of the dataset's files, or a manifest) the
clips are made by ``pipeline.features.sample.prepare_sample`` and featurised by ``pipeline.features.extractor``
with the run's *recorded* cache config (crop, clip sampling, extractor, precision; I3D weights checked by sha256),
rounded to float16 as the cache stores them, and scored by ``vpn_head.engine.scoring.score_clips`` and pooled by
``vpn_head.engine.metrics.video_scores`` (max-pooled softmax over the video's clips, paper section 4), exactly
as ``make eval`` scores a cached video. No cache is written.

Out (``OUT=``, default ``<run>/predict/``): ``<sample_id>.json`` per input (top-k and every class probability),
``predictions.csv`` (one row per predicted input), ``failures.csv`` (``sample_id, stage, reason``: a missing or
mismatched skeleton, an unreadable video); one line per input on the terminal. An input whose JSON exists is
skipped, so a stopped folder run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.cache.config import CacheConfig
from pipeline.cache.failures import write_failures
from pipeline.cache.layout import CONFIG_NAME, CacheError, resolve
from pipeline.cache.reader import open_cache
from pipeline.crops.joints import clip_crop_joints
from pipeline.datasets.registry import DatasetSpec, get_dataset
from pipeline.features.extractor import (
    FLOAT16_MAX,
    WeightsMismatchError,
    as_stored,
    clip_features,
    extractor_for,
    overflow_peaks,
)
from pipeline.features.inputs import RawInputs, find_inputs
from pipeline.features.sample import PreparedSample, SampleError, prepare_sample
from pipeline.utils.fileio import atomic_write_csv, atomic_write_json
from pipeline.utils.progress import show_progress
from vpn_head.engine.checkpoints import (
    CHECKPOINT_NAMES,
    FINETUNE,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
)
from vpn_head.engine.metrics import video_scores
from vpn_head.engine.scoring import score_clips
from vpn_head.model.vpn import VPN
from vpn_head.runtime import resolve_device

log = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.csv"
FAILURES_NAME = "failures.csv"


@dataclass
class Predictor:
    """A head run ready to score raw videos: the model, the cache config it was trained on, the extractor.

    Attributes:
        run_dir: the run folder.
        checkpoint: the checkpoint file scored.
        model: the VPN head, in eval mode on ``device``.
        cache_config: the recorded config of the cache the run was trained on.
        spec: the dataset's registry entry.
        class_names: the protocol's classes (the head's outputs).
        extractor: the feature extractor of ``cache_config``.
        device: where the head and the extractor run.
        amp: autocast for the head (as ``make eval``: CUDA and the run's ``amp``).
        batch_size: clips per extractor forward pass.
    """

    run_dir: Path
    checkpoint: Path
    model: VPN
    cache_config: CacheConfig
    spec: DatasetSpec
    class_names: tuple[str, ...]
    extractor: torch.nn.Module
    device: torch.device
    amp: bool
    batch_size: int


def run_cache_config(run_dir: Path, train_config: dict[str, Any], cache: str | os.PathLike | None = None
                     ) -> CacheConfig:
    """The config of the cache a run was trained on: its ``config.json``'s recorded cache folder (or ``cache``,
    which must be that same cache), read from the folder's ``config.json`` or, failing that, the cache file.

    Raises:
        CacheError: the cache is gone and no ``cache`` was given, or ``cache`` is another cache.
    """
    try:
        recorded = json.loads((run_dir / "config.json").read_text())["cache"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if cache is not None:
        path = resolve(cache, train_config["dataset"])
        folder = path.parent if path.is_file() else path
        if recorded and recorded.get("hash") and folder.name != recorded["hash"]:
            raise CacheError(f"{run_dir} was trained on cache {recorded['hash']}, not {folder} (CACHE_DIR=)")
    elif recorded and Path(recorded["folder"]).is_dir():
        folder = Path(recorded["folder"])
    else:
        where = recorded["folder"] if recorded else train_config.get("cache")
        raise CacheError(f"{run_dir}: the cache it was trained on ({where}) is gone, and its config (crop, clip "
                         "sampling, I3D weights) with it; pass CACHE_DIR=<a copy of that cache folder>")
    if (folder / CONFIG_NAME).is_file():
        return CacheConfig.from_json((folder / CONFIG_NAME).read_text())
    with open_cache(resolve(folder)) as reader:
        return CacheConfig(**{**reader.attrs["config_json"],
                              "fallback": tuple(reader.attrs["config_json"].get("fallback", ()))})


def load_predictor(run_dir: str | os.PathLike, checkpoint: str = "best", cache: str | os.PathLike | None = None,
                   i3d_weights: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 4
                   ) -> Predictor:
    """Load a head run, its cache config and the extractor that config names (weights checked by sha256).

    Raises:
        CheckpointError: no run, or a fine-tune run (it scores pixels with its own clip settings: ``make eval``).
        CacheError: the run's cache config cannot be found.
        WeightsMismatchError: the I3D weights are not the cache's.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run (train it first with `make train-head`)")
    path = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    if ckpt["kind"] == FINETUNE:
        raise CheckpointError(f"{run_dir} is a fine-tune run; predict scores head runs (the fine-tune's features "
                              "come from its own I3D, which `make two-stage` caches for a head run)")
    model = model_from_checkpoint(ckpt, path)
    train_config = ckpt["train_config"]
    config = run_cache_config(run_dir, train_config, cache)
    if config.dataset != train_config["dataset"]:
        raise CacheError(f"{run_dir} is a {train_config['dataset']} run but its cache is {config.dataset}")
    torch_device = resolve_device(device)
    extractor = extractor_for(config, i3d_weights, str(torch_device))
    spec = get_dataset(config.dataset)
    model.to(torch_device).eval()
    return Predictor(run_dir, path, model, config, spec, spec.protocol_classes(train_config["protocol"]),
                     extractor, torch_device, torch_device.type == "cuda" and train_config.get("amp") is not False,
                     batch_size)


def model_inputs(predictor: Predictor, sample: PreparedSample) -> tuple[torch.Tensor, torch.Tensor]:
    """A prepared sample's head inputs as ``make eval`` reads them from a cache.

    Returns:
        ``(features, poses)``: float16 (K, C, T, H, W) as stored, and float32 (K, 2, 3, J, t_p), with the crop
        joints appended as channels 3-4 (K, 2, 5, J, t_p) for ``spatial_attention="joints"``.

    Raises:
        SampleError: stage ``features`` when they overflow float16 (the cache build records the same failure).
    """
    feats = clip_features(predictor.extractor, sample.clips, predictor.cache_config,
                          batch_size=predictor.batch_size, device=str(predictor.device))  # (K, 1024, 8, 7, 7)
    peak = float(overflow_peaks(feats).max())
    if not peak <= FLOAT16_MAX:
        raise SampleError("features", f"features overflow float16 (max |x| {peak:.4g})")
    poses = torch.from_numpy(sample.poses)  # (K, 2, 3, J, t_p)
    if predictor.model.config.spatial_attention == "joints":
        joints = np.stack([clip_crop_joints(sample.joints2d[c], sample.boxes[c], predictor.cache_config.t_p)
                           for c in range(len(sample.poses))])  # (K, 2, 2, J, t_p)
        poses = torch.cat([poses, torch.from_numpy(joints)], dim=2)  # (K, 2, 5, J, t_p)
    return torch.from_numpy(as_stored(feats)), poses


def score_sample(predictor: Predictor, sample: PreparedSample, record: dict[str, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of each clip and the video's max-pooled scores, as ``make eval`` computes them.

    Returns:
        ``(clip_probs (K, classes), video_probs (classes,))``.
    """
    features, poses = model_inputs(predictor, sample)
    k = len(features)
    batch = [(features, poses, torch.full((k,), -1, dtype=torch.int64), torch.arange(k))]
    probs, labels, _ = score_clips(predictor.model, batch, predictor.device, predictor.amp, record=record)
    video, _, _ = video_scores(probs, labels, np.array([sample.sample_id] * k))
    return probs, video[0]


def top_k(probs: np.ndarray, class_names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, most probable first: ``{"label", "class", "probability"}``."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": int(i), "class": class_names[i], "probability": float(probs[i])} for i in order]


def _safe(sample_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(sample_id))


def predict_inputs(predictor: Predictor, inputs: RawInputs, out_dir: str | os.PathLike, topk: int = 5,
                   progress: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict every input not predicted yet; write the per-input JSONs, ``predictions.csv``, ``failures.csv``.

    Returns:
        ``{"predicted", "skipped", "failed", "out"}`` counts of this call, and the output folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str, str]] = []
    done = skipped = 0
    rows = list(inputs.rows)
    bar = show_progress(rows, "predict", unit="video", disable=not progress)
    for row in bar:
        sample_id = str(row["sample_id"])
        target = out / f"{_safe(sample_id)}.json"
        if target.exists():
            skipped += 1
            continue
        try:
            sample = prepare_sample(row, inputs.data_root, predictor.spec, predictor.cache_config)
            clip_probs, video_probs = score_sample(predictor, sample)
        except SampleError as err:
            failures.append((sample_id, err.stage, err.reason))
            say(f"{sample_id}: failed at {err.stage}: {err.reason}")
            continue
        best = top_k(video_probs, predictor.class_names, topk)
        record = {"sample_id": sample_id, "video": str(inputs.data_root / str(row["video_path"])),
                  "skeleton": str(inputs.data_root / str(row["skeleton_path"])), "run": str(predictor.run_dir),
                  "checkpoint": predictor.checkpoint.name, "cache_config": predictor.cache_config.digest(),
                  "clips": int(len(clip_probs)), "true_action": str(row.get("action") or ""), "top_k": best,
                  "probabilities": [float(p) for p in video_probs]}
        atomic_write_json(target, record)
        done += 1
        say(f"{sample_id}: " + " | ".join(f"{t['class']} {t['probability']:.3f}" for t in best))
        bar.set_postfix(failed=len(failures))
    write_failures(out / FAILURES_NAME, failures)
    _write_table(out, [out / f"{_safe(str(r['sample_id']))}.json" for r in rows], topk)
    return {"predicted": done, "skipped": skipped, "failed": len(failures), "out": str(out)}


def _write_table(out: Path, paths: list[Path], topk: int) -> None:
    """``predictions.csv``: one row per input with a JSON, in input order."""
    header = ["sample_id", "pred", "pred_name", "score", "true_action",
              *[f"top{i + 1}_{f}" for i in range(topk) for f in ("name", "p")]]
    table = []
    for path in paths:
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        best = record["top_k"]
        table.append([record["sample_id"], best[0]["label"], best[0]["class"], f"{best[0]['probability']:.6f}",
                      record["true_action"],
                      *[v for t in best[:topk] for v in (t["class"], f"{t['probability']:.6f}")]])
    atomic_write_csv(out / PREDICTIONS_NAME, header, table)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options ``make predict`` and ``make explain`` share: the run, the input and how to score it."""
    parser.add_argument("--run", required=True, help="run name under --runs-dir, or a run folder")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--input", required=True, help="a video, a folder of the dataset's files, or a manifest")
    parser.add_argument("--skeleton", help="the video's skeleton file (default: the one the dataset pairs with it)")
    parser.add_argument("--data-root", help="with a manifest INPUT: where its paths start (default: its side file)")
    parser.add_argument("--topk", type=int, default=5, help="classes listed per input")
    parser.add_argument("--out", help="output folder (default: <run>/predict or <run>/explain)")
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINT_NAMES)
    parser.add_argument("--cache-dir", help="the run's cache folder, when the recorded one moved")
    parser.add_argument("--i3d-weights", help="the I3D weights the run's cache was built with (checked by sha256)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per extractor forward pass")


def run_folder(args: argparse.Namespace) -> Path:
    """``--run`` as a folder: itself when it is one, else ``<runs-dir>/<run>``."""
    given = Path(args.run)
    return given if given.is_dir() and not (Path(args.runs_dir) / args.run).is_dir() else Path(args.runs_dir) / args.run


ERRORS = (CheckpointError, CacheError, WeightsMismatchError, FileNotFoundError, ValueError, OSError)
"""Expected failures of ``make predict`` / ``make explain``: one ``error:`` line, exit status 1."""


def parse_command(prog: str, doc: str, argv: list[str] | None) -> tuple[argparse.Namespace, Path]:
    """Parse a ``make predict`` / ``make explain`` command line and set up logging.

    Returns:
        The arguments and the run folder they name.
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add_run_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args, run_folder(args)


def open_run(args: argparse.Namespace, run_dir: Path) -> Predictor:
    """The predictor of the run a command line names (its checkpoint, cache config and I3D weights).

    Raises:
        ValueError: ``TOPK`` below 1; and the errors of ``load_predictor`` (``ERRORS``).
    """
    if args.topk < 1:
        raise ValueError(f"TOPK must be >= 1, got {args.topk}")
    return load_predictor(run_dir, args.checkpoint, args.cache_dir, args.i3d_weights, args.device, args.batch_size)


def main(argv: list[str] | None = None) -> int:
    args, run_dir = parse_command("python -m vpn_head.infer.predict", __doc__, argv)
    try:
        predictor = open_run(args, run_dir)
        inputs = find_inputs(predictor.cache_config.dataset, args.input, args.skeleton, args.data_root)
        summary = predict_inputs(predictor, inputs, args.out or run_dir / "predict", args.topk)
    except ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 1 if summary["failed"] and not (summary["predicted"] or summary["skipped"]) else 0


if __name__ == "__main__":
    sys.exit(main())
