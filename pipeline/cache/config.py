"""The cache configuration: every value that changes a cache's content, and the hash that names its folder.

Light on purpose: it imports only the defaults, the I3D spec and the layout, never h5py, torch or a video library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache.layout import cache_dir
from pipeline.defaults import (
    DEFAULT_BACKEND,
    DEFAULT_COMPRESSION,
    DEFAULT_CROP_PAD,
    DEFAULT_FALLBACK,
    DEFAULT_SHARD_SIZE,
)
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE

PIXELS_SOURCE = "source"
"""``CacheConfig.pixels`` of a cache decoded from the source videos."""
STORE_PREFIX = "store:"
"""``CacheConfig.pixels`` of a cache read from a crop store: this prefix and the store's digest."""


@dataclass(frozen=True)
class CacheConfig:
    """Identity of a cache. Two runs with equal configs write identical caches into the same folder.

    Attributes:
        dataset: registry name (``ntu60`` ...).
        protocol: only samples in this protocol's splits ("" = every sample of the manifest).
        manifest_sha256: content hash of the manifest (adding samples makes a new cache).
        i3d_weights_sha256: hash of the I3D weights, or ``random-init``.
        extractor: ``i3d`` (the paper's Mixed_5c) or ``pixels`` (a fast stand-in for smoke tests).
        clip_len: frames per clip (paper: 64); the cached features are ``i3d_spec.feature_shape(clip_len,
            crop_size)``.
        clips_per_video: K clips per video (1 = uniform over the whole video).
        t_p: poses kept per clip (paper: 20 NTU, 30 Smarthome, 5 N-UCLA).
        crop_size: side of the I3D input (224).
        crop_pad: box padding as a fraction of the joints' box.
        backend: primary video backend (decoders differ by a few grey levels).
        fallback: backends tried when the primary fails.
        precision: ``fp32`` or ``bf16`` (autocast on GPU).
        compression: HDF5 compression of the feature datasets.
        shard_size: videos per shard.
        pixels: where the clips' pixels came from: ``source`` (the videos) or ``store:<digest>`` (that person-crop
            store, ``make crops``). Left out of the JSON when ``source``, so caches built before the field keep
            their hash.
    """

    dataset: str
    protocol: str = ""
    manifest_sha256: str = ""
    i3d_weights_sha256: str = "random-init"
    extractor: str = "i3d"
    clip_len: int = CLIP_FRAMES
    clips_per_video: int = 1
    t_p: int = 20
    crop_size: int = CROP_SIZE
    crop_pad: float = DEFAULT_CROP_PAD
    backend: str = DEFAULT_BACKEND
    fallback: tuple[str, ...] = DEFAULT_FALLBACK
    precision: str = "fp32"
    compression: str = DEFAULT_COMPRESSION
    shard_size: int = DEFAULT_SHARD_SIZE
    pixels: str = PIXELS_SOURCE

    def __post_init__(self) -> None:
        if self.clip_len <= 0 or self.clips_per_video <= 0 or self.t_p <= 0 or self.shard_size <= 0:
            raise ValueError("clip_len, clips_per_video, t_p and shard_size must be positive")
        if self.t_p > self.clip_len:
            raise ValueError(f"t_p={self.t_p} cannot exceed clip_len={self.clip_len}")
        if self.extractor not in ("i3d", "pixels"):
            raise ValueError(f"extractor must be i3d or pixels, got {self.extractor!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.pixels != PIXELS_SOURCE and not (self.pixels.startswith(STORE_PREFIX) and self.store_digest):
            raise ValueError(f"pixels must be {PIXELS_SOURCE!r} or '{STORE_PREFIX}<digest>', got {self.pixels!r}")

    @property
    def store_digest(self) -> str:
        """The digest of the crop store the pixels came from, "" for the source videos."""
        return self.pixels.removeprefix(STORE_PREFIX) if self.pixels.startswith(STORE_PREFIX) else ""

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["pixels"] == PIXELS_SOURCE:  # the hash of every cache built from the videos stays what it was
            del data["pixels"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CacheConfig:
        data = json.loads(text)
        data["fallback"] = tuple(data.get("fallback", ()))
        return cls(**data)

    def digest(self) -> str:
        """12 hex digits of the sha256 of the config: the cache folder's name."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def cache_dir(self, cache_root: str | Path) -> Path:
        """``<cache_root>/<dataset>/<digest>/``."""
        return cache_dir(cache_root, self.dataset, self.digest())
