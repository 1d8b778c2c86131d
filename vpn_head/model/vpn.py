"""The VPN head (Das et al., ECCV 2020): I3D Mixed_5c features + 3D poses -> action logits.

Read top to bottom::

    poses (N, B, 3, J, t_p) --PoseEncoder--> h* (N, 128)                       [pose_backbone.py, eq. 1]
    h* --PoseAttention--> z1 (N, 49), A_S (N, 7, 7), A_T (N, 8)                 [attention.py, eq. 2]
    f (N, C, 8, H, W), A_S, A_T --apply_attention--> f' (N, C, 8, H, W)         [attention.py, eq. 3]
    f, z1 --SpatialEmbedding--> f_e, P_e (N, embed_dim)                         [embedding.py, eq. 4]
    f' --GAP over (T, H, W), feature_norm, dropout, linear--> logits (N, K)    [classifier]

Variants (paper Table 1): ``i3d`` (l1) is the classifier on f alone (no pose, poses may be None);
``attention`` (l2) adds the pose attention; ``vpn`` (l3) adds the spatial embedding. The losses live in
``losses.py``.

Spatial size: the classifier pools globally, so every variant accepts any H x W (fully convolutional in
space). For the pose variants A_S is resized bilinearly to H x W and f_s is average-pooled to the 7 x 7 grid
(see attention.py and embedding.py); T must equal ``feature_time`` since A_T has that many steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.contracts import MAX_BODIES
from vpn_head.model.attention import PoseAttention, apply_attention
from vpn_head.model.config import VPNConfig
from vpn_head.model.embedding import SpatialEmbedding
from vpn_head.model.pose_backbone import POSE_FEATURE_DIM, PoseEncoder


@dataclass
class VPNOutput:
    """Everything the losses and the analysis need from one forward pass.

    Attributes:
        logits: (N, num_classes), before softmax.
        attention_spatial: A_S (N, S, S) on the configured grid; None for variant ``i3d``.
        attention_temporal: A_T (N, T); None for variant ``i3d``.
        f_e: video embedding (N, embed_dim); None unless variant ``vpn``.
        p_e: pose embedding (N, embed_dim); None unless variant ``vpn``.
    """

    logits: torch.Tensor
    attention_spatial: torch.Tensor | None
    attention_temporal: torch.Tensor | None
    f_e: torch.Tensor | None
    p_e: torch.Tensor | None


class PooledNorm(nn.BatchNorm1d):
    """BatchNorm without affine parameters over the pooled features (``VPNConfig.feature_norm="batch"``).

    The running statistics start from the first training batch's, not from BatchNorm's (0, 1): pooled Mixed_5c
    features share a large positive level, and an average that starts at 0 is still far from it after a few
    dozen steps (0.9^20 of the level is left after 20), which would put every test clip off the training
    distribution on a small dataset. A training batch of one clip (the last of an epoch) cannot be standardised
    by its own statistics; it is normalised with the running ones instead of failing.
    """

    def __init__(self, channels: int):
        super().__init__(channels, affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, C)."""
        if self.training and pooled.shape[0] < 2:
            return nn.functional.batch_norm(pooled, self.running_mean, self.running_var, training=False,
                                            eps=self.eps)
        if self.training and int(self.num_batches_tracked) == 0:
            with torch.no_grad():
                self.running_mean.copy_(pooled.mean(dim=0))
                self.running_var.copy_(pooled.var(dim=0))
        return super().forward(pooled)


