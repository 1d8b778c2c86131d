"""Skeletons that follow their format but are absurd (issue 20's degenerate tracks, issue 21 item 6): each gets a
``problem`` at validation and a ``skeleton`` failure row at cache time, and the real samples keep working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.build import extract
from pipeline.cache.config import CacheConfig
from pipeline.datasets import bounds as input_bounds
from pipeline.datasets import manifest, ntu
from pipeline.datasets.registry import get_dataset
from pipeline.datasets.skeleton_io import SkeletonFormatError
from tests.conftest import shared_path

SID = "S001C001P001R001A001"
"""The real NTU pair's id: a 103-frame 1920x1080 video and its 103-frame skeleton."""
FIRST_ID = 72057594037931101


def _joints(x: float = 0.2) -> np.ndarray:
    """(25, 12) joint lines of one body: a person 3 m in front of the camera, every joint tracked."""
    joints = np.zeros((25, ntu.JOINT_FIELDS))
    joints[:, 0:3] = np.stack([np.full(25, x), np.linspace(-0.8, 0.6, 25), np.full(25, 3.0)], axis=1)
    joints[:, 5:7] = np.stack([np.full(25, 960.0), np.linspace(800.0, 300.0, 25)], axis=1)
    joints[:, 11] = 2
    return joints


def _frames(n: int, *, new_id_every_frame: bool = False, every: int = 1, joints=None) -> list[list[ntu.BodyRecord]]:
    """n frames of one moving body (bodies only in every ``every``-th frame)."""
    return [[ntu.BodyRecord(FIRST_ID + (t if new_id_every_frame else 0),
                            _joints(0.2 + 1e-3 * t) if joints is None else joints)] if t % every == 0 else []
            for t in range(n)]


