"""The dataset registry: the four datasets' specs, and the claim of ``pipeline/datasets/registry.py`` that a fifth dataset
needs only its own module and a registry entry (here the module is this file and the entry is ``register``)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import manifest, poses
from pipeline.datasets.files import SampleFiles, ScanReport, pair_files
from pipeline.datasets.registry import DATASETS, get_dataset, register
from pipeline.datasets.skeleton_io import SkeletonClip, SkeletonFormatError, pad_bodies
from pipeline.datasets.spec import DatasetSpec, SampleInfo, left_right_pairs
from pipeline.tools import export_pyskl as pyskl
from vpn_head.data.splits import carve_validation, sample_subject

# ---- a toy fifth dataset, complete in a few lines: ids ``s01_v1_a0``, a ``.mp4`` and a ``.txt`` skeleton each,
# ---- the skeleton one line per frame of 3 joints x (x, y, z) in metres, camera-space, 64x48 pixels at z = 1 m.
TOY_CLASSES = ("wave", "clap")
TOY_JOINTS = ("Hip", "HandLeft", "HandRight")
TOY_ID = re.compile(r"s([0-9]{2})_v([0-9])_a([0-9])")


def toy_read(path: Path, video_size: tuple[int, int]) -> SkeletonClip:
    try:
        joints = np.loadtxt(path, ndmin=2).reshape(-1, 1, 3, 3).astype(np.float32)  # (T, 1, J, 3)
    except ValueError as err:
        raise SkeletonFormatError(f"{path}: {err}") from None
    xy = joints[..., :2] / joints[..., 2:] * np.float32(video_size[0] / 64)  # (T, 1, J, 2)
    return SkeletonClip(pad_bodies(joints), pad_bodies(xy))


def toy_info(sample_id: str) -> SampleInfo:
    match = TOY_ID.fullmatch(sample_id)
    if match is None:
        raise ValueError(f"{sample_id!r} is not a toy id")
    subject, view, action = (int(g) for g in match.groups())
    return SampleInfo(TOY_CLASSES[action] if action < len(TOY_CLASSES) else f"a{action}", subject, view,
                      {"xv": "train" if view == 1 else "test"})


def toy_sample_of(path: Path) -> str:
    toy_info(path.stem)  # raises for a name that is no toy id
    return path.stem


def toy_find(root: Path, report: ScanReport) -> dict[str, SampleFiles]:
    kinds = {".mp4": "video", ".txt": "skeleton"}
    return pair_files(root, report, lambda path: kinds.get(path.suffix), toy_sample_of)


TOY = DatasetSpec("toy", TOY_CLASSES, {"xv": TOY_CLASSES}, TOY_JOINTS, edges=((0, 1), (0, 2)), centre_joint=0,
                  left_right=left_right_pairs(TOY_JOINTS), t_p=4, metric="top1", frame_size=(64, 48),
                  read_skeleton=toy_read, parse_sample_id=toy_info, find_samples=toy_find)


@pytest.fixture
def toy_registered():
    register(TOY)
    yield TOY
    del DATASETS[TOY.name]


def test_the_registry_holds_the_four_datasets_built_by_their_modules():
    assert list(DATASETS) == ["ntu60", "ntu120", "smarthome", "nucla"]
    assert get_dataset("ntu60").parse_sample_id("S001C002P003R002A013").columns == {"setup": 1}
    assert all(pickle.loads(pickle.dumps(spec)) == spec for spec in DATASETS.values())  # as sent to a worker
    with pytest.raises(ValueError, match="already registered"):
        register(get_dataset("nucla"))
    with pytest.raises(ValueError, match="unknown dataset 'toy'"):
        get_dataset("toy")


def test_a_fifth_dataset_needs_only_its_module_and_the_registry(toy_registered, tmp_path):
    rng = np.random.default_rng(0)
    for subject in (1, 2, 3):
        for view in (1, 2):
            stem = f"s{subject:02d}_v{view}_a{subject % 2}"
            (tmp_path / f"{stem}.mp4").write_bytes(b"video")
            np.savetxt(tmp_path / f"{stem}.txt", rng.normal(0, 0.3, (10, 9)) + [0, 0, 2] * 3)
    (tmp_path / "s04_v1_a1.txt").write_text("not numbers\n")  # a malformed skeleton
    (tmp_path / "s04_v1_a1.mp4").write_bytes(b"video")
    (tmp_path / "s05_v1_a0.mp4").write_bytes(b"video")  # no skeleton
    (tmp_path / "notes.txt").write_text("1 2 3\n")  # a name that is no toy id

    df, report = manifest.scan("toy", tmp_path, validate=True)
    assert report.unparsed == ["notes.txt"]
    assert list(df.columns) == [*manifest.manifest_columns(TOY)] and "xv" in df.columns
    assert df["label"].tolist()[:2] == [1, 1] and df["xv"].tolist()[:2] == ["train", "test"]
    problems = df.set_index("sample_id")["problem"]
    assert problems["s04_v1_a1"].startswith("malformed skeleton") and problems["s05_v1_a0"] == "skeleton missing"
    manifest.write_manifest(df, tmp_path / "toy.csv", data_root=tmp_path)
    assert manifest.read_manifest(tmp_path / "toy.csv")["sample_id"].tolist() == df["sample_id"].tolist()

    clip = poses.load_skeleton(TOY, tmp_path / "s01_v1_a1.txt", (128, 96))
    assert clip.joints3d.shape == (10, 2, 3, 3) and np.isnan(clip.joints3d[:, 1]).all()
    pose = poses.clip_poses(clip.joints3d[poses.align_frames(np.arange(64), 64, clip.num_frames)], TOY.t_p, 0)
    assert pose.shape == (2, 3, 3, 4) and np.allclose(pose[0, :, 0, 0], 0)

    exported = pyskl.export(tmp_path / "toy.csv", tmp_path / "toy.pkl")
    assert len(exported["annotations"]) == 6 and exported["annotations"][0]["img_shape"] == (48, 64)
    fit_ids = df["sample_id"][df["problem"] == ""].to_numpy()
    is_val, held = carve_validation("toy", fit_ids, 0.34, seed=0)
    assert len(held) == 1 and is_val.sum() == 2
    assert sample_subject("toy", "s03_v2_a1") == 3
