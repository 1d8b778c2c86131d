"""``make runs [RUNS_DIR=runs]``: one table comparing the runs under a folder.

``python -m vpn_head.report.runs_table --runs-dir runs [--format text|markdown]`` reads, per run folder (one holding a
``config.json``), the files the trainers and ``make eval`` write: ``config.json`` (kind, variant, dataset,
protocol, the config), ``metrics.json`` (epochs done, the split that chose ``best.pt``, its headline metric) and
``eval_test/metrics.json`` (test top-1 and mean per-class accuracy, and the pose-shuffle drop in top-1 that
``make eval`` records for pose variants; a fine-tune's own ``metrics.json["test"]`` when there is no
``eval_test``). The last column lists the config values in which a run differs from the first run of the table
(runs sorted by name; ``run_name`` and ``runs_dir`` are left out, a long list shows as its length). A value the
files do not hold is ``-``; a run whose files cannot be read gets a row naming the file and the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.utils.cli import run_cli
from vpn_head.engine.loop import CONFIG_SECTIONS

log = logging.getLogger(__name__)

EVAL_TEST = "eval_test"
IGNORED_KEYS: frozenset[str] = frozenset({"run_name", "runs_dir", "cache.folder", "cache.hash"})
"""Config keys that name where a run lives, not what it is: never listed as differences (the cache a run reads is
its trainer config's ``cache``; ``cache.folder``/``cache.hash`` are the resolved identity the resume check uses)."""
COLUMNS: tuple[str, ...] = ("run", "kind", "variant", "dataset/protocol", "epochs", "best on", "best val",
                            "test top-1", "test mean-class", "shuffle drop", "config vs first run")
FORMATS: tuple[str, ...] = ("text", "markdown")
MISSING = "-"


class RunsTableError(ValueError):
    """There is no runs folder, or no run in it."""


@dataclass
class RunSummary:
    """What the table shows of one run (None: the files do not say).

    Attributes:
        name: the run folder's name.
        kind: ``head`` or ``finetune`` (from the ``config.json`` section).
        variant: ``i3d`` | ``attention`` | ``vpn``.
        dataset: dataset name.
        protocol: protocol name.
        epochs_done: finished epochs.
        epochs: epochs asked for.
        selected_on: the split that chose ``best.pt``.
        metric: the headline metric (``top1`` or ``mean_class``).
        best: the headline metric of ``best.pt`` on ``selected_on``.
        test_top1: test top-1 (video level).
        test_mean_class: test mean per-class accuracy.
        test_checkpoint: the checkpoint the test scores are of.
        shuffle_drop: test top-1 minus top-1 with the poses shuffled across videos.
        config: the flattened config (``section.key`` with the trainer section's name dropped).
        problem: why a file of the run could not be read ("" when all could).
    """

    name: str
    kind: str | None = None
    variant: str | None = None
    dataset: str | None = None
    protocol: str | None = None
    epochs_done: int | None = None
    epochs: int | None = None
    selected_on: str | None = None
    metric: str | None = None
    best: float | None = None
    test_top1: float | None = None
    test_mean_class: float | None = None
    test_checkpoint: str | None = None
    shuffle_drop: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    problem: str = ""


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, None when the file does not exist.

    Raises:
        ValueError: the file is unreadable or not a JSON object (the message names it).
    """
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.name}: unreadable ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path.name}: not a JSON object")
    return value


def flatten_config(saved: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` as flat keys: the trainer section's fields by name, the others as ``section.key``."""
    flat: dict[str, Any] = {}
    for section, values in saved.items():
        if not isinstance(values, dict):
            flat[section] = values
            continue
        prefix = "" if section in CONFIG_SECTIONS.values() else f"{section}."
        for key, value in values.items():
            if isinstance(value, dict):
                flat.update({f"{prefix}{key}.{k}": v for k, v in value.items()})
            else:
                flat[f"{prefix}{key}"] = value
    if "model.variant" in flat:  # the trainer's variant is the model's: list it once
        flat.pop("variant", None)
    return {k: v for k, v in flat.items() if k not in IGNORED_KEYS}


def summarise_run(run_dir: Path) -> RunSummary:
    """The table row of one run folder (``problem`` says what could not be read)."""
    row = RunSummary(run_dir.name)
    try:
        saved = _read_json(run_dir / "config.json") or {}
        kinds = [kind for kind, section in CONFIG_SECTIONS.items() if isinstance(saved.get(section), dict)]
        if len(kinds) != 1:
            raise ValueError(f"config.json: not a run config (sections {sorted(saved)})")
        row.kind = kinds[0]
        trainer = saved[CONFIG_SECTIONS[row.kind]]
        model = saved.get("model") if isinstance(saved.get("model"), dict) else {}
        row.variant = model.get("variant", trainer.get("variant"))
        row.dataset, row.protocol, row.epochs = trainer.get("dataset"), trainer.get("protocol"), trainer.get("epochs")
        row.config = flatten_config(saved)
        metrics = _read_json(run_dir / "metrics.json")
        if metrics is None:
            row.epochs_done = 0
        else:
            row.epochs_done = metrics.get("epochs_done")
            row.epochs = metrics.get("epochs", row.epochs)
            row.selected_on = metrics.get("checkpoint_selected_on", metrics.get("eval_split"))
            row.metric = metrics.get("headline_metric")
            row.best = (metrics.get("best") or {}).get(row.metric) if row.metric else None
        evaluation = _read_json(run_dir / EVAL_TEST / "metrics.json")
        if evaluation is not None:
            row.test_top1, row.test_mean_class = evaluation.get("top1"), evaluation.get("mean_class")
            row.test_checkpoint = evaluation.get("checkpoint")
            shuffle = evaluation.get("pose_shuffle")
            row.shuffle_drop = shuffle.get("drop_top1") if isinstance(shuffle, dict) else None
        elif metrics is not None and isinstance(metrics.get("test"), dict):  # a fine-tune scores test itself
            row.test_top1, row.test_mean_class = metrics["test"].get("top1"), metrics["test"].get("mean_class")
            row.test_checkpoint = "best.pt"
    except (ValueError, AttributeError, TypeError) as error:
        row.problem = f"{error}" if isinstance(error, ValueError) else f"unexpected content ({error})"
    return row


def collect_runs(runs_dir: str | os.PathLike) -> list[RunSummary]:
    """A row per run folder (a sub-folder with a ``config.json``) of ``runs_dir``, sorted by name.

    Raises:
        RunsTableError: ``runs_dir`` is not a folder or holds no run.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunsTableError(f"{runs_dir}: no such folder (train a run first with `make train-head`)")
    rows = [summarise_run(p) for p in sorted(runs_dir.iterdir()) if (p / "config.json").is_file()]
    if not rows:
        raise RunsTableError(f"{runs_dir}: no runs in it (a run is a folder with a config.json)")
    return rows


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} items]"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def config_differences(config: dict[str, Any], reference: dict[str, Any]) -> str:
    """``key=value`` for every key whose value differs from (or is absent in) ``reference``, sorted by key."""
    keys = sorted(set(config) | set(reference))
    return " ".join(f"{k}={_show(config[k]) if k in config else MISSING}" for k in keys
                    if config.get(k, MISSING) != reference.get(k, MISSING))


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def table_rows(runs: list[RunSummary]) -> list[list[str]]:
    """The table's cells, one list per run, in ``COLUMNS`` order."""
    reference = next((r.config for r in runs if not r.problem), {})
    cells = []
    for k, run in enumerate(runs):
        if run.problem:
            cells.append([run.name, *[MISSING] * (len(COLUMNS) - 2), f"unreadable: {run.problem}"])
            continue
        test_suffix = "" if run.test_checkpoint in (None, "best.pt") else f" ({run.test_checkpoint})"
        best = f"{run.metric} {_number(run.best)}" if run.metric else MISSING
        cells.append([
            run.name, run.kind or MISSING, run.variant or MISSING, f"{run.dataset}/{run.protocol}",
            f"{run.epochs_done if run.epochs_done is not None else MISSING}/{run.epochs or MISSING}",
            run.selected_on or MISSING, best, _number(run.test_top1) + test_suffix,
            _number(run.test_mean_class), _number(run.shuffle_drop),
            "(reference)" if run.config is reference else config_differences(run.config, reference) or "same",
        ])
    return cells


def format_table(runs: list[RunSummary], fmt: str = "text") -> str:
    """The comparison table as aligned text or a Markdown table."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    rows = [list(COLUMNS), *table_rows(runs)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join([lines[0], "|" + "---|" * len(COLUMNS), *lines[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.report.runs_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default="runs", help="the folder whose runs are compared")
    parser.add_argument("--format", default="text", choices=FORMATS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(lambda: format_table(collect_runs(args.runs_dir), args.format), (RunsTableError,), status=1)


if __name__ == "__main__":
    sys.exit(main())
