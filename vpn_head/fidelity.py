"""Does VPN beat I3D where it should? Train the variants on one cache over several seeds and tabulate the evidence.

``make fidelity`` builds a synthetic NTU-format dataset made for the question (``pipeline.synthetic`` with
``active_hand="random"`` and a moving passive hand: the class is the motion of the hand that is held forward,
the other hand moves too, so global pooling of the crop's I3D features sees two motions and only the pose says
which one counts), caches it with the real pipeline, then for each seed trains ``i3d``, ``attention`` and ``vpn``
heads (checkpoint chosen on ``val_carved``, never on test), evaluates each on the test split once with the pose
diagnostics (``vpn_head.diagnostics``), and trains the oracle head (A_S fixed on the class-carrying joint). It
prints mean +- sd over the seeds and writes ``fidelity.json`` / ``fidelity.md``.

``make demo`` calls ``run_variants`` / ``format_table`` with one seed on its own small dataset.

``python -m vpn_head.fidelity --work DIR --prepare-only [--n 240]`` writes ``DIR/data`` and ``DIR/manifest.csv``;
``make fidelity`` caches them into ``DIR/cache`` (``tasks.cache``: this package never runs the pipeline's tasks),
then ``python -m vpn_head.fidelity --work DIR [--n 240] [--seeds 0 1 2 3 4] [--epochs 30] [--model KEY=VALUE ...]``
trains and tabulates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache import CacheError
from pipeline.datasets import get_dataset
from pipeline.fileio import atomic_write_text
from vpn_head import diagnostics as diag
from vpn_head.config import VPNConfig
from pipeline.manifest import main as manifest_main
from pipeline.synthetic import SyntheticConfig, generate
from vpn_head.cli import parse_override
from vpn_head.data import CachedClips, resolve_cache
from vpn_head.evaluate import evaluate_run
from vpn_head.metrics import summarise, video_scores
from vpn_head.runtime import seed_everything
from vpn_head.splits import CARVED_VAL
from vpn_head.train import EpochShuffleSampler, TrainConfig, train

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("i3d", "attention", "vpn")
FIDELITY_DATA = dict(cameras_per_take=1, hand_amplitude_m=0.2, active_hand="random", passive_hand_amplitude_m=0.2)
"""``SyntheticConfig`` fields of the fidelity dataset (besides ``n`` and ``seed``)."""


def run_variants(cache: str, runs_dir: str, seed: int, epochs: int, variants: tuple[str, ...] = VARIANTS,
                 model: dict[str, Any] | None = None, manifest: str | None = None, data_root: str | None = None,
                 dataset: str = "ntu60", protocol: str = "cs") -> list[dict[str, Any]]:
    """Train (or resume) and evaluate each variant with one seed.

    Returns:
        One test ``metrics.json`` dict per variant (``best.pt``, chosen on the validation split).
    """
    results = []
    for variant in variants:
        overrides = dict(model or {}) if variant != "i3d" else {}
        config = TrainConfig(dataset=dataset, protocol=protocol, variant=variant, epochs=epochs, cache=cache,
                             runs_dir=runs_dir, run_name=run_name(dataset, protocol, variant, overrides, seed),
                             seed=seed, num_workers=0, in_memory=True, model=overrides)
        train(config)
        results.append(evaluate_run(config.run_dir, split="test", checkpoint="best", cache=cache,
                                    manifest=manifest, data_root=data_root, device="cpu"))
    return results


def run_name(dataset: str, protocol: str, variant: str, model: dict[str, Any], seed: int) -> str:
    """``<variant>[_<model hash>]_seed<seed>``: pose variants carry a hash of their resolved ``VPNConfig``, so runs
    of other head settings (``--model``, or changed defaults) land beside them instead of clashing."""
    if variant == "i3d":
        return f"i3d_seed{seed}"
    resolved = VPNConfig.for_dataset(dataset, protocol, variant=variant, **model).to_dict()
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:8]
    return f"{variant}_{digest}_seed{seed}"


def _split_arrays(clips: CachedClips) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(features float16 (N, C, T, H, W), labels (N,), sample ids) of a loaded split."""
    features = torch.stack([clips[i][0] for i in range(len(clips))])
    return features, torch.from_numpy(clips.labels), clips.sample_ids


