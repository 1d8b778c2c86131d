"""Hostile files under DATA_ROOT (issue 10's table, the reader and scan rows): each one a clear problem, bounded
in memory and time, never a hang, a crash of the scan or a silently wrong value."""

from __future__ import annotations

import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.build import extract
from pipeline.cache.config import CacheConfig
from pipeline.contracts import PROBLEM_COLUMN
from pipeline.datasets import manifest, ntu, nucla, smarthome
from pipeline.datasets.skeleton_io import SkeletonFormatError, read_bounded
from tests.conftest import shared_path

SID = "S001C001P001R001A001"


def _body_lines(body_id: int | str, x: str = "0.1", state: str = "2") -> list[str]:
    joint = f"{x} 0.2 3.0 250 200 900 500 0 0 0 1 {state}"
    return [f"{body_id} 0 1 1 1 1 0 0.1 0.1 2", "25", *[joint] * 25]


def _skeleton(frames: list[list[list[str]]]) -> bytes:
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body in bodies:
            lines.extend(body)
    return ("\r\n".join(lines) + "\r\n").encode()


def _bounded(fn, *, mib: float, seconds: float):
    """Run ``fn``; assert its Python/numpy allocations peak under ``mib`` and it ends within ``seconds``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        elapsed = time.perf_counter() - start
        assert peak < mib, f"peak {peak:.0f} MiB"
        assert elapsed < seconds, f"{elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------------- readers


def test_ntu_new_body_id_every_frame_stays_bounded(tmp_path):
    path = tmp_path / f"{SID}.skeleton"
    path.write_bytes(_skeleton([[_body_lines(72057594037931101 + t, x=str(0.1 + t * 1e-3))] for t in range(4000)]))
    assert path.stat().st_size > 4_000_000
    seq = _bounded(lambda: ntu.read_skeleton(path, max_bodies=2), mib=150, seconds=60)
    assert seq.joints.shape == (4000, 1, 25, 3)  # the non-overlapping ids merge into one actor
    with pytest.raises(SkeletonFormatError, match="4000 distinct body ids"):
        ntu.read_skeleton(path)


def test_smarthome_json_of_a_million_empty_frames_is_refused_fast(tmp_path):
    path = tmp_path / "Walk_p02_r00_v01_c01.json"
    path.write_text('{"njts": 13, "frames": [' + ",".join(["[]"] * 1_000_000) + "]}")
    with pytest.raises(SkeletonFormatError, match="1000000 frames"):
        _bounded(lambda: smarthome.read_lcrnet_json(path), mib=200, seconds=30)


@pytest.mark.parametrize("value, message", [
    ("1e39", "beyond float32"),  # finite in float64, inf in float32
    ("nan", "non-finite"),
])
def test_ntu_coordinates_must_be_finite_in_float32(tmp_path, value, message):
    path = tmp_path / f"{SID}.skeleton"
    path.write_bytes(_skeleton([[_body_lines(7, x=value)]]))
    with pytest.raises(SkeletonFormatError, match=message):
        ntu.read_skeleton(path)


@pytest.mark.parametrize("body, message", [
    (_body_lines(7, state="300"), "trackingState 300"),  # was stored as 44 (int8 wrap)
    (_body_lines(-5), "body id '-5'"),  # was an OverflowError
    (_body_lines(2**64), "not an unsigned 64-bit"),
])
def test_ntu_integers_are_range_checked(tmp_path, body, message):
    path = tmp_path / f"{SID}.skeleton"
    path.write_bytes(_skeleton([[body]]))
    with pytest.raises(SkeletonFormatError, match=message):
        ntu.read_skeleton(path)


def test_ntu_body_count_is_bounded(tmp_path):
    path = tmp_path / f"{SID}.skeleton"
    path.write_bytes(b"1\r\n7\r\n")
    with pytest.raises(SkeletonFormatError, match=r"body count of frame 0 7 is outside \[0, 6\]"):
        ntu.read_skeleton(path)


@pytest.mark.parametrize("data, message", [
    ({"njts": 13, "frames": None}, "'frames' is NoneType"),
    ({"njts": 13, "frames": [None]}, "frame 0: expected a list of detections, got NoneType"),
    ({"njts": 13, "frames": [[{"pose2d": [1.0] * 26, "pose3d": [1.0] * 39, "cumscore": "high"}]]}, "cumscore"),
    ({"njts": 13, "frames": [[{"pose2d": [1.0] * 26, "pose3d": [1e39] * 39}]]}, "beyond float32"),
    ({"njts": 13, "frames": [["x"]]}, "expected an object"),
    ({"njts": "13", "frames": []}, "njts"),
])
def test_smarthome_json_type_errors_are_format_errors(tmp_path, data, message):
    path = tmp_path / "Walk_p02_r00_v01_c01.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SkeletonFormatError, match=message):
        smarthome.read_lcrnet_json(path)


def test_json_nested_100000_deep_is_a_format_error(tmp_path):
    for reader in (smarthome.read_lcrnet_json, nucla.read_sqe_json):
        path = tmp_path / "a01_s01_e00_v01.json"
        path.write_text("[" * 100_000 + "]" * 100_000)
        with pytest.raises(SkeletonFormatError, match="nested too deeply"):
            reader(path)


def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / f"{SID}.skeleton"
    os.mkfifo(fifo)
    with pytest.raises(SkeletonFormatError, match="named pipe"):
        _bounded(lambda: read_bounded(fifo), mib=10, seconds=5)
    with pytest.raises(SkeletonFormatError, match="character device"):
        read_bounded("/dev/zero")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(SkeletonFormatError, match="limit"):
        read_bounded(big, max_bytes=1024)


# ---------------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["S001C001P001R001A0045.skeleton", "S001C001P001R001A\u0660\u0660\u0665.skeleton",
                                  "S\u0660\u0660\u0661C001P001R001A005.skeleton"])
def test_ids_are_exactly_three_ascii_digits(name):
    with pytest.raises(ValueError):
        ntu.parse_sample_id(name)


def test_nucla_and_smarthome_names_take_ascii_digits_only():
    with pytest.raises(ValueError):
        nucla.parse_sample_name("a0\u0661_s01_e00_v01")
    with pytest.raises(ValueError):
        smarthome.parse_clip_name("Walk_p\u0660\u0662_r00_v01_c01.mp4")


# ---------------------------------------------------------------------------------------------------- the scan


@pytest.fixture
def root(tmp_path) -> Path:
    """A DATA_ROOT with one good NTU pair (real skeleton) in ``rgb/`` and ``skel/``."""
    data = tmp_path / "data"
    (data / "rgb").mkdir(parents=True)
    (data / "skel").mkdir()
    shutil.copy(shared_path("samples", "ntu", f"{SID}.skeleton"), data / "skel" / f"{SID}.skeleton")
    (data / "rgb" / f"{SID}_rgb.avi").write_bytes(b"video bytes")
    return data


def test_validate_records_every_bad_file_and_never_aborts(root):
    (root / "rgb" / "S001C001P001R001A002_rgb.avi").write_bytes(b"v")
    (root / "skel" / "S001C001P001R001A002.skeleton").write_bytes(_skeleton([[_body_lines(-5)]]))
    (root / "rgb" / "S001C001P001R001A003_rgb.avi").write_bytes(b"v")
    os.mkfifo(root / "skel" / "S001C001P001R001A003.skeleton")  # used to hang VALIDATE=1 and make cache
    (root / "rgb" / "S001C001P001R001A004_rgb.avi").write_bytes(b"v")
    (root / "skel" / "S001C001P001R001A004.skeleton").symlink_to("/dev/zero")
    df, _ = _bounded(lambda: manifest.scan("ntu60", root, validate=True, workers=1), mib=200, seconds=60)
    problems = df.set_index("sample_id")[PROBLEM_COLUMN]
    assert problems[SID] == ""
    assert "body id '-5'" in problems["S001C001P001R001A002"]
    assert "not a regular file" in problems["S001C001P001R001A003"]
    assert "outside DATA_ROOT" in problems["S001C001P001R001A004"]


def test_fifo_reaches_the_cache_as_a_failure_row_not_a_hang(root):
    os.mkfifo(root / "rgb" / "S001C001P001R001A002_rgb.avi")
    (root / "skel" / "S001C001P001R001A002.skeleton").write_bytes(b"1")
    df, _ = manifest.scan("ntu60", root)
    row = df.set_index("sample_id").loc["S001C001P001R001A002"].to_dict()
    row.update(sample_id="S001C001P001R001A002", problem="")  # as if the manifest predated the FIFO
    out = extract.PreparedSamples([row], root, CacheConfig(dataset="ntu60"))[0]
    assert isinstance(out, extract.SampleFailure) and out.stage == "manifest"
    assert "not a regular file" in out.reason


def test_non_utf8_file_name_is_escaped_with_a_problem_and_the_manifest_is_written(root, tmp_path):
    bad = os.fsencode(root / "skel") + b"/S001C001P001R001A002\xff.skeleton"
    with open(bad, "wb") as fh:
        fh.write(b"1")
    with open(os.fsencode(root / "rgb") + b"/notes-\xfe.avi", "wb") as fh:
        fh.write(b"1")
    df, report = manifest.scan("ntu60", root)
    row = df.set_index("sample_id").loc["S001C001P001R001A002"]
    assert row["skeleton_path"] == "skel/S001C001P001R001A002\\xff.skeleton"
    assert "not valid UTF-8" in row[PROBLEM_COLUMN]
    assert report.unparsed == ["rgb/notes-\\xfe.avi"]
    out = tmp_path / "m.csv"
    manifest.write_manifest(df, out, data_root=root)
    assert len(manifest.read_manifest(out)) == 2 and not out.with_name("m.csv.tmp").exists()
    assert "notes-\\xfe" in manifest.summarize(df, report)


def test_symlinked_folders_are_followed_once_and_outside_ones_listed(root, tmp_path):
    extra = root / "more" / "real"
    extra.mkdir(parents=True)
    shutil.copy(root / "skel" / f"{SID}.skeleton", extra / "S001C001P001R001A002.skeleton")
    (extra / "S001C001P001R001A002_rgb.avi").write_bytes(b"v")
    (root / "linked").symlink_to(extra)  # a symlinked folder inside the root: followed
    (extra / "loop").symlink_to(root / "more")  # a loop: ends
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "S001C001P001R001A003.skeleton").write_bytes(b"1")
    (root / "out").symlink_to(outside)  # leaves the root: not followed, listed
    df, report = manifest.scan("ntu60", root)
    assert sorted(df["sample_id"]) == [SID, "S001C001P001R001A002"]
    assert len(report.duplicates) == 0
    assert any("out -> " in line and "outside DATA_ROOT" in line for line in report.not_followed)
    assert any("symlink loop" in line for line in report.not_followed)
    assert "symlinked folders not followed" in manifest.summarize(df, report)


def test_unreadable_folder_and_upper_case_names_are_counted(root, monkeypatch):
    (root / "locked").mkdir()
    (root / "skel" / "S001C001P001R001A005.SKELETON").write_bytes(b"1")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)).name == "locked":  # as chmod 000 does for anyone but root
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    df, report = manifest.scan("ntu60", root)
    assert report.unreadable == ["locked (Permission denied)"]
    assert report.wrong_case == ["skel/S001C001P001R001A005.SKELETON"]
    summary = manifest.summarize(df, report)
    assert "1 folders could not be read: locked" in summary and "unexpected case" in summary


def test_manifest_row_paths_outside_the_root_get_a_clear_error(root):
    for path in ("/etc/passwd", "../x.avi", "rgb/../../x.avi"):
        with pytest.raises(ValueError, match="absolute or uses '..'"):
            manifest.inside_root(root, path)
    (root / "rgb" / "escape.avi").symlink_to("/etc/hostname")
    with pytest.raises(ValueError, match="outside DATA_ROOT"):
        manifest.inside_root(root, "rgb/escape.avi")
    assert manifest.inside_root(root, f"rgb/{SID}_rgb.avi") == root / "rgb" / f"{SID}_rgb.avi"


def test_real_two_body_file_selects_the_same_bodies_reading_sparsely():
    path = shared_path("samples", "ntu", "S001C003P008R002A058.skeleton")
    dense = ntu.select_bodies(ntu.read_skeleton(path))
    sparse = ntu.read_skeleton(path, max_bodies=2)
    assert dense.body_ids.tolist() == sparse.body_ids.tolist()
    np.testing.assert_array_equal(dense.joints, sparse.joints)
    np.testing.assert_array_equal(dense.tracking, sparse.tracking)


def test_float32_extreme_coordinates_fail_the_sample_not_the_shard(tmp_path):
    for name in (f"{SID}_rgb.avi", f"{SID}.skeleton"):
        shutil.copy(shared_path("samples", "ntu", name), tmp_path / name)
    skeleton = tmp_path / f"{SID}.skeleton"
    lines = skeleton.read_bytes().split(b"\r\n")
    for k, x in ((4, b"3e38"), (5, b"-3e38")):  # joint 0 and the centre joint: finite in float32, their difference not
        lines[k] = b" ".join([x, *lines[k].split()[1:]])
    skeleton.write_bytes(b"\r\n".join(lines))
    df, _ = manifest.scan("ntu60", tmp_path)
    out = extract.PreparedSamples([df.iloc[0].to_dict()], tmp_path, CacheConfig(dataset="ntu60"))[0]
    assert isinstance(out, extract.SampleFailure) and out.stage == "skeleton" and "beyond the 10 m bound" in out.reason
