"""A deterministic synthetic NTU RGB+D dataset, written in the genuine file formats and folder layout.

It lets the whole pipeline (manifest -> decode -> crop by skeleton boxes -> I3D -> poses -> head training) run and be
tested without the real data. The layout is the official release's::

    <root>/nturgb+d_rgb/SsssCcccPpppRrrrAaaa_rgb.avi          MPEG-4 Part 2 (FourCC DIVX) AVI, 30 fps
    <root>/nturgb+d_skeletons/SsssCcccPpppRrrrAaaa.skeleton   NTU text format, CRLF (written by pipeline.datasets.ntu)
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

    python -m pipeline.synthetic.dataset --root DIR [--n N] [--seed S] [--frame-size 640x360] [--num-classes C] ...
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
from pathlib import Path

import cv2
import numpy as np

from pipeline.datasets.ntu import SAMPLE_ID_RE, BodyRecord, write_skeleton
from pipeline.synthetic.motion import (
    CAMERA_YAW_DEG,
    JOINT_INDEX,
    body_motion,
    place,
    project_color,
    project_depth,
    yaw_matrix,
)
from pipeline.synthetic.plan import FPS, SamplePlan, SyntheticConfig, active_hand, plan_samples, random_stream
from pipeline.synthetic.render import (
    BodyStyle,
    SyntheticSample,
    make_background,
    make_distractor,
    random_color,
    render_frame,
)
from pipeline.utils.cli import add_config_options, run_cli
from pipeline.utils.fileio import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

RGB_DIR = "nturgb+d_rgb"
SKELETON_DIR = "nturgb+d_skeletons"
CONFIG_FILE = "synthetic_config.json"
FOURCC = "DIVX"
"""MPEG-4 Part 2, as in the official ``*_rgb.avi`` (FFmpeg/OpenCV report the stream as ``FMP4``/``mpeg4``)."""
TRUTH_FILE = "synthetic_truth.csv"
_LEAF_JOINTS = ("Head", "FootLeft", "FootRight", "HandTipLeft", "ThumbLeft", "HandTipRight", "ThumbRight")


def _body_records(xyz: np.ndarray, body_id: int, yaw: float, rng: np.random.Generator) -> list[BodyRecord]:
    """One BodyRecord per frame for a body's camera-space joints (T, 25, 3)."""
    num_frames = xyz.shape[0]
    joints = np.zeros((num_frames, 25, 12))
    joints[..., 0:3] = xyz
    joints[..., 3:5] = project_depth(xyz)
    joints[..., 5:7] = project_color(xyz)
    joints[..., 7] = math.cos(yaw / 2)  # orientation quaternion (w, x, y, z): the body's yaw; leaves have none
    joints[..., 9] = math.sin(yaw / 2)
    joints[:, [JOINT_INDEX[name] for name in _LEAF_JOINTS], 7:11] = 0.0
    joints[..., 11] = np.where(rng.random((num_frames, 25)) < 0.02, 1, 2)  # 2 tracked, 1 inferred
    lean = np.clip(rng.normal(0.0, 0.05, 2) + rng.normal(0.0, 0.01, (num_frames, 2)), -1, 1)  # (T, 2)
    return [BodyRecord(body_id, joints[t], (0, 1, 1, 1, 1, 0, float(lean[t, 0]), float(lean[t, 1]), 2))
            for t in range(num_frames)]


def build_sample(plan: SamplePlan, config: SyntheticConfig) -> SyntheticSample:
    """Draw one sample's skeleton frames, scene and styles from its plan (deterministic in the seed)."""
    take_rng = random_stream(config, "style", plan.take)
    num_people = 2 if plan.two_person else 1
    styles = tuple(BodyStyle(random_color(take_rng, (80, 256), (60, 230)),
                             random_color(take_rng, (40, 200), (40, 160)),
                             random_color(take_rng, (60, 140), (150, 230), hue=(5, 20))) for _ in range(num_people))
    side = take_rng.choice([-1.0, 1.0])
    group = np.stack([body_motion(plan, config, p) for p in range(num_people)])  # (M, T, 25, 3)
    if num_people == 2:
        group[1] += np.array([side * take_rng.uniform(0.8, 1.0), 0.0, take_rng.uniform(-0.2, 0.2)])

    rng = random_stream(config, "view", plan.take, plan.camera)
    yaw = math.radians(CAMERA_YAW_DEG[plan.camera] + rng.uniform(-10.0, 10.0))
    group = group @ yaw_matrix(yaw).T  # (M, T, 25, 3)
    left = bool(rng.random() < 0.5)
    group = place(group, rng, left, config)
    group = group + rng.normal(0.0, 0.003, group.shape)  # Kinect-like joint noise
    width, height = config.frame_size
    background = make_background(rng, width, height)
    distractors = tuple(make_distractor(rng, plan.num_frames, left, width, height)
                        for _ in range(config.num_distractors))
    first_id = 2**56 + int(rng.integers(1_000, 100_000))
    per_body = [_body_records(group[m], first_id + 7 * m, yaw, rng) for m in range(num_people)]
    frames = [[] if t < config.zero_body_frames else [records[t] for records in per_body]
              for t in range(plan.num_frames)]
    return SyntheticSample(plan, frames, group, styles, background, distractors)


