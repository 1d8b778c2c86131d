"""Toyota Smarthome (trimmed): classes and skeleton graph, clip names, LCR-Net skeleton JSON, the CS / CV1 / CV2
protocols, which files make a sample, and its ``DatasetSpec`` (``SPEC``).

Clips are ``<Activity>_pPP_rRR_vVV_cCC.mp4`` (640x480); the skeleton of a clip is the JSON of the same stem,
``{"K": .., "njts": 13, "frames": [[{"pose2d": [26], "pose3d": [39], "cumscore": s}, ...], ...]}`` with one
list of detections per video frame (possibly empty). Coordinates are planar: joint j of ``pose2d`` is
``(pose2d[j], pose2d[j + 13])`` and of ``pose3d`` is ``(pose3d[j], pose3d[j + 13], pose3d[j + 26])``.

Trap (DATASETS.md 1.1): the official split lists hold 14 clips of ``Pour.Fromcup``, which is not one of the
31 classes. The manifest keeps such clips with a ``problem`` instead of mislabelling them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.contracts import MAX_BODIES
from pipeline.datasets.files import VIDEO_SUFFIXES, SampleFiles, ScanReport, pair_files
from pipeline.datasets.skeleton_io import FLOAT32_MAX, MAX_FRAMES, SkeletonClip, SkeletonFormatError, load_json
from pipeline.datasets.spec import DatasetSpec, SampleInfo, left_right_pairs

SMARTHOME_CLASSES: tuple[str, ...] = (
    "Cook.Cleandishes", "Cook.Cleanup", "Cook.Cut", "Cook.Stir", "Cook.Usestove", "Cutbread",
    "Drink.Frombottle", "Drink.Fromcan", "Drink.Fromcup", "Drink.Fromglass", "Eat.Attable", "Eat.Snack",
    "Enter", "Getup", "Laydown", "Leave", "Makecoffee.Pourgrains", "Makecoffee.Pourwater",
    "Maketea.Boilwater", "Maketea.Insertteabag", "Pour.Frombottle", "Pour.Fromcan", "Pour.Fromkettle",
    "Readbook", "Sitdown", "Takepills", "Uselaptop", "Usetelephone", "Usetablet", "Walk", "WatchTV",
)
"""31 cross-subject classes in the order of the official skeleton baseline (2s-AGCN-For-Daily-Living)."""

SMARTHOME_CV_CLASSES: tuple[str, ...] = (
    "Cutbread", "Drink.Frombottle", "Drink.Fromcan", "Drink.Fromcup", "Drink.Fromglass", "Eat.Attable",
    "Eat.Snack", "Enter", "Getup", "Leave", "Pour.Frombottle", "Pour.Fromcan", "Readbook", "Sitdown",
    "Takepills", "Uselaptop", "Usetablet", "Usetelephone", "Walk",
)
"""19 cross-view classes (alphabetical, as every official CV list orders them)."""

SMARTHOME_JOINTS: tuple[str, ...] = (
    "R_ankle", "L_ankle", "R_knee", "L_knee", "R_hip", "L_hip", "R_wrist", "L_wrist", "R_elbow", "L_elbow",
    "R_shoulder", "L_shoulder", "head",
)
# LCR-Net 13-joint bones, 0-based (TOQ-Nets list, DATASETS.md 1.5).
_SMARTHOME_EDGES_0B = (
    (0, 2), (2, 4), (1, 3), (3, 5), (6, 8), (8, 10), (7, 9), (9, 11), (4, 5), (4, 10), (5, 11), (10, 11),
    (11, 12), (10, 12),
)

NUM_JOINTS = 13
FRAME_SIZE = (640, 480)
POSE_BOUND = 1e4
"""Largest |coordinate| of an LCR-Net ``pose3d`` joint. Its unit is unverified (metres by the LCR-Net code, DATASETS.md
1.5; pixel-scale in some exports), so the bound allows both: 10^4 is 15x the 640-pixel frame width."""
MAX_LENGTH_RATIO = 3.0
"""The LCR-Net JSON has one ``frames`` entry per video frame (DATASETS.md 1.5); the container frame rate is disputed
(20 or 30 fps) and ``poses.align_frames`` maps counts proportionally, so, as for NTU, counts more than 3x apart
are not one recording."""
CLIP_NAME_RE = re.compile(
    r"^(?P<activity>.+)_p(?P<subject>[0-9]+)_r(?P<rep>[0-9]+)_v(?P<take>[0-9]+)_c(?P<camera>[0-9]+)$")
"""ASCII digits only (``[0-9]``, not ``\\d``, which takes any Unicode digit)."""

CS_TRAIN_SUBJECTS = frozenset((3, 4, 6, 7, 9, 12, 13, 15, 17))
CS_VAL_SUBJECTS = frozenset((19, 25))
CS_TEST_SUBJECTS = frozenset((2, 10, 11, 14, 16, 18, 20))
CV1_CAMERAS = {"train": frozenset((1,)), "val": frozenset((5,)), "test": frozenset((2,))}
CV2_CAMERAS = {"train": frozenset((1, 3, 4, 6, 7)), "val": frozenset((5,)), "test": frozenset((2,))}


@dataclass(frozen=True)
class SmarthomeClip:
    """Fields of a clip name."""

    activity: str
    subject: int
    repetition: int
    take: int
    camera: int

    @property
    def sample_id(self) -> str:
        return f"{self.activity}_p{self.subject:02d}_r{self.repetition:02d}_v{self.take:02d}_c{self.camera:02d}"


def parse_clip_name(name: str) -> SmarthomeClip:
    """Parse ``Cook.Cleandishes_p02_r00_v02_c03(.mp4|.json)``.

    Raises:
        ValueError: when the name does not follow the pattern.
    """
    stem = Path(name).name
    for suffix in (".mp4", ".json", "_pose3d", "_LCRNet2d"):
        stem = stem.removesuffix(suffix)
    match = CLIP_NAME_RE.match(stem)
    if match is None:
        raise ValueError(f"{name!r} is not a Smarthome clip name <Activity>_pPP_rRR_vVV_cCC")
    return SmarthomeClip(match["activity"], int(match["subject"]), int(match["rep"]), int(match["take"]),
                         int(match["camera"]))


def smarthome_splits(clip: SmarthomeClip) -> dict[str, str]:
    """Protocol membership: ``cs`` by subject, ``cv1``/``cv2`` by camera and only over the 19 CV classes."""
    splits = {"cs": "", "cv1": "", "cv2": ""}
    if clip.activity in SMARTHOME_CLASSES:
        if clip.subject in CS_TRAIN_SUBJECTS:
            splits["cs"] = "train"
        elif clip.subject in CS_VAL_SUBJECTS:
            splits["cs"] = "val"
        elif clip.subject in CS_TEST_SUBJECTS:
            splits["cs"] = "test"
    if clip.activity in SMARTHOME_CV_CLASSES:
        for protocol, cameras in (("cv1", CV1_CAMERAS), ("cv2", CV2_CAMERAS)):
            for split, members in cameras.items():
                if clip.camera in members:
                    splits[protocol] = split
    return splits


@dataclass(frozen=True)
class LcrSkeleton:
    """An LCR-Net skeleton file as arrays, at most ``max_bodies`` detections per frame.

    Attributes:
        num_frames: frames in the file.
        pose2d: (T, M, 13, 2) float32 image pixels, NaN where no detection.
        pose3d: (T, M, 13, 3) float32 world coordinates, NaN where no detection.
        score: (T, M) float32 LCR-Net ``cumscore`` (NaN where absent; 1 when the file has none).
    """

    num_frames: int
    pose2d: np.ndarray
    pose3d: np.ndarray
    score: np.ndarray


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(values: object, where: str, key: str) -> np.ndarray:
    """A flat list of finite (in float32) JSON numbers as float64."""
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        raise SkeletonFormatError(f"{where}: needs {key} as a list of numbers")
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        array = np.array([np.inf])
    if not (np.abs(array) <= FLOAT32_MAX).all():
        raise SkeletonFormatError(f"{where}: non-finite (NaN/inf, or beyond float32) coordinate in {key}")
    return array


def read_lcrnet_json(path: str | Path, max_bodies: int = 2) -> LcrSkeleton:
    """Read a Smarthome LCR-Net JSON, keeping the best ``max_bodies`` detections of each frame.

    Detections are ranked by ``cumscore`` per frame; the slots are then kept stable over time by assigning each
    frame's detections to the slot whose last 2D centre is nearest (greedy), so a person keeps one slot.

    Raises:
        SkeletonFormatError: unreadable JSON, missing keys, wrong joint count, wrong vector lengths or non-finite
            values; the message names the file and the frame.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or "frames" not in data:
        raise SkeletonFormatError(f"{path}: missing key 'frames' (expected LCR-Net keys K, njts, frames)")
    njts = data.get("njts", NUM_JOINTS)
    if not _is_number(njts) or njts != NUM_JOINTS:
        raise SkeletonFormatError(f"{path}: njts = {njts!r}, expected {NUM_JOINTS}")
    frames = data["frames"]
    if not isinstance(frames, list):
        raise SkeletonFormatError(f"{path}: 'frames' is {type(frames).__name__}, expected a list of frames")
    if len(frames) > MAX_FRAMES:
        raise SkeletonFormatError(f"{path}: {len(frames)} frames, more than the {MAX_FRAMES} a skeleton may hold")
    num_frames = len(frames)
    pose2d = np.full((num_frames, max_bodies, NUM_JOINTS, 2), np.nan, dtype=np.float32)
    pose3d = np.full((num_frames, max_bodies, NUM_JOINTS, 3), np.nan, dtype=np.float32)
    score = np.full((num_frames, max_bodies), np.nan, dtype=np.float32)
    last_centre = [None] * max_bodies
    for t, detections in enumerate(frames):
        if not isinstance(detections, list):
            raise SkeletonFormatError(f"{path}: frame {t}: expected a list of detections, got "
                                      f"{type(detections).__name__}")
        parsed = []
        for k, det in enumerate(detections):
            where = f"{path}: frame {t}, detection {k}"
            if not isinstance(det, dict):
                raise SkeletonFormatError(f"{where}: expected an object, got {type(det).__name__}")
            p2, p3 = (_numbers(det.get(key), where, key) for key in ("pose2d", "pose3d"))
            if p2.shape != (2 * NUM_JOINTS,) or p3.shape != (3 * NUM_JOINTS,):
                raise SkeletonFormatError(f"{where}: pose2d has {p2.size} values, pose3d "
                                          f"{p3.size}; expected {2 * NUM_JOINTS} and {3 * NUM_JOINTS}")
            det_score = det.get("cumscore", 1.0)
            if not _is_number(det_score) or not abs(det_score) <= FLOAT32_MAX:
                raise SkeletonFormatError(f"{where}: cumscore {str(det_score)[:40]!r} is not a finite number")
            parsed.append((float(det_score), p2.reshape(2, NUM_JOINTS).T, p3.reshape(3, NUM_JOINTS).T))
        parsed.sort(key=lambda d: -d[0])
        free = list(range(max_bodies))
        for det_score, p2, p3 in parsed[:max_bodies]:
            centre = p2.mean(axis=0)
            known = [s for s in free if last_centre[s] is not None]
            slot = min(known, key=lambda s: np.linalg.norm(last_centre[s] - centre)) if known else free[0]
            free.remove(slot)
            pose2d[t, slot], pose3d[t, slot], score[t, slot] = p2, p3, det_score
            last_centre[slot] = centre
    return LcrSkeleton(num_frames, pose2d, pose3d, score)