def train_oracle(cache: str, seed: int, epochs: int, manifest: str, data_root: str | None,
                 dataset: str = "ntu60", protocol: str = "cs", model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the oracle head (A_S fixed on the key joint's cell, A_T uniform) with the head trainer's schedule.

    ``model`` holds the pose variants' ``VPNConfig`` overrides: the oracle applies its attention the same way
    (``temporal_scale``, ``attention_residual``).

    The checkpoint is chosen on ``val_carved`` like the variants'; returns its test ``top1``/``mean_class``.
    """
    defaults = TrainConfig(dataset, protocol)
    path = resolve_cache(cache, dataset)
    spec = get_dataset(dataset)
    sets = {name: CachedClips(path, protocol, name, True, dataset, torch.float16,
                              carve_fraction=defaults.val_fraction, carve_seed=seed)
            for name in ("train", CARVED_VAL, "test")}
    data = {}
    for name, clips in sets.items():
        features, labels, ids = _split_arrays(clips)
        poses = np.stack([clips[i][1].numpy() for i in range(len(clips))])
        cells, note = diag.clip_joint_cells(path, clips.rows, ids, poses, spec, Path(manifest),
                                            Path(data_root) if data_root else None, features.shape[-1])
        if cells is None:
            raise CacheError(f"oracle: {note}")
        data[name] = (features, torch.from_numpy(diag.oracle_maps(cells, features.shape[-1])), labels, ids)
    seed_everything(seed, deterministic=True)
    head_config = VPNConfig.for_dataset(dataset, protocol, variant="attention", **(model or {}))
    head = diag.OracleAttentionHead(features.shape[1], features.shape[2], head_config.num_classes,
                                    head_config.dropout, head_config.temporal_scale, head_config.attention_residual,
                                    head_config.attention_pooling == "normalised")
    optimizer = torch.optim.SGD(head.parameters(), lr=defaults.lr, momentum=defaults.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, defaults.lr_step, defaults.lr_gamma)
    features, maps, labels, _ = data["train"]
    sampler = EpochShuffleSampler(len(labels), seed)

    def score(name: str) -> dict[str, float]:
        f, m, y, ids = data[name]
        head.eval()
        with torch.no_grad():
            probs = torch.softmax(head(f.float(), m), dim=1).numpy()
        video_probs, video_labels, _ = video_scores(probs, y.numpy(), ids)
        return summarise(video_labels, video_probs.argmax(axis=1))

    best, best_state = -math.inf, None
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        head.train()
        for start in range(0, len(order), defaults.batch_size):
            batch = order[start:start + defaults.batch_size]
            loss = torch.nn.functional.cross_entropy(head(features[batch].float(), maps[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        value = score(CARVED_VAL)[spec.metric]
        if value > best:
            best, best_state = value, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return {"variant": "oracle", **score("test"), "checkpoint_selected_on": CARVED_VAL}


def _stat(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "values": [float(v) for v in array]}


def summarise_seeds(per_seed: list[list[dict[str, Any]]], oracle: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds of each variant's test top-1, shuffled-pose top-1 and attention statistics."""
    table: dict[str, Any] = {}
    for results in zip(*per_seed):
        variant = results[0]["variant"]
        row = {"top1": _stat([r["top1"] for r in results]), "mean_class": _stat([r["mean_class"] for r in results])}
        if isinstance(results[0].get("pose_shuffle"), dict):
            row["shuffled_top1"] = _stat([r["pose_shuffle"]["top1"] for r in results])
            row["shuffle_drop"] = _stat([r["pose_shuffle"]["drop_top1"] for r in results])
            for key in ("a_s_spread", "a_t_entropy", "peak_within_1", "peak_chance_within_1"):
                if key in results[0]["attention"]:
                    row[key] = _stat([r["attention"][key] for r in results])
        table[variant] = row
    if oracle:
        table["oracle"] = {"top1": _stat([r["top1"] for r in oracle]),
                           "mean_class": _stat([r["mean_class"] for r in oracle])}
    return table


def _cell(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "-"
    stat = row[key]
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}" if len(stat["values"]) > 1 else f"{stat['mean']:.3f}"


def format_table(table: dict[str, Any]) -> str:
    """Markdown table of ``summarise_seeds``' output."""
    lines = ["| variant | test top-1 | shuffled-pose top-1 | shuffle drop | A_S spread | A_T entropy | "
             "A_S peak within 1 cell of key joint (chance) |", "|---|---|---|---|---|---|---|"]
    for variant, row in table.items():
        peak = ("-" if "peak_within_1" not in row
                else f"{_cell(row, 'peak_within_1')} ({row['peak_chance_within_1']['mean']:.2f})")
        lines.append(f"| {variant} | {_cell(row, 'top1')} | {_cell(row, 'shuffled_top1')} | "
                     f"{_cell(row, 'shuffle_drop')} | {_cell(row, 'a_s_spread')} | {_cell(row, 'a_t_entropy')} | "
                     f"{peak} |")
    return "\n".join(lines)


def prepare_data(work: Path, n: int, data_seed: int) -> tuple[Path, Path]:
    """Generate (once) and scan the fidelity dataset under ``work``; returns (data_root, manifest).

    ``make fidelity`` then builds its cache (``tasks.cache``) into ``<work>/cache``.
    """
    root, manifest = work / "data", work / "manifest.csv"
    config = SyntheticConfig(n=n, seed=data_seed, **FIDELITY_DATA)
    stamp = root / "synthetic_config.json"
    wanted = json.loads(json.dumps(asdict(config)))
    if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        generate(root, config, overwrite=True)
    if manifest_main(["--dataset", "ntu60", "--data-root", str(root), "--out", str(manifest)]) != 0:
        raise CacheError("fidelity: the manifest step failed")
    return root, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, cache and runs")
    parser.add_argument("--n", type=int, default=240, help="synthetic videos (one independent take each)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--model", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                        help="VPNConfig override for the pose variants (repeatable)")
    parser.add_argument("--no-oracle", dest="oracle", action="store_false")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the synthetic data and its manifest, then stop (make fidelity caches them next)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: <work>/fidelity.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        root, manifest = prepare_data(args.work, args.n, args.data_seed)
        if args.prepare_only:
            return 0
        cache = resolve_cache(args.work / "cache", "ntu60")
        runs = args.work / "runs"
        per_seed, oracle = [], []
        for seed in args.seeds:
            per_seed.append(run_variants(str(cache), str(runs), seed, args.epochs, tuple(args.variants),
                                         dict(args.model), str(manifest), str(root)))
            if args.oracle:
                oracle.append(train_oracle(str(cache), seed, args.epochs, str(manifest), str(root),
                                           model=dict(args.model)))
            print(f"seed {seed}: " + ", ".join(f"{r['variant']} {r['top1']:.3f}" for r in per_seed[-1] + oracle[-1:]),
                  flush=True)
    except (CacheError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = summarise_seeds(per_seed, oracle)
    out = args.out or args.work / "fidelity.json"
    record = {"n": args.n, "seeds": args.seeds, "epochs": args.epochs, "model": dict(args.model),
              "checkpoint_selected_on": CARVED_VAL, "split": "test", "table": table}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    text = (f"ntu60 cs test split, {len(args.seeds)} seed(s), best.pt chosen on {CARVED_VAL} (training subjects "
            f"held out), mean ± sd:\n\n{format_table(table)}\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
