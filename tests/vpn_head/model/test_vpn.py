"""Equation-level tests of the VPN head: GCN adjacency, attention and coupler, embedding, losses, model."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from tests.helpers import CHAIN, tiny_head_config, tiny_inputs
from vpn_head.model.attention import apply_attention, couple, resize_spatial_attention
from vpn_head.model.config import VPNConfig
from vpn_head.model.losses import attention_regulariser, embedding_loss, vpn_loss
from vpn_head.model.pose_backbone import build_adjacency, graph_convolution, normalised_adjacency
from vpn_head.model.vpn import VPN, VPNOutput

# ---------------------------------------------------------------- pose backbone (eq. 1)

def test_adjacency_of_three_joint_chain_matches_hand_computation():
    e = build_adjacency(3, CHAIN, alpha=5.0, beta=2.0)
    assert torch.equal(e, torch.tensor([[0.0, 5.0, 2.0], [5.0, 0.0, 5.0], [2.0, 5.0, 0.0]]))
    # E + I = [[1, 5, 2], [5, 1, 5], [2, 5, 1]]; degrees 8, 11, 8.
    # entry (i, j) = (E + I)[i, j] / sqrt(d_i d_j): 1/8, 5/sqrt(88) = 0.533002, 2/8, 1/11 = 0.090909.
    expected = torch.tensor([
        [0.125, 0.5330018, 0.25],
        [0.5330018, 0.0909091, 0.5330018],
        [0.25, 0.5330018, 0.125],
    ])
    torch.testing.assert_close(normalised_adjacency(e), expected, atol=1e-6, rtol=0)


def test_graph_convolution_is_per_time_step_with_unshared_weights():
    g = torch.Generator().manual_seed(1)
    adjacency = normalised_adjacency(build_adjacency(3, CHAIN, 5.0, 2.0))
    x = torch.randn(2, 3, 3, 4, generator=g)  # (M, 3, J, t_p)
    weight = torch.randn(4, 3, 5, generator=g)  # (t_p, 3, D)
    out = graph_convolution(x, adjacency, weight)  # (M, D, J, t_p)
    for m, t in itertools.product(range(2), range(4)):
        g_t = x[m, :, :, t].T  # (J, 3)
        torch.testing.assert_close(out[m, :, :, t], (adjacency @ g_t @ weight[t]).T)
    changed = weight.clone()
    changed[0] += 1.0
    diff = (graph_convolution(x, adjacency, changed) - out).abs().amax(dim=(0, 1, 2))  # per time step
    assert diff[0] > 0 and torch.all(diff[1:] == 0)


def test_adjacency_comes_from_the_dataset_edge_list():
    config = VPNConfig.for_dataset("ntu60", "cs")
    e = build_adjacency(config.num_joints, config.edges, config.alpha, config.beta)
    assert (e == 5.0).sum() == 2 * len(config.edges) == 48
    assert e[0, 1] == 5.0 and e[0, 3] == 2.0 and e.diagonal().eq(0).all()


# ---------------------------------------------------------------- attention (eq. 2-3)

def test_attention_maps_shapes_and_normalisation():
    model = VPN(tiny_head_config()).eval()
    out = model(*tiny_inputs(model.config))
    assert out.attention_spatial.shape == (4, 7, 7) and out.attention_temporal.shape == (4, 8)
    torch.testing.assert_close(out.attention_temporal.sum(dim=1), torch.ones(4))
    assert out.attention_spatial.gt(0).all() and out.attention_spatial.lt(1).all()


def test_coupler_is_the_outer_product_of_temporal_and_spatial_attention():
    g = torch.Generator().manual_seed(2)
    a_s, a_t = torch.rand(2, 7, 7, generator=g), torch.rand(2, 8, generator=g)
    a_st = couple(a_s, a_t)
    assert a_st.shape == (2, 8, 7, 7)
    for n, t, i, j in itertools.product(range(2), range(8), range(7), range(7)):
        assert a_st[n, t, i, j] == a_t[n, t] * a_s[n, i, j]


def _attention_case(seed: int, rule):
    """Random features (2, 3, 8, 7, 7), spatial and (softmaxed) temporal attention, and the output expected from
    them, built frame by frame as ``rule(f[n, c, t], a_s[n], a_t[n, t])``."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(2, 3, 8, 7, 7, generator=g)
    a_s, a_t = torch.rand(2, 7, 7, generator=g), torch.softmax(torch.randn(2, 8, generator=g), dim=1)
    expected = torch.empty_like(f)
    for n, c, t in itertools.product(range(2), range(3), range(8)):
        expected[n, c, t] = rule(f[n, c, t], a_s[n], a_t[n, t])
    return f, a_s, a_t, expected


