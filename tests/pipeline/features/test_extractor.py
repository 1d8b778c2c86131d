"""The extractors of a recorded cache config: I3D weights checked by sha256; raw inputs as manifest rows."""

from __future__ import annotations

import pytest

from pipeline.cache.config import CacheConfig
from pipeline.contracts import PROBLEM_COLUMN
from pipeline.features.extractor import PixelFeatures, WeightsMismatchError, extractor_for
from pipeline.features.inputs import find_inputs
from tests.conftest import shared_path


def test_i3d_weights_are_checked_by_sha256(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"some other weights")
    built = CacheConfig(dataset="ntu60", i3d_weights_sha256="ab" * 32)
    with pytest.raises(WeightsMismatchError, match="are not the ones the run's cache was built with"):
        extractor_for(built, weights, "cpu")
    with pytest.raises(WeightsMismatchError, match="pass them with I3D_WEIGHTS="):
        extractor_for(built, None, "cpu")
    with pytest.raises(WeightsMismatchError, match="random-init"):
        extractor_for(CacheConfig(dataset="ntu60"), weights, "cpu")
    assert isinstance(extractor_for(CacheConfig(dataset="ntu60", extractor="pixels", i3d_weights_sha256="none"),
                                    weights, "cpu"), PixelFeatures)


def test_inputs_pair_a_video_with_its_skeleton_or_say_why_not(tmp_path):
    video = shared_path("samples", "ntu", "S001C001P001R001A001_rgb.avi")
    (row,) = find_inputs("ntu60", video).rows
    assert row["skeleton_path"] == "S001C001P001R001A001.skeleton" and row["action"] == "drink water"
    lone = tmp_path / "clip.avi"
    lone.write_bytes(video.read_bytes()[:1000])
    (row,) = find_inputs("ntu60", lone).rows
    assert "pass SKELETON=" in row[PROBLEM_COLUMN]
    with pytest.raises(FileNotFoundError, match="INPUT"):
        find_inputs("ntu60", tmp_path / "missing.avi")
    with pytest.raises(ValueError, match="single video"):
        find_inputs("ntu60", tmp_path, skeleton=video)
