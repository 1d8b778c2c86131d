"""Drawing the synthetic frames: backgrounds, moving distractors and the filled stick figures, far to near, with
OpenCV's anti-aliased sub-pixel primitives (see ``pipeline/synthetic/dataset.py`` for the design)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.datasets.ntu import COLOR_FRAME_SIZE, NTU_JOINTS, BodyRecord
from pipeline.datasets.registry import get_dataset
from pipeline.synthetic.motion import (
    COLOR_FOCAL,
    FINGER_WIDTH_M,
    HAND_RADIUS_M,
    HEAD_RADIUS_M,
    JOINT_INDEX,
    LIMB_WIDTH_M,
    project_color,
)
from pipeline.synthetic.plan import FPS, SamplePlan


def _limb(a: int, b: int) -> tuple[int, int, float, str]:
    """(joint a, joint b, width in metres, BodyStyle colour field) of one NTU bone."""
    names = NTU_JOINTS[a] + NTU_JOINTS[b]
    if "Tip" in names or "Thumb" in names:
        return a, b, FINGER_WIDTH_M, "skin"
    return a, b, LIMB_WIDTH_M, "trousers" if "Knee" in names or "Ankle" in names else "shirt"


_LIMBS = tuple(_limb(a, b) for a, b in get_dataset("ntu60").edges)
_SHIFT = 4  # cv2 drawing sub-pixel bits
_DISTRACTOR_HALF = (0.52, 0.98)


@dataclass(frozen=True)
class Distractor:
    """A bright shape moving in the half of the frame away from the person.

    Attributes:
        boxes: (T, 4) float x0, y0, x1, y1 in video pixels.
        color: BGR.
        ellipse: an ellipse inscribed in the box instead of a filled box.
    """

    boxes: np.ndarray
    color: tuple[int, int, int]
    ellipse: bool


@dataclass(frozen=True)
class BodyStyle:
    """Colours (BGR) of one drawn person."""

    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """One generated sample: what the skeleton file holds and everything needed to draw its frames.

    Attributes:
        plan: the sample's plan (id, label, ...).
        frames: per frame, the bodies written to the ``.skeleton`` file (empty in zero-body frames).
        xyz: (M, T, 25, 3) camera-space joints of every drawn person in every frame (also in zero-body frames).
        styles: one per person.
        background: (H, W, 3) uint8 BGR static background.
        distractors: the moving shapes.
    """

    plan: SamplePlan
    frames: list[list[BodyRecord]]
    xyz: np.ndarray
    styles: tuple[BodyStyle, ...]
    background: np.ndarray
    distractors: tuple[Distractor, ...]

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.background.shape[1], self.background.shape[0]


def random_color(rng: np.random.Generator, saturation: tuple[int, int], value: tuple[int, int],
                  hue: tuple[int, int] = (0, 180)) -> tuple[int, ...]:
    """A random BGR colour from OpenCV HSV ranges (hue 0-179, saturation and value 0-255; upper bounds open)."""
    hsv = np.array([[[rng.integers(*hue), rng.integers(*saturation), rng.integers(*value)]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Static textured background (H, W, 3) uint8: smooth colour field, muted furniture boxes, pixel noise."""
    field = cv2.resize(rng.uniform(40, 150, (5, 8, 3)).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)  # (H, W, 3)
    image = np.clip(field, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 16, width // 4)), int(rng.integers(height // 16, height // 3))
        cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), random_color(rng, (20, 120), (40, 150)), -1)
    noise = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_distractor(rng: np.random.Generator, num_frames: int, left: bool, width: int, height: int) -> Distractor:
    """A bright shape moving on a random (class-independent) Lissajous path in the distractor half."""
    x_lo, x_hi = (_DISTRACTOR_HALF if left else (1 - _DISTRACTOR_HALF[1], 1 - _DISTRACTOR_HALF[0]))
    x_lo, x_hi, y_lo, y_hi = x_lo * width, x_hi * width, 0.02 * height, 0.98 * height
    w, h = rng.uniform(0.06, 0.14, 2) * height
    t = np.arange(num_frames) / FPS
    half_room = np.array([(x_hi - x_lo - w) / 2, (y_hi - y_lo - h) / 2]) * rng.uniform(0.5, 1.0, 2)
    centre = np.array([(x_lo + x_hi) / 2, (y_lo + y_hi) / 2]) + half_room * np.sin(
        2 * np.pi * rng.uniform(0.2, 1.2, 2) * t[:, None] + rng.uniform(0, 2 * np.pi, 2))  # (T, 2)
    boxes = np.concatenate([centre - [w / 2, h / 2], centre + [w / 2, h / 2]], axis=1)  # (T, 4)
    return Distractor(boxes, random_color(rng, (180, 256), (200, 256)), bool(rng.random() < 0.5))


