"""Run every benchmark, each writing its JSON under ``--out-dir`` (``make bench``).

Each benchmark measures its ratios within one run (same machine state); this runner only sequences them and
prints a one-line summary per file. Benchmarks whose inputs are absent (e.g. ../shared for the real NTU decode
benchmark) are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_NTU = REPO.parent / "shared" / "samples" / "ntu"


def benchmarks(weights: str | None) -> dict[str, list[str]]:
    """name -> extra arguments of ``python -m bench.<name>``."""
    weight_args = ["--weights", weights] if weights else []
    runs = {
        "bench_pipeline": weight_args,
        "bench_cache": [],
        "bench_head": [],
    }
    if SHARED_NTU.is_dir():
        runs["bench_decode"] = ["--samples", str(SHARED_NTU)]
        runs["bench_crops"] = ["--samples", str(SHARED_NTU)]
    runs["bench_cache_store"] = weight_args + (["--samples", str(SHARED_NTU)] if SHARED_NTU.is_dir() else [])
    if (REPO / "bench" / "bench_finetune.py").is_file():
        runs["bench_finetune"] = []
    runs["bench_scale"] = []
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--i3d-weights", default=None)
    parser.add_argument("--only", nargs="*", help="run only these benchmarks (bench_scale or scale)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, extra in benchmarks(args.i3d_weights).items():
        if args.only and not {name, name.removeprefix("bench_")} & set(args.only):
            continue
        out = args.out_dir / f"{name.removeprefix('bench_')}.json"
        print(f"== {name} -> {out}", flush=True)
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--out", str(out), *extra], cwd=REPO)
        if proc.returncode != 0 or not out.is_file():
            failed.append(name)
            continue
        print(json.dumps(json.loads(out.read_text()))[:400], flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
