"""The synthetic performers' 3D joints: the template skeleton, the class and idle hand motions, the simplified
Kinect v2 camera model and the placement of a group of people inside its half of the frame (see
``pipeline/synthetic/dataset.py`` for the design)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.datasets.ntu import COLOR_FRAME_SIZE, NTU_JOINTS
from pipeline.synthetic.plan import FPS, MOTION_PATTERNS, SamplePlan, SyntheticConfig, active_hand, random_stream

COLOR_FOCAL = 1060.0
DEPTH_FOCAL = 366.0
DEPTH_CENTRE = (256.0, 212.0)
CAMERA_YAW_DEG = {1: 0.0, 2: 45.0, 3: -45.0}

JOINT_INDEX = {name: i for i, name in enumerate(NTU_JOINTS)}
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
    TEMPLATE_LEFT_ACTIVE[JOINT_INDEX[_part + "Left"]] = TEMPLATE[JOINT_INDEX[_part + "Right"]] * _MIRROR_X
    TEMPLATE_LEFT_ACTIVE[JOINT_INDEX[_part + "Right"]] = TEMPLATE[JOINT_INDEX[_part + "Left"]] * _MIRROR_X

# Drawn sizes in metres (turned into pixels by the pinhole scale of each part).
LIMB_WIDTH_M = 0.08
FINGER_WIDTH_M = 0.03
HEAD_RADIUS_M = 0.10
HAND_RADIUS_M = 0.05
DRAW_MARGIN_M = max(HEAD_RADIUS_M, LIMB_WIDTH_M / 2, HAND_RADIUS_M)
"""How far drawn pixels reach beyond the joints."""
_PERSON_HALF = (0.02, 0.48)  # the person's box stays inside this x-fraction of its half of the frame


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


def _hand_joints(hand: str) -> dict[str, float]:
    """``_HAND_WEIGHTS`` for the given hand."""
    return {name.replace("Right", hand.capitalize()): w for name, w in _HAND_WEIGHTS.items()}


def body_motion(plan: SamplePlan, config: SyntheticConfig, person: int) -> np.ndarray:
    """Body-frame joints (T, 25, 3) of one person of a take (the same for the take's three cameras)."""
    rng = random_stream(config, "body", plan.take, person)
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
        joints[:, JOINT_INDEX[part + other.capitalize()], :2] += idle
    # the class signal: the performer's active hand (a second person keeps it still)
    frequency, phase0 = rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)
    amplitude = config.hand_amplitude_m * rng.uniform(0.8, 1.2)
    if person == 0:
        offset = amplitude * hand_pattern(MOTION_PATTERNS[plan.label], 2 * np.pi * frequency * t + phase0)  # (T, 2)
        for name, weight in _hand_joints(hand).items():
            joints[:, JOINT_INDEX[name], :2] += weight * offset
        if config.passive_hand_amplitude_m > 0:
            offset = config.passive_hand_amplitude_m * _passive_motion(plan.take, config, t)  # (T, 2)
            for name, weight in _hand_joints(other).items():
                joints[:, JOINT_INDEX[name], :2] += weight * offset
    return joints


def _passive_motion(take: int, config: SyntheticConfig, t: np.ndarray) -> np.ndarray:
    """Unit-amplitude, class-independent motion (T, 2) of the hanging hand: a random moving pattern of the family
    (any of ``MOTION_PATTERNS`` but ``still``) with its own frequency and phase."""
    rng = random_stream(config, "hand", take, 1)
    pattern = MOTION_PATTERNS[int(rng.integers(1, len(MOTION_PATTERNS)))]
    return hand_pattern(pattern, 2 * np.pi * rng.uniform(0.5, 1.0) * t + rng.uniform(0, 2 * np.pi))


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _color_box(xyz: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) colour-frame box of points (..., 3), grown by how far drawn pixels reach."""
    uv = project_color(xyz).reshape(-1, 2)
    margin = DRAW_MARGIN_M * COLOR_FOCAL / xyz[..., 2].min() + 2.0
    return np.concatenate([uv.min(0) - margin, uv.max(0) + margin])


def place(group: np.ndarray, rng: np.random.Generator, left: bool, config: SyntheticConfig) -> np.ndarray:
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
