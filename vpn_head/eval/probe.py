"""The linear-probe baseline: logistic regression on the cached features, globally average-pooled and standardised.

A head trained on frozen features should do at least as well as a linear probe on the same features; when it does
not, its training recipe is weak and no comparison of pose variants built on it means much (issue 18). The probe:

- pools every clip's Mixed_5c map over (T, H, W) into a (C,) vector and standardises each channel with the
  training clips' mean and standard deviation;
- fits a multinomial ``sklearn.linear_model.LogisticRegression`` on the training clips, for each inverse
  regularisation strength in ``C_GRID``, and keeps the C that scores best on the selection split (``val`` where
  the protocol has one, else ``val_carved``: the training subjects the head trainer holds out with the same
  fraction and seed; the probe trains on the same clips as the head);
- scores the test split once, videos by max-pooling their clips' probabilities, as the heads are scored.

``make probe DATASET=… PROTOCOL=… [CACHE=…] [SEED=0]`` prints one JSON line and writes it to
``<RUNS_DIR>/probe_<dataset>_<protocol>_seed<seed>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache.reader import CacheError
from pipeline.utils.fileio import atomic_write_text
from vpn_head.data.clips import CachedClips, resolve_cache, selection_split
from vpn_head.data.splits import CARVED_VAL
from vpn_head.engine.config import TrainerConfig
from vpn_head.engine.metrics import summarise, video_scores

log = logging.getLogger(__name__)

C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Inverse L2 strengths tried; the selection split chooses one."""


def pooled_features(clips: CachedClips, batch: int = 64) -> np.ndarray:
    """(N, C) float64: each clip's feature map averaged over (T, H, W)."""
    rows = []
    for start in range(0, len(clips), batch):
        maps = torch.stack([clips[i][0] for i in range(start, min(start + batch, len(clips)))])  # (B, C, T, H, W)
        rows.append(maps.float().mean(dim=(2, 3, 4)).numpy())  # (B, C)
    return np.concatenate(rows).astype(np.float64)


def _video_metrics(model: Any, features: np.ndarray, clips: CachedClips) -> dict[str, float]:
    probs = model.predict_proba(features)  # (N, K) over model.classes_
    full = np.zeros((len(features), clips.num_classes))
    full[:, model.classes_] = probs
    video_probs, video_labels, _ = video_scores(full, clips.labels, clips.sample_ids)
    return summarise(video_labels, video_probs.argmax(axis=1))


def run_probe(cache: str | Path, dataset: str, protocol: str, seed: int = 0, val_fraction: float | None = None,
              c_grid: tuple[float, ...] = C_GRID, eval_split: str = "auto") -> dict[str, Any]:
    """Fit the probe on ``cache``'s training clips, choose C on the selection split, score the test split.

    Args:
        cache: cache root, cache directory or ``cache.h5``.
        dataset: registry name.
        protocol: the protocol.
        seed: the head trainer's seed: it chooses the carved validation subjects.
        val_fraction: share of training subjects carved out (default: the head trainer's).
        c_grid: inverse regularisation strengths to try.
        eval_split: ``auto`` | ``val`` | ``val_carved`` (as ``TrainConfig.eval_split``; never ``test``).

    Returns:
        ``{"variant": "probe", "top1", "mean_class", "num_videos", "checkpoint_selected_on", "C", "val": {...},
        "per_c": {C: val top1}}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if eval_split == "test":
        raise ValueError("the probe's C is never chosen on the test split; use auto, val or val_carved")
    fraction = TrainerConfig(dataset, protocol).val_fraction if val_fraction is None else val_fraction
    path = resolve_cache(cache, dataset)
    chooser = selection_split(path, protocol, dataset, eval_split)
    carve = fraction if chooser == CARVED_VAL else 0.0
    sets = {name: CachedClips(path, protocol, name, True, dataset, torch.float16, carve_fraction=carve,
                              carve_seed=seed) for name in ("train", chooser, "test")}
    features = {name: pooled_features(clips) for name, clips in sets.items()}
    scaler = StandardScaler().fit(features["train"])
    scaled = {name: scaler.transform(f) for name, f in features.items()}
    metric = sets["train"].spec.metric
    best: tuple[float, float, Any] | None = None
    per_c = {}
    for c in c_grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at tiny C are expected and harmless here
            model = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(scaled["train"],
                                                                                   sets["train"].labels)
        value = _video_metrics(model, scaled[chooser], sets[chooser])[metric]
        per_c[str(c)] = value
        if best is None or value > best[0]:
            best = (value, c, model)
    assert best is not None
    _, c, model = best
    test = _video_metrics(model, scaled["test"], sets["test"])
    return {"variant": "probe", **test, "checkpoint_selected_on": chooser, "C": c, "headline_metric": metric,
            "val": _video_metrics(model, scaled[chooser], sets[chooser]), "per_c": per_c,
            "train_clips": len(sets["train"]), "seed": seed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.eval.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--cache-dir", dest="cache", default=TrainerConfig.cache, help="cache root, cache directory or cache.h5")
    parser.add_argument("--seed", type=int, default=0, help="chooses the carved validation subjects")
    parser.add_argument("--eval-split", default="auto", choices=("auto", "val", CARVED_VAL))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_probe(args.cache, args.dataset, args.protocol, args.seed, eval_split=args.eval_split)
    except (CacheError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.runs_dir / f"probe_{args.dataset}_{args.protocol}_seed{args.seed}.json", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
