"""End-to-end fine-tune: augmentation, pixel datasets, training steps, resume, DDP, paper-style evaluation.

Runs on the CPU with tiny inputs: 8-frame 64 x 64 clips give a (1024, 1, 2, 2) Mixed_5c map, so the head is
built with ``feature_time=1, feature_size=2``; the I3D is random-init (``load_i3d(None)`` warns).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from pipeline.cache.reader import CacheError, open_cache
from pipeline.datasets import manifest
from pipeline.datasets.registry import DATASETS, get_dataset
from pipeline.video import crop
from tasks import cache as cache_tasks
from tests.conftest import REPO
from tests.helpers import synthetic_dataset
from vpn_head.data.augment import (
    AugmentConfig,
    clip_indices,
    crop_keep_aspect,
    flip_clip,
    flip_permutation,
    flip_poses,
    jitter_box,
)
from vpn_head.data.clips import resolve_cache
from vpn_head.data.pixels import PixelClips, StepSampler, sample_paths
from vpn_head.engine import loop as engine
from vpn_head.engine.checkpoints import HEAD, CheckpointError, save_checkpoint
from vpn_head.engine.config import FinetuneConfig, accumulation_steps
from vpn_head.engine.loop import RunConfigError
from vpn_head.model.config import VPNConfig
from vpn_head.model.losses import vpn_loss
from vpn_head.model.vpn import VPN
from vpn_head.runtime import DistContext
from vpn_head.train import finetune as ft

TINY_HEAD = {"embed_dim": 16, "attention_hidden": 16, "gcn_channels": 8, "dropout": 0.0}
NO_AUGMENT = AugmentConfig(flip_prob=0.0, temporal_jitter=False, box_scale=0.0, box_shift=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """8 synthetic NTU videos (160 x 96, 24-40 frames), their manifest and a pixels-extractor cache."""
    root = tmp_path_factory.mktemp("finetune")
    synthetic_dataset(root / "data", n=8, seed=3, min_frames=24, max_frames=40, manifest_path=root / "manifest.csv",
                      num_classes=2, frame_size=(160, 96))
    assert cache_tasks.main(["--dataset", "ntu60", "--manifest", str(root / "manifest.csv"), "--cache-dir",
                             str(root / "cache"), "--extractor", "pixels", "--shard-size", "8"]) == 0
    return {"root": root, "manifest": root / "manifest.csv", "cache": root / "cache", "data": root / "data"}


def tiny_config(data: dict[str, Path], runs: Path, **overrides) -> FinetuneConfig:
    # 8 synthetic videos are too few to carve a validation set out of train: these tests are about the mechanics
    values = dict(dataset="ntu60", protocol="cs", eval_split="test", epochs=2, batch_size=4, per_gpu_batch=2,
                  clip_len=8, crop_size=64,
                  model=TINY_HEAD, eval_clips=2, eval_crop_size=96, num_workers=0, manifest=str(data["manifest"]),
                  cache=str(data["cache"]), runs_dir=str(runs), run_name="tiny")
    values.update(overrides)
    return FinetuneConfig(**values)


def train_clips(data: dict[str, Path], **kwargs) -> PixelClips:
    kwargs = {"clip_len": 8, "crop_size": 64, **kwargs}
    return PixelClips(resolve_cache(data["cache"], "ntu60"), "cs", "train", "ntu60",
                         sample_paths(data["manifest"]), **kwargs)


# ----------------------------------------------------------------------------------------------------------
# augmentation


def test_flip_poses_matches_a_hand_computed_example_and_is_an_involution():
    spec = get_dataset("ntu60")
    poses = np.zeros((2, 3, 25, 4), np.float32)
    poses[0, :, 4, 0] = (0.3, 1.0, 3.0)  # ShoulderLeft
    poses[0, :, 8, 0] = (-0.2, 1.1, 3.2)  # ShoulderRight
    poses[0, :, 1, 0] = (0.05, 0.5, 3.1)  # SpineMid (no partner)
    flipped = flip_poses(poses, spec.left_right)
    np.testing.assert_allclose(flipped[0, :, 4, 0], [0.2, 1.1, 3.2], rtol=1e-7)  # old right shoulder, x negated
    np.testing.assert_allclose(flipped[0, :, 8, 0], [-0.3, 1.0, 3.0], rtol=1e-7)
    np.testing.assert_allclose(flipped[0, :, 1, 0], [-0.05, 0.5, 3.1], rtol=1e-7)
    assert not np.array_equal(flipped, poses)
    noise = np.random.default_rng(0).normal(size=(2, 3, 25, 20)).astype(np.float32)
    np.testing.assert_array_equal(flip_poses(flip_poses(noise, spec.left_right), spec.left_right), noise)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_flip_permutation_swaps_named_left_and_right_joints(name):
    spec = get_dataset(name)
    perm = flip_permutation(spec.num_joints, spec.left_right)
    np.testing.assert_array_equal(perm[perm], np.arange(spec.num_joints))
    assert (perm != np.arange(spec.num_joints)).sum() == 2 * len(spec.left_right) > 0
    for j, joint in enumerate(spec.joints):
        mirrored = joint.replace("Left", "#").replace("Right", "Left").replace("#", "Right")
        mirrored = mirrored.replace("L_", "#").replace("R_", "L_").replace("#", "R_")
        assert spec.joints[perm[j]] == mirrored


def test_flip_rejects_bad_inputs():
    with pytest.raises(ValueError, match="share a joint"):
        flip_permutation(5, ((0, 1), (1, 2)))
    with pytest.raises(ValueError, match="two distinct joints"):
        flip_permutation(5, ((0, 7),))
    with pytest.raises(ValueError, match=r"\(B, 3, J, t_p\)"):
        flip_poses(np.zeros((3, 25, 20)), ())


def test_flip_clip_mirrors_columns():
    frames = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    flipped = flip_clip(frames)
    np.testing.assert_array_equal(flipped[:, :, 0], frames[:, :, 3])
    np.testing.assert_array_equal(flip_clip(flipped), frames)


def test_temporal_jitter_keeps_indices_sorted_inside_the_window():
    cached = np.floor(np.linspace(3, 40, 64) + 0.5).astype(np.int64)
    np.testing.assert_array_equal(clip_indices(cached, 64), cached)
    draws = []
    for seed in range(20):
        out = clip_indices(cached, 16, np.random.default_rng(seed))
        assert out.shape == (16,) and np.all(np.diff(out) >= 0)
        assert out.min() >= 3 and out.max() <= 40
        draws.append(out)
    assert len({tuple(d) for d in draws}) > 1
    np.testing.assert_array_equal(clip_indices(cached, 16, np.random.default_rng(5)),
                                  clip_indices(cached, 16, np.random.default_rng(5)))
    even = clip_indices(cached, 16)
    assert even[0] == 3 and even[-1] == 40
    with pytest.raises(ValueError, match="sorted"):
        clip_indices(cached[::-1], 16)


def test_jitter_box_stays_in_the_frame_and_zero_jitter_is_identity():
    box = np.array([10.0, 20.0, 74.0, 84.0], np.float32)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(jitter_box(box, 160, 96, rng, 0.0, 0.0), box)
    for _ in range(50):
        x0, y0, x1, y1 = jitter_box(box, 160, 96, rng, 0.2, 0.3)
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 96
        assert 64 * 0.8 - 1e-3 <= x1 - x0 <= 64 * 1.2 + 1e-3
    with pytest.raises(ValueError, match="box_scale"):
        AugmentConfig(box_scale=1.5).validate()


def test_crop_keep_aspect_sets_the_short_side_and_keeps_the_layout():
    frames = np.zeros((2, 60, 100, 3), np.uint8)
    frames[:, :, 50:] = 200  # right half bright
    out = crop_keep_aspect(frames, np.array([0, 10, 100, 50]), 32)  # a 100 x 40 box
    assert out.shape == (2, 32, 80, 3)
    assert out[:, :, :35].max() == 0 and out[:, :, 45:].min() == 200


# ----------------------------------------------------------------------------------------------------------
# data


def test_accumulation_steps():
    assert accumulation_steps(16, 4, 1) == 4
    assert accumulation_steps(16, 4, 2) == 2
    assert accumulation_steps(16, 2, 8) == 1
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(16, 4, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(16, 3, 1)


def test_step_sampler_deals_the_same_steps_to_any_world_size(data):
    clips = train_clips(data)  # 6 train clips: one step of 4, 2 clips left out
    single = StepSampler(clips, DistContext(), 4, seed=1)
    ranks = [StepSampler(clips, DistContext(rank, 2), 4, seed=1) for rank in (0, 1)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        keys = list(single)
        assert len(keys) == 4 and all(key[0] == epoch for key in keys)
        assert sorted(k for r in ranks for k in r) == sorted(keys)
    with pytest.raises(ValueError, match="fewer than one step"):
        StepSampler(clips, DistContext(), 16, seed=0)


def test_pixel_clips_reproduce_the_cached_clip_and_poses(data):
    clips = train_clips(data, clip_len=64, crop_size=32)
    with open_cache(clips.path) as reader:
        for index in range(len(clips)):
            row = int(clips.rows[index])
            sample_id = clips.sample_ids[index]
            cached = reader.frame_indices[row]
            frames = clips.read_frames(sample_id, cached)
            recomputed = clips.poses_at(sample_id, cached, (frames.shape[2], frames.shape[1]))
            np.testing.assert_allclose(recomputed, reader.read_poses(row), atol=1e-6)
    clip, poses, label, row = clips[0]
    assert clip.shape == (3, 64, 32, 32) and clip.dtype == torch.float32
    assert -1.0 <= clip.min() and clip.max() <= 1.0
    expected = crop.crop_and_resize(clips.read_frames(clips.sample_ids[0], clips.frame_indices[0]), clips.boxes[0],
                                    32)
    np.testing.assert_array_equal(clip.numpy(), expected)
    with open_cache(clips.path) as reader:
        np.testing.assert_array_equal(poses.numpy(), reader.read_poses(row))
        assert label == reader.labels[row]


def test_flip_augmentation_mirrors_video_and_poses_together(data):
    plain = train_clips(data, augment=NO_AUGMENT, seed=0)
    flipped = train_clips(data, augment=replace(NO_AUGMENT, flip_prob=1.0), seed=0)
    for key in ((0, 1), (3, 4)):
        clip, poses, label, row = plain[key]
        clip_f, poses_f, label_f, row_f = flipped[key]
        torch.testing.assert_close(clip_f, clip.flip(-1), rtol=0, atol=0)
        np.testing.assert_array_equal(poses_f.numpy(), flip_poses(poses.numpy(), get_dataset("ntu60").left_right))
        assert (label, row) == (label_f, row_f)


def test_augmentation_depends_only_on_seed_epoch_and_index(data):
    clips = train_clips(data, augment=AugmentConfig(), seed=7)
    first, again, other_epoch = clips[(0, 2)], clips[(0, 2)], clips[(1, 2)]
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1], again[1], rtol=0, atol=0)
    assert not torch.equal(first[0], other_epoch[0])


def test_bad_paths_give_clear_errors(data, tmp_path):
    paths = sample_paths(data["manifest"])
    cache = resolve_cache(data["cache"], "ntu60")
    with pytest.raises(FileNotFoundError, match="DATA_ROOT"):
        PixelClips(cache, "cs", "train", "ntu60", sample_paths(data["manifest"], tmp_path))
    with pytest.raises(CacheError, match="not in the manifest"):
        PixelClips(cache, "cs", "train", "ntu60", dict(list(paths.items())[:2]))
    (tmp_path / "ntu60").mkdir()
    (tmp_path / "ntu60" / "LATEST").write_text("0123abcd\n")
    with pytest.raises(CacheError, match="LATEST names .*0123abcd, which holds no cache.h5"):
        resolve_cache(tmp_path, "ntu60")


# ----------------------------------------------------------------------------------------------------------
# model and training


def _fixed_batch(data: dict[str, Path]) -> tuple[torch.Tensor, ...]:
    clips = train_clips(data)
    return tuple(default_collate([clips[i] for i in range(4)]))


def test_steps_update_i3d_and_lower_the_loss_on_a_fixed_batch(data, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(data, tmp_path)
    model = ft.build_model(config, t_p=20)
    assert model.config.feature_time == 1 and model.config.feature_size == 2
    clips, poses, labels, _ = _fixed_batch(data)
    before = model.i3d.Mixed_4b.b1b.conv3d.weight.detach().clone()

    def loss() -> float:
        model.train()
        with torch.no_grad():
            return vpn_loss(model(clips, poses), labels, model.config)["total"].item()

    start = loss()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    row = engine.train_epoch(model, [(clips, poses, labels, None)] * 3, optimizer, scaler, torch.device("cpu"), False,
                         accum=1, ctx=DistContext(), description="test")
    assert row["train_samples_per_s"] > 0
    assert loss() < start
    assert not torch.allclose(model.i3d.Mixed_4b.b1b.conv3d.weight, before)
    for name, parameter in model.named_parameters():
        assert parameter.grad is None, f"{name}: gradients must be cleared after each step"


def test_freeze_until_keeps_early_blocks_fixed(data, tmp_path):
    model = ft.build_model(tiny_config(data, tmp_path, freeze_until="Mixed_3c"), t_p=20)
    model.train()
    assert not model.i3d.Conv3d_1a_7x7.bn.training and model.i3d.Mixed_4b.b0.bn.training
    frozen = model.i3d.Mixed_3c.b0.conv3d.weight.detach().clone()
    clips, poses, labels, _ = _fixed_batch(data)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    engine.train_epoch(model, [(clips, poses, labels, None)], optimizer, torch.amp.GradScaler("cpu", enabled=False),
                   torch.device("cpu"), False, accum=1, ctx=DistContext(), description="test")
    torch.testing.assert_close(model.i3d.Mixed_3c.b0.conv3d.weight, frozen, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown block"):
        ft.build_model(tiny_config(data, tmp_path, freeze_until="Mixed_9z"), t_p=20)


def test_score_windows_max_pools_softmax_over_clips_and_windows(data, tmp_path):
    torch.manual_seed(0)
    model = ft.build_model(tiny_config(data, tmp_path), t_p=20).eval()
    clips = torch.rand(3, 3, 8, 96, 128) * 2 - 1  # Mixed_5c (3, 1024, 1, 3, 4): 2 x 3 windows of 2 x 2
    poses = torch.randn(3, 2, 3, 25, 20)
    with torch.no_grad():
        scores = model.score_windows(clips, poses, chunk=2)
        features = model.i3d.forward_features(clips)
        expected = torch.stack([
            torch.softmax(model.head(features[k:k + 1, :, :, i:i + 2, j:j + 2], poses[k:k + 1]).logits, 1)[0]
            for k in range(3) for i in range(2) for j in range(3)]).amax(0)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def _head_run(run_dir: Path, head: VPN, dataset: str = "ntu60", protocol: str = "cs") -> None:
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / "best.pt", HEAD, epoch=3, model=head.state_dict(),
                    train_config={"dataset": dataset, "protocol": protocol}, vpn_config=head.config.to_dict())


def test_init_loads_a_head_run_and_refuses_one_that_does_not_fit(data, tmp_path):
    torch.manual_seed(1)
    fits = VPN(VPNConfig.for_dataset("ntu60", "cs", variant="attention", feature_time=1, feature_size=2, **TINY_HEAD))
    _head_run(tmp_path / "fits", fits)
    model = ft.build_model(tiny_config(data, tmp_path, model={}, init=str(tmp_path / "fits")), t_p=20)
    assert model.config.variant == "attention"
    for key, value in fits.state_dict().items():
        torch.testing.assert_close(model.head.state_dict()[key], value)
    _head_run(tmp_path / "cached", VPN(VPNConfig.for_dataset("ntu60", "cs", **TINY_HEAD)))  # a 8 x 7 x 7 head
    with pytest.raises(ValueError, match="the head expects"):
        ft.build_model(tiny_config(data, tmp_path, model={}, init=str(tmp_path / "cached")), t_p=20)
    _head_run(tmp_path / "other", fits, protocol="cv")
    with pytest.raises(ValueError, match="not ntu60/cs"):
        ft.build_model(tiny_config(data, tmp_path, model={}, init=str(tmp_path / "other")), t_p=20)
    with pytest.raises(ValueError, match="new head only"):
        tiny_config(data, tmp_path, init=str(tmp_path / "fits")).validate()
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        ft.build_model(tiny_config(data, tmp_path, model={}, init=str(tmp_path)), t_p=20)


def _states(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    return {**{f"i3d.{k}": v for k, v in ckpt["i3d"].items()}, **{f"head.{k}": v for k, v in ckpt["model"].items()}}


def _log_rows(run_dir: Path) -> list[list[str]]:
    lines = (run_dir / "train_log.csv").read_text().splitlines()
    header = lines[0].split(",")
    timed = {header.index(c) for c in ("epoch_time_s", "train_samples_per_s")}
    return [[v for i, v in enumerate(line.split(",")) if i not in timed] for line in lines[1:]]


def test_resume_after_a_stop_equals_an_uninterrupted_run(data, tmp_path):
    straight = tiny_config(data, tmp_path, run_name="straight", eval_clips=2, eval_crop_size=64)
    summary = ft.finetune(straight)
    assert summary["epochs_done"] == 2 and summary["test"]["num_videos"] == 2
    staged = replace(straight, run_name="staged")
    ft.finetune(replace(staged, epochs=1))
    ft.finetune(staged)
    a, b = _states(tmp_path / "straight"), _states(tmp_path / "staged")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert _log_rows(tmp_path / "straight") == _log_rows(tmp_path / "staged")
    events = [json.loads(line) for line in (tmp_path / "staged" / "events.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]  # the engine's log, resumed once
    assert [(e["kind"], e["start_epoch"]) for e in events if e["event"] == "run_start"] == [("finetune", 0),
                                                                                             ("finetune", 1)]
    run = tmp_path / "straight"
    assert {p.name for p in (run / "eval_test").iterdir()} == {"confusion.csv", "confusion.png", "predictions.csv",
                                                               "metrics.json"}
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert metrics["num_videos"] == 2 and metrics["clips_per_video"] == 2 and 0 <= metrics["top1"] <= 1
    assert ft.finetune(straight)["epochs_done"] == 2  # already done: nothing to do
    assert ft.main(["--dataset", "ntu60", "--protocol", "cs", "--manifest", str(data["manifest"]), "--cache-dir",
                    str(data["cache"]), "--runs-dir", str(tmp_path), "--run", "straight", "--eval-only",
                    "--checkpoint", "last", "--eval-clips", "1", "--num-workers", "0"]) == 0
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert (metrics["checkpoint"], metrics["clips_per_video"], metrics["epoch"]) == ("last.pt", 1, 2)
    from vpn_head.eval.evaluate import evaluate_run  # `make eval` on a fine-tune run scores it from pixels too

    via_eval = evaluate_run(run, checkpoint="best")
    assert via_eval["clips_per_video"] == 2 and via_eval["checkpoint"] == "best.pt"
    with pytest.raises(RunConfigError, match="lr"):
        ft.finetune(replace(straight, epochs=3, lr=0.1))


def test_cli_reports_bad_batch_sizes(data, tmp_path, capsys):
    args = ["--dataset", "ntu60", "--protocol", "cs", "--manifest", str(data["manifest"]), "--cache-dir",
            str(data["cache"]), "--runs-dir", str(tmp_path), "--batch-size", "16", "--per-gpu-batch", "3"]
    assert ft.main(args) == 1
    assert "not a multiple" in capsys.readouterr().err


def _cli(data: dict[str, Path], runs: Path, run: str) -> list[str]:
    return ["-m", "vpn_head.train.finetune", "--dataset", "ntu60", "--protocol", "cs", "--epochs", "2", "--manifest",
            str(data["manifest"]), "--cache-dir", str(data["cache"]), "--runs-dir", str(runs), "--run-name", run,
            "--batch-size", "4", "--per-gpu-batch", "1", "--clip-len", "8", "--crop-size", "64", "--frozen-bn",
            "--eval-clips", "1", "--eval-crop-size", "64", "--num-workers", "0", "--eval-split", "test",
            *(f"--model={k}={v}" for k, v in TINY_HEAD.items())]


@pytest.mark.slow
def test_two_gloo_processes_reach_the_weights_of_one(data, tmp_path):
    """torchrun with 2 CPU processes (accumulation 2) against 1 process (accumulation 4), same 4-clip steps.

    BatchNorm statistics of this random-init net over 1 x 2 x 2 maps amplify float rounding chaotically (a
    different thread count alone moves weights by ~20% of their update), so the I3D BatchNorm is kept in eval
    mode (``--frozen-bn``) and every process uses one thread; the head's BatchNorm sees the same one-clip
    micro-batches in both runs. The He-initialised random I3D still turns summation-order differences into
    ~1e-5 weight differences, so I3D tensors are compared against the size of their training update.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = subprocess.run([sys.executable, *_cli(data, tmp_path, "single")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *_cli(data, tmp_path, "ddp")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    # a failing rank's own words (an abort's "terminate called ..." line) come before torchrun's summary: keep both
    cause = [line for line in ddp.stderr.splitlines() if "rank1" in line or "terminate" in line or "Error" in line]
    assert ddp.returncode == 0, "\n".join(cause[-20:]) + "\n" + ddp.stderr[-1500:]
    log_rows = (tmp_path / "ddp" / "train_log.csv").read_text().splitlines()
    assert log_rows[1].split(",")[-2:] == ["2", "2"]  # world_size, accum_steps
    a, b = _states(tmp_path / "single"), _states(tmp_path / "ddp")
    initial = ft.load_i3d(None).state_dict()
    moved = 0.0
    for key in a:
        if "running_" in key or "num_batches" in key:
            continue
        if key.startswith("i3d."):
            update = (a[key] - initial[key.removeprefix("i3d.")]).abs().max().item()
            moved = max(moved, update)
            # equal up to float summation order: within 2% of what training moved the tensor (a missing gradient
            # average or a wrong accumulation count would differ by 50-100% of it)
            assert (a[key] - b[key]).abs().max().item() <= 0.02 * update + 1e-7, key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5, msg=key)
    assert moved > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_step_on_cuda(data, tmp_path):
    device = torch.device("cuda")
    model = ft.build_model(tiny_config(data, tmp_path), t_p=20).to(device)
    clips, poses, labels, _ = _fixed_batch(data)
    batch = (clips.to(device), poses.to(device), labels.to(device), None)
    before = model.i3d.Mixed_5c.b0.conv3d.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    row = engine.train_epoch(model, [batch] * 2, optimizer, torch.amp.GradScaler("cuda", enabled=False), device, True,
                         accum=2, ctx=DistContext(), description="bf16")
    assert np.isfinite(row["train_loss"])
    assert model.i3d.Mixed_5c.b0.conv3d.weight.dtype == torch.float32
    assert not torch.allclose(model.i3d.Mixed_5c.b0.conv3d.weight, before)
