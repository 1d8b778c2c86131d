"""The person-crop clip store: each cached video's person region cut once from the source, kept as one small
H.264 stream, so the fine-tune decodes ~0.1-megapixel frames instead of 1080p ones (``make crops``).

What the store keeps of a video (its cache rows give the boxes and the frame windows):

- frames ``first .. last``: the union of its cached clips' windows. Temporal jitter stays inside a clip's
  window (``vpn_head.augment.clip_indices``), and the paper's evaluation samples inside ``[0, last]``;
- the region ``pipeline.crop.jitter_reach`` of every cached box at the store's ``margin_scale`` /
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

A reader maps a source box into store pixels (``StoreView.box``) and crops there with the same
``pipeline.crop`` functions as the source path, so box jitter, flips and temporal jitter are unchanged; the crops
differ from the source path's by codec error and the second resampling. The folder layout is
``pipeline.layout``'s (``crops_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from pipeline import crop, video
from pipeline.cache import open_cache
from pipeline.defaults import DEFAULT_BOX_SCALE, DEFAULT_BOX_SHIFT, DEFAULT_SHARD_SIZE
from pipeline.failures import write_failures
from pipeline.fileio import atomic_write_json, atomic_write_text
from pipeline.layout import (
    CROPS_INDEX, CROPS_SHARD_NAME, FAILURES_NAME, LATEST, CacheError, crops_dir, crops_root, crops_shard_path,
    num_shards,
)
from pipeline.manifest import read_manifest, resolve_data_root
from pipeline.provenance import make_attrs

log = logging.getLogger(__name__)

STAGE = "crops"
"""The ``stage`` of the store's rows in ``failures.csv``."""
PIXELS_CHOICES = ("auto", "store", "source")
"""Where the fine-tune's pixels come from: ``auto`` is the store when one fits the run, else the source videos."""
ENCODE_FPS = 30
"""Frame rate written into the store's MP4s (only frame order matters to a reader)."""
DECODE_CHUNK = 16
"""Source frames decoded at a time while cutting (16 1080p frames are 100 MB)."""


class StoreError(CacheError):
    """A crop store is missing, unreadable, or does not fit the run that asks for it."""


