"""One I3D input/output spec: what derives from it, and a cache of 32-frame clips that a head trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import contracts
from pipeline.build import steps as cache_build
from pipeline.cache import layout
from pipeline.cache.config import CacheConfig
from pipeline.cache.reader import CacheError, open_cache
from pipeline.features.extractor import PixelFeatures
from pipeline.i3d import spec as i3d_spec
from pipeline.utils.fileio import file_sha256
from tests.helpers import SMALL_MODEL, synthetic_dataset
from vpn_head.model.config import VPNConfig
from vpn_head.train.head import TrainConfig, train


def test_the_spec_gives_the_paper_shapes_and_everything_derives_from_it():
    assert i3d_spec.feature_shape() == i3d_spec.FEATURE_SHAPE == (1024, 8, 7, 7)
    assert i3d_spec.feature_shape(32, 224) == (1024, 4, 7, 7) and i3d_spec.feature_shape(9, 256) == (1024, 2, 8, 8)
    assert (contracts.CLIP_FRAMES, contracts.CROP_SIZE, contracts.FEATURE_SHAPE) == (64, 224, (1024, 8, 7, 7))
    config = VPNConfig.for_dataset("ntu60", "cs")
    assert (config.feature_channels, config.feature_time, config.feature_size) == (1024, 8, 7)
    assert (CacheConfig(dataset="ntu60").clip_len, CacheConfig(dataset="ntu60").crop_size) == (64, 224)
    for clip_len, crop in ((64, 224), (32, 224), (16, 160)):  # the smoke-test extractor follows I3D's grid
        out = PixelFeatures().forward_features(torch.zeros(1, 3, clip_len, crop, crop))
        assert tuple(out.shape[1:]) == i3d_spec.feature_shape(clip_len, crop)


@pytest.fixture(scope="module")
def short_clip_cache(tmp_path_factory):
    """A cache of 32-frame clips built by the pipeline's library (pixels extractor) from synthetic NTU data."""
    root = synthetic_dataset(tmp_path_factory.mktemp("data"), n=12, seed=3, min_frames=30, max_frames=60)
    manifest_path = root / "manifest.csv"
    config = CacheConfig(dataset="ntu60", protocol="cs", manifest_sha256=file_sha256(manifest_path),
                         i3d_weights_sha256="none", extractor="pixels", clip_len=32, shard_size=6)
    cache_root = tmp_path_factory.mktemp("cache")
    job = cache_build.ShardJob(manifest=str(manifest_path), data_root=str(root), decode_workers=0)
    for index in range(cache_build.shard_count(config, job.manifest)):
        cache_build.run_shard(config, cache_root, index, job, "cpu",
                              layout.shard_path(config.cache_dir(cache_root), index))
    cache_build.merge_build(config, cache_root, job.manifest)
    return cache_root, config


def test_the_writer_honours_clip_len(short_clip_cache):
    cache_root, config = short_clip_cache
    with open_cache(layout.resolve(cache_root, "ntu60")) as reader:
        assert len(reader) == 12 and reader.clip_len == 32
        assert reader.feature_shape == (1024, 4, 7, 7) and reader.frame_indices.shape == (12, 32)
        assert reader.read_rows([0, 11])["features"].shape == (2, 1024, 4, 7, 7)
        assert reader.attrs["config_json"]["clip_len"] == 32


def test_a_head_trains_on_32_frame_clips_and_a_mismatched_model_is_refused(short_clip_cache, tmp_path):
    cache_root, _ = short_clip_cache
    common = dict(dataset="ntu60", protocol="cs", variant="vpn", epochs=1, batch_size=4, num_workers=0,
                  cache=str(cache_root), runs_dir=str(tmp_path), device="cpu")
    metrics = train(TrainConfig(**common, model={**SMALL_MODEL, "feature_time": 4}, run_name="short"))
    assert metrics["epochs_done"] == 1 and np.isfinite(metrics["last"]["top1"])
    with pytest.raises(CacheError, match=r"features are \(1024, 4, 7, 7\), the model expects \(C, T\) = \(1024, 8\)"):
        train(TrainConfig(**common, model=SMALL_MODEL, run_name="default_model"))
