"""InceptionI3d (RGB, Inception-v1 inflated to 3D) up to Mixed_5c, plus the Kinetics-400 logits head.

Written from the architecture facts in ``shared/i3d/README.md`` so that DeepMind's ``rgb_scratch`` weights
(PyTorch key layout, e.g. ``Mixed_3b.b1b.conv3d.weight``) load with ``load_state_dict(strict=True)``.
TensorFlow semantics that matter for matching the checkpoint:

- "SAME" padding is asymmetric and depends on the input size: per dimension ``total = max(k - s, 0)`` when
  ``n % s == 0`` else ``max(k - n % s, 0)``; ``front = total // 2`` and the extra row/frame goes at the end.
  It is applied with ``F.pad`` before convs/pools built with ``padding=0`` (max-pools pad with -inf).
- BatchNorm eps is 1e-3 and the checkpoint has no learned scale (``bn.weight`` is all ones).
- Convs have no bias except the logits conv; every unit is conv -> BN -> ReLU except the logits unit.
- Input is RGB in [-1, 1], layout (N, 3, T, H, W). (N, 3, T, 224, 224) -> Mixed_5c (N, 1024, ceil(T/8), 7, 7)
  (``pipeline.i3d.spec``: strides, channels and the paper's clip).

Its command line (features of a .npy, Kinetics-400 top-k of one clip) is ``pipeline.tools.run_i3d``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.i3d.spec import FEATURE_CHANNELS, FEATURE_SHAPE, SPATIAL_STRIDE, TEMPORAL_STRIDE
from pipeline.utils.fileio import file_sha256

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
"""``weights_sha256`` of a model that has no weights file (random init)."""

INPUT_RANGE_ATOL = 1e-4
"""Slack allowed outside [-1, 1] when validating CLI inputs (float rounding of pixel / 127.5 - 1)."""

# (out0, out1a, out1b, out2a, out2b, out3b) per Inception block; the block output has out0+out1b+out2b+out3b.
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
FINAL_ENDPOINTS: tuple[str, ...] = ("Mixed_5c", "Logits")


@dataclass(frozen=True)
class I3DConfig:
    """Architecture and regularisation settings of :class:`InceptionI3d`.

    Attributes:
        final_endpoint: ``"Mixed_5c"`` (feature extractor) or ``"Logits"`` (adds the Kinetics head).
        num_classes: Outputs of the logits conv (400 for Kinetics-400).
        dropout: Drop probability before the logits conv (only active in train mode).
        bn_eps: BatchNorm epsilon; 1e-3 is TF/Sonnet's and what the checkpoint was trained with.
        bn_momentum: PyTorch BatchNorm momentum (weight of the new batch statistic); matters only when
            fine-tuning with unfrozen BN layers.
    """

    final_endpoint: str = "Mixed_5c"
    num_classes: int = 400
    dropout: float = 0.5
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01

    def __post_init__(self) -> None:
        if self.final_endpoint not in FINAL_ENDPOINTS:
            raise ValueError(f"final_endpoint must be one of {FINAL_ENDPOINTS}, got {self.final_endpoint!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension.

    Args:
        size: Input length along the dimension.
        kernel: Kernel length.
        stride: Stride.

    Returns:
        ``(front, back)``; any odd extra row/frame goes at the back, as in TF.
    """
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    front = total // 2
    return front, total - front


@functools.lru_cache(maxsize=1024)
def _f_pad_amounts(
    size: tuple[int, int, int], kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> tuple[int, ...] | None:
    """``F.pad`` argument (W, H, T pairs, last dim first) for TF SAME padding; None when nothing to pad."""
    pads = [tf_same_padding(n, k, s) for n, k, s in zip(size, kernel, stride)]
    if not any(front or back for front, back in pads):
        return None
    return tuple(p for front_back in reversed(pads) for p in front_back)


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
             value: float = 0.0) -> torch.Tensor:
    """Pad a (N, C, T, H, W) tensor for a TF "SAME" conv/pool (amounts cached per input shape)."""
    amounts = _f_pad_amounts(tuple(x.shape[-3:]), kernel, stride)
    if amounts is None:
        return x
    return F.pad(x, amounts, value=value)


