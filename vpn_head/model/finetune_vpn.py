"""The end-to-end model: I3D up to Mixed_5c followed by the VPN head, and its paper-style window scoring."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.i3d.model import InceptionI3d
from vpn_head.model.vpn import VPN, VPNOutput


class FinetuneVPN(nn.Module):
    """I3D to Mixed_5c followed by the VPN head: ``(clips, poses) -> VPNOutput``.

    Args:
        i3d: the trunk (its ``freeze_until`` already applied).
        head: the VPN head; ``config`` is the head's, so ``vpn_head.eval.evaluate.score_clips`` can drive the model.
        frozen_bn: keep every I3D BatchNorm in eval mode.
    """

    def __init__(self, i3d: InceptionI3d, head: VPN, frozen_bn: bool = False) -> None:
        super().__init__()
        self.i3d, self.head, self.frozen_bn = i3d, head, frozen_bn
        self.config = head.config

    def train(self, mode: bool = True) -> FinetuneVPN:
        super().train(mode)
        if self.frozen_bn:
            for module in self.i3d.modules():
                if isinstance(module, nn.BatchNorm3d):
                    module.train(False)
        return self

    def forward(self, clips: torch.Tensor, poses: torch.Tensor | None) -> VPNOutput:
        """Score clips.

        Args:
            clips: (N, 3, T, H, W) RGB in [-1, 1].
            poses: (N, 2, 3, J, t_p); None for the head variant ``i3d``.
        """
        features = self.i3d.forward_features(clips)  # (N, 1024, ceil(T/8), ceil(H/32), ceil(W/32))
        return self.head(features, poses)

    def score_windows(self, clips: torch.Tensor, poses: torch.Tensor | None, chunk: int) -> torch.Tensor:
        """Max-pooled softmax over clips and every head-sized spatial window of their Mixed_5c maps.

        Args:
            clips: (K, 3, T, h, w) clips of one video (any h, w).
            poses: (K, 2, 3, J, t_p) or None.
            chunk: clips (and windows) per forward pass.

        Returns:
            (num_classes,) float32 scores.
        """
        size = self.config.feature_size
        best = None
        for start in range(0, len(clips), chunk):
            features = self.i3d.forward_features(clips[start:start + chunk])  # (k, 1024, T', h', w')
            if min(features.shape[-2:]) >= size:
                features = features.unfold(3, size, 1).unfold(4, size, 1)  # (k, 1024, T', h'-s+1, w'-s+1, s, s)
                positions = features.shape[3] * features.shape[4]
                features = features.permute(0, 3, 4, 1, 2, 5, 6).flatten(0, 2)  # (k * P, 1024, T', s, s)
            else:
                positions = 1
            repeated = None if poses is None else poses[start:start + chunk].repeat_interleave(positions, 0)
            for first in range(0, len(features), chunk):
                window_poses = None if repeated is None else repeated[first:first + chunk]
                logits = self.head(features[first:first + chunk], window_poses).logits  # (c, num_classes)
                probs = F.softmax(logits.float(), dim=1).amax(dim=0)  # (num_classes,)
                best = probs if best is None else torch.maximum(best, probs)
        return best

