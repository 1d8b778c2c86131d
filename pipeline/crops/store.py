"""The person-crop store, read: a finished store's frames of a video's person region and how they map to source
pixels; which store a run reads (``PIXELS=``, the fine-tune's and the cache build's). The builder is
``pipeline.crops.store_build`` (``make crops``, from the manifest alone).

A reader maps a source box into store pixels (``StoreView.box``) and crops there with the same
``pipeline.video.crop`` functions as the source path, so box jitter, flips and temporal jitter are unchanged; the crops
differ from the source path's by codec error and the second resampling. The folder layout is
``pipeline.cache.layout``'s (``crops_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import h5py
import numpy as np

from pipeline.cache.layout import CONFIG_NAME, CROPS_INDEX, LATEST, CacheError, crops_dir, crops_root
from pipeline.defaults import (
    DEFAULT_BACKEND,
    DEFAULT_BOX_SCALE,
    DEFAULT_BOX_SHIFT,
    DEFAULT_CROP_PAD,
    DEFAULT_FALLBACK,
    DEFAULT_SHARD_SIZE,
)

log = logging.getLogger(__name__)

PIXELS_CHOICES = ("auto", "store", "source")
"""Where the fine-tune's and the cache build's pixels come from: ``auto`` is the store when one fits the run, else
the source videos."""


STORE_AREA_FROM = 2.0
"""Store frames are cropped with ``INTER_LINEAR`` unless the crop shrinks by 2x or more: a store keeps the whole
video's box at ~``StoreConfig.size`` (256) px, so a clip's crop shrinks to 224 by at most ~1.3x, where linear
interpolation (every source pixel within 2 px of a sample) does not alias and costs a third of ``INTER_AREA``'s
general-ratio path (0.14 vs 0.49 ms per 256 px frame, one core)."""


class StoreError(CacheError):
    """A crop store is missing, unreadable, or does not fit the run that asks for it."""


@dataclass(frozen=True)
class StoreConfig:
    """Identity of a crop store: every value that changes its content. Its digest names the store's folder.

    Attributes:
        dataset: registry name (how the skeletons are read).
        manifest_sha256: content hash of the manifest whose videos it holds.
        crop_pad: the box padding (``CacheConfig.crop_pad``) of every box it must hold.
        backend: the video backend that decoded the sources.
        fallback: backends tried when the primary fails.
        size: short side, in store pixels, of a video's whole-skeleton box (never enlarged).
        margin_scale: box jitter scale the region must hold (``AugmentConfig.box_scale``).
        margin_shift: box jitter shift the region must hold (``AugmentConfig.box_shift``).
        crf: libx264 constant rate factor (lower: larger and closer to the source).
        preset: libx264 preset.
        tune: libx264 tune ("" for none).
        shard_size: videos per shard file.
    """

    dataset: str
    manifest_sha256: str
    crop_pad: float = DEFAULT_CROP_PAD
    backend: str = DEFAULT_BACKEND
    fallback: tuple[str, ...] = DEFAULT_FALLBACK
    size: int = 256
    margin_scale: float = DEFAULT_BOX_SCALE
    margin_shift: float = DEFAULT_BOX_SHIFT
    crf: int = 18
    preset: str = "veryfast"
    tune: str = "fastdecode"
    shard_size: int = DEFAULT_SHARD_SIZE

    def __post_init__(self) -> None:
        if not self.dataset or not self.manifest_sha256:
            raise ValueError("StoreConfig needs the dataset and the manifest's sha256")
        if self.crop_pad < 0:
            raise ValueError(f"crop_pad must be non-negative, got {self.crop_pad}")
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
        data = json.loads(text)
        data["fallback"] = tuple(data.get("fallback", ()))
        return cls(**data)

    def fits(self, manifest_sha256: str, crop_pad: float) -> bool:
        """Whether the store holds every box of a cache of this manifest at this box padding."""
        return self.manifest_sha256 == manifest_sha256 and abs(self.crop_pad - crop_pad) < 1e-9

    def digest(self) -> str:
        """12 hex digits of the sha256 of the config: the store folder's name."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StoreView:
    """How store frames relate to source pixels: ``store = (source - origin) * scale``.

    Attributes:
        source_size: (width, height) of the source video (box jitter is fitted into it).
        origin: (x, y) source pixel at the store frame's corner.
        scale: (x, y) store pixels per source pixel.
        area_from: shrink factor from which a crop of these frames is resized with ``INTER_AREA`` rather than
            ``INTER_LINEAR`` (``pipeline.video.crop.to_uint8_crops``): 1 for source frames (every shrink),
            ``STORE_AREA_FROM`` for store frames.
    """

    source_size: tuple[int, int]
    origin: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    area_from: float = 1.0

    def box(self, box: np.ndarray) -> np.ndarray:
        """A source box ``(x0, y0, x1, y1)`` in store pixels, float32 (4,)."""
        origin, scale = np.tile(self.origin, 2), np.tile(self.scale, 2)
        return ((np.asarray(box, np.float64) - origin) * scale).astype(np.float32)


