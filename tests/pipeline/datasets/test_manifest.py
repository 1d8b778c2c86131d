"""Manifest scanning: pairing, labels, protocol columns, problems, and the CSV contract."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.contracts import MANIFEST_COLUMNS, PROBLEM_COLUMN
from pipeline.datasets import manifest
from tests.conftest import shared_path


@pytest.fixture
def ntu_root(tmp_path):
    """A folder in the NTU release layout holding copies of the real samples."""
    src = shared_path("samples", "ntu")
    (tmp_path / "nturgb+d_rgb").mkdir()
    (tmp_path / "nturgb+d_skeletons").mkdir()
    for f in src.iterdir():
        sub = "nturgb+d_skeletons" if f.suffix == ".skeleton" else "nturgb+d_rgb"
        shutil.copy(f, tmp_path / sub / f.name)  # copies: symlinks out of DATA_ROOT are refused
    return tmp_path


def test_real_ntu_samples_give_ids_labels_and_splits(ntu_root, tmp_path):
    (ntu_root / "nturgb+d_rgb" / "notes.avi").write_text("not a sample")
    df, report = manifest.scan("ntu60", ntu_root, validate=True)
    assert list(df.columns[:len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    row = df.set_index("sample_id").loc["S001C001P001R001A001"]
    assert row["video_path"] == "nturgb+d_rgb/S001C001P001R001A001_rgb.avi"
    assert row["skeleton_path"] == "nturgb+d_skeletons/S001C001P001R001A001.skeleton"
    assert (row["label"], row["action"], row["subject"], row["view"], row["setup"]) == (0, "drink water", 1, 1, 1)
    assert (row["cs"], row["cv"], row[PROBLEM_COLUMN]) == ("train", "test", "")
    hand = df.set_index("sample_id").loc["S001C003P008R002A058"]
    assert (hand["label"], hand["cs"], hand["cv"]) == (57, "train", "train")
    assert hand[PROBLEM_COLUMN] == "video missing"
    hug = df.set_index("sample_id").loc["S004C002P003R001A055"]
    assert (hug["label"], hug["cs"], hug["cv"], hug[PROBLEM_COLUMN]) == (54, "test", "train", "skeleton missing")
    assert len(df) == 9 and sorted(report.unparsed) == ["nturgb+d_rgb/notes.avi", "nturgb+d_rgb/ntu_sample.avi"]
    text = manifest.summarize(df, report)
    assert "9 samples, 1 usable" in text and "skipped 2 files" in text


def test_ntu120_keeps_all_and_ntu60_skips_outside(tmp_path):
    for sid in ("S001C001P001R001A001", "S018C001P045R001A061", "S002C002P002R001A100"):
        (tmp_path / f"{sid}.skeleton").write_text("0\r\n")
        (tmp_path / f"{sid}_rgb.avi").write_bytes(b"x")
    df60, rep60 = manifest.scan("ntu60", tmp_path)
    df120, _ = manifest.scan("ntu120", tmp_path)
    assert list(df60["sample_id"]) == ["S001C001P001R001A001"] and rep60.outside_dataset == 4
    assert len(df120) == 3
    row = df120.set_index("sample_id").loc["S018C001P045R001A061"]
    assert (row["label"], row["cs1"], row["cs2"]) == (60, "train", "train")


def test_problems_empty_malformed_and_listed(tmp_path):
    good = shared_path("samples", "ntu", "S001C001P001R001A001.skeleton")
    for sid in ("S001C001P001R001A001", "S001C002P005R002A008", "S001C001P002R001A002", "S001C001P003R001A003"):
        (tmp_path / f"{sid}_rgb.avi").write_bytes(b"video bytes")
    shutil.copy(good, tmp_path / "S001C001P001R001A001.skeleton")
    shutil.copy(good, tmp_path / "S001C002P005R002A008.skeleton")
    (tmp_path / "S001C001P002R001A002.skeleton").write_bytes(b"")
    (tmp_path / "S001C001P003R001A003.skeleton").write_text("1\r\n1\r\n123 0 1 1 1 1 0 0 0 2\r\n24\r\n")
    missing = shared_path("samples", "lists", "NTU_RGBD_samples_with_missing_skeletons.txt")
    df, _ = manifest.scan("ntu60", tmp_path, validate=True, missing_list=missing)
    problems = df.set_index("sample_id")[PROBLEM_COLUMN]
    assert problems["S001C001P001R001A001"] == ""
    assert problems["S001C002P005R002A008"] == "listed in the official missing-skeleton list"
    assert problems["S001C001P002R001A002"] == "skeleton is an empty file"
    assert problems["S001C001P003R001A003"].startswith("malformed skeleton:")
    assert "line 4: joint count 24" in problems["S001C001P003R001A003"]


def test_smarthome_scan_with_pour_fromcup_trap(tmp_path):
    names = ["Cook.Cleandishes_p02_r00_v02_c03", "Walk_p03_r01_v16_c01", "Pour.Fromcup_p03_r00_v01_c02",
             "Readbook_p19_r00_v03_c05"]
    for name in names:
        (tmp_path / f"{name}.mp4").write_bytes(b"mp4")
        (tmp_path / f"{name}.json").write_text(json.dumps({"njts": 13, "frames": []}))
    (tmp_path / "Walk.mp4").write_bytes(b"x")
    df, report = manifest.scan("smarthome", tmp_path)
    rows = df.set_index("sample_id")
    assert rows.loc["Walk_p03_r01_v16_c01", ["label", "cs", "cv1", "cv2"]].tolist() == [29, "train", "train", "train"]
    assert rows.loc["Cook.Cleandishes_p02_r00_v02_c03", ["label", "cs", "cv1"]].tolist() == [0, "test", ""]
    assert rows.loc["Readbook_p19_r00_v03_c05", ["cs", "cv1", "cv2"]].tolist() == ["val", "val", "val"]
    trap = rows.loc["Pour.Fromcup_p03_r00_v01_c02"]
    assert trap["label"] == -1 and "not one of the 31" in trap[PROBLEM_COLUMN] and trap["cs"] == ""
    assert report.unparsed == ["Walk.mp4"]


def test_nucla_scan_pairs_raw_frames_with_json(tmp_path):
    raw = tmp_path / "multiview_action" / "view_3" / "a12_s10_e04"
    raw.mkdir(parents=True)
    (raw / "frame_1_tc_1_rgb.jpg").write_bytes(b"jpg")
    (raw / "frame_1_tc_1_skeletons.txt").write_text("60\n")
    sqe = tmp_path / "all_sqe"
    sqe.mkdir()
    shutil.copy(shared_path("samples", "nucla", "a12_s10_e04_v03.json"), sqe / "a12_s10_e04_v03.json")
    shutil.copy(shared_path("samples", "nucla", "a01_s01_e00_v01.json"), sqe / "a01_s01_e00_v01.json")
    df, _ = manifest.scan("nucla", tmp_path, validate=True)
    rows = df.set_index("sample_id")
    carry = rows.loc["a12_s10_e04_v03"]
    assert carry["video_path"] == "multiview_action/view_3/a12_s10_e04"
    assert carry["skeleton_path"] == "all_sqe/a12_s10_e04_v03.json"
    assert (carry["label"], carry["v3_12"], carry[PROBLEM_COLUMN]) == (9, "test", "")
    assert rows.loc["a01_s01_e00_v01", PROBLEM_COLUMN] == "video missing"


def test_write_read_round_trip_and_contract_errors(tmp_path, ntu_root):
    df, _ = manifest.scan("ntu60", ntu_root)
    path = tmp_path / "m.csv"
    manifest.write_manifest(df, path)
    back = manifest.read_manifest(path)
    assert back["label"].tolist() == df["label"].tolist() and list(back.columns) == list(df.columns)
    broken = pd.read_csv(path, dtype=str, keep_default_na=False)
    broken.loc[0, "cs"] = "training"
    broken.to_csv(path, index=False)
    with pytest.raises(ValueError, match="'cs' holds"):
        manifest.read_manifest(path)
    broken.drop(columns=["video_path"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="lacks columns"):
        manifest.read_manifest(path)
    with pytest.raises(FileNotFoundError, match="make manifest"):
        manifest.read_manifest(tmp_path / "none.csv")


def test_cli_fails_with_one_line_reason(tmp_path, capsys):
    assert manifest.main(["--dataset", "ntu60", "--data-root", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert manifest.main(["--dataset", "kinetics", "--data-root", str(tmp_path)]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_resolve_data_root_prefers_the_argument_then_the_side_file(tmp_path):
    from pipeline.datasets.manifest import resolve_data_root, write_manifest
    manifest = tmp_path / "m.csv"
    with pytest.raises(FileNotFoundError, match="DATA_ROOT"):
        resolve_data_root(manifest)
    write_manifest(pd.DataFrame({"sample_id": ["a"]}), manifest, data_root=tmp_path / "root")
    assert resolve_data_root(manifest) == (tmp_path / "root").resolve()
    assert resolve_data_root(manifest, tmp_path / "other") == tmp_path / "other"
