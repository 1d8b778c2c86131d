"""The person-crop clip store: each video's person region cut once from the source, kept as one small H.264
stream: the first stage after the manifest (``make crops``). The fine-tune and the feature cache then decode
~0.1-megapixel frames instead of 1080p ones, so a source video is decoded once however many stages read it.

What the store keeps of a video (from the manifest and the skeleton file alone, no cache needed):

- every frame ``0 .. n - 1``: ``pipeline.video.sampling.sample_frame_indices`` puts the first clip's first
  position on frame 0 and the last clip's last on frame ``n - 1`` for every ``clip_len`` and K, and temporal
  jitter stays inside the windows, so "the frames any sampling may ask for" is every frame (it costs nothing
  over first-to-last). ``n`` is the frame count the source path samples over (the reported count, or the
  decodable one when up to 5% is missing, as ``pipeline.video.reader.read_sampled_clips``; more is a failure);
- the region ``pipeline.video.crop.any_clip_reach`` of the skeleton's joints (read with the dataset's reader at
  the source geometry, as the cache build does) at the store's ``crop_pad`` and ``margin_scale`` /
  ``margin_shift``: every clip box ``crop.clip_box`` gives for any subset of the frames, jittered as the
  fine-tune's box jitter may, lies inside it; widened by one pixel, in whole source pixels;
- that region resized (``cv2.INTER_AREA``) so that the whole video's box's short side is ``size`` pixels (never
  enlarged), to even sides (yuv420p), encoded with libx264 (``crf``, ``preset``, ``tune``, one thread) into an
  MP4 in memory and stored as the bytes of one uint8 dataset of the shard file, with the attributes ``region``,
  ``size``, ``source_size``, ``first`` (0) and ``num_frames``. ``tune=fastdecode`` (no CABAC, no deblocking)
  halves the decode time for ~10% more bytes; frames are converted to RGB by OpenCV from the decoded I420 planes
  (twice as fast as PyAV's conversion).

Why H.264 in HDF5 shards: measured against JPEG frames, MJPEG and lossless uint8 chunks on the real 1080p NTU
samples (``bench/bench_crops.py``; the numbers are in docs/finetune.md), it is the smallest by an order of
magnitude and the fastest to decode; one file per shard of videos gives Luigi's atomic rename, resumption and
few files.

Reading a finished store is ``pipeline.crops.store``; checking one is ``verify_store`` (``make verify``).
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

from pipeline.cache.failures import write_failures
from pipeline.cache.layout import (
    CROPS_INDEX,
    CROPS_SHARD_NAME,
    FAILURES_NAME,
    LATEST,
    crops_dir,
    crops_root,
    crops_shard_path,
    num_shards,
)
from pipeline.cache.provenance import make_attrs
from pipeline.cache.writer import fail_safe_h5
from pipeline.contracts import PROBLEM_COLUMN
from pipeline.crops.store import CropStore, StoreConfig, StoreError, decode_h264
from pipeline.datasets.manifest import inside_root, read_manifest, resolve_data_root
from pipeline.datasets.ntu import SkeletonFormatError
from pipeline.datasets.poses import load_skeleton
from pipeline.datasets.registry import get_dataset
from pipeline.utils.fileio import atomic_write_json, atomic_write_text
from pipeline.video import crop
from pipeline.video import reader as video

log = logging.getLogger(__name__)

STAGE = "crops"
"""The ``stage`` of the store's rows in ``failures.csv``."""
ENCODE_FPS = 30
"""Frame rate written into the store's MP4s (only frame order matters to a reader)."""
DECODE_CHUNK = 16
"""Source frames decoded at a time while cutting (16 1080p frames are 100 MB)."""
MAX_MISSING_FRACTION = 0.05
"""Largest share of the reported frames that may fail to decode (``read_sampled_clips``'s default)."""


# ----------------------------------------------------------------------------------------------------------
# what to store


@lru_cache(maxsize=4)
def manifest_rows(manifest: str) -> tuple[dict, ...]:
    """Every row of the manifest, in its order (the store covers the whole manifest, every protocol)."""
    return tuple(read_manifest(manifest).to_dict("records"))


