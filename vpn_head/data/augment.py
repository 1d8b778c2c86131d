"""Functional transforms of a person clip for the end-to-end fine-tune, keeping video and pose consistent.

Training augmentation (``AugmentConfig``), each drawn from one ``np.random.Generator`` per sample:

- **Temporal jitter** (``clip_indices``): the cached clip covers the frame window ``[first, last]`` of its
  frame indices (``pipeline.i3d.spec.CLIP_FRAMES`` of them by default); the ``clip_len`` indices are re-sampled
  evenly over that same window, each moved by a uniform offset within its own sampling cell (TSN style,
  ``pipeline.video.sampling.sample_frame_indices``), so they stay sorted and inside the window (hence inside the video).
  The poses are NOT shifted: ``vpn_head.train.finetune`` recomputes them from the skeleton file at the jittered frames
  with ``pipeline.datasets.poses`` (``align_frames`` + ``clip_poses``), exactly as the cache pipeline computed the cached
  ones, so the pose input always describes the frames the network sees.
- **Spatial jitter** (``jitter_box``): the square person box is scaled by ``U[1 - s, 1 + s]`` and its centre
  moved by ``U[-d, d]`` times its side, then shifted back into the frame. The poses are 3D camera-space joints
  translated to the body's centre joint (``pipeline.datasets.poses``), so a different 2D crop leaves them unchanged.
- **Horizontal flip** (``flip_clip`` + ``flip_poses``): the crop is mirrored left-right; the poses get their
  camera x negated (an image flip mirrors the scene about a vertical plane; the centring keeps the origin)
  and every (left, right) joint pair of ``DatasetSpec.left_right`` swapped, since the mirrored left hand
  becomes the person's right hand. Both are involutions.

Test-time crop (``crop_keep_aspect``): the whole person box resized so that its short side has a given
length, keeping its aspect ratio, for fully convolutional scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.defaults import DEFAULT_BOX_SCALE, DEFAULT_BOX_SHIFT
from pipeline.video import crop
from pipeline.video.sampling import sample_frame_indices


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; every field set to off (0 / False) gives the cached clip unchanged.

    Attributes:
        flip_prob: probability of a horizontal flip (video and poses).
        temporal_jitter: re-sample the frame indices with per-cell jitter inside the cached clip's window.
        box_scale: the box side is multiplied by ``U[1 - box_scale, 1 + box_scale]``.
        box_shift: the box centre moves by ``U[-box_shift, box_shift]`` times the box side, in x and y.
    """

    flip_prob: float = 0.5
    temporal_jitter: bool = True
    box_scale: float = DEFAULT_BOX_SCALE
    box_shift: float = DEFAULT_BOX_SHIFT

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"AugmentConfig.flip_prob must be in [0, 1], got {self.flip_prob!r}")
        if not isinstance(self.temporal_jitter, bool):
            raise ValueError(f"AugmentConfig.temporal_jitter must be a bool, got {self.temporal_jitter!r}")
        if not 0.0 <= self.box_scale < 1.0:
            raise ValueError(f"AugmentConfig.box_scale must be in [0, 1), got {self.box_scale!r}")
        if not 0.0 <= self.box_shift <= 1.0:
            raise ValueError(f"AugmentConfig.box_shift must be in [0, 1], got {self.box_shift!r}")


