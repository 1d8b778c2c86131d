"""The person-crop clip store: each cached video's person region cut once from the source, kept as one small
H.264 stream, so the fine-tune decodes ~0.1-megapixel frames instead of 1080p ones (``make crops``).

What the store keeps of a video (its cache rows give the boxes and the frame windows):

- frames ``first .. last``: the union of its cached clips' windows. Temporal jitter stays inside a clip's
  window (``vpn_head.data.augment.clip_indices``), and the paper's evaluation samples inside ``[0, last]``;
- the region ``pipeline.video.crop.jitter_reach`` of every cached box at the store's ``margin_scale`` /
  ``margin_shift`` (every box the fine-tune's box jitter can draw lies inside it), widened by one pixel, in
  whole source pixels;
- that region resized (``cv2.INTER_AREA``) so that the smallest box's short side is ``size`` pixels (never
  enlarged), to even sides (yuv420p), encoded with libx264 (``crf``, ``preset``, ``tune``, one thread) into an
  MP4 in memory and stored as the bytes of one uint8 dataset of the shard file. ``tune=fastdecode`` (no CABAC, no
  deblocking) halves the decode time for ~10% more bytes; frames are converted to RGB by OpenCV from the decoded
  I420 planes (twice as fast as PyAV's conversion).

Why H.264 in HDF5 shards: measured against JPEG frames, MJPEG and lossless uint8 chunks on the real 1080p NTU
samples (``bench/bench_crops.py``; the numbers are in the README's "Crop store" section), it is the smallest by an
order of magnitude and the fastest to decode; one file per shard of videos gives Luigi's atomic rename,
resumption and few files.

Reading a finished store is ``pipeline.crops.store``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
import cv2
import h5py
import numpy as np

from pipeline.video import crop
from pipeline.video import reader as video
from pipeline.cache.reader import open_cache
from pipeline.cache.failures import write_failures
from pipeline.cache.writer import fail_safe_h5
from pipeline.utils.fileio import atomic_write_json, atomic_write_text
from pipeline.cache.layout import (
    CROPS_INDEX, CROPS_SHARD_NAME, FAILURES_NAME, LATEST, crops_dir, crops_root, crops_shard_path,
    num_shards,
)
from pipeline.datasets.manifest import read_manifest, resolve_data_root
from pipeline.cache.provenance import make_attrs
from pipeline.crops.store import StoreConfig

log = logging.getLogger(__name__)

STAGE = "crops"
"""The ``stage`` of the store's rows in ``failures.csv``."""
ENCODE_FPS = 30
"""Frame rate written into the store's MP4s (only frame order matters to a reader)."""
DECODE_CHUNK = 16
"""Source frames decoded at a time while cutting (16 1080p frames are 100 MB)."""


# ----------------------------------------------------------------------------------------------------------
# what to store


@dataclass(frozen=True)
class VideoPlan:
    """What the store keeps of one cached video.

    Attributes:
        sample_id: the video.
        boxes: (clips, 4) its cached boxes, source pixels.
        first: first frame kept.
        last: last frame kept.
    """

    sample_id: str
    boxes: np.ndarray
    first: int
    last: int


@dataclass(frozen=True)
class CacheSource:
    """The cache a store is cut from: its videos' plans and how it decoded them."""

    plans: tuple[VideoPlan, ...]
    backend: str
    fallback: tuple[str, ...]


@lru_cache(maxsize=4)
def read_cache_source(cache_folder: str) -> CacheSource:
    """The plans of every video of a cache, in cache order, and its decode backends (read once per process).

    Raises:
        CacheError: no readable merged cache in the folder.
    """
    with open_cache(cache_folder) as reader:
        ids, boxes, indices = reader.sample_ids, reader.boxes, reader.frame_indices
        config = reader.attrs["config_json"]
    order = list(dict.fromkeys(ids))
    plans = []
    for sid in order:
        rows = np.flatnonzero(ids == sid)
        plans.append(VideoPlan(str(sid), boxes[rows].astype(np.float64), int(indices[rows].min()),
                               int(indices[rows].max())))
    return CacheSource(tuple(plans), config.get("backend", video.DEFAULT_BACKEND),
                       tuple(config.get("fallback", video.DEFAULT_FALLBACK)))


def shard_plans(plans: Sequence[VideoPlan], shard_size: int, index: int) -> Sequence[VideoPlan]:
    """The videos of shard ``index``."""
    return plans[index * shard_size:(index + 1) * shard_size]


def shard_count(cache_folder: str | Path, config: StoreConfig) -> int:
    """Shard files of a store of the cache in ``cache_folder``."""
    return num_shards(len(read_cache_source(str(cache_folder)).plans), config.shard_size)


def store_region(boxes: np.ndarray, frame_w: int, frame_h: int,
                 config: StoreConfig) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The source region a video's store frames show, and their size.

    Args:
        boxes: (clips, 4) the video's cached boxes.
        frame_w: source width.
        frame_h: source height.
        config: the store's size and margins.

    Returns:
        ``((x0, y0, x1, y1), (width, height))``: whole source pixels, and the even store frame size.
    """
    reach = np.stack([crop.jitter_reach(b, frame_w, frame_h, config.margin_scale, config.margin_shift)
                      for b in boxes])  # (clips, 4)
    x0, y0 = max(math.floor(reach[:, 0].min()) - 1, 0), max(math.floor(reach[:, 1].min()) - 1, 0)
    x1, y1 = min(math.ceil(reach[:, 2].max()) + 1, frame_w), min(math.ceil(reach[:, 3].max()) + 1, frame_h)
    short = float(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).min())
    factor = min(config.size / max(short, 1.0), 1.0)
    size = tuple(max(2, 2 * round(side * factor / 2)) for side in (x1 - x0, y1 - y0))
    return (x0, y0, x1, y1), size


def _region_frames(reader: video.VideoReader, plan: VideoPlan, region: tuple[int, int, int, int],
                   size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The store frames of a video: each source frame's region, resized; decoded a chunk at a time."""
    x0, y0, x1, y1 = region
    shrinking = size[0] <= x1 - x0 and size[1] <= y1 - y0
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    for start in range(plan.first, plan.last + 1, DECODE_CHUNK):
        frames = reader.get_frames(np.arange(start, min(start + DECODE_CHUNK, plan.last + 1)))  # (n, H, W, 3)
        for frame in frames:
            yield cv2.resize(frame[y0:y1, x0:x1], size, interpolation=interpolation)  # (h, w, 3)


