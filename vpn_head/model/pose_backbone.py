"""Pose backbone (paper section 3.1, eq. 1): 3D poses -> one pose feature vector h* per clip.

GCN backbone, for one body with poses x of shape (3, J, t_p):

1. Graph convolution per time step, weights not shared across time:
   ``f+_t = D^-1/2 (E + I) D^-1/2 G_t W_t`` with ``G_t`` the J x 3 pose at time t and ``W_t`` a 3 x 64 matrix.
   ``E`` is dense: ``e_ij = 0`` on the diagonal, ``alpha`` for two joints joined by a bone, ``beta`` otherwise;
   ``D`` is the degree matrix of ``E + I``.
2. Residual with the raw pose: the 3-d raw pose is projected to ``gcn_channels`` by a 1 x 1 convolution over
   the (J, t_p) grid (shared over time) and added to ``f+``; BatchNorm + ReLU follow the sum.
3. Three 3 x 3 conv2d layers (64, 64, 128 channels), each BatchNorm + ReLU, over the (J, t_p) grid -> h*.
4. Pooling to a 128-d vector for the attention network, by ``VPNConfig.pose_pool``: ``mean`` (global
   average over (J, t_p), the paper's reading) or ``max_dense`` (max over t_p, the joints flattened, a dense
   layer to 256 with ReLU, then a dense layer to 128, as in the authors' Keras code). ``mean`` keeps no trace of
   *which* joint moved, only of how the average joint's features behave, which is why it is not the default.

The authors' code (``VPNConfig.graph``, ``gcn_layer``, ``pose_residual``, ``pose_pool="official"``,
``pose_bodies``; docs/readings.md): their graph puts ``beta`` only on 6 "extrinsic" pairs, their layer is a filter
bank [I; A] with bias, ELU and dropout, they concatenate the raw pose instead of adding it, and their stack pools
with max-pooling and two dense layers.

LSTM backbone (the paper's ablation): a 3-layer LSTM (hidden 128) over the t_p steps of the flattened
J * 3 pose; h* is the last layer's final hidden state.

Two bodies (``PoseEncoder``): the same backbone runs on every *present* body (a body is present when any of
its coordinates is non-zero; body 0 always counts as present so an empty clip still has a feature), and h*
is the element-wise max over present bodies. Absent bodies never enter the backbone, so a zero-padded
second body changes nothing, not even the BatchNorm batch statistics in training mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vpn_head.model.config import VPNConfig

CONV_CHANNELS: tuple[int, ...] = (64, 64, 128)
"""Widths of the three conv2d layers after the graph convolution (paper section 3.1)."""
CONV_KERNEL = 3
LSTM_LAYERS = 3
POSE_FEATURE_DIM = 128
"""Size of h* for both backbones (last conv width = LSTM hidden size)."""
MAX_DENSE_HIDDEN = 256
"""Width of the hidden dense layer of the ``max_dense`` pose pooling."""


OFFICIAL_NTU_BONES: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 17), (1, 13), (2, 21), (17, 18), (13, 14), (18, 19), (19, 20), (14, 15), (15, 16), (21, 5), (21, 9),
    (21, 3), (3, 4), (9, 10), (5, 6), (6, 7), (10, 11), (11, 12), (12, 25), (12, 24), (7, 8), (8, 23), (8, 22))
"""The authors' 24 "intrinsic" NTU connections (``compute_adjacency.py``, 1-based joints): 8-22, 8-23, 12-24 and
12-25 where the 2s-AGCN list of ``pipeline.datasets.ntu`` has 22-23 and 24-25."""
OFFICIAL_NTU_EXTRINSIC: tuple[tuple[int, int], ...] = ((12, 19), (10, 18), (6, 14), (8, 15), (12, 8), (10, 6))
"""The authors' 6 "extrinsic" pairs (1-based), the only non-bone pairs that get ``beta`` in their graph."""
GCN_DROPOUT = 0.3
"""Dropout after the authors' graph layer (``n_dropout`` of ``train_ST_gcnn_attention.py``)."""
OFFICIAL_DROPOUTS: tuple[float, float] = (0.5, 0.3)
"""The authors' dropouts in the pose stack: before the flatten, after the last dense layer."""


def official_adjacency(alpha: float, beta: float) -> torch.Tensor:
    """The authors' NTU graph E (``graph="official"``): ``alpha`` on their 24 bones, ``beta`` on the 6 extrinsic pairs,
    0 elsewhere and on the diagonal; (25, 25), symmetric."""
    e = torch.zeros(25, 25)
    for pairs, weight in ((OFFICIAL_NTU_BONES, alpha), (OFFICIAL_NTU_EXTRINSIC, beta)):
        for i, j in pairs:
            e[i - 1, j - 1] = e[j - 1, i - 1] = float(weight)
    return e


