"""A deterministic synthetic NTU RGB+D dataset, written in the genuine file formats and folder layout.

It lets the whole pipeline (manifest -> decode -> crop by skeleton boxes -> I3D -> poses -> head training) run and be
tested without the real data. The layout is the official release's::

    <root>/nturgb+d_rgb/SsssCcccPpppRrrrAaaa_rgb.avi          MPEG-4 Part 2 (FourCC DIVX) AVI, 30 fps
    <root>/nturgb+d_skeletons/SsssCcccPpppRrrrAaaa.skeleton   NTU text format, CRLF (written by pipeline.ntu)
    <root>/synthetic_config.json                              the SyntheticConfig that made it (provenance)

Content. Class ``c`` is NTU action ``A{c+1:03d}`` (so the manifest label is ``c``; the NTU action *names* are
meaningless here). Classes differ ONLY in a small motion of the right hand (WristRight, HandRight, HandTipRight,
ThumbRight, and the elbow a little) in the body's frontal plane, with a class-specific pattern from
``MOTION_PATTERNS`` (still / up-down / left-right / circle / ...) of amplitude ``hand_amplitude_m`` (a few % of the
frame). Everything else is drawn independently of the class: body size, clothes, class-independent sway and joint
noise, the idle left hand, frequency and phase of the hand motion, placement in the frame, background texture and
bright moving distractor shapes. The person (a filled stick figure: thick limbs, torso quad, head and hand discs,
drawn far-to-near) stays inside one half of the frame and the distractors move inside the other half, so a model
that looks at the whole frame is distracted while crops from the skeleton box and the poses carry the signal.

Fidelity options (off by default; ``make fidelity`` turns them on). ``active_hand="random"`` lets each take use
the right or the left hand for the class motion; the active arm is the one held forward (the template's right
arm, mirrored for a left-handed take), the other hangs. ``passive_hand_amplitude_m`` makes the hanging hand move
too, with a class-independent pattern drawn from the same family: global pooling of the crop's features then
sees two hand motions and cannot tell which is the class, while the pose says which hand is raised, so attention
guided by the pose can pick the right place. ``synthetic_truth.csv`` records each sample's active hand joint.

Takes and views. As in NTU, one *take* (setup, performer, replication, action) is filmed by the three cameras
C001-C003: the same 3D motion, seen with a body yaw of 0, +45 and -45 degrees (our simplified convention; plus a
random +-10 degree jitter), each view with its own placement, background, distractors and Kinect body ids.
Sample ``i`` is camera ``i % 3 + 1`` of take ``i // 3``; take ``j`` has class ``j % num_classes``. Its subject and
setup follow a design that gives every class train and test samples in NTU-60 ``cs``/``cv`` and NTU-120
``cs1``/``cs2`` once ``n >= 6 * num_classes`` (occurrence ``k = j // num_classes`` of a class: even ``k`` takes a
cross-subject training performer, odd ``k`` a test one; the setup is even for ``k % 4`` in {0, 3}, odd otherwise;
with ``ntu120=True`` the occurrences with ``k % 4`` in {2, 3} use setups S018-S032 and performers P041-P106).

Camera model (a simplified Kinect v2; documented here, not measured): camera space is metres with +y up and +z
away from the camera; the colour and depth cameras share one centre, and both are pinholes::

    colorX = 960 + 1060 * x / z    colorY = 540 - 1060 * y / z     (1920x1080 colour frame, always)
    depthX = 256 +  366 * x / z    depthY = 212 -  366 * y / z     (512x424 depth frame)

Like NTU's mirrored images, the performer's right side (+x in the body frame) appears on the image's right.
colorX/colorY are always written in 1920x1080 space; a video of another size is drawn at
``(colorX * W / 1920, colorY * H / 1080)``, which is the rescaling the crop stage applies.

CLI::

    python -m pipeline.synthetic --root DIR [--n N] [--seed S] [--frame-size 640x360] [--num-classes C] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.datasets import get_dataset
from pipeline.ntu import (
    COLOR_FRAME_SIZE, NTU120_CS_TRAIN_SUBJECTS, NTU_JOINTS, SAMPLE_ID_RE, BodyRecord,
    format_sample_id, write_skeleton,
)

logger = logging.getLogger(__name__)

RGB_DIR = "nturgb+d_rgb"
SKELETON_DIR = "nturgb+d_skeletons"
CONFIG_FILE = "synthetic_config.json"
FPS = 30.0
FOURCC = "DIVX"
"""MPEG-4 Part 2, as in the official ``*_rgb.avi`` (FFmpeg/OpenCV report the stream as ``FMP4``/``mpeg4``)."""

COLOR_FOCAL = 1060.0
DEPTH_FOCAL = 366.0
DEPTH_CENTRE = (256.0, 212.0)
CAMERA_YAW_DEG = {1: 0.0, 2: 45.0, 3: -45.0}
CAMERAS = (1, 2, 3)

MOTION_PATTERNS: tuple[str, ...] = (
    "still", "up-down", "left-right", "circle", "diagonal", "anti-diagonal", "figure-eight", "fast up-down",
)
"""Right-hand motion of class c is ``MOTION_PATTERNS[c]``."""

_J = {name: i for i, name in enumerate(NTU_JOINTS)}
# A standing performer facing the camera, body frame (metres): origin SpineBase, +x the performer's right,
# +y up, +z away from the camera. The right forearm points forward so the moving hand is seen against the
# background; the left arm hangs.
_TEMPLATE = {
    "SpineBase": (0.00, 0.00, 0.00), "SpineMid": (0.00, 0.26, 0.01), "Neck": (0.00, 0.52, 0.01),
    "Head": (0.00, 0.64, 0.00), "SpineShoulder": (0.00, 0.45, 0.02),
    "ShoulderLeft": (-0.18, 0.43, 0.02), "ElbowLeft": (-0.22, 0.18, 0.02), "WristLeft": (-0.25, -0.06, 0.00),
    "HandLeft": (-0.26, -0.13, -0.01), "HandTipLeft": (-0.26, -0.20, -0.02), "ThumbLeft": (-0.22, -0.11, -0.04),
    "ShoulderRight": (0.18, 0.43, 0.02), "ElbowRight": (0.22, 0.20, -0.05), "WristRight": (0.30, 0.02, -0.20),
    "HandRight": (0.32, -0.03, -0.24), "HandTipRight": (0.34, -0.09, -0.27), "ThumbRight": (0.28, -0.01, -0.26),
    "HipLeft": (-0.09, -0.02, 0.00), "KneeLeft": (-0.10, -0.42, 0.00), "AnkleLeft": (-0.10, -0.80, 0.03),
    "FootLeft": (-0.10, -0.85, -0.07),
    "HipRight": (0.09, -0.02, 0.00), "KneeRight": (0.10, -0.42, 0.00), "AnkleRight": (0.10, -0.80, 0.03),
    "FootRight": (0.10, -0.85, -0.07),
}
TEMPLATE = np.array([_TEMPLATE[name] for name in NTU_JOINTS], dtype=np.float64)  # (25, 3)
# How much of the hand offset each right-arm joint follows.
_HAND_WEIGHTS = {"ElbowRight": 0.3, "WristRight": 0.9, "HandRight": 1.0, "HandTipRight": 1.0, "ThumbRight": 1.0}
_ARM_PARTS = ("Shoulder", "Elbow", "Wrist", "Hand", "HandTip", "Thumb")
_MIRROR_X = np.array([-1.0, 1.0, 1.0])
TEMPLATE_LEFT_ACTIVE = TEMPLATE.copy()
"""TEMPLATE with the arms swapped (mirrored in x): the left forearm points forward, the right arm hangs."""
for _part in _ARM_PARTS:
    TEMPLATE_LEFT_ACTIVE[_J[_part + "Left"]] = TEMPLATE[_J[_part + "Right"]] * _MIRROR_X
    TEMPLATE_LEFT_ACTIVE[_J[_part + "Right"]] = TEMPLATE[_J[_part + "Left"]] * _MIRROR_X
HANDS: tuple[str, ...] = ("right", "left")
TRUTH_FILE = "synthetic_truth.csv"
_LEAF_JOINTS = ("Head", "FootLeft", "FootRight", "HandTipLeft", "ThumbLeft", "HandTipRight", "ThumbRight")

# Drawn sizes in metres (turned into pixels by the pinhole scale of each part).
LIMB_WIDTH_M = 0.08
FINGER_WIDTH_M = 0.03
HEAD_RADIUS_M = 0.10
HAND_RADIUS_M = 0.05
DRAW_MARGIN_M = max(HEAD_RADIUS_M, LIMB_WIDTH_M / 2, HAND_RADIUS_M)
"""How far drawn pixels reach beyond the joints."""


def _limb(a: int, b: int) -> tuple[int, int, float, str]:
    """(joint a, joint b, width in metres, BodyStyle colour field) of one NTU bone."""
    names = NTU_JOINTS[a] + NTU_JOINTS[b]
    if "Tip" in names or "Thumb" in names:
        return a, b, FINGER_WIDTH_M, "skin"
    return a, b, LIMB_WIDTH_M, "trousers" if "Knee" in names or "Ankle" in names else "shirt"


_LIMBS = tuple(_limb(a, b) for a, b in get_dataset("ntu60").edges)
_SHIFT = 4  # cv2 drawing sub-pixel bits
_PERSON_HALF = (0.02, 0.48)  # the person's box stays inside this x-fraction of its half of the frame
_DISTRACTOR_HALF = (0.52, 0.98)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that changes the generated bytes.

    Attributes:
        n: number of samples (videos + skeleton files).
        seed: master seed; the same config gives byte-identical skeleton files and identical decoded frames.
        num_classes: classes A001..A{num_classes}; at most ``len(MOTION_PATTERNS)``.
        frame_size: (width, height) of the videos, both even; skeleton colour coordinates stay 1920x1080.
        min_frames: shortest take (frames at 30 fps).
        max_frames: longest take.
        two_person_fraction: fraction of takes with a second, still person standing beside the performer.
        zero_body_frames: frames with no body at the start of every skeleton file (the video still shows the
            person, as when the Kinect has not yet tracked them).
        ntu120: also use setups S018-S032 and performers P041-P106 (NTU-120 only samples).
        hand_amplitude_m: amplitude of the class-specific right-hand motion (metres).
        num_distractors: bright moving shapes in the half of the frame away from the person.
        distance_m: (nearest, farthest) distance of a single performer from the camera (metres).
        cameras_per_take: views filmed of each take: 3 (C001-C003, as NTU) or fewer, taken in turn so that every
            camera still appears; fewer views per take give more independent takes for the same ``n``.
        active_hand: ``right`` (every take) or ``random`` (right or left per take) performs the class motion.
        passive_hand_amplitude_m: amplitude of a class-independent motion of the other (hanging) hand; 0 keeps
            it idle.
    """

    n: int = 48
    seed: int = 0
    num_classes: int = 4
    frame_size: tuple[int, int] = (640, 360)
    min_frames: int = 40
    max_frames: int = 120
    two_person_fraction: float = 0.0
    zero_body_frames: int = 0
    ntu120: bool = False
    hand_amplitude_m: float = 0.10
    num_distractors: int = 1
    distance_m: tuple[float, float] = (2.6, 3.8)
    cameras_per_take: int = len(CAMERAS)
    active_hand: str = "right"
    passive_hand_amplitude_m: float = 0.0

    def __post_init__(self) -> None:
        width, height = self.frame_size
        checks = [
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (1 <= self.num_classes <= len(MOTION_PATTERNS),
             f"num_classes must be in 1..{len(MOTION_PATTERNS)} (one per motion pattern), got {self.num_classes}"),
            (width >= 64 and height >= 64 and width % 2 == 0 and height % 2 == 0,
             f"frame_size must be two even sizes >= 64 (MPEG-4 needs even sizes), got {self.frame_size}"),
            (1 <= self.min_frames <= self.max_frames,
             f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"),
            (0.0 <= self.two_person_fraction <= 1.0,
             f"two_person_fraction must be in [0, 1], got {self.two_person_fraction}"),
            (0 <= self.zero_body_frames < self.min_frames,
             f"zero_body_frames must be in [0, min_frames), got {self.zero_body_frames}"),
            (0.0 <= self.hand_amplitude_m <= 0.3, f"hand_amplitude_m must be in [0, 0.3], got {self.hand_amplitude_m}"),
            (self.num_distractors >= 0, f"num_distractors must be >= 0, got {self.num_distractors}"),
            (1 <= self.cameras_per_take <= len(CAMERAS),
             f"cameras_per_take must be in 1..{len(CAMERAS)}, got {self.cameras_per_take}"),
            (self.active_hand in ("right", "random"),
             f"active_hand must be 'right' or 'random', got {self.active_hand!r}"),
            (0.0 <= self.passive_hand_amplitude_m <= 0.3,
             f"passive_hand_amplitude_m must be in [0, 0.3], got {self.passive_hand_amplitude_m}"),
            (1.5 <= self.distance_m[0] <= self.distance_m[1],
             f"distance_m must be (near, far) with 1.5 <= near <= far, got {self.distance_m}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class SamplePlan:
    """Who, where and what one sample shows (everything drawn before any pixel or joint)."""

    sample_id: str
    take: int
    camera: int
    label: int
    num_frames: int
    two_person: bool


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


def project_color(xyz: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-space points (..., 3) to 1920x1080 colour pixels (..., 2)."""
    cx, cy = COLOR_FRAME_SIZE[0] / 2, COLOR_FRAME_SIZE[1] / 2
    return np.stack([cx + COLOR_FOCAL * xyz[..., 0] / xyz[..., 2], cy - COLOR_FOCAL * xyz[..., 1] / xyz[..., 2]], -1)


def project_depth(xyz: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-space points (..., 3) to 512x424 depth pixels (..., 2)."""
    cx, cy = DEPTH_CENTRE
    return np.stack([cx + DEPTH_FOCAL * xyz[..., 0] / xyz[..., 2], cy - DEPTH_FOCAL * xyz[..., 1] / xyz[..., 2]], -1)


def hand_pattern(name: str, phase: np.ndarray) -> np.ndarray:
    """Unit-amplitude hand offset (T, 2) in the body's frontal plane (x right, y up) for a motion pattern."""
    s, zero = np.sin(phase), np.zeros_like(phase)
    diag = s / math.sqrt(2.0)
    table = {
        "still": (zero, zero),
        "up-down": (zero, s),
        "left-right": (s, zero),
        "circle": (np.cos(phase), s),
        "diagonal": (diag, diag),
        "anti-diagonal": (diag, -diag),
        "figure-eight": (s, np.sin(2.0 * phase) / 2.0),
        "fast up-down": (zero, np.sin(2.0 * phase)),
    }
    if name not in table:
        raise ValueError(f"unknown motion pattern {name!r}; choose one of {MOTION_PATTERNS}")
    return np.stack(table[name], axis=-1)  # (T, 2)


_STREAMS = ("plan", "take", "style", "body", "view", "hand")


def _rng(config: SyntheticConfig, stream: str, *keys: int) -> np.random.Generator:
    """An independent random stream per purpose and per take/person/view, so that draws never shift each other."""
    return np.random.default_rng([config.seed, _STREAMS.index(stream), *keys])


def plan_samples(config: SyntheticConfig) -> list[SamplePlan]:
    """Assign ids, labels, lengths and views to the ``config.n`` samples (see the module docstring's design).

    Raises:
        ValueError: when ``n`` is so large that a class runs out of distinct (setup, performer, replication).
    """
    rng = _rng(config, "plan")
    plans: list[SamplePlan] = []
    used: set[tuple[int, int, int, int]] = set()
    per_take = config.cameras_per_take
    for take in range(math.ceil(config.n / per_take)):
        label = take % config.num_classes
        k = take // config.num_classes
        train_subject = k % 2 == 0
        even_setup = k % 4 in (0, 3)
        ntu120_only = config.ntu120 and k % 4 in (2, 3)
        setups = [s for s in (range(18, 33) if ntu120_only else range(1, 18)) if (s % 2 == 0) == even_setup]
        subjects = [p for p in (range(41, 107) if ntu120_only else range(1, 41))
                    if (p in NTU120_CS_TRAIN_SUBJECTS) == train_subject]
        for _ in range(10_000):
            key = (int(rng.choice(setups)), int(rng.choice(subjects)), int(rng.integers(1, 3)), label + 1)
            if key not in used:
                used.add(key)
                break
        else:
            raise ValueError(f"n={config.n} is too large: no unused sample id left for class {label} "
                             "(use more classes or ntu120=True)")
        take_rng = _rng(config, "take", take)
        num_frames = int(take_rng.integers(config.min_frames, config.max_frames + 1))
        two_person = bool(take_rng.random() < config.two_person_fraction)
        setup, subject, replication, action = key
        cameras = CAMERAS if per_take == len(CAMERAS) else tuple(
            CAMERAS[(take + i) % len(CAMERAS)] for i in range(per_take))
        for camera in cameras[: config.n - per_take * take]:
            sample_id = format_sample_id(setup, camera, subject, replication, action)
            plans.append(SamplePlan(sample_id, take, camera, label, num_frames, two_person))
    return plans


def _random_color(rng: np.random.Generator, saturation: tuple[int, int], value: tuple[int, int],
                  hue: tuple[int, int] = (0, 180)) -> tuple[int, ...]:
    """A random BGR colour from OpenCV HSV ranges (hue 0-179, saturation and value 0-255; upper bounds open)."""
    hsv = np.array([[[rng.integers(*hue), rng.integers(*saturation), rng.integers(*value)]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def active_hand(take: int, config: SyntheticConfig) -> str:
    """``right`` or ``left``: the hand that performs take ``take``'s class motion."""
    if config.active_hand == "right":
        return "right"
    return HANDS[int(_rng(config, "hand", take).integers(0, 2))]


def _hand_joints(hand: str) -> dict[str, float]:
    """``_HAND_WEIGHTS`` for the given hand."""
    return {name.replace("Right", hand.capitalize()): w for name, w in _HAND_WEIGHTS.items()}


def _body_motion(plan: SamplePlan, config: SyntheticConfig, person: int) -> np.ndarray:
    """Body-frame joints (T, 25, 3) of one person of a take (the same for the take's three cameras)."""
    rng = _rng(config, "body", plan.take, person)
    t = np.arange(plan.num_frames) / FPS  # (T,)
    hand = active_hand(plan.take, config) if person == 0 else "right"
    other = "left" if hand == "right" else "right"
    template = TEMPLATE if hand == "right" else TEMPLATE_LEFT_ACTIVE
    joints = np.repeat(template[None] * rng.uniform(0.92, 1.08), plan.num_frames, axis=0)  # (T, 25, 3)
    # class-independent sway of the whole body and an idle left hand
    sway = rng.uniform(0.0, 0.03, 3) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4, 3) * t[:, None]
                                               + rng.uniform(0, 2 * np.pi, 3))  # (T, 3)
    joints += sway[:, None, :]
    idle = rng.uniform(0.0, 0.03, 2) * np.sin(2 * np.pi * rng.uniform(0.1, 0.5, 2) * t[:, None]
                                               + rng.uniform(0, 2 * np.pi, 2))  # (T, 2)
    for part in ("Wrist", "Hand", "HandTip", "Thumb"):
        joints[:, _J[part + other.capitalize()], :2] += idle
    # the class signal: the performer's active hand (a second person keeps it still)
    frequency, phase0 = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
    amplitude = config.hand_amplitude_m * rng.uniform(0.8, 1.2)
    if person == 0:
        offset = amplitude * hand_pattern(MOTION_PATTERNS[plan.label], 2 * np.pi * frequency * t + phase0)  # (T, 2)
        for name, weight in _hand_joints(hand).items():
            joints[:, _J[name], :2] += weight * offset
        if config.passive_hand_amplitude_m > 0:
            offset = config.passive_hand_amplitude_m * _passive_motion(plan.take, config, t)  # (T, 2)
            for name, weight in _hand_joints(other).items():
                joints[:, _J[name], :2] += weight * offset
    return joints


def _passive_motion(take: int, config: SyntheticConfig, t: np.ndarray) -> np.ndarray:
    """Unit-amplitude, class-independent motion (T, 2) of the hanging hand: a random moving pattern of the family
    (any of ``MOTION_PATTERNS`` but ``still``) with its own frequency and phase."""
    rng = _rng(config, "hand", take, 1)
    pattern = MOTION_PATTERNS[int(rng.integers(1, len(MOTION_PATTERNS)))]
    return hand_pattern(pattern, 2 * np.pi * rng.uniform(0.5, 1.0) * t + rng.uniform(0, 2 * np.pi))


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _color_box(xyz: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) colour-frame box of points (..., 3), grown by how far drawn pixels reach."""
    uv = project_color(xyz).reshape(-1, 2)
    margin = DRAW_MARGIN_M * COLOR_FOCAL / xyz[..., 2].min() + 2.0
    return np.concatenate([uv.min(0) - margin, uv.max(0) + margin])


def _place(group: np.ndarray, rng: np.random.Generator, left: bool, config: SyntheticConfig) -> np.ndarray:
    """Translate camera-oriented joints (M, T, 25, 3) so their drawn box lies inside the person's half.

    The person's half is the left (or right) ``_PERSON_HALF`` of the frame width and 2-98 % of its height.

    Raises:
        RuntimeError: when the group does not fit at any distance up to 8 m (a frame too narrow).
    """
    width, height = COLOR_FRAME_SIZE
    near, far = config.distance_m
    if group.shape[0] > 1:
        near, far = max(near, 3.3), max(far, 4.0)
    z = rng.uniform(near, far)
    x_lo, x_hi = (_PERSON_HALF if left else (1 - _PERSON_HALF[1], 1 - _PERSON_HALF[0]))
    fraction_u, fraction_v = rng.random(), rng.random()
    while z < 8.0:
        placed = group + np.array([0.0, 0.0, z])
        for _ in range(6):  # pinhole shift is not exactly uniform across depths: converge in a few steps
            x0, y0, x1, y1 = _color_box(placed)
            room_u = (x_hi * width - x_lo * width) - (x1 - x0)
            room_v = 0.96 * height - (y1 - y0)
            if room_u < 1.0 or room_v < 1.0:
                break
            du = x_lo * width + fraction_u * room_u - x0
            dv = 0.02 * height + fraction_v * room_v - y0
            placed = placed + np.array([du * z / COLOR_FOCAL, -dv * z / COLOR_FOCAL, 0.0])
        x0, y0, x1, y1 = _color_box(placed)
        if x0 >= x_lo * width and x1 <= x_hi * width and y0 >= 0.02 * height and y1 <= 0.98 * height:
            return placed
        z *= 1.1
    raise RuntimeError("the synthetic person does not fit in its half of the frame")


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Static textured background (H, W, 3) uint8: smooth colour field, muted furniture boxes, pixel noise."""
    field = cv2.resize(rng.uniform(40, 150, (5, 8, 3)).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)  # (H, W, 3)
    image = np.clip(field, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 16, width // 4)), int(rng.integers(height // 16, height // 3))
        cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), _random_color(rng, (20, 120), (40, 150)), -1)
    noise = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _distractor(rng: np.random.Generator, num_frames: int, left: bool, width: int, height: int) -> Distractor:
    """A bright shape moving on a random (class-independent) Lissajous path in the distractor half."""
    x_lo, x_hi = (_DISTRACTOR_HALF if left else (1 - _DISTRACTOR_HALF[1], 1 - _DISTRACTOR_HALF[0]))
    x_lo, x_hi, y_lo, y_hi = x_lo * width, x_hi * width, 0.02 * height, 0.98 * height
    w, h = rng.uniform(0.06, 0.14, 2) * height
    t = np.arange(num_frames) / FPS
    half_room = np.array([(x_hi - x_lo - w) / 2, (y_hi - y_lo - h) / 2]) * rng.uniform(0.5, 1.0, 2)
    centre = np.array([(x_lo + x_hi) / 2, (y_lo + y_hi) / 2]) + half_room * np.sin(
        2 * np.pi * rng.uniform(0.2, 1.2, 2) * t[:, None] + rng.uniform(0, 2 * np.pi, 2))  # (T, 2)
    boxes = np.concatenate([centre - [w / 2, h / 2], centre + [w / 2, h / 2]], axis=1)  # (T, 4)
    return Distractor(boxes, _random_color(rng, (180, 256), (200, 256)), bool(rng.random() < 0.5))


def _body_records(xyz: np.ndarray, body_id: int, yaw: float, rng: np.random.Generator) -> list[BodyRecord]:
    """One BodyRecord per frame for a body's camera-space joints (T, 25, 3)."""
    num_frames = xyz.shape[0]
    joints = np.zeros((num_frames, 25, 12))
    joints[..., 0:3] = xyz
    joints[..., 3:5] = project_depth(xyz)
    joints[..., 5:7] = project_color(xyz)
    joints[..., 7] = math.cos(yaw / 2)  # orientation quaternion (w, x, y, z): the body's yaw; leaves have none
    joints[..., 9] = math.sin(yaw / 2)
    joints[:, [_J[name] for name in _LEAF_JOINTS], 7:11] = 0.0
    joints[..., 11] = np.where(rng.random((num_frames, 25)) < 0.02, 1, 2)  # 2 tracked, 1 inferred
    lean = np.clip(rng.normal(0.0, 0.05, 2) + rng.normal(0.0, 0.01, (num_frames, 2)), -1, 1)  # (T, 2)
    return [BodyRecord(body_id, joints[t], (0, 1, 1, 1, 1, 0, float(lean[t, 0]), float(lean[t, 1]), 2))
            for t in range(num_frames)]


def build_sample(plan: SamplePlan, config: SyntheticConfig) -> SyntheticSample:
    """Draw one sample's skeleton frames, scene and styles from its plan (deterministic in the seed)."""
    take_rng = _rng(config, "style", plan.take)
    num_people = 2 if plan.two_person else 1
    styles = tuple(BodyStyle(_random_color(take_rng, (80, 256), (60, 230)),
                             _random_color(take_rng, (40, 200), (40, 160)),
                             _random_color(take_rng, (60, 140), (150, 230), hue=(5, 20))) for _ in range(num_people))
    side = take_rng.choice([-1.0, 1.0])
    group = np.stack([_body_motion(plan, config, p) for p in range(num_people)])  # (M, T, 25, 3)
    if num_people == 2:
        group[1] += np.array([side * take_rng.uniform(0.8, 1.0), 0.0, take_rng.uniform(-0.2, 0.2)])

    rng = _rng(config, "view", plan.take, plan.camera)
    yaw = math.radians(CAMERA_YAW_DEG[plan.camera] + rng.uniform(-10.0, 10.0))
    group = group @ _yaw_matrix(yaw).T  # (M, T, 25, 3)
    left = bool(rng.random() < 0.5)
    group = _place(group, rng, left, config)
    group = group + rng.normal(0.0, 0.003, group.shape)  # Kinect-like joint noise
    width, height = config.frame_size
    background = _background(rng, width, height)
    distractors = tuple(_distractor(rng, plan.num_frames, left, width, height)
                        for _ in range(config.num_distractors))
    first_id = 2**56 + int(rng.integers(1_000, 100_000))
    per_body = [_body_records(group[m], first_id + 7 * m, yaw, rng) for m in range(num_people)]
    frames = [[] if t < config.zero_body_frames else [records[t] for records in per_body]
              for t in range(plan.num_frames)]
    return SyntheticSample(plan, frames, group, styles, background, distractors)


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
        torso = [_J[n] for n in ("ShoulderLeft", "ShoulderRight", "HipRight", "HipLeft")]
        items.append((xyz[torso, 2].mean() + 0.05, "poly", (uv[torso], style.shirt)))
        for a, b, width_m, part in _LIMBS:
            thickness = max(1, int(round(width_m * (px_per_m[a] + px_per_m[b]) / 2)))
            color = getattr(style, part)
            items.append(((xyz[a, 2] + xyz[b, 2]) / 2, "line", (uv[a], uv[b], color, thickness)))
        for name, radius_m in (("Head", HEAD_RADIUS_M), ("HandLeft", HAND_RADIUS_M), ("HandRight", HAND_RADIUS_M)):
            j = _J[name]
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


def sample_paths(root: str | Path, sample_id: str) -> tuple[Path, Path]:
    """(video, skeleton) paths of a sample in the official folder layout."""
    root = Path(root)
    return root / RGB_DIR / f"{sample_id}_rgb.avi", root / SKELETON_DIR / f"{sample_id}.skeleton"


def write_sample(sample: SyntheticSample, root: str | Path) -> None:
    """Write a sample's video and skeleton file; each appears only when complete (written aside, then renamed).

    The files being written carry no sample id in their names, so a scan of a half-written folder ignores them.

    Raises:
        RuntimeError: when OpenCV cannot open an MPEG-4 writer.
    """
    video_path, skeleton_path = sample_paths(root, sample.plan.sample_id)
    partial_video = video_path.with_name(f".writing_{os.getpid()}.avi")
    writer = cv2.VideoWriter(str(partial_video), cv2.VideoWriter_fourcc(*FOURCC), FPS, sample.frame_size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {FOURCC} AVI video to {partial_video} (no MPEG-4 encoder?)")
    try:
        for t in range(len(sample.frames)):
            writer.write(render_frame(sample, t))
    finally:
        writer.release()
    os.replace(partial_video, video_path)
    partial_skeleton = skeleton_path.with_name(f".writing_{os.getpid()}.skeleton")
    write_skeleton(partial_skeleton, sample.frames)
    os.replace(partial_skeleton, skeleton_path)


def generate(root: str | Path, config: SyntheticConfig, overwrite: bool = False) -> list[str]:
    """Write the synthetic dataset under ``root`` and return the sample ids written, in sample order.

    Args:
        root: dataset root; ``nturgb+d_rgb/`` and ``nturgb+d_skeletons/`` are created in it.
        config: what to generate.
        overwrite: replace NTU files already in those folders (they are deleted first) instead of refusing.

    Raises:
        FileExistsError: the folders already hold NTU sample files and ``overwrite`` is False.
    """
    root = Path(root)
    folders = [root / RGB_DIR, root / SKELETON_DIR]
    existing = [p for folder in folders if folder.is_dir() for p in folder.iterdir() if SAMPLE_ID_RE.match(p.name)]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {len(existing)} NTU sample files (e.g. {existing[0].name}); "
                              "use an empty folder or overwrite=True (--overwrite)")
    for path in existing:
        path.unlink()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plans = plan_samples(config)
    for plan in plans:
        write_sample(build_sample(plan, config), root)
    truth = ["sample_id,label,active_hand,active_joint"]
    for plan in plans:
        hand = active_hand(plan.take, config)
        truth.append(f"{plan.sample_id},{plan.label},{hand},{_J['Hand' + hand.capitalize()]}")
    (root / TRUTH_FILE).write_text("\n".join(truth) + "\n", encoding="utf-8")
    (root / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d synthetic NTU samples to %s in %.1f s", len(plans), root, time.perf_counter() - start)
    return [plan.sample_id for plan in plans]


def _frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must look like 640x360, got {text!r}") from None
    return width, height


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.synthetic --root DIR [--n N] [--seed S] [--frame-size WxH] ...``."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m pipeline.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset root to write into")
    parser.add_argument("--n", type=int, default=defaults.n, help="number of samples")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-classes", type=int, default=defaults.num_classes)
    parser.add_argument("--frame-size", type=_frame_size, default=defaults.frame_size, help="WxH, e.g. 640x360")
    parser.add_argument("--min-frames", type=int, default=defaults.min_frames)
    parser.add_argument("--max-frames", type=int, default=defaults.max_frames)
    parser.add_argument("--two-person-fraction", type=float, default=defaults.two_person_fraction)
    parser.add_argument("--zero-body-frames", type=int, default=defaults.zero_body_frames)
    parser.add_argument("--num-distractors", type=int, default=defaults.num_distractors)
    parser.add_argument("--ntu120", action="store_true", help="also write NTU-120-only setups S018-S032")
    parser.add_argument("--hand-amplitude", type=float, default=defaults.hand_amplitude_m,
                        help="amplitude of the class-specific hand motion, metres")
    parser.add_argument("--cameras-per-take", type=int, default=defaults.cameras_per_take,
                        help="views per take (3 as NTU; fewer gives more independent takes)")
    parser.add_argument("--active-hand", choices=("right", "random"), default=defaults.active_hand,
                        help="hand that performs the class motion (random: right or left per take)")
    parser.add_argument("--passive-hand-amplitude", type=float, default=defaults.passive_hand_amplitude_m,
                        help="amplitude of a class-independent motion of the other hand, metres (0: idle)")
    parser.add_argument("--overwrite", action="store_true", help="replace NTU files already under --root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = SyntheticConfig(
            n=args.n, seed=args.seed, num_classes=args.num_classes, frame_size=args.frame_size,
            min_frames=args.min_frames, max_frames=args.max_frames, two_person_fraction=args.two_person_fraction,
            zero_body_frames=args.zero_body_frames, ntu120=args.ntu120, num_distractors=args.num_distractors,
            hand_amplitude_m=args.hand_amplitude, cameras_per_take=args.cameras_per_take,
            active_hand=args.active_hand, passive_hand_amplitude_m=args.passive_hand_amplitude)
        ids = generate(args.root, config, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} samples ({config.num_classes} classes) to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
