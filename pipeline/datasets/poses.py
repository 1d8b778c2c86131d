"""Skeletons of any dataset as one array layout, aligned to video frames, and the VPN pose input.

``load_skeleton`` turns a dataset's skeleton file into a ``SkeletonClip`` with the dataset's own reader
(``DatasetSpec.read_skeleton``): 3D joints for the pose network and the joints' image coordinates in the *video's*
pixel frame for the person crop. ``clip_poses`` subsamples ``t_p``
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

from pathlib import Path

import numpy as np

from pipeline.datasets.skeleton_io import SkeletonClip
from pipeline.datasets.spec import DatasetSpec


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
    return spec.read_skeleton(Path(path), video_size)


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


def fill_from_nearest(body: np.ndarray) -> np.ndarray:
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
    bodies = np.stack([fill_from_nearest(picked[:, b]) for b in range(picked.shape[1])], axis=1)  # (t_p, 2, J, 3)
    present = np.isfinite(picked).all(axis=(2, 3)).any(axis=0)  # (2,)
    origin = bodies[0, 0, centre_joint] if present[0] else np.zeros(3, dtype=np.float32)
    bodies = np.where(present[None, :, None, None], bodies - origin, 0.0)
    return np.ascontiguousarray(bodies.transpose(1, 3, 2, 0), dtype=np.float32)  # (2, 3, J, t_p)
