"""Each cached clip's 2D joints in its crop's coordinates: where the pose's joints lie on the I3D feature grid.

The joint-anchored spatial attention (``VPNConfig.spatial_attention="joints"``) needs, for every clip, the image
position of every joint at the clip's ``t_p`` pose times, expressed in the clip's crop box: ``(x - x0) / (x1 - x0)``
and ``(y - y0) / (y1 - y0)``, so (0, 0) is the crop's top-left corner and (1, 1) its bottom-right, whatever the
crop's size in pixels. The positions come from the skeleton files (NTU colorX/colorY, Smarthome LCR-Net 2D, N-UCLA
projected joints: ``SkeletonClip.joints2d`` in the video's pixels) at the frames the cache sampled
(``frame_indices``), inside the boxes the cache cropped (``boxes``); the pose times are the ones
``pipeline.datasets.poses.clip_poses`` keeps, and bodies are in the same slots as the cached poses.

They live in a side file of the cache folder, ``crop_joints.h5`` (dataset ``crop_joints``, float32
``(N, 2 bodies, 2 = (x, y), J, t_p)``, NaN for a body absent from the whole clip; a body missing at some times
takes its nearest present time, as the poses do), so a cache built before this existed gains them without
re-running I3D: ``make joints CACHE=<cache dir> MANIFEST=<csv> [DATA_ROOT=…]`` (``make demo`` and ``make
fidelity`` run it after the cache build). The file records the cache rows it was computed for (their sample ids
and frame indices' digest); a reader refuses a side file that belongs to another cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import h5py
import numpy as np

from pipeline.cache.layout import CacheError, resolve
from pipeline.cache.provenance import utc_now
from pipeline.cache.reader import open_cache
from pipeline.datasets import poses as pose_lib
from pipeline.datasets.manifest import read_manifest, resolve_data_root
from pipeline.datasets.registry import get_dataset
from pipeline.datasets.skeleton_io import SkeletonFormatError
from pipeline.utils.fileio import atomic_path
from pipeline.video.reader import DecodeError, open_video

log = logging.getLogger(__name__)

CROP_JOINTS_NAME = "crop_joints.h5"
DATASET_NAME = "crop_joints"


def clip_crop_joints(joints2d: np.ndarray, box: np.ndarray, t_p: int) -> np.ndarray:
    """One clip's joints at its ``t_p`` pose times, in its crop box's unit square.

    Args:
        joints2d: (clip_len, 2, J, 2) video-pixel joints at the clip's sampled frames, NaN where absent.
        box: (4,) crop box (x0, y0, x1, y1) in the same pixels.
        t_p: pose times kept (``pipeline.datasets.poses.subsample_positions``).

    Returns:
        float32 (2, 2, J, t_p): bodies, (x, y), joints, times; NaN for a body absent from all ``t_p`` times.
    """
    picked = joints2d[pose_lib.subsample_positions(len(joints2d), t_p)]  # (t_p, 2, J, 2)
    present = np.isfinite(picked).all(axis=(2, 3)).any(axis=0)  # (2,)
    bodies = np.stack([pose_lib.fill_from_nearest(picked[:, b]) for b in range(picked.shape[1])], axis=1)
    x0, y0, x1, y1 = (float(v) for v in box)
    scale = np.array([max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)], dtype=np.float64)
    unit = (bodies - np.array([x0, y0])) / scale  # (t_p, 2, J, 2)
    unit[:, ~present] = np.nan
    return np.ascontiguousarray(unit.transpose(1, 3, 2, 0), dtype=np.float32)  # (2, 2, J, t_p)


def rows_digest(sample_ids: np.ndarray, frame_indices: np.ndarray, boxes: np.ndarray) -> str:
    """sha256 of the cache rows' ids, frame indices and boxes: what the crop joints were computed from."""
    digest = hashlib.sha256()
    digest.update("\n".join(np.asarray(sample_ids).astype(str)).encode())
    digest.update(np.ascontiguousarray(frame_indices, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(boxes, dtype=np.float32).tobytes())
    return digest.hexdigest()


def compute_crop_joints(cache: str | Path, manifest: str | Path, data_root: str | Path | None = None,
                        dataset: str | None = None) -> tuple[np.ndarray, list[str], str]:
    """The crop joints of every row of a cache.

    Args:
        cache: cache directory (or ``cache.h5``), or a dataset's cache root (its ``LATEST``).
        manifest: the manifest the cache was built from (skeleton and video paths).
        data_root: where the manifest's paths start (default: the manifest's recorded root).
        dataset: registry name, when ``cache`` is a cache root (``cache/``).

    Returns:
        ``(joints (N, 2, 2, J, t_p), sample ids whose skeleton or video could not be read (their rows NaN),
        rows_digest)``.

    Raises:
        CacheError: no cache, or a cached sample the manifest does not list.
    """
    path = resolve(cache, dataset)
    root = resolve_data_root(Path(manifest), Path(data_root) if data_root else None)
    table = read_manifest(manifest).set_index("sample_id")
    with open_cache(path) as reader:
        spec = get_dataset(reader.attrs["config_json"]["dataset"])
        sample_ids = np.asarray(reader.sample_ids).astype(str)
        frame_indices, boxes, t_p = reader.frame_indices, reader.boxes, reader.t_p
        num_joints = reader.num_joints
    missing = sorted(set(sample_ids) - set(table.index))
    if missing:
        raise CacheError(f"{manifest} does not list {len(missing)} cached sample(s), e.g. {missing[0]}: "
                         f"pass the manifest the cache was built from")
    out = np.full((len(sample_ids), 2, 2, num_joints, t_p), np.nan, dtype=np.float32)
    unreadable: list[str] = []
    rows_of: dict[str, list[int]] = {}
    for row, sample_id in enumerate(sample_ids):  # one pass: a video's clips, without an O(N) scan per video
        rows_of.setdefault(sample_id, []).append(row)
    for sample_id, rows in rows_of.items():
        try:
            with open_video(root / table.loc[sample_id, "video_path"]) as video:
                size, num_frames = (video.width, video.height), video.num_frames
            skeleton = pose_lib.load_skeleton(spec, root / table.loc[sample_id, "skeleton_path"], size)
        except (OSError, DecodeError, SkeletonFormatError, ValueError) as error:
            log.warning("%s: no crop joints (%s)", sample_id, error)
            unreadable.append(sample_id)
            continue
        for row in rows:
            frames = pose_lib.align_frames(frame_indices[row], num_frames, skeleton.num_frames)
            out[row] = clip_crop_joints(skeleton.joints2d[frames], boxes[row], t_p)
    return out, unreadable, rows_digest(sample_ids, frame_indices, boxes)


def write_crop_joints(cache: str | Path, manifest: str | Path, data_root: str | Path | None = None,
                      dataset: str | None = None) -> Path:
    """Compute the crop joints of a cache and write them (atomically) to ``<cache dir>/crop_joints.h5``."""
    path = resolve(cache, dataset)
    joints, unreadable, digest = compute_crop_joints(path, manifest, data_root)
    target = save_crop_joints(path.parent if path.is_file() else path, joints, digest, unreadable)
    log.info("wrote %s: %d rows, %d sample(s) without joints", target, len(joints), len(unreadable))
    return target


def save_crop_joints(folder: str | Path, joints: np.ndarray, digest: str, unreadable: list[str]) -> Path:
    """Write ``joints`` (N, 2, 2, J, t_p) for the cache rows of ``digest`` to ``<folder>/crop_joints.h5``,
    atomically; returns its path."""
    target = Path(folder) / CROP_JOINTS_NAME
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(DATASET_NAME, data=joints, chunks=(1, *joints.shape[1:]))
            f.attrs["rows_digest"] = digest
            f.attrs["unreadable_json"] = json.dumps(unreadable)
            f.attrs["created"] = utc_now()
            f.attrs["layout"] = "(N, bodies, (x, y), J, t_p) in the crop box's unit square"
    return target


def read_crop_joints(cache_path: str | Path, sample_ids: np.ndarray, frame_indices: np.ndarray,
                     boxes: np.ndarray) -> np.ndarray:
    """All rows of a cache's crop joints, checked against the cache rows they must describe.

    Args:
        cache_path: the cache file or folder (the side file is in its folder).
        sample_ids, frame_indices, boxes: the cache's rows (``CacheReader`` attributes).

    Raises:
        CacheError: no side file (with the command that writes one), or one computed for other rows.
    """
    path = Path(cache_path)
    side = (path.parent if path.suffix == ".h5" else path) / CROP_JOINTS_NAME
    if not side.is_file():
        raise CacheError(f"{side} is missing: spatial_attention=joints needs the clips' crop joints; write them "
                         f"with `make joints CACHE={side.parent} MANIFEST=<the cache's manifest>`")
    try:
        with h5py.File(side, "r") as f:
            joints, digest = f[DATASET_NAME][()], str(f.attrs["rows_digest"])
    except (OSError, KeyError) as error:
        raise CacheError(f"{side}: unreadable ({error}); rewrite it with `make joints`") from error
    if digest != rows_digest(sample_ids, frame_indices, boxes):
        raise CacheError(f"{side} was computed for other cache rows (the cache was rebuilt?); rewrite it with "
                         f"`make joints CACHE={side.parent}`")
    return joints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.crops.joints", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", dest="cache", required=True, help="cache directory, cache.h5, or a dataset's cache root")
    parser.add_argument("--manifest", required=True, help="the manifest the cache was built from")
    parser.add_argument("--data-root", default=None, help="where the manifest's paths start")
    parser.add_argument("--dataset", default=None, help="registry name, when --cache-dir is a cache root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        target = write_crop_joints(args.cache, args.manifest, args.data_root, args.dataset)
    except (CacheError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
