"""Poses in and out in pyskl's / mmaction2's skeleton annotation format (a pickled dict).

``python -m pipeline.pyskl --manifest manifests/ntu60.csv --out ntu60.pkl [--cache DIR]`` (``make export-pyskl``)
writes::

    {"split": {"<protocol>_<split>": [frame_dir, ...], ...},   # plus pyskl's own names, see split_names()
     "annotations": [{"frame_dir": sample_id, "label": int, "img_shape": (H, W), "original_shape": (H, W),
                      "total_frames": T, "keypoint": float32 (M, T, V, 3)}, ...]}

``keypoint`` holds the 3D joints (the skeleton's own units, metres for NTU) of the M <= 2 bodies present in the
sample (pyskl's ``ntu60_3danno.pkl`` layout: no ``keypoint_score`` for 3D joints), zeros where a body is absent
in a frame. Without ``--cache`` every frame of the skeleton file is written, bodies chosen as the cache chooses
them; with ``--cache`` the cache's own poses are written (``t_p`` per clip, centred, clips one after the other).

``make manifest … POSES=x.pkl`` reads such a pickle (``attach_poses``) and converts the poses of the manifest's
samples, matched by ``sample_id`` == ``frame_dir``, into ``<manifest>.poses.h5`` beside the manifest; the cache then
takes each sample's 3D poses from there (``read_pose_file``) instead of the skeleton file. The person box of the crop
still comes from the skeleton file, as 3D joints carry no image coordinates.

A pickle can run code when it is loaded, so a user's file is read with ``RestrictedUnpickler``: only builtin
containers and scalars and numpy arrays/dtypes/scalars can be built; anything else is refused.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import ntu, nucla, poses, smarthome
from pipeline.cache import CacheError, open_cache
from pipeline.config import file_sha256
from pipeline.contracts import MAX_BODIES, PROBLEM_COLUMN
from pipeline.datasets import get_dataset
from pipeline.manifest import read_manifest, read_manifest_root

log = logging.getLogger(__name__)

POSES_PATH = "poses_path"
POSES_SHA256 = "poses_sha256"
"""Manifest columns of a pose source: the absolute path of the pose file converted from the pickle, and the pickle's
sha256 (so the manifest's hash, and with it the cache's folder name, changes when the poses do)."""
PYSKL_SPLIT_NAMES: dict[str, dict[str, str]] = {"ntu60": {"cs": "xsub", "cv": "xview"},
                                                "ntu120": {"cs1": "xsub", "cs2": "xset"}}
"""pyskl's names of the NTU protocols; pyskl calls the test split ``val``."""
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
                                      "str", "bytes", "bytearray", "bool", "slice", "range")),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})
"""Every global a pose pickle may name: what numpy 1 and 2 pickle arrays with (``_frombuffer`` for protocol 5,
``_codecs.encode`` for the bytes of protocol 2; an object array's items are unpickled by this same filter)."""


def frame_size(dataset: str) -> tuple[int, int]:
    """(width, height) of a dataset's videos, the frame its 2D joints are given in."""
    if dataset.startswith("ntu"):
        return ntu.COLOR_FRAME_SIZE
    return {"smarthome": smarthome.FRAME_SIZE, "nucla": nucla.FRAME_SIZE}[dataset]


