"""The training engine both trainers configure: run folder, resume, the epoch loop, checkpoints and logs.

A trainer (``vpn_head.train.head``: the head on cached features; ``vpn_head.train.finetune``: I3D + head on pixels) builds
its data, model and optimizer, describes them in a ``Run`` and calls ``lock_run``, ``prepare_run_dir``, ``resume`` and
``fit``:

- ``lock_run``: one trainer per run folder (``RunLock``, an ``flock`` beside it, as the cache build has).
- ``prepare_run_dir``: ``runs/<name>/config.json`` holds ``{<section>: trainer config, "model": VPNConfig}``
  (and the head trainer's ``"cache"``: the cache folder and its hash); an existing folder of another experiment,
  or one trained on another cache, is refused (``RunConfigError``) unless ``force_new`` moves it aside.
- ``resume``: ``last.pt`` restores the weights, optimizer, scheduler, loss scaler, every RNG state and the
  progress (history, best epoch), so a resumed run ends bit-identical to one that never stopped, provided the
  trainer's sampler depends only on ``(seed, epoch)``.
- ``fit``: per epoch ``train_epoch`` (``accum`` micro-batches per optimizer step, autocast, DDP without gradient
  sync between micro-batches), the scheduler step, the trainer's score on its eval split, ``best.pt`` when the
  headline metric improves, ``last.pt``, rewritten ``train_log.csv`` and ``metrics.json``, and one line of
  ``events.jsonl`` (``vpn_head.engine.events``: run start, every epoch, run end). Under torchrun rank 0 writes; every
  rank's RNG state goes into ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize

from pipeline.utils.fileio import atomic_write_csv, atomic_write_json
from pipeline.utils.lock import FolderLock
from pipeline.utils.progress import show_progress
from vpn_head.engine.checkpoints import (
    FINETUNE,
    HEAD,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    model_state,
    save_checkpoint,
)
from vpn_head.engine.config import TrainerConfig
from vpn_head.engine.events import EventLog
from vpn_head.model.config import VPNConfig
from vpn_head.model.losses import vpn_loss
from vpn_head.runtime import DistContext, autocast, barrier, gather, rng_state, set_rng_state

log = logging.getLogger(__name__)

CONFIG_SECTIONS: dict[str, str] = {HEAD: "train", FINETUNE: "finetune"}
"""Checkpoint kind -> the key of the trainer's config in ``config.json``."""
LOSS_KEYS: tuple[str, ...] = ("total", "classification", "embedding", "attention")
TRAIN_COLUMNS: tuple[str, ...] = (
    "epoch", "lr", "train_loss", "train_classification", "train_embedding", "train_attention", "train_acc",
    "eval_split", "eval_top1", "eval_mean_class", "epoch_time_s", "train_samples_per_s",
)
"""The ``train_log.csv`` columns every trainer writes (a trainer may append its own)."""
POSTFIX_EVERY = 10
"""Batches between progress-bar postfix updates (each one syncs the device)."""


class RunConfigError(ValueError):
    """A run directory holds a different experiment than the one requested."""


class RunBusyError(RunConfigError):
    """Another process is training the same run folder."""


class RunLock(FolderLock):
    """One trainer per run folder at a time: an ``flock`` on ``<runs_dir>/.<run>.lock`` (beside the folder, so that
    ``--force-new`` can move the folder aside while holding it), released by the kernel when the trainer exits.

    Raises:
        RunBusyError: on ``__enter__``, when another process trains the run.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        super().__init__(self.run_dir.parent / f".{self.run_dir.name}.lock")

    def busy(self, holder: str) -> Exception:
        return RunBusyError(f"run {self.run_dir} is being trained by {holder}; wait for it to finish or choose "
                            "another RUN=")


def lock_run(run_dir: Path, ctx: DistContext = DistContext()) -> AbstractContextManager:
    """The run lock of ``run_dir`` for the process that writes it (rank 0); other ranks hold nothing."""
    return RunLock(run_dir) if ctx.is_main else nullcontext()


class NonFiniteLossError(ValueError):
    """A training step's loss is NaN or infinite."""


class NonFiniteStateError(ValueError):
    """A parameter or buffer (a BatchNorm running variance) is NaN or infinite after an epoch."""


