"""One sample from its raw files to the extractor's input: decode, skeleton, crop, poses (``prepare_sample``).

The cache build (``pipeline.build.extract``, in DataLoader workers) and ``make predict`` / ``make explain``
(``vpn_head.infer``) both call ``prepare_sample``, so a video is decoded, boxed and cropped one way whether its
features end in a cache or in a prediction. Per sample:

1. ``decode``: sample ``clips_per_video`` x ``clip_len`` frame indices over the video (``video.read_sampled_clips``,
   with the backend fallback; a wrong frame count in the metadata is re-sampled over the frames that decode). When
   a person-crop store is given (the cache's ``CacheConfig.pixels``, ``PIXELS=``), the frame count and the frames
   come from the store instead (``pipeline.crops.store``: the same indices over the same count, the person region
   at ~256 px), and a video the store lacks or cannot decode is read from the source with a logged line;
2. ``skeleton``: read the skeleton (``poses.load_skeleton``) and map the sampled video frames to skeleton frames
   (``poses.align_frames``, proportional when the two frame counts differ);
3. ``crop``: one square box per clip around the (<= 2) bodies' joints over the clip's frames
   (``crop.clip_box``); frames without a body use the clip's box; a clip none of whose frames has a body uses the
   box over the whole skeleton; crop and resize to ``crop_size`` squared, RGB in [-1, 1];
4. ``poses``: ``poses.clip_poses`` subsamples ``t_p`` poses from the clip's frames.

A sample that fails any stage raises ``SampleError(stage, reason)``; callers turn it into a failure row.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cache.config import CacheConfig
from pipeline.contracts import PROBLEM_COLUMN
from pipeline.crops.store import CropStore, StoreError, StoreView
from pipeline.datasets import bounds as input_bounds
from pipeline.datasets import manifest, pose_pickle, poses
from pipeline.datasets.ntu import SkeletonFormatError
from pipeline.datasets.registry import DatasetSpec
from pipeline.utils.fileio import is_transient
from pipeline.video import crop
from pipeline.video import reader as video

log = logging.getLogger(__name__)


@dataclass
class PreparedSample:
    """A sample ready for I3D: K clips with their frame indices, boxes and poses."""

    sample_id: str
    label: int
    action: str
    splits: dict[str, str]
    clips: torch.Tensor  # (K, 3, 64, 224, 224) float32 in [-1, 1]
    frame_indices: np.ndarray  # (K, 64)
    boxes: np.ndarray  # (K, 4)
    poses: np.ndarray  # (K, 2, 3, J, t_p)
    backend: str
    joints2d: np.ndarray | None = None  # (K, clip_len, 2, J, 2) video-pixel joints at the sampled frames, NaN absent


class SampleError(Exception):
    """A sample that cannot be cached, with the stage that failed."""

    def __init__(self, stage: str, reason: str):
        self.stage = stage
        self.reason = reason
        super().__init__(f"{stage}: {reason}")


ENVIRONMENT_STAGE = "environment"
"""The failure stage of a sample whose files could not be reached (missing, unreadable) or that met a passing fault
of the machine (``MemoryError``, a full disk, an I/O error, an interrupted call): retried by the next run."""


def sample_path(data_root: Path, row: Mapping[str, str], column: str) -> Path:
    """The row's ``column`` path under ``data_root``, reachable and a regular file (or a frame folder).

    Raises:
        SampleError: ``manifest`` when the path leaves DATA_ROOT or is not a regular file or folder (content);
            ``environment`` when it is missing or unreadable.
    """
    what = column.removesuffix("_path")
    try:
        path = manifest.inside_root(data_root, row[column])
    except ValueError as err:
        raise SampleError("manifest", f"{what}: {err}") from None
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise SampleError(ENVIRONMENT_STAGE, f"{what} {path} cannot be reached ({err.strerror or err}); "
                                             "is DATA_ROOT mounted and readable?") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SampleError("manifest", f"{what} {path} is not a regular file or folder")
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        raise SampleError(ENVIRONMENT_STAGE, f"{what} {path} is not readable (permission denied)")
    return path


def _clip_box(joints2d: np.ndarray, skeleton_frames: np.ndarray, size: tuple[int, int], pad: float) -> np.ndarray:
    """Box of one clip: its frames' joints, else the whole skeleton's; (4,) float32."""
    clip_joints = joints2d[skeleton_frames]  # (64, 2, J, 2)
    if not np.isfinite(clip_joints).all(-1).any():
        clip_joints = joints2d
    return crop.clip_box(clip_joints, size[0], size[1], pad=pad)


STORE_BACKEND = "store"
"""The ``backend`` of a sample read from the crop store (the run log counts them)."""


def _from_store(sample_id: str, config: CacheConfig, store: CropStore) -> tuple[video.SampledClips, StoreView] | None:
    """A sample's clips read from the crop store, or None (with a logged line) when it lacks or cannot decode them."""
    try:
        num_frames = store.num_frames(sample_id)
        if num_frames is not None:
            indices = video.sample_frame_indices(num_frames, config.clip_len, config.clips_per_video)  # (K, clip_len)
            stored = store.read(sample_id, indices.ravel())
            if stored is not None:
                frames, view = stored  # (K * clip_len, h, w, 3)
                frames = frames.reshape(*indices.shape, *frames.shape[1:])  # (K, clip_len, h, w, 3)
                return video.SampledClips(frames, indices, STORE_BACKEND, num_frames), view
        reason = "not in the crop store (see its failures.csv)"
    except StoreError as err:
        reason = str(err)
    log.warning("%s: %s; decoding the source video", sample_id, reason)
    return None


