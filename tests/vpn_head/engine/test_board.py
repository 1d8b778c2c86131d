"""TensorBoard scalars of a run (``vpn_head.engine.board``): written by the engine and ``make eval`` when the
package is installed, skipped cleanly when it is not."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import tiny_config, write_tiny_cache
from vpn_head.engine.board import BOARD_DIR, flat_scalars
from vpn_head.eval.evaluate import evaluate_run
from vpn_head.train.head import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_flat_scalars_keeps_finite_numbers_only():
    values = {"top1": 0.5, "ok": True, "name": "x", "nan": math.nan, "attention": {"spread": 0.1, "cells": [1, 2]}}
    assert flat_scalars(values, "eval_test") == {"eval_test/top1": 0.5, "eval_test/attention/spread": 0.1}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_run_and_its_evaluation_write_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (requirements.txt pins it)")
    cache = write_tiny_cache(tmp_path / "cache" / "nucla", videos={"train": 3, "test": 1})
    train(tiny_config(cache, tmp_path / "runs", epochs=2))
    run = tmp_path / "runs" / "tiny"
    assert list((run / BOARD_DIR).glob("events.out.tfevents.*"))
    scalars = _scalars(run / BOARD_DIR)
    log_df = pd.read_csv(run / "train_log.csv")
    split = log_df["eval_split"].iloc[0]
    assert [step for step, _ in scalars["loss/total"]] == [1, 2]
    assert [v for _, v in scalars["loss/total"]] == pytest.approx(log_df["train_loss"].tolist(), rel=1e-6)
    assert [v for _, v in scalars[f"{split}/top1"]] == pytest.approx(log_df["eval_top1"].tolist())
    assert "lr" in scalars and "loss/embedding" in scalars
    metrics = evaluate_run(run, split="test")
    scalars = _scalars(run / BOARD_DIR)
    assert scalars["eval_test/top1"][-1][1] == pytest.approx(metrics["top1"])
    assert "eval_test/pose_shuffle/top1" in scalars and any(t.startswith("eval_test/attention/") for t in scalars)
