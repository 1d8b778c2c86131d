"""Does VPN beat I3D where it should? Train the variants on one cache over several seeds and tabulate the evidence.

``make fidelity`` builds a synthetic NTU-format dataset made for the question (``pipeline.synthetic.dataset`` with
``active_hand="random"`` and a moving passive hand: the class is the motion of the hand that is held forward,
the other hand moves too, so global pooling of the crop's I3D features sees two motions and only the pose says
which one counts), caches it with the real pipeline, then for each seed trains ``i3d``, ``attention`` and ``vpn``
heads (checkpoint chosen on ``val_carved``, never on test), evaluates each on the test split once with the pose
diagnostics (``vpn_head.eval.diagnostics``), and trains the oracle head (A_S fixed on the class-carrying joint). It
prints mean +- sd over the seeds and writes ``fidelity.json`` / ``fidelity.md``.

``make demo`` calls ``run_variants`` / ``format_table`` with one seed on its own small dataset.

``python -m vpn_head.experiments.fidelity --work DIR --prepare-only [--n 240]`` writes ``DIR/data`` and ``DIR/manifest.csv``;
``make fidelity`` caches them into ``DIR/cache`` (``tasks.cache``: this package never runs the pipeline's tasks),
then ``python -m vpn_head.experiments.fidelity --work DIR [--n 240] [--seeds 0 1 2 3 4] [--epochs 30] [--model KEY=VALUE ...]``
trains and tabulates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache.reader import CacheError
from pipeline.datasets.manifest import main as manifest_main
from pipeline.datasets.registry import get_dataset
from pipeline.synthetic.dataset import SyntheticConfig, generate
from pipeline.utils.fileio import atomic_write_text
from vpn_head.data.clips import CachedClips, resolve_cache
from vpn_head.data.splits import CARVED_VAL
from vpn_head.engine import loop as engine
from vpn_head.engine.checkpoints import HEAD, load_checkpoint
from vpn_head.engine.config import TRAIN_READINGS
from vpn_head.engine.metrics import summarise, video_scores
from vpn_head.engine.options import parse_override, reading_model
from vpn_head.engine.scoring import score_clips
from vpn_head.eval import diagnostics as diag
from vpn_head.eval.evaluate import evaluate_run
from vpn_head.eval.probe import run_probe
from vpn_head.model.config import READINGS, VPNConfig
from vpn_head.runtime import loss_scaler, make_loader, seed_everything
from vpn_head.train.head import EpochShuffleSampler, TrainConfig, make_optimizer, train

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("i3d", "attention", "vpn")
FIDELITY_DATA = dict(cameras_per_take=1, hand_amplitude_m=0.2, active_hand="random", passive_hand_amplitude_m=0.2)
"""``SyntheticConfig`` fields of the fidelity dataset (besides ``n`` and ``seed``)."""


JOINT_ANCHORED: dict[str, Any] = {"spatial_attention": "joints", "attention_pooling": "normalised",
                                  "attention_residual": False}
"""The joint-anchored option (issue 18): A_S from per-joint weights at the joints' crop positions, and the head's pool
the attention-weighted average of f (the oracle shows the paper's ``A_ST f + f`` with a global average cannot use a
perfect map). ``make demo`` prints its rows beside the defaults'; ``make fidelity FID_ARGS="--model …"`` takes it."""
HEAD_FIELDS: tuple[str, ...] = ("feature_norm", "dropout", "classifier")
"""``VPNConfig`` fields the ``i3d`` head has too (the classifier's); the other overrides concern the pose branch."""


OURS = "ours"
"""The name of this project's defaults among ``--readings`` (beside ``paper`` and ``official``)."""


