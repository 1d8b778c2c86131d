"""Train the VPN head on a feature cache (``make train-head DATASET=… PROTOCOL=… [VARIANT=…] [EPOCHS=…]``).

Paper schedule by default: SGD, momentum 0.9, lr 0.01 divided by 10 every 10 epochs, 30 epochs, batch 16.
Every epoch ends with a score on the validation split, an atomic checkpoint ``last.pt`` (``best.pt`` too when
the headline metric improves), and rewritten ``train_log.csv`` and ``metrics.json``. The validation split is
the protocol's own (Smarthome) or, where the protocol has none (NTU, N-UCLA), ``val_carved``: the clips of a
deterministic 20 % of the training subjects, left out of training (``vpn_head.splits``). The test split is never
used to choose anything; ``metrics.json`` names the split that chose ``best.pt``. Each epoch also logs the
gradient norm of every module group relative to its weights (``grad_<group>`` columns), the first place to look
when a branch does not learn. ``runs/<name>/config.json`` holds the full config.

Re-running the same command resumes after the last finished epoch and ends bit-identical (CPU, fixed seed)
to a run that never stopped: the checkpoint holds the model, optimizer, scheduler, loss scaler and every RNG
state, and the shuffling of epoch e depends only on (seed, e). Asking for more epochs extends a run; any
other change of the experiment is refused unless ``--force-new`` (which moves the old run aside) or a new
``--run`` name is given.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm import tqdm

from pipeline.cache import CacheError
from pipeline.datasets import get_dataset
from vpn_head.config import EMBEDDING_LOSSES, VARIANTS, VPNConfig
from vpn_head.data import CachedClips, resolve_cache, selection_split
from vpn_head.splits import CARVED_VAL
from vpn_head.evaluate import (
    CHECKPOINT_FORMAT, CheckpointError, amp_dtype, atomic_write_bytes, atomic_write_csv, atomic_write_json,
    autocast, default_run_name, load_checkpoint, load_weights, make_loader, resolve_device, score_clips,
    summarise, video_scores,
)
from vpn_head.losses import vpn_loss
from vpn_head.model import VPN

log = logging.getLogger(__name__)

RESUME_FREE_FIELDS: tuple[str, ...] = (
    "epochs", "num_workers", "in_memory", "amp", "device", "cache", "runs_dir", "run_name",
)
"""TrainConfig fields a resumed run may change: they do not define the experiment (``epochs`` may grow)."""
LOSS_KEYS: tuple[str, ...] = ("total", "classification", "embedding", "attention")
GRAD_GROUPS: tuple[str, ...] = ("pose_encoder", "attention", "embedding", "classifier")
"""Module groups whose relative gradient norm ||grad|| / ||weight|| is logged each epoch (mean over steps)."""
LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "lr", "train_loss", "train_classification", "train_embedding", "train_attention", "train_acc",
    "eval_split", "eval_top1", "eval_mean_class", "epoch_time_s", "train_samples_per_s",
    *(f"grad_{g}" for g in GRAD_GROUPS),
)
EVAL_SPLITS: tuple[str, ...] = ("auto", "val", CARVED_VAL, "test")
POSTFIX_EVERY = 10
"""Batches between progress-bar postfix updates (each one syncs the device)."""


class RunConfigError(ValueError):
    """A run directory holds a different experiment than the one requested."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a head-training run.

    Attributes:
        dataset: registry name (``ntu60``, ``ntu120``, ``smarthome``, ``nucla``).
        protocol: protocol of the dataset (``cs``, ``cv``, ``cs1``, ``cv2``, ``v3_12``, ...).
        variant: ``i3d`` | ``attention`` | ``vpn`` (paper Table 1).
        model: further ``VPNConfig`` overrides (``pose_backbone``, ``coupler``, ``embedding_loss``, ...).
        epochs: epochs to train in total (paper: 30).
        batch_size: clips per SGD step (paper: 16).
        lr: initial learning rate (paper: 0.01).
        momentum: SGD momentum (0.9).
        weight_decay: SGD L2 weight decay. The paper gives none, so the default 0 trains exactly the stated
            objective (eq. 6, whose lambda2 term already regularises the attention); 5e-4 is a usual choice
            when the head over-fits a small dataset.
        pose_lr_scale: learning-rate multiplier of the pose branch (pose backbone and attention network). The
            paper uses one learning rate (1.0); on frozen features the pose branch's relative gradient is orders of
            magnitude below the classifier's (see ``grad_*`` in ``train_log.csv``), so it barely moves at 1.0.
        lr_step: epochs between learning-rate decays (paper: 10).
        lr_gamma: learning-rate decay factor (paper: 0.1).
        eval_split: split scored after each epoch and used to pick ``best.pt``: ``auto`` (``val`` when the
            protocol has one, else ``val_carved``), ``val``, ``val_carved`` or ``test`` (choosing on the test
            split is allowed for comparison with papers that did, and says so in ``metrics.json``).
        val_fraction: share of the training subjects carved out as ``val_carved`` (0.2).
        seed: seeds Python, NumPy, torch and the shuffling.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only) and no cuDNN autotuning.
        num_workers: DataLoader worker processes (each opens the HDF5 file itself).
        in_memory: load the splits into RAM first, when they fit.
        amp: mixed precision; None = on for CUDA, off on the CPU.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        cache: cache root (``cache/``), cache directory or ``cache.h5``.
        runs_dir: folder of run directories.
        run_name: run directory name; empty = ``<dataset>_<protocol>_<variant>``.
    """

    dataset: str
    protocol: str
    variant: str = "vpn"
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    pose_lr_scale: float = 1.0
    lr_step: int = 10
    lr_gamma: float = 0.1
    eval_split: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 2
    in_memory: bool = False
    amp: bool | None = None
    device: str = "auto"
    cache: str = "cache"
    runs_dir: str = "runs"
    run_name: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.run_name or default_run_name(self.dataset, self.protocol, self.variant))

    def vpn_config(self) -> VPNConfig:
        """The model config: dataset facts + ``variant`` + ``model`` overrides (validated)."""
        return VPNConfig.for_dataset(self.dataset, self.protocol, variant=self.variant, **self.model)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        spec = get_dataset(self.dataset)
        spec.protocol_classes(self.protocol)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if "variant" in self.model:
            raise ValueError("give the variant as TrainConfig.variant, not in model overrides")
        checks = {
            "epochs": _is_int(self.epochs, 1), "batch_size": _is_int(self.batch_size, 1),
            "lr_step": _is_int(self.lr_step, 1), "num_workers": _is_int(self.num_workers, 0),
            "seed": _is_int(self.seed, 0),
            "lr": _is_number(self.lr) and self.lr > 0, "momentum": _is_number(self.momentum) and 0 <= self.momentum < 1,
            "weight_decay": _is_number(self.weight_decay) and self.weight_decay >= 0,
            "pose_lr_scale": _is_number(self.pose_lr_scale) and self.pose_lr_scale > 0,
            "lr_gamma": _is_number(self.lr_gamma) and 0 < self.lr_gamma <= 1,
            "eval_split": self.eval_split in EVAL_SPLITS,
            "val_fraction": _is_number(self.val_fraction) and 0 < self.val_fraction < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("bad TrainConfig value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))
        self.vpn_config()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """The training fields that define the experiment: all but ``RESUME_FREE_FIELDS``, and all but
        ``variant``/``model``, which the resolved ``VPNConfig`` covers (so ``--model embed_dim=256`` equals the
        default)."""
        return {k: v for k, v in self.to_dict().items() if k not in (*RESUME_FREE_FIELDS, "variant", "model")}


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch that depends only on ``(seed, epoch)``.

    A resumed run therefore shuffles exactly as an uninterrupted one; the sampler's whole state is the
    epoch number the checkpoint already holds.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        return iter(rng.permutation(self.num_samples).tolist())

    def __len__(self) -> int:
        return self.num_samples


# ----------------------------------------------------------------------------------------------------------
# RNG state


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels (process-wide, warn-only:
    an op without a deterministic kernel warns instead of failing)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read at its init
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------
# run directory


def _run_config(config: TrainConfig, vpn_config: VPNConfig) -> dict[str, Any]:
    return {"train": config.to_dict(), "model": vpn_config.to_dict()}


def check_same_experiment(saved: dict[str, Any], config: TrainConfig, vpn_config: VPNConfig, source: Path) -> None:
    """Raise ``RunConfigError`` when ``saved`` (a run's config) is another experiment than the one requested."""
    try:
        saved_train = TrainConfig.from_dict(saved["train"])
        saved_model = VPNConfig.from_dict(saved["model"]).to_dict()  # fields added since take their defaults
    except (KeyError, TypeError, ValueError) as error:
        raise RunConfigError(f"{source}: not a run config ({error}); use --force-new or another --run") from error
    wanted = {**{f"train.{k}": v for k, v in config.identity().items()},
              **{f"model.{k}": v for k, v in vpn_config.to_dict().items()}}
    have = {**{f"train.{k}": v for k, v in saved_train.identity().items()},
            **{f"model.{k}": v for k, v in saved_model.items()}}
    raise_if_other_experiment(have, wanted, source)


def raise_if_other_experiment(have: dict[str, Any], wanted: dict[str, Any], source: Path) -> None:
    """Raise ``RunConfigError`` naming the fields where a saved run config (``have``) differs from ``wanted``."""
    differ = sorted(k for k in set(wanted) | set(have) if _jsonable(wanted.get(k)) != _jsonable(have.get(k)))
    if differ:
        detail = ", ".join(f"{k}: saved {have.get(k)!r}, requested {wanted.get(k)!r}" for k in differ[:6])
        raise RunConfigError(f"{source} belongs to another experiment ({detail}); pass --force-new to start "
                             f"over or choose another --run name")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def prepare_run_dir(config: TrainConfig, vpn_config: VPNConfig, force_new: bool) -> Path:
    """Create the run directory (moving an old one aside with ``force_new``) and write ``config.json``."""
    run_dir = config.run_dir
    config_path = run_dir / "config.json"
    if force_new and run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}")
        run_dir.rename(aside)
        log.warning("--force-new: moved the old run %s to %s", run_dir, aside)
    if config_path.exists():
        try:
            saved = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunConfigError(f"{config_path}: unreadable ({error}); use --force-new or another --run") from error
        check_same_experiment(saved, config, vpn_config, config_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_path, _run_config(config, vpn_config))
    return run_dir


