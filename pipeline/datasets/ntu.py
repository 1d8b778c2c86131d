"""NTU RGB+D 60/120: classes and skeleton graph, sample ids, the ``.skeleton`` text format (read and write), body
selection, protocols, which files make a sample, and the two ``DatasetSpec`` (``SPECS``).

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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.contracts import MAX_BODIES
from pipeline.datasets.files import VIDEO_SUFFIXES, SampleFiles, ScanReport, pair_files
from pipeline.datasets.skeleton_io import (  # the error: re-exported
    FLOAT32_MAX,
    MAX_FRAMES,
    SkeletonClip,
    SkeletonFormatError,
    pad_bodies,
    read_bounded,
)
from pipeline.datasets.spec import DatasetSpec, SampleInfo, left_right_pairs, zero_based

NTU_CLASSES: tuple[str, ...] = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup", "throw",
    "sitting down", "standing up (from sitting position)", "clapping", "reading", "writing",
    "tear up paper", "wear jacket", "take off jacket", "wear a shoe", "take off a shoe",
    "wear on glasses", "take off glasses", "put on a hat/cap", "take off a hat/cap", "cheer up",
    "hand waving", "kicking something", "reach into pocket", "hopping (one foot jumping)", "jump up",
    "make a phone call/answer phone", "playing with phone/tablet", "typing on a keyboard",
    "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute",
    "put the palms together", "cross hands in front (say stop)", "sneeze/cough", "staggering",
    "falling", "touch head (headache)", "touch chest (stomachache/heart pain)", "touch back (backache)",
    "touch neck (neckache)", "nausea or vomiting condition", "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person", "kicking other person", "pushing other person",
    "pat on back of other person", "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball", "tennis bat swing",
    "juggling table tennis balls", "hush (quite)", "flick hair", "thumb up", "thumb down",
    "make ok sign", "make victory sign", "staple book", "counting money", "cutting nails",
    "cutting paper (using scissors)", "snapping fingers", "open bottle", "sniff (smell)", "squat down",
    "toss a coin", "fold paper", "ball up paper", "play magic cube", "apply cream on face",
    "apply cream on hand back", "put on bag", "take off bag", "put something into a bag",
    "take something out of a bag", "open a box", "move heavy objects", "shake fist", "throw up cap/hat",
    "hands up (both hands)", "cross arms", "arm circles", "arm swings", "running on the spot",
    "butt kicks (kick backward)", "cross toe touch", "side kick", "yawn", "stretch oneself",
    "blow nose", "hit other person with something", "wield knife towards other person",
    "knock over other person (hit with body)", "grab other person\u2019s stuff", "shoot at other person with a gun",
    "step on foot", "high-five", "cheers and drink", "carry something with other person",
    "take a photo of other person", "follow other person", "whisper in other person\u2019s ear",
    "exchange things with other person", "support somebody with hand",
    "finger-guessing game (playing rock-paper-scissors)",
)

NTU_JOINTS: tuple[str, ...] = (
    "SpineBase", "SpineMid", "Neck", "Head", "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight", "SpineShoulder", "HandTipLeft", "ThumbLeft",
    "HandTipRight", "ThumbRight",
)
# 2s-AGCN NTU edges, 1-based as published (DATASETS.md 3.3).
_NTU_EDGES_1B = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
    (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25),
    (25, 12),
)

NUM_JOINTS = 25
JOINT_FIELDS = 12
BODY_INFO_FIELDS = 10
COLOR_FRAME_SIZE = (1920, 1080)
"""(width, height) of the frame ``colorX``/``colorY`` refer to."""

SAMPLE_ID_RE = re.compile(r"(?<![0-9])S([0-9]{3})C([0-9]{3})P([0-9]{3})R([0-9]{3})A([0-9]{3})(?![0-9])")
"""ASCII digits only, exactly three per field: ``A0045`` is no id, nor are Arabic-Indic digits."""
MAX_BODIES_PER_FRAME = 6
"""Kinect v2 tracks at most 6 people; a frame claiming more is corrupt."""
MAX_DENSE_SLOTS = 16
"""``read_skeleton`` without ``max_bodies`` builds one (T, slot) array per distinct body id, up to this many ids."""
TRACKING_STATES = (0, 1, 2)
"""Joint trackingState: not tracked, inferred, tracked."""
POSE_BOUND_M = 10.0
"""Largest |x|, |y|, |z| of a joint in metres: Kinect v2 sees depth up to 8 m (4.5 m reliably) and, within its
70x60 degree field of view, x and y stay under 6 m there. A farther value is no person the sensor tracked."""
MAX_LENGTH_RATIO = 3.0
"""A ``.skeleton`` and its ``_rgb.avi`` are one Kinect recording at 30 fps; they "occasionally differ by a few
frames", and ``poses.align_frames`` maps them proportionally, so even a skeleton at half the video's rate is
aligned. Counts more than 3x apart (6,000 skeleton frames for a 103-frame video) are not one recording."""
NOISE_TRACK_FRAMES = 11
"""The SGN/CTR-GCN NTU denoiser's ``noise_len_thres`` (DATASETS.md 3.3): a body id lasting at most 11 frames is
noise. A skeleton with more frames than that, none of whose body ids lasts longer, tracks nobody (e.g. a new body
id in every frame) and is refused."""

NTU60_SETUPS = range(1, 18)
NTU120_SETUPS = range(1, 33)
NTU60_CS_TRAIN_SUBJECTS = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
NTU120_CS_TRAIN_SUBJECTS = NTU60_CS_TRAIN_SUBJECTS | frozenset(
    (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93,
     94, 95, 97, 98, 100, 103))
NTU60_CV_TRAIN_CAMERAS = frozenset((2, 3))


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


def _ntu60_splits(sid: NtuSampleId) -> dict[str, str]:
    return {"cs": "train" if sid.subject in NTU60_CS_TRAIN_SUBJECTS else "test",
            "cv": "train" if sid.camera in NTU60_CV_TRAIN_CAMERAS else "test"}


def _ntu120_splits(sid: NtuSampleId) -> dict[str, str]:
    return {"cs1": "train" if sid.subject in NTU120_CS_TRAIN_SUBJECTS else "test",
            "cs2": "train" if sid.setup % 2 == 0 else "test"}


@dataclass(frozen=True)
class NtuVariant:
    """What tells NTU-60 and NTU-120 apart: their setups, actions and protocols."""

    setups: range
    num_actions: int
    protocols: tuple[str, ...]
    splits: Callable[[NtuSampleId], dict[str, str]]

    def contains(self, sid: NtuSampleId) -> bool:
        return sid.setup in self.setups and 1 <= sid.action <= self.num_actions


VARIANTS: dict[str, NtuVariant] = {
    "ntu60": NtuVariant(NTU60_SETUPS, 60, ("cs", "cv"), _ntu60_splits),
    "ntu120": NtuVariant(NTU120_SETUPS, 120, ("cs1", "cs2"), _ntu120_splits),
}
"""NTU-60 is A001-A060 from S001-S017 (protocols ``cs``/``cv``); NTU-120 is A001-A120 from S001-S032
(``cs1``/``cs2``, i.e. cross-subject and cross-setup: even setups train)."""


def _variant(dataset: str) -> NtuVariant:
    if dataset not in VARIANTS:
        raise ValueError(f"not an NTU dataset: {dataset!r}")
    return VARIANTS[dataset]


def ntu_splits(sid: NtuSampleId, dataset: str) -> dict[str, str]:
    """Protocol membership of one sample: NTU-60 ``cs``/``cv``, NTU-120 ``cs1``/``cs2`` (``train``/``test``)."""
    return _variant(dataset).splits(sid)


def in_dataset(sid: NtuSampleId, dataset: str) -> bool:
    """NTU-60 is A001-A060 from S001-S017; NTU-120 is A001-A120 from S001-S032."""
    return _variant(dataset).contains(sid)


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

    def take_int(self, what: str, low: int, high: int) -> int:
        text = self.take(what).strip()
        if not (text.isascii() and text.lstrip("-").isdigit()):
            raise self.error(f"expected an integer {what}, got {text[:40]!r}")
        value = int(text)
        if not low <= value <= high:
            raise self.error(f"{what} {value} is outside [{low}, {high}]")
        return value


@dataclass
class _Track:
    """One body id's records, sparse: the frames it appears in and its joints there."""

    body_id: int
    frames: list[int]
    joints: list[np.ndarray]  # each (25, 12) float64

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(n,) frame indices and (n, 25, 12) joints."""
        return np.asarray(self.frames, dtype=np.int64), np.stack(self.joints)

    def motion(self) -> float:
        """Summed variance of the 3D joints over the frames where the body is present."""
        if len(self.joints) < 2:
            return 0.0
        with np.errstate(over="ignore", invalid="ignore"):  # absurd but float32-finite coordinates: inf motion
            return float(np.stack(self.joints)[:, :, 0:3].astype(np.float32).var(axis=0).sum())  # as body_motion


_PLAIN_NUMBERS = re.compile(r"[0-9eE+\-. \t]*")
"""The characters of a well-formed file's joint lines: decimal numbers separated by spaces or tabs."""