def reading_overrides(reading: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(VPNConfig overrides, TrainConfig overrides)`` of a reading: ``ours`` (the defaults), ``paper``, ``official``."""
    if reading == OURS:
        return {}, {}
    return dict(READINGS[reading]), dict(TRAIN_READINGS[reading])


def run_variants(cache: str, runs_dir: str, seed: int, epochs: int, variants: tuple[str, ...] = VARIANTS,
                 model: dict[str, Any] | None = None, manifest: str | None = None, data_root: str | None = None,
                 dataset: str = "ntu60", protocol: str = "cs", train_overrides: dict[str, Any] | None = None,
                 label: str = "") -> list[dict[str, Any]]:
    """Train (or resume) and evaluate each variant with one seed.

    Args:
        model: ``VPNConfig`` overrides; the ``i3d`` head takes only its ``HEAD_FIELDS``.
        train_overrides: ``TrainConfig`` fields for every variant (``optimizer``, ``lr``, ``weight_decay``, ...).
        label: appended to each variant's row name in ``summarise_seeds`` (``" (joints)"``).

    Returns:
        One test ``metrics.json`` dict per variant (``best.pt``, chosen on the validation split).
    """
    results = []
    for variant in variants:
        overrides = {k: v for k, v in (model or {}).items() if variant != "i3d" or k in HEAD_FIELDS}
        trainer = dict(train_overrides or {})
        config = TrainConfig(dataset=dataset, protocol=protocol, variant=variant, epochs=epochs, cache=cache,
                             runs_dir=runs_dir, run_name=run_name(dataset, protocol, variant, overrides, seed, trainer),
                             seed=seed, num_workers=0, in_memory=True, model=overrides, **trainer)
        train(config)
        metrics = evaluate_run(config.run_dir, split="test", checkpoint="best", cache=cache, manifest=manifest,
                               data_root=data_root, device="cpu")
        results.append({**metrics, "label": variant + label})
    return results


def run_name(dataset: str, protocol: str, variant: str, model: dict[str, Any], seed: int,
             train_overrides: dict[str, Any] | None = None) -> str:
    """``<variant>_<hash>_seed<seed>``: the hash covers the resolved ``VPNConfig`` and the trainer overrides, so runs
    of other head settings (``--model``, ``--train``, or changed defaults) land beside them instead of clashing."""
    resolved = VPNConfig.for_dataset(dataset, protocol, variant=variant, **model).to_dict()
    key = {"model": resolved, "train": dict(sorted((train_overrides or {}).items()))} if train_overrides else resolved
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{variant}_{digest}_seed{seed}"


def train_oracle(cache: str, seed: int, epochs: int, manifest: str, data_root: str | None,
                 dataset: str = "ntu60", protocol: str = "cs", model: dict[str, Any] | None = None,
                 train_overrides: dict[str, Any] | None = None, runs_dir: str | None = None) -> dict[str, Any]:
    """Train the oracle head (A_S fixed on the key joint's cell, A_T uniform) through the training engine.

    ``model`` holds the pose variants' ``VPNConfig`` overrides: the oracle applies its attention the same way
    (``temporal_scale``, ``attention_residual``, ``attention_pooling``) and has the same classifier
    (``feature_norm``); ``train_overrides`` the trainer's (``optimizer``, ``lr``, ...). The run lands in
    ``<runs_dir>/oracle_<hash>_seed<seed>`` (default: beside the cache, ``<cache root>/../runs``) with the
    engine's checkpoints and logs, so it resumes like any head run.

    The checkpoint is chosen on ``val_carved`` like the variants'; returns its test ``top1``/``mean_class``.
    """
    overrides, trainer = dict(model or {}), dict(train_overrides or {})
    path = resolve_cache(cache, dataset)
    runs = runs_dir or str(Path(cache).parent / "runs")
    name = "oracle" + run_name(dataset, protocol, "attention", overrides, seed, trainer)[len("attention"):]
    config = TrainConfig(dataset=dataset, protocol=protocol, variant="attention", epochs=epochs, cache=str(path),
                         runs_dir=runs, run_name=name, seed=seed, num_workers=0, in_memory=True, model=overrides,
                         **trainer)
    config.validate()
    vpn_config = config.vpn_config()
    spec = get_dataset(dataset)
    sets = {}
    for split in ("train", CARVED_VAL, "test"):
        clips = CachedClips(path, protocol, split, True, dataset, torch.float16,
                            carve_fraction=config.val_fraction, carve_seed=seed)
        poses = np.stack([clips[i][1].numpy() for i in range(len(clips))])
        cells, note = diag.clip_joint_cells(path, clips.rows, clips.sample_ids, poses, spec, Path(manifest),
                                            Path(data_root) if data_root else None, clips.feature_shape[-1])
        if cells is None:
            raise CacheError(f"oracle: {note}")
        sets[split] = diag.OracleClips(clips, diag.oracle_maps(cells, clips.feature_shape[-1]))
    run_dir = engine.prepare_run_dir(config.run_dir, HEAD, config, vpn_config, force_new=False)
    seed_everything(seed, deterministic=True)
    device = torch.device("cpu")
    head = diag.OracleAttentionHead(vpn_config)
    optimizer = make_optimizer(config, head)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step, config.lr_gamma)
    run = engine.Run(HEAD, run_dir, config, vpn_config, head, optimizer, scheduler, loss_scaler(device, False),
                     device, False, spec.metric, CARVED_VAL)
    progress = engine.resume(run)
    sampler = EpochShuffleSampler(len(sets["train"]), seed)
    loaders = {split: make_loader(clips, config.batch_size, 0, device, sampler if split == "train" else None, seed)
               for split, clips in sets.items()}

    def score(split: str) -> dict[str, float]:
        probs, labels, rows = score_clips(head, loaders[split], device)
        video_probs, video_labels, _ = video_scores(probs, labels, sets[split].sample_ids_of(rows))
        return summarise(video_labels, video_probs.argmax(axis=1))

    if progress.epoch < epochs:
        engine.fit(run, progress, head, loaders["train"], sampler, lambda: score(CARVED_VAL), lambda _: {})
    head.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    return {"variant": "oracle", **score("test"), "checkpoint_selected_on": CARVED_VAL, "run": run_dir.name}


def _stat(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "values": [float(v) for v in array]}


def summarise_seeds(per_seed: list[list[dict[str, Any]]], oracle: list[dict[str, Any]],
                    probe: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Mean and sd over seeds of each variant's test top-1, shuffled-pose top-1 and attention statistics, then the
    oracle's and the linear probe's test scores."""
    table: dict[str, Any] = {}
    for results in zip(*per_seed):
        variant = results[0].get("label", results[0]["variant"])
        row = {"top1": _stat([r["top1"] for r in results]), "mean_class": _stat([r["mean_class"] for r in results])}
        if isinstance(results[0].get("pose_shuffle"), dict):
            row["shuffled_top1"] = _stat([r["pose_shuffle"]["top1"] for r in results])
            row["shuffle_drop"] = _stat([r["pose_shuffle"]["drop_top1"] for r in results])
            if all("same_hand_partners" in r["pose_shuffle"] for r in results):
                row["same_hand_partners"] = _stat([r["pose_shuffle"]["same_hand_partners"] for r in results])
        if all(isinstance(r.get("hand_shuffle"), dict) for r in results):
            row["hand_shuffled_top1"] = _stat([r["hand_shuffle"]["top1"] for r in results])
            row["hand_shuffle_drop"] = _stat([r["hand_shuffle"]["drop_top1"] for r in results])
            for key in ("a_s_spread", "a_t_entropy", "peak_within_1", "peak_chance_within_1"):
                if key in results[0]["attention"]:
                    row[key] = _stat([r["attention"][key] for r in results])
        table[variant] = row
    for name, results in (("oracle", oracle), ("probe", probe or [])):
        if results:
            table[name] = {"top1": _stat([r["top1"] for r in results]),
                           "mean_class": _stat([r["mean_class"] for r in results])}
    return table


def _cell(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "-"
    stat = row[key]
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}" if len(stat["values"]) > 1 else f"{stat['mean']:.3f}"


def format_table(table: dict[str, Any]) -> str:
    """Markdown table of ``summarise_seeds``' output."""
    lines = ["| variant | test top-1 | shuffled-pose top-1 | shuffle drop | hand-aware shuffle drop | A_S spread | "
             "A_T entropy | A_S peak within 1 cell of key joint (chance) |", "|---|---|---|---|---|---|---|---|"]
    for variant, row in table.items():
        peak = ("-" if "peak_within_1" not in row
                else f"{_cell(row, 'peak_within_1')} ({row['peak_chance_within_1']['mean']:.2f})")
        lines.append(f"| {variant} | {_cell(row, 'top1')} | {_cell(row, 'shuffled_top1')} | "
                     f"{_cell(row, 'shuffle_drop')} | {_cell(row, 'hand_shuffle_drop')} | {_cell(row, 'a_s_spread')} | "
                     f"{_cell(row, 'a_t_entropy')} | {peak} |")
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
    parser = argparse.ArgumentParser(prog="python -m vpn_head.experiments.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, cache and runs")
    parser.add_argument("--n", type=int, default=240, help="synthetic videos (one independent take each)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--model", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                        help="VPNConfig override for the pose variants (repeatable)")
    parser.add_argument("--train", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                        help="TrainConfig override for every variant and the oracle, e.g. optimizer=adamw (repeatable)")
    parser.add_argument("--reading", choices=sorted(READINGS), default=None,
                        help="train every run under this reading (docs/readings.md); --model/--train override fields")
    parser.add_argument("--readings", nargs="+", default=None, choices=[OURS, *sorted(READINGS)],
                        help="several readings side by side (one row per variant and reading)")
    parser.add_argument("--joints-readings", nargs="+", default=[], choices=[OURS, *sorted(READINGS)],
                        help="add the joint-anchored A_S rows (JOINT_ANCHORED) under these readings")
    parser.add_argument("--no-oracle", dest="oracle", action="store_false")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the linear-probe row")
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
        per_seed, oracle, probe = [], [], []
        out = args.out or args.work / "fidelity.json"
        model = reading_model(args.reading, args.model)
        trainer = {**(TRAIN_READINGS[args.reading] if args.reading else {}), **dict(args.train)}
        rows = [(r, False) for r in (args.readings or [])] + [(r, True) for r in args.joints_readings]
        for seed in args.seeds:
            if not rows:
                results = run_variants(str(cache), str(runs), seed, args.epochs, tuple(args.variants), model,
                                       str(manifest), str(root), train_overrides=trainer)
            else:
                results = []
                for reading, joints in rows:
                    extra_model, extra_train = reading_overrides(reading)
                    variants = tuple(v for v in args.variants if v != "i3d" or not joints)
                    results += run_variants(
                        str(cache), str(runs), seed, args.epochs, variants,
                        {**extra_model, **(JOINT_ANCHORED if joints else {}), **model}, str(manifest), str(root),
                        train_overrides={**extra_train, **trainer},
                        label=f" ({reading}{', joints' if joints else ''})")
            per_seed.append(results)
            if args.oracle:
                oracle.append(train_oracle(str(cache), seed, args.epochs, str(manifest), str(root),
                                           model=model, train_overrides=trainer, runs_dir=str(runs)))
            if args.probe:
                probe.append(run_probe(cache, "ntu60", "cs", seed))
            print(f"seed {seed}: " + ", ".join(f"{r.get('label', r['variant'])} {r['top1']:.3f}"
                                               for r in per_seed[-1] + oracle[-1:] + probe[-1:]), flush=True)
            text = write_results(out, args, per_seed, oracle, probe)
    except (CacheError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


def write_results(out: Path, args: argparse.Namespace, per_seed: list[list[dict[str, Any]]],
                  oracle: list[dict[str, Any]], probe: list[dict[str, Any]]) -> str:
    """Write ``out`` (JSON) and its ``.md`` twin for the seeds done so far (after each seed: a stopped sweep keeps
    its finished seeds); returns the markdown."""
    table = summarise_seeds(per_seed, oracle, probe)
    done = args.seeds[:len(per_seed)]
    record = {"n": args.n, "seeds": done, "epochs": args.epochs, "model": dict(args.model),
              "train": dict(args.train), "reading": args.reading, "readings": args.readings,
              "joints_readings": args.joints_readings,
              "checkpoint_selected_on": CARVED_VAL, "split": "test", "table": table}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    text = (f"ntu60 cs test split, {len(done)} seed(s), best.pt (and the probe's C) chosen on {CARVED_VAL} "
            f"(training subjects held out), shuffled = test poses permuted across videos, hand-aware = from a video "
            f"whose class-carrying hand differs, mean ± sd:\n\n{format_table(table)}\n")
    atomic_write_text(out.with_suffix(".md"), text)
    return text


if __name__ == "__main__":
    sys.exit(main())