def test_coupled_attention_gives_a_st_times_f_plus_f():
    f, a_s, a_t, expected = _attention_case(3, lambda f_t, s, t: t * s * f_t + f_t)
    torch.testing.assert_close(apply_attention(f, a_s, a_t, coupler=True), expected)


def test_uncoupled_attention_applies_spatial_then_temporal():
    def spatial_then_temporal(f_t, s, t):
        f_s = s * f_t + f_t
        return t * f_s + f_s  # = (1 + A_S)(1 + A_T) f

    f, a_s, a_t, expected = _attention_case(4, spatial_then_temporal)
    out = apply_attention(f, a_s, a_t, coupler=False)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, apply_attention(f, a_s, a_t, coupler=True))


@pytest.mark.parametrize("coupler", [True, False])
def test_model_applies_the_documented_attention(coupler):
    model = VPN(tiny_head_config(coupler=coupler)).eval()
    features, poses = tiny_inputs(model.config)
    f_prime, aux = model.forward_features(features, poses)
    expected = apply_attention(features, aux["attention_spatial"], aux["attention_temporal"], coupler)
    torch.testing.assert_close(f_prime, expected)
    torch.testing.assert_close(model.forward_head(f_prime), model(features, poses).logits)


# ---------------------------------------------------------------- losses (eq. 5-6)

def test_attention_regulariser_matches_hand_computation():
    a_s = torch.stack([torch.full((7, 7), 0.5), torch.zeros(7, 7)])
    a_s[1, 3, 3] = 1.0
    a_t = torch.stack([torch.full((8,), 1 / 8), torch.eye(8)[2]])
    # sample 0: ||A_S|| = sqrt(49 * 0.25) = 3.5, sum_t (1 - 1/8)^2 = 8 * 0.765625 = 6.125 -> 9.625
    # sample 1: ||A_S|| = 1, sum_t (1 - A_T)^2 = 0 + 7 * 1 = 7 -> 8; mean 8.8125
    assert attention_regulariser(a_s, a_t).item() == pytest.approx(8.8125, abs=1e-6)


@pytest.mark.parametrize("kind, expected", [
    # euclid: f_e/|f_e| = (0.6, 0.8), P_e/|P_e| = (1, 0): 0.4^2 + 0.8^2 = 0.8 (same for sample 2)
    ("euclid", 0.8),
    # softmax(f_e) = (1/4, 3/4), softmax(P_e) = (1/2, 1/2):
    # KL(f||p) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308121 ; KL(p||f) = 1/2 ln 2 + 1/2 ln(2/3) = 0.1438410
    ("kl_fe_pe", 0.1308121),
    ("kl_pe_fe", 0.1438410),
    ("bikl", 0.2746531),
])
def test_embedding_losses_match_hand_computation(kind, expected):
    if kind == "euclid":
        f_e, p_e = torch.tensor([[3.0, 4.0], [6.0, 8.0]]), torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    else:
        f_e, p_e = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    assert embedding_loss(f_e, p_e, kind).item() == pytest.approx(expected, abs=1e-6)


def test_embedding_loss_rejects_unknown_kind_and_mismatched_shapes():
    with pytest.raises(ValueError, match="kind"):
        embedding_loss(torch.ones(2, 3), torch.ones(2, 3), "cosine")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        embedding_loss(torch.ones(2, 3), torch.ones(2, 4), "euclid")


