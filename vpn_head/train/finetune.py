"""End-to-end fine-tuning of VPN: I3D (unfrozen) + the VPN head, on pixels decoded on the fly.

``make finetune DATASET=ntu60 PROTOCOL=cs [INIT=runs/ntu60_cs_vpn] [GPUS=4] [EPOCHS=30]`` runs
``python -m vpn_head.train.finetune ...``, or ``torchrun --standalone --nproc_per_node N -m vpn_head.train.finetune ...``.

Model (``vpn_head.model.finetune_vpn``): ``pipeline.i3d.model.InceptionI3d`` up to Mixed_5c (``--i3d-weights``;
``--freeze-until Mixed_3c`` keeps the blocks up to Mixed_3c frozen, their BatchNorm in eval mode) followed by the
VPN head, initialised from a head run (``--init runs/<name>``: its ``best.pt``, else ``last.pt``, and its
``VPNConfig``). Paper schedule: SGD with momentum 0.9, lr 0.01 divided by 10 every 10 epochs, 16 clips per step,
the losses of ``vpn_head.model.losses``. Input without a second pass of the pipeline: ``vpn_head.data.pixels`` re-decodes,
crops and augments every cached clip in the DataLoader workers.

Several GPUs: one process per GPU, ``DistributedDataParallel`` (nccl on CUDA, gloo on the CPU). One optimizer
step always sees ``batch_size`` clips: ``accum = batch_size / (per_gpu_batch * world_size)`` micro-batches per
step (an error when not integral). The ``StepSampler`` (a ``DistributedSampler``) interleaves one permutation
per ``(seed, epoch)`` over the ranks and keeps whole steps only, so step k uses the same clips whatever the
GPU count; augmentation draws from a generator seeded by ``(seed, epoch, clip)``; the spectral-norm power
iteration of the embedding runs once per step. Hence 1 and N processes reach the same weights up to float
summation order, provided BatchNorm sees the same micro-batches (equal ``per_gpu_batch``) and dropout is off
(each rank draws its own dropout masks). Under DDP the BatchNorm running statistics are rank 0's.

Run directory (``vpn_head.engine.loop``, as the head trainer's): ``runs/<name>/config.json``, ``last.pt`` every epoch
(atomic; model, optimizer, scheduler, scaler, every rank's RNG state, progress: the sampler's state is the
epoch), ``best.pt``, ``train_log.csv`` (``train_samples_per_s`` is clips per second over all GPUs),
``metrics.json``. Rerunning the same command resumes after the last finished epoch; more epochs extend the run;
another experiment is refused unless ``--force-new`` or another ``--run``. Each epoch ends with a quick score on
the eval split; when training completes, ``best.pt`` is scored the paper's way on the test split into
``eval_test/`` (``vpn_head.eval.finetune``, the files ``make eval`` writes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.cache.reader import CacheError
from pipeline.crops.store import PIXELS_CHOICES
from pipeline.i3d.model import load_i3d
from pipeline.utils.fileio import atomic_write_json
from vpn_head.data.augment import AugmentConfig
from vpn_head.data.clips import resolve_cache, selection_split
from vpn_head.data.pixels import PixelClips, StepSampler, sample_paths
from vpn_head.data.splits import CARVED_VAL
from vpn_head.engine import loop as engine
from vpn_head.engine.checkpoints import (
    CHECKPOINT_NAMES,
    FINETUNE,
    CheckpointError,
    head_from_checkpoint,
    load_checkpoint,
)
from vpn_head.engine.config import FinetuneConfig, accumulation_steps
from vpn_head.engine.options import add_common_arguments, parse_args_with_config, reading_model
from vpn_head.eval.finetune import PREFETCH, evaluate_finetuned, score_split
from vpn_head.model.config import VARIANTS, VPNConfig
from vpn_head.model.finetune_vpn import FinetuneVPN
from vpn_head.model.vpn import VPN
from vpn_head.runtime import DistContext, init_distributed, loss_scaler, make_loader, seed_everything

log = logging.getLogger(__name__)

FINETUNE_LOG_COLUMNS: tuple[str, ...] = (*engine.TRAIN_COLUMNS, "world_size", "accum_steps")


def load_init_head(run_dir: str | os.PathLike) -> tuple[VPN, dict[str, Any], Path]:
    """The head of a head-training run: its ``best.pt``, else ``last.pt``.

    Returns:
        ``(head, train_config, checkpoint path)``.

    Raises:
        CheckpointError: no run, no checkpoint, or a damaged one.
    """
    run_dir = Path(run_dir)
    for name in CHECKPOINT_NAMES:
        path = run_dir / f"{name}.pt"
        if path.is_file():
            ckpt = load_checkpoint(path)
            return head_from_checkpoint(ckpt, path), ckpt["train_config"], path
    raise CheckpointError(f"{run_dir}: no best.pt or last.pt to start the head from (train it with "
                          f"`make train-head`, or leave INIT= empty for a new head)")


def build_model(config: FinetuneConfig, t_p: int) -> FinetuneVPN:
    """I3D (``config.i3d_weights``, frozen up to ``config.freeze_until``) + the head (``config.init`` or new).

    Raises:
        CheckpointError: a bad ``init`` run.
        ValueError: an init head that does not fit the dataset, protocol, clip or crop size, or ``t_p``.
    """
    i3d = load_i3d(config.i3d_weights or None)
    i3d.freeze_until(config.freeze_until or None)
    if config.init:
        head, head_train, source = load_init_head(config.init)
        where = (head_train.get("dataset"), head_train.get("protocol"))
        if where != (config.dataset, config.protocol):
            raise ValueError(f"{source} was trained on {where[0]}/{where[1]}, not {config.dataset}/{config.protocol}")
        if config.variant and config.variant != head.config.variant:
            raise ValueError(f"{source} is a {head.config.variant!r} head, not {config.variant!r}")
        log.info("head initialised from %s (%s)", source, head.config.variant)
    else:
        log.warning("no --init head run: the VPN head starts from RANDOM weights")
        overrides = {"t_p": t_p, "feature_time": config.feature_time, "feature_size": config.feature_size,
                     **config.model}
        head = VPN(VPNConfig.for_dataset(config.dataset, config.protocol, variant=config.variant or "vpn",
                                         **overrides))
    want = {"feature_time": config.feature_time, "feature_size": config.feature_size, "t_p": t_p}
    have = {name: getattr(head.config, name) for name in want}
    if have != want:
        raise ValueError(f"the head expects {have} but clip_len {config.clip_len}, crop_size {config.crop_size} and "
                         f"the cache's poses give {want}")
    return FinetuneVPN(i3d, head, config.frozen_bn)


def _clips(config: FinetuneConfig, cache: Path, paths: dict[str, tuple[Path, Path]], split: str,
           carve: bool = False, augment: bool = False) -> PixelClips:
    """A split as pixels; with ``carve`` the training split leaves out the subjects of ``val_carved``."""
    return PixelClips(cache, config.protocol, split, config.dataset, paths, config.clip_len, config.crop_size,
                      augment=config.augment if augment else None, seed=config.seed,
                      carve_fraction=config.val_fraction if (carve or split == CARVED_VAL) else 0.0,
                      carve_seed=config.seed, pixels=config.pixels)


def finetune(config: FinetuneConfig, force_new: bool = False) -> dict[str, Any]:
    """Fine-tune (or resume, or extend) the run ``config`` describes, then score ``best.pt`` on the test split.

    Call it in every process of a torchrun job (it joins the process group from the environment).

    Args:
        config: the run.
        force_new: move an existing run directory aside and start over.

    Returns:
        The run's ``metrics.json`` content, with the final test scores under ``test`` when they were computed.

    Raises:
        ValueError: bad config values, batch sizes that do not divide, an init head that does not fit.
        RunConfigError: the run directory holds another experiment.
        CacheError: missing cache, empty split, samples missing from the manifest.
        CheckpointError: a damaged ``last.pt`` or init run.
        FileNotFoundError: missing manifest or videos (wrong DATA_ROOT).
    """
    config.validate()
    ctx, device = init_distributed(config.device)
    with engine.lock_run(config.run_dir, ctx):
        return _finetune(config, force_new, ctx, device)


def _finetune(config: FinetuneConfig, force_new: bool, ctx: DistContext, device: torch.device) -> dict[str, Any]:
    """``finetune`` under the run lock (held by rank 0)."""
    accum = accumulation_steps(config.batch_size, config.per_gpu_batch, ctx.world_size)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    cache = resolve_cache(config.cache, config.dataset)
    paths = sample_paths(config.manifest_path, config.data_root)
    chooser = selection_split(cache, config.protocol, config.dataset, config.eval_split)
    train_set = _clips(config, cache, paths, "train", carve=chooser == CARVED_VAL, augment=True)
    eval_set = _clips(config, cache, paths, chooser)

    seed_everything(config.seed + ctx.rank, config.deterministic)
    model = build_model(config, train_set.t_p).to(device)
    vpn_config = model.config
    run_dir = engine.prepare_run_dir(config.run_dir, FINETUNE, config, vpn_config, force_new, ctx)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    run = engine.Run(FINETUNE, run_dir, config, vpn_config, model, optimizer, scheduler, loss_scaler(device, amp),
                     device, amp, train_set.spec.metric, eval_set.split, FINETUNE_LOG_COLUMNS, ctx, accum,
                     row_fields={"world_size": ctx.world_size, "accum_steps": accum})
    progress = engine.resume(run)
    if progress.epoch >= config.epochs:
        log.info("%s already trained for %d epochs (asked %d); nothing to do", run_dir, progress.epoch, config.epochs)
        return json.loads((run_dir / "metrics.json").read_text())

    trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ctx.distributed else model
    sampler = StepSampler(train_set, ctx, config.batch_size, config.seed)
    loader = make_loader(train_set, config.per_gpu_batch, config.num_workers, device, sampler, config.seed,
                         prefetch_factor=PREFETCH)
    log.info("fine-tuning %s: %s head, %d train clips (%d steps of %d = %d processes x %d clips x %d accumulation), "
             "scoring %d %s clips each epoch, device %s, amp %s, pixels from %s", run_dir.name, vpn_config.variant,
             len(train_set), len(sampler) * ctx.world_size // config.batch_size, config.batch_size, ctx.world_size,
             config.per_gpu_batch, accum, len(eval_set), eval_set.split, device, amp,
             train_set.store.folder if train_set.store is not None else "the source videos")

    def summary_fields(progress: engine.Progress) -> dict[str, Any]:
        return {"finetune": True, "world_size": ctx.world_size, "accum_steps": accum,
                "train_clips_per_s": progress.history[-1]["train_samples_per_s"]}

    summary = engine.fit(run, progress, trained, loader, sampler,
                         lambda: score_split(model, eval_set, config, device, amp, ctx), summary_fields)
    del loader, trained
    test = evaluate_finetuned(run_dir, "test", "best", config, ctx, device)
    if ctx.is_main:
        summary["test"] = {k: test[k] for k in ("top1", "mean_class", "num_videos")}
        atomic_write_json(run_dir / "metrics.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The fine-tune's command line: the options both trainers share, then its own."""
    defaults = FinetuneConfig("", "")
    aug = defaults.augment
    parser = argparse.ArgumentParser(prog="python -m vpn_head.train.finetune", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, defaults, "VPNConfig field of a new head (repeatable)")
    parser.add_argument("--manifest", default="", help="manifest CSV (default manifests/<dataset>.csv)")
    parser.add_argument("--data-root", default="", help="folder the manifest's paths are relative to "
                                                        "(default: recorded beside the manifest)")
    parser.add_argument("--cache-dir", default=defaults.cache, help="cache root, cache directory or cache.h5")
    parser.add_argument("--run", "--run-name", dest="run", default="",
                        help="run name (default <dataset>_<protocol>_finetune); under torchrun spell it --run-name "
                             "(torchrun takes --run for its own --run-path)")
    parser.add_argument("--init", default="", help="head run directory to start the head from")
    parser.add_argument("--i3d-weights", default="", help="I3D state dict (default: random init, warns)")
    parser.add_argument("--per-gpu-batch", type=int, default=defaults.per_gpu_batch)
    parser.add_argument("--freeze-until", default="", help="last frozen I3D block, e.g. Mixed_3c")
    parser.add_argument("--frozen-bn", action="store_true", help="keep every I3D BatchNorm in eval mode")
    parser.add_argument("--clip-len", type=int, default=defaults.clip_len)
    parser.add_argument("--crop-size", type=int, default=defaults.crop_size)
    parser.add_argument("--flip-prob", type=float, default=aug.flip_prob)
    parser.add_argument("--no-temporal-jitter", dest="temporal_jitter", action="store_false")
    parser.add_argument("--box-scale", type=float, default=aug.box_scale)
    parser.add_argument("--box-shift", type=float, default=aug.box_shift)
    parser.add_argument("--variant", default="", choices=("", *VARIANTS), help="head variant of a new head")
    parser.add_argument("--eval-clips", type=int, default=defaults.eval_clips)
    parser.add_argument("--eval-crop-size", type=int, default=defaults.eval_crop_size)
    parser.add_argument("--pixels", default=defaults.pixels, choices=PIXELS_CHOICES,
                        help="store: the cache's person-crop store (`make crops`); source: the videos; auto: the "
                             "store when one holds the box jitter, else the videos")
    parser.add_argument("--force-new", action="store_true", help="move an existing run aside and start over")
    parser.add_argument("--eval-only", action="store_true",
                        help="only score the run's checkpoint the paper's way (its own clip and crop settings; "
                             "paths and --eval-* options from this command line)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of --eval-only")
    parser.add_argument("--checkpoint", default="best", choices=CHECKPOINT_NAMES, help="checkpoint of --eval-only")
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The ``FinetuneConfig`` of a command line."""
    return FinetuneConfig(
        dataset=args.dataset, protocol=args.protocol, epochs=args.epochs, batch_size=args.batch_size,
        per_gpu_batch=args.per_gpu_batch, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        lr_step=args.lr_step, lr_gamma=args.lr_gamma, freeze_until=args.freeze_until, frozen_bn=args.frozen_bn,
        clip_len=args.clip_len, crop_size=args.crop_size,
        augment=AugmentConfig(args.flip_prob, args.temporal_jitter, args.box_scale, args.box_shift),
        variant=args.variant, model=reading_model(args.reading, args.model), eval_split=args.eval_split,
        val_fraction=args.val_fraction, eval_clips=args.eval_clips,
        eval_crop_size=args.eval_crop_size, seed=args.seed, deterministic=args.deterministic,
        num_workers=args.num_workers, amp=args.amp, device=args.device, manifest=args.manifest,
        data_root=args.data_root, cache=args.cache_dir, runs_dir=args.runs_dir, run_name=args.run, init=args.init,
        i3d_weights=args.i3d_weights, pixels=args.pixels)


def main(argv: list[str] | None = None) -> int:
    args = parse_args_with_config(build_parser(), argv, "finetune", {"run_name": "run", "cache": "cache_dir"},
                                  nested=("augment",))
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(levelname)s rank{rank} %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        if args.eval_only:
            saved = load_checkpoint(config.run_dir / f"{args.checkpoint}.pt", FINETUNE)["train_config"]
            free = {k: getattr(config, k) for k in FinetuneConfig.RESUME_FREE_FIELDS}  # paths, hardware, eval
            config = replace(FinetuneConfig.from_dict(saved), **free)
            ctx, device = init_distributed(config.device)
            result = evaluate_finetuned(config.run_dir, args.split, args.checkpoint, config, ctx, device)
            keys = ("split", "top1", "mean_class", "num_videos")
        else:
            result = finetune(config, force_new=args.force_new)
            keys = ("run", "epochs_done", "best_epoch", "best", "test")
    except (CacheError, CheckpointError, ValueError, OSError) as error:  # RunConfigError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({k: result[k] for k in keys if k in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