def check_finite_state(model: nn.Module, epoch: int) -> None:
    """Refuse to checkpoint a model with a non-finite parameter or buffer: a finite loss does not prove it (BatchNorm
    trains on batch statistics while an overflowed running variance waits for evaluation).

    Raises:
        NonFiniteStateError: one line naming the first such tensor.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteStateError(f"non-finite values in {name} ({bad} of {tensor.numel()}) after epoch {epoch}; "
                                      "no checkpoint written (inputs of absurd magnitude, or a too large lr?)")


@dataclass
class Progress:
    """What the checkpoint carries besides the module states."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float = -math.inf
    best_epoch: int = 0


@dataclass
class Run:
    """A run as the engine drives it.

    Attributes:
        kind: ``head`` or ``finetune`` (the checkpoint kind; picks the ``config.json`` section).
        run_dir: ``runs/<name>``.
        config: the trainer's config (``TrainConfig`` or ``FinetuneConfig``).
        vpn_config: the head's config.
        model: the model whose weights the checkpoints hold (unwrapped: not the DDP wrapper).
        optimizer: the optimizer.
        scheduler: stepped once per epoch.
        scaler: loss scaler (enabled only for float16 autocast).
        device: this process's device.
        amp: autocast.
        metric: the headline metric that picks ``best.pt`` (``top1`` or ``mean_class``).
        eval_split: the split scored after every epoch (it picks ``best.pt``).
        log_columns: the ``train_log.csv`` columns.
        ctx: the process group context.
        accum: micro-batches per optimizer step.
        grad_groups: modules of the model whose relative gradient norm is logged (``grad_<group>`` columns).
        row_fields: constant values added to every log row.
    """

    kind: str
    run_dir: Path
    config: TrainerConfig
    vpn_config: VPNConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool
    metric: str
    eval_split: str
    log_columns: tuple[str, ...] = TRAIN_COLUMNS
    ctx: DistContext = DistContext()
    accum: int = 1
    grad_groups: tuple[str, ...] = ()
    row_fields: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# run directory


def check_same_experiment(saved: Mapping[str, Any], section: str, config: TrainerConfig, vpn_config: VPNConfig,
                          source: Path) -> None:
    """Raise ``RunConfigError`` when ``saved`` (a run's ``{section: ..., "model": ...}``) is another experiment.

    Both sides are compared as resolved configs (fields added since the run was saved take their defaults), on
    the trainer config's ``identity()`` (the fields a resumed run may not change) and the whole ``VPNConfig``.
    """
    try:
        saved_config = type(config).from_dict(saved[section])
        saved_model = VPNConfig.from_saved(saved["model"]).to_dict()
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RunConfigError(f"{source}: not a {section} run config ({error}); use --force-new or another --run"
                             ) from error
    wanted = {**{f"{section}.{k}": v for k, v in config.identity().items()},
              **{f"model.{k}": v for k, v in vpn_config.to_dict().items()}}
    have = {**{f"{section}.{k}": v for k, v in saved_config.identity().items()},
            **{f"model.{k}": v for k, v in saved_model.items()}}
    differ = sorted(k for k in set(wanted) | set(have) if _jsonable(wanted.get(k)) != _jsonable(have.get(k)))
    if differ:
        detail = ", ".join(f"{k}: saved {have.get(k)!r}, requested {wanted.get(k)!r}" for k in differ[:6])
        raise RunConfigError(f"{source} belongs to another experiment ({detail}); pass --force-new to start "
                             f"over or choose another --run name")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def cache_identity(cache: Path) -> dict[str, str]:
    """What a run records of the cache it reads: the cache folder, and its name (the cache config's hash).

    ``cache`` is a resolved cache (``pipeline.cache.layout.resolve``): a cache folder, or a file in one.
    """
    folder = cache.parent if cache.is_file() else cache
    return {"folder": str(folder.resolve()), "hash": folder.name}


def check_same_cache(saved: Mapping[str, Any], cache: Mapping[str, str], source: Path) -> None:
    """Raise ``RunConfigError`` when the run of ``saved`` (its ``config.json``) was trained on another cache.

    The cache a run reads is found anew on every start (``CACHE=cache/`` follows ``LATEST``), so a rebuild with
    other settings would otherwise move a resumed run onto other features silently. A run recorded before
    caches were recorded is accepted (and records this one).
    """
    had = saved.get("cache")
    if isinstance(had, Mapping) and had.get("hash") != cache["hash"]:
        raise RunConfigError(f"{source}: the run was trained on cache {had.get('folder')} and would now resume on "
                             f"{cache['folder']} (another cache: {had.get('hash')} != {cache['hash']}); pass "
                             "CACHE=<the run's cache folder> to resume it, or --force-new or another --run")


