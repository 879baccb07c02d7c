"""Speed and agreement of p2l's statistics core (run by hand; prints results).

1. Marginal leaderboard, end to end (read a Parquet battles file -> leaderboard table) on
   simulated Arena battles, against LMArena's own implementation, the ``arena-rank``
   package (BradleyTerry, ties as half, sandwich intervals): agreement of ratings and
   interval bounds, and wall time. arena-rank (with jax and pandas) comes with the ``dev``
   extra and runs in a separate process of this interpreter (point ``ARENA_RANK_PYTHON``
   at another interpreter that imports ``arena_rank`` to use that one).
   The whole-process comparison alternates p2l and arena-rank runs and reports medians and
   the load average, since the machine may be shared.
2. Fit times of every family on 1.5 million votes, with sandwich and bootstrap intervals.
3. Aggregation of 100,000 prompts x 130 models: time and peak memory (in a fresh process).

Usage: python benchmarks/bench_stats.py [--battles 1000000] [--models 130] [--prompts 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARENA_PYTHON = os.environ.get("ARENA_RANK_PYTHON", sys.executable)
REPEATS = 3  # timings are the best of this many runs

ARENA_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    import pandas as pd
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset
    imported = time.perf_counter()
    df = pd.read_parquet(sys.argv[1], columns=["model_a", "model_b", "winner"])
    dataset = PairDataset.from_pandas(df, reweighted=sys.argv[3] == "1")
    model = BradleyTerry(n_competitors=len(dataset.competitors))
    result = model.compute_ratings_and_cis(dataset, significance_level=0.05)
    table = pd.DataFrame({
        "model": result["competitors"],
        "rating": result["ratings"].tolist(),
        "lower": result["rating_lower"].tolist(),
        "upper": result["rating_upper"].tolist(),
    }).sort_values("rating", ascending=False)
    done = time.perf_counter()
    table.to_json(sys.argv[2], orient="records")
    print(json.dumps({"import_s": imported - start, "work_s": done - imported}))
    """
)


def simulate_battles(path: Path, num_battles: int, num_models: int, seed: int = 0) -> None:
    """Arena-schema battles: BT outcomes, 15% ties and 5% ties-both-bad, uneven sampling."""
    rng = np.random.default_rng(seed)
    models = np.array([f"model-{i:03d}" for i in range(num_models)])
    theta = rng.normal(0, 1, num_models)
    popularity = rng.dirichlet(np.full(num_models, 2.0))
    a = rng.choice(num_models, num_battles, p=popularity)
    b = (a + rng.integers(1, num_models, num_battles)) % num_models
    p_a = 1 / (1 + np.exp(-(theta[a] - theta[b])))
    draw = rng.random(num_battles)
    winner = np.where(draw < 0.15, "tie", np.where(draw < 0.20, "tie (bothbad)", np.where(
        rng.random(num_battles) < p_a, "model_a", "model_b")))
    pl.DataFrame({
        "id": np.arange(num_battles).astype(str),
        "model_a": models[a],
        "model_b": models[b],
        "winner": winner,
        "category": rng.choice(["code", "math", "writing", "other"], num_battles),
    }).write_parquet(path)


def p2l_end_to_end(path: Path, reweight: bool) -> tuple[pl.DataFrame, float]:
    from rich.console import Console

    from p2l_cli.leaderboard import build_leaderboard, load_input
    from p2l_cli.leaderboard.report import render

    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        data = load_input(str(path))
        board = build_leaderboard(data, family="bt-tie", ci="sandwich", reweight=reweight)
        with open(os.devnull, "w") as sink:
            Console(file=sink).print(render(board.table, "bench"))
        best = min(best, time.perf_counter() - start)
    return board.table, best


def arena_end_to_end(path: Path, reweight: bool) -> tuple[pl.DataFrame, dict, float] | None:
    if not Path(ARENA_PYTHON).exists():
        print(f"  arena-rank: no interpreter at {ARENA_PYTHON}; skipped")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "arena.py"
        script.write_text(ARENA_SCRIPT)
        out = Path(tmp) / "arena.json"
        runs = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            proc = subprocess.run([ARENA_PYTHON, str(script), str(path), str(out),
                                   "1" if reweight else "0"], capture_output=True, text=True,
                                  check=False)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                print("  arena-rank failed:", proc.stderr[-2000:])
                return None
            runs.append((json.loads(proc.stdout.strip().splitlines()[-1]), wall))
        timing, wall = min(runs, key=lambda run: run[0]["work_s"])
        return pl.read_json(out), timing, wall


WHOLE_PROCESS_ROUNDS = 7


def _timed_run(command: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def whole_processes(path: Path, tmp: Path, rounds: int = WHOLE_PROCESS_ROUNDS) -> None:
    """``p2l leaderboard`` and the arena-rank script as whole processes (interpreter start and
    imports included), run alternately so that both see the same load; medians."""
    p2l = [sys.executable, "-m", "p2l_cli", "leaderboard", str(path), "-o",
           str(tmp / "out.csv"), "-q"]
    script = tmp / "arena.py"
    script.write_text(ARENA_SCRIPT)
    arena = [ARENA_PYTHON, str(script), str(path), str(tmp / "arena.json"), "0"]
    have_arena = Path(ARENA_PYTHON).exists()
    load_before = os.getloadavg()[0]
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_timed_run(p2l, cwd=REPO))
        if have_arena:
            theirs.append(_timed_run(arena))
    load_after = os.getloadavg()[0]
    print(f"  whole processes, {rounds} alternating rounds (load average {load_before:.2f} "
          f"before, {load_after:.2f} after):")
    print(f"    p2l CLI    median {np.median(ours):.2f} s (min {min(ours):.2f}, "
          f"max {max(ours):.2f})")
    if have_arena:
        print(f"    arena-rank median {np.median(theirs):.2f} s (min {min(theirs):.2f}, "
              f"max {max(theirs):.2f})")
        print(f"    speed-up, whole processes: {np.median(theirs) / np.median(ours):.2f}x "
              f"(ratio of medians)")


