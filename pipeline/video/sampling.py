"""Which frames of a video a clip reads: uniform sampling over the video (or K windows), with optional TSN jitter."""

from __future__ import annotations

import numpy as np

from pipeline.i3d.spec import CLIP_FRAMES


def sample_frame_indices(
    num_frames: int,
    clip_len: int = CLIP_FRAMES,
    clips_per_video: int = 1,
    jitter: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices of ``clips_per_video`` clips of ``clip_len`` frames each.

    Every clip samples ``clip_len`` positions evenly over a window ``[s, s + span - 1]`` (inclusive, both ends
    hit) and rounds them half up, so indices are sorted and a window shorter than ``clip_len`` frames repeats its
    frames evenly.

    * ``clips_per_video == 1``: the window is the whole video (``s = 0``, ``span = num_frames``).
    * ``clips_per_video == K > 1``: ``span = max(min(num_frames, clip_len), num_frames / K)`` and the K window
      starts are evenly spaced from 0 to ``num_frames - span``. Long videos thus get K consecutive segments
      (``span = num_frames / K``); videos shorter than ``K * clip_len`` get K overlapping windows of ``clip_len``
      consecutive frames (native frame rate); videos shorter than ``clip_len`` get K identical clips.

    With ``jitter`` (training), each position moves by a uniform random offset within its own sampling cell
    (``+-step / 2``, ``step = (span - 1) / (clip_len - 1)``), clipped to the window, TSN style; indices stay sorted.

    Args:
        num_frames: Frames in the video (> 0).
        clip_len: Frames per clip.
        clips_per_video: Number of clips K.
        jitter: Random generator for training-time jitter; None for deterministic sampling.

    Returns:
        int64 array ``(K, clip_len)`` of frame indices in ``[0, num_frames)``.
    """
    if num_frames <= 0 or clip_len <= 0 or clips_per_video <= 0:
        raise ValueError(
            f"num_frames, clip_len and clips_per_video must be positive, got {num_frames}, {clip_len}, "
            f"{clips_per_video}"
        )
    if clips_per_video == 1:
        span = float(num_frames)
        starts = np.zeros(1)
    else:
        span = max(float(min(num_frames, clip_len)), num_frames / clips_per_video)
        starts = np.linspace(0.0, num_frames - span, clips_per_video)  # (K,)
    fractions = np.linspace(0.0, 1.0, clip_len)  # (clip_len,)
    positions = starts[:, None] + fractions[None, :] * (span - 1)  # (K, clip_len)
    if jitter is not None and clip_len > 1:
        step = (span - 1) / (clip_len - 1)
        positions = positions + jitter.uniform(-step / 2, step / 2, positions.shape)
        positions = np.clip(positions, starts[:, None], starts[:, None] + span - 1)
    indices = np.floor(positions + 0.5).astype(np.int64)  # (K, clip_len)
    return np.clip(indices, 0, num_frames - 1)