class Unit3D(nn.Module):
    """Conv3d with TF SAME padding, optional BatchNorm (no affine scale in the checkpoint) and ReLU.

    With stride 1 and odd kernels TF SAME padding is symmetric, ``(k - 1) // 2`` on both sides for every input
    size, so the conv pads itself (no extra copy). Otherwise (only ``Conv3d_1a_7x7``, stride 2) the padding
    depends on the input size and is applied with ``F.pad`` before a ``padding=0`` conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), *, cfg: I3DConfig, use_bn: bool = True,
                 activation: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.static_padding = all(s == 1 and k % 2 == 1 for k, s in zip(kernel, stride))
        padding = tuple((k - 1) // 2 for k in kernel) if self.static_padding else 0
        self.activation = activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=padding, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=cfg.bn_eps, momentum=cfg.bn_momentum) if use_bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static_padding:
            x = pad_same(x, self.kernel, self.stride)  # (N, C_in, T + pad_t, H + pad_h, W + pad_w)
        x = self.conv3d(x)  # (N, C_out, ceil(T/s), ceil(H/s), ceil(W/s))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF SAME padding (pads with -inf, so padding never wins the max).

    A box max is separable, so it is computed one dimension at a time as an elementwise maximum of ``k``
    shifted (strided) views. On CPU this is much faster than ``F.max_pool3d`` on contiguous tensors (which
    also computes argmax indices; README "Measured performance") and gives identical values. Gradients at ties are
    split evenly.
    """

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel, self.stride, value=float("-inf"))
        for dim, k, s in zip((2, 3, 4), self.kernel, self.stride):
            span = (x.shape[dim] - k) // s * s + 1  # input extent covered by the output's strided starts
            index = [slice(None)] * 5
            out = None
            for shift in range(k):
                index[dim] = slice(shift, shift + span, s)
                view = x[tuple(index)]
                out = view if out is None else torch.maximum(out, view)
            x = out  # dim shrinks to (n - k) // s + 1
        return x  # (N, C, ceil(T/s), ceil(H/s), ceil(W/s))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=TF SAME"


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: [b0, b1a->b1b, b2a->b2b, b3a(pool)->b3b]."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int], *, cfg: I3DConfig) -> None:
        super().__init__()
        out0, out1a, out1b, out2a, out2b, out3b = channels
        self.out_channels = out0 + out1b + out2b + out3b
        self.b0 = Unit3D(in_channels, out0, cfg=cfg)
        self.b1a = Unit3D(in_channels, out1a, cfg=cfg)
        self.b1b = Unit3D(out1a, out1b, (3, 3, 3), cfg=cfg)
        self.b2a = Unit3D(in_channels, out2a, cfg=cfg)
        self.b2b = Unit3D(out2a, out2b, (3, 3, 3), cfg=cfg)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out3b, cfg=cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)  # (N, out0 + out1b + out2b + out3b, T, H, W)


