"""The clips' crop joints (pipeline/crops/joints.py) and the joint-anchored spatial attention that reads them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cache.reader import CacheError, open_cache
from pipeline.crops import joints as cj
from pipeline.datasets.registry import get_dataset
from pipeline.synthetic.dataset import TRUTH_FILE
from tasks import cache as cache_tasks
from tests.helpers import SMALL_MODEL, synthetic_dataset, tiny_config, write_tiny_cache
from vpn_head.data.clips import CachedClips, resolve_cache
from vpn_head.eval import diagnostics as diag
from vpn_head.eval.evaluate import evaluate_run
from vpn_head.model.attention import joint_anchored_map
from vpn_head.model.config import VPNConfig
from vpn_head.model.vpn import VPN
from vpn_head.train.head import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_clip_crop_joints_normalises_to_the_box_and_fills_like_the_poses():
    clip_len, t_p = 8, 3  # pose times 0, 4 (rounded from 3.5), 7
    joints = np.full((clip_len, 2, 2, 2), np.nan, dtype=np.float32)  # (frames, bodies, J=2, xy)
    joints[:, 0, 0] = [60.0, 120.0]  # body 0 joint 0: the box centre
    joints[:, 0, 1] = [10.0, 20.0]  # joint 1: the box's top-left corner
    joints[4, 0] = np.nan  # body 0 missing at the middle pose time: takes its nearest time
    out = cj.clip_crop_joints(joints, np.array([10.0, 20.0, 110.0, 220.0]), t_p)
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], [[0.5] * 3, [0.5] * 3])  # (x, y) of joint 0 over the times
    np.testing.assert_allclose(out[0, :, 1], np.zeros((2, 3)))
    assert np.isnan(out[1]).all()  # body 1 never present


def test_joint_anchored_map_peaks_on_the_weighted_joint_and_ignores_absent_ones():
    xy = torch.full((1, 2, 2, 3, 4), float("nan"))  # (N, bodies, xy, J, t_p)
    xy[0, 0, :, 0] = 0.5  # joint 0 at the centre of cell (3, 3) of a 7 x 7 grid
    xy[0, 0, 0, 1], xy[0, 0, 1, 1] = 1 / 14, 13 / 14  # joint 1 at the centre of cell (row 6, col 0)
    weights = torch.zeros(1, 6)
    weights[0, 0] = 1.0
    a_s = joint_anchored_map(weights, xy, 7, sigma=0.75)
    assert a_s.shape == (1, 7, 7) and a_s[0].argmax() == 3 * 7 + 3 and a_s[0, 3, 3] == pytest.approx(1.0)
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert joint_anchored_map(weights, xy, 7, 0.75)[0].argmax() == 6 * 7 + 0
    weights = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])  # an absent body's joint: no attention anywhere
    assert joint_anchored_map(weights, xy, 7, 0.75).abs().max() == 0


def test_joint_anchored_head_trains_every_parameter_and_checks_its_input():
    config = VPNConfig.for_dataset("ntu60", "cs", variant="vpn", spatial_attention="joints", **SMALL_MODEL)
    assert config.pose_channels == 5
    model = VPN(config)
    poses = torch.randn(3, 2, 5, 25, 20)
    poses[:, :, 3:] = torch.rand(3, 2, 2, 25, 20)
    out = model(torch.rand(3, 1024, 8, 7, 7), poses)
    (out.logits.logsumexp(1).sum() + (out.f_e * out.p_e).sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing and model.attention.spatial[-1].out_features == 50  # one logit per joint of each body
    with pytest.raises(ValueError, match=r"\(N=3, 2, 5, 25, 20\)"):
        model(torch.rand(3, 1024, 8, 7, 7), torch.randn(3, 2, 3, 25, 20))


def _tiny_with_joints(folder, seed=0):
    """A tiny cache whose crop-joint side file puts the class's joint c on a class-specific cell."""
    cache = write_tiny_cache(folder, "nucla", videos={"train": 8, "test": 3})
    with open_cache(cache) as reader:
        ids, frames, boxes, labels = reader.sample_ids, reader.frame_indices, reader.boxes, reader.labels
        shape = (len(ids), 2, 2, reader.num_joints, reader.t_p)
    rng = np.random.default_rng(seed)
    joints = rng.uniform(0.1, 0.9, shape).astype(np.float32)
    joints[:, 1] = np.nan
    for row, label in enumerate(labels):
        joints[row, 0, :, label] = 0.1 + 0.2 * label
    cj.save_crop_joints(cache, joints, cj.rows_digest(ids, frames, boxes), [])
    return cache, joints


