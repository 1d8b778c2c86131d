"""Train the VPN head on a feature cache (``make train-head DATASET=… PROTOCOL=… [VARIANT=…] [EPOCHS=…]``).

Paper schedule by default: SGD, momentum 0.9, lr 0.01 divided by 10 every 10 epochs, 30 epochs, batch 16.
Every epoch ends with a score on the validation split, an atomic checkpoint ``last.pt`` (``best.pt`` too when
the headline metric improves), and rewritten ``train_log.csv`` and ``metrics.json``. The validation split is
the protocol's own (Smarthome) or, where the protocol has none (NTU, N-UCLA), ``val_carved``: the clips of a
deterministic 20 % of the training subjects, left out of training (``vpn_head.data.splits``). The test split is never
used to choose anything; ``metrics.json`` names the split that chose ``best.pt``. Each epoch also logs the
gradient norm of every module group relative to its weights (``grad_<group>`` columns), the first place to look
when a branch does not learn. ``runs/<name>/config.json`` holds the full config. The run folder, checkpoints,
resume and the epoch loop are ``vpn_head.engine.loop``'s; this module says what to train: data, model, optimizer.

Re-running the same command resumes after the last finished epoch and ends bit-identical (CPU, fixed seed)
to a run that never stopped: the checkpoint holds the model, optimizer, scheduler, loss scaler and every RNG
state, and the shuffling of epoch e depends only on (seed, e). Asking for more epochs extends a run; any
other change of the experiment is refused unless ``--force-new`` (which moves the old run aside) or a new
``--run`` name is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from pipeline.cache.reader import CacheError
from vpn_head.data.clips import CachedClips, resolve_cache, selection_split
from vpn_head.data.splits import CARVED_VAL
from vpn_head.engine import loop as engine
from vpn_head.engine.checkpoints import HEAD, CheckpointError
from vpn_head.engine.config import OPTIMIZERS, TrainConfig
from vpn_head.engine.metrics import summarise, video_scores
from vpn_head.engine.options import add_common_arguments, parse_args_with_config, reading_model
from vpn_head.engine.scoring import score_clips
from vpn_head.model.config import EMBEDDING_LOSSES, VARIANTS, VPNConfig
from vpn_head.model.vpn import VPN
from vpn_head.runtime import loss_scaler, make_loader, resolve_device, seed_everything

log = logging.getLogger(__name__)

GRAD_GROUPS: tuple[str, ...] = ("pose_encoder", "attention", "embedding", "classifier")
"""Module groups whose relative gradient norm ||grad|| / ||weight|| is logged each epoch (mean over steps)."""
LOG_COLUMNS: tuple[str, ...] = (*engine.TRAIN_COLUMNS, *(f"grad_{g}" for g in GRAD_GROUPS))
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
# training


def _clips(config: TrainConfig, cache: Path, split: str, carve: bool = False) -> CachedClips:
    """A split with float16 features: the loop casts them on its device (half the bytes to move). With
    ``carve`` the training split leaves out the subjects of ``val_carved``."""
    fraction = config.val_fraction if (carve or split == CARVED_VAL) else 0.0
    return CachedClips(cache, config.protocol, split, config.in_memory, config.dataset, torch.float16,
                       carve_fraction=fraction, carve_seed=config.seed,
                       crop_joints=config.vpn_config().spatial_attention == "joints")


def parameter_groups(model: nn.Module, lr: float, pose_lr_scale: float) -> list[dict[str, Any]]:
    """SGD parameter groups: everything at ``lr`` first, then the pose branch (pose backbone and attention
    network) at ``lr * pose_lr_scale`` (left out when the model has no pose branch)."""
    pose = [p for name in ("pose_encoder", "attention") if getattr(model, name, None) is not None
            for p in getattr(model, name).parameters()]
    pose_ids = {id(p) for p in pose}
    groups = [{"params": [p for p in model.parameters() if id(p) not in pose_ids], "lr": lr}]
    if pose:
        groups.append({"params": pose, "lr": lr * pose_lr_scale})
    return groups


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``parameter_groups`` (the pose branch at ``lr * pose_lr_scale``)."""
    groups = parameter_groups(model, config.lr, config.pose_lr_scale)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _check_shapes(clips: CachedClips, vpn_config: VPNConfig) -> None:
    want_poses = (vpn_config.num_joints, vpn_config.t_p)
    have_poses = (clips.pose_shape[3], clips.pose_shape[4]) if len(clips.pose_shape) == 5 else clips.pose_shape[2:]
    if want_poses != have_poses:
        raise CacheError(f"{clips.path}: poses have (J, t_p) = {have_poses}, the model expects {want_poses}")
    want_features = (vpn_config.feature_channels, vpn_config.feature_time)
    if clips.feature_shape[:2] != want_features:
        raise CacheError(f"{clips.path}: features are {clips.feature_shape}, the model expects (C, T) = "
                         f"{want_features}")