def clip_indices(cached: np.ndarray, clip_len: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices of the clip the network sees, from a cached clip's indices.

    Without ``rng`` and with ``clip_len == len(cached)`` the cached indices are returned unchanged (so the
    cached poses apply). Otherwise ``clip_len`` indices are sampled evenly over the cached window
    ``[cached[0], cached[-1]]``, jittered within their cells when ``rng`` is given.

    Args:
        cached: (clip_len,) sorted frame indices of a cache row.
        clip_len: frames of the output clip.
        rng: generator for temporal jitter; None for the deterministic clip.

    Returns:
        int64 (clip_len,) sorted indices within ``[cached[0], cached[-1]]``.
    """
    cached = np.asarray(cached, dtype=np.int64)
    if cached.ndim != 1 or len(cached) == 0 or np.any(np.diff(cached) < 0) or cached[0] < 0:
        raise ValueError(f"cached frame indices must be 1-D, non-negative and sorted, got {cached}")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if rng is None and clip_len == len(cached):
        return cached.copy()
    span = int(cached[-1] - cached[0]) + 1
    return cached[0] + sample_frame_indices(span, clip_len, 1, rng)[0]  # (clip_len,)


def jitter_box(box: np.ndarray, frame_w: int, frame_h: int, rng: np.random.Generator, scale: float,
               shift: float) -> np.ndarray:
    """Randomly scale and move a crop box, keeping it inside the frame.

    Args:
        box: ``(x0, y0, x1, y1)`` in source pixels (``pipeline.video.crop`` convention).
        frame_w: frame width.
        frame_h: frame height.
        rng: the sample's generator (draws 3 numbers).
        scale: side factor drawn from ``U[1 - scale, 1 + scale]``.
        shift: centre offset drawn from ``U[-shift, shift]`` times the side, per axis.

    Returns:
        float32 (4,) box; a side longer than the frame spans the whole frame along that axis.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    factor = rng.uniform(1.0 - scale, 1.0 + scale)
    dx, dy = rng.uniform(-shift, shift, size=2)
    width, height = (x1 - x0) * factor, (y1 - y0) * factor
    centre_x, centre_y = (x0 + x1) / 2 + dx * width, (y0 + y1) / 2 + dy * height
    x0, x1 = crop._fit(centre_x - width / 2, width, frame_w)
    y0, y1 = crop._fit(centre_y - height / 2, height, frame_h)
    return np.array([x0, y0, x1, y1], np.float32)


def flip_permutation(num_joints: int, left_right: Sequence[tuple[int, int]]) -> np.ndarray:
    """Joint order after a horizontal flip: ``out[:, j] = in[:, perm[j]]`` swaps every (left, right) pair."""
    perm = np.arange(num_joints)
    for left, right in left_right:
        if not (0 <= left < num_joints and 0 <= right < num_joints) or left == right:
            raise ValueError(f"left/right pair {(left, right)} is not two distinct joints of {num_joints}")
        perm[left], perm[right] = right, left
    if len(set(perm.tolist())) != num_joints:
        raise ValueError(f"left/right pairs {tuple(left_right)} share a joint; a flip must be a permutation")
    return perm


def flip_poses(poses: np.ndarray, left_right: Sequence[tuple[int, int]]) -> np.ndarray:
    """Mirror 3D poses as a horizontal image flip does: negate x, swap left and right joints.

    Args:
        poses: (B, 3, J, t_p) camera-space joints (x, y, z on axis 1).
        left_right: (left, right) joint index pairs (``DatasetSpec.left_right``).

    Returns:
        float32 (B, 3, J, t_p), a new array.
    """
    if poses.ndim != 4 or poses.shape[1] != 3:
        raise ValueError(f"poses must be (B, 3, J, t_p), got {poses.shape}")
    out = poses[:, :, flip_permutation(poses.shape[2], left_right)].astype(np.float32)  # (B, 3, J, t_p)
    out[:, 0] *= -1.0
    return out


def flip_clip(frames: np.ndarray) -> np.ndarray:
    """Mirror a (T, H, W, 3) clip left-right (a contiguous copy)."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def crop_keep_aspect(frames: np.ndarray, box: np.ndarray, short_side: int,
                     aspect_of: tuple[float, float] | None = None) -> np.ndarray:
    """Crop every frame to ``box`` and resize so that the short side is ``short_side``, keeping the aspect.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        box: ``(x0, y0, x1, y1)`` (rounded by ``pipeline.video.crop.box_to_pixels``).
        short_side: output length of the crop's shorter side.
        aspect_of: ``(width, height)`` whose aspect the output takes (the box in source pixels, when ``frames``
            are a crop store's, so both paths give the same shape); default the rounded box's.

    Returns:
        uint8 (T, h, w, 3) with ``min(h, w) == short_side``.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    x0, y0, x1, y1 = crop.box_to_pixels(box, frames.shape[2], frames.shape[1])
    height, width = y1 - y0, x1 - x0
    ratio = short_side / min(height, width)
    aspect_w, aspect_h = aspect_of if aspect_of is not None else (width, height)
    shape_ratio = short_side / min(aspect_w, aspect_h)
    out_h, out_w = max(short_side, round(aspect_h * shape_ratio)), max(short_side, round(aspect_w * shape_ratio))
    interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    out = np.empty((len(frames), out_h, out_w, 3), np.uint8)  # (T, h, w, 3)
    for frame, dst in zip(frames[:, y0:y1, x0:x1], out):
        cv2.resize(frame, (out_w, out_h), dst=dst, interpolation=interpolation)
    return out
