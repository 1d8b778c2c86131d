"""Pose subsampling, normalisation, frame alignment, the cache config and its hash."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cache.config import CacheConfig
from pipeline.datasets import poses
from pipeline.datasets.registry import get_dataset
from tests.conftest import shared_path


def test_subsample_positions_are_even_and_cover_the_clip():
    assert poses.subsample_positions(64, 20).tolist()[:4] == [0, 3, 7, 10]
    assert poses.subsample_positions(64, 20)[-1] == 63
    assert poses.subsample_positions(64, 5).tolist() == [0, 16, 32, 47, 63]
    assert len(set(poses.subsample_positions(64, 30))) == 30


def test_align_frames_identity_and_proportional():
    idx = np.array([0, 10, 99])
    assert poses.align_frames(idx, 100, 100).tolist() == [0, 10, 99]
    assert poses.align_frames(idx, 100, 50).tolist() == [0, 5, 49]
    assert poses.align_frames(np.array([0, 0]), 1, 7).tolist() == [0, 0]


def test_clip_poses_translate_fill_and_pad():
    rng = np.random.default_rng(0)
    joints = rng.normal(size=(64, 2, 25, 3)).astype(np.float32)
    joints[:, 1] = np.nan  # second body absent
    joints[10:20, 0] = np.nan  # body 0 lost for a while
    out = poses.clip_poses(joints, t_p=20, centre_joint=1)
    assert out.shape == (2, 3, 25, 20) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, 1, 0], 0, atol=1e-6)  # centre joint of the first pose is the origin
    assert not out[1].any()  # absent body is zero
    pos = poses.subsample_positions(64, 20)
    lost = np.flatnonzero((pos >= 10) & (pos < 20))  # subsampled poses where body 0 is missing
    kept = np.flatnonzero((pos < 10) | (pos >= 20))
    origin = joints[0, 0, 1]
    for t in lost:
        nearest = kept[np.abs(kept - t).argmin()]
        np.testing.assert_allclose(out[0, :, :, t], out[0, :, :, nearest])
    np.testing.assert_allclose(out[0, :, :, kept[-1]].T, joints[pos[kept[-1]], 0] - origin, atol=1e-5)


def test_load_real_ntu_skeleton_scales_colour_to_video():
    spec = get_dataset("ntu60")
    path = shared_path("samples", "ntu", "S001C001P001R001A001.skeleton")
    full = poses.load_skeleton(spec, path, (1920, 1080))
    half = poses.load_skeleton(spec, path, (960, 540))
    assert full.joints3d.shape == (103, 2, 25, 3) and np.isnan(full.joints3d[:, 1]).all()
    np.testing.assert_allclose(half.joints2d[0, 0, 0], full.joints2d[0, 0, 0] / 2, rtol=1e-6)
    np.testing.assert_allclose(full.joints2d[0, 0, 0], [1036.233, 519.1677], rtol=1e-6)


def test_load_nucla_json_projects_into_the_image():
    clip = poses.load_skeleton(get_dataset("nucla"), shared_path("samples", "nucla", "a01_s01_e00_v01.json"),
                               (640, 480))
    xy = clip.joints2d[:, 0]
    assert clip.joints3d.shape == (44, 2, 20, 3)
    assert ((xy[..., 0] > 0) & (xy[..., 0] < 640) & (xy[..., 1] > 0) & (xy[..., 1] < 480)).mean() > 0.95


def test_cache_config_hash_changes_with_content_fields_only():
    base = CacheConfig(dataset="ntu60", manifest_sha256="a")
    assert base.digest() == CacheConfig(dataset="ntu60", manifest_sha256="a").digest()
    for change in (dict(t_p=10), dict(clips_per_video=2), dict(crop_pad=0.2), dict(i3d_weights_sha256="b"),
                   dict(protocol="cs"), dict(manifest_sha256="c"), dict(extractor="pixels")):
        assert CacheConfig(**{**base.to_dict(), **change}).digest() != base.digest()
    assert CacheConfig.from_json(base.to_json()) == base
    with pytest.raises(ValueError, match="t_p=80 cannot exceed"):
        CacheConfig(dataset="ntu60", t_p=80)
    with pytest.raises(ValueError, match="precision"):
        CacheConfig(dataset="ntu60", precision="fp16")
