"""I3D from the command line: Mixed_5c features of clips in a .npy, or the Kinetics-400 top-k of one clip.

Usage::

    python -m pipeline.tools.run_i3d features --weights W --input X.npy --output Y.npy [--batch-size B]
    python -m pipeline.tools.run_i3d classify --weights W --labels label_map.txt --input clip.{npy,npz}
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.i3d.model import extract_features, load_i3d, validate_clip_array, weights_sha256
from pipeline.i3d.spec import CROP_SIZE
from pipeline.utils.fileio import atomic_path

logger = logging.getLogger(__name__)


def load_classify_input(path: Path) -> torch.Tensor:
    """Read one clip for ``classify``: .npy float32 (3,T,H,W)/(1,3,T,H,W) in [-1, 1], or .npz with uint8
    ``frames`` (T,H,W,3) and optional ``lut_float32`` (256,). Returns (1, 3, T, H, W) float32."""
    if path.suffix == ".npz":
        with np.load(path) as npz:
            if "frames" not in npz:
                raise ValueError(f"{path}: .npz must hold 'frames' (T, H, W, 3) uint8; has {sorted(npz.files)}")
            frames = npz["frames"]
            lut = npz["lut_float32"] if "lut_float32" in npz else None
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if lut is None:
            lut = (np.arange(256, dtype=np.float64) / 127.5 - 1).astype(np.float32)
        if lut.shape != (256,) or lut.dtype != np.float32:
            raise ValueError(f"{path}: lut_float32 must be float32 (256,), got {lut.dtype} {lut.shape}")
        x = lut[frames].transpose(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    elif path.suffix == ".npy":
        x = np.load(path)
        if x.ndim == 4:
            x = x[None]  # (1, 3, T, H, W)
        if x.ndim != 5 or x.shape[:2] != (1, 3):
            raise ValueError(f"{path}: expected (3, T, H, W) or (1, 3, T, H, W), got {x.shape}")
    else:
        raise ValueError(f"{path}: input must be a .npy clip or a .npz with 'frames'")
    validate_clip_array(x, str(path))
    return torch.from_numpy(np.ascontiguousarray(x))


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _cmd_features(args: argparse.Namespace) -> None:
    x = np.load(args.input)
    if x.ndim != 5 or x.shape[1] != 3 or x.shape[3:] != (CROP_SIZE, CROP_SIZE):
        raise ValueError(f"{args.input}: expected (N, 3, T, {CROP_SIZE}, {CROP_SIZE}), got {x.shape}")
    validate_clip_array(x, str(args.input))
    model = load_i3d(args.weights, device=args.device)
    feats = extract_features(model, torch.from_numpy(x), batch_size=args.batch_size, device=args.device,
                             amp_bf16=args.amp_bf16)  # (N, 1024, ceil(T/8), 7, 7)
    _atomic_save_npy(args.output, feats)
    logger.info("wrote %s %s (weights sha256 %s)", args.output, feats.shape, weights_sha256(args.weights))


def _cmd_classify(args: argparse.Namespace) -> None:
    labels = args.labels.read_text().splitlines()
    model = load_i3d(args.weights, with_logits=True, device=args.device)
    if len(labels) != model.cfg.num_classes:
        raise ValueError(f"{args.labels}: expected {model.cfg.num_classes} class names, got {len(labels)}")
    x = load_classify_input(args.input)  # (1, 3, T, H, W)
    with torch.inference_mode():
        logits = model(x.to(args.device))[0].float().cpu()  # (num_classes,)
    probs = logits.softmax(dim=0)
    print(f"Norm of logits: {logits.norm().item():.6f}")
    for i in torch.argsort(logits, descending=True)[:args.top_k].tolist():
        print(f"{probs[i].item():.6g} {logits[i].item():.6g} {labels[i]}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with a one-line reason on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.run_i3d", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    feats = sub.add_parser("features", help="Mixed_5c features of (N, 3, T, 224, 224) clips in [-1, 1]")
    feats.add_argument("--weights", type=Path, default=None, help="state-dict file; not given = random init (warns); a path that names no file is an error")
    feats.add_argument("--input", type=Path, required=True, help="float32 .npy (N, 3, T, 224, 224) in [-1, 1]")
    feats.add_argument("--output", type=Path, required=True, help="float32 .npy (N, 1024, ceil(T/8), 7, 7)")
    feats.add_argument("--batch-size", type=int, default=1)
    feats.add_argument("--device", default="cpu")
    feats.add_argument("--amp-bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    feats.set_defaults(run=_cmd_features)
    cls = sub.add_parser("classify", help="Kinetics-400 top-k of one clip")
    cls.add_argument("--weights", type=Path, required=True)
    cls.add_argument("--labels", type=Path, required=True, help="label_map.txt, one class name per line")
    cls.add_argument("--input", type=Path, required=True,
                     help=".npy float32 (3,T,H,W)/(1,3,T,H,W) in [-1,1], or .npz with uint8 'frames' (T,H,W,3)")
    cls.add_argument("--top-k", type=int, default=5)
    cls.add_argument("--device", default="cpu")
    cls.set_defaults(run=_cmd_classify)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
