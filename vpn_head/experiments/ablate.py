"""The paper's ablations (Tables 1-3) and the three readings (table 4, docs/readings.md) as runs under
``runs/<prefix>/``, summed up in ``ablation.md``.

``make ablate DATASET=… PROTOCOL=… [EPOCHS=…]`` trains every variant below (a run shared by several tables,
such as the full VPN, is trained once), scores each run's best checkpoint on the test split, and writes
``runs/<prefix>/ablation.md`` with top-1 and mean per-class accuracy per row. Rerunning skips finished runs
and evaluations, and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.cache.reader import CacheError
from pipeline.datasets.registry import get_dataset
from pipeline.utils.fileio import atomic_write_text
from vpn_head.engine.checkpoints import CheckpointError
from vpn_head.engine.config import TRAIN_READINGS
from vpn_head.engine.options import apply_reading, reading_model
from vpn_head.eval.evaluate import evaluate_run
from vpn_head.model.config import OFFICIAL_READING, PAPER_READING
from vpn_head.train.head import TrainConfig, add_training_arguments, config_from_args, train

log = logging.getLogger(__name__)

TABLE_TITLES: dict[str, str] = {
    "1": "Table 1: pose-driven attention and spatial embedding",
    "2": "Table 2: pose backbone and attention coupler",
    "3": "Table 3: embedding loss",
    "4": "Readings: the paper's text, the authors' code, this project's defaults (docs/readings.md)",
}


@dataclass(frozen=True)
class Ablation:
    """One row of an ablation table.

    Attributes:
        table: ``1``, ``2`` or ``3``.
        row: the row's label in the table.
        run: run directory name; rows with the same run share one trained model.
        variant: ``i3d`` | ``attention`` | ``vpn``.
        model: ``VPNConfig`` overrides of this row.
        train: ``TrainConfig`` overrides of this row (the authors' reading keeps the learning rate constant).
    """

    table: str
    row: str
    run: str
    variant: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("1", "I3D (no pose)", "i3d", "i3d"),
    Ablation("1", "I3D, the paper's classifier (pooled features not standardised)", "i3d-paper", "i3d",
             {"feature_norm": "none"}),
    Ablation("1", "I3D + pose attention (no embedding)", "attention", "attention"),
    Ablation("1", "VPN (attention + spatial embedding)", "vpn", "vpn"),
    Ablation("1", "VPN, the paper's reading (mean pose pooling, A_T sums to 1, Euclidean, no centring)",
             "vpn-paper", "vpn", dict(PAPER_READING)),
    Ablation("2", "GCN, coupler", "vpn", "vpn"),
    Ablation("2", "GCN, no coupler", "vpn-nocoupler", "vpn", {"coupler": False}),
    Ablation("2", "LSTM, coupler", "vpn-lstm", "vpn", {"pose_backbone": "lstm"}),
    Ablation("2", "LSTM, no coupler", "vpn-lstm-nocoupler", "vpn", {"pose_backbone": "lstm", "coupler": False}),
    Ablation("3", "contrastive (InfoNCE over the batch; the default)", "vpn", "vpn"),
    Ablation("3", "Euclidean (L2 of normalised embeddings; the paper)", "vpn-euclid", "vpn",
             {"embedding_loss": "euclid"}),
    Ablation("3", "KL(f_e || P_e)", "vpn-kl_fe_pe", "vpn", {"embedding_loss": "kl_fe_pe"}),
    Ablation("3", "KL(P_e || f_e)", "vpn-kl_pe_fe", "vpn", {"embedding_loss": "kl_pe_fe"}),
    Ablation("3", "bi-directional KL", "vpn-bikl", "vpn", {"embedding_loss": "bikl"}),
    Ablation("4", "attention, our defaults", "attention", "attention"),
    Ablation("4", "attention, the paper's reading", "attention-paper", "attention", dict(PAPER_READING)),
    Ablation("4", "attention, the authors' code", "attention-official", "attention", dict(OFFICIAL_READING),
             TRAIN_READINGS["official"]),
    Ablation("4", "VPN, our defaults", "vpn", "vpn"),
    Ablation("4", "VPN, the paper's reading", "vpn-paper", "vpn", dict(PAPER_READING)),
    Ablation("4", "VPN, the authors' code", "vpn-official", "vpn", dict(OFFICIAL_READING), TRAIN_READINGS["official"]),
)
"""The full VPN is GCN + coupler + the ``VPNConfig`` defaults (contrastive embedding loss); ``vpn-paper`` is the
paper's reading of the four fields whose defaults depart from it."""


def default_prefix(dataset: str, protocol: str) -> str:
    return f"ablate_{dataset}_{protocol}"


def run_configs(base: TrainConfig, tables: tuple[str, ...]) -> dict[str, TrainConfig]:
    """One ``TrainConfig`` per distinct run of ``tables``, keyed by run name (base overrides, then the row's)."""
    configs: dict[str, TrainConfig] = {}
    for ablation in ABLATIONS:
        if ablation.table in tables:
            config = replace(base, variant=ablation.variant, model={**base.model, **ablation.model},
                             run_name=ablation.run, **ablation.train)
            configs.setdefault(ablation.run, config)
    return configs


def evaluate_if_needed(run_dir: Path, split: str, num_workers: int, device: str) -> dict[str, Any]:
    """``evaluate_run`` on the best checkpoint, unless its metrics are already newer than ``best.pt``."""
    metrics_path = run_dir / f"eval_{split}" / "metrics.json"
    best = run_dir / "best.pt"
    if metrics_path.exists() and best.exists() and metrics_path.stat().st_mtime >= best.stat().st_mtime:
        return json.loads(metrics_path.read_text())
    return evaluate_run(run_dir, split=split, checkpoint="best", num_workers=num_workers, device=device)


def markdown_table(results: dict[str, dict[str, Any]], tables: tuple[str, ...], title: str, note: str,
                   headline: str) -> str:
    """The ablation tables as markdown, accuracies in percent; ``headline`` names the metric to bold."""
    lines = [f"# {title}", "", note, ""]
    for table in tables:
        lines += [f"## {TABLE_TITLES[table]}", "",
                  "| Model | run | top-1 (%) | mean per-class (%) | top-1 with shuffled poses (%) |",
                  "|---|---|---:|---:|---:|"]
        for ablation in ABLATIONS:
            if ablation.table != table:
                continue
            metrics = results[ablation.run]
            cells = {name: f"{100 * metrics[name]:.1f}" for name in ("top1", "mean_class")}
            cells[headline] = f"**{cells[headline]}**"
            shuffled = metrics.get("pose_shuffle")
            cells["shuffled"] = f"{100 * shuffled['top1']:.1f}" if isinstance(shuffled, dict) else "-"
            row = ablation.row.replace("|", "\\|")
            lines.append(f"| {row} | {ablation.run} | {cells['top1']} | {cells['mean_class']} | {cells['shuffled']} |")
        lines.append("")
    return "\n".join(lines)


def ablate(base: TrainConfig, tables: tuple[str, ...] = ("1", "2", "3", "4"), test_split: str = "test") -> Path:
    """Train and score every run of ``tables`` under ``base.runs_dir`` and write ``ablation.md`` there.

    Args:
        base: shared settings (dataset, protocol, epochs, cache, ...); ``runs_dir`` is the ablation folder.
        tables: which tables to run.
        test_split: split the table reports.

    Returns:
        The markdown file's path.
    """
    unknown = sorted(set(tables) - set(TABLE_TITLES))
    if unknown or not tables:
        raise ValueError(f"tables must be among {sorted(TABLE_TITLES)}, got {list(tables)}")
    configs = run_configs(base, tables)
    results: dict[str, dict[str, Any]] = {}
    for number, (run, config) in enumerate(configs.items(), start=1):
        log.info("ablation run %d/%d: %s", number, len(configs), run)
        selected_on = train(config)["eval_split"]
        results[run] = evaluate_if_needed(config.run_dir, test_split, config.num_workers, config.device)
    spec = get_dataset(base.dataset)
    note = (f"Accuracies on the {test_split} split, per video (max-pool of clip scores), of each run's best "
            f"checkpoint by {selected_on} {spec.metric}. Epochs: {base.epochs}, batch {base.batch_size}, "
            f"lr {base.lr}, seed {base.seed}. The headline metric ({spec.metric}) is in bold. \"Shuffled poses\": the "
            f"same checkpoint with every test video's poses taken from another video (- for the pose-free I3D row).")
    text = markdown_table(results, tables, f"VPN ablations: {base.dataset} {base.protocol}", note, spec.metric)
    out = Path(base.runs_dir) / "ablation.md"
    atomic_write_text(out, text)
    log.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.experiments.ablate", description=__doc__.split("\n\n")[0])
    add_training_arguments(parser)
    parser.add_argument("--tables", nargs="+", default=["1", "2", "3", "4"], choices=sorted(TABLE_TITLES))
    parser.add_argument("--prefix", default="", help="folder under --runs-dir (default: ablate_<dataset>_<protocol>)")
    parser.add_argument("--test-split", default="test", choices=("val", "test"))
    apply_reading(parser, argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.runs_dir = str(Path(args.runs_dir) / (args.prefix or default_prefix(args.dataset, args.protocol)))
    try:
        out = ablate(config_from_args(args, "vpn", reading_model(args.reading, args.model), ""),
                     tuple(dict.fromkeys(args.tables)),
                     args.test_split)
    except (CacheError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