def config_adjacency(config: VPNConfig) -> torch.Tensor:
    """E of ``config.graph``: ``build_adjacency`` (the paper) or ``official_adjacency`` (the authors' code, which
    returns zeros for any skeleton but NTU's 25 joints: Â is then the identity)."""
    if config.graph == "official":
        if config.num_joints != 25:
            return torch.zeros(config.num_joints, config.num_joints)
        return official_adjacency(config.alpha, config.beta)
    return build_adjacency(config.num_joints, config.edges, config.alpha, config.beta)


def build_adjacency(num_joints: int, edges: tuple[tuple[int, int], ...], alpha: float, beta: float) -> torch.Tensor:
    """The paper's dense adjacency E: 0 on the diagonal, ``alpha`` across a bone, ``beta`` elsewhere.

    Args:
        num_joints: J.
        edges: 0-based undirected bones.
        alpha: weight of joints joined by a bone.
        beta: weight of joints not joined by a bone.

    Returns:
        E, float32 (J, J), symmetric.
    """
    e = torch.full((num_joints, num_joints), float(beta))  # (J, J)
    for i, j in edges:
        e[i, j] = e[j, i] = float(alpha)
    e.fill_diagonal_(0.0)
    return e


def normalised_adjacency(e: torch.Tensor) -> torch.Tensor:
    """Return ``D^-1/2 (E + I) D^-1/2`` with D the (diagonal) degree matrix of ``E + I``."""
    e_hat = e + torch.eye(e.shape[0], dtype=e.dtype)  # (J, J)
    d_inv_sqrt = e_hat.sum(dim=1).rsqrt()  # (J,)
    return d_inv_sqrt[:, None] * e_hat * d_inv_sqrt[None, :]


