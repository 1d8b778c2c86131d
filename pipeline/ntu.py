"""NTU RGB+D 60/120: sample ids, the ``.skeleton`` text format (read and write), body selection and protocols.

The ``.skeleton`` format (DATASETS.md 3.2), CRLF line ends::

    numFrame
    per frame:  numBody
      per body: bodyID clipedEdges handLeftConfidence handLeftState handRightConfidence handRightState
                isResticted leanX leanY trackingState          (10 fields; bodyID is a 64-bit integer)
                numJoint                                        (25)
                25 x  "x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState"

``colorX``/``colorY`` are pixel coordinates in the 1920x1080 colour frame; the crop stage rescales them when a
video has another size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_JOINTS = 25
JOINT_FIELDS = 12
BODY_INFO_FIELDS = 10
COLOR_FRAME_SIZE = (1920, 1080)
"""(width, height) of the frame ``colorX``/``colorY`` refer to."""

SAMPLE_ID_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")

NTU60_SETUPS = range(1, 18)
NTU120_SETUPS = range(1, 33)
NTU60_CS_TRAIN_SUBJECTS = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
NTU120_CS_TRAIN_SUBJECTS = NTU60_CS_TRAIN_SUBJECTS | frozenset(
    (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93,
     94, 95, 97, 98, 100, 103))
NTU60_CV_TRAIN_CAMERAS = frozenset((2, 3))


class SkeletonFormatError(ValueError):
    """A skeleton file that does not follow its format; the message names the file and the line."""


@dataclass(frozen=True)
class NtuSampleId:
    """The fields of ``SsssCcccPpppRrrrAaaa`` (all 1-based as in the name)."""

    setup: int
    camera: int
    subject: int
    replication: int
    action: int

    def __str__(self) -> str:
        return format_sample_id(self.setup, self.camera, self.subject, self.replication, self.action)


def parse_sample_id(name: str) -> NtuSampleId:
    """Parse an NTU sample id from a file name such as ``S001C002P003R002A013_rgb.avi``.

    Raises:
        ValueError: when the name holds no ``SsssCcccPpppRrrrAaaa`` id.
    """
    match = SAMPLE_ID_RE.search(Path(name).name)
    if match is None:
        raise ValueError(f"{name!r} holds no NTU sample id of the form SsssCcccPpppRrrrAaaa")
    return NtuSampleId(*(int(g) for g in match.groups()))


def format_sample_id(setup: int, camera: int, subject: int, replication: int, action: int) -> str:
    """Inverse of :func:`parse_sample_id`: ``S001C002P003R001A013``."""
    return f"S{setup:03d}C{camera:03d}P{subject:03d}R{replication:03d}A{action:03d}"


def ntu_splits(sid: NtuSampleId, dataset: str) -> dict[str, str]:
    """Protocol membership of one sample: NTU-60 ``cs``/``cv``, NTU-120 ``cs1``/``cs2`` (``train``/``test``)."""
    if dataset == "ntu60":
        return {
            "cs": "train" if sid.subject in NTU60_CS_TRAIN_SUBJECTS else "test",
            "cv": "train" if sid.camera in NTU60_CV_TRAIN_CAMERAS else "test",
        }
    if dataset == "ntu120":
        return {
            "cs1": "train" if sid.subject in NTU120_CS_TRAIN_SUBJECTS else "test",
            "cs2": "train" if sid.setup % 2 == 0 else "test",
        }
    raise ValueError(f"not an NTU dataset: {dataset!r}")


def in_dataset(sid: NtuSampleId, dataset: str) -> bool:
    """NTU-60 is A001-A060 from S001-S017; NTU-120 is A001-A120 from S001-S032."""
    if dataset == "ntu60":
        return sid.setup in NTU60_SETUPS and 1 <= sid.action <= 60
    if dataset == "ntu120":
        return sid.setup in NTU120_SETUPS and 1 <= sid.action <= 120
    raise ValueError(f"not an NTU dataset: {dataset!r}")


def read_missing_list(path: str | Path) -> set[str]:
    """Read an official missing-skeleton list; lines that are not sample ids (the header) are skipped."""
    ids = set()
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        match = SAMPLE_ID_RE.fullmatch(line.strip())
        if match:
            ids.add(match.group(0))
    return ids


@dataclass(frozen=True)
class BodyRecord:
    """One body in one frame, as stored in the file.

    Attributes:
        body_id: the 64-bit Kinect body id.
        joints: (25, 12) float: x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState.
        info: the 9 body-info fields after the id (clipedEdges ... trackingState).
    """

    body_id: int
    joints: np.ndarray
    info: tuple[float, ...] = (0, 1, 0, 1, 0, 0, 0.0, 0.0, 2)


@dataclass(frozen=True)
class SkeletonSequence:
    """A skeleton file as arrays, one body slot per distinct bodyID (in order of first appearance).

    Attributes:
        num_frames: frames in the file (frames with 0 bodies included).
        body_ids: (M,) uint64 body ids of the slots.
        joints: (T, M, 25, 3) float32 camera-space metres, NaN where a body is absent.
        color_xy: (T, M, 25, 2) float32 colour-frame pixels (1920x1080), NaN where absent.
        tracking: (T, M, 25) int8 joint tracking state (0 where absent).
    """

    num_frames: int
    body_ids: np.ndarray
    joints: np.ndarray
    color_xy: np.ndarray
    tracking: np.ndarray

    @property
    def num_bodies(self) -> int:
        return len(self.body_ids)

    def frames_with_bodies(self) -> np.ndarray:
        """(T,) bool: frames where at least one body is present."""
        return np.isfinite(self.joints[..., 0, 0]).any(axis=1)


def _fmt(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.7g}"


def write_skeleton(path: str | Path, frames: list[list[BodyRecord]]) -> None:
    """Write frames of bodies in the exact NTU ``.skeleton`` text format (CRLF line ends)."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body in bodies:
            if body.joints.shape != (NUM_JOINTS, JOINT_FIELDS):
                raise ValueError(f"body joints must be ({NUM_JOINTS}, {JOINT_FIELDS}), got {body.joints.shape}")
            if len(body.info) != BODY_INFO_FIELDS - 1:
                raise ValueError(f"body info must hold {BODY_INFO_FIELDS - 1} fields, got {len(body.info)}")
            lines.append(" ".join([str(int(body.body_id))] + [_fmt(v) for v in body.info]))
            lines.append(str(NUM_JOINTS))
            lines.extend(" ".join(_fmt(v) for v in row) for row in body.joints)
    Path(path).write_bytes(("\r\n".join(lines) + "\r\n").encode("ascii"))