def save_checkpoint(path: Path, **state: Any) -> None:
    """``torch.save`` through a temporary file and ``os.replace``: a crash never leaves a partial file."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------------
# training


@dataclass
class _Progress:
    """What the checkpoint carries besides the module states."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float = -math.inf
    best_epoch: int = 0


def _clips(config: TrainConfig, cache: Path, split: str, carve: bool = False) -> CachedClips:
    """A split with float16 features: the loop casts them on its device (half the bytes to move). With
    ``carve`` the training split leaves out the subjects of ``val_carved``."""
    fraction = config.val_fraction if (carve or split == CARVED_VAL) else 0.0
    return CachedClips(cache, config.protocol, split, config.in_memory, config.dataset, torch.float16,
                       carve_fraction=fraction, carve_seed=config.seed)


def parameter_groups(model: VPN, lr: float, pose_lr_scale: float) -> list[dict[str, Any]]:
    """SGD parameter groups: everything at ``lr`` first, then the pose branch (pose backbone and attention
    network) at ``lr * pose_lr_scale`` (left out when the model has no pose branch)."""
    pose = [p for name in ("pose_encoder", "attention") if getattr(model, name) is not None
            for p in getattr(model, name).parameters()]
    pose_ids = {id(p) for p in pose}
    groups = [{"params": [p for p in model.parameters() if id(p) not in pose_ids], "lr": lr}]
    if pose:
        groups.append({"params": pose, "lr": lr * pose_lr_scale})
    return groups


