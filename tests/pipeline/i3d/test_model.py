"""Tests for pipeline.i3d.model: shapes, TF SAME padding, the DeepMind CricketShot oracle, loading, CLI, freezing."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.i3d import model as i3d
from pipeline.i3d.model import I3DConfig, InceptionI3d, extract_features, load_i3d, tf_same_padding, weights_sha256
from tests.conftest import shared_path
from tests.helpers import cricket_clip

RGB_SCRATCH_SHA256 = "8a4aa81da7d98b4ebc9063e74345705d63c05c0193320977138c715a4a8bbce2"
CRICKET_TOP5 = ["playing cricket", "robot dancing", "pumping fist", "breakdancing", "hurling (sport)"]




# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(("t", "h", "w"), [(16, 64, 64), (9, 64, 64), (17, 64, 96), (8, 33, 31)])
def test_mixed_5c_shape_is_ceil_of_input_over_8_and_32(random_model: InceptionI3d, t: int, h: int, w: int) -> None:
    x = torch.rand(2, 3, t, h, w) * 2 - 1
    with torch.inference_mode():
        feat = random_model.forward_features(x)
    assert feat.shape == (2, 1024, math.ceil(t / 8), math.ceil(h / 32), math.ceil(w / 32))
    assert torch.isfinite(feat).all()


def test_head_averages_per_time_logits() -> None:
    model = load_i3d(None, with_logits=True)
    feat = torch.rand(2, 1024, 3, 7, 7)
    with torch.inference_mode():
        logits = model.forward_head(feat)
        per_time = [model.logits(feat[:, :, i:i + 2].mean(dim=(2, 3, 4), keepdim=True)).flatten(1) for i in range(2)]
    assert logits.shape == (2, 400)
    torch.testing.assert_close(logits, (per_time[0] + per_time[1]) / 2)


@pytest.mark.parametrize("shape", [(1, 1024, 1, 7, 7), (1, 1024, 2, 8, 8), (1, 512, 2, 7, 7), (1024, 2, 7, 7)])
def test_head_rejects_bad_feature_shapes(shape: tuple[int, ...]) -> None:
    model = load_i3d(None, with_logits=True)
    with pytest.raises(ValueError, match="logits head needs Mixed_5c"):
        model.forward_head(torch.zeros(shape))


def test_trunk_only_model_has_no_head_and_rejects_bad_input(random_model: InceptionI3d) -> None:
    assert not any(k.startswith("logits.") for k in random_model.state_dict())
    with pytest.raises(RuntimeError, match="no logits head"):
        random_model.forward_head(torch.zeros(1, 1024, 2, 7, 7))
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\)"):
        random_model.forward_features(torch.zeros(1, 4, 8, 32, 32))


def test_config_rejects_unknown_endpoint() -> None:
    with pytest.raises(ValueError, match="final_endpoint"):
        I3DConfig(final_endpoint="Mixed_4f")


def test_module_names_match_checkpoint_keys() -> None:
    keys_file = shared_path("i3d", "state_dict_keys.txt")
    expected = {line.split("\t")[0] for line in keys_file.read_text().splitlines() if not line.startswith("#")}
    model_keys = {k for k in InceptionI3d(I3DConfig(final_endpoint="Logits")).state_dict()
                  if not k.endswith("num_batches_tracked")}
    assert model_keys == expected


# ---------------------------------------------------------------- TF SAME padding


@pytest.mark.parametrize(("n", "k", "s", "expected"), [
    (224, 7, 2, (2, 3)),   # n % s == 0: total = k - s = 5, extra at the back
    (64, 7, 2, (2, 3)),
    (79, 7, 2, (3, 3)),    # n % s == 1: total = k - 1 = 6
    (112, 3, 2, (0, 1)),   # pool 2a / 3a spatially
    (7, 3, 2, (1, 1)),
    (9, 2, 2, (0, 1)),     # pool 5a with odd T
    (10, 2, 2, (0, 0)),
    (5, 3, 1, (1, 1)),
    (5, 1, 1, (0, 0)),
    (3, 1, 2, (0, 0)),
])
def test_tf_same_padding_hand_computed(n: int, k: int, s: int, expected: tuple[int, int]) -> None:
    assert tf_same_padding(n, k, s) == expected


def test_tf_same_padding_gives_ceil_output_length() -> None:
    for n in range(1, 40):
        for k in range(1, 8):
            for s in range(1, 4):
                front, back = tf_same_padding(n, k, s)
                assert back - front in (0, 1)
                assert (n + front + back - k) // s + 1 == math.ceil(n / s), (n, k, s)


def test_f_pad_amounts_are_last_dim_first() -> None:
    # T=9 -> (1, 1), H=64 -> (0, 1), W=65 -> (1, 1) for k=3, s=2; F.pad wants (W, H, T) pairs.
    assert i3d._f_pad_amounts((9, 64, 65), (3, 3, 3), (2, 2, 2)) == (1, 1, 0, 1, 1, 1)
    assert i3d._f_pad_amounts((9, 64, 65), (1, 1, 1), (1, 1, 1)) is None


@pytest.mark.parametrize(("kernel", "stride", "shape"), [
    ((3, 3, 3), (1, 1, 1), (2, 3, 5, 6, 7)),
    ((1, 3, 3), (1, 2, 2), (1, 2, 4, 9, 10)),
    ((3, 3, 3), (2, 2, 2), (1, 2, 7, 8, 9)),
    ((2, 2, 2), (2, 2, 2), (1, 2, 5, 7, 6)),
])
def test_max_pool_same_matches_padded_torch_max_pool(kernel, stride, shape) -> None:
    x = torch.randn(shape)  # negative values: -inf padding must never win
    amounts = [p for n, k, s in zip(reversed(shape[2:]), reversed(kernel), reversed(stride))
               for p in tf_same_padding(n, k, s)]
    expected = F.max_pool3d(F.pad(x, amounts, value=float("-inf")), kernel, stride)
    got = i3d.MaxPool3dSame(kernel, stride)(x)
    assert got.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(shape[2:], stride))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("kernel", "stride"), [((3, 3, 3), (1, 1, 1)), ((7, 7, 7), (2, 2, 2))])
def test_unit3d_conv_uses_tf_same_padding(kernel, stride) -> None:
    unit = i3d.Unit3D(3, 4, kernel, stride, cfg=I3DConfig(), use_bn=False, activation=False)
    x = torch.randn(1, 3, 9, 12, 11)
    amounts = [p for n, k, s in zip((11, 12, 9), reversed(kernel), reversed(stride)) for p in tf_same_padding(n, k, s)]
    expected = F.conv3d(F.pad(x, amounts), unit.conv3d.weight, stride=stride)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- DeepMind CricketShot oracle


def test_cricketshot_oracle_top5_and_reference_logits(kinetics_model: InceptionI3d) -> None:
    """All 79 frames through the real weights must reproduce the reference port (README: ~1e-3)."""
    labels = shared_path("i3d", "label_map.txt").read_text().splitlines()
    reference = json.loads(shared_path("i3d", "expected.json").read_text())["measured_pytorch_port"]
    x = cricket_clip()
    assert x.shape == (1, 3, 79, 224, 224)
    with torch.inference_mode():
        logits = kinetics_model(x)[0]  # (400,)
    top5 = [labels[i] for i in torch.argsort(logits, descending=True)[:5]]
    assert top5 == CRICKET_TOP5
    got = torch.tensor([logits[labels.index(row["class"])].item() for row in reference["top20"]])
    want = torch.tensor([row["logit"] for row in reference["top20"]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    assert logits.norm().item() == pytest.approx(reference["norm_of_logits"], abs=1e-3)


def test_weights_sha256_matches_readme() -> None:
    assert weights_sha256(shared_path("i3d", "rgb_scratch.pt")) == RGB_SCRATCH_SHA256


# ---------------------------------------------------------------- loading


def test_no_weights_warn_loudly_and_give_seeded_random_init(tmp_path, caplog) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=f"I3D weights {missing} do not exist"):
        load_i3d(missing)  # a path that names no file is a mistake, never a silent random init
    rng_before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="pipeline.i3d.model"):
        a = load_i3d(None)
    assert "RANDOM-INIT" in caplog.text and "MEANINGLESS" in caplog.text
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert not a.training
    b = load_i3d(None)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    c = load_i3d(None, seed=1)
    assert not torch.equal(a.Conv3d_1a_7x7.conv3d.weight, c.Conv3d_1a_7x7.conv3d.weight)
    assert weights_sha256(missing) == weights_sha256(None) == "random-init"


def test_state_dict_round_trip_and_logits_keys_ignored_for_trunk(tmp_path) -> None:
    source = load_i3d(None, with_logits=True, seed=3)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    full = load_i3d(path, with_logits=True)
    trunk = load_i3d(path)
    torch.testing.assert_close(full.state_dict(), source.state_dict(), rtol=0, atol=0)
    assert torch.equal(trunk.Mixed_5c.b3b.conv3d.weight, source.Mixed_5c.b3b.conv3d.weight)
    assert len(weights_sha256(path)) == 64


def test_corrupt_file_raises_value_error_naming_it(tmp_path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ValueError, match="cannot read I3D weights .*corrupt.pt"):
        load_i3d(path)


def test_non_state_dict_file_raises(tmp_path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_i3d(path)


def test_wrong_keys_raise_value_error_listing_them(tmp_path) -> None:
    state = load_i3d(None).state_dict()
    state["Mixed_3b.b9.conv3d.weight"] = state.pop("Mixed_3b.b0.conv3d.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"renamed.pt.*missing keys \[Mixed_3b.b0.conv3d.weight\]; "
                                         r"unexpected keys \[Mixed_3b.b9.conv3d.weight\]"):
        load_i3d(path)


def test_head_requested_but_absent_from_file(tmp_path) -> None:
    path = tmp_path / "trunk.pt"
    torch.save(load_i3d(None).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys \[logits.conv3d.weight, logits.conv3d.bias\]"):
        load_i3d(path, with_logits=True)


def test_wrong_shape_raises(tmp_path) -> None:
    state = load_i3d(None).state_dict()
    state["Mixed_5c.b0.bn.bias"] = torch.zeros(7)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"wrong shapes: Mixed_5c.b0.bn.bias \(7,\) != \(384,\)"):
        load_i3d(path)


# ---------------------------------------------------------------- extract_features


def test_extract_features_batches_agree_and_cpu_ignores_amp(random_model: InceptionI3d) -> None:
    clips = torch.rand(3, 3, 9, 64, 64) * 2 - 1
    one = extract_features(random_model, clips, batch_size=1, device="cpu", amp_bf16=False)
    two = extract_features(random_model, clips, batch_size=2, device="cpu", amp_bf16=True)
    assert one.dtype == np.float32 and one.shape == (3, 1024, 2, 2, 2)
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-5)


def test_extract_features_refuses_train_mode() -> None:
    model = load_i3d(None).train()
    with pytest.raises(ValueError, match="eval mode"):
        extract_features(model, torch.zeros(1, 3, 8, 32, 32), batch_size=1, device="cpu", amp_bf16=False)


# ---------------------------------------------------------------- input checks


def test_validate_warns_on_zero_one_range(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.i3d.model"):
        i3d.validate_clip_array(np.full((1, 3, 2, 4, 4), 0.5, np.float32), "x")
    assert "not [0, 1]" in caplog.text


# ---------------------------------------------------------------- fine-tune support


def test_every_trainable_parameter_gets_a_gradient() -> None:
    model = load_i3d(None, with_logits=True).train()
    model.forward_features(torch.rand(2, 3, 9, 32, 32) * 2 - 1).square().mean().backward()
    model.forward_head(torch.rand(2, 1024, 2, 7, 7)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_freeze_until_freezes_params_and_keeps_frozen_bn_in_eval() -> None:
    model = load_i3d(None)
    model.freeze_until("Mixed_4f")
    model.train()
    frozen = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "Mixed_3b", "Mixed_3c",
              "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f")
    assert model.frozen_blocks[-1] == "Mixed_4f" and set(frozen) <= set(model.frozen_blocks)
    bn_frozen = model.Mixed_4f.b0.bn
    bn_trained = model.Mixed_5b.b0.bn
    assert not bn_frozen.training and bn_trained.training
    mean_frozen, mean_trained = bn_frozen.running_mean.clone(), bn_trained.running_mean.clone()

    model.forward_features(torch.rand(2, 3, 9, 32, 32) * 2 - 1).sum().backward()
    for name, p in model.named_parameters():
        block = name.split(".")[0]
        if block in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert block in ("Mixed_5b", "Mixed_5c") and p.grad is not None, name
    assert torch.equal(bn_frozen.running_mean, mean_frozen)
    assert not torch.equal(bn_trained.running_mean, mean_trained)

    model.freeze_until(None)
    assert model.frozen_blocks == () and model.Mixed_4f.b0.bn.training
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="unknown block 'Mixed_9z'"):
        model.freeze_until("Mixed_9z")


def test_random_init_features_survive_float16():
    """A random-init cache must not be all zeros: activations stay of order 1 through the trunk."""
    model = load_i3d(None)
    with torch.inference_mode():
        feat = model.forward_features(torch.rand(1, 3, 16, 64, 64) * 2 - 1)  # (1, 1024, 2, 2, 2)
    half = feat.half()
    assert torch.isfinite(half).all() and half.float().std() > 0.1 and (half != 0).float().mean() > 0.2


def test_a_finetune_checkpoint_gives_its_fine_tuned_i3d(tmp_path) -> None:
    """The paper's two-stage path: `make cache I3D_WEIGHTS=runs/<fine-tune>/best.pt` extracts with the fine-tuned I3D."""
    from vpn_head.engine.checkpoints import FINETUNE, save_checkpoint

    tuned = load_i3d(None, seed=4)
    path = tmp_path / "best.pt"
    save_checkpoint(path, FINETUNE, epoch=3, model={}, i3d=tuned.state_dict(), train_config={"dataset": "ntu60"})
    loaded = load_i3d(path)
    torch.testing.assert_close(loaded.state_dict(), tuned.state_dict(), rtol=0, atol=0)
    save_checkpoint(path, FINETUNE, epoch=3, model={})
    with pytest.raises(ValueError, match="not a state dict"):
        load_i3d(path)
