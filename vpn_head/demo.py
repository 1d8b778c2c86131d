"""The demo's last step: train the ``i3d`` and ``vpn`` heads on a built cache, evaluate both, print a table.

``python -m vpn_head.demo --cache-dir DIR --runs-dir DIR [--epochs 30] [--dataset ntu60] [--protocol cs]``

``make demo`` runs it after generating the synthetic dataset, its manifest and its cache. Runs resume like any
``make train-head`` run, so a second ``make demo`` only re-prints the table.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.cache import CacheError
from vpn_head.evaluate import evaluate_run
from vpn_head.train import TrainConfig, train

VARIANTS = ("i3d", "attention", "vpn")


def run_demo(cache: str, runs_dir: str, dataset: str, protocol: str, epochs: int,
             variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """Train and evaluate each variant; returns one metrics dict per variant."""
    results = []
    for variant in variants:
        config = TrainConfig(dataset=dataset, protocol=protocol, variant=variant, epochs=epochs, cache=cache,
                             runs_dir=runs_dir, run_name=f"demo_{variant}", num_workers=0, in_memory=True)
        train(config)
        metrics = evaluate_run(config.run_dir, split="test", checkpoint="last", cache=cache)
        results.append(metrics)
    return results


def format_table(results: list[dict]) -> str:
    lines = ["| variant | test videos | top-1 | mean per-class |", "|---|---|---|---|"]
    for m in results:
        lines.append(f"| {m['variant']} | {m['num_videos']} | {m['top1']:.3f} | {m['mean_class']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--dataset", default="ntu60")
    parser.add_argument("--protocol", default="cs")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = run_demo(args.cache_dir, args.runs_dir, args.dataset, args.protocol, args.epochs,
                           tuple(args.variants))
    except (CacheError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\n{args.dataset} {args.protocol}, test split (synthetic data; last epoch's weights):")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
