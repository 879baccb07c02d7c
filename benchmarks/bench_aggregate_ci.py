"""Time and peak memory of an aggregated leaderboard's intervals against its point estimate.

`p2l leaderboard predictions.parquet` aggregates per-prompt leaderboards into one and, by
default, adds bootstrap intervals over prompts. Each measurement runs in a fresh process
on simulated float32 predictions (N prompts x M models); the process's peak resident
memory (VmHWM) is read before and after the call, so the figure is what the call added on
top of the inputs and torch.

Intervals: ``sandwich`` (the delta method over prompts, the default of `p2l leaderboard` on
predictions) and ``bootstrap`` (``--ci bootstrap``: ROUNDS refits on resampled prompts).

Usage: python benchmarks/bench_aggregate_ci.py [--prompts 100000] [--models 130]
           [--families bt rk grk] [--rounds 100] [--intervals sandwich bootstrap]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np

    def memory_mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    sys.path.insert(0, sys.argv[1])
    import importlib
    agg = importlib.import_module("p2l_cli.stats.aggregate")
    n, m, family, what, rounds = (int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                  sys.argv[5], int(sys.argv[6]))
    rng = np.random.default_rng(0)
    coefs = (rng.normal(0, 1, m) + rng.normal(0, 0.7, (n, m))).astype(np.float32)
    eta = None
    if family == "rk":
        eta = rng.normal(-12, 1, n).astype(np.float32)
    elif family == "grk":
        eta = rng.normal(0.5, 0.5, n).astype(np.float32)
    agg.aggregate_fit(coefs[:10], None if eta is None else eta[:10], family)  # warm-up
    before = memory_mb("VmHWM")
    start, cpu = time.perf_counter(), time.process_time()
    if what == "point":
        agg.aggregate_fit(coefs, eta, family)
    elif what == "sandwich":  # what `p2l leaderboard predictions` computes by default
        agg.sandwich_aggregate(coefs, eta, family)
    else:  # --ci bootstrap
        agg.aggregate_fit(coefs, eta, family)
        agg.bootstrap_aggregate(coefs, eta, family, None, rounds, 0)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": memory_mb("VmHWM"),
                      "before_mb": before}))
    """
)


def measure(n: int, m: int, family: str, what: str, rounds: int, repo: Path = REPO) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(repo), str(n), str(m), family, what, str(rounds)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=130)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--families", nargs="+", default=["bt", "rk", "grk"])
    parser.add_argument("--intervals", nargs="+", default=["sandwich", "bootstrap"],
                        choices=["sandwich", "bootstrap"])
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="Measure the p2l in this checkout (e.g. one before a change).")
    args = parser.parse_args()
    print(f"p2l at {args.repo}; machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
          f"{args.prompts:,} prompts x {args.models} models, {args.rounds} bootstrap rounds")
    print("  times are CPU seconds of the call (single-threaded, so robust to a shared machine)"
          " and wall seconds in brackets; peak is the process's resident high-water mark")
    for family in args.families:
        point = measure(args.prompts, args.models, family, "point", args.rounds, args.repo)
        line = (f"  {family:4s} point {point['cpu']:6.2f} s ({point['seconds']:.2f}), peak "
                f"{point['peak_mb']:5.0f} MB (inputs and torch: {point['before_mb']:.0f} MB)")
        for what in args.intervals:
            got = measure(args.prompts, args.models, family, what, args.rounds, args.repo)
            line += (f" | {what} {got['cpu']:6.2f} s ({got['seconds']:.2f}; "
                     f"x{got['cpu'] / point['cpu']:.1f}), peak {got['peak_mb']:5.0f} MB")
        print(line, flush=True)

if __name__ == "__main__":
    main()