def sample_paths(root: str | Path, sample_id: str) -> tuple[Path, Path]:
    """(video, skeleton) paths of a sample in the official folder layout."""
    root = Path(root)
    return root / RGB_DIR / f"{sample_id}_rgb.avi", root / SKELETON_DIR / f"{sample_id}.skeleton"


def write_sample(sample: SyntheticSample, root: str | Path) -> None:
    """Write a sample's video and skeleton file; each appears only when complete (written aside, then renamed).

    A file being written has a name the manifest scan ignores: the skeleton is written through
    ``fileio.atomic_path`` (a hidden ``.tmp-*`` name), the video as ``.writing_<pid>.avi`` (OpenCV picks the
    container by the suffix, so it cannot take a ``.tmp-*`` name, and a name holding the sample id and ``.avi``
    would be scanned as a second video of the sample).

    Raises:
        RuntimeError: when OpenCV cannot open an MPEG-4 writer.
    """
    video_path, skeleton_path = sample_paths(root, sample.plan.sample_id)
    partial_video = video_path.with_name(f".writing_{os.getpid()}.avi")
    try:
        writer = cv2.VideoWriter(str(partial_video), cv2.VideoWriter_fourcc(*FOURCC), FPS, sample.frame_size)
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {FOURCC} AVI video to {partial_video} (no MPEG-4 encoder?)")
        try:
            for t in range(len(sample.frames)):
                writer.write(render_frame(sample, t))
        finally:
            writer.release()
        os.replace(partial_video, video_path)
    finally:
        partial_video.unlink(missing_ok=True)
    with atomic_path(skeleton_path) as tmp:
        write_skeleton(tmp, sample.frames)


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
        truth.append(f"{plan.sample_id},{plan.label},{hand},{JOINT_INDEX['Hand' + hand.capitalize()]}")
    atomic_write_text(root / TRUTH_FILE, "\n".join(truth) + "\n")
    atomic_write_text(root / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    logger.info("wrote %d synthetic NTU samples to %s in %.1f s", len(plans), root, time.perf_counter() - start)
    return [plan.sample_id for plan in plans]


def _frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must look like 640x360, got {text!r}") from None
    return width, height


_CLI_FIELDS = ("n", "seed", "num_classes", "min_frames", "max_frames", "two_person_fraction", "zero_body_frames",
               "num_distractors", "ntu120", "hand_amplitude_m", "cameras_per_take", "passive_hand_amplitude_m")
"""The ``SyntheticConfig`` fields the CLI sets with an option of the same name (plus ``--frame-size`` and
``--active-hand``, parsed on their own)."""
_CLI_FLAGS = {"hand_amplitude_m": "--hand-amplitude", "passive_hand_amplitude_m": "--passive-hand-amplitude"}
_CLI_HELPS = {
    "n": "number of samples", "ntu120": "also write NTU-120-only setups S018-S032",
    "hand_amplitude_m": "amplitude of the class-specific hand motion, metres",
    "cameras_per_take": "views per take (3 as NTU; fewer gives more independent takes)",
    "passive_hand_amplitude_m": "amplitude of a class-independent motion of the other hand, metres (0: idle)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.synthetic.dataset --root DIR [--n N] [--seed S] [--frame-size WxH] ...``."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m pipeline.synthetic.dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset root to write into")
    add_config_options(parser, defaults, _CLI_FIELDS, _CLI_FLAGS, _CLI_HELPS)
    parser.add_argument("--frame-size", type=_frame_size, default=defaults.frame_size, help="WxH, e.g. 640x360")
    parser.add_argument("--active-hand", choices=("right", "random"), default=defaults.active_hand,
                        help="hand that performs the class motion (random: right or left per take)")
    parser.add_argument("--overwrite", action="store_true", help="replace NTU files already under --root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def work() -> str:
        config = SyntheticConfig(frame_size=args.frame_size, active_hand=args.active_hand,
                                 **{name: getattr(args, name) for name in _CLI_FIELDS})
        ids = generate(args.root, config, overwrite=args.overwrite)
        return f"wrote {len(ids)} samples ({config.num_classes} classes) to {args.root}"

    return run_cli(work, (ValueError, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())
