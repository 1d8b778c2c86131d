"""``make runs``: the comparison table of the runs under a folder (``vpn_head.report.runs_table``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import tiny_config, write_tiny_cache
from vpn_head.eval.evaluate import evaluate_run
from vpn_head.report.runs_table import COLUMNS, collect_runs, config_differences, format_table, main, table_rows
from vpn_head.train.head import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two tiny head runs (vpn 2 epochs, evaluated on test; i3d 1 epoch at another lr) and a fine-tune's files."""
    root = tmp_path_factory.mktemp("runs_table")
    cache = write_tiny_cache(root / "nucla", videos={"train": 3, "test": 1})
    runs = root / "runs"
    train(tiny_config(cache, runs, epochs=2, run_name="a_vpn"))
    train(tiny_config(cache, runs, epochs=1, run_name="b_i3d", variant="i3d", lr=0.1))
    evaluate_run(runs / "a_vpn", "test", device="cpu")
    finetune = runs / "c_finetune"  # what vpn_head.train.finetune writes, written by hand: the table only reads files
    finetune.mkdir()
    config = json.loads((runs / "a_vpn" / "config.json").read_text())
    (finetune / "config.json").write_text(json.dumps({"finetune": {**config["train"], "per_gpu_batch": 2},
                                                      "model": config["model"]}))
    (finetune / "metrics.json").write_text(json.dumps({
        "epochs_done": 1, "epochs": 4, "checkpoint_selected_on": "test", "headline_metric": "mean_class",
        "best": {"top1": 0.5, "mean_class": 0.25}, "test": {"top1": 0.75, "mean_class": 0.625}}))
    (runs / "d_broken").mkdir()
    (runs / "d_broken" / "config.json").write_text("{not json")
    (runs / "not_a_run").mkdir()  # no config.json: not listed
    return runs


def _cells(runs: Path) -> dict[str, dict[str, str]]:
    return {row[0]: dict(zip(COLUMNS, row)) for row in table_rows(collect_runs(runs))}


def test_the_table_compares_two_tiny_runs(runs):
    cells = _cells(runs)
    assert list(cells) == ["a_vpn", "b_i3d", "c_finetune", "d_broken"]
    a, b = cells["a_vpn"], cells["b_i3d"]
    metrics = json.loads((runs / "a_vpn" / "metrics.json").read_text())
    test = json.loads((runs / "a_vpn" / "eval_test" / "metrics.json").read_text())
    assert (a["kind"], a["variant"], a["dataset/protocol"], a["epochs"]) == ("head", "vpn", "nucla/v3_12", "2/2")
    assert a["best on"] == "val_carved" == metrics["checkpoint_selected_on"]
    assert a["best val"] == f"top1 {metrics['best']['top1']:.3f}"
    assert a["test top-1"] == f"{test['top1']:.3f}" and a["test mean-class"] == f"{test['mean_class']:.3f}"
    assert a["shuffle drop"] == f"{test['pose_shuffle']['drop_top1']:.3f}"
    assert a["config vs first run"] == "(reference)"
    assert (b["kind"], b["variant"], b["epochs"], b["test top-1"], b["shuffle drop"]) == ("head", "i3d", "1/1", "-",
                                                                                       "-")
    assert b["config vs first run"] == "epochs=1 lr=0.1 model.variant=i3d"


def test_a_finetune_and_an_unreadable_run_get_their_rows(runs):
    cells = _cells(runs)
    c, d = cells["c_finetune"], cells["d_broken"]
    assert (c["kind"], c["epochs"], c["best on"], c["best val"]) == ("finetune", "1/4", "test", "mean_class 0.250")
    assert (c["test top-1"], c["test mean-class"], c["shuffle drop"]) == ("0.750", "0.625", "-")
    assert c["config vs first run"] == "per_gpu_batch=2"
    assert d["config vs first run"].startswith("unreadable: config.json: unreadable (")
    assert d["kind"] == "-"


def test_text_and_markdown_output(runs, capsys):
    assert main(["--runs-dir", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "kind", "variant"] and len(lines) == 5
    assert lines[1].index("head") == lines[0].index("kind")  # aligned columns
    markdown = format_table(collect_runs(runs), "markdown").splitlines()
    assert markdown[1] == "|" + "---|" * len(COLUMNS) and markdown[2].startswith("| a_vpn | head | vpn |")


def test_config_differences_name_missing_keys_and_shorten_lists():
    assert config_differences({"a": 1, "e": list(range(9))}, {"a": 1, "b": 2, "e": [0]}) == "b=- e=[9 items]"


def test_no_runs_folder_or_no_runs_exit_1_with_one_line(tmp_path, capsys):
    assert main(["--runs-dir", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no runs in it" in err and err.count("\n") == 1


def test_make_runs_runs_the_table(runs):
    result = subprocess.run(["make", "-s", "--no-print-directory", "runs", f"RUNS_DIR={runs}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("a_vpn")
