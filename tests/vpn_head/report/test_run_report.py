"""``make report``: figures of a head run, on a synthetic NTU dataset with real videos and a pixel-feature cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from pipeline.datasets import manifest
from tasks import cache as cache_tasks
from tests.helpers import SMALL_MODEL, synthetic_dataset
from vpn_head.engine.config import TrainConfig
from vpn_head.engine.metrics import per_class_accuracy
from vpn_head.report.figures import ReportError, plot_training_curves, upsample_attention
from vpn_head.report.run_report import main, make_report, select_clips
from vpn_head.train.head import train

LINK = re.compile(r"^- \[([^\]]+)\]\(([^)]+)\): (.+)$")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """12 synthetic NTU videos (cv: 8 train, 4 test), their pixel-feature cache, a vpn and an i3d run."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    synthetic_dataset(data, n=12, seed=3, min_frames=30, max_frames=70, manifest_path=root / "ntu60.csv")
    assert cache_tasks.main(["--dataset", "ntu60", "--manifest", str(root / "ntu60.csv"), "--cache-dir",
                             str(root / "cache"), "--extractor", "pixels", "--decode-workers", "0"]) == 0
    torch.set_num_threads(1)
    for variant, epochs in (("vpn", 2), ("i3d", 1)):
        train(TrainConfig(dataset="ntu60", protocol="cv", variant=variant, model=SMALL_MODEL, epochs=epochs,
                          batch_size=4, lr=0.05, num_workers=0, cache=str(root / "cache"),
                          runs_dir=str(root / "runs"), run_name=variant, device="cpu"))
    return {"root": root, "manifest": root / "ntu60.csv", "runs": root / "runs"}


def _index(report_dir: Path) -> dict[str, str]:
    """file -> caption of every figure index.md lists (link text and target must agree)."""
    entries = {}
    for line in (report_dir / "index.md").read_text().splitlines():
        if match := LINK.match(line):
            assert match[1] == match[2]
            entries[match[1]] = match[3]
    return entries


def _check_png(path: Path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200 and image.shape[2] in (3, 4)
    assert image.std() > 0.01  # not a blank canvas


# ----------------------------------------------------------------------------------------------------------
# whole report


def test_vpn_report_overlays_attention_on_video_frames_and_is_deterministic(runs):
    run = runs["runs"] / "vpn"
    figures = make_report(run, samples=3, manifest=runs["manifest"])
    report = run / "report"
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) == 3 + 3 and sorted(f.file for f in figures) == pngs
    assert {"training_curves.png", "per_class_accuracy.png", "tsne_embedding.png"} <= set(pngs)
    for name in pngs:
        _check_png(report / name)
    index = _index(report)
    assert sorted(index) == pngs
    attention = [name for name in pngs if name.startswith("attention_")]
    assert all("middle frame's person crop" in index[name] for name in attention)
    assert "embedding" in index["training_curves.png"]  # a vpn run logs every loss term
    # the paper's t-SNE figure: the 4 test clips' f_e and P_e, one map
    assert index["tsne_embedding.png"].startswith("t-SNE of the spatial embeddings of 4 test clips (4 classes)")
    # the 4 cv test videos are one per class: the first three classes in class order come first
    test_ids = [name.split("_", 2)[2][:-4] for name in attention]
    assert [int(sid[-3:]) for sid in test_ids] == [1, 2, 3]
    assert (run / "eval_test" / "predictions.csv").is_file()  # evaluate_run ran first
    text = (report / "index.md").read_text()
    assert "top-1" in text and "best.pt" in text
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    make_report(run, samples=3, manifest=runs["manifest"])
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before


def test_missing_video_or_manifest_draws_the_heatmap_alone_and_says_so(runs, tmp_path):
    run = runs["runs"] / "vpn"
    make_report(run, samples=2, manifest=runs["manifest"], data_root=tmp_path / "elsewhere")
    index = _index(run / "report")
    attention = sorted(name for name in index if name.startswith("attention_"))
    assert len(attention) == 2 and len(list((run / "report").glob("*.png"))) == 5  # old figures removed
    for name in attention:
        assert "heatmap alone" in index[name] and "video not found" in index[name]
        _check_png(run / "report" / name)
    make_report(run, samples=1, manifest=tmp_path / "none.csv", tsne_clips=0)
    (caption,) = [c for name, c in _index(run / "report").items() if name.startswith("attention_")]
    assert "heatmap alone" in caption and "none" in caption
    assert not (run / "report" / "tsne_embedding.png").exists()  # tsne_clips=0: no t-SNE figure


def test_i3d_report_skips_attention_with_a_note(runs):
    run = runs["runs"] / "i3d"
    make_report(run, samples=4, manifest=runs["manifest"])
    report = run / "report"
    assert sorted(p.name for p in report.glob("*.png")) == ["per_class_accuracy.png", "training_curves.png"]
    assert sorted(_index(report)) == ["per_class_accuracy.png", "training_curves.png"]
    assert "no pose attention" in (report / "index.md").read_text()
    assert "'i3d' has no spatial embedding (f_e, P_e): no t-SNE figure" in (report / "index.md").read_text()
    assert "zero throughout" in _index(report)["training_curves.png"]