def test_cached_clips_append_the_crop_joints_and_refuse_a_stale_or_missing_side_file(tmp_path):
    cache, joints = _tiny_with_joints(tmp_path / "c")
    clips = CachedClips(cache, "v3_12", "test", crop_joints=True)
    features, poses, label, row = clips[0]
    with open_cache(cache) as reader:
        np.testing.assert_array_equal(poses[:, :3].numpy(), reader.read_poses(row))
    np.testing.assert_array_equal(poses[:, 3:].numpy(), joints[row])
    assert clips.pose_shape == (2, 5, 20, 5)
    loaded = CachedClips(cache, "v3_12", "test", in_memory=True, crop_joints=True)
    np.testing.assert_array_equal(loaded[0][1].numpy(), poses.numpy())
    assert CachedClips(cache, "v3_12", "test")[0][1].shape == (2, 3, 20, 5)
    other = write_tiny_cache(tmp_path / "other", "nucla", videos={"train": 8, "test": 3}, seed=1)
    (cache / cj.CROP_JOINTS_NAME).rename(other / cj.CROP_JOINTS_NAME)
    with pytest.raises(CacheError, match="make joints"):
        CachedClips(cache, "v3_12", "test", crop_joints=True)
    cj.save_crop_joints(other, joints[:-1], "not-these-rows", [])
    with pytest.raises(CacheError, match="other cache rows"):
        CachedClips(other, "v3_12", "test", crop_joints=True)


def test_joint_anchored_head_trains_evaluates_and_its_pose_shuffle_moves_the_geometry(tmp_path):
    cache, _ = _tiny_with_joints(tmp_path / "c")
    config = tiny_config(cache, tmp_path / "runs", variant="attention", epochs=2,
                         model={**SMALL_MODEL, "spatial_attention": "joints", "attention_pooling": "normalised",
                                "attention_residual": False})
    summary = train(config)
    assert summary["epochs_done"] == 2
    metrics = evaluate_run(config.run_dir, split="test", cache=str(cache), device="cpu")
    assert metrics["num_videos"] == 12 and "pose_shuffle" in metrics
    assert 0.0 <= metrics["attention"]["a_s_spread"]


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory):
    """Twelve synthetic NTU videos (random active hand, its joint in synthetic_truth.csv), cached as pixels."""
    root = synthetic_dataset(tmp_path_factory.mktemp("cj"), n=12, seed=5, min_frames=40, max_frames=70,
                             active_hand="random", hand_amplitude_m=0.2)
    cache_root = root / "cache"
    assert cache_tasks.main(["--dataset", "ntu60", "--manifest", str(root / "manifest.csv"), "--cache-dir",
                             str(cache_root), "--extractor", "pixels", "--shard-size", "12",
                             "--decode-workers", "0"]) == 0
    return root, resolve_cache(cache_root, "ntu60")


def test_crop_joints_of_real_format_files_agree_with_the_diagnostics_joint_cells(synthetic_cache):
    """Two computations of where the class-carrying hand lies in each crop: the side file's (t_p pose times) and
    the attention diagnostic's (all 64 sampled frames, from the skeleton files). They must name the same cell."""
    root, cache = synthetic_cache
    target = cj.write_crop_joints(cache, root / "manifest.csv")
    assert target == cache / cj.CROP_JOINTS_NAME
    with open_cache(cache) as reader:
        ids, poses, rows = reader.sample_ids, reader.read_rows(np.arange(len(reader)))["poses"], np.arange(len(reader))
        frames, boxes = reader.frame_indices, reader.boxes
    joints = cj.read_crop_joints(cache, ids, frames, boxes)
    assert joints.shape == (len(ids), 2, 2, 25, 20)
    truth = pd.read_csv(root / TRUTH_FILE).set_index("sample_id")["active_joint"]
    key = np.array([truth[s] for s in ids])
    cells, note = diag.clip_joint_cells(cache, rows, ids, poses, get_dataset("ntu60"), root / "manifest.csv", None, 7)
    assert "class-carrying" in note
    mean_xy = joints[np.arange(len(ids)), 0, :, key].mean(axis=-1)  # (N, 2)
    ours = np.clip((mean_xy[:, ::-1] * 7).astype(int), 0, 6)  # (row, col)
    assert (np.abs(ours - cells).max(axis=1) <= 1).all()
    assert (ours == cells).all(axis=1).mean() >= 0.75
    inside = joints[:, 0][np.isfinite(joints[:, 0])]
    assert inside.min() >= -0.05 and inside.max() <= 1.05  # the crop box holds the skeleton (with its pad)


def test_make_joints_cli_names_bad_input(synthetic_cache, tmp_path, capsys):
    root, cache = synthetic_cache
    assert cj.main(["--cache-dir", str(tmp_path / "nothing"), "--manifest", str(root / "manifest.csv")]) == 2
    assert "no cache" in capsys.readouterr().err
    partial = tmp_path / "partial.csv"
    pd.read_csv(root / "manifest.csv").iloc[:3].to_csv(partial, index=False)
    assert cj.main(["--cache-dir", str(cache), "--manifest", str(partial), "--data-root", str(root)]) == 2
    assert "does not list" in capsys.readouterr().err
