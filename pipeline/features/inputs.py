"""Raw files in for ``make predict`` / ``make explain``: a video, a folder or a manifest, as manifest rows.

``prepare_sample`` reads manifest rows (paths relative to a data root), so every input becomes one: a manifest
is read as it is (``DATA_ROOT`` or its side file gives the root); a folder is scanned with the dataset's own
scanner (``pipeline.datasets.manifest.scan``: official file names, videos paired with skeletons, a ``problem``
for a video without one); a single video takes ``SKELETON=`` or, without it, the skeleton the dataset's scanner
pairs with it in the video's folder. Rows outside a manifest carry ``label = -1`` unless the file name tells the
class (NTU ids do); a prediction never needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.contracts import PROBLEM_COLUMN
from pipeline.datasets import manifest

UNKNOWN_LABEL = -1
"""``label`` of an input whose class its name does not tell."""


@dataclass(frozen=True)
class RawInputs:
    """What ``find_inputs`` found.

    Attributes:
        data_root: the folder the rows' paths are relative to.
        rows: manifest-like rows (``sample_id``, ``video_path``, ``skeleton_path``, ``label``, ``action``, maybe
            ``problem``), in a stable order.
        kind: ``video``, ``folder`` or ``manifest``.
    """

    data_root: Path
    rows: tuple[dict, ...]
    kind: str


def _stem(video: Path) -> str:
    name = video.stem
    return name[:-4] if name.endswith("_rgb") else name


def _one_video(dataset: str, video: Path, skeleton: Path | None) -> RawInputs:
    """A video with ``skeleton``, or with the one the dataset's scanner pairs with it in its folder."""
    video = video.resolve()
    if skeleton is None:
        df, _ = manifest.scan(dataset, video.parent)
        match = df[df["video_path"].map(lambda p: bool(p) and (video.parent / p).resolve() == video)]
        if len(match):
            row = match.iloc[0].to_dict()
            if row.get(PROBLEM_COLUMN):
                row[PROBLEM_COLUMN] += f" in {video.parent} (pass SKELETON=<file>)"
            return RawInputs(video.parent, (row,), "video")
        row = {"sample_id": _stem(video), "video_path": video.name, "skeleton_path": "", "label": UNKNOWN_LABEL,
               "action": "", PROBLEM_COLUMN: f"no {dataset} skeleton pairs with {video.name} in {video.parent} "
                                             "(pass SKELETON=<file>)"}
        return RawInputs(video.parent, (row,), "video")
    skeleton = skeleton.resolve()
    root = Path(os.path.commonpath([video.parent, skeleton.parent]))
    row = {"sample_id": _stem(video), "video_path": str(video.relative_to(root)),
           "skeleton_path": str(skeleton.relative_to(root)), "label": UNKNOWN_LABEL, "action": ""}
    if not skeleton.is_file():
        row[PROBLEM_COLUMN] = f"skeleton {skeleton} does not exist"
    return RawInputs(root, (row,), "video")


def find_inputs(dataset: str, source: str | os.PathLike, skeleton: str | os.PathLike | None = None,
                data_root: str | os.PathLike | None = None) -> RawInputs:
    """The samples of a video file, a folder or a manifest CSV, as manifest rows.

    Args:
        dataset: registry name (the run's dataset): its scanner and skeleton reader.
        source: a video file, a folder of the dataset's files, or a manifest ``.csv``.
        skeleton: with a video, its skeleton file (default: the one the dataset's scanner pairs with it).
        data_root: with a manifest, where its paths start (default: its side file).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``skeleton`` given with a folder or a manifest.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"INPUT {source} does not exist")
    if skeleton is not None and (path.is_dir() or path.suffix.lower() == ".csv"):
        raise ValueError("SKELETON= goes with a single video, not with a folder or a manifest")
    if path.is_dir():
        df, _ = manifest.scan(dataset, path)
        if not len(df):
            raise FileNotFoundError(f"INPUT {source}: no {dataset} samples found (official file names expected)")
        return RawInputs(path.resolve(), tuple(df.to_dict("records")), "folder")
    if path.suffix.lower() == ".csv":
        df = manifest.read_manifest(path)
        root = manifest.resolve_data_root(path, Path(data_root) if data_root else None)
        return RawInputs(root, tuple(df.to_dict("records")), "manifest")
    return _one_video(dataset, path, Path(skeleton) if skeleton is not None else None)