def _plain_int(text: str) -> int | None:
    """``_Lines.take_int``'s integer, or None where it would raise."""
    text = text.strip()
    if not (text.isascii() and text.lstrip("-").isdigit()):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _parse_well_formed(lines: list[str]) -> tuple[int, list[_Track]] | None:
    """``_parse``'s result for a file it accepts, with every joint value converted by one ``np.loadtxt`` (C
    parsing, correctly rounded as ``float``) instead of a ``split`` and ``np.array`` per body; None on anything
    unusual, which ``_parse`` then reads line by line to name the error. The same checks as ``_parse``: every joint
    line has 12 fields, each a plain decimal number (no ``nan``, ``inf``, ``_`` or other characters), finite in
    float32, with a tracking state of 0-2."""
    try:
        num_frames = _plain_int(lines[0])
        if num_frames is None or not 0 <= num_frames <= MAX_FRAMES:
            return None
        pos, bodies = 1, []  # bodies: (frame, body id, first joint line)
        for t in range(num_frames):
            num_bodies = _plain_int(lines[pos])
            if num_bodies is None or not 0 <= num_bodies <= MAX_BODIES_PER_FRAME:
                return None
            pos += 1
            for _ in range(num_bodies):
                info = lines[pos].split()
                if (len(info) != BODY_INFO_FIELDS or not (info[0].isascii() and info[0].isdigit())
                        or int(info[0]) >= 2**64 or _plain_int(lines[pos + 1]) != NUM_JOINTS):
                    return None
                bodies.append((t, int(info[0]), pos + 2))
                pos += 2 + NUM_JOINTS
    except IndexError:
        return None
    if pos > len(lines) or any(line.strip() for line in lines[pos:]):
        return None
    joint_lines = [line for _, _, start in bodies for line in lines[start:start + NUM_JOINTS]]
    if not _PLAIN_NUMBERS.fullmatch("\t".join(joint_lines)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "input contained no data"
            values = np.loadtxt(joint_lines, dtype=np.float64, ndmin=2)  # (lines, fields); skips blank lines
    except (ValueError, UserWarning):
        return None
    if values.shape != (len(joint_lines), JOINT_FIELDS):
        return None
    joints = values.reshape(len(bodies), NUM_JOINTS, JOINT_FIELDS)  # (bodies, 25, 12)
    if not (np.abs(joints) <= FLOAT32_MAX).all() or not np.isin(joints[:, :, 11], TRACKING_STATES).all():
        return None
    tracks: dict[int, _Track] = {}
    for (t, body_id, _), body_joints in zip(bodies, joints):
        track = tracks.setdefault(body_id, _Track(body_id, [], []))
        track.frames.append(t)
        track.joints.append(body_joints)
    return num_frames, list(tracks.values())


def _parse(path: Path) -> tuple[int, list[_Track]]:
    """Parse a ``.skeleton`` strictly into per-body tracks (memory: the records, never frames x bodies)."""
    text = read_bounded(path).decode("ascii", errors="replace")
    if not text.strip():
        raise SkeletonFormatError(f"{path}: line 1: empty skeleton file")
    cur = _Lines(path, text)
    parsed = _parse_well_formed(cur.lines)
    if parsed is not None:
        return parsed
    num_frames = cur.take_int("frame count", 0, MAX_FRAMES)
    tracks: dict[int, _Track] = {}
    for t in range(num_frames):
        num_bodies = cur.take_int(f"body count of frame {t}", 0, MAX_BODIES_PER_FRAME)
        for _ in range(num_bodies):
            info = cur.take(f"body-info line of frame {t}").split()
            if len(info) != BODY_INFO_FIELDS:
                raise cur.error(f"body-info line has {len(info)} fields, expected {BODY_INFO_FIELDS}")
            if not (info[0].isascii() and info[0].isdigit() and int(info[0]) < 2**64):
                raise cur.error(f"body id {info[0][:40]!r} is not an unsigned 64-bit integer")
            body_id = int(info[0])
            cur.take_int("joint count", NUM_JOINTS, NUM_JOINTS)
            start = cur.pos
            rows = [cur.take("joint line").split() for _ in range(NUM_JOINTS)]
            for k, row in enumerate(rows):
                if len(row) != JOINT_FIELDS:
                    raise cur.error(f"joint line has {len(row)} fields, expected {JOINT_FIELDS}", start + k + 1)
            try:
                joints = np.array(rows, dtype=np.float64)
            except ValueError:
                raise cur.error("non-numeric value in a joint line", start + 1) from None
            finite = (np.abs(joints) <= FLOAT32_MAX).all(axis=1)  # NaN compares False
            if not finite.all():
                raise cur.error("non-finite (NaN/inf, or beyond float32) joint value",
                                start + int(np.flatnonzero(~finite)[0]) + 1)
            states = joints[:, 11]
            bad = ~np.isin(states, TRACKING_STATES)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise cur.error(f"joint trackingState {states[k]:g} is not one of {TRACKING_STATES}", start + k + 1)
            track = tracks.setdefault(body_id, _Track(body_id, [], []))
            track.frames.append(t)
            track.joints.append(joints)
    trailing = [line for line in cur.lines[cur.pos:] if line.strip()]
    if trailing:
        raise cur.error(f"{len(trailing)} unexpected trailing lines after the last frame", cur.pos + 1)
    return num_frames, list(tracks.values())


def _dense(num_frames: int, slots: list[list[_Track]]) -> SkeletonSequence:
    """One slot per list of tracks (tracks merged into one slot never share a frame)."""
    shape = (num_frames, len(slots))
    joints3d = np.full(shape + (NUM_JOINTS, 3), np.nan, dtype=np.float32)
    color_xy = np.full(shape + (NUM_JOINTS, 2), np.nan, dtype=np.float32)
    tracking = np.zeros(shape + (NUM_JOINTS,), dtype=np.int8)
    for slot, members in enumerate(slots):
        for track in members:
            frames, joints = track.arrays()
            joints3d[frames, slot] = joints[:, :, 0:3]
            color_xy[frames, slot] = joints[:, :, 5:7]
            tracking[frames, slot] = joints[:, :, 11]
    body_ids = np.array([members[0].body_id for members in slots], dtype=np.uint64)
    return SkeletonSequence(num_frames, body_ids, joints3d, color_xy, tracking)


def read_skeleton(path: str | Path, max_bodies: int | None = None) -> SkeletonSequence:
    """Parse an NTU ``.skeleton`` file strictly.

    Args:
        path: the file (a regular file of at most ``skeleton_io.MAX_SKELETON_BYTES``).
        max_bodies: keep the actors ``select_bodies`` would keep (what the pipeline uses: memory stays bounded
            by the file's size); ``None`` keeps one slot per distinct body id, up to ``MAX_DENSE_SLOTS`` ids.

    Raises:
        SkeletonFormatError: not a regular file, too large, empty or truncated, wrong field or joint counts,
            values out of range (counts, body ids, coordinates beyond float32, tracking states other than 0-2),
            or too many distinct bodies for ``max_bodies=None``; the message names the file and the line.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    num_frames, tracks = _parse(path)
    if max_bodies is not None:
        return _dense(num_frames, _select(num_frames, tracks, max_bodies))
    if len(tracks) > MAX_DENSE_SLOTS:
        raise SkeletonFormatError(f"{path}: {len(tracks)} distinct body ids, more than {MAX_DENSE_SLOTS} to lay out "
                                  "one slot each; read it with max_bodies")
    return _dense(num_frames, [[track] for track in tracks])


def body_motion(joints: np.ndarray) -> float:
    """Motion of one body slot (T, J, 3): summed variance over the frames where it is present."""
    present = np.isfinite(joints[:, 0, 0])
    if present.sum() < 2:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        return float(joints[present].var(axis=0).sum())


def _select(num_frames: int, tracks: list[_Track], max_bodies: int) -> list[list[_Track]]:
    """The body selection of ``select_bodies`` over sparse tracks: the members of each kept actor."""
    order = sorted(range(len(tracks)), key=lambda m: -tracks[m].motion())
    actors: list[list[_Track]] = []
    occupied: list[np.ndarray] = []
    for m in order:
        present = np.zeros(num_frames, dtype=bool)
        present[tracks[m].frames] = True
        for a, frames in enumerate(occupied):
            if not (frames & present).any():
                actors[a].append(tracks[m])
                occupied[a] = frames | present
                break
        else:
            if len(actors) < max_bodies:
                actors.append([tracks[m]])
                occupied.append(present)
    return actors


def select_bodies(seq: SkeletonSequence, max_bodies: int = 2) -> SkeletonSequence:
    """Keep at most ``max_bodies`` actors, the standard way (as CTR-GCN/SGN preprocessing does).

    Body slots are ranked by motion (summed joint variance over time), largest first. Actor 1 is the largest-motion
    body; each further body is merged into the first actor whose frames it does not overlap (Kinect often gives
    one person a new id after losing track), otherwise it starts a new actor while fewer than ``max_bodies``
    exist, otherwise it is dropped. The order is stable: ties in motion keep the order of first appearance.
    ``read_skeleton(path, max_bodies)`` does the same while reading.
    """
    tracks = []
    for m in range(seq.num_bodies):
        frames = np.flatnonzero(np.isfinite(seq.joints[:, m, 0, 0]))
        joints = np.zeros((len(frames), NUM_JOINTS, JOINT_FIELDS))
        joints[:, :, 0:3] = seq.joints[frames, m]
        joints[:, :, 5:7] = seq.color_xy[frames, m]
        joints[:, :, 11] = seq.tracking[frames, m]
        tracks.append(_Track(int(seq.body_ids[m]), frames.tolist(), list(joints)))
    return _dense(seq.num_frames, _select(seq.num_frames, tracks, max_bodies))


# ----------------------------------------------------------------------------------------------------------
# the dataset specs: the reader, id parser and scanner the pipeline calls


def check_tracks(path: Path, num_frames: int, tracks: list[_Track]) -> None:
    """Refuse degenerate body tracks: more than ``NOISE_TRACK_FRAMES`` frames with bodies, none of the body ids
    lasting longer than that (every frame a new body id, or only 1-frame tracks).

    Raises:
        SkeletonFormatError: naming the file, the ids and the longest track.
    """
    longest = max((len(track.frames) for track in tracks), default=0)
    with_bodies = len({t for track in tracks for t in track.frames})
    if with_bodies > NOISE_TRACK_FRAMES and longest <= NOISE_TRACK_FRAMES:
        raise SkeletonFormatError(
            f"{path}: degenerate body tracks: {len(tracks)} distinct body ids over {with_bodies} of {num_frames} "
            f"frames, the longest lasting {longest} (a body id of <= {NOISE_TRACK_FRAMES} frames is noise): nobody "
            "is tracked")


def load_clip(path: Path, video_size: tuple[int, int]) -> SkeletonClip:
    """A ``.skeleton`` file as a ``SkeletonClip``: the actors ``select_bodies`` keeps, colour coordinates rescaled
    from 1920x1080 to ``video_size`` (width, height); degenerate tracks are refused (``check_tracks``)."""
    num_frames, tracks = _parse(path)
    check_tracks(path, num_frames, tracks)
    seq = _dense(num_frames, _select(num_frames, tracks, MAX_BODIES))
    scale = np.array([video_size[0] / COLOR_FRAME_SIZE[0], video_size[1] / COLOR_FRAME_SIZE[1]], dtype=np.float32)
    return SkeletonClip(pad_bodies(seq.joints), pad_bodies(seq.color_xy * scale))


def sample_info(variant: NtuVariant, sample_id: str) -> SampleInfo:
    """What an NTU id says: action, performer, camera (the manifest's ``view``), setup and the protocol splits.

    Raises:
        ValueError: not an NTU id, or one of the other NTU (setup or action outside ``variant``).
    """
    sid = parse_sample_id(sample_id)
    if not variant.contains(sid):
        raise ValueError(f"{sample_id!r} is not in this NTU: setups S{variant.setups[0]:03d}-S{variant.setups[-1]:03d}"
                         f", actions A001-A{variant.num_actions:03d}")
    action = NTU_CLASSES[sid.action - 1] if 1 <= sid.action <= len(NTU_CLASSES) else f"A{sid.action:03d}"
    return SampleInfo(action, sid.subject, sid.camera, variant.splits(sid), {"setup": sid.setup})


def _file_kind(path: Path) -> str | None:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if path.suffix == ".skeleton":
        return "skeleton"
    return "wrong_case" if path.suffix.lower() == ".skeleton" else None


def find_samples(variant: NtuVariant, root: Path, report: ScanReport) -> dict[str, SampleFiles]:
    """Pair ``*_rgb.avi`` (any video suffix) with ``.skeleton`` files by the id in their names, anywhere under
    ``root``; ids of the other NTU (setup or action out of range) are counted as outside the dataset."""

    def sample_of(path: Path) -> str | None:
        sid = parse_sample_id(path.name)
        return str(sid) if variant.contains(sid) else None

    return pair_files(root, report, _file_kind, sample_of)


def _spec(name: str) -> DatasetSpec:
    variant = VARIANTS[name]
    classes = NTU_CLASSES[:variant.num_actions]
    return DatasetSpec(
        name, classes, {protocol: classes for protocol in variant.protocols}, NTU_JOINTS, zero_based(_NTU_EDGES_1B),
        centre_joint=1, left_right=left_right_pairs(NTU_JOINTS), t_p=20, metric="top1", frame_size=COLOR_FRAME_SIZE,
        read_skeleton=load_clip, parse_sample_id=partial(sample_info, variant),
        find_samples=partial(find_samples, variant), extra_columns=("setup",), read_missing_list=read_missing_list,
        pose_bound=POSE_BOUND_M, max_length_ratio=MAX_LENGTH_RATIO)


SPECS: tuple[DatasetSpec, ...] = tuple(_spec(name) for name in VARIANTS)