def _fixed_output() -> tuple[VPNOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = VPNOutput(logits=torch.randn(3, 4, generator=g), attention_spatial=torch.rand(3, 7, 7, generator=g),
                    attention_temporal=torch.softmax(torch.randn(3, 8, generator=g), dim=1),
                    f_e=torch.randn(3, 8, generator=g), p_e=torch.randn(3, 8, generator=g))
    return out, torch.tensor([0, 3, 1])


def test_loss_weights_per_variant():
    out, labels = _fixed_output()
    l_c = torch.nn.functional.cross_entropy(out.logits, labels)
    l_e = embedding_loss(out.f_e, out.p_e, "euclid")
    l_a = attention_regulariser(out.attention_spatial, out.attention_temporal)
    assert l_a > 0 and l_e > 0

    vpn = vpn_loss(out, labels, tiny_head_config(variant="vpn"))
    torch.testing.assert_close(vpn["total"], 0.8 * l_c + 0.2 * l_e + 1e-5 * l_a)
    torch.testing.assert_close(vpn["classification"], l_c)
    torch.testing.assert_close(vpn["embedding"], l_e)
    torch.testing.assert_close(vpn["attention"], l_a)

    attention = vpn_loss(out, labels, tiny_head_config(variant="attention"))
    torch.testing.assert_close(attention["total"], l_c + 1e-5 * l_a)
    assert attention["embedding"].item() == 0.0

    i3d = vpn_loss(out, labels, tiny_head_config(variant="i3d"))
    torch.testing.assert_close(i3d["total"], l_c)
    assert i3d["embedding"].item() == 0.0 and i3d["attention"].item() == 0.0

    kl = vpn_loss(out, labels, tiny_head_config(embedding_loss="bikl"))
    torch.testing.assert_close(kl["embedding"], embedding_loss(out.f_e, out.p_e, "bikl"))


def test_vpn_loss_rejects_bad_labels_and_missing_outputs():
    out, labels = _fixed_output()
    with pytest.raises(ValueError, match=r"labels must be int64 of shape \(3,\)"):
        vpn_loss(out, labels.float(), tiny_head_config())
    with pytest.raises(ValueError, match=r"labels must be int64 of shape \(3,\)"):
        vpn_loss(out, labels[:2], tiny_head_config())
    out.f_e = None
    with pytest.raises(ValueError, match="f_e"):
        vpn_loss(out, labels, tiny_head_config(variant="vpn"))


# ---------------------------------------------------------------- spatial embedding (eq. 4)

def test_embedding_maps_have_unit_spectral_norm():
    torch.manual_seed(0)
    model = VPN(tiny_head_config(feature_channels=8, embed_dim=16)).train()

    def sigma_max(projection: torch.nn.Module) -> float:
        return torch.linalg.matrix_norm(projection.weight.detach(), ord=2).item()

    projections = (model.embedding.visual, model.embedding.pose)
    assert all(sigma_max(p) == pytest.approx(1.0, abs=0.1) for p in projections)
    for projection in projections:
        for _ in range(300):  # each training-mode access of .weight is one power-iteration step
            projection.weight
    assert all(sigma_max(p) == pytest.approx(1.0, abs=1e-3) for p in projections)
    raw = model.embedding.visual.parametrizations.weight.original.detach()
    assert torch.linalg.matrix_norm(raw, ord=2).item() != pytest.approx(1.0, abs=0.1)


def test_embedding_uses_original_features_summed_over_time():
    model = VPN(tiny_head_config()).eval()
    features, poses = tiny_inputs(model.config)
    out = model(features, poses)
    f_s = features.sum(dim=2).flatten(1)  # (N, C * 49)
    torch.testing.assert_close(out.f_e, f_s @ model.embedding.visual.weight.T)
    shuffled = features[:, :, torch.randperm(8)]  # a time permutation keeps f_s
    torch.testing.assert_close(model(shuffled, poses).f_e, out.f_e)


# ---------------------------------------------------------------- whole model

VARIANT_GRID = list(itertools.product(("i3d", "attention", "vpn"), ("gcn", "lstm"), (True, False)))


@pytest.mark.parametrize("variant, backbone, coupler", VARIANT_GRID)
def test_every_trainable_parameter_gets_a_gradient(variant, backbone, coupler):
    torch.manual_seed(0)
    config = tiny_head_config(variant=variant, pose_backbone=backbone, coupler=coupler)
    model = VPN(config).train()
    features, poses = tiny_inputs(config)
    losses = vpn_loss(model(features, poses), torch.tensor([0, 1, 2, 3]), config)
    losses["total"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    has_pose = variant != "i3d"
    assert (model.pose_encoder is not None) == has_pose and (model.embedding is not None) == (variant == "vpn")


@pytest.mark.parametrize("variant, backbone", [("i3d", "gcn"), ("attention", "gcn"), ("vpn", "gcn"),
                                               ("vpn", "lstm")])
def test_overfits_a_tiny_batch(variant, backbone):
    torch.manual_seed(0)
    config = tiny_head_config(variant=variant, pose_backbone=backbone, feature_channels=32)
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(8) % 4
    class_signal = 0.3 * torch.randn(4, 32, generator=g)  # (classes, C)
    features = torch.rand(8, 32, 8, 7, 7, generator=g) + class_signal[labels][:, :, None, None, None]
    poses = torch.randn(8, 2, 3, 3, 4, generator=g) + labels[:, None, None, None, None]
    model = VPN(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracies = []
    for step in range(300):
        model.train()
        optimiser.zero_grad()
        vpn_loss(model(features, poses), labels, config)["total"].backward()
        optimiser.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracies.append((model(features, poses).logits.argmax(dim=1) == labels).float().mean().item())
            if accuracies[-1] == 1.0:
                break
    assert accuracies[-1] == 1.0, f"train accuracy every 10 steps: {accuracies}"


@pytest.mark.parametrize("backbone", ["gcn", "lstm"])
@pytest.mark.parametrize("train", [True, False])
def test_zero_padded_second_body_equals_single_body(backbone, train):
    torch.manual_seed(0)
    model = VPN(tiny_head_config(pose_backbone=backbone, dropout=0.0)).train(train)
    features, poses = tiny_inputs(model.config)
    poses[:, 1] = 0.0
    padded = model(features, poses)
    single = model(features, poses[:, :1])
    torch.testing.assert_close(padded.logits, single.logits)
    torch.testing.assert_close(padded.attention_spatial, single.attention_spatial)


def test_second_body_changes_the_output_when_present():
    model = VPN(tiny_head_config()).eval()
    features, poses = tiny_inputs(model.config)
    with_second = model(features, poses).attention_temporal
    poses[:, 1] = 0.0
    assert not torch.allclose(model(features, poses).attention_temporal, with_second)


def test_clip_without_any_body_still_runs():
    model = VPN(tiny_head_config()).eval()
    features, poses = tiny_inputs(model.config)
    poses[1] = 0.0
    out = model(features, poses)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.f_e).all()


def test_i3d_variant_is_fully_convolutional_and_ignores_poses():
    model = VPN(tiny_head_config(variant="i3d")).eval()
    for shape in ((2, 16, 8, 9, 12), (2, 16, 4, 7, 7)):
        features = torch.rand(shape)
        out = model(features, None)
        assert out.logits.shape == (2, 4) and out.attention_spatial is None and out.f_e is None
        torch.testing.assert_close(out.logits, model.classifier(features.mean(dim=(2, 3, 4))))


def test_attention_variant_on_larger_map_resizes_spatial_attention_bilinearly():
    model = VPN(tiny_head_config()).eval()
    features, poses = tiny_inputs(model.config, size=(9, 12))
    f_prime, aux = model.forward_features(features, poses)
    a_s = aux["attention_spatial"]
    assert a_s.shape == (4, 7, 7) and f_prime.shape == features.shape
    resized = torch.nn.functional.interpolate(a_s[:, None], size=(9, 12), mode="bilinear", align_corners=False)
    a_st = aux["attention_temporal"][:, :, None, None] * resized  # (N, 8, 9, 12)
    torch.testing.assert_close(f_prime, a_st[:, None] * features + features)
    assert resize_spatial_attention(a_s, (7, 7)) is a_s


def test_embedding_of_a_larger_map_pools_to_the_attention_grid():
    model = VPN(tiny_head_config()).eval()
    features, poses = tiny_inputs(model.config)
    upsampled = features.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # (N, C, 8, 14, 14)
    torch.testing.assert_close(model(upsampled, poses).f_e, model(features, poses).f_e)


# ---------------------------------------------------------------- config and input checks

def test_config_for_dataset_and_json_round_trip():
    config = VPNConfig.for_dataset("smarthome", "cv1", variant="attention", pose_backbone="lstm")
    assert (config.num_classes, config.num_joints, config.t_p) == (19, 13, 30)
    assert config.variant == "attention" and config.embed_dim == 256
    restored = VPNConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and isinstance(restored.edges[0], tuple)
    ntu = VPNConfig.for_dataset("ntu120", "cs1")
    assert (ntu.num_classes, ntu.num_joints, ntu.t_p, len(ntu.edges)) == (120, 25, 20, 24)


@pytest.mark.parametrize("overrides, message", [
    (dict(variant="full"), "variant"),
    (dict(pose_backbone="tcn"), "pose_backbone"),
    (dict(embedding_loss="cosine"), "embedding_loss"),
    (dict(num_classes=0), "num_classes"),
    (dict(t_p=2.5), "t_p"),
    (dict(alpha=-1.0), "alpha"),
    (dict(beta=float("nan")), "beta"),
    (dict(dropout=1.0), "dropout"),
    (dict(lambda1=1.5), "lambda1"),
    (dict(lambda2=-1e-5), "lambda2"),
    (dict(edges=((0, 3),)), "edges"),
    (dict(edges=((1, 1),)), "self-loop"),
    (dict(edges=[[0, 1]]), "edges"),
    (dict(coupler="yes"), "coupler"),
])
def test_bad_config_raises_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        VPN(tiny_head_config(**overrides))


def test_bad_config_dicts_and_datasets_raise_value_error():
    with pytest.raises(ValueError, match="unknown VPNConfig field"):
        VPNConfig.from_dict({**tiny_head_config().to_dict(), "lr": 0.1})
    with pytest.raises(ValueError, match="missing required"):
        VPNConfig.from_dict({"num_classes": 4})
    with pytest.raises(ValueError, match="protocol"):
        VPNConfig.for_dataset("ntu60", "cs1")
    with pytest.raises(ValueError, match="dataset"):
        VPNConfig.for_dataset("kinetics", "cs")


@pytest.mark.parametrize("features_shape, poses_shape, message", [
    ((4, 15, 8, 7, 7), (4, 2, 3, 3, 4), r"features .*\(N, 16, 8, H, W\); got \(4, 15, 8, 7, 7\)"),
    ((4, 16, 6, 7, 7), (4, 2, 3, 3, 4), r"features .*\(N, 16, 8, H, W\); got \(4, 16, 6, 7, 7\)"),
    ((4, 16, 7, 7), (4, 2, 3, 3, 4), r"features .*\(N, 16, 8, H, W\)"),
    ((4, 16, 8, 7, 7), (4, 2, 3, 25, 4), r"poses .*\(N=4, B>=1, 3, 3, 4\); got \(4, 2, 3, 25, 4\)"),
    ((4, 16, 8, 7, 7), (4, 2, 3, 3, 20), r"poses .*\(N=4, B>=1, 3, 3, 4\)"),
    ((4, 16, 8, 7, 7), (3, 2, 3, 3, 4), r"poses .*\(N=4, B>=1, 3, 3, 4\)"),
    ((4, 16, 8, 7, 7), (4, 3, 3, 4), r"poses .*\(N=4, B>=1, 3, 3, 4\)"),
])
def test_wrong_input_shapes_name_the_expected_shape(features_shape, poses_shape, message):
    model = VPN(tiny_head_config())
    with pytest.raises(ValueError, match=message):
        model(torch.rand(features_shape), torch.rand(poses_shape))


def test_missing_poses_or_integer_features_raise_value_error():
    model = VPN(tiny_head_config())
    with pytest.raises(ValueError, match="needs poses"):
        model(torch.rand(2, 16, 8, 7, 7), None)
    with pytest.raises(ValueError, match="floating-point"):
        VPN(tiny_head_config(variant="i3d"))(torch.ones(2, 16, 8, 7, 7, dtype=torch.int64))
