"""In-process cache builds reuse a flushed sample's clip tensor for the next sample (``PreparedSamples.recycle``):
the shard holds exactly what fresh tensors give, and a tensor still pending is never written into."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.build import extract
from pipeline.cache.config import CacheConfig
from pipeline.cache.provenance import make_attrs
from pipeline.datasets import manifest
from pipeline.features import sample as sample_mod
from pipeline.features.extractor import make_extractor
from pipeline.synthetic.dataset import SyntheticConfig, generate


@pytest.fixture(scope="module")
def rows_root(tmp_path_factory) -> tuple[list[dict], Path]:
    root = tmp_path_factory.mktemp("reuse")
    generate(root, SyntheticConfig(n=5, seed=3, frame_size=(160, 120), min_frames=40, max_frames=50))
    df, _ = manifest.scan("ntu60", root)
    return df.astype(str).to_dict("records"), root


def _shard(rows, root: Path, out: Path, batch_size: int, clips_per_video: int) -> np.ndarray:
    config = CacheConfig(dataset="ntu60", manifest_sha256="0" * 64, extractor="pixels", i3d_weights_sha256="none",
                         clips_per_video=clips_per_video, crop_size=64)
    stats = extract.extract_shard(rows, root, config, make_extractor("pixels", None, "cpu"), out,
                                  attrs=make_attrs(config, "none"), workers=0, batch_size=batch_size,
                                  progress=False)
    assert stats.failures == 0 and stats.clips == len(rows) * clips_per_video
    with h5py.File(out, "r") as f:
        return f["features"][()]


@pytest.mark.parametrize("batch_size,clips_per_video", [(1, 1), (2, 1), (3, 2)])
def test_reused_clip_tensors_give_the_same_shard(rows_root, tmp_path, monkeypatch, batch_size, clips_per_video):
    rows, root = rows_root
    given: list[bool] = []
    real = sample_mod.prepare_sample

    def spy(*args, clips_out=None, **kwargs):
        given.append(clips_out is not None)
        sample = real(*args, clips_out=clips_out, **kwargs)
        assert clips_out is None or sample.clips is clips_out  # written in place
        return sample

    monkeypatch.setattr(extract, "prepare_sample", spy)
    reused = _shard(rows, root, tmp_path / "reused.h5", batch_size, clips_per_video)
    assert any(given) and not given[0]  # the first sample allocates, later ones reuse
    monkeypatch.setattr(extract.PreparedSamples, "recycle", lambda self, clips: None)
    given.clear()
    fresh = _shard(rows, root, tmp_path / "fresh.h5", batch_size, clips_per_video)
    assert not any(given)
    np.testing.assert_array_equal(reused, fresh)


def test_a_clip_tensor_of_another_shape_is_not_written_into(rows_root):
    rows, root = rows_root
    config = CacheConfig(dataset="ntu60", manifest_sha256="0" * 64, extractor="pixels", i3d_weights_sha256="none",
                         crop_size=64)
    spec = extract.get_dataset("ntu60")
    other = torch.zeros((1, 3, config.clip_len, 32, 32))
    sample = sample_mod.prepare_sample(rows[0], root, spec, config, clips_out=other)
    assert sample.clips is not other and not other.any()
    assert tuple(sample.clips.shape) == (1, 3, config.clip_len, 64, 64)
