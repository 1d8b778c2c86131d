"""The three readings: the authors' graph and layers, each loss form against hand-computed values, the presets and
``--reading`` on the trainers' command lines (docs/readings.md)."""

from __future__ import annotations

import math

import pytest
import torch

from vpn_head.model.config import OFFICIAL_READING, PAPER_READING, READINGS, VPNConfig
from vpn_head.model.losses import attention_regulariser, attention_regulariser_batch_sum, embedding_loss, vpn_loss
from vpn_head.model.pose_backbone import (
    OFFICIAL_NTU_EXTRINSIC,
    GCNBackbone,
    PoseEncoder,
    config_adjacency,
    filter_bank_convolution,
    normalised_adjacency,
    official_adjacency,
)
from vpn_head.model.vpn import VPN

C = 64
"""Feature channels of the test heads (Mixed_5c has 1024; fewer keep the authors' dense video embedding small)."""


def ntu(**overrides) -> VPNConfig:
    return VPNConfig.for_dataset("ntu60", "cs", feature_channels=C, **overrides)


def non_bone_share(config: VPNConfig) -> float:
    """Mean over joints of the share of a normalised row's weight that comes from non-bone joints other than itself."""
    e = config_adjacency(config)
    a = normalised_adjacency(e)
    non_bone = (e != config.alpha) & ~torch.eye(25, dtype=torch.bool)
    return float(((a * non_bone).sum(1) / a.sum(1)).mean())


def test_the_authors_graph_has_their_24_bones_and_only_6_extrinsic_pairs():
    e = official_adjacency(alpha=5.0, beta=2.0)
    assert torch.equal(e, e.T) and torch.all(e.diagonal() == 0)
    extrinsic = {(i - 1, j - 1) for i, j in OFFICIAL_NTU_EXTRINSIC}
    assert extrinsic == {(11, 18), (9, 17), (5, 13), (7, 14), (11, 7), (9, 5)}
    beta_pairs = {(i, j) for i, j in zip(*torch.nonzero(e == 2.0, as_tuple=True)) if i < j}
    assert {(int(i), int(j)) for i, j in beta_pairs} == {tuple(sorted(p)) for p in extrinsic}
    assert int((e == 5.0).sum()) == 2 * 24 and int((e != 0).sum()) == 2 * (24 + 6)
    # their bone list differs from ours: 8-22 and 12-24 (1-based) in place of 22-23 and 24-25
    assert e[7, 21] == 5.0 and e[11, 23] == 5.0 and e[21, 22] == 0.0 and e[23, 24] == 0.0


def test_the_authors_normalised_rows_by_hand():
    a = normalised_adjacency(official_adjacency(5.0, 2.0))
    # joint 1 (SpineBase): bones to 2, 13, 17 -> degree 1 + 3 * 5 = 16; joint 2: bones to 1, 21 -> 1 + 2 * 5 = 11
    assert a[0, 0].item() == pytest.approx(1 / 16)
    assert a[0, 1].item() == pytest.approx(5 / math.sqrt(16 * 11))
    # joint 12 (right hand): bones to 11, 24, 25, extrinsic to 19 and 8 -> 1 + 3 * 5 + 2 * 2 = 20;
    # joint 19 (right knee): bones to 18, 20, extrinsic to 12 -> 1 + 2 * 5 + 2 = 13
    assert a[11, 18].item() == pytest.approx(2 / math.sqrt(20 * 13))
    assert a[11, 2].item() == 0.0  # not joined: no weight at all (the paper's graph gives every pair beta)


def test_the_paper_graph_averages_the_body_and_the_authors_does_not():
    assert non_bone_share(ntu(graph="paper")) == pytest.approx(0.81, abs=0.01)
    assert non_bone_share(ntu(graph="official")) == pytest.approx(0.051, abs=0.005)


def test_the_authors_graph_is_zero_for_other_skeletons_as_in_their_code():
    config = VPNConfig.from_dict(dict(num_classes=4, num_joints=20, edges=[[0, 1]], graph="official"))
    assert torch.equal(normalised_adjacency(config_adjacency(config)), torch.eye(20))


def test_filter_bank_layer_by_hand():
    x = torch.tensor([[[[1.0], [2.0]]]])  # (M=1, C=1, J=2, t_p=1)
    a = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    w0, w1, b = torch.tensor([[[3.0]]]), torch.tensor([[[10.0]]]), torch.tensor([[1.0]])
    out = filter_bank_convolution(x, a, w0, w1, b)  # (1, 1, 2, 1)
    # joint 0: 1 * 3 + (0.5 * 1 + 0.5 * 2) * 10 + 1 = 19; joint 1: 2 * 3 + (0.25 + 1.5) * 10 + 1 = 24.5
    assert out.flatten().tolist() == pytest.approx([19.0, 24.5])


def test_l1_squared_embedding_loss_by_hand():
    f_e = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    p_e = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    # rows: (|1| + |2|)^2 = 9, (|-1| + |1|)^2 = 4 -> mean 6.5
    assert embedding_loss(f_e, p_e, "l1_squared").item() == pytest.approx(6.5)


def test_euclid_embedding_loss_by_hand():
    f_e = torch.tensor([[3.0, 4.0]])
    p_e = torch.tensor([[0.0, 2.0]])
    # (0.6, 0.8) - (0, 1) -> 0.36 + 0.04
    assert embedding_loss(f_e, p_e, "euclid").item() == pytest.approx(0.4)


