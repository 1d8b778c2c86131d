"""The feature extractors of a cache config, and features stored the cache's way.

``make_extractor`` builds the config's extractor (``i3d``, the paper's Mixed_5c, or ``pixels``, the smoke-test
stand-in); ``extractor_for`` does so for a *recorded* config, refusing I3D weights whose sha256 is not the one the
cache was built with; ``clip_features`` runs it with the config's precision and returns the features as the cache
stores them (float16). The cache build (``pipeline.build.extract``) and ``make predict`` (``vpn_head.infer``) share
these, so a prediction sees the numbers an evaluation on the cache would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.cache.config import CacheConfig
from pipeline.i3d.model import RANDOM_INIT, extract_features, load_i3d, weights_sha256
from pipeline.i3d.spec import FEATURE_CHANNELS, SPATIAL_STRIDE, TEMPORAL_STRIDE

FLOAT16_MAX = float(np.finfo(np.float16).max)
"""Features beyond this do not fit the cache's float16: such a sample is a failure, not a row of infinities."""


class WeightsMismatchError(ValueError):
    """The I3D weights at hand are not the ones a cache (and so a run trained on it) was built with."""


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


def extractor_for(config: CacheConfig, weights: str | Path | None, device: str) -> torch.nn.Module:
    """The extractor a recorded cache config was built with, its weights checked by sha256.

    Args:
        config: the cache's config (``i3d_weights_sha256``: the weights' hash, ``random-init``, or ``none`` for
            the ``pixels`` extractor).
        weights: the I3D weights file to use; ignored for ``pixels``.
        device: where the extractor runs.

    Raises:
        WeightsMismatchError: the file's sha256 differs from the config's, or the config names weights and none
            were given.
        FileNotFoundError: ``weights`` does not exist.
    """
    if config.extractor == "pixels":
        return make_extractor("pixels", None, device)
    wanted = config.i3d_weights_sha256
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"I3D weights {weights} do not exist")
    have = weights_sha256(weights)
    if have != wanted:
        if weights is None:
            raise WeightsMismatchError(f"the cache was built with I3D weights sha256 {wanted[:12]}...; pass them "
                                       "with I3D_WEIGHTS= (--i3d-weights)")
        built = "random-init I3D (no weights file)" if wanted == RANDOM_INIT else f"sha256 {wanted[:12]}..."
        raise WeightsMismatchError(f"I3D weights {weights} (sha256 {have[:12]}...) are not the ones the run's cache "
                                   f"was built with ({built})")
    return make_extractor("i3d", str(weights) if weights is not None else None, device)


def clip_features(model: torch.nn.Module, clips: torch.Tensor, config: CacheConfig, *, batch_size: int,
                  device: str) -> np.ndarray:
    """Features of clips with the config's precision (``bf16``: autocast on CUDA), float32 (N, C, T, H, W).

    The cache stores them as float16 (``pipeline.cache.writer``); ``as_stored`` rounds them the same way.
    """
    return extract_features(model, clips, batch_size=batch_size, device=device,
                            amp_bf16=config.precision == "bf16")  # (N, 1024, 8, 7, 7)


def overflow_peaks(features: np.ndarray) -> np.ndarray:
    """Largest |x| of each clip's features (N,), NaN where a feature is NaN; above ``FLOAT16_MAX`` = overflow."""
    return np.abs(features).reshape(len(features), -1).max(axis=1)  # NaN propagates


def as_stored(features: np.ndarray) -> np.ndarray:
    """Features as a cache holds them: float16, rounded as the shard writer rounds them."""
    with np.errstate(over="ignore"):
        return np.asarray(features, dtype=np.float16)
