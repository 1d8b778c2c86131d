"""Does the pose branch steer the head? Measurements that answer it for a trained pose variant.

- **Pose shuffle**: score the test clips again with every video's poses replaced by another video's
  (``shuffle_poses``: a permutation of the videos with no fixed point). A head whose prediction does not depend
  on the pose scores the same; the drop is what the pose contributes.
- **Attention statistics** (``attention_statistics``): how much A_S varies across videos (the mean over the
  grid cells of each cell's standard deviation across clips; 0 for a constant map), A_T's entropy normalised to
  [0, 1] (1 = uniform over the T steps) and its mean peak weight.
- **Where A_S peaks** (``peak_hits``): the grid cell of A_S's maximum against the cell of the most-moving joint
  projected into the crop (``moving_joint_cells``, from the skeleton files, so only when the data is at hand).
- **The oracle bound** (``OracleAttentionHead``): the same classifier on ``A_ST * f + f`` with A_S fixed to a
  map centred on the moving joint's cell instead of predicted from the pose: how much a perfect spatial
  attention could add on frozen features.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.cache.reader import open_cache
from pipeline.datasets import poses as pose_lib
from pipeline.datasets.manifest import read_manifest, resolve_data_root
from pipeline.datasets.registry import DatasetSpec
from pipeline.video.reader import DecodeError, open_video
from vpn_head.model.attention import apply_attention
from vpn_head.model.config import VPNConfig
from vpn_head.model.vpn import PooledNorm, VPNOutput

TRUTH_FILE = "synthetic_truth.csv"
"""Written by ``pipeline.synthetic.dataset`` under DATA_ROOT: each sample's class-carrying joint (``active_joint``)."""