@pytest.fixture
def pair(tmp_path) -> Path:
    """A DATA_ROOT holding a 103-frame video (the real pair's length, at 320x180 to decode fast); each test writes
    its own skeleton beside it."""
    writer = cv2.VideoWriter(str(tmp_path / f"{SID}_rgb.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 180))
    for t in range(103):
        writer.write(np.full((180, 320, 3), t, np.uint8))
    writer.release()
    return tmp_path


def _validate(root: Path) -> str:
    return manifest.validate_skeleton("ntu60", root / f"{SID}.skeleton")


def _cache_row(root: Path) -> extract.PreparedSample | extract.SampleFailure:
    df, _ = manifest.scan("ntu60", root)
    return extract.PreparedSamples([df.iloc[0].to_dict()], root, CacheConfig(dataset="ntu60"))[0]


def _assert_refused(root: Path, reason: str) -> None:
    """A ``problem`` at validation (when the skeleton alone shows it) and a ``skeleton`` failure row at cache time."""
    out = _cache_row(root)
    assert isinstance(out, extract.SampleFailure), out
    assert out.stage == "skeleton" and reason in out.reason, out


# ---------------------------------------------------------------------------------------------- degenerate tracks


def test_a_new_body_id_in_every_one_of_6000_frames_is_refused(pair):
    ntu.write_skeleton(pair / f"{SID}.skeleton", _frames(6000, new_id_every_frame=True))
    assert "degenerate body tracks: 6000 distinct body ids over 6000 of 6000 frames" in _validate(pair)
    _assert_refused(pair, "degenerate body tracks")


def test_one_frame_tracks_with_gaps_are_refused(pair):
    ntu.write_skeleton(pair / f"{SID}.skeleton", _frames(103, new_id_every_frame=True, every=2))
    assert "52 distinct body ids over 52 of 103 frames, the longest lasting 1" in _validate(pair)
    _assert_refused(pair, "degenerate body tracks")


def test_a_6000_frame_skeleton_for_a_103_frame_video_is_refused(pair):
    ntu.write_skeleton(pair / f"{SID}.skeleton", _frames(6000))
    assert _validate(pair) == ""  # the skeleton alone is sane: its video says otherwise
    _assert_refused(pair, "skeleton has 6000 frames but its video 103: more than 3x apart")


def test_a_one_frame_skeleton_for_a_103_frame_video_is_refused(pair):
    ntu.write_skeleton(pair / f"{SID}.skeleton", _frames(1))
    _assert_refused(pair, "skeleton has 1 frames but its video 103")


def test_all_zero_joints_are_no_person(pair):
    ntu.write_skeleton(pair / f"{SID}.skeleton", _frames(103, joints=np.zeros((25, ntu.JOINT_FIELDS))))
    assert "every joint of every body is at (0, 0, 0)" in _validate(pair)
    _assert_refused(pair, "every joint of every body is at (0, 0, 0)")


def test_nan_in_one_body_only_names_the_line(pair):
    frames = [[ntu.BodyRecord(FIRST_ID, _joints()), ntu.BodyRecord(FIRST_ID + 1, _joints(1.0))] for _ in range(20)]
    path = pair / f"{SID}.skeleton"
    ntu.write_skeleton(path, frames)
    lines = path.read_bytes().split(b"\r\n")
    second_body_joint = 2 + 27 + 2  # frame count, body count, body 1 (info + count + 25), body 2 info + count
    lines[second_body_joint] = b" ".join([b"nan", *lines[second_body_joint].split()[1:]])
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(SkeletonFormatError, match=rf"line {second_body_joint + 1}: non-finite"):
        ntu.load_clip(path, (1920, 1080))
    assert "non-finite" in _validate(pair)


def test_real_samples_one_and_two_person_keep_working(tmp_path):
    for path in sorted(shared_path("samples", "ntu").glob("*.skeleton")):
        assert manifest.validate_skeleton("ntu60", path) == "", path.name
    for name in (f"{SID}_rgb.avi", f"{SID}.skeleton"):
        shutil.copy(shared_path("samples", "ntu", name), tmp_path / name)
    assert isinstance(_cache_row(tmp_path), extract.PreparedSample)


def test_sane_fragmented_tracks_are_kept():
    """Kinect re-identifies a person after losing track: two 40-frame ids in sequence are one actor, not noise."""
    tracks = [ntu._Track(FIRST_ID + k, list(range(40 * k, 40 * k + 40)), [_joints()] * 40) for k in range(2)]
    ntu.check_tracks(Path("x.skeleton"), 80, tracks)  # does not raise


# ---------------------------------------------------------------------------------------------- absurd magnitudes


def test_ntu_poses_of_1e30_metres_are_refused(pair):
    joints = _joints()
    joints[7, 0] = 1e30  # finite in float32: the readers' format checks let it through
    ntu.write_skeleton(pair / f"{SID}.skeleton", _frames(103, joints=joints))
    assert "magnitude 1e+30 is beyond the 10 m bound of ntu60 poses" in _validate(pair)
    _assert_refused(pair, "beyond the 10 m bound")


def _nucla_json(path: Path, skeletons: np.ndarray) -> Path:
    path.write_text(json.dumps({"file_name": path.stem, "skeletons": skeletons.tolist(), "label": 1}))
    return path


def _lcrnet_json(path: Path, pose3d: np.ndarray) -> Path:
    detection = {"pose2d": [300.0 + j for j in range(13)] + [200.0 + 5 * j for j in range(13)],
                 "pose3d": pose3d.tolist(), "cumscore": 5.0}
    path.write_text(json.dumps({"K": 10, "njts": 13, "frames": [[detection]] * 30}))
    return path


@pytest.mark.parametrize("value, reason", [(1e30, "beyond the 10 m bound of nucla poses"),
                                           (0.0, "every joint of every body is at (0, 0, 0)")])
def test_nucla_absurd_and_all_zero_joints_are_refused(tmp_path, value, reason):
    skeletons = np.full((12, 20, 3), 0.5) if value else np.zeros((12, 20, 3))
    skeletons[3, 4, 1] = value
    path = _nucla_json(tmp_path / "a01_s01_e00_v01.json", skeletons)
    assert reason in manifest.validate_skeleton("nucla", path)


@pytest.mark.parametrize("value, reason", [(1e30, "beyond the 10000 LCR-Net units bound of smarthome poses"),
                                           (0.0, "every joint of every body is at (0, 0, 0)")])
def test_smarthome_absurd_and_all_zero_joints_are_refused(tmp_path, value, reason):
    pose3d = np.full(39, 0.3) if value else np.zeros(39)
    pose3d[5] = value
    path = _lcrnet_json(tmp_path / "Walk_p03_r00_v01_c01.json", pose3d)
    assert reason in manifest.validate_skeleton("smarthome", path)


def test_real_nucla_samples_pass_the_bounds():
    for path in sorted(shared_path("samples", "nucla").glob("*.json")):
        assert manifest.validate_skeleton("nucla", path) == "", path.name


def test_length_bound_is_the_dataset_fact():
    assert input_bounds.length_problem(300, 103, get_dataset("ntu60")) == ""  # 2.9x: aligned proportionally
    assert "more than 3x apart" in input_bounds.length_problem(6000, 103, get_dataset("ntu120"))
    assert "more than 3x apart" in input_bounds.length_problem(10, 400, get_dataset("smarthome"))
    assert input_bounds.length_problem(1, 201, get_dataset("nucla")) == ""  # all_sqe is resampled: not checked