def bench_marginal(num_battles: int, num_models: int) -> None:
    print(f"\n== marginal leaderboard: {num_battles:,} battles, {num_models} models ==")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "battles.parquet"
        simulate_battles(path, num_battles, num_models)
        for reweight in (False, True):
            label = "reweighted" if reweight else "plain"
            ours, ours_s = p2l_end_to_end(path, reweight)
            print(f"  [{label}] p2l read -> table (in process): {ours_s:.2f} s")
            if not reweight:
                whole_processes(path, Path(tmp))
            arena = arena_end_to_end(path, reweight)
            if arena is None:
                continue
            theirs, timing, wall = arena
            print(f"  [{label}] arena-rank read -> table (in process): {timing['work_s']:.2f} s "
                  f"(+ {timing['import_s']:.2f} s imports; process wall {wall:.2f} s)")
            print(f"  [{label}] speed-up, in process: {timing['work_s'] / ours_s:.1f}x")
            joined = ours.join(theirs, on="model")
            rating_diff = (joined["score"] - joined["rating"]).abs().max()
            lower_diff = (joined["lower"] - joined["lower_right"]).abs().max()
            upper_diff = (joined["upper"] - joined["upper_right"]).abs().max()
            print(f"  [{label}] max |rating difference| {rating_diff:.5f}; max |bound "
                  f"difference| lower {lower_diff:.5f}, upper {upper_diff:.5f}")


def bench_families(num_votes: int, num_models: int) -> None:
    from p2l_cli.stats.marginal import fit_grouped, group_votes

    print(f"\n== fits on {num_votes:,} votes among {num_models} models ==")
    rng = np.random.default_rng(1)
    theta = rng.normal(0, 1, num_models)
    a = rng.integers(0, num_models, num_votes)
    b = (a + rng.integers(1, num_models, num_votes)) % num_models
    a_wins = rng.random(num_votes) < 1 / (1 + np.exp(-(theta[a] - theta[b])))
    code = rng.choice([0, 1, 2], num_votes, p=[0.8, 0.15, 0.05])
    winner = np.where(a_wins | (code > 0), a, b)
    loser = np.where(a_wins | (code > 0), b, a)
    for family in ("bt", "bt-tie", "rk", "grk"):
        start = time.perf_counter()
        votes = group_votes(winner, loser, code, num_models, family)
        grouped = time.perf_counter() - start
        times = {}
        for ci, rounds in (("none", 0), ("sandwich", 0), ("bootstrap", 100)):
            start = time.perf_counter()
            fit_grouped(votes, family, ci, bootstrap_rounds=rounds)
            times[ci] = time.perf_counter() - start
        print(f"  {family:7s} group {grouped:.2f} s ({len(votes.rows):,} rows); fit "
              f"{times['none']:.2f} s; + sandwich {times['sandwich']:.2f} s; "
              f"+ bootstrap x100 {times['bootstrap']:.2f} s")


AGGREGATE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np

    def memory_mb(field):  # this process's own high-water mark (VmHWM) or current RSS
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    sys.path.insert(0, sys.argv[1])
    from p2l_cli.stats.aggregate import aggregate_fit
    n, m, family = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = np.random.default_rng(0)
    coefs = (rng.normal(0, 1, m) + rng.normal(0, 0.7, (n, m))).astype(np.float32)
    eta = None
    if family == "rk":
        eta = rng.normal(-12, 1, n).astype(np.float32)
    elif family == "grk":
        eta = rng.normal(0.5, 0.5, n).astype(np.float32)
    aggregate_fit(coefs[:10], None if eta is None else eta[:10], family)  # warm-up
    before = memory_mb("VmRSS")
    start = time.perf_counter()
    fit = aggregate_fit(coefs, eta, family)
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "before_mb": before,
                      "grad_norm": fit.grad_norm}))
    """
)


def bench_aggregate(num_prompts: int, num_models: int) -> None:
    print(f"\n== aggregation: {num_prompts:,} prompts x {num_models} models (float32) ==")
    for family in ("bt", "rk", "grk"):
        proc = subprocess.run(
            [sys.executable, "-c", AGGREGATE_SCRIPT, str(REPO), str(num_prompts),
             str(num_models), family], capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {family:4s} {result['seconds']:.2f} s; process peak RSS "
              f"{result['peak_mb']:.0f} MB (RSS before the call, torch and the inputs "
              f"loaded: {result['before_mb']:.0f} MB); gradient norm {result['grad_norm']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--battles", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=130)
    parser.add_argument("--votes", type=int, default=1_500_000)
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["marginal", "families",
                                                                   "aggregate"])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if "marginal" not in args.skip:
        bench_marginal(args.battles, args.models)
    if "families" not in args.skip:
        bench_families(args.votes, args.models)
    if "aggregate" not in args.skip:
        bench_aggregate(args.prompts, args.models)
    print(f"\nbenchmark process peak RSS: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
