"""Marginal fits against closed forms, an independent per-vote scipy solver, a hand-written
sandwich estimator, and the bootstrap."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from p2l_cli.stats import arena_scale
from p2l_cli.stats.marginal import fit_grouped, fit_marginal, group_votes

# ------------------------------------------------ independent per-vote likelihood (numpy)


def rk_width(eta):
    return max(10.0 * np.log1p(np.exp(0.1 * (eta - 22.5))), 0.02)


def per_vote_nll(theta, eta, winner, loser, code, family):
    a, b = theta[winner], theta[loser]
    d = a - b
    decisive = code == 0
    if family == "bt":
        return np.where(decisive, np.logaddexp(0, -d), 0.0)
    if family == "bt-tie":
        return np.where(decisive, np.logaddexp(0, -d),
                        0.5 * (np.logaddexp(0, -d) + np.logaddexp(0, d)))
    if family == "rk":
        s = rk_width(eta)
        p_win, p_loss = expit(d - s), expit(-d - s)
        return np.where(decisive, -np.log(p_win), -np.log(1 - p_win - p_loss))
    t = np.exp(eta) + 1 + 1e-6
    ea, eb = np.exp(a), np.exp(b)
    p_win = ea / (ea + t * eb + 1)
    p_loss = eb / (eb + t * ea + 1)
    p_bb = 1 / (ea + eb + 1)
    p_tie = 1 - p_win - p_loss - p_bb
    return -np.log(np.select([code == 0, code == 1], [p_win, p_tie], p_bb))


def scipy_fit(winner, loser, code, m, family, weights):
    """Per-vote weighted mean NLL minimised by BFGS (central-difference gradients)."""
    free_shift = family != "grk"
    with_eta = family in ("rk", "grk")
    scored = (code == 0) if family == "bt" else np.ones(len(code), bool)
    w = weights * scored

    def unpack(x):
        theta = np.concatenate([[0.0], x[: m - 1]]) if free_shift else x[:m]
        return theta, (x[-1] if with_eta else None)

    def objective(x):
        theta, eta = unpack(x)
        return np.sum(w * per_vote_nll(theta, eta, winner, loser, code, family)) / w.sum()

    size = (m - 1 if free_shift else m) + with_eta
    x0 = np.zeros(size)
    if family == "rk":
        x0[-1] = 22.5 + 10 * np.log(np.expm1(0.05))
    res = minimize(objective, x0, method="BFGS", jac="3-point", options={"gtol": 1e-10})
    theta, eta = unpack(res.x)
    if free_shift:
        theta = theta - theta.mean()
    return theta, eta


def simulate_votes(m, n, seed, ties=True):
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 0.8, m)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    a_wins = rng.random(n) < expit(truth[a] - truth[b])
    winner, loser = np.where(a_wins, a, b), np.where(a_wins, b, a)
    code = rng.choice([0, 1, 2], size=n, p=[0.7, 0.2, 0.1]) if ties else np.zeros(n, int)
    winner, loser = np.where(code > 0, a, winner), np.where(code > 0, b, loser)
    return winner, loser, code, truth


# ---------------------------------------------------------------------------------- tests


def test_two_models_closed_form():
    # 30 wins for 0, 10 for 1, 8 ties: bt ignores ties, bt-tie counts each as half a win each
    winner = np.array([0] * 30 + [1] * 10 + [0] * 4 + [1] * 4)
    loser = np.array([1] * 30 + [0] * 10 + [1] * 4 + [0] * 4)
    code = np.array([0] * 40 + [1] * 8)
    bt = fit_marginal(winner, loser, code, 2, family="bt")
    assert bt.theta[0] - bt.theta[1] == pytest.approx(np.log(30 / 10), abs=1e-8)
    assert bt.n_votes == 40
    tie = fit_marginal(winner, loser, code, 2, family="bt-tie")
    assert tie.theta[0] - tie.theta[1] == pytest.approx(np.log(34 / 14), abs=1e-8)
    assert tie.theta.sum() == pytest.approx(0.0, abs=1e-12)
    assert tie.n_votes == 48


@pytest.mark.parametrize("family", ["bt", "bt-tie", "rk", "grk"])
def test_mle_matches_independent_solver(family):
    m = 6
    winner, loser, code, _ = simulate_votes(m, 3000, seed=3)
    weights = np.random.default_rng(4).uniform(0.5, 2.0, len(winner))
    fit = fit_marginal(winner, loser, code, m, family=family, weights=weights)
    theta, eta = scipy_fit(winner, loser, code, m, family, weights)
    np.testing.assert_allclose(fit.theta, theta, atol=2e-6)
    if eta is not None:
        assert fit.eta == pytest.approx(eta, abs=1e-4)
    else:
        assert fit.eta is None
    want_nll = np.average(
        per_vote_nll(theta, eta, winner, loser, code, family),
        weights=weights * ((code == 0) if family == "bt" else 1),
    )
    assert fit.nll == pytest.approx(want_nll, rel=1e-8)
    if family != "grk":
        assert abs(fit.theta.mean()) < 1e-12


def test_reweight_is_inverse_pair_frequency():
    m = 5
    rng = np.random.default_rng(5)
    winner, loser, code, _ = simulate_votes(m, 4000, seed=5)
    # a skewed sampling policy: most votes pit model 0 against model 1
    keep = (np.minimum(winner, loser) == 0) & (np.maximum(winner, loser) == 1) | (
        rng.random(len(winner)) < 0.15
    )
    winner, loser, code = winner[keep], loser[keep], code[keep]
    pairs = Counter(zip(np.minimum(winner, loser), np.maximum(winner, loser)))
    weights = np.array([1 / max(pairs[(min(w, l), max(w, l))], 50) for w, l in zip(winner, loser)])
    fit = fit_marginal(winner, loser, code, m, family="bt-tie", reweight=True)
    theta, _ = scipy_fit(winner, loser, code, m, "bt-tie", weights)
    np.testing.assert_allclose(fit.theta, theta, atol=2e-6)
    plain = fit_marginal(winner, loser, code, m, family="bt-tie")
    assert np.abs(plain.theta - fit.theta).max() > 1e-3


def test_sandwich_matches_hand_written_estimator():
    m = 5
    winner, loser, code, _ = simulate_votes(m, 5000, seed=6)
    weights = np.random.default_rng(7).uniform(0.5, 1.5, len(winner))
    fit = fit_marginal(winner, loser, code, m, family="bt-tie", weights=weights, ci="sandwich")
    theta = fit.theta
    # per-vote score and Hessian of bt-tie in closed form
    p = expit(theta[winner] - theta[loser])
    dscore = np.where(code == 0, 1.0, 0.5) - p
    onehot = np.zeros((len(winner), m))
    np.add.at(onehot, (np.arange(len(winner)), winner), 1.0)
    np.add.at(onehot, (np.arange(len(winner)), loser), -1.0)
    scores = -dscore[:, None] * onehot
    hessian = (onehot * (weights * p * (1 - p))[:, None]).T @ onehot
    meat = (scores * (weights**2)[:, None]).T @ scores
    # LMArena's regularised Hessian, 1e-5 on the diagonal for weighted votes:
    # inv(H + 1e-5 I) B inv(H + 1e-5 I). H and B vanish along the common shift, so it equals
    # the same product taken in an orthonormal basis of the centred subspace, where the
    # rounding along the shift is not amplified by 1/1e-5.
    basis = np.linalg.svd(np.eye(m) - 1.0 / m)[0][:, : m - 1]

    def regularised_sandwich(h, b, ridge):
        inner = np.linalg.inv(basis.T @ h @ basis + ridge * np.eye(m - 1))
        return basis @ inner @ (basis.T @ b @ basis) @ inner @ basis.T

    cov = regularised_sandwich(hessian, meat, 1e-5)
    np.testing.assert_allclose(fit.cov, cov, rtol=1e-6, atol=1e-12)
    se = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(fit.upper - fit.lower, 2 * 1.959963984540054 * se, rtol=1e-6)
    # without the ridge: the pseudo-inverse sandwich of centred ratings
    votes = group_votes(winner, loser, code, m, "bt-tie", weights)
    exact = fit_grouped(votes, "bt-tie", ci="sandwich", sandwich_ridge=0.0)
    h_pinv = np.linalg.pinv(hessian, rcond=1e-10)
    np.testing.assert_allclose(exact.cov, h_pinv @ meat @ h_pinv, rtol=1e-6, atol=1e-12)
    # unweighted votes: 1e-5 per vote
    plain = fit_marginal(winner, loser, code, m, family="bt-tie", ci="sandwich")
    p = expit(plain.theta[winner] - plain.theta[loser])
    scores = -(np.where(code == 0, 1.0, 0.5) - p)[:, None] * onehot
    hessian = (onehot * (p * (1 - p))[:, None]).T @ onehot
    want = regularised_sandwich(hessian, scores.T @ scores, 1e-5 * len(winner))
    np.testing.assert_allclose(plain.cov, want, rtol=1e-6)


@pytest.mark.parametrize("family", ["bt-tie", "rk", "grk"])
def test_sandwich_agrees_with_bootstrap_on_a_large_sample(family):
    m = 8
    winner, loser, code, _ = simulate_votes(m, 100_000, seed=8)
    sandwich = fit_marginal(winner, loser, code, m, family=family, ci="sandwich")
    boot = fit_marginal(winner, loser, code, m, family=family, ci="bootstrap",
                        bootstrap_rounds=300, seed=1)
    se_sandwich = np.sqrt(np.diag(sandwich.cov))
    se_boot = boot.bootstrap_theta.std(axis=0)
    np.testing.assert_allclose(se_boot, se_sandwich, rtol=0.2)
    np.testing.assert_allclose(boot.theta, sandwich.theta)
    width_ratio = (boot.upper - boot.lower) / (sandwich.upper - sandwich.lower)
    assert np.all((width_ratio > 0.75) & (width_ratio < 1.3))


def test_intervals_cover_the_truth_mostly():
    m = 10
    winner, loser, _, truth = simulate_votes(m, 20_000, seed=9, ties=False)
    fit = fit_marginal(winner, loser, np.zeros(len(winner), int), m, family="bt", ci="sandwich")
    centred = truth - truth.mean()
    covered = (fit.lower <= centred) & (centred <= fit.upper)
    assert covered.sum() >= 8


def test_bootstrap_is_seeded():
    winner, loser, code, _ = simulate_votes(4, 500, seed=10)
    one = fit_marginal(winner, loser, code, 4, family="bt-tie", ci="bootstrap",
                       bootstrap_rounds=20, seed=3)
    two = fit_marginal(winner, loser, code, 4, family="bt-tie", ci="bootstrap",
                       bootstrap_rounds=20, seed=3)
    other = fit_marginal(winner, loser, code, 4, family="bt-tie", ci="bootstrap",
                         bootstrap_rounds=20, seed=4)
    np.testing.assert_array_equal(one.bootstrap_theta, two.bootstrap_theta)
    assert not np.allclose(one.bootstrap_theta, other.bootstrap_theta)


def test_undefeated_model_stays_finite_and_on_top():
    winner = np.array([0, 0, 0, 1, 2, 1, 0])
    loser = np.array([1, 2, 1, 2, 1, 2, 2])
    fit = fit_marginal(winner, loser, np.zeros(7, int), 3, family="bt", ci="sandwich")
    assert np.isfinite(fit.theta).all() and np.isfinite(fit.lower).all()
    assert fit.theta.argmax() == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="indices"):
        fit_marginal([0, 3], [1, 0], [0, 0], 3)
    with pytest.raises(ValueError, match="no votes"):
        fit_marginal([0], [1], [1], 2, family="bt")
    with pytest.raises(ValueError, match="tie_code"):
        fit_marginal([0], [1], [5], 2)
    with pytest.raises(ValueError, match="family"):
        fit_marginal([0], [1], [0], 2, family="elo")


def test_arena_scale():
    np.testing.assert_allclose(arena_scale([0.0, np.log(10)]), [1000.0, 1400.0])


def test_agrees_with_lmarena_arena_rank():
    """LMArena's own implementation (arena-rank, a test dependency) on the same votes."""
    pytest.importorskip("arena_rank")
    import pandas as pd
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    m = 6
    winner, loser, code, _ = simulate_votes(m, 4000, seed=11)
    names = [f"m{i}" for i in range(m)]
    outcome = np.where(code > 0, "tie", "model_a")
    df = pd.DataFrame({"model_a": [names[w] for w in winner],
                       "model_b": [names[lo] for lo in loser], "winner": outcome})
    dataset = PairDataset.from_pandas(df)
    theirs = BradleyTerry(n_competitors=len(dataset.competitors)).compute_ratings_and_cis(dataset)
    assert list(theirs["competitors"]) == names
    fit = fit_marginal(winner, loser, code, m, family="bt-tie", ci="sandwich")
    np.testing.assert_allclose(arena_scale(fit.theta), theirs["ratings"], atol=0.01)
    np.testing.assert_allclose(arena_scale(fit.lower), theirs["rating_lower"], atol=0.05)
    np.testing.assert_allclose(arena_scale(fit.upper), theirs["rating_upper"], atol=0.05)
