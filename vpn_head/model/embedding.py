"""Spatial embedding of video and pose (paper section 3.3, eq. 4).

``f_s = sum_t f``: the ORIGINAL feature map (before attention) summed over time, (N, C, H, W). It is average-
pooled to the S x S grid of the spatial attention (an identity for the usual 7 x 7 map) and flattened, so the
embedding keeps the spatial layout that the pose logits ``z1`` describe.

``embedding_centre`` (not in the paper): I3D Mixed_5c features are non-negative and every person crop has a similar
layout, so f_e of every video points the same way (also after removing each channel's spatial mean; the cosines
are in the README, "Does the pose steer the head?") and the paper's Euclidean loss has a trivial minimum that
ignores the pose.
``spatial`` subtracts each channel's mean over the grid from f_s; ``batch`` standardises every (channel, cell) of
f_s over the videos (BatchNorm without affine parameters, running statistics at test time), so f_e describes
how this video differs from the others.

``embedding_form="official"`` (the authors' code): f_e = sigmoid(W_v flatten(f) + b_v) on the whole map with its
time axis kept, P_e = sigmoid(W_p A_S + b_p), no norm constraint.

``f_e = T_v f_s`` and ``P_e = T_p z1`` (``embedding_input="a_s"``: ``T_p A_S``, as in the authors' code) project
both into a common space of size ``embed_dim`` (linear maps, no bias). The constraint ``||T_v|| = ||T_p|| = 1`` is enforced as a unit *spectral* norm with
``torch.nn.utils.parametrizations.spectral_norm``: the used weight is ``W / sigma_max(W)``, with sigma_max
estimated by power iteration (15 steps at construction, then one per training forward, frozen in eval mode):
sigma_max(W_used) starts within ~10% of 1 and converges to 1 as training runs, at a rate set by the gap
between the two largest singular values (typically < 0.1% off after a few hundred steps). A unit spectral
norm keeps both maps non-expansive without shrinking every entry, as a unit Frobenius norm of a
(embed_dim x C * 49) matrix would, which would make the KL losses' softmaxes nearly uniform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class SpatialEmbedding(nn.Module):
    """Projects the time-summed feature map and the spatial attention logits into one embedding space."""

    def __init__(self, feature_channels: int, feature_size: int, embed_dim: int, centre: str = "none",
                 pose_dim: int | None = None, form: str = "paper", feature_time: int = 1):
        """``pose_dim``: size of the pose side (default S * S; the joint logits' B * J when A_S is joint-anchored).
        ``form="official"``: the authors' embeddings (sigmoid dense layers with bias, the video side on the
        flattened map with its ``feature_time`` steps kept, no norm constraint)."""
        super().__init__()
        self.feature_size = feature_size
        self.centre = centre
        self.official = form == "official"
        video_dim = feature_channels * feature_size ** 2 * (feature_time if self.official else 1)
        self.batch_norm = nn.BatchNorm1d(video_dim, affine=False) if centre == "batch" else None
        if self.official:
            self.visual = nn.Sequential(nn.Linear(video_dim, embed_dim), nn.Sigmoid())  # dense_video
            self.pose = nn.Sequential(nn.Linear(pose_dim or feature_size ** 2, embed_dim), nn.Sigmoid())  # dense_skeleton
        else:
            self.visual = spectral_norm(nn.Linear(video_dim, embed_dim, bias=False))  # T_v
            self.pose = spectral_norm(nn.Linear(pose_dim or feature_size ** 2, embed_dim, bias=False))  # T_p

    def forward(self, f: torch.Tensor, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed video and pose.

        Args:
            f: original feature map (N, C, T, H, W).
            z1: the pose side, (N, S * S): spatial attention logits z1 or A_S (``embedding_input``).

        Returns:
            ``(f_e, p_e)``, each (N, embed_dim).
        """
        if self.official:  # the authors' Flatten of Mixed_5c: time kept
            f_s = F.adaptive_avg_pool3d(f, (f.shape[2], self.feature_size, self.feature_size))  # (N, C, T, 7, 7)
        else:
            f_s = F.adaptive_avg_pool2d(f.sum(dim=2), self.feature_size)  # (N, C, 7, 7)
        if self.centre == "spatial":
            f_s = f_s - f_s.mean(dim=(-2, -1), keepdim=True)  # (N, C, [T,] 7, 7)
        f_s = f_s.flatten(1)  # (N, C * 49), official (N, C * T * 49)
        if self.batch_norm is not None:
            bn = self.batch_norm
            single = self.training and f_s.shape[0] == 1  # one video has no spread: use the running statistics
            f_s = F.batch_norm(f_s, bn.running_mean, bn.running_var, training=self.training and not single,
                               momentum=bn.momentum, eps=bn.eps)  # (N, C * 49)
        f_e = self.visual(f_s)  # (N, embed_dim)
        p_e = self.pose(z1)  # (N, embed_dim)
        return f_e, p_e