def relative_gradients(model: VPN) -> dict[str, float]:
    """``||grad|| / ||weight||`` of each module group in ``GRAD_GROUPS`` the model has (after ``backward``)."""
    out = {}
    for group in GRAD_GROUPS:
        module = getattr(model, group, None)
        if module is None:
            continue
        params = [p for p in module.parameters() if p.grad is not None]
        if params:
            grad = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            weight = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach()) for p in params]))
            out[group] = grad / weight.clamp_min(1e-12)
    return out


def _check_shapes(clips: CachedClips, vpn_config: VPNConfig) -> None:
    want_poses = (vpn_config.num_joints, vpn_config.t_p)
    have_poses = clips.pose_shape[2:]
    if want_poses != have_poses:
        raise CacheError(f"{clips.path}: poses have (J, t_p) = {have_poses}, the model expects {want_poses}")
    want_features = (vpn_config.feature_channels, vpn_config.feature_time)
    if clips.feature_shape[:2] != want_features:
        raise CacheError(f"{clips.path}: features are {clips.feature_shape}, the model expects (C, T) = "
                         f"{want_features}")


class NonFiniteLossError(ValueError):
    """A training step's loss is NaN or infinite."""


def train_epoch(model: VPN, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device, amp: bool, description: str
                ) -> dict[str, float]:
    """One pass over ``loader``; returns the mean losses, the clip accuracy and the throughput."""
    model.train()
    config = model.config
    uses_pose = config.variant != "i3d"
    sums = torch.zeros(len(LOSS_KEYS) + 1, device=device)  # loss terms * n, correct
    grad_sums = torch.zeros(len(GRAD_GROUPS), device=device)
    seen = steps = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True)
    for step, (features, poses, labels, rows) in enumerate(bar):
        features = features.to(device, non_blocking=True).float()  # (B, C, T, H, W) float16 -> float32
        poses = poses.to(device, non_blocking=True) if uses_pose else None  # (B, 2, 3, J, t_p)
        labels = labels.to(device, non_blocking=True)  # (B,)
        with autocast(device, amp):
            out = model(features, poses)
            losses = vpn_loss(out, labels, config)
        if not torch.isfinite(losses["total"]):  # never train on, or report success from, garbage
            ids = loader.dataset.sample_ids_of(rows.numpy())
            raise NonFiniteLossError(f"non-finite loss {losses['total'].item()} at step {step} of {description}; "
                                     f"the batch's samples: {', '.join(ids)}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        ratios = relative_gradients(model)
        grad_sums += torch.stack([ratios.get(g, grad_sums.new_tensor(math.nan)) for g in GRAD_GROUPS])
        steps += 1
        scaler.step(optimizer)
        scaler.update()
        n = labels.shape[0]
        correct = (out.logits.argmax(dim=1) == labels).sum()
        sums += torch.stack([*(losses[k].detach().float() * n for k in LOSS_KEYS), correct.float()])
        seen += n
        if step % POSTFIX_EVERY == 0 or step == len(loader) - 1:
            values = sums.tolist()
            bar.set_postfix(loss=f"{values[0] / seen:.4f}", acc=f"{values[-1] / seen:.3f}")
    elapsed = time.perf_counter() - start
    values = (sums / seen).tolist()
    row = {f"train_{k}" if k != "total" else "train_loss": v for k, v in zip(LOSS_KEYS, values)}
    grads = {f"grad_{g}": v for g, v in zip(GRAD_GROUPS, (grad_sums / max(steps, 1)).tolist())}
    return {**row, "train_acc": values[-1], "train_samples_per_s": seen / elapsed, **grads}


def evaluate_split(model: VPN, clips: CachedClips, loader: torch.utils.data.DataLoader, device: torch.device,
                   amp: bool) -> dict[str, float]:
    """Video-level top-1 and mean-class accuracy of ``model`` on ``clips``."""
    probs, labels, rows = score_clips(model, loader, device, amp)
    video_probs, video_labels, _ = video_scores(probs, labels, clips.sample_ids_of(rows))
    return summarise(video_labels, video_probs.argmax(axis=1))


def train(config: TrainConfig, force_new: bool = False) -> dict[str, Any]:
    """Train (or resume, or extend) the run ``config`` describes.

    Args:
        config: the run.
        force_new: move an existing run directory aside and start over.

    Returns:
        The run's ``metrics.json`` content.

    Raises:
        ValueError: bad config values.
        RunConfigError: the run directory holds another experiment.
        CacheError: missing cache, unknown protocol, empty split, or shapes that do not fit the model.
        CheckpointError: ``last.pt`` is damaged or does not fit the model.
    """
    config.validate()
    vpn_config = config.vpn_config()
    device = resolve_device(config.device)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    cache = resolve_cache(config.cache, config.dataset)
    chooser = selection_split(cache, config.protocol, config.dataset, config.eval_split)
    train_set = _clips(config, cache, "train", carve=chooser == CARVED_VAL)
    eval_set = _clips(config, cache, chooser)
    if chooser == "test":
        log.warning("eval_split=test: best.pt is chosen on the test split, so its test score is optimistic")
    _check_shapes(train_set, vpn_config)
    run_dir = prepare_run_dir(config, vpn_config, force_new)
    metric = train_set.spec.metric

    seed_everything(config.seed, config.deterministic)
    model = VPN(vpn_config).to(device)
    optimizer = torch.optim.SGD(parameter_groups(model, config.lr, config.pose_lr_scale), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    progress = _Progress()
    last_path = run_dir / "last.pt"
    if last_path.exists():
        ckpt = load_checkpoint(last_path)
        check_same_experiment({"train": ckpt["train_config"], "model": ckpt["vpn_config"]}, config, vpn_config,
                              last_path)
        load_weights(model, ckpt["model"], last_path)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            progress = _Progress(**ckpt["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{last_path}: damaged training state ({error})") from error
        log.info("resuming %s after epoch %d", run_dir, progress.epoch)
    if progress.epoch >= config.epochs:
        log.info("%s already trained for %d epochs (asked %d); nothing to do", run_dir, progress.epoch,
                 config.epochs)
        return json.loads((run_dir / "metrics.json").read_text())

    sampler = EpochShuffleSampler(len(train_set), config.seed)
    train_loader = make_loader(train_set, config.batch_size, config.num_workers, device, sampler, config.seed)
    eval_loader = make_loader(eval_set, config.batch_size, config.num_workers, device, seed=config.seed)
    log.info("training %s: %s, %d train clips, scoring %d %s clips (%s) each epoch, device %s, amp %s",
             run_dir.name, vpn_config.variant, len(train_set), len(eval_set), eval_set.split, metric, device, amp)
    summary: dict[str, Any] = {}
    for epoch in range(progress.epoch, config.epochs):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        row = train_epoch(model, train_loader, optimizer, scaler, device, amp,
                          f"{run_dir.name} epoch {epoch + 1}/{config.epochs}")
        scheduler.step()
        scores = evaluate_split(model, eval_set, eval_loader, device, amp)
        row = {"epoch": epoch + 1, "lr": lr, **row, "eval_split": eval_set.split, "eval_top1": scores["top1"],
               "eval_mean_class": scores["mean_class"], "epoch_time_s": time.perf_counter() - start}
        progress.epoch = epoch + 1
        progress.history.append(row)
        state = dict(epoch=progress.epoch, model=model.state_dict(), train_config=config.to_dict(),
                     vpn_config=vpn_config.to_dict())
        if scores[metric] > progress.best_value:
            progress.best_value, progress.best_epoch = scores[metric], progress.epoch
            save_checkpoint(run_dir / "best.pt", **state)
        save_checkpoint(last_path, **state, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict(), rng=rng_state(), progress=asdict(progress))
        summary = _write_logs(run_dir, config, progress, metric, eval_set)
        log.info("epoch %d/%d: loss %.4f, train acc %.3f, %s top-1 %.4f, mean-class %.4f, %.0f clips/s",
                 epoch + 1, config.epochs, row["train_loss"], row["train_acc"], eval_set.split,
                 scores["top1"], scores["mean_class"], row["train_samples_per_s"])
    return summary


def _write_logs(run_dir: Path, config: TrainConfig, progress: _Progress, metric: str,
                eval_set: CachedClips) -> dict[str, Any]:
    atomic_write_csv(run_dir / "train_log.csv", list(LOG_COLUMNS),
                     ([row.get(c, math.nan) for c in LOG_COLUMNS] for row in progress.history))
    best = progress.history[progress.best_epoch - 1]
    summary = {
        "run": run_dir.name, "dataset": config.dataset, "protocol": config.protocol, "variant": config.variant,
        "headline_metric": metric, "eval_split": best["eval_split"], "checkpoint_selected_on": best["eval_split"],
        "held_out_subjects": eval_set.held_out_subjects.tolist(), "epochs_done": progress.epoch,
        "epochs": config.epochs, "complete": progress.epoch >= config.epochs, "best_epoch": progress.best_epoch,
        "best": {"top1": best["eval_top1"], "mean_class": best["eval_mean_class"]},
        "last": {"top1": progress.history[-1]["eval_top1"], "mean_class": progress.history[-1]["eval_mean_class"]},
    }
    atomic_write_json(run_dir / "metrics.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# command line


def parse_override(text: str) -> tuple[str, Any]:
    """argparse type of ``--model KEY=VALUE``: the value as JSON when it parses, else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``train`` and ``ablate`` share (everything but the variant and its model switches)."""
    defaults = TrainConfig("", "")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--model", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                        help="any VPNConfig field, e.g. --model embed_dim=512 (repeatable)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--pose-lr-scale", type=float, default=defaults.pose_lr_scale,
                        help="learning-rate multiplier of the pose backbone and attention network")
    parser.add_argument("--lr-step", type=int, default=defaults.lr_step)
    parser.add_argument("--lr-gamma", type=float, default=defaults.lr_gamma)
    parser.add_argument("--eval-split", default=defaults.eval_split, choices=EVAL_SPLITS,
                        help="split that chooses best.pt (auto: val, else val_carved from train by subject)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        help="share of training subjects carved out as val_carved")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers)
    parser.add_argument("--in-memory", action="store_true", help="load the splits into RAM when they fit")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision (default: on for CUDA)")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--cache", default=defaults.cache, help="cache root, cache directory or cache.h5")
    parser.add_argument("--runs-dir", default=defaults.runs_dir)


def config_from_args(args: argparse.Namespace, variant: str, model: dict[str, Any], run_name: str) -> TrainConfig:
    """Build a ``TrainConfig`` from the shared options."""
    return TrainConfig(
        dataset=args.dataset, protocol=args.protocol, variant=variant, model=model, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        pose_lr_scale=args.pose_lr_scale,
        lr_step=args.lr_step, lr_gamma=args.lr_gamma, eval_split=args.eval_split, val_fraction=args.val_fraction,
        seed=args.seed,
        deterministic=args.deterministic, num_workers=args.num_workers, in_memory=args.in_memory, amp=args.amp,
        device=args.device, cache=args.cache, runs_dir=args.runs_dir, run_name=run_name)


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str] | None, section: str,
                           renames: dict[str, str], nested: tuple[str, ...] = ()) -> argparse.Namespace:
    """Parse ``argv``; with ``--config runs/<name>/config.json`` a recorded run's values become the defaults, so
    the options given on the command line override the file.

    Args:
        parser: the command's parser (``--config`` is added to it).
        argv: the command line.
        section: the key of the run config in ``config.json`` (``train``, ``finetune``).
        renames: config field -> option dest where they differ (``run_name`` -> ``run``).
        nested: config fields holding a dict of further options (``augment``).
    """
    parser.add_argument("--config", help="a run's config.json: repeat that experiment (options given here win)")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    path = pre.parse_known_args(argv)[0].config
    if path:
        try:
            recorded = json.loads(Path(path).read_text())[section]
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--config {path}: not a {section} run's config.json ({type(error).__name__}: {error})")
        defaults: dict[str, Any] = {}
        for key, value in recorded.items():
            if key in nested:
                defaults.update(value)
            else:
                defaults[renames.get(key, key)] = list(value.items()) if key == "model" else value
        actions = {action.dest: action for action in parser._actions}
        unknown = sorted(set(defaults) - set(actions))
        if unknown:
            parser.error(f"--config {path}: fields {unknown} have no option here (a config of another version?)")
        parser.set_defaults(**defaults)
        for dest in defaults:
            actions[dest].required = False
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.train", description=__doc__.split("\n\n")[0])
    add_training_arguments(parser)
    parser.add_argument("--variant", default="vpn", choices=VARIANTS)
    parser.add_argument("--pose-backbone", choices=("gcn", "lstm"))
    parser.add_argument("--coupler", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--embedding-loss", choices=EMBEDDING_LOSSES)
    parser.add_argument("--run", default="", help="run name (default: <dataset>_<protocol>_<variant>)")
    parser.add_argument("--force-new", action="store_true", help="move an existing run aside and start over")
    args = parse_args_with_config(parser, argv, "train", {"run_name": "run"})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = dict(args.model)
    for key in ("pose_backbone", "coupler", "embedding_loss"):
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    try:
        config = config_from_args(args, args.variant, model, args.run)
        summary = train(config, force_new=args.force_new)
    except (CacheError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)  # from a DataLoader worker: its cause
        return 1
    print(json.dumps({k: summary[k] for k in ("run", "epochs_done", "best_epoch", "best")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
