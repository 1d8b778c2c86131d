"""One shard of the cache: decode + crop + poses in DataLoader workers, I3D Mixed_5c in the main process.

Per sample, ``pipeline.features.sample.prepare_sample`` (decode, skeleton, crop, poses) runs in a worker; the
main process runs the extractor (``pipeline.features.extractor``) on whole samples' clips and writes the rows.
``make predict`` calls the same two functions on files outside any manifest.

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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.cache.config import CacheConfig
from pipeline.cache.failures import read_shard_failures
from pipeline.cache.integrity import check_integrity
from pipeline.cache.layout import CacheError
from pipeline.cache.writer import ShardWriter
from pipeline.contracts import PROBLEM_COLUMN
from pipeline.crops.store import CropStore, StoreError
from pipeline.datasets.registry import get_dataset
from pipeline.features.extractor import FLOAT16_MAX, clip_features, overflow_peaks
from pipeline.features.sample import ENVIRONMENT_STAGE, PreparedSample, SampleError, prepare_sample, sample_path
from pipeline.utils.fileio import is_transient
from pipeline.utils.progress import show_progress

log = logging.getLogger(__name__)


@dataclass
class SampleFailure:
    sample_id: str
    stage: str
    reason: str


TRANSIENT_PREFIX = "passing fault, retried by the next run: "
"""How the reason of a passing fault starts."""
PROBE_SAMPLES = 8
"""``check_data_root`` refuses a run when this many first usable samples all lack their files."""


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
            sample_path(root, row, "video_path")
            sample_path(root, row, "skeleton_path")
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


MAX_SPARE_CLIPS = 8
"""Clip tensors ``PreparedSamples`` keeps for reuse: at most what one flush frees (``batch_size`` clips' samples),
so reuse never raises the peak memory of a shard."""


class PreparedSamples(Dataset):
    """Manifest rows -> ``PreparedSample`` or ``SampleFailure`` (never raises), for a DataLoader's workers."""

    def __init__(self, rows: Sequence[Mapping[str, str]], data_root: Path, config: CacheConfig,
                 store: str | Path | None = None):
        self.rows = list(rows)
        self.data_root = Path(data_root)
        self.config = config
        self.spec = get_dataset(config.dataset)
        self.store = None
        self.spare: list[torch.Tensor] = []  # clip tensors handed back by ``recycle``
        if store is not None:
            try:
                self.store = CropStore(store)
            except StoreError as err:
                log.warning("%s: decoding every source video of this shard", err)

    def __len__(self) -> int:
        return len(self.rows)

    def recycle(self, clips: torch.Tensor) -> None:
        """Hand back a sample's clips, which nothing reads any more, for the next sample to write into (in-process
        loading only: a worker's tensors go to the main process through shared memory and must not be reused)."""
        if len(self.spare) < MAX_SPARE_CLIPS:
            self.spare.append(clips)

    def __getitem__(self, i: int) -> PreparedSample | SampleFailure:
        row = self.rows[i]
        try:
            return prepare_sample(row, self.data_root, self.spec, self.config, self.store,
                                  clips_out=self.spare.pop() if self.spare else None)
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


def _batch(pending: Sequence[tuple[PreparedSample, int]]) -> torch.Tensor:
    """The pending clips as one tensor: a view of the sample's clips when they are one sample's consecutive
    clips (no 38.5 MB copy per clip), else stacked."""
    sample, first = pending[0]
    if all(s is sample and c == first + i for i, (s, c) in enumerate(pending)):
        return sample.clips[first:first + len(pending)]  # (B, 3, T, S, S)
    return torch.stack([s.clips[c] for s, c in pending])  # (B, 3, T, S, S)


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
                  record_as: str | Path | None = None, store: str | Path | None = None) -> ShardStats:
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
        store: the crop store folder to read the pixels from (None: the source videos).
    """
    spec = get_dataset(config.dataset)
    samples = PreparedSamples(rows, Path(data_root), config, store)
    loader = DataLoader(samples, batch_size=None, shuffle=False,
                        num_workers=workers, collate_fn=_keep, prefetch_factor=2 if workers else None,
                        worker_init_fn=_init_decode_worker if workers else None, persistent_workers=False,
                        multiprocessing_context=DECODE_WORKER_START if workers else None)
    stats = ShardStats()
    start = time.perf_counter()
    pending: list[tuple[PreparedSample, int]] = []

    def flush(writer: ShardWriter) -> None:
        """I3D on the pending clips (whole samples only), then write them; a sample any of whose clips has
        features that do not fit float16 is written to failures instead, with none of its clips."""
        if not pending:
            return
        batch = _batch(pending)  # (B, 3, 64, 224, 224)
        t0 = time.perf_counter()
        feats = clip_features(model, batch, config, batch_size=batch_size, device=device)
        stats.i3d_seconds += time.perf_counter() - t0
        peaks = overflow_peaks(feats)
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
        if not workers:  # the features are computed and written: the clips' memory serves the next samples
            for sample in {id(sample): sample for sample, _ in pending}.values():
                samples.recycle(sample.clips)
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
