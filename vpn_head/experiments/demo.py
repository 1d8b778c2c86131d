"""The demo's last step: train the ``i3d``, ``attention`` and ``vpn`` heads on a built cache, evaluate, print a table.

``python -m vpn_head.experiments.demo --cache-dir DIR --runs-dir DIR --manifest CSV [--epochs 30] [--seed 0]``

``make demo`` runs it after generating the synthetic dataset, its manifest and its cache. It prints the columns of
``make fidelity`` (``vpn_head.experiments.fidelity``) for one seed: test top-1 of ``best.pt`` chosen on the validation set
carved from the training subjects, top-1 with the test poses shuffled across videos, the attention statistics;
the pose variants twice, with the paper's free 7 x 7 A_S and with the joint-anchored one (``fidelity.JOINT_ANCHORED``,
rows ``(joints)``; ``make demo`` writes the crop joints after the cache); the oracle head; and the linear probe on the
same features (``vpn_head.eval.probe``, its C chosen on the same validation set). Runs resume like any ``make train-head``
run, so a second ``make demo`` only re-prints it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cache.reader import CacheError
from vpn_head.data.splits import CARVED_VAL
from vpn_head.engine.config import TRAIN_READINGS
from vpn_head.engine.options import reading_model
from vpn_head.eval.probe import run_probe
from vpn_head.experiments.fidelity import (
    JOINT_ANCHORED,
    VARIANTS,
    format_table,
    run_variants,
    summarise_seeds,
    train_oracle,
)
from vpn_head.model.config import READINGS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--manifest", required=True, help="the demo's manifest (locates the key joint)")
    parser.add_argument("--dataset", default="ntu60")
    parser.add_argument("--protocol", default="cs")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--reading", choices=sorted(READINGS), default=None,
                        help="train every head under this reading (docs/readings.md); default: our defaults")
    args = parser.parse_args(argv)
    model, trainer = reading_model(args.reading, {}), dict(TRAIN_READINGS[args.reading]) if args.reading else {}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = run_variants(args.cache_dir, args.runs_dir, args.seed, args.epochs, tuple(args.variants), model,
                               manifest=args.manifest, dataset=args.dataset, protocol=args.protocol,
                               train_overrides=trainer)
        pose_variants = tuple(v for v in args.variants if v != "i3d")
        results += run_variants(args.cache_dir, args.runs_dir, args.seed, args.epochs, pose_variants,
                                {**model, **JOINT_ANCHORED}, args.manifest, dataset=args.dataset,
                                protocol=args.protocol, train_overrides=trainer, label=" (joints)")
        oracle = [train_oracle(args.cache_dir, args.seed, args.epochs, args.manifest, None, args.dataset,
                               args.protocol, model=model, train_overrides=trainer, runs_dir=args.runs_dir)]
        probe = [run_probe(args.cache_dir, args.dataset, args.protocol, args.seed)]
    except (CacheError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\n{args.dataset} {args.protocol}, test split ({results[0]['num_videos']} videos; synthetic data; "
          f"best.pt and the probe's C chosen on {CARVED_VAL}; shuffled = test poses permuted across videos; "
          f"seed {args.seed}):")
    print(format_table(summarise_seeds([results], oracle, probe)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