def shuffle_poses(sample_ids: np.ndarray, seed: int) -> np.ndarray:
    """Row permutation that gives every clip the poses of a clip of *another* video.

    Videos are permuted with a random cyclic shift (no video keeps its own poses); clip ``j`` of a video takes
    clip ``j`` (modulo that video's clip count) of its partner.

    Args:
        sample_ids: (N,) video id of every row.
        seed: picks the permutation.

    Returns:
        (N,) int64 source row of every row's poses (the identity when there is a single video).
    """
    sample_ids = np.asarray(sample_ids).astype(str)
    videos, inverse = np.unique(sample_ids, return_inverse=True)
    if videos.size < 2:
        return np.arange(sample_ids.size, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(videos.size)
    partner = np.empty(videos.size, dtype=np.int64)
    partner[order] = np.roll(order, -1)  # video order[i] takes the poses of video order[i + 1]
    rows_of = [np.flatnonzero(inverse == v) for v in range(videos.size)]
    source = np.empty(sample_ids.size, dtype=np.int64)
    for v, rows in enumerate(rows_of):
        donor = rows_of[partner[v]]
        source[rows] = donor[np.arange(rows.size) % donor.size]
    return source


def read_hands(manifest: Path, data_root: Path | None) -> dict[str, str] | None:
    """Each sample's class-carrying hand (``active_hand`` of ``synthetic_truth.csv`` under DATA_ROOT), or None when
    the data has no such file (real data)."""
    try:
        path = resolve_data_root(manifest, data_root) / TRUTH_FILE
    except (OSError, ValueError, KeyError):
        return None
    if not path.is_file():
        return None
    truth = pd.read_csv(path)
    if "active_hand" not in truth.columns:
        return None
    return dict(zip(truth["sample_id"].astype(str), truth["active_hand"].astype(str)))


def hand_aware_shuffle(sample_ids: np.ndarray, hands: Mapping[str, str], seed: int) -> np.ndarray | None:
    """Row permutation that gives every clip the poses of a video whose class-carrying hand *differs*.

    The plain shuffle (``shuffle_poses``) pairs many videos with a partner that holds the same hand forward; on the
    fidelity data the pose then still points at the right hand and a head that uses it loses nothing. Here every
    video's donor is drawn (with replacement, by ``seed``) among the videos of another hand, so a head that reads
    the pose must lose accuracy.

    Args:
        sample_ids: (N,) video id of every row.
        hands: video id -> class-carrying hand (``read_hands``).
        seed: picks the donors.

    Returns:
        (N,) int64 source row of every row's poses, or None when some video has no hand or only one hand occurs.
    """
    sample_ids = np.asarray(sample_ids).astype(str)
    videos, inverse = np.unique(sample_ids, return_inverse=True)
    if any(v not in hands for v in videos):
        return None
    hand = np.array([hands[v] for v in videos])
    if np.unique(hand).size < 2:
        return None
    rng = np.random.default_rng(seed)
    rows_of = [np.flatnonzero(inverse == v) for v in range(videos.size)]
    source = np.empty(sample_ids.size, dtype=np.int64)
    for v, rows in enumerate(rows_of):
        donor = rows_of[int(rng.choice(np.flatnonzero(hand != hand[v])))]
        source[rows] = donor[np.arange(rows.size) % donor.size]
    return source


def same_hand_share(sample_ids: np.ndarray, source: np.ndarray, hands: Mapping[str, str]) -> float:
    """Share of videos whose pose donor under ``source`` holds the same hand forward (first row of each video)."""
    sample_ids = np.asarray(sample_ids).astype(str)
    _, first = np.unique(sample_ids, return_index=True)
    same = [hands.get(sample_ids[r]) == hands.get(sample_ids[source[r]]) for r in first]
    return float(np.mean(same))


def attention_statistics(a_s: np.ndarray, a_t: np.ndarray) -> dict[str, float]:
    """Summaries of the attention maps of many clips.

    Args:
        a_s: (N, S, S) spatial attention.
        a_t: (N, T) temporal attention (any positive scale; normalised here).

    Returns:
        ``a_s_spread`` (mean over cells of the std across clips), ``a_s_mean``, ``a_s_peak_share`` (share of clips
        whose argmax is the most common argmax cell: 1.0 for a constant map), ``a_t_entropy`` (normalised, 1 =
        uniform), ``a_t_max`` (mean over clips of the largest step weight, normalised to sum 1).
    """
    flat = a_s.reshape(a_s.shape[0], -1).astype(np.float64)  # (N, S * S)
    p_t = a_t / a_t.sum(axis=1, keepdims=True)  # (N, T)
    entropy = -(p_t * np.log(np.clip(p_t, 1e-12, None))).sum(axis=1) / np.log(p_t.shape[1])
    peaks = flat.argmax(axis=1)
    return {
        "a_s_spread": float(flat.std(axis=0).mean()),
        "a_s_mean": float(flat.mean()),
        "a_s_peak_share": float(np.bincount(peaks).max() / peaks.size),
        "a_t_entropy": float(entropy.mean()),
        "a_t_max": float(p_t.max(axis=1).mean()),
    }


def moving_joint(poses: np.ndarray) -> np.ndarray:
    """Index of the joint of body 0 that moves most (largest summed coordinate std over the t_p poses).

    Args:
        poses: (N, B, 3, J, t_p) as cached.

    Returns:
        (N,) int64 joint index per clip.
    """
    return poses[:, 0].std(axis=3).sum(axis=1).argmax(axis=1).astype(np.int64)  # (N, 3, J) -> (N, J) -> (N,)


def joint_cell(joints2d: np.ndarray, box: np.ndarray, grid: int) -> tuple[int, int] | None:
    """Grid cell (row, col) of the mean of 2D joint positions (K, 2) inside a crop ``box`` (x0, y0, x1, y1);
    None when no position is finite. Positions outside the box are clipped to its border cells."""
    finite = joints2d[np.isfinite(joints2d).all(axis=1)]
    if finite.size == 0:
        return None
    x, y = finite.mean(axis=0)
    x0, y0, x1, y1 = (float(v) for v in box)
    col = int(np.clip((x - x0) / max(x1 - x0, 1e-6) * grid, 0, grid - 1))
    row = int(np.clip((y - y0) / max(y1 - y0, 1e-6) * grid, 0, grid - 1))
    return row, col


def moving_joint_cells(spec: DatasetSpec, data_root: Path, skeleton_paths: Mapping[str, str],
                       sample_ids: np.ndarray, frame_indices: np.ndarray, boxes: np.ndarray, joints: np.ndarray,
                       video_sizes: Mapping[str, tuple[int, int]], num_video_frames: Mapping[str, int],
                       grid: int) -> np.ndarray:
    """Grid cell of each clip's moving joint, projected into its crop over the clip's frames.

    Args:
        spec: the dataset.
        data_root: where the manifest's paths start.
        skeleton_paths: sample id -> skeleton path relative to ``data_root``.
        sample_ids: (N,) video of each clip.
        frame_indices: (N, F) video frame indices of each clip (as cached).
        boxes: (N, 4) crop box of each clip (as cached).
        joints: (N,) joint index per clip (``moving_joint``).
        video_sizes: sample id -> (width, height) of its video.
        num_video_frames: sample id -> frame count of its video.
        grid: S of the S x S attention grid.

    Returns:
        (N, 2) int64 (row, col), -1 where the skeleton has no position for that joint in the clip.
    """
    cells = np.full((len(sample_ids), 2), -1, dtype=np.int64)
    current, skeleton = None, None  # a video's clips are consecutive rows: one skeleton in memory at a time
    for i, sample_id in enumerate(np.asarray(sample_ids).astype(str)):
        if sample_id != current:
            current = sample_id
            skeleton = pose_lib.load_skeleton(spec, data_root / skeleton_paths[sample_id], video_sizes[sample_id])
        frames = pose_lib.align_frames(frame_indices[i], num_video_frames[sample_id], skeleton.num_frames)
        cell = joint_cell(skeleton.joints2d[frames, 0, joints[i]], boxes[i], grid)  # (F, 2)
        if cell is not None:
            cells[i] = cell
    return cells


def clip_joint_cells(cache_path: Path, rows: np.ndarray, sample_ids: np.ndarray, poses: np.ndarray,
                     spec: DatasetSpec, manifest: Path, data_root: Path | None, grid: int
                     ) -> tuple[np.ndarray | None, str]:
    """The grid cell of each clip's key joint, for ``peak_hits`` and the oracle.

    The key joint is the one ``synthetic_truth.csv`` under DATA_ROOT names (synthetic data), else the most-moving
    joint of body 0 (``moving_joint``). Its image positions come from the skeleton files, over the clip's frames,
    inside the clip's crop box (both as cached).

    Args:
        cache_path: the cache the clips come from.
        rows: (N,) cache rows of the clips.
        sample_ids: (N,) their videos.
        poses: (N, B, 3, J, t_p) their cached poses.
        spec: the dataset.
        manifest: manifest CSV with the skeleton and video paths.
        data_root: where the manifest's paths start; default the manifest's side file.
        grid: S.

    Returns:
        ``(cells (N, 2) or None, what was used or why nothing could be)``.
    """
    try:
        root = resolve_data_root(manifest, data_root)
        table = read_manifest(manifest).set_index("sample_id")
    except (OSError, ValueError, KeyError) as error:
        return None, f"no joint positions: {error}"
    truth_path = root / TRUTH_FILE
    joints, source = moving_joint(poses), "most-moving joint of body 0"
    if truth_path.is_file():
        truth = pd.read_csv(truth_path).set_index("sample_id")["active_joint"]
        joints = np.array([int(truth.get(s, j)) for s, j in zip(sample_ids, joints)], dtype=np.int64)
        source = f"class-carrying joint from {TRUTH_FILE}"
    with open_cache(cache_path) as reader:
        frame_indices, boxes = reader.frame_indices[rows], reader.boxes[rows]  # (N, F), (N, 4)
    sizes, counts = {}, {}
    try:
        for sample_id in np.unique(sample_ids):
            with open_video(root / table.loc[sample_id, "video_path"]) as video:
                sizes[sample_id], counts[sample_id] = (video.width, video.height), video.num_frames
        skeletons = {s: table.loc[s, "skeleton_path"] for s in sizes}
        cells = moving_joint_cells(spec, root, skeletons, sample_ids, frame_indices, boxes, joints, sizes, counts,
                                   grid)
    except (OSError, KeyError, ValueError, DecodeError) as error:
        return None, f"no joint positions: {error}"
    return cells, source


def peak_hits(a_s: np.ndarray, cells: np.ndarray) -> dict[str, float]:
    """How close A_S's maximum lies to the moving joint's cell.

    Args:
        a_s: (N, S, S) spatial attention.
        cells: (N, 2) (row, col) of the joint, -1 where unknown (those clips are skipped).

    Returns:
        ``peak_distance`` (mean Chebyshev distance in cells), ``peak_within_1`` (share of clips whose peak is the
        joint's cell or a neighbour), ``peak_chance_within_1`` (the same share for a peak drawn uniformly over
        the grid, for comparison), ``peak_clips`` (clips measured).
    """
    known = (cells >= 0).all(axis=1)
    if not known.any():
        return {"peak_distance": float("nan"), "peak_within_1": float("nan"),
                "peak_chance_within_1": float("nan"), "peak_clips": 0}
    size = a_s.shape[-1]
    flat = a_s[known].reshape(int(known.sum()), -1).argmax(axis=1)
    peak = np.stack([flat // size, flat % size], axis=1)  # (K, 2)
    distance = np.abs(peak - cells[known]).max(axis=1)
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    chance = np.mean([((np.abs(rows - r) <= 1) & (np.abs(cols - c) <= 1)).mean() for r, c in cells[known]])
    return {"peak_distance": float(distance.mean()), "peak_within_1": float((distance <= 1).mean()),
            "peak_chance_within_1": float(chance), "peak_clips": int(known.sum())}


def shuffle_block(own: dict[str, float], shuffled: dict[str, float], changed: float) -> dict[str, float]:
    """Accuracy with another video's poses and its drop from the own-pose accuracy."""
    return {"top1": shuffled["top1"], "mean_class": shuffled["mean_class"],
            "drop_top1": own["top1"] - shuffled["top1"], "drop_mean_class": own["mean_class"] - shuffled["mean_class"],
            "changed_predictions": changed}


def pose_diagnostics(own: dict[str, float], shuffled: dict[str, float], changed: float,
                     record: dict[str, np.ndarray], cells: np.ndarray | None, cells_note: str) -> dict[str, object]:
    """The metrics-file block of a pose variant: accuracy with shuffled poses, attention statistics, peaks.

    Args:
        own: video-level ``top1``/``mean_class`` with the clips' own poses.
        shuffled: the same with ``shuffle_poses``' poses.
        changed: share of videos whose prediction changed when the poses were shuffled.
        record: ``score_clips``' record (attention maps).
        cells: (N, 2) key-joint cells or None.
        cells_note: what ``cells`` are, or why they are missing.
    """
    attention = attention_statistics(record["attention_spatial"], record["attention_temporal"])
    if cells is not None:
        attention.update(peak_hits(record["attention_spatial"], cells))
    return {
        "pose_shuffle": shuffle_block(own, shuffled, changed),
        "attention": attention,
        "key_joint": cells_note,
    }


def oracle_maps(cells: np.ndarray, size: int, sigma: float = 0.75) -> np.ndarray:
    """Spatial attention maps (N, S, S) with a Gaussian bump of height 1 at each clip's joint cell (a uniform 0.5
    map where the cell is unknown)."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    maps = np.full((len(cells), size, size), 0.5, dtype=np.float32)
    for i, (r, c) in enumerate(cells):
        if r >= 0:
            maps[i] = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma ** 2))
    return maps


class OracleAttentionHead(nn.Module):
    """The VPN classifier on ``A_ST * f + f`` with A_S given (not predicted) and A_T uniform.

    It takes the given maps where a pose variant takes poses, ``head(features, a_s) -> VPNOutput``, so the one
    training engine (``vpn_head.engine.loop``) trains it like any head. ``config`` (an ``attention``-variant
    ``VPNConfig``) supplies how the attention is applied (``temporal_scale``, ``attention_residual``,
    ``attention_pooling``) and the classifier (``feature_norm``, ``dropout``).
    """

    def __init__(self, config: VPNConfig):
        super().__init__()
        self.config = config
        self.a_t_value = 1.0 / config.feature_time if config.temporal_scale == "sum1" else 1.0
        self.feature_norm = PooledNorm(config.feature_channels) if config.feature_norm == "batch" else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.feature_channels, config.num_classes)

    def forward(self, features: torch.Tensor, a_s: torch.Tensor) -> VPNOutput:
        """features (N, C, T, H, W), a_s (N, S, S) -> ``VPNOutput`` (logits (N, K), the maps; no embedding)."""
        cfg = self.config
        a_t = features.new_full((features.shape[0], cfg.feature_time), self.a_t_value)  # (N, T)
        f_prime = apply_attention(features, a_s, a_t, True, cfg.attention_residual,
                                  cfg.attention_pooling == "normalised")  # (N, C, T, H, W)
        pooled = self.feature_norm(f_prime.mean(dim=(2, 3, 4)))  # (N, C)
        return VPNOutput(self.classifier(self.dropout(pooled)), a_s, a_t, None, None)  # logits (N, K)


class OracleClips(Dataset):
    """A split's clips with their oracle A_S maps in the place of poses: items ``(features, a_s, label, row)``."""

    def __init__(self, clips: Any, maps: np.ndarray):
        self.clips, self.maps = clips, torch.from_numpy(maps)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        features, _, label, row = self.clips[index]
        return features, self.maps[index], label, row

    def sample_ids_of(self, rows: np.ndarray) -> np.ndarray:
        return self.clips.sample_ids_of(rows)