def prepare_sample(row: Mapping[str, str], data_root: Path, spec: DatasetSpec, config: CacheConfig,
                   store: CropStore | None = None, clips_out: torch.Tensor | None = None) -> PreparedSample:
    """Decode (or read from the crop ``store``), crop and pose one manifest row.

    Args:
        row: the manifest row.
        data_root: folder the row's paths are relative to.
        spec: the dataset.
        config: the cache config.
        store: the crop store to read the pixels from (None: the source video).
        clips_out: float32 ``(K, 3, clip_len, S, S)`` to write the clips into (the returned sample's ``clips``),
            e.g. a previous sample's clips once nothing reads them any more: a fresh 38.5 MB tensor per sample costs
            ~0.02 s of first-touch page faults. None, or another shape: a new tensor.

    Raises:
        SampleError: with the stage (``manifest``, ``decode``, ``skeleton``, ``crop``) and the reason.
    """
    if row.get(PROBLEM_COLUMN):
        raise SampleError("manifest", row[PROBLEM_COLUMN])
    video_path = sample_path(data_root, row, "video_path")
    skeleton_path = sample_path(data_root, row, "skeleton_path")
    found = _from_store(row["sample_id"], config, store) if store is not None else None
    if found is not None:
        sampled, view = found
    else:
        try:
            sampled = video.read_sampled_clips(video_path, clip_len=config.clip_len,
                                               clips_per_video=config.clips_per_video,
                                               backends=video.backends_for(video_path, config.backend,
                                                                           config.fallback))
        except video.DecodeError as err:
            raise SampleError("decode", str(err)) from None
        view = StoreView((sampled.frames.shape[3], sampled.frames.shape[2]))
    width, height = view.source_size
    try:
        skeleton = poses.load_skeleton(spec, skeleton_path, (width, height))
    except SkeletonFormatError as err:
        raise SampleError("skeleton", str(err)) from None
    except OSError as err:
        raise SampleError(ENVIRONMENT_STAGE, f"skeleton {skeleton_path}: {err}") from None
    problem = (input_bounds.clip_problem(skeleton, spec)
               or input_bounds.length_problem(skeleton.num_frames, sampled.num_frames, spec))
    if problem:
        raise SampleError("skeleton", problem)
    joints3d = skeleton.joints3d
    if row.get(pose_pickle.POSES_PATH):  # poses from a pyskl pickle replace the 3D joints; the box still comes from here
        try:
            joints3d = pose_pickle.read_pose_file(row[pose_pickle.POSES_PATH], row[pose_pickle.POSES_SHA256], row["sample_id"])
        except (KeyError, ValueError, OSError) as err:
            if is_transient(err):
                raise
            raise SampleError("skeleton", f"pose file {row[pose_pickle.POSES_PATH]}: {err}") from None
        problem = input_bounds.pose_problem(joints3d, spec)
        if problem:
            raise SampleError("skeleton", f"pose file {row[pose_pickle.POSES_PATH]}: {problem}")
    k = config.clips_per_video
    shape = (k, 3, config.clip_len, config.crop_size, config.crop_size)
    reuse = (clips_out is not None and tuple(clips_out.shape) == shape and clips_out.dtype == torch.float32
             and clips_out.is_contiguous() and clips_out.device.type == "cpu")
    clips = clips_out if reuse else torch.empty(shape, dtype=torch.float32)  # (K, 3, clip_len, S, S)
    boxes = np.empty((k, 4), dtype=np.float32)
    pose_out = np.empty((k, 2, 3, spec.num_joints, config.t_p), dtype=np.float32)
    joints2d = np.empty((k, config.clip_len, *skeleton.joints2d.shape[1:]), dtype=np.float32)
    for c in range(k):
        skel_frames = poses.align_frames(sampled.indices[c], sampled.num_frames, skeleton.num_frames)
        joints2d[c] = skeleton.joints2d[skel_frames]
        boxes[c] = _clip_box(skeleton.joints2d, skel_frames, (width, height), config.crop_pad)
        try:
            crop.crop_and_resize(sampled.frames[c], view.box(boxes[c]), config.crop_size, area_from=view.area_from,
                                 out=clips[c].numpy())  # (3, clip_len, S, S), written in place
        except (ValueError, RuntimeError) as err:
            raise SampleError("crop", str(err)) from None
        pose_frames = poses.align_frames(sampled.indices[c], sampled.num_frames, len(joints3d))
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below
            pose_out[c] = poses.clip_poses(joints3d[pose_frames], config.t_p, spec.centre_joint)
        if not np.isfinite(pose_out[c]).all():
            raise SampleError("skeleton", "poses are not finite in float32 once centred (absurd coordinates)")
    splits = {p: row.get(p, "") for p in spec.protocols}
    return PreparedSample(row["sample_id"], int(row["label"]), row["action"], splits, clips,
                          sampled.indices.astype(np.int32), boxes, pose_out, sampled.backend, joints2d)
