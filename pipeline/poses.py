"""Skeletons of any dataset as one array layout, aligned to video frames, and the VPN pose input.

``load_skeleton`` turns a dataset's skeleton file into a ``SkeletonClip``: 3D joints for the pose network and the
joints' image coordinates in the *video's* pixel frame for the person crop. ``clip_poses`` subsamples ``t_p``
poses from a clip's 64 sampled frames and normalises them.

Normalisation (documented contract of the cache's ``poses``):

* at most 2 bodies (NTU: the two most-moving actors; Smarthome: the two best LCR-Net detections per frame, kept in
  stable slots; N-UCLA: one body), zero-padded when absent;
* a body missing in some sampled frames takes the joints of its nearest frame where it is present (so a dropped
  detection does not become a jump to the origin); a body never present stays all zero;
* everything is translated so that the centre joint (``DatasetSpec.centre_joint``: NTU SpineMid, Smarthome R_hip as
  LCR-Net has no pelvis joint, N-UCLA HipCenter) of body 0 in the first subsampled frame is the origin;
  no rotation or scaling, so poses stay in the skeleton's own units (metres for NTU and N-UCLA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import ntu, nucla, smarthome
from pipeline.contracts import MAX_BODIES
from pipeline.datasets import DatasetSpec


@dataclass(frozen=True)
class SkeletonClip:
    """A sample's skeleton, bodies in stable slots.

    Attributes:
        joints3d: (T_s, 2, J, 3) float32, NaN where a body is absent.
        joints2d: (T_s, 2, J, 2) float32 pixel coordinates in the video frame, NaN where absent.
    """

    joints3d: np.ndarray
    joints2d: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.joints3d)


def _pad_bodies(a: np.ndarray) -> np.ndarray:
    """(T, M, J, C) -> (T, 2, J, C), NaN-padded or truncated to ``MAX_BODIES``."""
    out = np.full((a.shape[0], MAX_BODIES) + a.shape[2:], np.nan, dtype=np.float32)
    out[:, : min(MAX_BODIES, a.shape[1])] = a[:, :MAX_BODIES]
    return out


def load_skeleton(spec: DatasetSpec, path: str | Path, video_size: tuple[int, int]) -> SkeletonClip:
    """Read a sample's skeleton and express its image coordinates in the video's pixels.

    Args:
        spec: the dataset.
        path: skeleton file (NTU ``.skeleton``, Smarthome JSON, N-UCLA JSON or raw sample folder).
        video_size: (width, height) of the decoded video; NTU colour coordinates (1920x1080) and Smarthome
            pose2d (640x480) are rescaled to it, so downscaled copies of a dataset crop correctly.

    Raises:
        SkeletonFormatError: malformed file (message names the file and line).
    """
    path = Path(path)
    width, height = video_size
    if spec.name.startswith("ntu"):
        seq = ntu.read_skeleton(path, max_bodies=MAX_BODIES)
        scale = np.array([width / ntu.COLOR_FRAME_SIZE[0], height / ntu.COLOR_FRAME_SIZE[1]], dtype=np.float32)
        return SkeletonClip(_pad_bodies(seq.joints), _pad_bodies(seq.color_xy * scale))
    if spec.name == "smarthome":
        skel = smarthome.read_lcrnet_json(path, MAX_BODIES)
        scale = np.array([width / smarthome.FRAME_SIZE[0], height / smarthome.FRAME_SIZE[1]], dtype=np.float32)
        return SkeletonClip(skel.pose3d, skel.pose2d * scale)
    if spec.name == "nucla":
        joints = nucla.read_raw_sample(path)[0] if path.is_dir() else nucla.read_sqe_json(path)
        scale = np.array([width / nucla.FRAME_SIZE[0], height / nucla.FRAME_SIZE[1]], dtype=np.float32)
        return SkeletonClip(_pad_bodies(joints), _pad_bodies(nucla.project_kinect_v1(joints) * scale))
    raise ValueError(f"no skeleton reader for dataset {spec.name!r}")


def align_frames(video_indices: np.ndarray, num_video_frames: int, num_skeleton_frames: int) -> np.ndarray:
    """Map video frame indices to skeleton frame indices.

    Equal counts map one to one. Otherwise (NTU videos and skeletons occasionally differ by a few frames; the N-UCLA
    all_sqe JSON is resampled) both are taken to span the same time, and the mapping is proportional:
    ``s = round(v * (S - 1) / (V - 1))``.
    """
    if num_video_frames == num_skeleton_frames:
        return video_indices.copy()
    if num_video_frames <= 1:
        return np.zeros_like(video_indices)
    scale = (num_skeleton_frames - 1) / (num_video_frames - 1)
    return np.clip(np.floor(video_indices * scale + 0.5).astype(np.int64), 0, num_skeleton_frames - 1)


def subsample_positions(clip_len: int, t_p: int) -> np.ndarray:
    """Positions of ``t_p`` poses among a clip's ``clip_len`` frames: evenly spaced, first and last included."""
    return np.floor(np.linspace(0, clip_len - 1, t_p) + 0.5).astype(np.int64)


def _fill_from_nearest(body: np.ndarray) -> np.ndarray:
    """(T, J, 3) with NaN frames -> each NaN frame copies the nearest present frame; all-NaN -> zeros."""
    present = np.flatnonzero(np.isfinite(body).all(axis=(1, 2)))
    if len(present) == 0:
        return np.zeros_like(body)
    nearest = present[np.abs(np.arange(len(body))[:, None] - present[None, :]).argmin(axis=1)]
    return body[nearest]


def clip_poses(joints3d: np.ndarray, t_p: int, centre_joint: int) -> np.ndarray:
    """The VPN pose input of one clip.

    Args:
        joints3d: (clip_len, 2, J, 3) joints at the clip's sampled frames, NaN where absent.
        t_p: poses kept.
        centre_joint: joint of body 0 whose first-pose position becomes the origin.

    Returns:
        float32 (2, 3, J, t_p).
    """
    picked = joints3d[subsample_positions(len(joints3d), t_p)]  # (t_p, 2, J, 3)
    bodies = np.stack([_fill_from_nearest(picked[:, b]) for b in range(picked.shape[1])], axis=1)  # (t_p, 2, J, 3)
    present = np.isfinite(picked).all(axis=(2, 3)).any(axis=0)  # (2,)
    origin = bodies[0, 0, centre_joint] if present[0] else np.zeros(3, dtype=np.float32)
    bodies = np.where(present[None, :, None, None], bodies - origin, 0.0)
    return np.ascontiguousarray(bodies.transpose(1, 3, 2, 0), dtype=np.float32)  # (2, 3, J, t_p)
