"""pyskl/mmaction2 interop: export -> import round trip on the real NTU samples, the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from pipeline.cache.config import CacheConfig
from pipeline.cache.merge import merge_shards
from pipeline.cache.provenance import make_attrs
from pipeline.datasets import manifest, pose_pickle, poses
from pipeline.datasets.registry import get_dataset
from pipeline.features import sample
from pipeline.tools import export_pyskl as pyskl
from tests.conftest import shared_path
from tests.helpers import make_records, write_shard


@pytest.fixture(scope="module")
def ntu_manifest(tmp_path_factory):
    """A manifest of the real NTU samples in ../shared (skeletons, and one video paired with its skeleton)."""
    root = shared_path("samples", "ntu")
    df, _ = manifest.scan("ntu60", root)
    path = tmp_path_factory.mktemp("pyskl") / "ntu60.csv"
    manifest.write_manifest(df, path, data_root=root)
    return path, root, df


def test_export_then_import_equals_the_poses_read_directly(ntu_manifest, tmp_path):
    path, root, df = ntu_manifest
    spec = get_dataset("ntu60")
    data = pyskl.export(path, tmp_path / "ntu.pkl")
    assert pyskl.export(path, tmp_path / "two.pkl", workers=2)["split"] == data["split"]
    with_skeleton = df[df["skeleton_path"] != ""]
    assert [a["frame_dir"] for a in data["annotations"]] == list(with_skeleton["sample_id"])
    loaded = pose_pickle.read_annotations(tmp_path / "ntu.pkl")
    for _, row in with_skeleton.iterrows():
        direct = poses.load_skeleton(spec, root / row["skeleton_path"], spec.frame_size).joints3d
        ann = loaded[row["sample_id"]]
        assert ann["keypoint"].dtype == np.float32 and ann["keypoint"].shape[1:] == (len(direct), 25, 3)
        assert ann["label"] == row["label"] and ann["total_frames"] == len(direct)
        assert ann["img_shape"] == ann["original_shape"] == (1080, 1920)
        np.testing.assert_array_equal(pose_pickle.keypoints_to_joints(ann["keypoint"], 25), direct)
    two_person = loaded["S001C003P008R002A058"]["keypoint"]
    assert two_person.shape[0] == 2 and loaded["S001C001P001R001A001"]["keypoint"].shape[0] == 1
    assert data["split"]["cs_train"] == data["split"]["xsub_train"]
    every = {s for name, ids in data["split"].items() if name.startswith("cs_") for s in ids}
    assert every == set(with_skeleton["sample_id"])


def test_a_manifest_with_poses_caches_the_same_poses_as_the_skeleton_files(ntu_manifest, tmp_path):
    path, root, df = ntu_manifest
    pyskl.export(path, tmp_path / "ntu.pkl")
    attached = pose_pickle.attach_poses(df, tmp_path / "ntu.pkl", tmp_path / "ntu.poses.h5")
    assert (attached[pose_pickle.POSES_SHA256] != "").all()
    (i,) = np.flatnonzero(attached["sample_id"] == "S001C001P001R001A001")
    config = CacheConfig(dataset="ntu60", extractor="pixels")
    spec = get_dataset("ntu60")
    from_skeleton = sample.prepare_sample(df.iloc[i].to_dict(), root, spec, config)
    from_pickle = sample.prepare_sample(attached.iloc[i].to_dict(), root, spec, config)
    np.testing.assert_array_equal(from_pickle.poses, from_skeleton.poses)
    np.testing.assert_array_equal(from_pickle.boxes, from_skeleton.boxes)
    data = pose_pickle.restricted_load(tmp_path / "ntu.pkl")  # the poses do come from the pickle: scale them there
    for ann in data["annotations"]:
        ann["keypoint"] *= 2
    (tmp_path / "double.pkl").write_bytes(pickle.dumps(data))
    doubled_df = pose_pickle.attach_poses(df, tmp_path / "double.pkl", tmp_path / "double.poses.h5")
    doubled = sample.prepare_sample(doubled_df.iloc[i].to_dict(), root, spec, config)
    np.testing.assert_allclose(doubled.poses, 2 * from_skeleton.poses, rtol=1e-6)
    np.testing.assert_array_equal(doubled.boxes, from_skeleton.boxes)
    pose_pickle.attach_poses(df, tmp_path / "double.pkl", tmp_path / "ntu.poses.h5")  # the manifest's file, rewritten
    with pytest.raises(sample.SampleError, match="rewritten from another pose pickle"):
        sample.prepare_sample(attached.iloc[i].to_dict(), root, spec, config)


def test_make_manifest_with_poses_writes_the_pose_file_beside_the_manifest(ntu_manifest, tmp_path):
    path, root, _ = ntu_manifest
    pyskl.export(path, tmp_path / "ntu.pkl")
    out = tmp_path / "m" / "ntu60.csv"
    assert manifest.main(["--dataset", "ntu60", "--data-root", str(root), "--out", str(out),
                          "--poses", str(tmp_path / "ntu.pkl")]) == 0
    df = manifest.read_manifest(out)
    assert set(df[pose_pickle.POSES_PATH]) == {str(out.with_suffix(".poses.h5"))}
    assert pose_pickle.read_pose_file(df[pose_pickle.POSES_PATH][0], df[pose_pickle.POSES_SHA256][0], "S001C001P001R001A001").shape == (
        103, 2, 25, 3)


def test_samples_missing_from_the_pickle_or_of_another_skeleton_get_a_problem(ntu_manifest, tmp_path):
    _, _, df = ntu_manifest
    one = {"frame_dir": "S001C001P001R001A001", "keypoint": np.ones((1, 5, 25, 3), np.float32)}
    coco = {"frame_dir": "S001C001P001R001A011", "keypoint": np.ones((1, 5, 17, 2), np.float32),
            "keypoint_score": np.ones((1, 5, 17), np.float32)}
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"split": {}, "annotations": [one, coco]}))
    problems = dict(zip(df["sample_id"], pose_pickle.attach_poses(df, tmp_path / "p.pkl", tmp_path / "p.h5")["problem"]))
    assert "no poses in the pose pickle" in problems["S002C001P003R001A003"]
    assert "C=3" in problems["S001C001P001R001A011"]
    assert "poses" not in problems["S001C001P001R001A001"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_restricted_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"annotations": [_RunsCode()]}))
    with pytest.raises(pickle.UnpicklingError, match="refused to load posix.system"):
        pose_pickle.read_annotations(evil)
    ok = tmp_path / "ok.pkl"
    arrays = {"annotations": [{"frame_dir": "x", "label": np.int64(3), "keypoint": np.zeros((1, 2, 25, 3)),
                               "img_shape": (1080, 1920)}]}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        ok.write_bytes(pickle.dumps(arrays, protocol=protocol))
        assert pose_pickle.read_annotations(ok)["x"]["label"] == 3


def test_export_from_a_cache_writes_its_poses(tmp_path):
    attrs = make_attrs({"dataset": "ntu60"}, "ab" * 32)
    records = [make_records(3)]
    records[0].sample_ids = [f"S001C001P001R001A{a:03d}" for a in (5, 1, 60)]  # the dataset's ids (read_manifest)
    records[0].labels = [4, 0, 59]
    (tmp_path / "c").mkdir()
    write_shard(tmp_path / "c" / "shard_00000.h5", records[0], attrs=attrs, atomic=True)
    merge_shards([tmp_path / "c" / "shard_00000.h5"], tmp_path / "c" / "cache.h5")
    classes = get_dataset("ntu60").classes
    rows = [{"sample_id": s, "dataset": "ntu60", "video_path": "", "skeleton_path": "", "label": str(l),
             "action": classes[l], "subject": "1", "view": "1", "setup": "1", "cs": "train", "cv": "test", "problem": ""}
            for s, l in zip(records[0].sample_ids, records[0].labels)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    data = pyskl.export(tmp_path / "m.csv", tmp_path / "c.pkl", cache=tmp_path / "c")
    for ann, clip in zip(data["annotations"], records[0].poses):
        np.testing.assert_array_equal(ann["keypoint"], clip.transpose(0, 3, 2, 1))