def shard_rows(manifest: str | Path, shard_size: int, index: int) -> tuple[dict, ...]:
    """The manifest rows of shard ``index``."""
    return manifest_rows(str(manifest))[index * shard_size:(index + 1) * shard_size]


def shard_count(manifest: str | Path, config: StoreConfig) -> int:
    """Shard files of a store of ``manifest``."""
    return num_shards(len(manifest_rows(str(manifest))), config.shard_size)


def store_region(joints_xy: np.ndarray, frame_w: int, frame_h: int,
                 config: StoreConfig) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The source region a video's store frames show, and their size.

    Args:
        joints_xy: (T, B, J, 2) every skeleton frame's joints in source pixels, NaN where missing.
        frame_w: source width.
        frame_h: source height.
        config: the store's box padding, size and margins.

    Returns:
        ``((x0, y0, x1, y1), (width, height))``: whole source pixels, and the even store frame size.
    """
    reach, side = crop.any_clip_reach(joints_xy, frame_w, frame_h, config.crop_pad, config.margin_scale,
                                      config.margin_shift)
    x0, y0 = max(math.floor(reach[0]) - 1, 0), max(math.floor(reach[1]) - 1, 0)
    x1, y1 = min(math.ceil(reach[2]) + 1, frame_w), min(math.ceil(reach[3]) + 1, frame_h)
    short = min(side, frame_w, frame_h)
    factor = min(config.size / max(short, 1.0), 1.0)
    size = tuple(max(2, 2 * round(extent * factor / 2)) for extent in (x1 - x0, y1 - y0))
    return (x0, y0, x1, y1), size


def _region_frames(reader: video.VideoReader, region: tuple[int, int, int, int], size: tuple[int, int],
                   counted: list[int]) -> Iterator[np.ndarray]:
    """Every frame's region, resized, decoded a chunk at a time; ``counted[0]`` ends as the frames yielded.

    A reported frame count up to ``MAX_MISSING_FRACTION`` too high ends the video at the decodable frames, as
    ``read_sampled_clips`` re-samples over them.

    Raises:
        video.FrameCountError: more than that is missing (a truncated file).
    """
    x0, y0, x1, y1 = region
    shrinking = size[0] <= x1 - x0 and size[1] <= y1 - y0
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    last = reader.num_frames - 1
    start = 0
    while start <= last:
        wanted = np.arange(start, min(start + DECODE_CHUNK, last + 1))
        try:
            frames = reader.get_frames(wanted)  # (n, H, W, 3)
        except video.FrameCountError as err:
            if err.decodable == 0 or err.decodable < math.ceil((1 - MAX_MISSING_FRACTION) * err.reported):
                raise
            log.warning("%s; storing the %d decodable frames", err, err.decodable)
            last = err.decodable - 1
            continue
        for frame in frames:
            counted[0] += 1
            yield cv2.resize(frame[y0:y1, x0:x1], size, interpolation=interpolation)  # (h, w, 3)
        start += DECODE_CHUNK


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


class SkipVideo(Exception):
    """A video the store cannot hold; its message is the failures row's reason."""


def cut_video(row: dict, data_root: Path, config: StoreConfig) -> tuple[bytes, dict]:
    """Read a manifest row's skeleton, decode every frame of its video, cut the region and encode it.

    Returns:
        ``(mp4 bytes, attrs)``: attrs ``region``, ``size``, ``source_size``, ``first`` (0), ``num_frames``.

    Raises:
        SkipVideo: a manifest problem, a path outside DATA_ROOT, an unreadable skeleton or video.
    """
    if row.get(PROBLEM_COLUMN):
        raise SkipVideo(f"manifest: {row[PROBLEM_COLUMN]}")
    try:
        video_path = inside_root(data_root, str(row["video_path"]))
        skeleton_path = inside_root(data_root, str(row["skeleton_path"]))
    except ValueError as err:
        raise SkipVideo(f"manifest: {err}") from None
    backends = video.backends_for(video_path, config.backend, config.fallback)
    try:
        with video.open_video(video_path, backends[0], tuple(backends[1:])) as reader:
            source_size = (reader.width, reader.height)
            try:
                skeleton = load_skeleton(get_dataset(config.dataset), skeleton_path, source_size)
            except (SkeletonFormatError, OSError) as err:
                raise SkipVideo(f"skeleton: {str(err).splitlines()[0]}") from None
            region, size = store_region(skeleton.joints2d, *source_size, config)
            counted = [0]
            data, count = encode_h264(_region_frames(reader, region, size, counted), size, config.crf,
                                      config.preset, config.tune)
    except (video.DecodeError, ValueError, av.FFmpegError) as err:
        raise SkipVideo(f"decode: {str(err).splitlines()[0]}") from None
    if count == 0:
        raise SkipVideo("decode: no frame decodes")
    attrs = {"region": region, "size": size, "source_size": source_size, "first": 0, "num_frames": count}
    return data, attrs