class InceptionI3d(nn.Module):
    """RGB I3D. Block attribute names equal the checkpoint's key prefixes (``Conv3d_1a_7x7``, ``Mixed_3b``, ...).

    ``forward_features`` runs the trunk to Mixed_5c; ``forward_head`` is the Kinetics logits head (only when
    ``cfg.final_endpoint == "Logits"``); ``forward`` is both.
    """

    def __init__(self, cfg: I3DConfig = I3DConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.frozen_blocks: tuple[str, ...] = ()
        # Output shapes for a (N, 3, 64, 224, 224) input.
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), cfg=cfg)  # (N, 64, 32, 112, 112)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))  # (N, 64, 32, 56, 56)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, cfg=cfg)  # (N, 64, 32, 56, 56)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), cfg=cfg)  # (N, 192, 32, 56, 56)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))  # (N, 192, 32, 28, 28)
        self.Mixed_3b = InceptionBlock(192, INCEPTION_CHANNELS["Mixed_3b"], cfg=cfg)  # (N, 256, 32, 28, 28)
        self.Mixed_3c = InceptionBlock(256, INCEPTION_CHANNELS["Mixed_3c"], cfg=cfg)  # (N, 480, 32, 28, 28)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))  # (N, 480, 16, 14, 14)
        self.Mixed_4b = InceptionBlock(480, INCEPTION_CHANNELS["Mixed_4b"], cfg=cfg)  # (N, 512, 16, 14, 14)
        self.Mixed_4c = InceptionBlock(512, INCEPTION_CHANNELS["Mixed_4c"], cfg=cfg)  # (N, 512, 16, 14, 14)
        self.Mixed_4d = InceptionBlock(512, INCEPTION_CHANNELS["Mixed_4d"], cfg=cfg)  # (N, 512, 16, 14, 14)
        self.Mixed_4e = InceptionBlock(512, INCEPTION_CHANNELS["Mixed_4e"], cfg=cfg)  # (N, 528, 16, 14, 14)
        self.Mixed_4f = InceptionBlock(528, INCEPTION_CHANNELS["Mixed_4f"], cfg=cfg)  # (N, 832, 16, 14, 14)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))  # (N, 832, 8, 7, 7)
        self.Mixed_5b = InceptionBlock(832, INCEPTION_CHANNELS["Mixed_5b"], cfg=cfg)  # (N, 832, 8, 7, 7)
        self.Mixed_5c = InceptionBlock(832, INCEPTION_CHANNELS["Mixed_5c"], cfg=cfg)  # (N, 1024, 8, 7, 7)
        self.trunk_names: tuple[str, ...] = tuple(name for name, _ in self.named_children())
        self.block_names = self.trunk_names
        if cfg.final_endpoint == "Logits":
            self.dropout = nn.Dropout(cfg.dropout)
            self.logits = Unit3D(FEATURE_CHANNELS, cfg.num_classes, cfg=cfg, use_bn=False, activation=False,
                                 bias=True)
            self.block_names += ("logits",)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal init for the convs, so a random-init trunk keeps activations of order 1.

        PyTorch's default conv init shrinks the activation variance about 3x per layer; through I3D's depth a
        random-init Mixed_5c would be ~1e-6, below float16's normal range, and a random-init cache would hold
        zeros. Pretrained weights overwrite all of this.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run the trunk.

        Args:
            x: (N, 3, T, H, W) RGB in [-1, 1].

        Returns:
            Mixed_5c, (N, 1024, ceil(T/8), ceil(H/32), ceil(W/32)); (N, 1024, ceil(T/8), 7, 7) at 224x224.
        """
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (N, 3, T, H, W) RGB clips, got shape {tuple(x.shape)}")
        for name in self.trunk_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, feat: torch.Tensor) -> torch.Tensor:
        """Kinetics logits from Mixed_5c, averaged over time.

        Args:
            feat: Mixed_5c, (N, 1024, T', 7, 7) with T' >= 2 (at least 9 input frames).

        Returns:
            (N, num_classes) logits.
        """
        if self.cfg.final_endpoint != "Logits":
            raise RuntimeError("this InceptionI3d has no logits head (build it with final_endpoint='Logits')")
        if (feat.ndim != 5 or feat.shape[1] != FEATURE_CHANNELS or feat.shape[-2:] != FEATURE_SHAPE[2:]
                or feat.shape[2] < 2):
            raise ValueError(
                f"the logits head needs Mixed_5c of shape (N, 1024, T'>=2, 7, 7) (input 224x224 with >= 9 frames), "
                f"got {tuple(feat.shape)}"
            )
        x = F.avg_pool3d(feat, kernel_size=(2, 7, 7), stride=1)  # (N, 1024, T'-1, 1, 1)
        x = self.logits(self.dropout(x))  # (N, num_classes, T'-1, 1, 1)
        return x.squeeze(-1).squeeze(-1).mean(dim=2)  # (N, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of (N, 3, T, 224, 224) clips."""
        return self.forward_head(self.forward_features(x))

    def freeze_until(self, block_name: str | None) -> None:
        """Freeze every block up to and including ``block_name`` for fine-tuning.

        Frozen blocks get ``requires_grad=False`` and stay in eval mode (BatchNorm keeps its running
        statistics) even after ``model.train()``. Blocks after it are unfrozen. ``None`` unfreezes everything.

        Args:
            block_name: A name from ``self.block_names`` (e.g. ``"Mixed_4f"``) or None.
        """
        if block_name is not None and block_name not in self.block_names:
            raise ValueError(f"unknown block {block_name!r}; expected one of {self.block_names}")
        stop = 0 if block_name is None else self.block_names.index(block_name) + 1
        self.frozen_blocks = self.block_names[:stop]
        for name in self.block_names:
            getattr(self, name).requires_grad_(name not in self.frozen_blocks)
        self.train(self.training)

    def train(self, mode: bool = True) -> InceptionI3d:
        """Set train/eval mode; frozen blocks (see :meth:`freeze_until`) always stay in eval mode."""
        super().train(mode)
        for name in self.frozen_blocks:
            getattr(self, name).train(False)
        return self


def weights_sha256(path: str | Path | None) -> str:
    """sha256 hex digest of a weights file, or ``"random-init"`` when there is none (None or missing)."""
    if path is None or not Path(path).is_file():
        return RANDOM_INIT
    return file_sha256(path)


def _first(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


FINETUNE_KIND = "finetune"
"""``kind`` of a ``make finetune`` checkpoint (``vpn_head.engine.checkpoints``; pipeline/ never imports vpn_head)."""


def load_weights(model: InceptionI3d, path: str | Path) -> None:
    """Load a state-dict file into ``model`` strictly, with clear errors.

    Keys of the logits head (``logits.*``) in the file are ignored when the model has no head. A checkpoint of
    ``make finetune`` (a dict with ``kind == "finetune"``) gives its fine-tuned I3D (its ``i3d`` entry): the
    paper's two-stage path (section 3.3), ``make cache I3D_WEIGHTS=runs/<fine-tune>/best.pt``.

    Args:
        model: The model to fill.
        path: File written by ``torch.save(state_dict)``, or a fine-tune checkpoint.

    Raises:
        ValueError: The file is unreadable, not a state dict, its keys/shapes do not match the model, or a tensor
            holds NaN or inf (the message names the file and the tensors).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"cannot read I3D weights {path}: {type(err).__name__}: {err}") from err
    if isinstance(state, dict) and state.get("kind") == FINETUNE_KIND:
        state = state.get("i3d")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"I3D weights {path} is not a state dict of tensors (got {type(state).__name__})")
    if model.cfg.final_endpoint != "Logits":
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"I3D weights {path} do not match InceptionI3d({model.cfg.final_endpoint}): "
            f"missing keys [{_first(missing)}]; unexpected keys [{_first(unexpected)}]"
        )
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"I3D weights {path} have wrong shapes: {_first(wrong)}")
    bad = nonfinite_tensors(state)
    if bad:
        raise ValueError(f"I3D weights {path} hold NaN or infinite values in {bad}: every feature would be garbage")
    model.load_state_dict(state, strict=True)


def nonfinite_tensors(state: Mapping[str, Any]) -> str:
    """The first floating-point tensors of a state dict that hold NaN or inf, as ``name (n of size)`` ('' when all
    are finite): weights that cannot produce a number, refused wherever weights are loaded."""
    bad = []
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()})")
    return _first(bad)


def load_i3d(weights: str | Path | None, *, with_logits: bool = False, device: str | torch.device = "cpu",
             seed: int = 0, channels_last: bool = True) -> InceptionI3d:
    """Build an InceptionI3d in eval mode and load its weights.

    Args:
        weights: State-dict file (e.g. ``rgb_scratch.pt``). None gives a random-init model (seeded, so runs are
            repeatable) and a loud warning: its features are meaningless. A path that does not exist is an error.
        with_logits: Also build the Kinetics logits head (``final_endpoint="Logits"``).
        device: Where to put the model.
        seed: Seed of the random init (used only without weights; the global RNG is left untouched).
        channels_last: Store conv weights channels-last-3d, so convs run (and return) NDHWC; inputs need no
            conversion. It made the CPU forward of a paper clip faster (README "Measured performance"); values
            change by float rounding only (<= 4e-5 on Mixed_5c).

    Returns:
        The model, in eval mode, on ``device``.

    Raises:
        FileNotFoundError: ``weights`` names no file.
        ValueError: The file is corrupt, does not match the architecture, or holds NaN or inf.
    """
    cfg = I3DConfig(final_endpoint="Logits" if with_logits else "Mixed_5c")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"I3D weights {weights} do not exist (give no weights for a random-init I3D)")
    if weights is None:
        logger.warning(
            "!!! I3D: no weights file was given. Using RANDOM-INIT weights (seed %d): features and logits will be "
            "MEANINGLESS. Fine for tests and smoke runs only; pass the real weights (e.g. rgb_scratch.pt) for "
            "anything else. !!!", seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = InceptionI3d(cfg)
    else:
        model = InceptionI3d(cfg)
        load_weights(model, weights)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model.to(device).eval()


def extract_features(model: InceptionI3d, clips: torch.Tensor, *, batch_size: int,
                     device: str | torch.device, amp_bf16: bool) -> np.ndarray:
    """Mixed_5c features of many clips, in batches, without autograd.

    Args:
        model: An InceptionI3d in eval mode (moved to ``device`` if it is not there).
        clips: (N, 3, T, H, W) float RGB in [-1, 1], on any device.
        batch_size: Clips per forward pass.
        device: Where to run.
        amp_bf16: Use bfloat16 autocast; honoured only on CUDA (CPU runs stay float32).

    Returns:
        float32 array (N, 1024, ceil(T/8), ceil(H/32), ceil(W/32)).
    """
    if model.training:
        raise ValueError("extract_features needs the model in eval mode (call model.eval()): "
                         "batch statistics would make the features meaningless")
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (N, 3, T, H, W), got shape {tuple(clips.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    use_amp = amp_bf16 and device.type == "cuda"
    model.to(device)
    n, _, t, h, w = clips.shape
    out = np.empty((n, FEATURE_CHANNELS, math.ceil(t / TEMPORAL_STRIDE), math.ceil(h / SPATIAL_STRIDE),
                    math.ceil(w / SPATIAL_STRIDE)), np.float32)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        for start in range(0, n, batch_size):
            batch = clips[start:start + batch_size].to(device, torch.float32, non_blocking=True)
            feat = model.forward_features(batch)  # (B, 1024, ceil(T/8), ceil(H/32), ceil(W/32))
            out[start:start + len(batch)] = feat.float().cpu().numpy()
    return out


def validate_clip_array(x: np.ndarray, name: str) -> None:
    """Check that ``x`` is float32 RGB in [-1, 1] and finite; raise ValueError saying what is wrong."""
    if x.dtype != np.float32:
        raise ValueError(f"{name}: expected float32, got {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{name}: empty array {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - INPUT_RANGE_ATOL or hi > 1 + INPUT_RANGE_ATOL:
        hint = " (looks like 0..255 pixels: use x / 127.5 - 1)" if hi > 2 else ""
        raise ValueError(f"{name}: values must be in [-1, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    if lo >= 0:
        logger.warning("%s: no negative values; I3D expects [-1, 1] (pixel / 127.5 - 1), not [0, 1]", name)
