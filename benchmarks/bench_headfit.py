"""Speed of the exact linear head (`p2l train`'s default `ridge-cv` solver) as votes and models
grow (run by hand).

A fit computes, at every L-BFGS step, the coefficients its votes need. The head reads each
vote's two models only, so `p2l` computes those two per vote (one matrix-vector product per
model over the rows of its votes) instead of all M coefficients of every vote and picking
two. A family that reads only the difference of the two (`bt`, `bt-tie`, `rk`) gets that
difference directly: one product per pair of models over the rows of its votes, each row
read once instead of twice, for every pair with many votes (the others keep the per-model
products; "difference, every pair" gives every pair its own product). This script times
one loss-and-gradient evaluation each way on the same votes and checks that they give the
same loss and gradient, then times the whole cross-validated fit (`fit_linear_head`: 5
folds, the penalty path, the refit) the way `p2l train` runs it, each way.

The folds of that fit (and its refit on every vote) are independent chains down the penalty
path: `--workers` times the whole fit with its folds one after another (1) and on a pool of
2, 3, ... threads (one core each), and checks that every count gives the same head, bit for
bit. `p2l train` runs its candidate fits side by side on one such pool with a thread per
core (`head_fit_threads`), so this is what one fit gains from cores the others leave idle.

Votes are synthetic: standard normal features (d = 400, about MiniLM's 384 dimensions and
the descriptors), a planted linear truth over M models, pairs drawn uniformly (`--skewed`:
each model with probability 1 / its rank, a few popular models and a long tail of rare
pairs, as in the Arena; `--pairs-from`: the pairs of an arena's own votes), Bradley-Terry
outcomes with a fifth of the votes turned into ties, scored as `bt-tie`. One thread, as each
of `p2l train`'s side-by-side fits on a machine with no more cores than fits.

    python benchmarks/bench_headfit.py
    python benchmarks/bench_headfit.py --sizes 6000x12,30000x30 --whole 30000x30
    python benchmarks/bench_headfit.py --sizes 6000x12 --whole "" --workers 1,2
    python benchmarks/bench_headfit.py --skewed --sizes 30000x130 --whole ""
    python benchmarks/bench_headfit.py --pairs-from data/train.parquet --sizes 80000x30 --whole ""
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import numpy as np
import polars as pl
import torch

from p2l_cli.stats.families import DECISIVE, TIE_CODE, pairs_nll
from p2l_cli.stats.headfit import (
    _linear_coefs,
    _linear_differences,
    _linear_pairs,
    _Problem,
    _standardised,
    fit_linear_head,
)


def votes(n: int, m: int, d: int, seed: int, skewed: bool = False,
          pairs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features (like embeddings: a few strong directions), a planted truth.
    ``skewed``: each vote's models drawn with probability 1 / rank instead of uniformly;
    ``pairs`` (``[K, 2]`` model indices): each vote's models drawn from these rows."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * (0.9 ** np.arange(d))[:, None]
    x = rng.standard_normal((n, d)) @ mixing
    truth = rng.standard_normal((d, m)) * 0.05
    if pairs is not None:
        first, second = pairs[rng.integers(0, len(pairs), n)].T
    elif skewed:
        popularity = 1 / np.arange(1, m + 1)
        first, second = rng.choice(m, (2, n), p=popularity / popularity.sum())
        clash = first == second
        second[clash] = (first[clash] + rng.integers(1, m, int(clash.sum()))) % m
    else:
        first = rng.integers(0, m, n)
        second = (first + rng.integers(1, m, n)) % m
    theta = x @ truth
    rows = np.arange(n)
    p_first = 1 / (1 + np.exp(-(theta[rows, first] - theta[rows, second])))
    first_wins = rng.random(n) < p_first
    winner, loser = np.where(first_wins, first, second), np.where(first_wins, second, first)
    tie = np.where(rng.random(n) < 0.2, TIE_CODE, DECISIVE)
    return x, np.stack([winner, loser, tie], axis=1)


def _every_pair(x: torch.Tensor, labels: torch.Tensor, models: int):
    """The difference layout with a block for every pair of models, however few its votes."""
    with mock.patch("p2l_cli.stats.headfit.PAIR_BLOCK_COST", 0):
        return _linear_differences(x, labels, models)


# how each vote's coefficients are computed: all M picked, two per vote, one difference (per
# pair of models where a pair has many votes, as `p2l train` does; per pair everywhere)
LAYOUTS = {"all M": None, "two per vote": _linear_pairs, "difference": _linear_differences,
           "difference, every pair": _every_pair}  # fmt: skip


def arena_pairs(path: str) -> tuple[np.ndarray, int]:
    """The ``[K, 2]`` model indices of a battles or training file's votes, and the model count."""
    table = pl.read_parquet(path, columns=["model_a", "model_b"])
    names = sorted(set(table["model_a"]) | set(table["model_b"]))
    index = {name: i for i, name in enumerate(names)}
    pairs = np.array([[index[a], index[b]] for a, b in table.iter_rows()])
    return pairs, len(names)


