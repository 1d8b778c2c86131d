"""NTU sample ids, protocols and the .skeleton format, against the real files in ../shared/samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.datasets import ntu
from tests.conftest import shared_path

REAL_SKELETONS = [
    "S001C001P001R001A001", "S001C001P001R001A011", "S001C003P008R002A058", "S002C001P003R001A003",
    "S003C001P015R001A034", "S004C002P003R001A017",
]


@pytest.fixture(scope="module")
def golden():
    return json.loads(shared_path("samples", "golden_facts.json").read_text())["files"]


@pytest.mark.parametrize("sample_id", REAL_SKELETONS)
def test_real_skeleton_matches_golden_facts(sample_id, golden):
    facts = golden[f"ntu/{sample_id}.skeleton"]
    seq = ntu.read_skeleton(shared_path("samples", "ntu", f"{sample_id}.skeleton"))
    assert seq.num_frames == facts["n_frames"]
    assert [str(b) for b in seq.body_ids] == facts["distinct_body_ids"]
    per_frame = np.isfinite(seq.joints[:, :, 0, 0]).sum(axis=1)
    hist = {str(k): int(v) for k, v in zip(*np.unique(per_frame, return_counts=True))}
    assert hist == facts["bodies_per_frame_hist"]
    tracked = seq.tracking[np.isfinite(seq.joints[..., 0])]
    assert {str(k): int(v) for k, v in zip(*np.unique(tracked, return_counts=True))} == facts["joint_trackingState_hist"]
    first = facts["first_frame_first_body"]
    slot = [str(b) for b in seq.body_ids].index(first["body_id"])
    np.testing.assert_allclose(seq.joints[0, slot, 0], first["joint0_xyz"], rtol=1e-6)
    np.testing.assert_allclose(seq.color_xy[0, slot, 0], first["joint0_colorXY"], rtol=1e-6)
    assert seq.tracking[0, slot, 0] == first["joint0_trackingState"]
    assert (np.isfinite(seq.joints[..., 0, 0]).sum(axis=1) == 0).sum() == facts["frames_with_zero_bodies"]
    sid = ntu.parse_sample_id(sample_id)
    want = facts["sample_id"]
    assert (sid.setup, sid.camera, sid.subject, sid.replication, sid.action) == (
        want["setup"], want["camera"], want["performer"], want["replication"], want["action"])


def test_first_joint_and_colour_of_real_file():
    seq = ntu.read_skeleton(shared_path("samples", "ntu", "S001C001P001R001A001.skeleton"))
    np.testing.assert_allclose(seq.joints[0, 0, 0], [0.2181153, 0.1725972, 3.785547], rtol=1e-6)
    np.testing.assert_allclose(seq.color_xy[0, 0, 0], [1036.233, 519.1677], rtol=1e-6)
    assert seq.body_ids.dtype == np.uint64 and int(seq.body_ids[0]) == 72057594037931101


def test_two_person_selection_keeps_both_in_stable_order():
    seq = ntu.read_skeleton(shared_path("samples", "ntu", "S001C003P008R002A058.skeleton"))
    chosen = ntu.select_bodies(seq)
    assert chosen.num_bodies == 2 and np.isfinite(chosen.joints).all()
    motions = [ntu.body_motion(chosen.joints[:, a]) for a in range(2)]
    assert motions[0] >= motions[1]
    assert set(chosen.body_ids.tolist()) == set(seq.body_ids.tolist())


def _body(body_id: int, rng, offset=0.0) -> ntu.BodyRecord:
    joints = np.zeros((25, 12))
    joints[:, :3] = rng.normal(size=(25, 3)) * 0.1 + offset + [0, 0, 3]
    joints[:, 5:7] = rng.uniform(100, 1800, size=(25, 2))
    joints[:, 11] = 2
    return ntu.BodyRecord(body_id, np.round(joints, 5))


def test_write_read_round_trip_with_zero_body_frames(tmp_path):
    rng = np.random.default_rng(0)
    frames = [[], [_body(72057594037931101, rng)], [_body(72057594037931101, rng), _body(72057594037931999, rng)], []]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    ntu.write_skeleton(path, frames)
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n")
    seq = ntu.read_skeleton(path)
    assert seq.num_frames == 4 and seq.num_bodies == 2
    assert seq.frames_with_bodies().tolist() == [False, True, True, False]
    np.testing.assert_allclose(seq.joints[2, 1], frames[2][1].joints[:, :3], atol=1e-6)
    np.testing.assert_allclose(seq.color_xy[1, 0], frames[1][0].joints[:, 5:7], rtol=1e-6)  # 7 significant digits


def test_selection_merges_a_reidentified_body_and_drops_the_least_moving(tmp_path):
    rng = np.random.default_rng(1)
    still = np.tile([0, 0, 3, 0, 0, 500, 500, 0, 0, 0, 0, 2], (25, 1)).astype(float)
    frames = []
    for t in range(10):
        moving_id = 10 if t < 5 else 11  # the same person gets a new id half way through
        frames.append([_body(moving_id, rng, offset=t * 0.3), _body(20, rng), ntu.BodyRecord(1, still)])
    path = tmp_path / "S001C001P001R001A050.skeleton"
    ntu.write_skeleton(path, frames)
    seq = ntu.read_skeleton(path)
    assert seq.num_bodies == 4
    chosen = ntu.select_bodies(seq)
    assert chosen.num_bodies == 2
    assert np.isfinite(chosen.joints[:, 0]).all()  # ids 10 and 11 merged into one actor over all frames
    assert int(chosen.body_ids[1]) == 20  # the still body (id 1) was dropped


@pytest.mark.parametrize("text, message", [
    ("", "empty skeleton file"),
    ("2\r\n1\r\n72057594037931101 0 1 1 1 1 0 0.1 0.1 2\r\n25\r\n", "truncated"),
    ("1\r\n1\r\n72057594037931101 0 1 1 1 1 0 0.1 0.1 2\r\n24\r\n", "joint count 24"),
    ("1\r\n1\r\n7205 0 1 1\r\n25\r\n", "body-info line has 4 fields"),
    ("x\r\n", "expected an integer frame count"),
])
def test_bad_files_give_errors_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(text)
    with pytest.raises(ntu.SkeletonFormatError, match=message) as err:
        ntu.read_skeleton(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_nan_joint_is_rejected_with_its_line(tmp_path):
    rng = np.random.default_rng(0)
    body = _body(5, rng)
    path = tmp_path / "a.skeleton"
    ntu.write_skeleton(path, [[body]])
    lines = path.read_bytes().decode().split("\r\n")
    lines[4 + 7] = "nan " + " ".join(lines[4 + 7].split()[1:])
    path.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(ntu.SkeletonFormatError, match=r"line 12: non-finite"):
        ntu.read_skeleton(path)


def test_sample_id_parsing_and_protocols():
    sid = ntu.parse_sample_id("S018C002P045R001A061_rgb.avi")
    assert (sid.setup, sid.camera, sid.subject, sid.replication, sid.action) == (18, 2, 45, 1, 61)
    assert str(sid) == "S018C002P045R001A061"
    assert not ntu.in_dataset(sid, "ntu60") and ntu.in_dataset(sid, "ntu120")
    assert ntu.ntu_splits(sid, "ntu120") == {"cs1": "train", "cs2": "train"}
    assert ntu.ntu_splits(ntu.parse_sample_id("S017C001P003R002A060"), "ntu60") == {"cs": "test", "cv": "test"}
    assert ntu.ntu_splits(ntu.parse_sample_id("S001C003P038R002A001"), "ntu60") == {"cs": "train", "cv": "train"}
    assert ntu.ntu_splits(ntu.parse_sample_id("S031C001P103R001A120"), "ntu120") == {"cs1": "train", "cs2": "test"}
    assert ntu.ntu_splits(ntu.parse_sample_id("S031C001P104R001A120"), "ntu120")["cs1"] == "test"
    with pytest.raises(ValueError, match="no NTU sample id"):
        ntu.parse_sample_id("video.avi")


def test_official_missing_lists_parse_to_302_and_535():
    lists = shared_path("samples", "lists")
    ids60 = ntu.read_missing_list(lists / "NTU_RGBD_samples_with_missing_skeletons.txt")
    ids120 = ntu.read_missing_list(lists / "NTU_RGBD120_samples_with_missing_skeletons.txt")
    assert len(ids60) == 302 and len(ids120) == 535 and ids60 <= ids120
    assert "S001C002P005R002A008" in ids60
