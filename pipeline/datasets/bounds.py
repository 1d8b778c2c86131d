"""Bounds on what one sample's files may hold, beyond their formats: decoded frame size, pose magnitude, skeleton
length against its video's, and joints that are all at the origin.

A file can follow its format and still be absurd: a 299 KB MJPG whose frames are 4000x4000 (64 of them decoded for
one clip take 3 GB), poses of 1e30 metres (finite in float32, so they pass the readers, then overflow the BN running
statistics of a trained head), a 6,000-frame skeleton for a 103-frame video, or 25 joints all at (0, 0, 0). Each
check here returns ``""`` when the input is usable and otherwise the one-line reason that becomes the sample's
``problem`` (manifest) or its failure row (stage ``decode`` or ``skeleton``).

The limits are dataset facts on the ``DatasetSpec`` (``pose_bound``, ``max_length_ratio``) or, for frame size,
``MAX_FRAME_PIXELS`` (environment variable ``VPN_MAX_FRAME_MPIXELS``), as ``VPN_MAX_SKELETON_MB`` bounds a skeleton.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.datasets.skeleton_io import SkeletonClip
from pipeline.datasets.spec import DatasetSpec

MAX_FRAME_PIXELS = int(float(os.environ.get("VPN_MAX_FRAME_MPIXELS", "8.3")) * 1e6)
"""Largest decoded frame, in pixels, read from the container header before anything is decoded: 8.3 MP holds 4K
UHD (3840x2160); the datasets' videos are at most 1920x1080 (NTU). A 64-frame clip of such frames is 1.6 GB."""


def frame_size_problem(width: int, height: int, max_pixels: int | None = None) -> str:
    """``""`` when a ``width`` x ``height`` frame may be decoded, otherwise why not.

    Args:
        width: frame width from the container header (or the first image of a frame folder).
        height: frame height.
        max_pixels: the limit (default ``MAX_FRAME_PIXELS``).
    """
    limit = MAX_FRAME_PIXELS if max_pixels is None else max_pixels
    if width * height > limit:
        return (f"frames are {width}x{height} = {width * height / 1e6:.1f} MP, more than the {limit / 1e6:.1f} MP "
                "limit (set VPN_MAX_FRAME_MPIXELS to raise it)")
    return ""


def pose_problem(joints3d: np.ndarray, spec: DatasetSpec) -> str:
    """``""`` when a sample's 3D joints are usable, otherwise why not.

    Args:
        joints3d: (T, bodies, J, 3), NaN where a body is absent (a ``SkeletonClip``'s or a pose file's joints).
        spec: the dataset (its ``pose_bound``).

    Refused: no frame (0 frames), no body in any frame, every present joint at exactly (0, 0, 0) (no tracked person
    sits on the camera's centre), and any coordinate beyond ``spec.pose_bound``.
    """
    if len(joints3d) == 0:
        return "skeleton has 0 frames"
    present = np.isfinite(joints3d).all(axis=(-2, -1))  # (T, bodies)
    if not present.any():
        return "no body in any frame"
    values = joints3d[present]  # (n, J, 3)
    if not values.any():
        return "every joint of every body is at (0, 0, 0): no tracked person"
    largest = float(np.abs(values).max())
    if largest > spec.pose_bound:
        return (f"a joint coordinate of magnitude {largest:.3g} is beyond the {spec.pose_bound:g} {spec.pose_units} "
                f"bound of {spec.name} poses (DatasetSpec.pose_bound)")
    return ""


def clip_problem(clip: SkeletonClip, spec: DatasetSpec) -> str:
    """``pose_problem`` of a skeleton reader's clip."""
    return pose_problem(clip.joints3d, spec)


def length_problem(skeleton_frames: int, video_frames: int, spec: DatasetSpec) -> str:
    """``""`` when a skeleton's frame count fits its video's, otherwise why not.

    The two are taken to span the same time (``poses.align_frames``); beyond ``spec.max_length_ratio`` (either way)
    they are not the same recording. ``None`` (N-UCLA: the all_sqe JSON is resampled) skips the check.
    """
    ratio = spec.max_length_ratio
    if ratio is None or skeleton_frames <= 0 or video_frames <= 0:
        return ""
    if max(skeleton_frames, video_frames) > ratio * min(skeleton_frames, video_frames):
        return (f"skeleton has {skeleton_frames} frames but its video {video_frames}: more than {ratio:g}x apart, "
                "not the same recording")
    return ""