def encode_h264(frames: Iterator[np.ndarray], size: tuple[int, int], crf: int, preset: str,
                tune: str = "") -> tuple[bytes, int]:
    """Encode RGB frames of ``size`` (width, height) into an MP4 (libx264, yuv420p, one thread) in memory.

    Returns:
        ``(mp4 bytes, frames written)``.
    """
    buffer = io.BytesIO()
    count = 0
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=ENCODE_FPS)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, **({"tune": tune} if tune else {})}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            count += 1
        container.mux(stream.encode())
    return buffer.getvalue(), count


def cut_video(plan: VideoPlan, path: Path, config: StoreConfig, backends: Sequence[str]) -> tuple[bytes, dict]:
    """Decode a source video's frames ``plan.first .. plan.last``, cut its region and encode it.

    Returns:
        ``(mp4 bytes, attrs)``: attrs ``region``, ``size``, ``source_size``, ``first``, ``num_frames``.

    Raises:
        video.DecodeError: the source cannot be opened or decoded, or is shorter than the plan.
    """
    with video.open_video(path, backends[0], tuple(backends[1:])) as reader:
        region, size = store_region(plan.boxes, reader.width, reader.height, config)
        data, count = encode_h264(_region_frames(reader, plan, region, size), size, config.crf, config.preset,
                                  config.tune)
        source_size = (reader.width, reader.height)
    attrs = {"region": region, "size": size, "source_size": source_size, "first": plan.first, "num_frames": count}
    return data, attrs


def _sample_videos(manifest: str | Path, data_root: str | Path) -> dict[str, Path]:
    """sample_id -> absolute video path, from the manifest."""
    df = read_manifest(manifest)
    root = resolve_data_root(manifest, data_root)
    return {sid: root / v for sid, v in zip(df["sample_id"], df["video_path"])}


def run_shard(config: StoreConfig, cache_folder: str | Path, index: int, manifest: str | Path,
              data_root: str | Path, out: str | Path) -> list[tuple[str, str, str]]:
    """Cut, encode and write the videos of shard ``index`` into ``out`` (an HDF5 file); bad videos are rows.

    Returns:
        The shard's failure rows ``(sample_id, "crops", reason)`` (also stored in the file).
    """
    source = read_cache_source(str(cache_folder))
    videos = _sample_videos(manifest, data_root)
    backends = (source.backend, *(b for b in source.fallback if b != source.backend))
    failures: list[tuple[str, str, str]] = []
    with fail_safe_h5(out) as f:  # a full disk: one ShardWriteError, the file deleted, no double close
        f.attrs.update(make_attrs(json.loads(config.to_json()), ""))
        for plan in shard_plans(source.plans, config.shard_size, index):
            if plan.sample_id not in videos:
                failures.append((plan.sample_id, STAGE, "not in the manifest (give the one the cache was built from)"))
                continue
            try:
                data, attrs = cut_video(plan, videos[plan.sample_id], config, backends)
            except (video.DecodeError, ValueError, av.FFmpegError) as err:
                failures.append((plan.sample_id, STAGE, str(err).splitlines()[0]))
                log.warning("crop store skips %s: %s", plan.sample_id, err)
                continue
            dataset = f.create_dataset(plan.sample_id.replace("/", "\\"), data=np.frombuffer(data, np.uint8))
            dataset.attrs.update({k: np.asarray(v) for k, v in attrs.items()})
        f.attrs["failures_json"] = json.dumps(failures)
    return failures


def merge_store(config: StoreConfig, cache_folder: str | Path) -> tuple[int, int]:
    """Index the finished shards (``index.json``, written last), write ``failures.csv`` and point ``LATEST`` here.

    Returns:
        ``(videos stored, videos skipped)``.
    """
    folder = crops_dir(cache_folder, config.digest())
    index: dict[str, str] = {}
    failures: list[tuple[str, str, str]] = []
    for i in range(shard_count(cache_folder, config)):
        path = crops_shard_path(folder, i)
        with h5py.File(path, "r") as f:
            index.update({name.replace("\\", "/"): path.name for name in f})
            failures += [tuple(row) for row in json.loads(f.attrs["failures_json"])]
    write_failures(folder / FAILURES_NAME, failures)
    atomic_write_json(folder / CROPS_INDEX, index)
    atomic_write_text(crops_root(cache_folder) / LATEST, folder.name + "\n")
    return len(index), len(failures)


def store_status(config: StoreConfig, cache_folder: str | Path) -> str:
    """One line: the store's folder and how many of its shards are done."""
    folder = crops_dir(cache_folder, config.digest())
    total = shard_count(cache_folder, config)
    names = set(os.listdir(folder)) if folder.is_dir() else set()
    done = sum(CROPS_SHARD_NAME.format(i) in names for i in range(total))
    return f"crop store {folder}: {done}/{total} shards done"

