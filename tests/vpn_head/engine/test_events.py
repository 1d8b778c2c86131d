"""The run's event log ``events.jsonl`` (``vpn_head.engine.events``), written by the training engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import tiny_config, write_tiny_cache
from vpn_head.engine import loop as engine
from vpn_head.engine.events import EVENTS_NAME, EventLog, read_events
from vpn_head.train.head import LOG_COLUMNS, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache") / "nucla", videos={"train": 3, "test": 1})


def _events(run: Path) -> list[dict]:
    lines = (run / EVENTS_NAME).read_text().splitlines()
    return [json.loads(line) for line in lines]  # strict: every line is one JSON object


def _epochs(events: list[dict]) -> list[int]:
    return [e["epoch"] for e in events if e["event"] == "epoch"]


def _same_as_train_log(events: list[dict], run: Path) -> None:
    """Each epoch record holds exactly the train_log.csv columns, with the same values."""
    log_df = pd.read_csv(run / "train_log.csv")
    records = [e for e in events if e["event"] == "epoch"]
    assert len(records) == len(log_df)
    for record, (_, row) in zip(records, log_df.iterrows()):
        assert set(record) == {"event", "time", *LOG_COLUMNS}
        for column in LOG_COLUMNS:
            value, expected = record[column], row[column]
            if isinstance(expected, str):
                assert value == expected, column
            elif math.isnan(expected):
                assert value is None, column
            else:
                assert value == pytest.approx(expected, rel=1e-12), column


def test_a_run_logs_start_every_epoch_and_end(tiny_cache, tmp_path):
    summary = train(tiny_config(tiny_cache, tmp_path, epochs=2))
    run = tmp_path / "tiny"
    events = _events(run)
    assert [e["event"] for e in events] == ["run_start", "epoch", "epoch", "run_end"]
    start, end = events[0], events[-1]
    assert (start["kind"], start["run"], start["start_epoch"], start["epochs"]) == ("head", "tiny", 0, 2)
    assert start["config"] == json.loads((run / "config.json").read_text())
    assert _epochs(events) == [1, 2]
    _same_as_train_log(events, run)
    assert (end["status"], end["epochs_done"], end["best_epoch"]) == ("complete", 2, summary["best_epoch"])
    assert end["best_value"] == pytest.approx(summary["best"]["top1"]) and end["error"] == ""


def test_resume_appends_without_repeating_an_epoch(tiny_cache, tmp_path):
    train(tiny_config(tiny_cache, tmp_path, epochs=1))
    train(tiny_config(tiny_cache, tmp_path, epochs=3))
    train(tiny_config(tiny_cache, tmp_path, epochs=3))  # finished: nothing runs, nothing is logged
    run = tmp_path / "tiny"
    events = _events(run)
    assert [e["event"] for e in events] == ["run_start", "epoch", "run_end", "run_start", "epoch", "epoch",
                                            "run_end"]
    assert [e["start_epoch"] for e in events if e["event"] == "run_start"] == [0, 1]
    assert [e["status"] for e in events if e["event"] == "run_end"] == ["complete", "complete"]
    assert _epochs(events) == [1, 2, 3]
    _same_as_train_log(events, run)


def test_a_log_ahead_of_its_checkpoint_is_reconciled(tiny_cache, tmp_path):
    """A log that holds an epoch 2 its checkpoint does not (an older last.pt restored) and a torn line, and lost
    epoch 1: the resumed run logs epoch 2 once, from the epoch that really ran, and epoch 1 comes back from the
    checkpoint's history."""
    train(tiny_config(tiny_cache, tmp_path, epochs=1))
    run = tmp_path / "tiny"
    events = _events(run)
    ghost = {**events[1], "epoch": 2, "train_loss": 123.0}
    lines = [json.dumps(e) for e in events if e["event"] != "epoch"] + [json.dumps(ghost), '{"event": "epo']
    (run / EVENTS_NAME).write_text("\n".join(lines) + "\n")
    train(tiny_config(tiny_cache, tmp_path, epochs=2))
    events = _events(run)
    assert _epochs(events) == [1, 2]
    recovered = [e for e in events if e.get("recovered_from_checkpoint")]
    assert [e["epoch"] for e in recovered] == [1]
    assert 123.0 not in [e.get("train_loss") for e in events]
    _same_as_train_log([{k: v for k, v in e.items() if k != "recovered_from_checkpoint"} for e in events], run)


def test_a_failed_run_says_why(tmp_path, monkeypatch):
    cache = write_tiny_cache(tmp_path / "nucla", videos={"train": 2, "test": 1})
    real_loss = engine.vpn_loss
    monkeypatch.setattr(engine, "vpn_loss", lambda out, labels, config: {
        **(losses := real_loss(out, labels, config)), "total": losses["total"] * float("nan")})
    with pytest.raises(engine.NonFiniteLossError):
        train(tiny_config(cache, tmp_path / "runs", epochs=1))
    events = _events(tmp_path / "runs" / "tiny")
    assert [e["event"] for e in events] == ["run_start", "run_end"]
    assert events[-1]["status"] == "failed" and events[-1]["epochs_done"] == 0
    assert events[-1]["error"].startswith("NonFiniteLossError: non-finite loss nan")
    assert events[-1]["best_value"] is None  # -inf: no epoch finished; strict JSON has no infinities


def test_non_finite_values_are_null_and_torn_lines_are_skipped(tmp_path, caplog):
    log = EventLog(tmp_path, ("epoch", "lr", "grad_x"), [])
    log.epoch({"epoch": 1, "lr": float("inf")})
    assert _events(tmp_path)[0] == {"event": "epoch", "time": _events(tmp_path)[0]["time"], "epoch": 1, "lr": None,
                                    "grad_x": None}
    with (tmp_path / EVENTS_NAME).open("a") as handle:
        handle.write("[1, 2]\n{not json\n")
    assert len(read_events(tmp_path / EVENTS_NAME)) == 1
    assert "line 2 is not a JSON object" in caplog.text and "line 3" in caplog.text