def evaluation_seconds(x: np.ndarray, labels: np.ndarray, m: int, layout: str, repeats: int):
    """Seconds per loss-and-gradient evaluation of the head at a random point, the loss and
    the gradient."""
    z, _, _ = _standardised(x, None)
    y = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(z.shape[1], m, generator=generator, dtype=torch.float64) * 0.01)
    params = [weight.requires_grad_(True), torch.zeros(m, dtype=torch.float64, requires_grad=True)]
    problem = _Problem(_linear_coefs, penalised=(0,), pairs_of=LAYOUTS[layout])
    pairs_of = problem.vote_pairs(z, y, m)

    def evaluate():
        params[0].grad = None
        loss = pairs_nll(pairs_of(params)[0], y, None, "bt-tie")
        loss.backward()
        return loss.detach(), params[0].grad.clone()

    evaluate()
    started = time.perf_counter()
    for _ in range(repeats):
        loss, grad = evaluate()
    return (time.perf_counter() - started) / repeats, loss, grad


def fold_threads_seconds(x: np.ndarray, labels: np.ndarray, m: int, workers: list[int]) -> tuple:
    """Seconds of the whole cross-validated fit per fold-thread count, and whether every
    count gave the first one's head and held-out NLLs exactly."""
    seconds, heads = [], []
    for count in workers:
        started = time.perf_counter()
        if count == 1:
            heads.append(fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m)))
        else:
            with ThreadPoolExecutor(count) as pool:
                heads.append(fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), pool=pool))
        seconds.append(time.perf_counter() - started)
    (first, first_report), *rest = heads
    same = all(
        np.array_equal(head.weight, first.weight) and np.array_equal(head.bias, first.bias)
        and report.cv_nll == first_report.cv_nll for head, report in rest
    )
    return seconds, same


def whole_fit_seconds(x: np.ndarray, labels: np.ndarray, m: int, layout: str) -> float:
    """Seconds of the whole fit with every vote's coefficients computed as ``layout`` says."""
    started = time.perf_counter()
    with mock.patch("p2l_cli.stats.headfit._linear_differences", LAYOUTS[layout]):
        fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6000x12,30000x12,30000x30,30000x130,100000x30",
                        help="comma-separated VOTESxMODELS")  # fmt: skip
    parser.add_argument("--dims", type=int, default=400)
    parser.add_argument("--pairs-from", metavar="PARQUET",
                        help="draw each vote's two models from this battles or training file's "
                        "votes (an arena's own pairs; MODELS of --sizes must be its model "
                        "count)")  # fmt: skip
    parser.add_argument("--skewed", action="store_true",
                        help="models drawn with probability 1 / rank, as in the Arena: a few "
                        "pairs with many votes, a long tail of pairs with few")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--whole", default="30000x12",
                        help="sizes whose whole cross-validated fit is timed each way")  # fmt: skip
    parser.add_argument("--workers", default="",
                        help="comma-separated fold-thread counts to time the whole fit at, "
                        "e.g. 1,2 (each size of --sizes)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    whole = set(args.whole.split(",")) if args.whole else set()
    pairs, arena_models = arena_pairs(args.pairs_from) if args.pairs_from else (None, None)

    def synthetic(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        if arena_models is not None and m != arena_models:
            parser.error(f"--pairs-from {args.pairs_from} has {arena_models} models, not {m}")
        return votes(n, m, args.dims, seed=n + m, skewed=args.skewed, pairs=pairs)

    if args.workers:
        counts = [int(v) for v in args.workers.split(",")]
        print("| votes | models | " + " | ".join(f"whole CV fit, {c} fold thread(s) (s)" for c in counts)
              + " | same head |")  # fmt: skip
        print("|---|---|" + "---|" * len(counts) + "---|")
        for size in args.sizes.split(","):
            n, m = (int(v) for v in size.split("x"))
            x, labels = synthetic(n, m)
            seconds, same = fold_threads_seconds(x, labels, m, counts)
            print(f"| {n:,} | {m} | " + " | ".join(f"{s:.1f}" for s in seconds)
                  + f" | {'yes' if same else 'NO'} |", flush=True)  # fmt: skip
        print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPU cores, torch "
              f"{torch.__version__}, load average {os.getloadavg()[0]:.1f} at the end")
        return
    print("| votes | models | one evaluation (ms): " + " / ".join(LAYOUTS) + " | loss, gradient: "
          "max abs difference from all M | whole CV fit (s): " + " / ".join(LAYOUTS) + " |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        n, m = (int(v) for v in size.split("x"))
        x, labels = synthetic(n, m)
        results = [evaluation_seconds(x, labels, m, layout, args.repeats) for layout in LAYOUTS]
        (_, full_loss, full_grad), *rest = results
        diff = max(max(float((full_loss - loss).abs()), float((full_grad - grad).abs().max()))
                   for _, loss, grad in rest)  # fmt: skip
        fits = "—"
        if size in whole:
            fits = " / ".join(f"{whole_fit_seconds(x, labels, m, layout):.1f}" for layout in LAYOUTS)
        print(f"| {n:,} | {m} | " + " / ".join(f"{seconds * 1e3:.1f}" for seconds, _, _ in results)
              + f" | {diff:.1e} | {fits} |", flush=True)  # fmt: skip
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPU cores, one thread, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
