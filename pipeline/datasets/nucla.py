"""Northwestern-UCLA Multiview Action3D: classes and skeleton graph, sample names, raw per-frame skeleton text,
all_sqe JSON, the protocol, which files make a sample, and its ``DatasetSpec`` (``SPEC``).

Two skeleton sources are read:

* the raw release: ``multiview_action/view_V/aXX_sYY_eZZ/`` folders holding per-frame ``frame_<N>_..._rgb.jpg``
  images and ``frame_<N>_..._skeletons.txt`` files. Each text file is a header line, then groups of 20 lines
  ``x,y,z,trackingState`` (Kinect v1 camera space, metres), one group per tracked skeleton;
* the widely used per-sample JSON (``all_sqe``): ``{"file_name": "aXX_sYY_eZZ_vVV", "skeletons": [T][20][3],
  "label": 1..10}`` (label is 1-based over the 10 classes, *not* ``int(aXX) - 1``).

Sample ids are ``aXX_sYY_eZZ_vVV`` (action, subject, episode, view). Labels index
``NUCLA_ACTION_IDS`` = a01..a06, a08, a09, a11, a12.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.datasets.files import SampleFiles, ScanReport, pair_files, relative
from pipeline.datasets.skeleton_io import (
    FLOAT32_MAX,
    MAX_FRAMES,
    SkeletonClip,
    SkeletonFormatError,
    load_json,
    pad_bodies,
    read_bounded,
)
from pipeline.datasets.spec import DatasetSpec, SampleInfo, left_right_pairs, zero_based

NUCLA_ACTION_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)
NUCLA_CLASSES: tuple[str, ...] = (
    "pick up with one hand", "pick up with two hands", "drop trash", "walk around", "sit down", "stand up",
    "donning", "doffing", "throw", "carry",
)
NUCLA_JOINTS: tuple[str, ...] = (
    "HipCenter", "Spine", "ShoulderCenter", "Head", "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight",
)
# CTR-GCN ucla.py inward edges, 1-based (DATASETS.md 2.4).
_NUCLA_EDGES_1B = (
    (1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10), (12, 11), (13, 1),
    (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
)

NUM_JOINTS = 20
FRAME_SIZE = (640, 480)
SAMPLE_RE = re.compile(r"a([0-9]{2})_s([0-9]{2})_e([0-9]{2})(?:_[vc]([0-9]{2}))?")
FRAME_INDEX_RE = re.compile(r"^frame_([0-9]+)_")
V3_12_TRAIN_VIEWS = frozenset((1, 2))
V3_12_TEST_VIEWS = frozenset((3,))

# Approximate Kinect v1 colour-camera pinhole model for 640x480 images (focal length in pixels, principal point).
# The release ships no calibration; this is only used to place a generously padded person box.
KINECT_V1_FOCAL = 525.0
KINECT_V1_CENTRE = (319.5, 239.5)
POSE_BOUND_M = 10.0
"""Largest |x|, |y|, |z| of a joint in metres: Kinect v1 sees depth up to 4 m (8 m at most); x and y stay within its
57x43 degree field of view there. The all_sqe JSON is resampled, so its length is not checked against the video."""


@dataclass(frozen=True)
class NuclaSample:
    """Fields of ``aXX_sYY_eZZ_vVV``."""

    action: int
    subject: int
    episode: int
    view: int

    @property
    def sample_id(self) -> str:
        return f"a{self.action:02d}_s{self.subject:02d}_e{self.episode:02d}_v{self.view:02d}"

    @property
    def label(self) -> int:
        """0-based label in the 10-class list (a07 and a10 do not exist)."""
        return NUCLA_ACTION_IDS.index(self.action)


def parse_sample_name(name: str, view: int | None = None) -> NuclaSample:
    """Parse ``a01_s01_e00_v01`` (JSON stem) or ``a01_s01_e00`` plus the view of its ``view_V`` folder.

    Raises:
        ValueError: unparseable name, missing view, or an action id outside the 10 classes.
    """
    match = SAMPLE_RE.fullmatch(Path(name).name.removesuffix(".json"))
    if match is None:
        raise ValueError(f"{name!r} is not an N-UCLA sample name aXX_sYY_eZZ[_vVV]")
    action, subject, episode = (int(g) for g in match.groups()[:3])
    view = int(match.group(4)) if match.group(4) else view
    if view is None:
        raise ValueError(f"{name!r}: no view in the name and none given")
    if action not in NUCLA_ACTION_IDS:
        raise ValueError(f"{name!r}: action a{action:02d} is not one of the 10 N-UCLA actions")
    return NuclaSample(action, subject, episode, view)


def nucla_splits(sample: NuclaSample) -> dict[str, str]:
    """Protocol ``v3_12``: train on views 1 and 2, test on view 3."""
    if sample.view in V3_12_TRAIN_VIEWS:
        return {"v3_12": "train"}
    return {"v3_12": "test" if sample.view in V3_12_TEST_VIEWS else ""}


def frame_number(path: str | Path) -> int:
    """The ``N`` of ``frame_N_...``; raises ValueError for other names."""
    match = FRAME_INDEX_RE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a frame_<N>_... file name")
    return int(match.group(1))


def read_sqe_json(path: str | Path) -> np.ndarray:
    """Read an all_sqe JSON: returns joints (T, 1, 20, 3) float32 (one body).

    Raises:
        SkeletonFormatError: invalid JSON, missing ``skeletons``, wrong shape, empty or non-finite values.
    """
    path = Path(path)
    data = load_json(path)
    frames = data.get("skeletons") if isinstance(data, dict) else None
    if not isinstance(frames, list) or len(frames) > MAX_FRAMES:
        raise SkeletonFormatError(f"{path}: not an N-UCLA skeleton JSON with a [T][20][3] 'skeletons' list of at "
                                  f"most {MAX_FRAMES} frames")
    try:
        skeletons = np.asarray(frames, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise SkeletonFormatError(f"{path}: 'skeletons' is not a [T][20][3] array of numbers ({err})") from None
    if skeletons.ndim != 3 or skeletons.shape[1:] != (NUM_JOINTS, 3):
        raise SkeletonFormatError(f"{path}: skeletons have shape {skeletons.shape}, expected (T, {NUM_JOINTS}, 3)")
    if len(skeletons) == 0:
        raise SkeletonFormatError(f"{path}: no frames")
    finite = (np.abs(skeletons) <= FLOAT32_MAX).reshape(len(skeletons), -1).all(axis=1)  # NaN compares False
    if not finite.all():
        raise SkeletonFormatError(f"{path}: frame {int(np.flatnonzero(~finite)[0])}: non-finite (NaN/inf, or beyond "
                                  "float32) coordinate")
    return skeletons[:, None].astype(np.float32)


def read_frame_skeletons(path: str | Path, max_bodies: int = 2) -> np.ndarray:
    """Read one raw per-frame ``*_skeletons.txt``: returns (max_bodies, 20, 3) float32, NaN for absent bodies.

    Raises:
        SkeletonFormatError: a body group that is not 20 lines of ``x,y,z,state``; names the file and line.
    """
    path = Path(path)
    lines = [line.strip() for line in read_bounded(path).decode("ascii", errors="replace").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    out = np.full((max_bodies, NUM_JOINTS, 3), np.nan, dtype=np.float32)
    if not lines:
        return out
    body_lines = lines[1:]
    if len(body_lines) % NUM_JOINTS:
        raise SkeletonFormatError(f"{path}: line {len(lines)}: {len(body_lines)} joint lines is not a multiple of "
                                  f"{NUM_JOINTS} (truncated or wrong joint count)")
    for b in range(min(max_bodies, len(body_lines) // NUM_JOINTS)):
        for j in range(NUM_JOINTS):
            lineno = 2 + b * NUM_JOINTS + j
            fields = body_lines[b * NUM_JOINTS + j].split(",")
            try:
                values = [float(v) for v in fields[:3]]
            except ValueError:
                raise SkeletonFormatError(f"{path}: line {lineno}: non-numeric joint {fields[:3]}") from None
            if len(fields) < 3 or not (np.abs(values) <= FLOAT32_MAX).all():
                raise SkeletonFormatError(f"{path}: line {lineno}: expected finite (in float32) x,y,z,state")
            out[b, j] = values
    return out


def read_raw_sample(folder: str | Path, max_bodies: int = 2) -> tuple[np.ndarray, list[Path]]:
    """Read a raw sample folder: joints (T, M, 20, 3) and the sorted RGB frame paths.

    Frames are ordered by their ``frame_<N>`` number; a frame whose skeleton file is missing has NaN joints.
    """
    folder = Path(folder)
    try:
        rgb = sorted(folder.glob("*_rgb.jpg"), key=frame_number)
        skeleton_files = {frame_number(p): p for p in folder.glob("*skeletons.txt")}
    except ValueError as err:
        raise SkeletonFormatError(f"{folder}: {err}") from None
    numbers = [frame_number(p) for p in rgb] or sorted(skeleton_files)
    if len(numbers) > MAX_FRAMES:
        raise SkeletonFormatError(f"{folder}: {len(numbers)} frames, more than the {MAX_FRAMES} a sample may hold")
    joints = np.full((len(numbers), max_bodies, NUM_JOINTS, 3), np.nan, dtype=np.float32)
    for t, n in enumerate(numbers):
        if n in skeleton_files:
            joints[t] = read_frame_skeletons(skeleton_files[n], max_bodies)
    return joints, rgb


def project_kinect_v1(joints: np.ndarray) -> np.ndarray:
    """Project Kinect v1 camera-space joints (..., 3) in metres to approximate 640x480 pixels (..., 2).

    Uses a pinhole model with ``KINECT_V1_FOCAL``; y is flipped (Kinect y points up, image y down). Points with
    z <= 0 become NaN. The result is approximate (no calibration ships with the data), so crops built from it use
    extra padding.
    """
    x, y, z = joints[..., 0], joints[..., 1], joints[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = KINECT_V1_CENTRE[0] + KINECT_V1_FOCAL * x / z
        v = KINECT_V1_CENTRE[1] - KINECT_V1_FOCAL * y / z
    out = np.stack([u, v], axis=-1).astype(np.float32)
    out[~(z > 0)] = np.nan
    return out


# ----------------------------------------------------------------------------------------------------------
# the dataset spec: the reader, id parser and scanner the pipeline calls


def load_clip(path: Path, video_size: tuple[int, int]) -> SkeletonClip:
    """An all_sqe JSON or a raw sample folder as a ``SkeletonClip`` (one body), image coordinates projected with
    ``project_kinect_v1`` and rescaled from 640x480 to ``video_size`` (width, height)."""
    joints = read_raw_sample(path)[0] if path.is_dir() else read_sqe_json(path)
    scale = np.array([video_size[0] / FRAME_SIZE[0], video_size[1] / FRAME_SIZE[1]], dtype=np.float32)
    return SkeletonClip(pad_bodies(joints), pad_bodies(project_kinect_v1(joints) * scale))


def sample_info(sample_id: str) -> SampleInfo:
    """What ``aXX_sYY_eZZ_vVV`` says: action, subject, view and the protocol split."""
    sample = parse_sample_name(sample_id)
    return SampleInfo(NUCLA_CLASSES[sample.label], sample.subject, sample.view, nucla_splits(sample))


def find_samples(root: Path, report: ScanReport) -> dict[str, SampleFiles]:
    """The samples under ``root``: all_sqe JSONs (skeleton only) and raw ``view_V/aXX_sYY_eZZ/`` folders (the
    folder is the video when it holds ``*_rgb.jpg`` frames, and the skeleton unless a JSON of the sample exists)."""
    raw_folders: set[Path] = set()

    def kind_of(path: Path) -> str | None:
        if path.suffix == ".json":
            return "skeleton"
        if path.suffix.lower() == ".json":
            return "wrong_case"
        if path.name.endswith(("_rgb.jpg", "skeletons.txt")):
            raw_folders.add(path.parent)  # collected while walking; read below
        return None

    found = pair_files(root, report, kind_of, lambda path: parse_sample_name(path.stem).sample_id)
    for folder in sorted(raw_folders):
        view_dir = folder.parent.name
        try:
            view = int(view_dir.removeprefix("view_")) if view_dir.startswith("view_") else None
            sample = parse_sample_name(folder.name, view=view)
        except ValueError:
            report.unparsed.append(relative(folder, root))
            continue
        slot = found.setdefault(sample.sample_id, {})
        if any(folder.glob("*_rgb.jpg")):
            slot["video"] = folder
        slot.setdefault("skeleton", folder)
    return found


SPEC = DatasetSpec(
    "nucla", NUCLA_CLASSES, {"v3_12": NUCLA_CLASSES}, joints=NUCLA_JOINTS, edges=zero_based(_NUCLA_EDGES_1B),
    centre_joint=0, left_right=left_right_pairs(NUCLA_JOINTS), t_p=5, metric="top1", frame_size=FRAME_SIZE,
    read_skeleton=load_clip, parse_sample_id=sample_info, find_samples=find_samples, pose_bound=POSE_BOUND_M)
