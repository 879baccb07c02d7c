"""Intervals of aggregated leaderboards: the delta method (sandwich over prompts, the
default) against a brute-force delta method written independently of p2l (finite
differences of the textbook per-prompt objective), against the bootstrap, and in memory
that does not grow with the number of bootstrap rounds or prompts."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from itertools import pairwise

import numpy as np
import pytest

from p2l_cli.stats.aggregate import bootstrap_aggregate, sandwich_aggregate
from tests.conftest import REPO
from tests.test_aggregate import outcome_probs, random_prompts

# the module itself (p2l_cli.stats re-exports a function of the same name)
aggregate_module = importlib.import_module("p2l_cli.stats.aggregate")


def brute_force_covariance(coefs, etas, family, weights, theta, eta):
    """H^+ [sum_z w_z^2 (s_z - s)(s_z - s)^T / W^2] H^+ with s_z the gradient of prompt z's
    summed pair cross-entropy and H the Hessian of their weighted mean, both by central
    finite differences of the textbook outcome probabilities."""
    n, m = coefs.shape
    lo, hi = np.triu_indices(m, k=1)
    with_eta = family in ("rk", "grk")
    targets = [outcome_probs(coefs[z, lo], coefs[z, hi], None if etas is None else etas[z],
                             family) for z in range(n)]

    def prompt_loss(params, z):
        model = outcome_probs(params[lo], params[hi], params[m] if with_eta else None, family)
        return sum(float(np.sum(-targets[z][o] * np.log(model[o])))
                   for o in range(4) if np.any(targets[z][o] > 0))

    def gradient(f, x, h=1e-6):
        out = np.zeros(len(x))
        for k in range(len(x)):
            e = np.zeros(len(x))
            e[k] = h
            out[k] = (f(x + e) - f(x - e)) / (2 * h)
        return out

    x = np.concatenate([theta, [eta] if with_eta else []])
    scores = np.array([gradient(lambda p, z=z: prompt_loss(p, z), x) for z in range(n)])
    total = weights.sum()

    def mean_gradient(p):
        return sum(w * gradient(lambda q, z=z: prompt_loss(q, z), p)
                   for z, w in enumerate(weights)) / total

    size = len(x)
    hessian = np.zeros((size, size))
    for k in range(size):
        e = np.zeros(size)
        e[k] = 1e-4
        hessian[:, k] = (mean_gradient(x + e) - mean_gradient(x - e)) / 2e-4
    hessian = (hessian + hessian.T) / 2
    w2 = weights**2
    centred = scores - (w2 @ scores) / w2.sum()
    meat = (centred * w2[:, None]).T @ centred / total**2
    if family != "grk":  # theta's free shift: work in the centred subspace
        v = np.concatenate([np.ones(m), np.zeros(size - m)]) / np.sqrt(m)
        project = np.eye(size) - np.outer(v, v)
        hessian = project @ hessian @ project
    inverse = np.linalg.pinv(hessian, rcond=1e-9)
    return inverse @ meat @ inverse


@pytest.mark.parametrize("family", ["bt", "rk", "grk"])
def test_sandwich_matches_a_brute_force_delta_method(family):
    coefs, etas = random_prompts(30, 4, family, seed=5)
    weights = np.random.default_rng(6).uniform(0.3, 2.0, len(coefs))
    fit, cov = sandwich_aggregate(coefs, etas, family, weights)
    want = brute_force_covariance(coefs, etas, family, weights, fit.theta, fit.eta)
    # finite differences of finite differences: about 1e-3 on the small eta entries
    np.testing.assert_allclose(cov, want, rtol=3e-3, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("family", ["bt", "grk"])
def test_sandwich_agrees_with_the_bootstrap_on_many_prompts(family):
    coefs, etas = random_prompts(3000, 5, family, seed=7)
    fit, cov = sandwich_aggregate(coefs, etas, family)
    se = np.sqrt(np.diag(cov)[:5])
    boot = bootstrap_aggregate(coefs, etas, family, rounds=300, seed=2)
    np.testing.assert_allclose(boot.mean(0), fit.theta, atol=0.2 * se.max())
    np.testing.assert_allclose(boot.std(0), se, rtol=0.15)


def test_sandwich_from_a_sample_of_prompts_is_close_to_all_of_them():
    coefs, etas = random_prompts(4000, 6, "rk", seed=8)
    weights = np.random.default_rng(9).uniform(0.5, 1.5, len(coefs))
    _, full = sandwich_aggregate(coefs, etas, "rk", weights)
    # batches of uneven sizes: the systematic sample runs across batch boundaries
    cuts = [0, 777, 2000, 2001, 4000]
    batches = [coefs[a:b] for a, b in pairwise(cuts)]
    eta_batches = [etas[a:b] for a, b in pairwise(cuts)]
    weight_batches = [weights[a:b] for a, b in pairwise(cuts)]
    _, sampled = sandwich_aggregate(batches, eta_batches, "rk", weight_batches,
                                    meat_prompts=1000)
    np.testing.assert_allclose(np.sqrt(np.diag(sampled)), np.sqrt(np.diag(full)), rtol=0.1)


def test_bootstrap_solves_replicates_a_few_at_a_time_with_the_same_result(monkeypatch):
    coefs, etas = random_prompts(200, 5, "grk", seed=10)
    whole = bootstrap_aggregate(coefs, etas, "grk", rounds=12, seed=4)
    monkeypatch.setattr(aggregate_module, "SOLVE_ELEMENTS", 1)  # one replicate at a time
    one_by_one = bootstrap_aggregate(coefs, etas, "grk", rounds=12, seed=4)
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=1e-9)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import polars as pl
    from p2l_cli.contracts.predictions import Predictions
    from p2l_cli.leaderboard import build_leaderboard

    def peak_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    ci = sys.argv[2]
    n, m = 3000, 80
    rng = np.random.default_rng(0)
    coefs = (rng.normal(0, 1, m) + rng.normal(0, 0.7, (n, m))).astype(np.float32)
    eta = rng.normal(0.5, 0.5, n).astype(np.float32)
    models = [f"m{i:03d}" for i in range(m)]
    def predictions(coefs, eta):
        return Predictions(models=models, family="grk", head="grk", coefs=coefs, eta=eta,
                           frame=pl.DataFrame(), source="memory")
    small = predictions(coefs[:20], eta[:20])
    build_leaderboard(small, ci="none")  # warm-up: imports and first allocations
    before = peak_mb()
    board = build_leaderboard(predictions(coefs, eta),
                              **({} if ci == "default" else {"ci": ci}))
    print(json.dumps({"added_mb": peak_mb() - before, "ci": board.ci}))
    """
)


@pytest.mark.slow
def test_default_intervals_of_an_aggregate_keep_memory_flat():
    """Old default: 100 bootstrap refits solved at once, about 1 kB per (replicate, pair
    row): 1.5 GB at 80 models. Now the delta method, which adds a few M x M matrices."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(REPO), "default"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ci"] == "sandwich"
    assert result["added_mb"] < 150, result