def _pt(uv: np.ndarray) -> tuple[int, int]:
    return int(round(uv[0] * (1 << _SHIFT))), int(round(uv[1] * (1 << _SHIFT)))


def render_frame(sample: SyntheticSample, t: int) -> np.ndarray:
    """Draw frame ``t`` of a sample: background, distractors, then every person far-to-near. (H, W, 3) uint8 BGR."""
    width, height = sample.frame_size
    scale = np.array([width / COLOR_FRAME_SIZE[0], height / COLOR_FRAME_SIZE[1]])
    pixel_scale = math.sqrt(scale[0] * scale[1])
    frame = sample.background.copy()
    for d in sample.distractors:
        x0, y0, x1, y1 = d.boxes[t]
        if d.ellipse:
            cv2.ellipse(frame, _pt(np.array([(x0 + x1) / 2, (y0 + y1) / 2])),
                        _pt(np.array([(x1 - x0) / 2, (y1 - y0) / 2])), 0, 0, 360, d.color, -1, cv2.LINE_AA, _SHIFT)
        else:
            cv2.rectangle(frame, _pt(np.array([x0, y0])), _pt(np.array([x1, y1])), d.color, -1, cv2.LINE_AA, _SHIFT)

    items = []  # (depth, kind, data): drawn far to near
    for xyz, style in zip(sample.xyz[:, t], sample.styles):
        uv = project_color(xyz) * scale  # (25, 2) video pixels
        px_per_m = COLOR_FOCAL * pixel_scale / xyz[:, 2]  # (25,)
        torso = [JOINT_INDEX[n] for n in ("ShoulderLeft", "ShoulderRight", "HipRight", "HipLeft")]
        items.append((xyz[torso, 2].mean() + 0.05, "poly", (uv[torso], style.shirt)))
        for a, b, width_m, part in _LIMBS:
            thickness = max(1, int(round(width_m * (px_per_m[a] + px_per_m[b]) / 2)))
            color = getattr(style, part)
            items.append(((xyz[a, 2] + xyz[b, 2]) / 2, "line", (uv[a], uv[b], color, thickness)))
        for name, radius_m in (("Head", HEAD_RADIUS_M), ("HandLeft", HAND_RADIUS_M), ("HandRight", HAND_RADIUS_M)):
            j = JOINT_INDEX[name]
            items.append((xyz[j, 2] - 0.01, "disc", (uv[j], radius_m * px_per_m[j], style.skin)))
    for _, kind, data in sorted(items, key=lambda item: -item[0]):
        if kind == "poly":
            points, color = data
            cv2.fillPoly(frame, [np.round(points * (1 << _SHIFT)).astype(np.int32)], color, cv2.LINE_AA, _SHIFT)
        elif kind == "line":
            a, b, color, thickness = data
            cv2.line(frame, _pt(a), _pt(b), color, thickness, cv2.LINE_AA, _SHIFT)
        else:
            centre, radius, color = data
            cv2.circle(frame, _pt(centre), int(round(radius * (1 << _SHIFT))), color, -1, cv2.LINE_AA, _SHIFT)
    return frame