@dataclass(frozen=True)
class StoreConfig:
    """Identity of a crop store: every value that changes its content. Its digest names the store's folder.

    Attributes:
        cache_digest: the folder name (config hash) of the cache whose boxes and frames it holds.
        size: short side, in store pixels, of the smallest cached box of a video (never enlarged).
        margin_scale: box jitter scale the region must hold (``AugmentConfig.box_scale``).
        margin_shift: box jitter shift the region must hold (``AugmentConfig.box_shift``).
        crf: libx264 constant rate factor (lower: larger and closer to the source).
        preset: libx264 preset.
        tune: libx264 tune ("" for none).
        shard_size: videos per shard file.
    """

    cache_digest: str
    size: int = 256
    margin_scale: float = DEFAULT_BOX_SCALE
    margin_shift: float = DEFAULT_BOX_SHIFT
    crf: int = 18
    preset: str = "veryfast"
    tune: str = "fastdecode"
    shard_size: int = DEFAULT_SHARD_SIZE

    def __post_init__(self) -> None:
        if not self.cache_digest:
            raise ValueError("StoreConfig.cache_digest must name the cache the store is cut from")
        if self.size < 16 or self.shard_size < 1:
            raise ValueError(f"size must be >= 16 and shard_size >= 1, got {self.size}, {self.shard_size}")
        if not (0 <= self.margin_scale < 1 and 0 <= self.margin_shift <= 1):
            raise ValueError(f"margins must be in [0, 1), [0, 1], got {self.margin_scale}, {self.margin_shift}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StoreConfig:
        return cls(**json.loads(text))

    def digest(self) -> str:
        """12 hex digits of the sha256 of the config: the store folder's name."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


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


@dataclass(frozen=True)
class StoreView:
    """How store frames relate to source pixels: ``store = (source - origin) * scale``.

    Attributes:
        source_size: (width, height) of the source video (box jitter is fitted into it).
        origin: (x, y) source pixel at the store frame's corner.
        scale: (x, y) store pixels per source pixel.
    """

    source_size: tuple[int, int]
    origin: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)

    def box(self, box: np.ndarray) -> np.ndarray:
        """A source box ``(x0, y0, x1, y1)`` in store pixels, float32 (4,)."""
        origin, scale = np.tile(self.origin, 2), np.tile(self.scale, 2)
        return ((np.asarray(box, np.float64) - origin) * scale).astype(np.float32)


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


def decode_h264(data: bytes, positions: np.ndarray) -> np.ndarray:
    """Frames at ``positions`` (0-based, any order, repeats allowed) of an MP4 held in memory, one thread.

    Returns:
        uint8 (len(positions), h, w, 3) RGB.

    Raises:
        StoreError: the stream is unreadable or shorter than a position.
    """
    positions = np.asarray(positions, np.int64)
    wanted, got = set(positions.tolist()), {}
    last = int(positions.max())
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    got[i] = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)  # (h * 3 / 2, w) -> (h, w, 3)
                if i >= last:
                    break
    except (av.FFmpegError, IndexError) as err:
        raise StoreError(f"crop store stream unreadable ({err})") from err
    if len(got) < len(wanted):
        raise StoreError(f"crop store stream has {len(got)} of the {len(wanted)} frames asked for (up to {last})")
    return np.stack([got[p] for p in positions.tolist()])


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
    with h5py.File(out, "w") as f:
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


# ----------------------------------------------------------------------------------------------------------
# reading


class CropStore:
    """A finished store: the frames of a video's person region, and how they map to source pixels.

    Files are opened per read, so a store can be shared with DataLoader workers (nothing crosses a fork).

    Raises:
        StoreError: no ``index.json`` or ``config.json`` (an unfinished build).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.index: dict[str, str] = json.loads((self.folder / CROPS_INDEX).read_text())
            self.config = StoreConfig.from_json((self.folder / "config.json").read_text())
        except (OSError, ValueError, TypeError) as err:
            raise StoreError(f"{self.folder}: not a finished crop store ({err}); run `make crops`") from err

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.index

    def read(self, sample_id: str, indices: np.ndarray) -> tuple[np.ndarray, StoreView] | None:
        """Store frames of source frames ``indices``, or None when the store lacks the video or a frame.

        Returns:
            ``(frames, view)``: uint8 (len(indices), h, w, 3) RGB, and their mapping to source pixels.
        """
        shard = self.index.get(sample_id)
        if shard is None:
            return None
        with h5py.File(self.folder / shard, "r") as f:
            dataset = f[sample_id.replace("/", "\\")]
            attrs = {k: dataset.attrs[k] for k in ("region", "size", "source_size", "first", "num_frames")}
            indices = np.asarray(indices, np.int64)
            positions = indices - int(attrs["first"])
            if positions.min() < 0 or positions.max() >= int(attrs["num_frames"]):
                return None
            data = dataset[()].tobytes()
        frames = decode_h264(data, positions)  # (T, h, w, 3)
        x0, y0, x1, y1 = (int(v) for v in attrs["region"])
        width, height = (int(v) for v in attrs["size"])
        view = StoreView(tuple(int(v) for v in attrs["source_size"]), (float(x0), float(y0)),
                         (width / (x1 - x0), height / (y1 - y0)))
        return frames, view


def find_store(cache: str | Path) -> Path | None:
    """The store named by ``<cache folder>/crops/LATEST`` when that build finished, else None."""
    cache = Path(cache)
    folder = cache if cache.is_dir() else cache.parent
    latest = crops_root(folder) / LATEST
    if not latest.is_file():
        return None
    store = crops_dir(folder, latest.read_text().strip())
    return store if (store / CROPS_INDEX).is_file() else None


def select_store(cache: str | Path, pixels: str, box_scale: float, box_shift: float) -> CropStore | None:
    """The store a fine-tune reads (``PIXELS=``): None means the source videos.

    Args:
        cache: the cache file or folder the run reads.
        pixels: ``auto`` (the store when one exists and holds the jitter, else the source), ``store`` or ``source``.
        box_scale: the run's box jitter scale.
        box_shift: the run's box jitter shift.

    Raises:
        ValueError: an unknown ``pixels``.
        StoreError: ``pixels="store"`` and no finished store, or one whose margins are smaller than the jitter.
    """
    if pixels not in PIXELS_CHOICES:
        raise ValueError(f"pixels must be one of {PIXELS_CHOICES}, got {pixels!r}")
    if pixels == "source":
        return None
    folder = find_store(cache)
    if folder is None:
        if pixels == "store":
            raise StoreError(f"no finished crop store for the cache {cache}: build it with `make crops` "
                             f"(or PIXELS=source)")
        return None
    store = CropStore(folder)
    if box_scale > store.config.margin_scale or box_shift > store.config.margin_shift:
        reason = (f"the crop store {folder} holds box jitter up to scale {store.config.margin_scale}, shift "
                  f"{store.config.margin_shift}; this run asks {box_scale}, {box_shift}")
        if pixels == "store":
            raise StoreError(reason + ": rebuild it with larger MARGIN_SCALE/MARGIN_SHIFT, or PIXELS=source")
        log.warning("%s: reading the source videos", reason)
        return None
    return store


def store_status(config: StoreConfig, cache_folder: str | Path) -> str:
    """One line: the store's folder and how many of its shards are done."""
    folder = crops_dir(cache_folder, config.digest())
    total = shard_count(cache_folder, config)
    names = set(os.listdir(folder)) if folder.is_dir() else set()
    done = sum(CROPS_SHARD_NAME.format(i) in names for i in range(total))
    return f"crop store {folder}: {done}/{total} shards done"

