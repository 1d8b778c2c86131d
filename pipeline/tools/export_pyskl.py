"""Poses out in pyskl's / mmaction2's skeleton annotation format (a pickled dict).

``python -m pipeline.tools.export_pyskl --manifest manifests/ntu60.csv --out ntu60.pkl [--cache-dir DIR]`` (``make export-pyskl``)
writes::

    {"split": {"<protocol>_<split>": [frame_dir, ...], ...},   # plus pyskl's own names, see split_names()
     "annotations": [{"frame_dir": sample_id, "label": int, "img_shape": (H, W), "original_shape": (H, W),
                      "total_frames": T, "keypoint": float32 (M, T, V, 3)}, ...]}

``keypoint`` holds the 3D joints (the skeleton's own units, metres for NTU) of the M <= 2 bodies present in the
sample (pyskl's ``ntu60_3danno.pkl`` layout: no ``keypoint_score`` for 3D joints), zeros where a body is absent
in a frame. Without ``--cache-dir`` every frame of the skeleton file is written, bodies chosen as the cache chooses
them; with ``--cache-dir`` the cache's own poses are written (``t_p`` per clip, centred, clips one after the other).

Reading such a pickle back (``make manifest … POSES=x.pkl``) is ``pipeline/datasets/pose_pickle.py``.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.cache.reader import CacheError, open_cache
from pipeline.datasets import poses
from pipeline.datasets.manifest import read_manifest, resolve_data_root
from pipeline.datasets.registry import get_dataset
from pipeline.utils.cli import run_cli
from pipeline.utils.fileio import atomic_path
from pipeline.utils.progress import show_progress

log = logging.getLogger(__name__)

PYSKL_SPLIT_NAMES: dict[str, dict[str, str]] = {"ntu60": {"cs": "xsub", "cv": "xview"},
                                                "ntu120": {"cs1": "xsub", "cs2": "xset"}}
"""pyskl's names of the NTU protocols; pyskl calls the test split ``val``."""



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
    width, height = get_dataset(dataset).frame_size
    return {"frame_dir": sample_id, "label": int(label), "img_shape": (height, width),
            "original_shape": (height, width), "total_frames": int(keypoint.shape[1]), "keypoint": keypoint}


def _skeleton_annotation(row: dict[str, Any], data_root: Path) -> dict[str, Any] | str:
    """The annotation of one manifest row from its skeleton file, or why there is none."""
    spec = get_dataset(row["dataset"])
    if not row["skeleton_path"]:
        return "no skeleton file"
    try:
        skeleton = poses.load_skeleton(spec, data_root / row["skeleton_path"], spec.frame_size)
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
        for row, result in zip(rows, show_progress(results, "export", total=len(rows), unit="sample")):
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
        for row in show_progress(df.to_dict("records"), "export", unit="sample"):
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
        annotations = list(_from_skeletons(df, resolve_data_root(manifest, data_root), workers))
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
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    log.info("wrote %s: %d of %d samples", out, len(annotations), len(df))
    return data


def describe(data: Mapping[str, Any]) -> str:
    """One line per split and a line on the annotations, for the CLI."""
    lines = [f"{len(data['annotations'])} annotations"]
    lines += [f"  split {name}: {len(ids)}" for name, ids in data["split"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.export_pyskl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="the pickle to write")
    parser.add_argument("--cache-dir", dest="cache", help="export the cache's poses (t_p per clip) instead of the skeleton files")
    parser.add_argument("--data-root", help="folder the manifest's paths are relative to (default: recorded)")
    parser.add_argument("--workers", type=int, default=1, help="processes reading the skeleton files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def work() -> str:
        data = export(args.manifest, args.out, data_root=args.data_root, cache=args.cache, workers=args.workers)
        return f"{describe(data)}\nwrote {args.out}"

    return run_cli(work, (ValueError, FileNotFoundError, CacheError))


if __name__ == "__main__":
    sys.exit(main())