def test_attention_regularisers_by_hand():
    a_s = torch.full((2, 2, 2), 0.25)  # each sample sums to 1; the batch to 2
    a_t = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    # authors: (1 - 2)^2 + (1 - 2)^2 = 2
    assert attention_regulariser_batch_sum(a_s, a_t).item() == pytest.approx(2.0)
    # ours: mean_j(||A_S(j)||_2 + sum_t (1 - A_T)^2) = mean(0.5 + 1.5, 0.5 + 2) = 2.25
    assert attention_regulariser(a_s, a_t).item() == pytest.approx(2.25)


def test_batch_sum_a_t_term_has_no_gradient():
    z = torch.randn(3, 4, requires_grad=True)
    attention_regulariser_batch_sum(torch.zeros(3, 2, 2), torch.softmax(z, dim=1)).backward()
    assert z.grad.abs().max().item() < 1e-6


def test_official_loss_weights_and_forms():
    torch.manual_seed(0)
    config = ntu(variant="vpn", **OFFICIAL_READING)
    model = VPN(config)
    out = model(torch.rand(2, C, 8, 7, 7), torch.randn(2, 2, 3, 25, 20))
    labels = torch.tensor([0, 1])
    terms = vpn_loss(out, labels, config)
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    l_e = (out.f_e - out.p_e).abs().sum(1).square().mean()
    a_t = out.attention_temporal
    l_a = (1 - out.attention_spatial.sum()) ** 2 + (1 - a_t.sum()) ** 2
    assert terms["total"].item() == pytest.approx((0.99 * ce + 0.01 * l_e + 1e-5 * l_a).item(), rel=1e-5)
    # zero-initialised last layers: A_S = 0.5 everywhere and A_T uniform at the start, as in the authors' code
    assert torch.allclose(out.attention_spatial, torch.full_like(out.attention_spatial, 0.5))
    assert torch.allclose(a_t, torch.full_like(a_t, 1 / 8))


@pytest.mark.parametrize("variant", ["attention", "vpn"])
@pytest.mark.parametrize("reading", [{}, PAPER_READING, OFFICIAL_READING])
def test_each_reading_trains_the_pose_branch(variant, reading):
    """Two steps: with the authors' zero-initialised attention layers the first step reaches only those layers."""
    torch.manual_seed(0)
    config = ntu(variant=variant, **reading)
    model = VPN(config)
    before = [p.detach().clone() for p in model.pose_encoder.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    features, poses = torch.rand(4, C, 8, 7, 7), torch.randn(4, 2, 3, 25, 20)
    for _ in range(2):
        optimizer.zero_grad()
        vpn_loss(model(features, poses), torch.tensor([0, 1, 2, 3]), config)["total"].backward()
        optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.pose_encoder.parameters()))


@pytest.mark.parametrize("field, value", [("graph", "official"), ("gcn_layer", "filter_bank"),
                                          ("pose_residual", "concat"), ("pose_pool", "official"),
                                          ("pose_bodies", "first"), ("temporal_hidden", 128),
                                          ("embedding_form", "official"), ("embedding_loss", "l1_squared"),
                                          ("attention_reg", "batch_sum"), ("classifier", "official")])
def test_each_authors_option_runs_alone(field, value):
    config = ntu(variant="vpn", **{field: value})
    out = VPN(config)(torch.rand(3, C, 8, 7, 7), torch.randn(3, 2, 3, 25, 20))
    vpn_loss(out, torch.tensor([0, 1, 2]), config)["total"].backward()
    assert out.logits.shape == (3, 60)


def test_first_body_ignores_the_second_and_concat_widens_the_stack():
    encoder = PoseEncoder(ntu(pose_bodies="first")).eval()
    poses = torch.randn(2, 2, 3, 25, 20)
    other = poses.clone()
    other[:, 1] = torch.randn(2, 3, 25, 20)
    assert torch.equal(encoder(poses), encoder(other))
    backbone = GCNBackbone(ntu(pose_residual="concat"))
    assert backbone.residual is None and backbone.gcn_norm.num_features == 64 + 3


def test_readings_are_the_presets():
    assert READINGS == {"paper": PAPER_READING, "official": OFFICIAL_READING}
    assert ntu(**OFFICIAL_READING).lambda1 == 0.99


def test_reading_on_the_command_line_and_single_fields_override_it(monkeypatch):
    from vpn_head.train import head

    seen = []
    monkeypatch.setattr(head, "train", lambda config, force_new=False: seen.append(config) or
                        {"run": "r", "epochs_done": 0, "best_epoch": 0, "best": 0})
    assert head.main(["--dataset", "ntu60", "--protocol", "cs", "--reading", "official",
                      "--model", "lambda1=0.5"]) == 0
    assert head.main(["--dataset", "ntu60", "--protocol", "cs", "--reading", "official", "--lr-gamma", "0.5"]) == 0
    assert head.main(["--dataset", "ntu60", "--protocol", "cs", "--reading", "paper"]) == 0
    official, gamma, paper = seen
    assert official.model["graph"] == "official" and official.model["lambda1"] == 0.5 and official.lr_gamma == 1.0
    assert gamma.lr_gamma == 0.5
    assert paper.model == PAPER_READING and paper.lr_gamma == 0.1