def prepare_run_dir(run_dir: Path, kind: str, config: TrainerConfig, vpn_config: VPNConfig, force_new: bool,
                    ctx: DistContext = DistContext(), cache: Path | None = None) -> Path:
    """Create the run directory (moving an old one aside with ``force_new``) and write ``config.json``.

    Every rank checks the saved config, so a refused run fails in all processes; rank 0 writes. With ``cache``
    (the resolved cache the run reads), ``config.json`` records it (``cache_identity``) and a resume on another
    cache is refused (``check_same_cache``).

    Raises:
        RunConfigError: the directory holds another experiment, was trained on another cache, or has an
            unreadable ``config.json``.
    """
    section = CONFIG_SECTIONS[kind]
    config_path = run_dir / "config.json"
    if force_new and ctx.is_main and run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}")
        run_dir.rename(aside)
        log.warning("--force-new: moved the old run %s to %s", run_dir, aside)
    barrier(ctx)
    if config_path.exists():
        try:
            saved = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunConfigError(f"{config_path}: unreadable ({error}); use --force-new or another --run") from error
        check_same_experiment(saved, section, config, vpn_config, config_path)
        if cache is not None:
            check_same_cache(saved, cache_identity(cache), config_path)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {section: config.to_dict(), "model": vpn_config.to_dict()}
        if cache is not None:
            record["cache"] = cache_identity(cache)
        atomic_write_json(config_path, record)
    barrier(ctx)
    return run_dir


def resume(run: Run) -> Progress:
    """The progress of ``run``: restored from ``last.pt`` (weights and training state) when it exists, else new.

    Raises:
        CheckpointError: ``last.pt`` is damaged, of another kind, or does not fit the model.
        RunConfigError: ``last.pt`` belongs to another experiment.
    """
    path = run.run_dir / "last.pt"
    if not path.exists():
        return Progress()
    ckpt = load_checkpoint(path, run.kind)
    section = CONFIG_SECTIONS[run.kind]
    check_same_experiment({section: ckpt["train_config"], "model": ckpt["vpn_config"]}, section, run.config,
                          run.vpn_config, path)
    load_model_state(run.model, ckpt, path)
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        progress = Progress(**ckpt["progress"])
        states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if len(states) == run.ctx.world_size:
            set_rng_state(states[run.ctx.rank])
        else:
            log.warning("%s was written by %d processes, this run has %d: RNG states (dropout) start afresh",
                        path, len(states), run.ctx.world_size)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: damaged training state ({error})") from error
    log.info("resuming %s after epoch %d", run.run_dir, progress.epoch)
    return progress


# ----------------------------------------------------------------------------------------------------------
# one epoch


def relative_gradients(model: nn.Module, groups: Iterable[str]) -> dict[str, torch.Tensor]:
    """``||grad|| / ||weight||`` of each module group of ``model`` it has (after ``backward``)."""
    out = {}
    for group in groups:
        module = getattr(model, group, None)
        if module is None:
            continue
        params = [p for p in module.parameters() if p.grad is not None]
        if params:
            grad = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            weight = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach()) for p in params]))
            out[group] = grad / weight.clamp_min(1e-12)
    return out


