"""Person crops for I3D: one square box per clip from the skeleton joints, then crop + resize to the I3D input
(``pipeline.i3d.spec.CROP_SIZE``, 224 x 224).

Box convention: ``(x0, y0, x1, y1)`` in continuous source-frame pixel coordinates; the frame spans
``[0, width] x [0, height]`` and pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.defaults import DEFAULT_CROP_PAD
from pipeline.i3d.spec import CROP_SIZE

DEFAULT_MIN_SIZE = 64.0
"""Smallest box side in source pixels (guards against a box around a single joint)."""


def clip_box(
    joints_xy: np.ndarray,
    frame_w: int,
    frame_h: int,
    pad: float = DEFAULT_CROP_PAD,
    min_size: float = DEFAULT_MIN_SIZE,
) -> np.ndarray:
    """One square crop box that holds every person of a clip.

    Steps: clip every finite joint into the frame; take the box around all finite joints of all frames and
    bodies; grow it to a square of side ``max(longer side * (1 + 2 * pad), min_size)`` around its centre; shift the
    square into the frame. Along an axis where that side exceeds the frame, the box spans the whole frame instead
    (it then still holds every joint but is no longer square).

    With no finite joint at all the box is the frame's centre square (side = the frame's shorter side); callers
    detect that case with ``not np.isfinite(joints_xy).all(-1).any()`` and record it.

    Args:
        joints_xy: ``(T, B, J, 2)`` joint pixel coordinates ``(x, y)`` over the sampled frames; NaN marks a
            missing body or joint.
        frame_w: Frame width in pixels.
        frame_h: Frame height in pixels.
        pad: Padding on each side, as a fraction of the joints' box's longer side.
        min_size: Smallest side of the box, in pixels.

    Returns:
        float32 ``(4,)``: ``x0, y0, x1, y1``.
    """
    joints_xy = np.asarray(joints_xy, dtype=np.float64)
    if joints_xy.ndim != 4 or joints_xy.shape[-1] != 2:
        raise ValueError(f"joints_xy must have shape (T, B, J, 2), got {joints_xy.shape}")
    if frame_w <= 0 or frame_h <= 0:
        raise ValueError(f"frame size must be positive, got {frame_w}x{frame_h}")
    if pad < 0 or min_size < 0:
        raise ValueError(f"pad and min_size must be non-negative, got {pad}, {min_size}")
    points = joints_xy.reshape(-1, 2)  # (T * B * J, 2)
    points = points[np.isfinite(points).all(axis=1)]  # (P, 2)
    if len(points) == 0:
        side = min(frame_w, frame_h)
        x0, y0 = (frame_w - side) / 2, (frame_h - side) / 2
        return np.array([x0, y0, x0 + side, y0 + side], np.float32)
    points = np.clip(points, 0.0, [frame_w, frame_h])
    (lo_x, lo_y), (hi_x, hi_y) = points.min(axis=0), points.max(axis=0)
    side = max(max(hi_x - lo_x, hi_y - lo_y) * (1 + 2 * pad), min_size)
    centre_x, centre_y = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
    x0, x1 = _fit(centre_x - side / 2, side, frame_w)
    y0, y1 = _fit(centre_y - side / 2, side, frame_h)
    return np.array([x0, y0, x1, y1], np.float32)


def _fit(start: float, side: float, limit: float) -> tuple[float, float]:
    """Shift the interval ``[start, start + side]`` into ``[0, limit]``; ``[0, limit]`` when it is longer."""
    if side >= limit:
        return 0.0, float(limit)
    start = min(max(start, 0.0), limit - side)
    return start, start + side


def box_to_pixels(box: np.ndarray, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds of a fractional box: each edge rounded half up, clamped, at least one pixel wide.

    Args:
        box: ``(x0, y0, x1, y1)`` in continuous pixel coordinates.
        frame_w: Frame width.
        frame_h: Frame height.

    Returns:
        ``(x0, y0, x1, y1)`` ints; the crop is ``frame[y0:y1, x0:x1]``.
    """
    x0, y0, x1, y1 = (math.floor(float(v) + 0.5) for v in box)
    x0, x1 = min(max(x0, 0), frame_w - 1), min(max(x1, 1), frame_w)
    y0, y1 = min(max(y0, 0), frame_h - 1), min(max(y1, 1), frame_h)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def to_uint8_crops(frames: np.ndarray, box: np.ndarray, size: int = CROP_SIZE, *, area_from: float = 1.0,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Crop every frame to ``box`` (rounded by ``box_to_pixels``) and resize to ``size x size``.

    ``cv2.INTER_AREA`` when the crop is at least ``area_from * size`` pixels both ways (shrinking),
    ``cv2.INTER_LINEAR`` otherwise (growing, or, with ``area_from > 1``, shrinking by less than ``area_from``:
    the person-crop store's frames are already near ``size``, ``pipeline.crops.store.StoreView.area_from``).

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB.
        box: ``(x0, y0, x1, y1)`` from ``clip_box``.
        size: Output side.
        area_from: shrink factor from which ``INTER_AREA`` is used (1: every shrink, the source path).
        out: uint8 ``(T, size, size, 3)`` to write into (a new array when None).

    Returns:
        uint8 ``(T, size, size, 3)`` RGB (``out`` when given).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    x0, y0, x1, y1 = box_to_pixels(box, frames.shape[2], frames.shape[1])
    crops = frames[:, y0:y1, x0:x1]  # (T, h, w, 3)
    shrinking = crops.shape[1] >= area_from * size and crops.shape[2] >= area_from * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if out is None:
        out = np.empty((len(frames), size, size, 3), np.uint8)  # (T, size, size, 3)
    elif out.shape != (len(frames), size, size, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be contiguous uint8 {(len(frames), size, size, 3)}, got {out.dtype} {out.shape}")
    for crop, dst in zip(crops, out):
        cv2.resize(crop, (size, size), dst=dst, interpolation=interpolation)
    return out


def normalize_crops(crops: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``(T, S, S, 3)`` RGB crops to the I3D input layout: float32 ``(3, T, S, S)`` with ``x / 127.5 - 1``.

    Args:
        crops: uint8 ``(T, S, S, 3)``.
        out: float32 ``(3, T, S, S)`` to write into (a new array when None), e.g. a clip of a preallocated tensor.

    Returns:
        float32 ``(3, T, S, S)`` in ``[-1, 1]`` (``out`` when given).
    """
    shape = (3, *crops.shape[:3])
    if out is None:
        out = np.empty(shape, np.float32)  # (3, T, S, S)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    np.divide(crops.transpose(3, 0, 1, 2), np.float32(127.5), out=out)
    out -= 1.0
    return out


def crop_and_resize(frames: np.ndarray, box: np.ndarray, size: int = CROP_SIZE, *, area_from: float = 1.0,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Crop, resize and normalise a clip for I3D (``to_uint8_crops`` then ``normalize_crops``).

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB.
        box: ``(x0, y0, x1, y1)`` from ``clip_box``.
        size: Output side.
        area_from: ``to_uint8_crops``'s shrink factor from which ``INTER_AREA`` is used.
        out: float32 ``(3, T, size, size)`` to write into (a new array when None).

    Returns:
        float32 ``(3, T, size, size)`` in ``[-1, 1]``, RGB (``out`` when given).
    """
    return normalize_crops(to_uint8_crops(frames, box, size, area_from=area_from), out=out)


def jitter_reach(box: np.ndarray, frame_w: int, frame_h: int, scale: float, shift: float) -> np.ndarray:
    """The smallest box that holds every box ``vpn_head.data.augment.jitter_box`` can draw from ``box``.

    ``jitter_box`` scales a side by ``f`` in ``[1 - scale, 1 + scale]``, moves the centre by up to ``shift``
    times the new side and shifts the result into the frame with ``_fit``. The end of the fitted interval is
    ``clamp(start + side, side, limit)``, which grows with the side, so the far edges are reached at
    ``f = 1 + scale`` and the largest shift; the same holds for the start, mirrored.

    Args:
        box: ``(x0, y0, x1, y1)`` in source pixels.
        frame_w: Frame width.
        frame_h: Frame height.
        scale: ``jitter_box``'s ``scale``.
        shift: ``jitter_box``'s ``shift``.

    Returns:
        float64 ``(4,)``: ``x0, y0, x1, y1`` inside the frame.
    """
    if scale < 0 or shift < 0:
        raise ValueError(f"scale and shift must be non-negative, got {scale}, {shift}")
    out = np.empty(4, np.float64)
    for axis, limit in ((0, frame_w), (1, frame_h)):
        lo, hi = float(box[axis]), float(box[axis + 2])
        side, centre = (hi - lo) * (1.0 + scale), (lo + hi) / 2
        reach = side * (0.5 + shift)
        out[axis] = max(min(centre - reach, limit - side), 0.0)
        out[axis + 2] = min(max(centre + reach, side), float(limit))
    return out


def any_clip_reach(joints_xy: np.ndarray, frame_w: int, frame_h: int, pad: float, scale: float,
                   shift: float, min_size: float = DEFAULT_MIN_SIZE) -> tuple[np.ndarray, float]:
    """A box that holds every box ``clip_box`` can give for any subset of a video's frames, jittered as
    ``jitter_reach`` allows, and the side of the whole video's box.

    Bound: the joints (clipped into the frame) of any subset lie in the whole video's joints box ``[lo, hi]``, so a
    clip's square has side ``s <= S`` (``S`` = the whole video's side) and, once ``_fit`` shifts it into the frame,
    centre ``c in [min(lo, limit - s / 2), max(hi, s / 2)]``; a jittered box reaches at most
    ``s (1 + scale) (0.5 + shift)`` from ``c``, and ``_fit`` may push it to ``[0, s (1 + scale)]`` or to the far
    edge (``jitter_reach``). With no finite joint at all the box is the frame.

    Args:
        joints_xy: ``(T, B, J, 2)`` every frame's joints, NaN where missing.
        frame_w: Frame width.
        frame_h: Frame height.
        pad: ``clip_box``'s padding.
        scale: ``jitter_box``'s ``scale`` (0: none).
        shift: ``jitter_box``'s ``shift`` (0: none).
        min_size: ``clip_box``'s smallest side.

    Returns:
        ``(reach, side)``: float64 ``(4,)`` ``x0, y0, x1, y1`` inside the frame, and the whole video's box side
        (before it is cut to the frame).
    """
    points = np.asarray(joints_xy, np.float64).reshape(-1, 2)  # (T * B * J, 2)
    points = points[np.isfinite(points).all(axis=1)]  # (P, 2)
    if len(points) == 0:
        return np.array([0.0, 0.0, frame_w, frame_h]), float(min(frame_w, frame_h))
    points = np.clip(points, 0.0, [frame_w, frame_h])
    lo, hi = points.min(axis=0), points.max(axis=0)  # (2,), (2,)
    side = max(float((hi - lo).max()) * (1 + 2 * pad), min_size)
    grown = side * (1.0 + scale)  # the longest jittered side
    reach = grown * (0.5 + shift)
    out = np.empty(4, np.float64)
    for axis, limit in ((0, frame_w), (1, frame_h)):
        out[axis] = max(min(lo[axis] - reach, limit - side / 2 - reach, limit - grown), 0.0)
        out[axis + 2] = min(max(hi[axis] + reach, side / 2 + reach, grown), float(limit))
    return out, side
