"""Spatio-temporal attention driven by the pose feature h* (paper section 3.2, eq. 2-3).

For r in {1, 2}: ``z_r = W_zr tanh(W_hr h* + b_hr) + b_zr`` (two independent branches).
Spatial attention ``A_S = sigmoid(z_1)`` over the S x S grid (S = 7), temporal attention
``A_T = softmax(z_2)`` over the T = 8 time steps (``temporal_scale="sum1"``, the paper), or ``T * softmax(z_2)``
(``"mean1"``): with the paper's A_T the attended term ``A_T A_S f`` averages at most 1/T of the residual f, so
attention can move a cell's weight by 1/8 at most when A_T is spread over time; with ``mean1`` it can double it.
``attention_init="zero"`` starts the last layer of both branches at zero (A_S = 0.5, A_T uniform for every
video), as the authors' code does.

Joint-anchored A_S (``spatial_attention="joints"``, not in the paper): the spatial branch gives one logit per
joint of each body, ``w = softmax(z1)``, and ``A_S = sum_j w_j K_j`` with ``K_j`` a Gaussian bump (``sigma`` grid
cells) at joint j's crop-plane position, averaged over the t_p pose times (``joint_anchored_map``). The pose
decides which joints matter, the skeleton's geometry where they are; a free 49-cell map has to learn both from
the classification loss alone.

Coupler on (eq. 3): ``A_ST[t, i, j] = A_T[t] * A_S[i, j]`` (the outer product of the two maps, as the equation
says) and ``f' = A_ST * f + f``, broadcast over channels.

Coupler off: the two attentions are applied one after the other, each with its own residual:
``f_s = A_S * f + f`` then ``f' = A_T * f_s + f_s``, i.e. ``f' = (1 + A_S)(1 + A_T) f``. It differs from the
coupled form ``(1 + A_T A_S) f`` by the extra ``A_S + A_T`` terms: spatial and temporal attention then act
independently instead of as one joint map.

Other spatial sizes: A_S is predicted on the S x S grid the head was configured for. A feature map of a
different size H x W (a larger test-time input) gets A_S resized bilinearly to H x W (``align_corners=False``)
before it is applied; A_T is not resized, so T must equal ``feature_time``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PoseAttention(nn.Module):
    """Two tanh-MLP branches from h* to the spatial (S * S) and temporal (T) attention logits (eq. 2)."""

    def __init__(self, pose_dim: int, hidden: int, feature_time: int, feature_size: int,
                 temporal_scale: str = "sum1", zero_init: bool = False, anchors: int = 0, sigma: float = 0.75,
                 temporal_hidden: int = 0):
        """``anchors`` > 0 makes A_S joint-anchored over that many joints (bodies x J), with bumps of ``sigma``
        cells; 0 gives the paper's free S x S map. ``temporal_hidden``: the temporal branch's width (0: ``hidden``;
        the authors use 256 spatial, 128 temporal)."""
        super().__init__()
        self.feature_size = feature_size
        self.anchors, self.sigma = anchors, sigma
        self.temporal_factor = float(feature_time) if temporal_scale == "mean1" else 1.0
        self.spatial = nn.Sequential(nn.Linear(pose_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, anchors or feature_size ** 2))
        width = temporal_hidden or hidden
        self.temporal = nn.Sequential(nn.Linear(pose_dim, width), nn.Tanh(), nn.Linear(width, feature_time))
        if zero_init:
            for branch in (self.spatial, self.temporal):
                nn.init.zeros_(branch[-1].weight)
                nn.init.zeros_(branch[-1].bias)

    def forward(self, h: torch.Tensor, joints_xy: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute the attention maps from the pose feature.

        Args:
            h: h*, (N, pose_dim).
            joints_xy: the crop joints (N, B, 2, J, t_p) with B * J = ``anchors``, for joint-anchored A_S.

        Returns:
            ``(z1, a_s, a_t)``: spatial logits (N, S * S), or (N, B * J) joint logits when joint-anchored; A_S
            (N, S, S) = sigmoid(z1), or ``joint_anchored_map(softmax(z1))``; A_T = softmax(z2) (times T with
            ``temporal_scale="mean1"``) (N, T).
        """
        z1 = self.spatial(h)  # (N, 49) or (N, B * J)
        z2 = self.temporal(h)  # (N, 8)
        if self.anchors:
            a_s = joint_anchored_map(torch.softmax(z1, dim=1), joints_xy, self.feature_size, self.sigma)  # (N, 7, 7)
        else:
            a_s = torch.sigmoid(z1).unflatten(1, (self.feature_size, self.feature_size))  # (N, 7, 7)
        a_t = torch.softmax(z2, dim=1) * self.temporal_factor  # (N, 8)
        return z1, a_s, a_t


