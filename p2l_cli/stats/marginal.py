"""The marginal leaderboard: one maximum-likelihood theta per model from pairwise votes.

Votes are first grouped by (winner, loser, tie code): identical rows become one row carrying
a count, the sum of their weights and the sum of squared weights, so a fit over 1.5 million
votes among ~100 models touches only a few tens of thousands of rows. Ties are stored in
canonical order (lower index first) since every family treats a tie symmetrically; ``bt``
drops them, ``rk`` does not tell the two kinds of tie apart.

Ratings are centred (mean 0) for the shift-invariant families ``bt``, ``bt-tie`` and ``rk``;
``grk`` measures theta against its fixed "both bad" reference of 0 and is not centred.
Confidence intervals: the sandwich (robust) covariance of the M-estimator, or a bootstrap
that resamples votes (multinomial counts over the grouped rows) and refits all replicates at
once with batched Newton steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from p2l_cli.stats import families
from p2l_cli.stats.pairfit import (
    DEFAULT_RIDGE,
    SANDWICH_RIDGE,
    PairRows,
    lmarena_hessian_ridge,
    sandwich,
    solve,
)

ARENA_BASE = 1000.0
ARENA_SCALE = 400.0 / math.log(10.0)
MIN_PAIR_COUNT = 50
CI_METHODS = ("sandwich", "bootstrap", "none")


def arena_scale(theta):
    """Bradley-Terry coefficients on the Arena (Elo-like) scale: 1000 + 400/ln(10) * theta."""
    return ARENA_BASE + ARENA_SCALE * np.asarray(theta, dtype=np.float64)


@dataclass
class GroupedVotes:
    """Votes grouped into distinct (winner, loser, tie code) rows."""

    rows: PairRows
    count: np.ndarray  # votes per row
    weight: np.ndarray  # summed vote weight per row
    weight_sq: np.ndarray  # summed squared vote weight per row
    model_votes: np.ndarray  # [M] votes (kept by the family) in which each model took part


@dataclass
class MarginalFit:
    theta: np.ndarray
    eta: float | None
    family: str
    nll: float
    n_votes: int
    cov: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    ci: str = "none"
    model_votes: np.ndarray | None = field(default=None, repr=False)
    bootstrap_theta: np.ndarray | None = field(default=None, repr=False)

    @property
    def scores(self) -> np.ndarray:
        return arena_scale(self.theta)


# --------------------------------------------------------------------------------- grouping


def pair_weights(
    winner: np.ndarray, loser: np.ndarray, num_models: int, min_pair_count: int = MIN_PAIR_COUNT
) -> np.ndarray:
    """Inverse pair frequency: 1 / max(votes between the two models, ``min_pair_count``).

    LMArena's reweighting: each pair of models then counts about equally, whatever the
    sampling policy; the floor keeps rare pairs from dominating.
    """
    low, high = np.minimum(winner, loser), np.maximum(winner, loser)
    pair = low * num_models + high
    counts = np.bincount(pair, minlength=num_models * num_models)
    return 1.0 / np.maximum(counts[pair], min_pair_count)


def group_votes(
    winner_idx,
    loser_idx,
    tie_code,
    num_models: int,
    family: str = "bt",
    weights=None,
    reweight: bool = False,
    min_pair_count: int = MIN_PAIR_COUNT,
) -> GroupedVotes:
    family = families.canonical_family(family)
    winner = np.asarray(winner_idx, dtype=np.int64).ravel()
    loser = np.asarray(loser_idx, dtype=np.int64).ravel()
    code = np.asarray(tie_code, dtype=np.int64).ravel()
    if not (len(winner) == len(loser) == len(code)):
        raise ValueError("winner_idx, loser_idx and tie_code must have the same length")
    if len(winner) and (min(winner.min(), loser.min()) < 0 or
                        max(winner.max(), loser.max()) >= num_models):
        raise ValueError(f"model indices must lie in [0, {num_models})")
    if len(code) and not (code.min() >= 0 and code.max() <= 2):
        raise ValueError("tie_code must be 0 (decisive), 1 (tie) or 2 (tie, both bad)")
    unit = weights is None and not reweight  # every vote weighs 1: weights are the counts
    w = np.ones(len(winner)) if weights is None else np.asarray(weights, np.float64).ravel()
    if len(w) != len(winner):
        raise ValueError("weights must have one value per vote")
    if reweight and len(winner):
        w = w * pair_weights(winner, loser, num_models, min_pair_count)

    if unit:
        keep = (code == families.DECISIVE) if family == "bt" else slice(None)
    else:
        keep = (w > 0) & ((code == families.DECISIVE) if family == "bt" else True)
    winner, loser, code, w = winner[keep], loser[keep], code[keep], w[keep]
    tie = code != families.DECISIVE
    if family in ("rk", "rk-reparam"):  # one kind of tie
        code = np.where(tie, families.TIE_CODE, code)
    first = np.where(tie, np.minimum(winner, loser), winner)
    second = np.where(tie, np.maximum(winner, loser), loser)

    key = (first * num_models + second) * 3 + code
    bins = num_models * num_models * 3
    if bins <= max(4 * len(key), 1 << 20):
        count = np.bincount(key, minlength=bins)
        present = np.flatnonzero(count)
        inverse = None
    else:
        present, inverse = np.unique(key, return_inverse=True)
    if inverse is None:
        count = count[present]
        if not unit:
            weight = np.bincount(key, weights=w, minlength=bins)[present]
            weight_sq = np.bincount(key, weights=w * w, minlength=bins)[present]
    else:
        count = np.bincount(inverse, minlength=len(present))
        if not unit:
            weight = np.bincount(inverse, weights=w, minlength=len(present))
            weight_sq = np.bincount(inverse, weights=w * w, minlength=len(present))
    if unit:
        weight = weight_sq = count.astype(np.float64)
    rows = PairRows(
        winner=present // 3 // num_models,
        loser=present // 3 % num_models,
        tie_code=present % 3,
        num_models=num_models,
    )
    model_votes = np.bincount(winner, minlength=num_models) + np.bincount(
        loser, minlength=num_models
    )
    return GroupedVotes(rows, count, weight, weight_sq, model_votes)


# ---------------------------------------------------------------------------------- fitting


def fit_grouped(
    votes: GroupedVotes,
    family: str = "bt",
    ci: str = "none",
    bootstrap_rounds: int = 100,
    seed: int = 0,
    level: float = 0.95,
    ridge: float = DEFAULT_RIDGE,
    sandwich_ridge: float = SANDWICH_RIDGE,
) -> MarginalFit:
    """Fit a family to grouped votes; ``ci`` is ``sandwich``, ``bootstrap`` or ``none``.

    ``ridge`` is added (times 1/2 |theta|^2) to the mean NLL. The sandwich regularises the
    Hessian's diagonal as LMArena does: ``sandwich_ridge`` times the number of votes when
    they are unweighted, ``sandwich_ridge`` alone when weighted (0 gives the exact sandwich).
    """
    family = families.canonical_family(family)
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {CI_METHODS}, not {ci!r}")
    n_votes = int(votes.count.sum())
    if n_votes == 0:
        raise ValueError("no votes to fit" + (" (bt drops ties)" if family == "bt" else ""))
    sol = solve(votes.rows, votes.weight, family, ridge=ridge)
    theta = sol.theta[0]
    eta = None if sol.eta is None else float(sol.eta[0])
    fit = MarginalFit(
        theta=theta, eta=eta, family=family, nll=float(sol.nll[0]), n_votes=n_votes, ci=ci,
        model_votes=votes.model_votes,
    )
    z = NormalDist().inv_cdf(0.5 + level / 2)
    if ci == "sandwich":
        cov = sandwich(votes.rows, votes.weight, votes.weight_sq, family, theta, eta,
                       lmarena_hessian_ridge(votes.weight, votes.count, sandwich_ridge))
        m = votes.rows.num_models
        fit.cov = cov[:m, :m]
        se = np.sqrt(np.clip(np.diag(fit.cov), 0.0, None))
        fit.lower, fit.upper = theta - z * se, theta + z * se
    elif ci == "bootstrap":
        boot = bootstrap_thetas(votes, family, bootstrap_rounds, seed, theta, eta, ridge)
        fit.bootstrap_theta = boot
        fit.lower, fit.upper = percentile_interval(boot, level)
    return fit


def fit_marginal(
    winner_idx,
    loser_idx,
    tie_code,
    num_models: int,
    family: str = "bt",
    weights=None,
    reweight: bool = False,
    ci: str = "none",
    bootstrap_rounds: int = 100,
    seed: int = 0,
    level: float = 0.95,
    min_pair_count: int = MIN_PAIR_COUNT,
) -> MarginalFit:
    """Maximum-likelihood theta (and eta for ``rk``/``grk``) from votes given as indices.

    ``tie_code``: 0 decisive (winner beat loser), 1 tie, 2 tie both bad. ``weights`` are
    per-vote; ``reweight`` multiplies them by the inverse frequency of each model pair.
    ``ci="sandwich"`` fills ``cov``, ``lower`` and ``upper``; ``ci="bootstrap"`` resamples
    votes ``bootstrap_rounds`` times (seeded) for percentile intervals.
    """
    votes = group_votes(
        winner_idx, loser_idx, tie_code, num_models, family, weights, reweight, min_pair_count
    )
    return fit_grouped(votes, family, ci, bootstrap_rounds, seed, level)


# ---------------------------------------------------------------------------- bootstrap


def bootstrap_thetas(
    votes: GroupedVotes,
    family: str,
    rounds: int,
    seed: int,
    theta: np.ndarray | None = None,
    eta: float | None = None,
    ridge: float = DEFAULT_RIDGE,
    chunk: int = 64,
) -> np.ndarray:
    """Refit on ``rounds`` resamples of the votes; returns theta ``[rounds, M]``.

    Each resample draws as many votes as there are, with replacement: multinomial counts
    over the grouped rows. A row's weight scales with its resampled count (its mean vote
    weight times the count). Replicates are solved ``chunk`` at a time, warm-started at the
    full-data solution.
    """
    rng = np.random.default_rng(seed)
    n = int(votes.count.sum())
    mean_weight = votes.weight / votes.count
    probs = votes.count / n
    out = []
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        counts = rng.multinomial(n, probs, size=size)
        sol = solve(votes.rows, counts * mean_weight, family, theta0=theta, eta0=eta, ridge=ridge)
        out.append(sol.theta)
    return np.concatenate(out) if out else np.empty((0, votes.rows.num_models))


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2
    return np.quantile(samples, tail, axis=0), np.quantile(samples, 1.0 - tail, axis=0)