class VPN(nn.Module):
    """The VPN head; its parts depend on ``config.variant`` (see the module doc)."""

    def __init__(self, config: VPNConfig):
        super().__init__()
        config.validate()
        self.config = config
        uses_pose = config.variant != "i3d"
        self.pose_encoder = PoseEncoder(config) if uses_pose else None
        anchors = MAX_BODIES * config.num_joints if config.spatial_attention == "joints" else 0
        self.attention = (PoseAttention(POSE_FEATURE_DIM, config.attention_hidden, config.feature_time,
                                        config.feature_size, config.temporal_scale, config.attention_init == "zero",
                                        anchors, config.joint_sigma, config.temporal_hidden)
                          if uses_pose else None)
        pose_side = anchors if anchors and config.embedding_input == "z1" else config.feature_size ** 2
        self.embedding = (SpatialEmbedding(config.feature_channels, config.feature_size, config.embed_dim,
                                           config.embedding_centre, pose_side, config.embedding_form,
                                           config.feature_time)
                          if config.variant == "vpn" else None)
        self.feature_norm = PooledNorm(config.feature_channels) if config.feature_norm == "batch" else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = (nn.Linear(config.feature_channels, config.num_classes) if config.classifier == "linear"
                           else nn.Sequential(nn.Linear(config.feature_channels, config.num_classes),
                                              nn.Linear(config.num_classes, config.num_classes)))
        """``classifier="official"``: the authors' 1 x 1 conv to the classes, then Dense(classes) (its softmax is
        the cross-entropy's)."""

    def _check_inputs(self, features: torch.Tensor, poses: torch.Tensor | None) -> None:
        cfg = self.config
        time = cfg.feature_time if self.pose_encoder is not None else "T"
        expected = f"(N, {cfg.feature_channels}, {time}, H, W)"
        if (not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.dim() != 5
                or features.shape[1] != cfg.feature_channels
                or (self.pose_encoder is not None and features.shape[2] != cfg.feature_time)):
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must be a floating-point tensor of shape {expected}; got {got}")
        if self.pose_encoder is None:
            return
        bodies = MAX_BODIES if cfg.spatial_attention == "joints" else "B>=1"
        expected = f"(N={features.shape[0]}, {bodies}, {cfg.pose_channels}, {cfg.num_joints}, {cfg.t_p})"
        if poses is None:
            raise ValueError(f"variant {cfg.variant!r} needs poses of shape {expected}; got None")
        if (not poses.is_floating_point() or poses.dim() != 5 or poses.shape[0] != features.shape[0]
                or poses.shape[1] < 1 or poses.shape[2:] != (cfg.pose_channels, cfg.num_joints, cfg.t_p)
                or (cfg.spatial_attention == "joints" and poses.shape[1] != MAX_BODIES)):
            raise ValueError(f"poses must be a floating-point tensor of shape {expected}; got {tuple(poses.shape)}")

    def forward_features(self, features: torch.Tensor, poses: torch.Tensor | None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        """Pose-driven attention and spatial embedding.

        Args:
            features: I3D Mixed_5c map f (N, C, T, H, W), float.
            poses: (N, B, 3, J, t_p), absent bodies all zero; with ``spatial_attention="joints"`` (N, 2, 5, J, t_p),
                channels 3-4 the crop joints (``pipeline.crops.joints``); ignored (may be None) for variant ``i3d``.

        Returns:
            ``(f_prime, aux)``: the attended map (N, C, T, H, W) (f itself for ``i3d``) and a dict with keys
            ``attention_spatial``, ``attention_temporal``, ``f_e``, ``p_e`` (None where the variant has none).
        """
        self._check_inputs(features, poses)
        aux: dict[str, torch.Tensor | None] = dict(attention_spatial=None, attention_temporal=None, f_e=None, p_e=None)
        if self.pose_encoder is None:
            return features, aux
        h = self.pose_encoder(poses[:, :, :3])  # (N, 128)
        joints_xy = poses[:, :, 3:] if self.config.spatial_attention == "joints" else None  # (N, 2, 2, J, t_p)
        z1, a_s, a_t = self.attention(h, joints_xy)  # (N, 49) or (N, 2 * J), (N, 7, 7), (N, 8)
        f_prime = apply_attention(features, a_s, a_t, self.config.coupler, self.config.attention_residual,
                                  self.config.attention_pooling == "normalised")  # (N, C, T, H, W)
        aux.update(attention_spatial=a_s, attention_temporal=a_t)
        if self.embedding is not None:
            pose_side = z1 if self.config.embedding_input == "z1" else a_s.flatten(1)  # (N, 49)
            aux["f_e"], aux["p_e"] = self.embedding(features, pose_side)  # (N, embed_dim) each
        return f_prime, aux

    def forward_head(self, f_prime: torch.Tensor) -> torch.Tensor:
        """Global average pool over (T, H, W), ``feature_norm``, dropout, linear: (N, C, T, H, W) -> logits
        (N, num_classes)."""
        pooled = self.feature_norm(f_prime.mean(dim=(2, 3, 4)))  # (N, C)
        return self.classifier(self.dropout(pooled))  # (N, num_classes)

    def forward(self, features: torch.Tensor, poses: torch.Tensor | None = None) -> VPNOutput:
        """Full forward pass; see ``forward_features`` for the inputs."""
        f_prime, aux = self.forward_features(features, poses)
        return VPNOutput(logits=self.forward_head(f_prime), **aux)