# ----------------------------------------------------------------------------------------------------------
# the dataset spec: the reader, id parser and scanner the pipeline calls


def load_clip(path: Path, video_size: tuple[int, int]) -> SkeletonClip:
    """An LCR-Net JSON as a ``SkeletonClip``: the best two detections per frame in stable slots, ``pose2d``
    rescaled from 640x480 to ``video_size`` (width, height)."""
    skel = read_lcrnet_json(path, MAX_BODIES)
    scale = np.array([video_size[0] / FRAME_SIZE[0], video_size[1] / FRAME_SIZE[1]], dtype=np.float32)
    return SkeletonClip(skel.pose3d, skel.pose2d * scale)


def sample_info(sample_id: str) -> SampleInfo:
    """What a clip name says: activity, subject, camera (the manifest's ``view``) and the protocol splits."""
    clip = parse_clip_name(sample_id)
    return SampleInfo(clip.activity, clip.subject, clip.camera, smarthome_splits(clip))


def _file_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "skeleton" if suffix == ".json" else None


def find_samples(root: Path, report: ScanReport) -> dict[str, SampleFiles]:
    """Pair each ``<clip>.mp4`` with its ``<clip>.json`` by the clip name, anywhere under ``root``."""
    return pair_files(root, report, _file_kind, lambda path: parse_clip_name(path.name).sample_id)


SPEC = DatasetSpec(
    "smarthome", SMARTHOME_CLASSES, {"cs": SMARTHOME_CLASSES, "cv1": SMARTHOME_CV_CLASSES, "cv2": SMARTHOME_CV_CLASSES},
    joints=SMARTHOME_JOINTS, edges=_SMARTHOME_EDGES_0B, centre_joint=4, left_right=left_right_pairs(SMARTHOME_JOINTS),
    t_p=30, metric="mean_class", frame_size=FRAME_SIZE, read_skeleton=load_clip, parse_sample_id=sample_info,
    find_samples=find_samples, pose_bound=POSE_BOUND, pose_units="LCR-Net units", max_length_ratio=MAX_LENGTH_RATIO)