# ----------------------------------------------------------------------------------------------------------
# loading a user's pickle


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers/scalars and numpy arrays (no code runs on load)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a pose pickle may hold only builtin "
                                         "containers and scalars and numpy arrays")
        return super().find_class(module, name)


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler``.

    Raises:
        pickle.UnpicklingError: the file names anything else than the allowed types, or is not a pickle.
    """
    data = Path(path).read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as err:
        raise pickle.UnpicklingError(f"{path}: not a readable pose pickle ({type(err).__name__}: {err})") from err


def read_annotations(path: str | Path) -> dict[str, dict[str, Any]]:
    """The annotations of a pyskl/mmaction2 pickle by ``frame_dir``, checked.

    Accepts the dict format (``{"split": …, "annotations": [...]}``) and the older bare list of annotations.

    Raises:
        ValueError: the structure is not pyskl's (message names the first bad entry).
        pickle.UnpicklingError: see ``restricted_load``.
    """
    data = restricted_load(path)
    annotations = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: expected a dict with an 'annotations' list (or a list), got {type(data).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "frame_dir" not in ann or "keypoint" not in ann:
            raise ValueError(f"{path}: annotation {i} is not a dict with frame_dir and keypoint")
        keypoint = ann["keypoint"]
        if not isinstance(keypoint, np.ndarray) or keypoint.ndim != 4:
            raise ValueError(f"{path}: {ann['frame_dir']}: keypoint must be an (M, T, V, C) array, got "
                             f"{getattr(keypoint, 'shape', type(keypoint).__name__)}")
        out[str(ann["frame_dir"])] = ann
    return out


def keypoints_to_joints(keypoint: np.ndarray, num_joints: int) -> np.ndarray:
    """pyskl (M, T, V, 3) keypoints -> (T, 2, V, 3) float32 joints, NaN where a body is absent (all zero).

    Raises:
        ValueError: not 3D joints, or V differs from the dataset's joint count.
    """
    m, t, v, c = keypoint.shape
    if c != 3 or v != num_joints:
        raise ValueError(f"keypoint is (M={m}, T={t}, V={v}, C={c}); the pose source needs 3D joints (C=3) with "
                         f"V={num_joints} joints of this dataset")
    joints = np.full((t, MAX_BODIES, v, 3), np.nan, dtype=np.float32)
    kept = np.asarray(keypoint[:MAX_BODIES], dtype=np.float32).transpose(1, 0, 2, 3)  # (T, M', V, 3)
    joints[:, :kept.shape[1]] = kept
    absent = ~np.any(joints != 0, axis=(2, 3)) | ~np.isfinite(joints).all(axis=(2, 3))  # (T, 2)
    joints[absent] = np.nan
    return joints


def write_pose_file(annotations: Mapping[str, Mapping[str, Any]], sample_ids: Iterable[str], num_joints: int,
                    out: str | Path, source_sha256: str) -> dict[str, str]:
    """Convert the annotations of ``sample_ids`` into the pose file the cache reads (``read_pose_file``).

    The file holds ``joints`` float32 (sum of T, 2, J, 3), NaN where a body is absent, with ``sample_ids`` and
    ``offsets`` (start, stop) per sample, and the source pickle's sha256 as an attr; it is written atomically.
    A decode worker then reads one sample's rows instead of loading the whole pickle.

    Returns:
        sample id -> why it has no poses (not in the pickle, or keypoints that are not this dataset's 3D joints).
    """
    problems: dict[str, str] = {}
    ids, blocks = [], []
    for sample_id in sample_ids:
        if sample_id not in annotations:
            problems[sample_id] = "no poses in the pose pickle"
            continue
        try:
            blocks.append(keypoints_to_joints(annotations[sample_id]["keypoint"], num_joints))
            ids.append(sample_id)
        except ValueError as err:
            problems[sample_id] = f"poses in the pose pickle: {err}"
    stops = np.cumsum([len(b) for b in blocks], dtype=np.int64)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    joints = np.concatenate(blocks) if blocks else np.zeros((0, MAX_BODIES, num_joints, 3))  # (sum T, 2, J, 3)
    with h5py.File(tmp, "w") as f:
        f.attrs["source_sha256"] = source_sha256
        f.create_dataset("joints", data=joints, dtype=np.float32)
        f.create_dataset("sample_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("offsets", data=np.stack([stops - [len(b) for b in blocks], stops], axis=1).reshape(-1, 2))
    tmp.replace(out)
    return problems


@lru_cache(maxsize=2)
def _pose_index(path: str, source_sha256: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """sample id -> (start, stop) rows of a pose file, once per process and file version; checks that it is the
    manifest's version."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("source_sha256") != source_sha256:
            raise ValueError(f"{path} was rewritten from another pose pickle since the manifest was written; "
                             "rerun `make manifest … POSES=`")
        return {s: (int(a), int(b)) for s, (a, b) in zip(f["sample_ids"].asstr()[()], f["offsets"][()])}


def read_pose_file(path: str, source_sha256: str, sample_id: str) -> np.ndarray:
    """The (T, 2, J, 3) joints of ``sample_id`` from a pose file (NaN where a body is absent).

    Raises:
        KeyError: no poses for ``sample_id``. ValueError: the file is not the manifest's version.
    """
    start, stop = _pose_index(path, source_sha256, os.stat(path).st_mtime_ns)[sample_id]
    with h5py.File(path, "r") as f:
        return f["joints"][start:stop]


def attach_poses(df: pd.DataFrame, pickle_path: str | Path, pose_file: str | Path) -> pd.DataFrame:
    """Take the manifest's 3D poses from a pyskl pickle, matched by ``sample_id`` == ``frame_dir``.

    The poses are converted once into ``pose_file`` (``write_pose_file``) and every row points at it; a row
    without usable poses in the pickle gets a ``problem``.

    Raises:
        ValueError, pickle.UnpicklingError: see ``read_annotations``.
    """
    pickle_path = Path(pickle_path)
    annotations = read_annotations(pickle_path)
    sha = file_sha256(pickle_path)
    df = df.copy()
    num_joints = get_dataset(df["dataset"].iloc[0]).num_joints if len(df) else 0
    problems = write_pose_file(annotations, df["sample_id"], num_joints, pose_file, sha)
    df[POSES_PATH] = str(Path(pose_file).resolve())
    df[POSES_SHA256] = sha
    df[PROBLEM_COLUMN] = ["; ".join(p for p in (problem, problems.get(s, "")) if p)
                          for s, problem in zip(df["sample_id"], df[PROBLEM_COLUMN])]
    log.info("%s: poses for %d of %d samples (%d frame_dirs of the pickle match no sample) written to %s",
             pickle_path.name, len(df) - len(problems), len(df), len(set(annotations) - set(df["sample_id"])),
             pose_file)
    return df


# ----------------------------------------------------------------------------------------------------------
# export


def split_names(dataset: str, protocol: str, split: str) -> list[str]:
    """The ``split`` keys a (protocol, split) gets: ours (``cs_train``) and, for NTU, pyskl's (``xsub_train``)."""
    names = [f"{protocol}_{split}"]
    alias = PYSKL_SPLIT_NAMES.get(dataset, {}).get(protocol)
    if alias:
        names.append(f"{alias}_{'val' if split == 'test' else split}")
    return names


def joints_to_keypoints(joints: np.ndarray) -> np.ndarray:
    """(T, 2, V, 3) joints, NaN where absent -> pyskl (M, T, V, 3) float32, zeros where absent, the bodies never
    present dropped (at least one kept)."""
    present = np.isfinite(joints).all(axis=(2, 3))  # (T, 2)
    bodies = [b for b in range(joints.shape[1]) if present[:, b].any()] or [0]
    out = np.nan_to_num(joints[:, bodies].transpose(1, 0, 2, 3), nan=0.0)  # (M, T, V, 3)
    return np.ascontiguousarray(out, dtype=np.float32)


def _annotation(sample_id: str, label: int, dataset: str, keypoint: np.ndarray) -> dict[str, Any]:
    width, height = frame_size(dataset)
    return {"frame_dir": sample_id, "label": int(label), "img_shape": (height, width),
            "original_shape": (height, width), "total_frames": int(keypoint.shape[1]), "keypoint": keypoint}


def _skeleton_annotation(row: dict[str, Any], data_root: Path) -> dict[str, Any] | str:
    """The annotation of one manifest row from its skeleton file, or why there is none."""
    spec = get_dataset(row["dataset"])
    if not row["skeleton_path"]:
        return "no skeleton file"
    try:
        skeleton = poses.load_skeleton(spec, data_root / row["skeleton_path"], frame_size(spec.name))
    except (ValueError, OSError) as err:  # SkeletonFormatError is a ValueError
        return str(err)
    if skeleton.num_frames == 0 or not np.isfinite(skeleton.joints3d).any():
        return "no body in any frame"
    return _annotation(row["sample_id"], row["label"], spec.name, joints_to_keypoints(skeleton.joints3d))


def _from_skeletons(df: pd.DataFrame, data_root: Path, workers: int) -> Iterable[dict[str, Any]]:
    rows = df.to_dict("records")
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        results = (pool.map(_skeleton_annotation, rows, [data_root] * len(rows), chunksize=32) if pool
                   else (_skeleton_annotation(row, data_root) for row in rows))
        for row, result in zip(rows, tqdm(results, total=len(rows), desc="export", unit="sample")):
            if isinstance(result, str):
                log.warning("skipped %s: %s", row["sample_id"], result)
            else:
                yield result


def _from_cache(df: pd.DataFrame, cache_path: str | Path) -> Iterable[dict[str, Any]]:
    dataset = df["dataset"].iloc[0]
    with open_cache(cache_path) as reader:
        rows_of: dict[str, list[int]] = {}
        for i, sample_id in enumerate(reader.sample_ids):
            rows_of.setdefault(str(sample_id), []).append(i)
        for row in tqdm(df.to_dict("records"), desc="export", unit="sample"):
            rows = sorted(rows_of.get(row["sample_id"], []), key=lambda i: reader.clip_index[i])
            if not rows:
                continue
            clips = np.concatenate([reader.read_poses(i) for i in rows], axis=-1)  # (2, 3, J, K * t_p)
            joints = clips.transpose(3, 0, 2, 1).copy()  # (K * t_p, 2, J, 3)
            joints[~np.any(joints != 0, axis=(2, 3))] = np.nan  # the cache zero-pads absent bodies
            yield _annotation(row["sample_id"], row["label"], dataset, joints_to_keypoints(joints))


def export(manifest: str | Path, out: str | Path, *, data_root: str | Path | None = None,
           cache: str | Path | None = None, workers: int = 1) -> dict[str, Any]:
    """Write the poses of a manifest's samples as a pyskl annotation pickle (see the module docstring).

    ``workers`` processes read the skeleton files (not used with ``cache``).

    Samples whose label is not in the dataset's class list, or whose skeleton cannot be read (or, with ``cache``,
    that are not in the cache) are left out and logged.

    Returns:
        The dict written.
    """
    df = read_manifest(manifest)
    df = df[df["label"] >= 0]
    if df.empty:
        raise ValueError(f"{manifest} has no sample with a label")
    if cache:
        annotations = list(_from_cache(df, cache))
    else:
        root = Path(data_root) if data_root else read_manifest_root(manifest)
        annotations = list(_from_skeletons(df, root, workers))
    exported = {a["frame_dir"] for a in annotations}
    spec = get_dataset(df["dataset"].iloc[0])
    split: dict[str, list[str]] = {}
    for protocol in spec.protocols:
        for value in ("train", "val", "test"):
            ids = [s for s, v in zip(df["sample_id"], df[protocol]) if v == value and s in exported]
            if ids:
                for name in split_names(spec.name, protocol, value):
                    split[name] = ids
    data = {"split": split, "annotations": annotations}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(out)
    log.info("wrote %s: %d of %d samples", out, len(annotations), len(df))
    return data


def describe(data: Mapping[str, Any]) -> str:
    """One line per split and a line on the annotations, for the CLI."""
    lines = [f"{len(data['annotations'])} annotations"]
    lines += [f"  split {name}: {len(ids)}" for name, ids in data["split"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pyskl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="the pickle to write")
    parser.add_argument("--cache", help="export the cache's poses (t_p per clip) instead of the skeleton files")
    parser.add_argument("--data-root", help="folder the manifest's paths are relative to (default: recorded)")
    parser.add_argument("--workers", type=int, default=1, help="processes reading the skeleton files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        data = export(args.manifest, args.out, data_root=args.data_root, cache=args.cache, workers=args.workers)
    except (ValueError, FileNotFoundError, CacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe(data))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
