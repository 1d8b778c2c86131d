"""The I3D input/output spec, declared once: clip length, crop size, strides and the Mixed_5c feature shape.

The paper feeds I3D 64 frames of 224 x 224 RGB and keeps the Mixed_5c map. Mixed_5c downsamples time by 8 and
space by 32 (TF "SAME" padding rounds up), so a ``(3, T, H, W)`` clip gives ``(1024, ceil(T/8), ceil(H/32),
ceil(W/32))``: ``(1024, 8, 7, 7)`` for the paper's clip. The cache writer, the contracts, the crop and video
defaults, ``VPNConfig`` and the fine-tune all derive from the names here. No heavy import: reading a config
must not load torch, h5py or the video libraries.
"""

from __future__ import annotations

import math

CLIP_FRAMES = 64
"""Frames per I3D clip (paper: 64 x 224 x 224)."""
CROP_SIZE = 224
"""Side of the square I3D input crop."""
FEATURE_CHANNELS = 1024
"""Channels of Mixed_5c."""
TEMPORAL_STRIDE = 8
"""Input frames per Mixed_5c time step."""
SPATIAL_STRIDE = 32
"""Input pixels per Mixed_5c cell along each side."""


def feature_shape(clip_len: int = CLIP_FRAMES, crop_size: int = CROP_SIZE) -> tuple[int, int, int, int]:
    """Mixed_5c shape ``(C, T, H, W)`` of one ``clip_len``-frame clip of ``crop_size`` x ``crop_size`` pixels."""
    size = math.ceil(crop_size / SPATIAL_STRIDE)
    return FEATURE_CHANNELS, math.ceil(clip_len / TEMPORAL_STRIDE), size, size


FEATURE_SHAPE: tuple[int, int, int, int] = feature_shape()
"""Mixed_5c output per clip of the paper's input: (1024, 8, 7, 7)."""


def model_options(clip_len: int, crop_size: int) -> str:
    """The head trainer's ``--model`` options for features of ``clip_len``-frame ``crop_size``-pixel clips
    (``make two-stage`` passes them, so a reduced-size cache trains without hand-written overrides)."""
    _, time, size, _ = feature_shape(clip_len, crop_size)
    return f"--model feature_time={time} --model feature_size={size}"


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "--model-options" or not all(a.isdigit() for a in sys.argv[2:]):
        sys.exit("usage: python -m pipeline.i3d.spec --model-options CLIP_LEN CROP_SIZE")
    print(model_options(int(sys.argv[2]), int(sys.argv[3])))