OFF_GRID = -100.0
"""Where an absent joint (NaN crop position) is put: so far from the crop that its bump is 0 on the grid."""


def joint_anchored_map(weights: torch.Tensor, joints_xy: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``A_S = sum_j w_j K_j``: Gaussian bumps at the joints' crop positions, weighted per joint.

    Args:
        weights: (N, B * J) non-negative joint weights (softmax: they sum to 1, so A_S <= 1).
        joints_xy: (N, B, 2, J, t_p) crop-plane (x, y) in [0, 1] (NaN where absent).
        size: S of the S x S grid; cell (r, c) is centred at ((c + 0.5) / S, (r + 0.5) / S).
        sigma: bump width in cells.

    Returns:
        (N, S, S).
    """
    n, bodies, _, joints, times = joints_xy.shape
    xy = torch.nan_to_num(joints_xy.float(), nan=OFF_GRID).permute(0, 1, 3, 4, 2).reshape(n, bodies * joints, times, 2)
    centres = (torch.arange(size, device=xy.device, dtype=xy.dtype) + 0.5) / size  # (S,)
    dx = (xy[..., 0, None] - centres) * size  # (N, K, t_p, S) in cells
    dy = (xy[..., 1, None] - centres) * size  # (N, K, t_p, S)
    bumps = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma ** 2))  # (N, K, t_p, S, S)
    kernels = bumps.mean(dim=2)  # (N, K, S, S)
    return torch.einsum("nk,nkrc->nrc", weights.to(kernels.dtype), kernels)  # (N, S, S)


def couple(a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The coupler: ``A_ST[n, t, i, j] = A_T[n, t] * A_S[n, i, j]`` for A_S (N, H, W), A_T (N, T) -> (N, T, H, W)."""
    return a_t[:, :, None, None] * a_s[:, None, :, :]  # (N, T, H, W)


def resize_spatial_attention(a_s: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize A_S (N, S, S) bilinearly to ``size`` = (H, W); returned unchanged when it already has that size."""
    if tuple(a_s.shape[-2:]) == tuple(size):
        return a_s
    return F.interpolate(a_s[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)


def attention_weights(a_s: torch.Tensor, a_t: torch.Tensor, coupler: bool, residual: bool = True) -> torch.Tensor:
    """The multiplicative map M with ``f' = M * f`` (broadcast over channels), (N, T, H, W).

    Coupled: ``M = A_ST + 1`` (``A_ST`` without the residual). Uncoupled: ``M = (A_T + 1)(A_S + 1)`` (``A_T A_S``
    without the residual), which is ``f_s = A_S * f + f`` followed by ``f' = A_T * f_s + f_s``.
    """
    keep = 1.0 if residual else 0.0
    if coupler:
        return couple(a_s, a_t) + keep  # (N, T, H, W)
    return (a_t[:, :, None, None] + keep) * (a_s[:, None] + keep)  # (N, T, H, W)


def apply_attention(f: torch.Tensor, a_s: torch.Tensor, a_t: torch.Tensor, coupler: bool,
                    residual: bool = True, normalise: bool = False) -> torch.Tensor:
    """Modulate the feature map with the attention (see the module doc for both definitions).

    Args:
        f: I3D feature map (N, C, T, H, W).
        a_s: spatial attention (N, S, S), resized to (H, W) when they differ.
        a_t: temporal attention (N, T).
        coupler: True for ``A_ST * f + f``; False for ``f_s = A_S * f + f``, ``A_T * f_s + f_s``.
        residual: False drops the ``+ f`` terms (``A_ST * f``; ``A_T * A_S * f`` uncoupled), so attention can
            suppress a place instead of only adding to it (``VPNConfig.attention_residual``; the paper keeps them).
        normalise: divide by the map's mean over (T, H, W), so that the head's global average pool of f' is the
            attention-weighted average of f (``VPNConfig.attention_pooling="normalised"``); the overall scale of
            f' then no longer depends on how much attention there is.

    Returns:
        f', same shape as f.
    """
    a_s = resize_spatial_attention(a_s, f.shape[-2:])  # (N, H, W)
    weights = attention_weights(a_s, a_t, coupler, residual)  # (N, T, H, W)
    if normalise:
        weights = weights / weights.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)  # (N, T, H, W)
    return weights[:, None] * f  # (N, C, T, H, W)
