"""Checkpoints of both trainers: one format, an explicit ``kind``, one loader.

A checkpoint is a dict saved with ``torch.save``: ``format``, ``kind``, ``epoch``, ``model`` (the head's state),
``train_config`` (the trainer's config), ``vpn_config`` (the head's), plus ``i3d`` (the trunk's state) for
``kind="finetune"``, and for ``last.pt`` the training state (optimizer, scheduler, scaler, RNG, progress).
``kind`` says which trainer wrote it: ``head`` (``vpn_head.train.head``, a VPN head on cached features) or
``finetune`` (``vpn_head.train.finetune``, I3D + head on pixels). Checkpoints written before ``kind`` existed get it
inferred once, in ``load_checkpoint``, from their keys (only a fine-tune checkpoint holds ``i3d``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.i3d.model import InceptionI3d, nonfinite_tensors
from pipeline.utils.fileio import atomic_write_bytes
from vpn_head.engine.config import FinetuneConfig, TrainConfig, saved_type_problem
from vpn_head.model.config import VPNConfig
from vpn_head.model.finetune_vpn import FinetuneVPN
from vpn_head.model.vpn import VPN

CHECKPOINT_FORMAT = "vpn_head.checkpoint/1"
CHECKPOINT_KEYS: tuple[str, ...] = ("format", "epoch", "model", "train_config", "vpn_config")
CHECKPOINT_NAMES: tuple[str, ...] = ("best", "last")
HEAD, FINETUNE = "head", "finetune"
KINDS: tuple[str, ...] = (HEAD, FINETUNE)
"""What wrote a checkpoint: the head trainer or the end-to-end fine-tune."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model or the requested run."""


def checkpoint_path(run_dir: str | os.PathLike, checkpoint: str) -> Path:
    """``<run_dir>/<checkpoint>.pt`` for a checkpoint name of ``CHECKPOINT_NAMES``.

    Raises:
        ValueError: another name.
    """
    if checkpoint not in CHECKPOINT_NAMES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_NAMES}, got {checkpoint!r}")
    return Path(run_dir) / f"{checkpoint}.pt"


def save_checkpoint(path: Path, kind: str, **state: Any) -> None:
    """``torch.save`` of ``{format, kind, **state}`` through a temporary file: a crash never leaves a partial file."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "kind": kind, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint on the CPU; its ``kind`` is set (inferred from the keys for checkpoints without one).

    Args:
        path: the ``.pt`` file.
        kind: when given, the kind the caller needs (``head`` or ``finetune``).

    Raises:
        CheckpointError: the file is missing, not a torch file, not one of our checkpoints, or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:200]}); delete it to start "
                              f"over") from error
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it is damaged or from another program")
    ckpt.setdefault("kind", FINETUNE if "i3d" in ckpt else HEAD)  # written before checkpoints named their kind
    if ckpt["kind"] not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {ckpt['kind']!r} (known: {KINDS})")
    if ckpt["kind"] == FINETUNE and "i3d" not in ckpt:
        raise CheckpointError(f"{path} holds no I3D weights; it is not a fine-tune checkpoint")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} is a {ckpt['kind']} checkpoint, not a {kind} one")
    problem = content_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path}: {problem}; it is damaged or was written from a diverged run")
    return ckpt


def content_problem(ckpt: dict[str, Any]) -> str:
    """Why a checkpoint's content (past its top-level keys) cannot be used, or '': the epoch an int, the configs
    objects whose known fields have their types, the weights tensors that are all finite (NaN weights would score
    every clip as class 0 and report a plausible number), the training state of the expected form."""
    epoch = ckpt["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"epoch {epoch!r} is not a count of epochs"
    for key in ("train_config", "vpn_config"):
        if not isinstance(ckpt[key], dict):
            return f"{key} is a {type(ckpt[key]).__name__}, not an object"
    problem = saved_type_problem(FinetuneConfig if ckpt["kind"] == FINETUNE else TrainConfig, ckpt["train_config"])
    if problem:
        return f"train_config: {problem}"
    for key in ("model", "i3d"):
        if key not in ckpt:
            continue
        state = ckpt[key]
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            return f"{key} is not a state dict of tensors"
        bad = nonfinite_tensors(state)
        if bad:
            return f"{key} weights hold NaN or infinite values in {bad}, so it cannot score anything"
    progress = ckpt.get("progress")
    if progress is not None:
        if not isinstance(progress, dict) or not isinstance(progress.get("history", []), list):
            return "progress is not an object with a history list"
        best_epoch, done = progress.get("best_epoch", 0), progress.get("epoch", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (best_epoch, done)) \
                or not 0 <= best_epoch <= done or len(progress.get("history", [])) < best_epoch:
            return f"progress epochs {done!r}/best {best_epoch!r} do not fit its history"
    return ""


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``, with an error naming the checkpoint when the shapes or keys differ."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{path}: its weights do not fit the model ({detail[:300]})") from error


def head_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> VPN:
    """The VPN head a checkpoint of either kind holds, its weights loaded."""
    try:
        config = VPNConfig.from_saved(ckpt["vpn_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad model config ({error})") from error
    head = VPN(config)
    load_weights(head, ckpt["model"], path)
    return head


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> VPN | FinetuneVPN:
    """Rebuild the model a checkpoint was saved from and load its weights: a ``VPN`` for ``kind="head"``, a
    ``FinetuneVPN`` (I3D + head) for ``kind="finetune"``."""
    head = head_from_checkpoint(ckpt, path)
    if ckpt["kind"] == HEAD:
        return head
    i3d = InceptionI3d()
    load_weights(i3d, ckpt["i3d"], path)
    return FinetuneVPN(i3d, head)


def model_state(model: VPN | FinetuneVPN) -> dict[str, Any]:
    """The checkpoint entries of a model's weights (inverse of ``model_from_checkpoint`` / ``load_model_state``)."""
    if isinstance(model, FinetuneVPN):
        return {"model": model.head.state_dict(), "i3d": model.i3d.state_dict()}
    return {"model": model.state_dict()}


def load_model_state(model: VPN | FinetuneVPN, ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Load a checkpoint's weights into an existing model of its kind."""
    if isinstance(model, FinetuneVPN):
        load_weights(model.head, ckpt["model"], path)
        load_weights(model.i3d, ckpt["i3d"], path)
    else:
        load_weights(model, ckpt["model"], path)


def kind_of(model: VPN | FinetuneVPN) -> str:
    """The checkpoint kind a model is saved as."""
    return FINETUNE if isinstance(model, FinetuneVPN) else HEAD
