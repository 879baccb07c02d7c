"""Comparing two leaderboards, and the spread of one: small pure functions, numpy in, float out.

A leaderboard here is a vector of coefficients ``[M]`` (higher is better), one per model in a
shared model list. ``reference`` is the leaderboard taken as right, ``other`` the one judged.
Models are ranked by descending coefficient; equal coefficients keep model-list order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

from p2l_cli.stats.families import LOSS, TIE, TIE_BOTH_BAD, WIN, canonical_family, outcome_probs


def _vector(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _pair(reference, other) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(reference), _vector(other)
    if a.shape != b.shape:
        raise ValueError(f"leaderboards of different sizes: {a.size} and {b.size}")
    return a, b


def ranking(coefs) -> np.ndarray:
    """Model indices from best to worst (ties broken by model-list order)."""
    return np.argsort(-_vector(coefs), kind="stable")


def positions(coefs) -> np.ndarray:
    """Each model's 0-based place on the leaderboard (0 = best)."""
    order = ranking(coefs)
    place = np.empty(order.size, dtype=np.int64)
    place[order] = np.arange(order.size)
    return place


def spearman(reference, other) -> float:
    """Spearman's rank correlation: the Pearson correlation of the two rank vectors (tied
    coefficients share their average rank); NaN when either leaderboard is constant."""
    a, b = _pair(reference, other)
    ra, rb = rankdata(a) - (a.size + 1) / 2, rankdata(b) - (b.size + 1) / 2
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else math.nan


def _check_k(k: int, size: int) -> None:
    if not 1 <= k <= size:
        raise ValueError(f"k = {k} outside 1..{size} (the number of models)")


def top_k_fraction(reference, other, k: int) -> float:
    """Share of the reference's top ``k`` models that are also in the other's top ``k``."""
    a, b = _pair(reference, other)
    _check_k(k, a.size)
    return len(set(ranking(a)[:k].tolist()) & set(ranking(b)[:k].tolist())) / k


def top_k_displacement(reference, other, k: int) -> float:
    """Mean over the reference's top ``k`` models of |place in the other - place in the
    reference| (places 0-based; 0 when the top ``k`` keep their places)."""
    a, b = _pair(reference, other)
    _check_k(k, a.size)
    top = ranking(a)[:k]
    return float(np.abs(positions(b)[top] - np.arange(k)).mean())


def _outcome_matrix(coefs: np.ndarray, eta, family: str) -> np.ndarray:
    theta = torch.tensor(coefs, dtype=torch.float64)
    eta_ = None if eta is None else torch.tensor(float(np.asarray(eta).reshape(-1)[0]),
                                                 dtype=torch.float64)
    return outcome_probs(theta[:, None], theta[None, :], eta_, family).numpy()


def family_outcomes(family: str) -> tuple[int, ...]:
    """The outcomes a family puts mass on: win and loss; rk adds the tie, grk both ties."""
    family = canonical_family(family)
    if family == "rk":
        return (WIN, LOSS, TIE)
    if family == "grk":
        return (WIN, LOSS, TIE, TIE_BOTH_BAD)
    return (WIN, LOSS)


def win_prob_l1(reference, other, family: str = "bt", eta_reference=None, eta_other=None) -> float:
    """Mean absolute difference of the pairwise outcome probabilities: over the unordered
    pairs i < j and the family's outcomes (:func:`family_outcomes`), |P(outcome) - P'(outcome)|
    averaged. For ``bt`` it is the mean |P(i beats j) - P'(i beats j)|. Families with a tie
    parameter fall back to the bt formula when either eta is missing."""
    a, b = _pair(reference, other)
    if a.size < 2:
        raise ValueError("win_prob_l1 needs at least two models")
    family = canonical_family(family)
    if family in ("rk", "grk") and (eta_reference is None or eta_other is None):
        family, eta_reference, eta_other = "bt", None, None
    pa = _outcome_matrix(a, eta_reference, family)
    pb = _outcome_matrix(b, eta_other, family)
    upper = np.triu_indices(a.size, k=1)
    outcomes = list(family_outcomes(family))
    return float(np.abs(pa[upper][:, outcomes] - pb[upper][:, outcomes]).mean())


def coef_iqr(coefs) -> float:
    """Interquartile range of the coefficients (75th minus 25th percentile, linear
    interpolation between order statistics)."""
    q75, q25 = np.percentile(_vector(coefs), [75, 25])
    return float(q75 - q25)


def coef_std(coefs) -> float:
    """Sample standard deviation of the coefficients (divisor M - 1); NaN for one model."""
    values = _vector(coefs)
    return float(values.std(ddof=1)) if values.size > 1 else math.nan


def coef_spread(coefs) -> float:
    """Largest minus smallest coefficient."""
    values = _vector(coefs)
    return float(values.max() - values.min())


def tie_accuracy(
    coefs, labels, eta, family: str, weights=None
) -> float | None:
    """Share of votes whose tie-or-not is predicted right: a tie is predicted when the
    family's probability of a tie (both kinds) exceeds that of a decisive outcome, a vote is
    a tie when its tie code is 1 or 2. ``coefs`` ``[M]`` (one leaderboard) or ``[N, M]`` (per
    vote), ``labels`` ``[N, 3]``; weighted by ``weights`` when given. None for families
    without a tie probability (bt, bt-tie) or without eta."""
    family = canonical_family(family)
    if family not in ("rk", "grk") or eta is None:
        return None
    labels = np.asarray(labels)
    coefs = np.broadcast_to(np.asarray(coefs, dtype=np.float64), (len(labels), np.shape(coefs)[-1]))
    rows = np.arange(len(labels))
    theta_i = torch.tensor(coefs[rows, labels[:, 0]])
    theta_j = torch.tensor(coefs[rows, labels[:, 1]])
    eta_ = torch.as_tensor(np.broadcast_to(np.asarray(eta, dtype=np.float64), (len(labels),)).copy())
    probs = outcome_probs(theta_i, theta_j, eta_, family).numpy()
    predicted_tie = probs[:, TIE] + probs[:, TIE_BOTH_BAD] > probs[:, WIN] + probs[:, LOSS]
    correct = (predicted_tie == (labels[:, 2] > 0)).astype(np.float64)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    return float((w * correct).sum() / w.sum()) if w.sum() > 0 else None


def leaderboard_agreement(
    reference, other, family: str = "bt", eta_reference=None, eta_other=None,
    ks: tuple[int, ...] = (1, 3, 5, 10),
) -> dict:
    """Every comparison of two leaderboards in one dict: ``spearman``, ``kendall_tau``,
    ``top_k_fraction`` and ``top_k_displacement`` (keyed by k, for the ks up to the number
    of models) and ``win_prob_l1``."""
    from scipy.stats import kendalltau

    a, b = _pair(reference, other)
    tau = kendalltau(a, b).statistic
    usable = [k for k in ks if 1 <= k <= a.size]
    return {
        "spearman": spearman(a, b),
        "kendall_tau": float(tau) if tau is not None else math.nan,
        "top_k_fraction": {str(k): top_k_fraction(a, b, k) for k in usable},
        "top_k_displacement": {str(k): top_k_displacement(a, b, k) for k in usable},
        "win_prob_l1": win_prob_l1(a, b, family, eta_reference, eta_other),
    }


def coef_spread_stats(coefs) -> dict:
    """``iqr``, ``std`` and ``spread`` (max - min) of a leaderboard's coefficients."""
    return {"iqr": coef_iqr(coefs), "std": coef_std(coefs), "spread": coef_spread(coefs)}