def graph_convolution(x: torch.Tensor, adjacency: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One graph convolution per time step with its own weights: ``f+_t = A G_t W_t`` for every t.

    Args:
        x: poses (M, 3, J, t_p); ``G_t = x[m, :, :, t].T`` is the J x 3 pose at time t.
        adjacency: A, the normalised adjacency (J, J).
        weight: ``W_t`` for every t, (t_p, 3, D).

    Returns:
        f+ as (M, D, J, t_p).
    """
    # f+[m, d, i, t] = sum_j sum_c A[i, j] * x[m, c, j, t] * W[t, c, d]
    mixed = torch.einsum("ij,mcjt->mcit", adjacency, x)  # (M, 3, J, t_p)
    return torch.einsum("mcit,tcd->mdit", mixed, weight)  # (M, D, J, t_p)


def filter_bank_convolution(x: torch.Tensor, adjacency: torch.Tensor, self_weight: torch.Tensor,
                            weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The authors' graph layer before its ELU: ``G_t W0_t + A G_t W1_t + b_t`` for every t (filters [I; A]).

    Args:
        x: poses (M, 3, J, t_p).
        adjacency: A (J, J).
        self_weight: ``W0_t`` (t_p, 3, D); weight: ``W1_t`` (t_p, 3, D); bias: ``b_t`` (t_p, D).

    Returns:
        (M, D, J, t_p).
    """
    own = torch.einsum("mcjt,tcd->mdjt", x, self_weight)  # (M, D, J, t_p)
    return own + graph_convolution(x, adjacency, weight) + bias.T[None, :, None, :]  # (M, D, J, t_p)


def _official_stack(in_channels: int, num_joints: int, t_p: int) -> nn.Sequential:
    """The authors' pose stack after the graph layer: BN, conv 64 ReLU, BN, conv 64 ReLU, max-pool 2, BN, conv 128
    ReLU, max-pool 2, BN, dropout 0.5, flatten, dense 256 ReLU, dense 128 ReLU, dropout 0.3."""
    flat = CONV_CHANNELS[-1] * (num_joints // 2 // 2) * (t_p // 2 // 2)
    conv = lambda a, b: nn.Conv2d(a, b, CONV_KERNEL, padding=CONV_KERNEL // 2)  # noqa: E731
    return nn.Sequential(
        nn.BatchNorm2d(in_channels), conv(in_channels, CONV_CHANNELS[0]), nn.ReLU(),
        nn.BatchNorm2d(CONV_CHANNELS[0]), conv(CONV_CHANNELS[0], CONV_CHANNELS[1]), nn.ReLU(), nn.MaxPool2d(2),
        nn.BatchNorm2d(CONV_CHANNELS[1]), conv(CONV_CHANNELS[1], CONV_CHANNELS[2]), nn.ReLU(), nn.MaxPool2d(2),
        nn.BatchNorm2d(CONV_CHANNELS[2]), nn.Dropout(OFFICIAL_DROPOUTS[0]), nn.Flatten(),
        nn.Linear(flat, MAX_DENSE_HIDDEN), nn.ReLU(), nn.Linear(MAX_DENSE_HIDDEN, POSE_FEATURE_DIM), nn.ReLU(),
        nn.Dropout(OFFICIAL_DROPOUTS[1]))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class GCNBackbone(nn.Module):
    """Per-time-step graph convolution + raw-pose residual + three conv layers, pooled to h* (see module doc).

    ``graph``, ``gcn_layer``, ``pose_residual`` and ``pose_pool="official"`` choose the authors' versions of each
    part (docs/readings.md)."""

    def __init__(self, config: VPNConfig):
        super().__init__()
        adjacency = normalised_adjacency(config_adjacency(config))
        self.register_buffer("adjacency", adjacency, persistent=False)  # (J, J), derived from the config
        bound = 1 / math.sqrt(3)
        self.gcn_weight = nn.Parameter(torch.empty(config.t_p, 3, config.gcn_channels))  # W_t for every t
        nn.init.uniform_(self.gcn_weight, -bound, bound)
        self.filter_bank = config.gcn_layer == "filter_bank"
        if self.filter_bank:
            self.gcn_self_weight = nn.Parameter(torch.empty(config.t_p, 3, config.gcn_channels))  # W0_t
            nn.init.uniform_(self.gcn_self_weight, -bound, bound)
            self.gcn_bias = nn.Parameter(torch.zeros(config.t_p, config.gcn_channels))  # b_t
            self.gcn_dropout = nn.Dropout(GCN_DROPOUT)
        self.concat = config.pose_residual == "concat"
        self.residual = None if self.concat else nn.Conv2d(3, config.gcn_channels, kernel_size=1, bias=False)
        width = config.gcn_channels + (3 if self.concat else 0)
        self.pool = config.pose_pool
        self.official = _official_stack(width, config.num_joints, config.t_p) if self.pool == "official" else None
        self.gcn_norm = None if self.official is not None else nn.BatchNorm2d(width)
        widths = (width, *CONV_CHANNELS)
        self.convs = (nn.Sequential(*(_conv_bn_relu(a, b, CONV_KERNEL) for a, b in zip(widths, widths[1:])))
                      if self.official is None else None)
        self.dense = (nn.Sequential(nn.Linear(CONV_CHANNELS[-1] * config.num_joints, MAX_DENSE_HIDDEN), nn.ReLU(),
                                    nn.Linear(MAX_DENSE_HIDDEN, POSE_FEATURE_DIM))
                      if config.pose_pool == "max_dense" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map poses (M, 3, J, t_p) to h* (M, 128)."""
        if self.filter_bank:
            f_plus = filter_bank_convolution(x, self.adjacency, self.gcn_self_weight, self.gcn_weight,
                                             self.gcn_bias)  # (M, 64, J, t_p)
            f_plus = self.gcn_dropout(F.elu(f_plus))  # (M, 64, J, t_p)
        else:
            f_plus = graph_convolution(x, self.adjacency, self.gcn_weight)  # (M, 64, J, t_p)
        h = torch.cat([f_plus, x], dim=1) if self.concat else f_plus + self.residual(x)  # (M, 67 or 64, J, t_p)
        if self.official is not None:
            return self.official(h)  # (M, 128)
        h = F.relu(self.gcn_norm(h))  # (M, 64 or 67, J, t_p)
        h = self.convs(h)  # (M, 128, J, t_p)
        if self.dense is None:
            return h.mean(dim=(2, 3))  # (M, 128)
        return self.dense(h.amax(dim=3).flatten(1))  # (M, 128 * J) -> (M, 128)


class LSTMBackbone(nn.Module):
    """3-layer LSTM over the t_p steps of the flattened J * 3 pose; h* is the final hidden state."""

    def __init__(self, config: VPNConfig):
        super().__init__()
        self.lstm = nn.LSTM(3 * config.num_joints, POSE_FEATURE_DIM, num_layers=LSTM_LAYERS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map poses (M, 3, J, t_p) to h* (M, 128)."""
        steps = x.permute(0, 3, 2, 1).flatten(2)  # (M, t_p, J * 3)
        _, (h_n, _) = self.lstm(steps)  # h_n: (layers, M, 128)
        return h_n[-1]  # (M, 128)


class PoseEncoder(nn.Module):
    """Runs the configured backbone on each present body and max-pools h* over bodies (see module doc)."""

    def __init__(self, config: VPNConfig):
        super().__init__()
        self.backbone = GCNBackbone(config) if config.pose_backbone == "gcn" else LSTMBackbone(config)
        self.first_body = config.pose_bodies == "first"

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        """Map poses (N, B, 3, J, t_p), B >= 1 bodies (absent ones all zero), to h* (N, 128); with
        ``pose_bodies="first"`` body 0 alone (the authors' loader)."""
        if self.first_body:
            poses = poses[:, :1]  # (N, 1, 3, J, t_p)
        n, bodies = poses.shape[:2]
        present = poses.flatten(2).ne(0).any(dim=2)  # (N, B)
        present[:, 0] = True
        h = self.backbone(poses[present])  # (M, 128), M = number of present bodies
        per_body = h.new_full((n, bodies, h.shape[1]), float("-inf"))  # (N, B, 128)
        per_body[present] = h
        return per_body.amax(dim=1)  # (N, 128)
