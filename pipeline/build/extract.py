"""One shard of the cache: decode + crop + poses in DataLoader workers, I3D Mixed_5c in the main process.

Per sample (``prepare_sample``, runs in a worker):

1. ``decode``: sample ``clips_per_video`` x ``clip_len`` frame indices over the video (``video.read_sampled_clips``,
   with the backend fallback; a wrong frame count in the metadata is re-sampled over the frames that decode);
2. ``skeleton``: read the skeleton (``poses.load_skeleton``) and map the sampled video frames to skeleton frames
   (``poses.align_frames``, proportional when the two frame counts differ);
3. ``crop``: one square box per clip around the (<= 2) bodies' joints over the clip's frames
   (``crop.clip_box``); frames without a body use the clip's box; a clip none of whose frames has a body uses the
   box over the whole skeleton; crop and resize to ``crop_size`` squared, RGB in [-1, 1];
4. ``poses``: ``poses.clip_poses`` subsamples ``t_p`` poses from the clip's frames.

A sample that fails any stage becomes a ``(sample_id, stage, reason)`` failure row and the shard goes on.
Failures are of two kinds. *Content* failures (a corrupt video, a malformed skeleton, a manifest path that
leaves DATA_ROOT) are final: the next run keeps them (``--retry-failed`` retries them). *Environment* failures
(stage ``environment``: a file that is missing or unreadable, as when DATA_ROOT is unmounted, or a passing fault of
the machine: ``MemoryError``, a full disk, an I/O error, an interrupted call, ``pipeline.utils.fileio.is_transient``)
say nothing about the data: ``shards_to_rebuild`` sends the shards holding them back to work on the next run.
Decoded crops are never written between stages: a 64-frame float32 clip is 38.5 MB, so decoding overlaps the
I3D forward pass through DataLoader workers instead (see the README's performance notes).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.video import crop
from pipeline.datasets import bounds as input_bounds
from pipeline.datasets import manifest
from pipeline.datasets import pose_pickle
from pipeline.datasets import poses
from pipeline.video import reader as video
from pipeline.cache.writer import ShardWriter
from pipeline.cache.config import CacheConfig
from pipeline.contracts import PROBLEM_COLUMN
from pipeline.datasets.registry import DatasetSpec, get_dataset
from pipeline.cache.failures import read_shard_failures
from pipeline.i3d.model import extract_features, load_i3d
from pipeline.i3d.spec import FEATURE_CHANNELS, SPATIAL_STRIDE, TEMPORAL_STRIDE
from pipeline.cache.integrity import check_integrity
from pipeline.cache.layout import CacheError
from pipeline.datasets.ntu import SkeletonFormatError
from pipeline.utils.fileio import is_transient
from pipeline.utils.progress import show_progress

log = logging.getLogger(__name__)


class PixelFeatures(torch.nn.Module):
    """A fast stand-in for I3D with the same output shape, for smoke tests and plumbing checks (``extractor=pixels``).

    Mixed_5c-shaped features from the crop itself: adaptive average pooling of the clip to I3D's output grid
    (``pipeline.i3d.spec``: (8, 7, 7) for the paper's clip) followed by a fixed random 1x1x1 projection 3 -> 1024
    and a ReLU. No learning, deterministic (seed 0). It keeps where things
    are in the crop, so a head can still learn spatial cues from it, but it is no video model.
    """

    def __init__(self, channels: int = FEATURE_CHANNELS):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(channels, 3, generator=generator))
        self.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = x.shape[2:]
        grid = (-(-t // TEMPORAL_STRIDE), -(-h // SPATIAL_STRIDE), -(-w // SPATIAL_STRIDE))
        pooled = torch.nn.functional.adaptive_avg_pool3d(x, grid)  # (N, 3, 8, 7, 7)
        return torch.relu(torch.einsum("ck,nkthw->ncthw", self.projection, pooled))  # (N, 1024, 8, 7, 7)


def make_extractor(name: str, weights: str | None, device: str) -> torch.nn.Module:
    """The feature extractor of a cache config: ``i3d`` (the paper's) or ``pixels`` (smoke tests)."""
    if name == "i3d":
        return load_i3d(weights or None, device=device)
    if name == "pixels":
        return PixelFeatures().to(device)
    raise ValueError(f"unknown feature extractor {name!r}; choose i3d or pixels")


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


@dataclass
class SampleFailure:
    sample_id: str
    stage: str
    reason: str


class SampleError(Exception):
    """A sample that cannot be cached, with the stage that failed."""

    def __init__(self, stage: str, reason: str):
        self.stage = stage
        self.reason = reason
        super().__init__(f"{stage}: {reason}")


ENVIRONMENT_STAGE = "environment"
"""The failure stage of a sample whose files could not be reached (missing, unreadable) or that met a passing fault
of the machine (``MemoryError``, a full disk, an I/O error, an interrupted call): retried by the next run."""
TRANSIENT_PREFIX = "passing fault, retried by the next run: "
"""How the reason of a passing fault starts."""
PROBE_SAMPLES = 8
"""``check_data_root`` refuses a run when this many first usable samples all lack their files."""


def _sample_path(data_root: Path, row: Mapping[str, str], column: str) -> Path:
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


def check_data_root(rows: Sequence[Mapping[str, str]], data_root: str | Path) -> None:
    """Refuse to start when DATA_ROOT is absent or the first ``PROBE_SAMPLES`` usable samples all lack files.

    Raises:
        FileNotFoundError: one line naming DATA_ROOT.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"DATA_ROOT {root} does not exist or is not a folder (unmounted? wrong path?)")
    probe = [r for r in rows if not r.get(PROBLEM_COLUMN)][:PROBE_SAMPLES]
    reached = 0
    for row in probe:
        try:
            _sample_path(root, row, "video_path")
            _sample_path(root, row, "skeleton_path")
            reached += 1
        except SampleError as err:
            if err.stage != ENVIRONMENT_STAGE:
                reached += 1  # there, but unusable: a content problem, not a wrong root
    if probe and not reached:
        raise FileNotFoundError(f"DATA_ROOT {root}: the files of the first {len(probe)} samples are all missing "
                                f"(e.g. {root / probe[0]['video_path']}); wrong DATA_ROOT, or not mounted?")


def shards_to_rebuild(paths: Sequence[Path], *, retry_failed: bool = False) -> dict[Path, str]:
    """Finished shards that must be computed again, with why.

    A shard is rebuilt when it fails ``integrity.check_integrity`` (the cheap check), when it holds environment
    failures (their samples are retried), or, with ``retry_failed``, when it holds any failure other than a
    manifest problem.
    """
    redo: dict[Path, str] = {}
    for path in paths:
        if not path.exists():
            continue
        problem = check_integrity(path, adopt_legacy=True)
        if problem:
            redo[path] = problem
            continue
        try:
            recorded = read_shard_failures(path)
            stages, reasons = recorded["stage"], recorded["reason"]
        except (CacheError, OSError) as err:
            redo[path] = f"unreadable failures ({err})"
            continue
        retried = stages[retried_by_rerun(stages, reasons)] if not retry_failed else stages[stages != "manifest"]
        if len(retried):
            kind = "environment" if not retry_failed else "recorded"
            redo[path] = f"{len(retried)} {kind} failures to retry"
    return redo


LEGACY_TRANSIENT = r"^(?:MemoryError|InterruptedError|OSError: \[Errno (?:5|12|28|122)\])"
"""Reasons of ``unexpected`` failures that caches built before passing faults had their stage recorded for them."""


def retried_by_rerun(stages: pd.Series, reasons: pd.Series) -> np.ndarray:
    """Which failure rows a plain rerun retries: every ``environment`` row, and ``unexpected`` rows of a passing
    fault recorded by an older build (a MemoryError filed as the sample's fault)."""
    legacy = (stages == "unexpected") & reasons.str.contains(LEGACY_TRANSIENT, regex=True)
    return ((stages == ENVIRONMENT_STAGE) | legacy).to_numpy()


def _clip_box(joints2d: np.ndarray, skeleton_frames: np.ndarray, size: tuple[int, int], pad: float) -> np.ndarray:
    """Box of one clip: its frames' joints, else the whole skeleton's; (4,) float32."""
    clip_joints = joints2d[skeleton_frames]  # (64, 2, J, 2)
    if not np.isfinite(clip_joints).all(-1).any():
        clip_joints = joints2d
    return crop.clip_box(clip_joints, size[0], size[1], pad=pad)


def prepare_sample(row: Mapping[str, str], data_root: Path, spec: DatasetSpec, config: CacheConfig) -> PreparedSample:
    """Decode, crop and pose one manifest row.

    Raises:
        SampleError: with the stage (``manifest``, ``decode``, ``skeleton``, ``crop``) and the reason.
    """
    if row.get(PROBLEM_COLUMN):
        raise SampleError("manifest", row[PROBLEM_COLUMN])
    video_path = _sample_path(data_root, row, "video_path")
    skeleton_path = _sample_path(data_root, row, "skeleton_path")
    try:
        sampled = video.read_sampled_clips(video_path, clip_len=config.clip_len,
                                           clips_per_video=config.clips_per_video,
                                           backends=video.backends_for(video_path, config.backend, config.fallback))
    except video.DecodeError as err:
        raise SampleError("decode", str(err)) from None
    height, width = sampled.frames.shape[2:4]
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
    clips = torch.empty((k, 3, config.clip_len, config.crop_size, config.crop_size), dtype=torch.float32)
    boxes = np.empty((k, 4), dtype=np.float32)
    pose_out = np.empty((k, 2, 3, spec.num_joints, config.t_p), dtype=np.float32)
    for c in range(k):
        skel_frames = poses.align_frames(sampled.indices[c], sampled.num_frames, skeleton.num_frames)
        boxes[c] = _clip_box(skeleton.joints2d, skel_frames, (width, height), config.crop_pad)
        try:
            clips[c] = torch.from_numpy(crop.crop_and_resize(sampled.frames[c], boxes[c], config.crop_size))
        except (ValueError, RuntimeError) as err:
            raise SampleError("crop", str(err)) from None
        pose_frames = poses.align_frames(sampled.indices[c], sampled.num_frames, len(joints3d))
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below
            pose_out[c] = poses.clip_poses(joints3d[pose_frames], config.t_p, spec.centre_joint)
        if not np.isfinite(pose_out[c]).all():
            raise SampleError("skeleton", "poses are not finite in float32 once centred (absurd coordinates)")
    splits = {p: row.get(p, "") for p in spec.protocols}
    return PreparedSample(row["sample_id"], int(row["label"]), row["action"], splits, clips,
                          sampled.indices.astype(np.int32), boxes, pose_out, sampled.backend)


class PreparedSamples(Dataset):
    """Manifest rows -> ``PreparedSample`` or ``SampleFailure`` (never raises), for a DataLoader's workers."""

    def __init__(self, rows: Sequence[Mapping[str, str]], data_root: Path, config: CacheConfig):
        self.rows = list(rows)
        self.data_root = Path(data_root)
        self.config = config
        self.spec = get_dataset(config.dataset)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PreparedSample | SampleFailure:
        row = self.rows[i]
        try:
            return prepare_sample(row, self.data_root, self.spec, self.config)
        except SampleError as err:
            return SampleFailure(row["sample_id"], err.stage, err.reason)
        except Exception as err:  # a bug or an unforeseen input must not kill the shard: record it
            if is_transient(err):  # memory, disk, interrupted I/O: the sample is fine, the next run retries it
                log.warning("passing fault on %s: %s: %s (retried by the next run)", row["sample_id"],
                            type(err).__name__, err)
                return SampleFailure(row["sample_id"], ENVIRONMENT_STAGE,
                                     f"{TRANSIENT_PREFIX}{type(err).__name__}: {err}"[:500])
            log.exception("unexpected error on %s", row["sample_id"])
            return SampleFailure(row["sample_id"], "unexpected", f"{type(err).__name__}: {err}")


FLOAT16_MAX = float(np.finfo(np.float16).max)
DECODE_WORKER_START = "forkserver"
"""How decode workers start. Not ``fork``: a worker forked from a process whose OpenMP/OpenCV thread pools already
ran (the I3D forward pass of the previous shard) can hang; a fork server starts them from a clean process. As with
any non-fork start method, a script that calls ``extract_shard(workers > 0)`` needs the usual
``if __name__ == "__main__":`` guard."""


def _keep(item):
    return item


def _init_decode_worker(_: int) -> None:
    """One thread per decode worker: the workers are the parallelism, and the main process runs I3D."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@dataclass
class ShardStats:
    """What one shard did, for the run log."""

    samples: int = 0
    clips: int = 0
    failures: int = 0
    seconds: float = 0.0
    i3d_seconds: float = 0.0
    backends: dict[str, int] = field(default_factory=dict)

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds else 0.0


def extract_shard(rows: Sequence[Mapping[str, str]], data_root: str | Path, config: CacheConfig,
                  model: torch.nn.Module, out_path: str | Path, *, attrs: Mapping[str, str], workers: int = 1,
                  batch_size: int = 4, device: str = "cpu", progress: bool = True,
                  record_as: str | Path | None = None) -> ShardStats:
    """Cache one shard of manifest rows into ``out_path`` (written in place: pass a temporary path).

    Args:
        rows: the shard's manifest rows (dicts of strings).
        data_root: folder the manifest's paths are relative to.
        config: the cache config.
        model: I3D in eval mode.
        out_path: the shard file to write.
        attrs: provenance attrs (``provenance.make_attrs``).
        workers: DataLoader worker processes decoding and cropping (0 = in the main process).
        batch_size: clips per I3D forward pass.
        device: where I3D runs.
        progress: report progress (``pipeline.utils.progress``: a bar on a terminal, else log lines).
        record_as: the shard's final path, for its integrity record (default ``out_path``).
    """
    spec = get_dataset(config.dataset)
    loader = DataLoader(PreparedSamples(rows, Path(data_root), config), batch_size=None, shuffle=False,
                        num_workers=workers, collate_fn=_keep, prefetch_factor=2 if workers else None,
                        worker_init_fn=_init_decode_worker if workers else None, persistent_workers=False,
                        multiprocessing_context=DECODE_WORKER_START if workers else None)
    stats = ShardStats()
    start = time.perf_counter()
    pending: list[tuple[PreparedSample, int]] = []
    amp = config.precision == "bf16"

    def flush(writer: ShardWriter) -> None:
        """I3D on the pending clips (whole samples only), then write them; a sample any of whose clips has
        features that do not fit float16 is written to failures instead, with none of its clips."""
        if not pending:
            return
        batch = torch.stack([sample.clips[c] for sample, c in pending])  # (B, 3, 64, 224, 224)
        t0 = time.perf_counter()
        feats = extract_features(model, batch, batch_size=batch_size, device=device, amp_bf16=amp)
        stats.i3d_seconds += time.perf_counter() - t0
        peaks = np.abs(feats).reshape(len(feats), -1).max(axis=1)  # NaN propagates
        overflow = {sample.sample_id: float(peak) for (sample, _), peak in zip(pending, peaks)
                    if not peak <= FLOAT16_MAX}
        for sample_id, peak in overflow.items():
            writer.add_failure(sample_id, "features", f"features overflow float16 (max |x| {peak:.4g})")
            stats.failures += 1
        for (sample, c), feat in zip(pending, feats):
            if sample.sample_id not in overflow:
                writer.append(features=feat, poses=sample.poses[c], sample_id=sample.sample_id,
                              label=sample.label, action=sample.action, clip_index=c,
                              frame_indices=sample.frame_indices[c], box=sample.boxes[c], splits=sample.splits)
                stats.clips += 1
        pending.clear()

    n_rows_max = len(rows) * config.clips_per_video
    with ShardWriter(out_path, n_rows_max=n_rows_max, num_joints=spec.num_joints, t_p=config.t_p, attrs=attrs,
                     protocols=tuple(spec.protocols), compression=config.compression, record_as=record_as,
                     clip_len=config.clip_len, crop_size=config.crop_size) as writer:
        bar = show_progress(loader, Path(out_path).name.split("-luigi")[0], total=len(rows), unit="video",
                            disable=not progress)
        for item in bar:
            stats.samples += 1
            if isinstance(item, SampleFailure):
                writer.add_failure(item.sample_id, item.stage, item.reason)
                stats.failures += 1
                log.warning("skipped %s at %s: %s", item.sample_id, item.stage, item.reason)
                continue
            stats.backends[item.backend] = stats.backends.get(item.backend, 0) + 1
            pending.extend((item, c) for c in range(len(item.clips)))
            if len(pending) >= batch_size:  # only between samples, so a sample's clips share one flush
                flush(writer)
            bar.set_postfix(failed=stats.failures)
        flush(writer)
    stats.seconds = time.perf_counter() - start
    return stats
