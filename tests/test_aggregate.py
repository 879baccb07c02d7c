"""Aggregation against a brute-force optimiser of the per-prompt objective, and against the
known answer when every prompt has the same leaderboard."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import expit

from p2l_cli.stats.aggregate import (
    aggregate,
    aggregate_fit,
    bootstrap_aggregate,
    outcome_sums,
)


def outcome_probs(theta_i, theta_j, eta, family):
    """Textbook (win, loss, tie, both bad) probabilities, written independently of p2l."""
    d = theta_i - theta_j
    zero = np.zeros_like(d)
    if family in ("bt", "bt-tie"):
        return [expit(d), expit(-d), zero, zero]
    if family == "rk":
        s = np.maximum(10.0 * np.log1p(np.exp(0.1 * (eta - 22.5))), 0.02)
        win, loss = expit(d - s), expit(-d - s)
        return [win, loss, 1 - win - loss, zero]
    t = np.exp(eta) + 1 + 1e-6
    ea, eb = np.exp(theta_i), np.exp(theta_j)
    win, loss, bb = ea / (ea + t * eb + 1), eb / (eb + t * ea + 1), 1 / (ea + eb + 1)
    return [win, loss, 1 - win - loss - bb, bb]


def brute_force(coefs, etas, family, weights):
    """Minimise sum_z w_z mean_{i<j} cross-entropy(P_z, P_theta) / sum w with BFGS."""
    n, m = coefs.shape
    lo, hi = np.triu_indices(m, k=1)
    targets = [
        outcome_probs(coefs[z, lo], coefs[z, hi], None if etas is None else etas[z], family)
        for z in range(n)
    ]
    mean_target = [sum(w * t[o] for w, t in zip(weights, targets)) / weights.sum()
                   for o in range(4)]
    free_shift = family != "grk"
    with_eta = family in ("rk", "grk")

    def unpack(x):
        theta = np.concatenate([[0.0], x[: m - 1]]) if free_shift else x[:m]
        return theta, (x[-1] if with_eta else None)

    def objective(x):
        # the per-prompt objective, summed prompt by prompt (not via the mean matrix)
        theta, eta = unpack(x)
        model = outcome_probs(theta[lo], theta[hi], eta, family)
        total = 0.0
        for w, target in zip(weights, targets):
            ce = sum(-target[o] * np.log(model[o]) for o in range(4) if np.any(target[o] > 0))
            total += w * ce.mean()
        return total / weights.sum()

    x0 = np.zeros((m - 1 if free_shift else m) + with_eta)
    if family == "rk":
        x0[-1] = np.mean(etas)
    res = minimize(objective, x0, method="BFGS", jac="3-point", options={"gtol": 1e-11})
    theta, eta = unpack(res.x)
    if free_shift:
        theta = theta - theta.mean()
    return theta, eta, objective, res.x, mean_target


def random_prompts(n, m, family, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, m)
    coefs = base + rng.normal(0, 0.8, (n, m))
    etas = None
    if family == "rk":
        etas = rng.normal(-12, 2, n)
    elif family == "grk":
        etas = rng.normal(0.5, 0.5, n)
    return coefs, etas


@pytest.mark.parametrize("family", ["bt", "bt-tie", "rk", "grk"])
def test_matches_brute_force(family):
    coefs, etas = random_prompts(25, 5, family, seed=1)
    weights = np.random.default_rng(2).uniform(0.2, 3.0, len(coefs))
    fit = aggregate_fit(coefs, etas, family, weights)
    theta, eta, objective, x, _ = brute_force(coefs, etas, family, weights)
    np.testing.assert_allclose(fit.theta, theta, atol=2e-6)
    if eta is None:
        assert fit.eta is None
    else:
        assert fit.eta == pytest.approx(eta, abs=2e-5)
    assert fit.grad_norm <= 1e-8
    assert fit.cross_entropy == pytest.approx(objective(x), rel=1e-8)


def test_solution_has_tiny_gradient_of_the_independent_objective():
    coefs, _ = random_prompts(40, 6, "bt", seed=3)
    theta, _ = aggregate(coefs)
    # the bt objective's gradient in closed form: sum over ordered pairs of (sigma - Pbar)
    mean_win = expit(coefs[:, :, None] - coefs[:, None, :]).mean(0)
    model = expit(theta[:, None] - theta[None, :])
    off = ~np.eye(6, dtype=bool)
    grad = ((model - mean_win) * off).sum(1) / (6 * 5 / 2)
    assert np.abs(grad).max() <= 1e-8


def test_streamed_batches_with_weights_match_brute_force():
    coefs, etas = random_prompts(30, 4, "rk", seed=4)
    weights = np.random.default_rng(5).uniform(0.5, 2.0, 30)
    cuts = [0, 7, 8, 21, 30]
    batches = [torch.tensor(coefs[a:b], dtype=torch.float32) for a, b in pairwise(cuts)]
    eta_batches = [etas[a:b] for a, b in pairwise(cuts)]
    weight_batches = [weights[a:b] for a, b in pairwise(cuts)]
    theta, eta = aggregate(iter(batches), iter(eta_batches), "rk", weight_batches)
    want_theta, want_eta, *_ = brute_force(
        np.concatenate([b.double().numpy() for b in batches]), etas, "rk", weights
    )
    np.testing.assert_allclose(theta, want_theta, atol=1e-5)  # float32 inputs
    assert eta == pytest.approx(want_eta, abs=1e-3)
    flat_theta, _ = aggregate(iter(batches), iter(eta_batches), "rk", weights)
    np.testing.assert_allclose(flat_theta, theta, atol=1e-12)


@pytest.mark.parametrize("family", ["bt", "rk", "grk"])
def test_one_shared_leaderboard_is_its_own_aggregate(family):
    rng = np.random.default_rng(6)
    shared = rng.normal(0, 2, 7)
    if family != "grk":
        shared -= shared.mean()
    eta = {"bt": None, "rk": -9.0, "grk": 0.7}[family]
    coefs = np.tile(shared, (50, 1))
    etas = None if eta is None else np.full(50, eta)
    theta, got_eta = aggregate(coefs, etas, family)
    np.testing.assert_allclose(theta, shared, atol=1e-7)
    if eta is not None:
        assert got_eta == pytest.approx(eta, abs=1e-6)


@pytest.mark.parametrize("family", ["bt", "rk", "grk"])
@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-13), (np.float32, 3e-7)])
def test_outcome_sums_match_textbook_means(family, dtype, atol):
    # many blocks and partial sums (300 prompts of 60 models, small blocks); some prompts far
    # from 0, whose blocks the families module computes another way
    coefs, etas = random_prompts(300, 60, family, seed=8)
    coefs[::37] = coefs[::37] * 12 + 90
    sums = outcome_sums(coefs.astype(dtype), None if etas is None else etas.astype(dtype),
                        family, block_elements=60 * 60 * 7)
    i, j = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    mean = [np.mean([outcome_probs(c[i], c[j], None if etas is None else etas[z], family)[o]
                     for z, c in enumerate(coefs.astype(dtype).astype(np.float64))], axis=0)
            for o in range(4)]
    off = ~np.eye(60, dtype=bool)
    assert sums.n_prompts == 300
    np.testing.assert_allclose((sums.win / 300)[off], mean[0][off], atol=atol)
    if family != "bt":
        np.testing.assert_allclose((sums.tie / 300)[off], mean[2][off], atol=atol)
    if family == "grk":
        np.testing.assert_allclose((sums.both_bad / 300)[off], mean[3][off], atol=atol)


def test_extreme_coefficients_stay_finite():
    coefs = np.array([[50.0, -50.0, 0.0], [49.0, -50.0, 1.0]], dtype=np.float32)
    theta, _ = aggregate(coefs)
    assert np.isfinite(theta).all()
    assert theta[0] > theta[2] > theta[1]


def test_bootstrap_spread_matches_independent_resampling():
    coefs, _ = random_prompts(300, 5, "bt", seed=7)
    boot = bootstrap_aggregate(coefs, rounds=200, seed=1)
    rng = np.random.default_rng(123)
    manual = np.array([aggregate(coefs[rng.integers(0, 300, 300)])[0] for _ in range(200)])
    np.testing.assert_allclose(boot.std(0), manual.std(0), rtol=0.25)
    again = bootstrap_aggregate(coefs, rounds=200, seed=1)
    np.testing.assert_array_equal(boot, again)


def test_needs_eta_for_rk():
    with pytest.raises(ValueError, match="eta"):
        aggregate(np.zeros((3, 4)), None, "rk")
