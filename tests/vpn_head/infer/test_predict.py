"""``make predict``: raw videos through the cache's and eval's code path, on synthetic NTU videos and the real pair."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import shared_path
from vpn_head.eval.evaluate import evaluate_run
from vpn_head.infer import predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_predict_agrees_with_eval_on_cached_videos(runs, tmp_path):
    """Same top-1 and the same probabilities (float16 storage) as ``make eval`` on the cache, video by video."""
    evaluate_run(runs["run"], split="test", out_dir=tmp_path / "eval", probabilities=True)
    scored = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("sample_id")
    assert len(scored) == 4
    out = tmp_path / "predict"
    assert predict.main(["--run", str(runs["run"]), "--input", str(runs["manifest"]), "--out", str(out),
                         "--topk", "3"]) == 0
    for sample_id, row in scored.iterrows():
        record = json.loads((out / f"{sample_id}.json").read_text())
        assert record["clips"] == 2
        assert record["top_k"][0]["label"] == row["pred"]
        wanted = row[[f"p_{k}" for k in range(len(record["probabilities"]))]].to_numpy(float)
        np.testing.assert_allclose(record["probabilities"], wanted, atol=2e-5)
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 12 and list(table.columns[:3]) == ["sample_id", "pred", "pred_name"]
    assert "top3_p" in table.columns and "top4_p" not in table.columns


def test_a_folder_shows_progress_resumes_and_records_bad_inputs(runs, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(runs["data"], data)
    videos = sorted(data.rglob("*_rgb.avi"))
    skeletons = sorted(data.rglob("*.skeleton"))
    videos[0].write_bytes(b"not a video at all")  # unreadable
    skeletons[1].unlink()  # a video without its skeleton
    out = tmp_path / "out"
    caplog.set_level("INFO")
    assert predict.main(["--run", str(runs["run"]), "--input", str(data), "--out", str(out), "--batch-size",
                         "8"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary == {"predicted": 10, "skipped": 0, "failed": 2, "out": str(out)}
    failures = pd.read_csv(out / "failures.csv")
    assert sorted(failures["stage"]) == ["decode", "manifest"]
    assert failures.set_index("stage").loc["manifest", "reason"] == "skeleton missing"
    assert sum(line.count(" | ") == 4 for line in printed.splitlines()) == 10  # one top-5 line per video
    assert len(list(out.glob("S*.json"))) == 10
    # a second run resumes: nothing is scored again, the failures are retried and recorded again
    assert predict.main(["--run", str(runs["run"]), "--input", str(data), "--out", str(out)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["predicted"] == 0 and again["skipped"] == 10 and again["failed"] == 2
    assert len(pd.read_csv(out / "predictions.csv")) == 10


def test_a_mismatched_skeleton_or_a_missing_input_is_one_clear_line(runs, tmp_path, capsys):
    videos = sorted(runs["data"].rglob("*_rgb.avi"))
    alien = tmp_path / "alien.skeleton"
    alien.write_text("not a skeleton\n")
    out = tmp_path / "out"
    assert predict.main(["--run", str(runs["run"]), "--input", str(videos[0]), "--skeleton", str(alien),
                         "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "failed at skeleton" in captured.out
    assert pd.read_csv(out / "failures.csv")["stage"].tolist() == ["skeleton"]
    assert predict.main(["--run", str(runs["run"]), "--input", str(tmp_path / "nope.avi")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: INPUT") and "\n" not in err
    assert predict.main(["--run", str(tmp_path / "no_run"), "--input", str(videos[0])]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def _first_frames(text: str, n: int) -> str:
    """An NTU ``.skeleton`` text cut to its first ``n`` frames (each frame: a body count, then 27 lines a body)."""
    lines, at, kept = text.splitlines(), 1, []
    for _ in range(n):
        size = 1 + 27 * int(lines[at])
        kept += lines[at:at + size]
        at += size
    return "\n".join([str(n), *kept]) + "\n"


def test_the_real_ntu_pair(runs, tmp_path, capsys):
    """The real NTU video + skeleton (1920 x 1080) through the synthetic run: the path, not the accuracy."""
    video = shared_path("samples", "ntu", "S001C001P001R001A001_rgb.avi")
    out = tmp_path / "real"
    assert predict.main(["--run", str(runs["run"]), "--input", str(video), "--out", str(out), "--topk", "2"]) == 0
    record = json.loads((out / "S001C001P001R001A001.json").read_text())
    assert record["true_action"] == "drink water" and record["skeleton"].endswith("S001C001P001R001A001.skeleton")
    assert len(record["top_k"]) == 2 and abs(sum(record["probabilities"]) - 1) < 1e-4
    assert "S001C001P001R001A001: " in capsys.readouterr().out
    # the real video with a 20-frame skeleton (its own, cut short: 103 frames are > 3x as many): a mismatch
    short = tmp_path / "short.skeleton"
    short.write_text(_first_frames(video.with_name("S001C001P001R001A001.skeleton").read_text(), 20))
    assert predict.main(["--run", str(runs["run"]), "--input", str(video), "--skeleton", str(short), "--out",
                         str(tmp_path / "mismatch")]) == 1
    (reason,) = pd.read_csv(tmp_path / "mismatch" / "failures.csv")["reason"]
    assert "not the same recording" in reason
