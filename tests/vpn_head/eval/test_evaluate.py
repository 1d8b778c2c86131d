"""Metrics against hand-computed values, and ``evaluate_run`` on a hand-built model with known predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.metrics import confusion_matrix as sklearn_confusion

from pipeline.datasets.nucla import parse_sample_name
from pipeline.datasets.registry import get_dataset
from tests.helpers import tiny_sample_id, write_tiny_cache
from vpn_head.engine.checkpoints import HEAD, CheckpointError, save_checkpoint
from vpn_head.engine.metrics import confusion_matrix, max_pool_scores, mean_class_accuracy, top1_accuracy, video_scores
from vpn_head.eval.evaluate import evaluate_run, main
from vpn_head.model.config import VPNConfig
from vpn_head.model.vpn import VPN
from vpn_head.train.head import TrainConfig

# ----------------------------------------------------------------------------------------------------------
# metrics


def test_top1_and_mean_class_accuracy_by_hand():
    y_true = np.array([0, 0, 0, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 0])
    assert top1_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # recalls: class 0 2/3, class 1 1/1, class 2 1/2
    assert mean_class_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_class_accuracy_ignores_classes_absent_from_y_true():
    y_true = np.array([0, 0, 1, 1, 4])
    y_pred = np.array([0, 3, 1, 1, 2])  # class 3 is predicted but never true; 2 and 3 do not count
    assert mean_class_accuracy(y_true, y_pred) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert mean_class_accuracy(y_true, y_pred) == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 7, 200), rng.integers(0, 9, 200)
    assert mean_class_accuracy(y_true, y_pred) == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)


def test_max_pool_over_clips():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    pooled = max_pool_scores(scores, np.array([0, 0, 1, 1]))
    assert pooled.tolist() == [[0.8, 0.9], [0.6, 0.7]]
    assert max_pool_scores(scores, np.array([1, 0, 0, 1])).tolist() == [[0.8, 0.7], [0.6, 0.9]]
    with pytest.raises(ValueError, match="none empty"):
        max_pool_scores(scores, np.array([0, 0, 2, 2]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        max_pool_scores(scores, np.array([0, 1]))


def test_video_scores_pools_each_video_and_keeps_its_label():
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.7, 0.3]])
    pooled, labels, ids = video_scores(probs, np.array([1, 1, 0]), np.array(["v1", "v1", "v2"]))
    assert pooled.tolist() == [[0.6, 0.9], [0.7, 0.3]] and labels.tolist() == [1, 0] and ids.tolist() == ["v1", "v2"]


def test_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match="equal length"):
        top1_accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="non-empty"):
        mean_class_accuracy(np.array([]), np.array([]))


# ----------------------------------------------------------------------------------------------------------
# evaluate_run on a model whose predictions we compute by hand

CLASSES = (0, 1, 2)
TEST_VIDEOS = {0: 1, 1: 2, 2: 3}  # imbalanced, so top-1 and mean-class accuracy differ
SCALE = 4.0


def _shown(sample_id: str, clip: int) -> tuple[int, float]:
    """Which class block a test clip lights up, and how brightly (clip 1 of some videos misleads)."""
    sample = parse_sample_name(sample_id)
    c, v = sample.label, sample.episode
    if clip == 0:
        return c, 1.0
    misleading = (c, v) in {(1, 1), (2, 0)}
    return ((c + 1) % 3, 1.5) if misleading else ((c + 1) % 3, 0.5)


def _features(c: int, sample_id: str, clip: int, rng) -> np.ndarray:
    features = np.zeros((1024, 8, 7, 7), dtype=np.float32)
    shown, amplitude = _shown(sample_id, clip) if parse_sample_name(sample_id).view == 3 else (c, 1.0)
    features[16 * shown:16 * (shown + 1)] = amplitude
    return features


@pytest.fixture(scope="module")
def known_run(tmp_path_factory) -> Path:
    """A run dir whose best.pt is an i3d head with logits_k = SCALE * mean of channel block k."""
    root = tmp_path_factory.mktemp("eval")
    cache = write_tiny_cache(root / "cache", "nucla", CLASSES, {"train": 1, "test": TEST_VIDEOS},
                             {"train": 1, "test": 2}, feature_fn=_features)
    vpn_config = VPNConfig.for_dataset("nucla", "v3_12", variant="i3d")
    model = VPN(vpn_config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        for k in range(vpn_config.num_classes):
            model.classifier.weight[k, 16 * k:16 * (k + 1)] = SCALE / 16
    run = root / "runs" / "known"
    run.mkdir(parents=True)
    config = TrainConfig("nucla", "v3_12", variant="i3d", cache=str(cache), runs_dir=str(root / "runs"),
                         run_name="known")
    save_checkpoint(run / "best.pt", HEAD, epoch=7, model=model.state_dict(), train_config=config.to_dict(),
                    vpn_config=vpn_config.to_dict())
    return run


def _expected() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Sample ids, labels, max-pooled probabilities and predictions computed with numpy."""
    ids, labels, pooled = [], [], []
    for c in CLASSES:
        for v in range(TEST_VIDEOS[c]):
            sample_id = tiny_sample_id("nucla", "test", c, v)
            clip_probs = []
            for clip in range(2):
                shown, amplitude = _shown(sample_id, clip)
                logits = np.zeros(10)
                logits[shown] = SCALE * amplitude  # 16 channels of mean `amplitude`, each weighted SCALE / 16
                clip_probs.append(np.exp(logits) / np.exp(logits).sum())
            ids.append(sample_id)
            labels.append(c)
            pooled.append(np.max(clip_probs, axis=0))
    pooled = np.array(pooled)
    return ids, np.array(labels), pooled, pooled.argmax(axis=1)


