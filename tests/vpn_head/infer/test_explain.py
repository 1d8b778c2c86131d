"""``make explain``: the crop strip with A_ST, the joint heatmap and the top-k as a PNG, the clip as an MP4."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from matplotlib.image import imread

from pipeline.datasets.registry import get_dataset
from tests.conftest import shared_path
from vpn_head.infer import explain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check(out: Path, sample_id: str) -> dict:
    """The three files: a PNG of real size and content, an MP4 of the clip's 64 frames, the JSON; returns it."""
    record = json.loads((out / f"{sample_id}_explain.json").read_text())
    png = out / f"{sample_id}_explain.png"
    assert 30_000 < png.stat().st_size < 600_000
    image = imread(png)
    assert image.shape[0] > 500 and image.shape[1] > 1000 and image.std() > 0.05
    video = cv2.VideoCapture(str(out / f"{sample_id}_explain.mp4"))
    frames = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        assert frame.shape == (224, 224, 3)
        frames += 1
    video.release()
    assert frames == record["video_frames"] == 64
    return record


def test_topological_order_walks_the_ntu_skeleton_from_its_centre():
    spec = get_dataset("ntu60")
    order = [spec.joints[j] for j in explain.topological_order(spec)]
    assert sorted(order) == sorted(spec.joints) and order[0] == spec.joints[spec.centre_joint]
    arm = order.index("ShoulderLeft")
    assert order[arm:arm + 3] == ["ShoulderLeft", "ElbowLeft", "WristLeft"]  # a limb stays together


def _pair(data: Path, i: int) -> tuple[Path, Path, str]:
    """The ``i``-th synthetic video, its skeleton (in another folder) and its sample id."""
    video = sorted(data.rglob("*_rgb.avi"))[i]
    sample_id = video.name.removesuffix("_rgb.avi")
    return video, next(data.rglob(f"{sample_id}.skeleton")), sample_id


def test_explain_a_vpn_run_on_a_synthetic_video(runs, tmp_path, capsys):
    video, skeleton, sample_id = _pair(runs["data"], 0)
    assert explain.main(["--run", str(runs["run"]), "--input", str(video), "--skeleton", str(skeleton), "--out",
                         str(tmp_path), "--topk", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("_explain.png")
    record = _check(tmp_path, sample_id)
    assert len(record["attention_temporal"]) == 8 and abs(sum(record["attention_temporal"]) - 8) < 1e-3
    assert len(record["joint_order"]) == 25 and len(record["top_k"]) == 3 and record["note"] == ""


def test_an_i3d_run_says_it_has_no_attention(runs, tmp_path, capsys):
    video, skeleton, sample_id = _pair(runs["data"], 1)
    assert explain.main(["--run", str(runs["i3d"]), "--input", str(video), "--skeleton", str(skeleton), "--out",
                         str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("note: variant i3d: no pose attention")
    assert _check(tmp_path, sample_id)["attention_temporal"] is None


def test_explain_refuses_a_folder_and_explains_the_real_ntu_pair(runs, tmp_path, capsys):
    assert explain.main(["--run", str(runs["run"]), "--input", str(runs["data"]), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: explain takes one video")
    video = shared_path("samples", "ntu", "S001C001P001R001A001_rgb.avi")
    assert explain.main(["--run", str(runs["run"]), "--input", str(video), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("S001C001P001R001A001_explain.mp4")
    _check(tmp_path, "S001C001P001R001A001")