def test_stale_evaluation_is_redone(runs):
    run = runs["runs"] / "i3d"
    make_report(run, samples=0)
    metrics_path = run / "eval_test" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "epoch": 99}))
    make_report(run, samples=0)
    assert json.loads(metrics_path.read_text())["epoch"] == metrics["epoch"]
    make_report(run, samples=0, checkpoint="last")
    assert json.loads(metrics_path.read_text())["checkpoint"] == "last.pt"


def test_cli_writes_the_report(runs, capsys):
    assert main(["--runs-dir", str(runs["runs"]), "--run", "i3d", "--split", "test"]) == 0
    assert "index.md: 2 figures" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# bad inputs


def test_missing_run_exits_non_zero_with_one_line_reason(tmp_path, capsys):
    assert main(["--runs-dir", str(tmp_path), "--run", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such run" in err and "nope" in err


def test_run_without_training_log_or_checkpoint_is_refused(tmp_path, runs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no train_log.csv"):
        make_report(tmp_path / "empty")
    (tmp_path / "empty" / "train_log.csv").write_text("epoch,lr\n1,0.01\n")
    assert main(["--runs-dir", str(tmp_path), "--run", "empty"]) == 1
    with pytest.raises(ValueError, match="samples"):
        make_report(runs["runs"] / "i3d", samples=-1)
    with pytest.raises(ValueError, match="split"):
        make_report(runs["runs"] / "i3d", split="dev")
    with pytest.raises(SystemExit):
        main(["--runs-dir", str(runs["runs"]), "--run", "i3d", "--samples", "-2"])


@pytest.mark.parametrize("named_kind", [True, False])
def test_fine_tune_run_is_refused_with_exit_code_2_and_a_one_line_reason(runs, tmp_path, capsys, named_kind):
    """Its attention would come from cached frozen-I3D features, not from its own I3D: no figures, a reason."""
    run = tmp_path / "ft"
    run.mkdir()
    (run / "train_log.csv").write_text((runs["runs"] / "vpn" / "train_log.csv").read_text())
    ckpt = torch.load(runs["runs"] / "vpn" / "best.pt", weights_only=True)
    ckpt["i3d"] = {}  # only a fine-tune checkpoint has the trunk's weights
    if named_kind:
        ckpt["kind"] = "finetune"
    else:
        ckpt.pop("kind")  # written before checkpoints named their kind
    torch.save(ckpt, run / "best.pt")
    assert main(["--runs-dir", str(tmp_path), "--run", "ft"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ft is an end-to-end fine-tune run" in err and "fine-tuned I3D" in err
    assert not (run / "report").exists()


# ----------------------------------------------------------------------------------------------------------
# pieces


def test_select_clips_takes_one_per_class_first():
    labels = np.array([2, 0, 0, 1, 2, 0])
    assert select_clips(labels, 4).tolist() == [1, 3, 0, 2]
    assert select_clips(labels, 10).tolist() == [1, 3, 0, 2, 4, 5]
    assert select_clips(labels, 0).tolist() == []


def test_per_class_accuracy_counts_videos_and_marks_absent_classes():
    accuracy, count = per_class_accuracy(np.array([0, 0, 0, 2]), np.array([0, 1, 0, 1]), 3)
    assert count.tolist() == [3, 0, 1]
    assert accuracy[0] == pytest.approx(2 / 3) and np.isnan(accuracy[1]) and accuracy[2] == 0
    with pytest.raises(ValueError, match="lie in"):
        per_class_accuracy(np.array([3]), np.array([0]), 3)


def test_upsample_attention_keeps_cells_in_place():
    grid = np.zeros((7, 7), np.float32)
    grid[2, 5] = 1.0
    up = upsample_attention(grid, 224)
    assert up.shape == (224, 224)
    y, x = np.unravel_index(up.argmax(), up.shape)
    assert 64 <= y < 96 and 160 <= x < 192  # inside the 32-pixel cell (2, 5)
    assert np.allclose(upsample_attention(np.full((7, 7), 0.3), 224), 0.3)
    with pytest.raises(ValueError, match="square"):
        upsample_attention(np.zeros((7, 8)), 224)


def test_training_curves_need_epochs(tmp_path):
    log = pd.DataFrame({"epoch": [1, 2], "lr": [0.1, 0.01], "train_loss": [2.0, 1.0], "train_acc": [0.2, 0.5]})
    caption = plot_training_curves(log, tmp_path / "curves.png", "t")
    _check_png(tmp_path / "curves.png")
    assert "total" in caption and "2 epoch" in caption
    with pytest.raises(ReportError, match="no epochs"):
        plot_training_curves(log.iloc[:0], tmp_path / "empty.png", "t")
