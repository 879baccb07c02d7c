"""How well coefficients predict held-out votes: NLL, accuracy, Brier score, calibration.

Conventions (one vote = labels ``[winner_idx, loser_idx, tie_code]``):

- ``nll``: the family's mean negative log-likelihood (:func:`families.vote_nll`) over the
  votes the family scores (``bt`` drops ties).
- ``accuracy``: over decisive votes only, the share whose winner has the larger coefficient
  (an exact tie in coefficients counts half). Ties have no predicted winner, so, as in the
  P2L paper, they are left out of accuracy for every family.
- ``brier``: squared error of the predicted preference P(winner preferred to loser), a tie
  counting half (:func:`families.win_probability`), against the observed preference: 1 for a
  decisive vote, 1/2 for a tie; over the votes the family scores.
- ``n``: the number of votes the family scores.
- ``nll_half``: the mean cross-entropy of every vote under the Arena's convention, a tie
  counting half (:func:`families.half_tie_nll`): one footing for all families.

All are weighted means when ``weights`` are given.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from p2l_cli.stats import families


def _tensor(values, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(values).to(dtype)


def _vote_pairs(coefs, labels, eta):
    coefs = _tensor(coefs.detach() if isinstance(coefs, torch.Tensor) else coefs)
    labels = torch.as_tensor(
        labels.detach() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    ).long()
    if labels.dim() != 2 or labels.shape[1] != 3:
        raise ValueError(f"labels must be [N, 3], got shape {tuple(labels.shape)}")
    if coefs.dim() == 1:
        theta_w, theta_l = coefs[labels[:, 0]], coefs[labels[:, 1]]
    else:
        if coefs.shape[0] != labels.shape[0]:
            raise ValueError("coefs [N, M] and labels [N, 3] must have the same N")
        pair = coefs.gather(1, labels[:, :2])
        theta_w, theta_l = pair[:, 0], pair[:, 1]
    if eta is not None:
        eta = _tensor(eta.detach() if isinstance(eta, torch.Tensor) else eta).reshape(-1)
        if eta.numel() not in (1, labels.shape[0]):
            raise ValueError("eta must be a scalar or have one value per vote")
    return theta_w, theta_l, labels[:, 2], eta


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    total = weights.sum()
    return float((values * weights).sum() / total) if total > 0 else float("nan")


def vote_metrics(coefs, labels, eta=None, family: str = "bt", weights=None) -> dict:
    """``{"nll", "accuracy", "brier", "n"}`` for coefficients ``[N, M]`` (or ``[M]`` shared
    by every vote), labels ``[N, 3]`` and, for rk/grk, raw ``eta`` (scalar or ``[N]``).

    ``family`` may be a tie-only likelihood (``tie-rk``, ``tie-grk``, ``tie-bb-grk``): then
    ``nll`` scores the tie event only, the rest is that of the family it reads. Families
    with ties add ``tie_nll`` (tie or not: ``tie-rk`` / ``tie-grk``) and, with "both bad"
    votes, ``tie_bb_nll`` (``tie-bb-grk``)."""
    family = families.canonical_family(family, tie_only=True)
    theta_w, theta_l, code, eta = _vote_pairs(coefs, labels, eta)
    w = torch.ones_like(theta_w) if weights is None else _tensor(weights).reshape(-1)
    scored = families.vote_mask(code, family).to(torch.float64)
    nll = families.vote_nll(theta_w, theta_l, code, eta, family)
    decisive = (code == families.DECISIVE).to(torch.float64)
    correct = (theta_w > theta_l).to(torch.float64) + 0.5 * (theta_w == theta_l).to(torch.float64)
    preferred = families.win_probability(theta_w, theta_l, eta, family)
    observed = torch.where(code == families.DECISIVE, 1.0, 0.5).to(torch.float64)
    out = {
        "nll": _weighted_mean(nll, scored * w),
        "accuracy": _weighted_mean(correct, decisive * w),
        "brier": _weighted_mean((preferred - observed) ** 2, scored * w),
        "n": int(scored.sum()),
        "nll_half": _weighted_mean(families.half_tie_nll(theta_w, theta_l, code, eta, family), w),
    }
    base = families.base_family(family)
    if families.has_eta(base) and eta is not None:
        tie = families.tie_event_nll(theta_w, theta_l, code, eta, base)
        out["tie_nll"] = _weighted_mean(tie, w)
        if families.has_both_bad(base):
            bb = families.tie_event_nll(theta_w, theta_l, code, eta, base, both_bad=True)
            out["tie_bb_nll"] = _weighted_mean(bb, w)
    return out


def calibration_table(
    coefs, labels, eta=None, family: str = "bt", bins: int = 10, weights=None
) -> pl.DataFrame:
    """Reliability table: votes binned by predicted preference, against observed frequency.

    Each vote is oriented from its lower-indexed model i to the other model j; the
    prediction is P(i preferred to j) (ties counting half), the observation 1 if i won,
    0 if j won, 1/2 for a tie. Columns: ``bin``, ``lower``, ``upper``, ``votes``,
    ``weight``, ``predicted`` (mean prediction), ``observed`` (mean observation).
    """
    family = families.canonical_family(family)
    theta_w, theta_l, code, eta = _vote_pairs(coefs, labels, eta)
    labels_t = torch.as_tensor(np.asarray(labels)).long()
    winner_first = labels_t[:, 0] <= labels_t[:, 1]
    theta_i = torch.where(winner_first, theta_w, theta_l)
    theta_j = torch.where(winner_first, theta_l, theta_w)
    predicted = families.win_probability(theta_i, theta_j, eta, family).numpy()
    decisive = (code == families.DECISIVE).numpy()
    observed = np.where(decisive, winner_first.numpy().astype(np.float64), 0.5)
    w = np.ones(len(predicted)) if weights is None else np.asarray(weights, np.float64).ravel()
    keep = families.vote_mask(code, family).numpy() > 0
    predicted, observed, w = predicted[keep], observed[keep], w[keep]
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, bins - 1)
    votes = np.bincount(index, minlength=bins)
    weight = np.bincount(index, weights=w, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(index, weights=w * predicted, minlength=bins) / weight
        mean_obs = np.bincount(index, weights=w * observed, minlength=bins) / weight
    return pl.DataFrame({
        "bin": np.arange(bins),
        "lower": edges[:-1],
        "upper": edges[1:],
        "votes": votes,
        "weight": weight,
        "predicted": mean_pred,
        "observed": mean_obs,
    }).filter(pl.col("votes") > 0)


def expected_calibration_error(table: pl.DataFrame) -> float:
    """Weighted mean |predicted - observed| over the bins of :func:`calibration_table`."""
    weight = table["weight"].to_numpy()
    gap = np.abs(table["predicted"].to_numpy() - table["observed"].to_numpy())
    return float((weight * gap).sum() / weight.sum()) if weight.sum() > 0 else float("nan")