def _set_power_iteration(model: nn.Module, enabled: bool) -> None:
    """Let spectral-norm parametrizations update their power iteration (train mode) or only read it, so that it
    runs once per optimizer step, not once per micro-batch."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            module.parametrizations.train(enabled and model.training)


def train_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                device: torch.device, amp: bool, accum: int = 1, ctx: DistContext = DistContext(),
                description: str = "train", grad_groups: tuple[str, ...] = ()) -> dict[str, float]:
    """One pass over ``loader``: ``accum`` micro-batches per optimizer step.

    Args:
        model: the model (``model(inputs, poses) -> VPNOutput`` with a ``config``), or its DDP wrapper.
        loader: yields ``(inputs, poses, labels, rows)``; its length is a multiple of ``accum``.
        optimizer: the optimizer.
        scaler: loss scaler (enabled only for float16 autocast).
        device: this process's device.
        amp: autocast.
        accum: micro-batches per step.
        ctx: the process group context (losses and throughput are summed over ranks).
        description: progress-bar label (shown on rank 0).
        grad_groups: modules whose mean relative gradient norm is returned as ``grad_<group>`` (NaN when absent).

    Returns:
        Mean losses, clip accuracy, ``train_samples_per_s`` (clips per second over all ranks) and the
        ``grad_<group>`` values.

    Raises:
        NonFiniteLossError: a loss is NaN or infinite (the message names the batch's samples).
    """
    core = model.module if isinstance(model, DistributedDataParallel) else model
    core.train()
    config = core.config
    uses_pose = config.variant != "i3d"
    sums = torch.zeros(len(LOSS_KEYS) + 2, device=device)  # loss terms * n, correct, n
    grad_sums = torch.zeros(len(grad_groups), device=device)
    steps = 0
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    bar = show_progress(loader, description, unit="batch", disable=not ctx.is_main)
    for step, (inputs, poses, labels, rows) in enumerate(bar):
        micro = step % accum
        inputs = inputs.to(device, non_blocking=True).float()  # (B, C, T, H, W) features or (B, 3, T, S, S) clips
        poses = poses.to(device, non_blocking=True) if uses_pose else None  # (B, 2, 3, J, t_p)
        labels = labels.to(device, non_blocking=True)  # (B,)
        _set_power_iteration(core, micro == 0)
        sync = model.no_sync() if ctx.distributed and micro < accum - 1 else nullcontext()
        with sync:
            with autocast(device, amp):
                out = model(inputs, poses)
                losses = vpn_loss(out, labels, config)
            if not torch.isfinite(losses["total"]):  # never train on, or report success from, garbage
                ids = loader.dataset.sample_ids_of(rows.numpy())
                raise NonFiniteLossError(f"non-finite loss {losses['total'].item()} at step {step} of "
                                         f"{description}; the batch's samples: {', '.join(ids)}")
            scaler.scale(losses["total"] / accum).backward()
        if micro == accum - 1:
            if scaler.is_enabled():
                scaler.unscale_(optimizer)
            if grad_groups:
                ratios = relative_gradients(core, grad_groups)
                grad_sums += torch.stack([ratios.get(g, grad_sums.new_tensor(math.nan)) for g in grad_groups])
            steps += 1
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        n = labels.shape[0]
        correct = (out.logits.argmax(dim=1) == labels).sum()
        sums += torch.stack([*(losses[k].detach().float() * n for k in LOSS_KEYS), correct.float(),
                             torch.tensor(float(n), device=device)])
        if ctx.is_main and (step % POSTFIX_EVERY == 0 or step == len(loader) - 1):
            values = sums.tolist()
            bar.set_postfix(loss=f"{values[0] / values[-1]:.4f}", acc=f"{values[-2] / values[-1]:.3f}")
    _set_power_iteration(core, True)
    if ctx.distributed:
        dist.all_reduce(sums)
    elapsed = time.perf_counter() - start
    seen = sums[-1]
    values = (sums[:-1] / seen).tolist()
    row = {f"train_{k}" if k != "total" else "train_loss": v for k, v in zip(LOSS_KEYS, values)}
    grads = {f"grad_{g}": v for g, v in zip(grad_groups, (grad_sums / max(steps, 1)).tolist())}
    return {**row, "train_acc": values[-1], "train_samples_per_s": seen.item() / elapsed, **grads}


# ----------------------------------------------------------------------------------------------------------
# the epoch loop


def fit(run: Run, progress: Progress, model: nn.Module, loader: Any, sampler: Any,
        score: Callable[[], dict[str, float] | None], summary_fields: Callable[[Progress], dict[str, Any]]
        ) -> dict[str, Any]:
    """Train ``run`` from ``progress`` to ``run.config.epochs``, writing checkpoints and logs after every epoch.

    Args:
        run: the run.
        progress: where it stands (``resume``).
        model: what to train: ``run.model`` or its DDP wrapper.
        loader: the training batches.
        sampler: the loader's sampler; ``set_epoch`` is called before every epoch.
        score: scores the eval split after an epoch: ``{"top1", "mean_class", ...}`` on rank 0, None elsewhere.
        summary_fields: the trainer's own ``metrics.json`` fields, from the progress.

    Returns:
        The run's ``metrics.json`` content (empty on ranks other than 0).
    """
    events = EventLog(run.run_dir, run.log_columns, progress.history) if run.ctx.is_main else None
    if events is not None:
        events.run_start(run.kind, run.run_dir.name, progress.epoch, run.config.epochs,
                         json.loads((run.run_dir / "config.json").read_text()))  # as prepare_run_dir recorded it
    try:
        summary = _epochs(run, progress, model, loader, sampler, score, summary_fields, events)
    except BaseException as error:
        if events is not None:
            events.run_end("interrupted" if isinstance(error, KeyboardInterrupt) else "failed", progress.epoch,
                           progress.best_epoch, progress.best_value, f"{type(error).__name__}: {error}")
        raise
    if events is not None:
        events.run_end("complete" if progress.epoch >= run.config.epochs else "stopped", progress.epoch,
                       progress.best_epoch, progress.best_value)
    return summary


def _epochs(run: Run, progress: Progress, model: nn.Module, loader: Any, sampler: Any,
            score: Callable[[], dict[str, float] | None], summary_fields: Callable[[Progress], dict[str, Any]],
            events: EventLog | None) -> dict[str, Any]:
    """``fit``'s epoch loop; ``events`` (rank 0) gets each finished epoch's row."""
    config, ctx = run.config, run.ctx
    summary: dict[str, Any] = {}
    for epoch in range(progress.epoch, config.epochs):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = run.optimizer.param_groups[0]["lr"]
        row = train_epoch(model, loader, run.optimizer, run.scaler, run.device, run.amp, run.accum, ctx,
                          f"{run.run_dir.name} epoch {epoch + 1}/{config.epochs}", run.grad_groups)
        run.scheduler.step()
        check_finite_state(run.model, epoch + 1)
        scores = score()
        rng = gather(rng_state(), ctx)
        progress.epoch = epoch + 1
        if ctx.is_main:
            row = {"epoch": epoch + 1, "lr": lr, **row, "eval_split": run.eval_split, "eval_top1": scores["top1"],
                   "eval_mean_class": scores["mean_class"], "epoch_time_s": time.perf_counter() - start,
                   **run.row_fields}
            progress.history.append(row)
            state = dict(epoch=progress.epoch, **model_state(run.model), train_config=config.to_dict(),
                         vpn_config=run.vpn_config.to_dict())
            if scores[run.metric] > progress.best_value:
                progress.best_value, progress.best_epoch = scores[run.metric], progress.epoch
                save_checkpoint(run.run_dir / "best.pt", run.kind, **state)
            save_checkpoint(run.run_dir / "last.pt", run.kind, **state, optimizer=run.optimizer.state_dict(),
                            scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
                            rng=rng if run.kind == FINETUNE else rng[0], progress=asdict(progress))
            summary = write_logs(run, progress, summary_fields(progress))
            events.epoch(row)
            log.info("epoch %d/%d: loss %.4f, train acc %.3f, %s top-1 %.4f, mean-class %.4f, %.1f clips/s",
                     epoch + 1, config.epochs, row["train_loss"], row["train_acc"], run.eval_split, scores["top1"],
                     scores["mean_class"], row["train_samples_per_s"])
        barrier(ctx)
    return summary


def write_logs(run: Run, progress: Progress, extra: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``train_log.csv`` and ``metrics.json`` from the progress; returns the ``metrics.json`` content."""
    atomic_write_csv(run.run_dir / "train_log.csv", list(run.log_columns),
                     ([row.get(c, math.nan) for c in run.log_columns] for row in progress.history))
    best = progress.history[progress.best_epoch - 1]
    last = progress.history[-1]
    summary = {
        "run": run.run_dir.name, "dataset": run.config.dataset, "protocol": run.config.protocol,
        "variant": run.vpn_config.variant, "headline_metric": run.metric, "eval_split": best["eval_split"],
        "checkpoint_selected_on": best["eval_split"], "epochs_done": progress.epoch, "epochs": run.config.epochs,
        "complete": progress.epoch >= run.config.epochs, "best_epoch": progress.best_epoch,
        "best": {"top1": best["eval_top1"], "mean_class": best["eval_mean_class"]},
        "last": {"top1": last["eval_top1"], "mean_class": last["eval_mean_class"]}, **extra,
    }
    atomic_write_json(run.run_dir / "metrics.json", summary)
    return summary
