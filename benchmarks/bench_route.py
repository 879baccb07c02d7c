"""Routing speed and quality at 10,000 prompts x 30 models (run by hand; prints results).

    .venv/bin/python benchmarks/bench_route.py [--prompts 10000] [--models 30]

Predictions come from a simulated arena (``p2l_cli.data.simulate``): each fresh prompt's true
coefficients, plus N(0, 0.3) noise per prompt and model so that no two prompts are alike (as
with a real P2L model), and the arena's costs. It times:

- the expected win rates against a uniform opponent (``win_rates_vs_opponents``),
- per-prompt budgets (frontier method) and batch budgets (exact dual method),
- the same LPs with scipy's ``linprog`` (HiGHS): per prompt on a sample, extrapolated, and one
  batch LP on a subset (the whole batch with ``--full-linprog``; minutes),
- the router's score with every single model's (the summary),
- ``p2l route`` end to end as a subprocess (Parquet in and out),

and compares batch with per-prompt routing at equal mean cost, on the noisy predictions and
on the arena's true coefficients.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from p2l_cli import io, route
from p2l_cli.data.simulate import costs_yaml, simulate_arena
from p2l_cli.stats.winrates import win_rates_vs_opponents


def best_of(fn, repeat: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def mean_rate(strategy: np.ndarray, values: np.ndarray) -> float:
    return float((strategy * values).sum(axis=1).mean())


def arena_predictions(prompts: int, models: int, seed: int = 0):
    arena = simulate_arena(num_battles=100, num_models=models, num_prompts=prompts, seed=seed)
    truth = np.array(arena.prompts["true_coefs"].to_list(), dtype=np.float64)
    noisy = truth + np.random.default_rng(seed).normal(0, 0.3, truth.shape)
    costs = np.array([arena.costs[m]["price_per_million_output_tokens"]
                      * arena.costs[m]["mean_output_tokens"] / 1e6 for m in arena.models])  # fmt: skip
    return arena, truth, noisy, costs


def speed(noisy: np.ndarray, costs: np.ndarray, budget: float, args) -> None:
    n, m = noisy.shape
    q = np.full(m, 1.0 / m)
    t_values, values = best_of(lambda: win_rates_vs_opponents(noisy, q), 3)
    t_prompt, per_prompt = best_of(lambda: route.route_per_prompt(values, costs, budget))
    t_batch, batch = best_of(lambda: route.route_batch(values, costs, budget))
    t_price, _ = best_of(lambda: route.route_by_price(values, costs, batch.price))
    problem = route.Problem([f"m{i}" for i in range(m)], "bt", noisy, None, q, list(range(m)),
                            costs, values)  # fmt: skip
    t_summary, _ = best_of(
        lambda: route.summarise(problem, batch, route.choose(batch.strategy, costs, 0), budget), 1
    )
    print(f"\n## speed: {n} prompts x {m} models, budget {budget:.6g}")
    print(f"expected win rates (bt, uniform q):  {t_values:8.3f} s")
    print(f"per-prompt scope (frontier):         {t_prompt:8.3f} s")
    print(f"batch scope (exact dual):            {t_batch:8.3f} s   price {batch.price:.4g}")
    print(f"price routing (argmax v - lambda c): {t_price:8.3f} s")
    print(f"summary: router + {m} single scores: {t_summary:8.3f} s")

    sample = values[: args.linprog_prompts]
    start = time.perf_counter()
    reference = route.route_per_prompt_linprog(sample, costs, budget)
    per = (time.perf_counter() - start) / len(sample)
    gap = np.abs((reference.strategy * sample).sum(1)
                 - (per_prompt.strategy[: len(sample)] * sample).sum(1)).max()  # fmt: skip
    print(f"per-prompt linprog (HiGHS):          {per * 1e3:8.3f} ms/prompt -> "
          f"{per * n:.1f} s for {n} (max value gap to frontier {gap:.1e})")  # fmt: skip
    size = n if args.full_linprog else min(n, args.batch_linprog_prompts)
    subset = values[:size]
    start = time.perf_counter()
    lp = route.route_batch_linprog(subset, costs, budget)
    t_lp = time.perf_counter() - start
    exact = route.route_batch(subset, costs, budget)
    print(f"batch linprog (HiGHS), {size} prompts: {t_lp:8.3f} s (exact dual: value gap "
          f"{abs(mean_rate(lp.strategy, subset) - mean_rate(exact.strategy, subset)):.1e}, "
          f"price {lp.price:.6g} vs {exact.price:.6g})")  # fmt: skip


def family_speed(noisy: np.ndarray) -> None:
    """Win rates and scores cost more in the tie families (more terms per probability)."""
    n, m = noisy.shape
    q = np.full(m, 1.0 / m)
    eta = np.random.default_rng(1).normal(0, 1, n)
    for family, shift in (("bt", 0.0), ("rk", 25.0), ("grk", 0.0)):
        tie = eta + shift if family != "bt" else None
        start = time.perf_counter()
        values = win_rates_vs_opponents(noisy, q, tie, family)
        t_values = time.perf_counter() - start
        start = time.perf_counter()
        route.router_thetas(noisy, q, [0.55, *values.mean(axis=0)], tie, family)
        t_roots = time.perf_counter() - start
        print(f"{family:>3}: win rates {t_values:6.3f} s, scores of the router and {m} models "
              f"{t_roots:6.3f} s")  # fmt: skip


def quality(coefs: np.ndarray, costs: np.ndarray, label: str) -> None:
    m = coefs.shape[1]
    values = win_rates_vs_opponents(coefs, np.full(m, 1.0 / m))
    print(f"\n## batch vs per-prompt at equal mean cost ({label})")
    print("| budget | per-prompt win rate | batch win rate (same mean cost) | gain | best single "
          "model within budget |")
    print("|---:|---:|---:|---:|---:|")
    for budget in np.quantile(costs, [0.1, 0.25, 0.5, 0.75]):
        per_prompt = route.route_per_prompt(values, costs, budget).strategy
        spent = float((per_prompt @ costs).mean())
        batch = route.route_batch(values, costs, spent).strategy
        fits = costs <= budget
        single = values.mean(axis=0)[fits].max()
        a, b = mean_rate(per_prompt, values), mean_rate(batch, values)
        print(f"| {budget:.6g} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {single:.4f} |")


def end_to_end(noisy: np.ndarray, arena, budget: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        df = pl.DataFrame({"id": arena.prompts["id"], "prompt": arena.prompts["prompt"],
                           "coefs": pl.Series(noisy.astype(np.float32)).cast(
                               pl.List(pl.Float32))})  # fmt: skip
        io.write_table(df, folder / "pred.parquet",
                       meta={"models": arena.models, "head": "bt", "loss": "bt"})  # fmt: skip
        (folder / "costs.yaml").write_text(costs_yaml(arena.costs))
        for scope in ("batch", "prompt"):
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "p2l_cli", "route", folder / "pred.parquet", "--costs",
                 folder / "costs.yaml", "--budget", str(budget), "--budget-scope", scope,
                 "-o", folder / "routes.parquet", "-q"], capture_output=True, check=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
            assert proc.returncode == 0, proc.stderr.decode()
            print(f"`p2l route` end to end, {scope} scope: {wall:.2f} s (process start, "
                  "reading, win rates, routing, summary, writing Parquet)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10000)
    parser.add_argument("--models", type=int, default=30)
    parser.add_argument("--linprog-prompts", type=int, default=300)
    parser.add_argument("--batch-linprog-prompts", type=int, default=1000)
    parser.add_argument("--full-linprog", action="store_true")
    args = parser.parse_args()
    arena, truth, noisy, costs = arena_predictions(args.prompts, args.models)
    budget = float(np.quantile(costs, 0.5))
    speed(noisy, costs, budget, args)
    print(f"\n## win rates and scores by family ({args.prompts} prompts x {args.models} models)")
    family_speed(noisy)
    quality(noisy, costs, "noisy predictions")
    quality(truth, costs, "true coefficients of the simulated arena")
    print()
    end_to_end(noisy, arena, budget)


if __name__ == "__main__":
    main()
