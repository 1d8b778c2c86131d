"""Smarthome and N-UCLA readers and protocols, checked against the official split lists in ../shared."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.datasets import nucla, smarthome
from pipeline.datasets.ntu import SkeletonFormatError
from pipeline.datasets.registry import get_dataset
from pipeline.datasets.smarthome import SMARTHOME_CLASSES, SMARTHOME_CV_CLASSES
from tests.conftest import shared_path

SPLIT_FILES = {
    ("cs", "train"): "train_CS.txt", ("cs", "val"): "validation_CS.txt", ("cs", "test"): "test_CS.txt",
    ("cv1", "train"): "train_CV1.txt", ("cv1", "val"): "validation_CV1.txt", ("cv1", "test"): "test_CV1.txt",
    ("cv2", "train"): "train_CV2.txt", ("cv2", "val"): "validation_CV2.txt", ("cv2", "test"): "test_CV2.txt",
}


@pytest.mark.parametrize("protocol, split", sorted(SPLIT_FILES))
def test_smarthome_protocols_reproduce_official_lists(protocol, split):
    names = shared_path("samples", "lists", "smarthome_splits", SPLIT_FILES[protocol, split]).read_text().split()
    got = [smarthome.smarthome_splits(smarthome.parse_clip_name(n))[protocol] for n in names]
    fromcup = [n.startswith("Pour.Fromcup_") for n in names]
    assert all(g == split for g, bad in zip(got, fromcup) if not bad)
    assert all(g == "" for g, bad in zip(got, fromcup) if bad)  # the 32nd name is kept out of every protocol


def test_smarthome_class_lists_and_names():
    assert len(SMARTHOME_CLASSES) == 31 and len(SMARTHOME_CV_CLASSES) == 19
    assert SMARTHOME_CLASSES.index("Usetelephone") == 27 and SMARTHOME_CLASSES.index("Usetablet") == 28
    assert list(SMARTHOME_CV_CLASSES) == sorted(SMARTHOME_CV_CLASSES)
    clip = smarthome.parse_clip_name("Cook.Cleandishes_p02_r00_v02_c03.mp4")
    assert (clip.activity, clip.subject, clip.repetition, clip.take, clip.camera) == ("Cook.Cleandishes", 2, 0, 2, 3)
    assert clip.sample_id == "Cook.Cleandishes_p02_r00_v02_c03"
    with pytest.raises(ValueError, match="not a Smarthome clip name"):
        smarthome.parse_clip_name("cook_p2.mp4")
    spec = get_dataset("smarthome")
    assert spec.protocol_classes("cv1") == SMARTHOME_CV_CLASSES and spec.metric == "mean_class"


def _lcr_detection(x0: float, score: float) -> dict:
    xs = [x0 + j for j in range(13)]
    ys = [100 + 2 * j for j in range(13)]
    return {"pose2d": xs + ys, "pose3d": [0.1 * j for j in range(39)], "cumscore": score}


def test_lcrnet_json_planar_layout_and_stable_slots(tmp_path):
    frames = [[_lcr_detection(10, 5.0), _lcr_detection(300, 9.0)],
              [_lcr_detection(301, 2.0), _lcr_detection(11, 8.0), _lcr_detection(500, 1.0)],
              []]
    path = tmp_path / "Walk_p03_r00_v01_c01.json"
    path.write_text(json.dumps({"K": 10, "njts": 13, "frames": frames}))
    skel = smarthome.read_lcrnet_json(path)
    assert skel.pose2d.shape == (3, 2, 13, 2)
    np.testing.assert_allclose(skel.pose2d[0, 0, 4], [304, 108])  # joint 4 = (pose2d[4], pose2d[4 + 13])
    np.testing.assert_allclose(skel.pose3d[0, 0, 1], [0.1, 1.4, 2.7], rtol=1e-6)
    assert skel.pose2d[1, 0, 0, 0] == 301 and skel.pose2d[1, 1, 0, 0] == 11  # same person keeps its slot
    assert np.isnan(skel.pose2d[2]).all()


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    (json.dumps({"njts": 13}), "missing key 'frames'"),
    (json.dumps({"njts": 17, "frames": []}), "njts = 17"),
    (json.dumps({"njts": 13, "frames": [[{"pose2d": [1.0] * 20, "pose3d": [0.0] * 39}]]}), "pose2d has 20 values"),
    (json.dumps({"njts": 13, "frames": [[{"pose2d": [float("nan")] * 26, "pose3d": [0.0] * 39}]]}), "non-finite"),
])
def test_lcrnet_bad_inputs(tmp_path, content, message):
    path = tmp_path / "Walk_p03_r00_v01_c01.json"
    path.write_text(content)
    with pytest.raises(SkeletonFormatError, match=message) as err:
        smarthome.read_lcrnet_json(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["a01_s01_e00_v01", "a01_s01_e00_v02", "a01_s01_e00_v03", "a06_s02_e01_v01",
                                  "a08_s03_e02_v02", "a12_s10_e04_v03"])
def test_nucla_json_matches_golden_facts(name):
    facts = json.loads(shared_path("samples", "golden_facts.json").read_text())["files"][f"nucla/{name}.json"]
    joints = nucla.read_sqe_json(shared_path("samples", "nucla", f"{name}.json"))
    assert joints.shape == (facts["n_frames"], 1, 20, 3)
    np.testing.assert_allclose(joints[0, 0, 0], facts["first_frame_joint0_xyz"], rtol=1e-6)
    sample = nucla.parse_sample_name(name)
    assert sample.label == facts["label"] - 1  # the file's label is 1-based over the 10 classes
    assert sample.view == facts["view"]


@pytest.mark.parametrize("list_name, split", [("train_cross3.txt", "train"), ("test_cross3.txt", "test")])
def test_nucla_v3_12_reproduces_vpn_split_lists(list_name, split):
    names = shared_path("samples", "lists", "nucla_vpn_splits", list_name).read_text().split()
    for entry in names:
        stem, camera = entry.rsplit("_c", 1)
        assert nucla.nucla_splits(nucla.parse_sample_name(f"{stem}_v{camera}"))["v3_12"] == split


def test_nucla_names_and_bad_action():
    assert nucla.parse_sample_name("a12_s10_e04_v03").label == 9
    assert nucla.parse_sample_name("a01_s08_e02", view=2).sample_id == "a01_s08_e02_v02"
    with pytest.raises(ValueError, match="not one of the 10"):
        nucla.parse_sample_name("a07_s01_e00_v01")
    with pytest.raises(ValueError, match="no view"):
        nucla.parse_sample_name("a01_s01_e00")


def test_nucla_raw_folder_reader(tmp_path):
    folder = tmp_path / "view_1" / "a01_s01_e00"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 20, 3)).astype(np.float32) + [0, 0, 3]
    for t in range(3):
        (folder / f"frame_{t + 1}_tc_1_rgb.jpg").write_bytes(b"")
        rows = "\n".join(f"{x:.6f},{y:.6f},{z:.6f},2" for x, y, z in truth[t])
        (folder / f"frame_{t + 1}_tc_1_skeletons.txt").write_text(f"60\n{rows}\n")
    (folder / "frame_2_tc_1_skeletons.txt").unlink()
    joints, rgb = nucla.read_raw_sample(folder)
    assert [p.name for p in rgb][0] == "frame_1_tc_1_rgb.jpg" and joints.shape == (3, 2, 20, 3)
    np.testing.assert_allclose(joints[0, 0], truth[0], atol=1e-5)
    assert np.isnan(joints[1]).all() and np.isnan(joints[0, 1]).all()
    (folder / "frame_3_tc_1_skeletons.txt").write_text("60\n1,2,3,2\n")
    with pytest.raises(SkeletonFormatError, match="not a multiple of 20"):
        nucla.read_raw_sample(folder)


def test_kinect_projection_is_centred_and_flips_y():
    xy = nucla.project_kinect_v1(np.array([[0.0, 0.0, 2.0], [0.5, 0.5, 2.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(xy[0], nucla.KINECT_V1_CENTRE)
    assert xy[1, 0] > xy[0, 0] and xy[1, 1] < xy[0, 1] and np.isnan(xy[2]).all()