def decode_h264(data: bytes, positions: np.ndarray) -> np.ndarray:
    """Frames at ``positions`` (0-based, any order, repeats allowed) of an MP4 held in memory, one thread.

    Returns:
        uint8 (len(positions), h, w, 3) RGB.

    Raises:
        StoreError: the stream is unreadable or shorter than a position.
    """
    positions = np.asarray(positions, np.int64)
    slots: dict[int, list[int]] = {}
    for slot, position in enumerate(positions.tolist()):
        slots.setdefault(position, []).append(slot)
    last, out, i = int(positions.max()), None, -1
    if positions.min() < 0:
        raise StoreError(f"crop store frame positions must be >= 0, got {positions.min()}")
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"
            for i, frame in enumerate(container.decode(stream)):
                if i in slots:  # only the frames asked for are converted
                    if out is None:
                        out = np.empty((len(positions), frame.height, frame.width, 3), np.uint8)  # (T, h, w, 3)
                    first, *repeats = slots[i]
                    cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420, dst=out[first])  # (h * 3 / 2, w)
                    for slot in repeats:
                        out[slot] = out[first]
                if i >= last:
                    break
    except (av.FFmpegError, IndexError) as err:
        raise StoreError(f"crop store stream unreadable ({err})") from err
    if i < last or out is None:
        raise StoreError(f"crop store stream has {i + 1} frames, fewer than asked for (up to frame {last})")
    return out


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
            self.config = StoreConfig.from_json((self.folder / CONFIG_NAME).read_text())
        except (OSError, ValueError, TypeError) as err:
            raise StoreError(f"{self.folder}: not a finished crop store ({err}); run `make crops`") from err

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.index

    def entry(self, sample_id: str) -> tuple[dict, h5py.Dataset, h5py.File] | None:
        """The open shard, dataset and attributes of a video, or None when the store lacks it.

        Raises:
            StoreError: the shard file or the video's entry is unreadable.
        """
        shard = self.index.get(sample_id)
        if shard is None:
            return None
        try:
            f = h5py.File(self.folder / shard, "r")
        except OSError as err:
            raise StoreError(f"crop store shard {self.folder / shard} unreadable ({err})") from err
        try:
            dataset = f[sample_id.replace("/", "\\")]
            attrs = {k: dataset.attrs[k] for k in ("region", "size", "source_size", "first", "num_frames")}
        except (KeyError, OSError) as err:
            f.close()
            raise StoreError(f"crop store entry {sample_id} in {self.folder / shard} unreadable ({err})") from err
        return attrs, dataset, f

    def num_frames(self, sample_id: str) -> int | None:
        """Frames stored of a video (all of its decodable frames: the count clips are sampled over), or None.

        Raises:
            StoreError: the entry is unreadable.
        """
        found = self.entry(sample_id)
        if found is None:
            return None
        attrs, _, f = found
        f.close()
        return int(attrs["first"]) + int(attrs["num_frames"])

    def read(self, sample_id: str, indices: np.ndarray) -> tuple[np.ndarray, StoreView] | None:
        """Store frames of source frames ``indices``, or None when the store lacks the video or a frame.

        Returns:
            ``(frames, view)``: uint8 (len(indices), h, w, 3) RGB, and their mapping to source pixels.

        Raises:
            StoreError: the entry is unreadable or its stream does not decode.
        """
        found = self.entry(sample_id)
        if found is None:
            return None
        attrs, dataset, f = found
        with f:
            indices = np.asarray(indices, np.int64)
            positions = indices - int(attrs["first"])
            if positions.min() < 0 or positions.max() >= int(attrs["num_frames"]):
                return None
            try:
                data = dataset[()].tobytes()
            except OSError as err:
                raise StoreError(f"crop store entry {sample_id} unreadable ({err})") from err
        frames = decode_h264(data, positions)  # (T, h, w, 3)
        x0, y0, x1, y1 = (int(v) for v in attrs["region"])
        width, height = (int(v) for v in attrs["size"])
        view = StoreView(tuple(int(v) for v in attrs["source_size"]), (float(x0), float(y0)),
                         (width / (x1 - x0), height / (y1 - y0)), STORE_AREA_FROM)
        return frames, view


def stores_of(dataset_folder: str | Path, manifest_sha256: str, crop_pad: float) -> list[Path]:
    """The finished stores under ``<dataset folder>/crops/`` that fit a cache of this manifest and box padding,
    the one ``crops/LATEST`` names first, then the newest."""
    root = crops_root(dataset_folder)
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else ""
    found = []
    for folder in root.glob("*/"):
        if not (folder / CROPS_INDEX).is_file():
            continue
        try:
            config = StoreConfig.from_json((folder / CONFIG_NAME).read_text())
        except (OSError, ValueError, TypeError):
            continue
        if config.fits(manifest_sha256, crop_pad):
            found.append(folder)
    return sorted(found, key=lambda p: (p.name != latest, -(p / CROPS_INDEX).stat().st_mtime))


def find_store(cache: str | Path) -> Path | None:
    """The finished store that fits a cache (its manifest and box padding, from its ``config.json``), else None.

    Args:
        cache: a cache folder or a file in it; its stores live in ``<dataset folder>/crops/``.
    """
    cache = Path(cache)
    folder = cache if cache.is_dir() else cache.parent
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "manifest_sha256" not in config:
        return None
    stores = stores_of(folder.parent, config["manifest_sha256"], float(config.get("crop_pad", DEFAULT_CROP_PAD)))
    return stores[0] if stores else None


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