def test_evaluate_run_writes_correct_files(known_run):
    metrics = evaluate_run(known_run, split="test", checkpoint="best", device="cpu", probabilities=True)
    ids, labels, pooled, pred = _expected()
    assert pred.tolist() == [0, 1, 2, 0, 2, 2]  # (c1, v1) and (c2, v0) are misled by their second clip
    out = known_run / "eval_test"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert metrics["top1"] == pytest.approx(4 / 6)
    assert metrics["mean_class"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert metrics["num_videos"] == 6 and metrics["num_clips"] == 12 and metrics["epoch"] == 7
    assert metrics["headline_metric"] == "top1"

    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sample_id"] for r in rows] == ids
    assert [int(r["label"]) for r in rows] == labels.tolist()
    assert [int(r["pred"]) for r in rows] == pred.tolist()
    names = get_dataset("nucla").protocol_classes("v3_12")
    assert rows[3]["label_name"] == names[2] and rows[3]["pred_name"] == names[0]
    np.testing.assert_allclose([float(r["score"]) for r in rows], pooled.max(axis=1), atol=1e-5)
    np.testing.assert_allclose([[float(r[f"p_{k}"]) for k in range(10)] for r in rows], pooled, atol=1e-5)

    with open(out / "confusion.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0][1:] == list(names)
    counts = np.array([[int(x) for x in row[1:]] for row in table[1:]])
    np.testing.assert_array_equal(counts, sklearn_confusion(labels, pred, labels=range(10)))
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_run_errors(known_run, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        evaluate_run(known_run, checkpoint="last")
    with pytest.raises(CheckpointError, match="no such run"):
        evaluate_run(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    ckpt = torch.load(known_run / "best.pt", weights_only=True)
    ckpt["vpn_config"]["feature_channels"] = 512  # the saved weights are for 1024 channels
    torch.save(ckpt, broken / "best.pt")
    with pytest.raises(CheckpointError, match=f"{broken / 'best.pt'}: its weights do not fit the model"):
        evaluate_run(broken)
    assert main(["--run-dir", str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no such run" in err and "\n" not in err