class _Lines:
    """A cursor over a file's lines that names the file and line number in every error."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()
        self.pos = 0

    def error(self, message: str, line: int | None = None) -> SkeletonFormatError:
        return SkeletonFormatError(f"{self.path}: line {line or self.pos}: {message}")

    def take(self, what: str) -> str:
        if self.pos >= len(self.lines):
            raise self.error(f"file ends early (truncated?) while reading {what}", self.pos + 1)
        self.pos += 1
        return self.lines[self.pos - 1]

    def take_int(self, what: str) -> int:
        text = self.take(what).strip()
        try:
            return int(text)
        except ValueError:
            raise self.error(f"expected an integer {what}, got {text[:40]!r}") from None


def read_skeleton(path: str | Path) -> SkeletonSequence:
    """Parse an NTU ``.skeleton`` file strictly.

    Raises:
        SkeletonFormatError: empty or truncated file, wrong field or joint counts, non-numeric or non-finite
            values; the message names the file and the line.
    """
    path = Path(path)
    text = path.read_text(encoding="ascii", errors="replace")
    if not text.strip():
        raise SkeletonFormatError(f"{path}: line 1: empty skeleton file")
    cur = _Lines(path, text)
    num_frames = cur.take_int("frame count")
    if num_frames < 0:
        raise cur.error(f"negative frame count {num_frames}")
    slots: dict[int, int] = {}
    records: list[tuple[int, int, np.ndarray]] = []  # (frame, slot, (25, 12))
    for t in range(num_frames):
        num_bodies = cur.take_int(f"body count of frame {t}")
        if num_bodies < 0:
            raise cur.error(f"negative body count {num_bodies}")
        for _ in range(num_bodies):
            info = cur.take(f"body-info line of frame {t}").split()
            if len(info) != BODY_INFO_FIELDS:
                raise cur.error(f"body-info line has {len(info)} fields, expected {BODY_INFO_FIELDS}")
            try:
                body_id = int(info[0])
            except ValueError:
                raise cur.error(f"body id {info[0][:40]!r} is not an integer") from None
            num_joints = cur.take_int("joint count")
            if num_joints != NUM_JOINTS:
                raise cur.error(f"joint count {num_joints}, expected {NUM_JOINTS}")
            start = cur.pos
            rows = [cur.take("joint line").split() for _ in range(NUM_JOINTS)]
            for k, row in enumerate(rows):
                if len(row) != JOINT_FIELDS:
                    raise cur.error(f"joint line has {len(row)} fields, expected {JOINT_FIELDS}", start + k + 1)
            try:
                joints = np.array(rows, dtype=np.float64)
            except ValueError:
                raise cur.error("non-numeric value in a joint line", start + 1) from None
            if not np.isfinite(joints).all():
                bad = int(np.flatnonzero(~np.isfinite(joints).all(axis=1))[0])
                raise cur.error("non-finite (NaN/inf) joint value", start + bad + 1)
            slot = slots.setdefault(body_id, len(slots))
            records.append((t, slot, joints))
    trailing = [line for line in cur.lines[cur.pos:] if line.strip()]
    if trailing:
        raise cur.error(f"{len(trailing)} unexpected trailing lines after the last frame", cur.pos + 1)
    num_slots = len(slots)
    joints3d = np.full((num_frames, num_slots, NUM_JOINTS, 3), np.nan, dtype=np.float32)
    color_xy = np.full((num_frames, num_slots, NUM_JOINTS, 2), np.nan, dtype=np.float32)
    tracking = np.zeros((num_frames, num_slots, NUM_JOINTS), dtype=np.int8)
    for t, slot, joints in records:
        joints3d[t, slot] = joints[:, 0:3]
        color_xy[t, slot] = joints[:, 5:7]
        tracking[t, slot] = joints[:, 11]
    body_ids = np.array(list(slots), dtype=np.uint64)
    return SkeletonSequence(num_frames, body_ids, joints3d, color_xy, tracking)


def body_motion(joints: np.ndarray) -> float:
    """Motion of one body slot (T, J, 3): summed variance over the frames where it is present."""
    present = np.isfinite(joints[:, 0, 0])
    if present.sum() < 2:
        return 0.0
    return float(joints[present].var(axis=0).sum())


def select_bodies(seq: SkeletonSequence, max_bodies: int = 2) -> SkeletonSequence:
    """Keep at most ``max_bodies`` actors, the standard way (as CTR-GCN/SGN preprocessing does).

    Body slots are ranked by motion (summed joint variance over time), largest first. Actor 1 is the largest-motion
    body; each further body is merged into the first actor whose frames it does not overlap (Kinect often gives
    one person a new id after losing track), otherwise it starts a new actor while fewer than ``max_bodies``
    exist, otherwise it is dropped. The order is stable: ties in motion keep the order of first appearance.
    """
    order = sorted(range(seq.num_bodies), key=lambda m: -body_motion(seq.joints[:, m]))
    actors: list[list[int]] = []
    occupied: list[np.ndarray] = []
    for m in order:
        present = np.isfinite(seq.joints[:, m, 0, 0])
        for a, frames in enumerate(occupied):
            if not (frames & present).any():
                actors[a].append(m)
                occupied[a] = frames | present
                break
        else:
            if len(actors) < max_bodies:
                actors.append([m])
                occupied.append(present.copy())
    shape = (seq.num_frames, len(actors))
    joints = np.full(shape + (NUM_JOINTS, 3), np.nan, dtype=np.float32)
    color_xy = np.full(shape + (NUM_JOINTS, 2), np.nan, dtype=np.float32)
    tracking = np.zeros(shape + (NUM_JOINTS,), dtype=np.int8)
    for a, members in enumerate(actors):
        for m in members:
            present = np.isfinite(seq.joints[:, m, 0, 0])
            joints[present, a] = seq.joints[present, m]
            color_xy[present, a] = seq.color_xy[present, m]
            tracking[present, a] = seq.tracking[present, m]
    body_ids = np.array([seq.body_ids[members[0]] for members in actors], dtype=np.uint64)
    return SkeletonSequence(seq.num_frames, body_ids, joints, color_xy, tracking)
