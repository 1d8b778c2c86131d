"""What the pipeline knows about one dataset: its facts as data and its behaviour as functions, on ``DatasetSpec``.

A dataset module (``pipeline/datasets/ntu.py``, ``smarthome.py``, ``nucla.py``) builds its spec(s) from this class and the
registry (``pipeline/datasets/registry.py``) lists them. Nothing else branches on a dataset's name: the manifest scanner, the
pose loader, the validation carve and the exporters call the functions a spec carries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.datasets.files import SampleFiles, ScanReport
from pipeline.datasets.skeleton_io import SkeletonClip


@dataclass(frozen=True)
class SampleInfo:
    """What a sample id says about its sample.

    Attributes:
        action: class name (may be outside the dataset's classes, e.g. Smarthome ``Pour.Fromcup``).
        subject: the performer.
        view: the camera / view.
        splits: protocol -> ``train``/``val``/``test``/'' (not in the protocol), one entry per protocol.
        columns: the dataset's extra manifest columns (``DatasetSpec.extra_columns``), e.g. NTU ``setup``.
    """

    action: str
    subject: int
    view: int
    splits: dict[str, str]
    columns: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline needs to know about one dataset.

    Attributes:
        name: registry key (``ntu60``, ``ntu120``, ``smarthome``, ``nucla``).
        classes: the full class list; the manifest ``label`` column indexes it.
        protocols: protocol name -> its class list (labels are 0-based in that list).
        joints: joint names in file order.
        edges: 0-based undirected bones (the skeleton graph as data).
        centre_joint: index of the spine/pelvis joint poses are translated to.
        left_right: pairs of (left, right) joint indices, swapped by a horizontal flip.
        t_p: number of poses kept per clip (paper: 20/20/30/5).
        metric: headline metric, ``top1`` or ``mean_class`` (Smarthome).
        frame_size: (width, height) of the frame the skeleton files' 2D joints are given in.
        read_skeleton: ``(path, video_size) -> SkeletonClip``: a sample's skeleton file (or folder) with its image
            coordinates rescaled to a ``video_size`` (width, height) video; raises ``SkeletonFormatError`` for a
            malformed file, OSError for one that cannot be opened.
        parse_sample_id: ``sample_id -> SampleInfo``; raises ValueError for an id of another form.
        find_samples: ``(root, report) -> {sample_id: files}``: which files under a resolved DATA_ROOT make each
            sample (see ``sample_files.pair_files``).
        extra_columns: manifest columns of this dataset besides the contract's (filled from ``SampleInfo.columns``).
        read_missing_list: reads an official list of samples known to be broken (their rows get a ``problem``);
            ``None`` when the dataset has none.
        pose_bound: largest magnitude a 3D joint coordinate may have, in ``pose_units`` (a dataset fact: the sensor's
            range, generously); a sample beyond it is refused (``input_bounds.pose_problem``).
        pose_units: the unit of the 3D joints, for messages (``m``).
        max_length_ratio: largest ratio between a skeleton's frame count and its video's (either way) for one
            recording (``input_bounds.length_problem``); ``None`` when the two need not match (resampled skeletons).

    Two specs are equal when their facts are (the functions are not compared: a spec sent to another process
    stays equal to the registry's).
    """

    name: str
    classes: tuple[str, ...]
    protocols: dict[str, tuple[str, ...]]
    joints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    centre_joint: int
    left_right: tuple[tuple[int, int], ...]
    t_p: int
    metric: str
    frame_size: tuple[int, int]
    read_skeleton: Callable[[Path, tuple[int, int]], SkeletonClip] = field(compare=False)
    parse_sample_id: Callable[[str], SampleInfo] = field(compare=False)
    find_samples: Callable[[Path, ScanReport], dict[str, SampleFiles]] = field(compare=False)
    extra_columns: tuple[str, ...] = ()
    read_missing_list: Callable[[Path], set[str]] | None = field(default=None, compare=False)
    pose_bound: float = math.inf
    pose_units: str = "m"
    max_length_ratio: float | None = None

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def protocol_classes(self, protocol: str) -> tuple[str, ...]:
        """Return the class list of ``protocol`` or raise a clear error."""
        if protocol not in self.protocols:
            raise ValueError(f"{self.name} has no protocol {protocol!r}; choose one of {sorted(self.protocols)}")
        return self.protocols[protocol]


def zero_based(edges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Edges published 1-based, as 0-based joint indices."""
    return tuple((a - 1, b - 1) for a, b in edges)


def left_right_pairs(joints: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Pair joints whose names differ only by Left/Right (or L_/R_)."""
    pairs = []
    for i, name in enumerate(joints):
        for left, right in (("Left", "Right"), ("L_", "R_")):
            if left in name:
                j = joints.index(name.replace(left, right))
                pairs.append((i, j))
    return tuple(pairs)