def run_shard(config: StoreConfig, index: int, manifest: str | Path, data_root: str | Path,
              out: str | Path) -> list[tuple[str, str, str]]:
    """Cut, encode and write the videos of shard ``index`` into ``out`` (an HDF5 file); bad videos are rows.

    Returns:
        The shard's failure rows ``(sample_id, "crops", reason)`` (also stored in the file).
    """
    root = resolve_data_root(manifest, data_root)
    failures: list[tuple[str, str, str]] = []
    with fail_safe_h5(out) as f:  # a full disk: one ShardWriteError, the file deleted, no double close
        f.attrs.update(make_attrs(json.loads(config.to_json()), ""))
        for row in shard_rows(manifest, config.shard_size, index):
            sample_id = str(row["sample_id"])
            try:
                data, attrs = cut_video(row, root, config)
            except SkipVideo as err:
                failures.append((sample_id, STAGE, str(err)))
                log.warning("crop store skips %s: %s", sample_id, err)
                continue
            dataset = f.create_dataset(sample_id.replace("/", "\\"), data=np.frombuffer(data, np.uint8))
            dataset.attrs.update({k: np.asarray(v) for k, v in attrs.items()})
        f.attrs["failures_json"] = json.dumps(failures)
    return failures


def merge_store(config: StoreConfig, dataset_folder: str | Path, manifest: str | Path) -> tuple[int, int]:
    """Index the finished shards (``index.json``, written last), write ``failures.csv`` and point ``LATEST`` here.

    Returns:
        ``(videos stored, videos skipped)``.
    """
    folder = crops_dir(dataset_folder, config.digest())
    index: dict[str, str] = {}
    failures: list[tuple[str, str, str]] = []
    for i in range(shard_count(manifest, config)):
        path = crops_shard_path(folder, i)
        with h5py.File(path, "r") as f:
            index.update({name.replace("\\", "/"): path.name for name in f})
            failures += [tuple(row) for row in json.loads(f.attrs["failures_json"])]
    write_failures(folder / FAILURES_NAME, failures)
    atomic_write_json(folder / CROPS_INDEX, index)
    atomic_write_text(crops_root(dataset_folder) / LATEST, folder.name + "\n")
    return len(index), len(failures)


def store_status(config: StoreConfig, dataset_folder: str | Path, manifest: str | Path) -> str:
    """One line: the store's folder and how many of its shards are done."""
    folder = crops_dir(dataset_folder, config.digest())
    total = shard_count(manifest, config)
    names = set(os.listdir(folder)) if folder.is_dir() else set()
    done = sum(CROPS_SHARD_NAME.format(i) in names for i in range(total))
    return f"crop store {folder}: {done}/{total} shards done"



def verify_store(folder: str | Path) -> dict[str, str]:
    """Full check of a finished store: every shard its index names opens, and every video's stream decodes to
    its recorded frame count. Returns the bad shard files or videos with what is wrong."""
    folder = Path(folder)
    try:
        store = CropStore(folder)
    except StoreError as err:
        return {str(folder): str(err)}
    bad: dict[str, str] = {}
    for sample_id in store.index:
        try:
            count = store.num_frames(sample_id)
            found = store.entry(sample_id)
            if found is None or count is None:
                raise StoreError("missing from its shard")
            _, dataset, f = found
            with f:
                data = dataset[()].tobytes()
            frames = decode_h264(data, np.array([count - 1]))  # decodes every frame up to the last
            if frames.shape[0] != 1:
                raise StoreError("short stream")
        except (StoreError, OSError) as err:
            bad[f"{folder / store.index[sample_id]}:{sample_id}"] = str(err)
    return bad
