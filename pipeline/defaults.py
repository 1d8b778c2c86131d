"""Default choices of a cache build, in a module with no heavy imports.

``CacheConfig``, the ``tasks.cache`` command line and the libraries (video, crop, cache writer) read their
defaults here, so reading a config does not load h5py, av or decord. Why each default was chosen is noted
beside it; the measurements behind them are in the README's "Measured performance" section.
"""

from __future__ import annotations

DEFAULT_BACKEND = "opencv"
"""Fastest one-thread decoder on the NTU 1080p samples (``bench/bench_decode.py``)."""
DEFAULT_FALLBACK: tuple[str, ...] = ("pyav", "decord")
"""Backends tried, in order, when the primary one fails on a video."""
DEFAULT_COMPRESSION = "zstd-1"
"""HDF5 compression of features and poses: within a few per cent of the smallest codec at several times its
write speed, and faster to read than gzip (``bench/bench_cache.py``)."""
DEFAULT_CROP_PAD = 0.15
"""Padding on each side of the joints' box, as a fraction of its longer side."""
DEFAULT_SHARD_SIZE = 200
"""Videos per shard task (Luigi's scheduler slows with thousands of tiny tasks)."""
DEFAULT_BOX_SCALE = 0.1
"""Fine-tune box jitter: the side is scaled by up to this fraction (``vpn_head.data.augment``); the crop store keeps
that much margin (``pipeline.crops.store_build``)."""
DEFAULT_BOX_SHIFT = 0.1
"""Fine-tune box jitter: the centre moves by up to this fraction of the side; the crop store keeps the margin."""