def train_epoch(model: VPN, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device, amp: bool, description: str
                ) -> dict[str, float]:
    """One pass of the head over ``loader`` (the engine's epoch, one batch per step, ``GRAD_GROUPS`` logged)."""
    return engine.train_epoch(model, loader, optimizer, scaler, device, amp, description=description,
                              grad_groups=GRAD_GROUPS)


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
    with engine.lock_run(config.run_dir):
        return _train(config, force_new)


def _train(config: TrainConfig, force_new: bool) -> dict[str, Any]:
    """``train`` under the run lock."""
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
    run_dir = engine.prepare_run_dir(config.run_dir, HEAD, config, vpn_config, force_new, cache=cache)

    seed_everything(config.seed, config.deterministic)
    model = VPN(vpn_config).to(device)
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    run = engine.Run(HEAD, run_dir, config, vpn_config, model, optimizer, scheduler, loss_scaler(device, amp),
                     device, amp, train_set.spec.metric, eval_set.split, LOG_COLUMNS, grad_groups=GRAD_GROUPS)
    progress = engine.resume(run)
    if progress.epoch >= config.epochs:
        log.info("%s already trained for %d epochs (asked %d); nothing to do", run_dir, progress.epoch,
                 config.epochs)
        return json.loads((run_dir / "metrics.json").read_text())

    sampler = EpochShuffleSampler(len(train_set), config.seed)
    train_loader = make_loader(train_set, config.batch_size, config.num_workers, device, sampler, config.seed)
    eval_loader = make_loader(eval_set, config.batch_size, config.num_workers, device, seed=config.seed)
    log.info("training %s: %s, %d train clips, scoring %d %s clips (%s) each epoch, device %s, amp %s",
             run_dir.name, vpn_config.variant, len(train_set), len(eval_set), eval_set.split, run.metric, device,
             amp)
    held_out = {"held_out_subjects": eval_set.held_out_subjects.tolist()}
    return engine.fit(run, progress, model, train_loader, sampler,
                      lambda: evaluate_split(model, eval_set, eval_loader, device, amp), lambda _: held_out)


# ----------------------------------------------------------------------------------------------------------
# command line


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``train`` and ``ablate`` share (everything but the variant and its model switches)."""
    defaults = TrainConfig("", "")
    add_common_arguments(parser, defaults, "any VPNConfig field, e.g. --model embed_dim=512 (repeatable)")
    parser.add_argument("--pose-lr-scale", type=float, default=defaults.pose_lr_scale,
                        help="learning-rate multiplier of the pose backbone and attention network")
    parser.add_argument("--in-memory", action="store_true", help="load the splits into RAM when they fit")
    parser.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS,
                        help="sgd (the paper) or adamw")
    parser.add_argument("--cache-dir", dest="cache", default=defaults.cache, help="cache root, cache directory or cache.h5")


def config_from_args(args: argparse.Namespace, variant: str, model: dict[str, Any], run_name: str) -> TrainConfig:
    """Build a ``TrainConfig`` from the shared options."""
    return TrainConfig(
        dataset=args.dataset, protocol=args.protocol, variant=variant, model=model, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        pose_lr_scale=args.pose_lr_scale, optimizer=args.optimizer,
        lr_step=args.lr_step, lr_gamma=args.lr_gamma, eval_split=args.eval_split, val_fraction=args.val_fraction,
        seed=args.seed,
        deterministic=args.deterministic, num_workers=args.num_workers, in_memory=args.in_memory, amp=args.amp,
        device=args.device, cache=args.cache, runs_dir=args.runs_dir, run_name=run_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpn_head.train.head", description=__doc__.split("\n\n")[0])
    add_training_arguments(parser)
    parser.add_argument("--variant", default="vpn", choices=VARIANTS)
    parser.add_argument("--pose-backbone", choices=("gcn", "lstm"))
    parser.add_argument("--coupler", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--embedding-loss", choices=EMBEDDING_LOSSES)
    parser.add_argument("--run", default="", help="run name (default: <dataset>_<protocol>_<variant>)")
    parser.add_argument("--force-new", action="store_true", help="move an existing run aside and start over")
    args = parse_args_with_config(parser, argv, "train", {"run_name": "run"})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = reading_model(args.reading, args.model)
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
