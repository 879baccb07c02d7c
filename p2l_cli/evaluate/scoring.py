"""Scoring predictions on votes: per-vote losses, metrics, calibration, the paired bootstrap
of the gain; the baseline leaderboard fit; how well leaderboards recover the true ones."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from p2l_cli.evaluate.inputs import Votes

DEFAULT_BOOTSTRAP = 1000
DEFAULT_BINS = 10
DEFAULT_LEVEL = 0.95
from p2l_cli.stats.families import (
    half_tie_nll,
    has_eta,
    vote_mask,
    vote_nll,
    win_matrix,
)
from p2l_cli.stats.metrics import calibration_table, expected_calibration_error, vote_metrics


def _tensor(values: Any) -> torch.Tensor | None:
    return None if values is None else torch.tensor(np.asarray(values, dtype=np.float64))


def _pair_coefs(coefs: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    coefs = np.broadcast_to(coefs, (labels.shape[0], coefs.shape[-1]))
    rows = np.arange(labels.shape[0])
    return _tensor(coefs[rows, labels[:, 0]]), _tensor(coefs[rows, labels[:, 1]])


def vote_losses(
    coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-vote NLL and the family's mask (0 for votes it drops, ties in ``bt``)."""
    theta_w, theta_l = _pair_coefs(coefs, labels)
    nll = vote_nll(theta_w, theta_l, torch.as_tensor(labels[:, 2]), _tensor(eta), family)
    mask = vote_mask(torch.as_tensor(labels[:, 2]), family)
    return nll.numpy(), mask.double().numpy()


def half_tie_losses(coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str) -> np.ndarray:
    """Per-vote NLL with ties as half (:func:`families.half_tie_nll`), every vote counted."""
    theta_w, theta_l = _pair_coefs(coefs, labels)
    eta_ = _tensor(eta) if _uses_eta(family, eta) else None
    return half_tie_nll(theta_w, theta_l, torch.as_tensor(labels[:, 2]), eta_, family).numpy()


def score(
    coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str, weights: np.ndarray
) -> dict:
    """NLL, accuracy, Brier score and ``n`` (:func:`stats.metrics.vote_metrics`), for
    families with ties the tie-only NLLs (``tie_nll``, and ``tie_bb_nll`` for grk), and the
    expected calibration error."""
    metrics = vote_metrics(coefs, labels, eta=eta, family=family, weights=weights)
    out = {key: _number(metrics[key]) for key in ("nll", "nll_half", "accuracy", "brier", "n")}
    out.update({key: _number(metrics[key]) for key in ("tie_nll", "tie_bb_nll") if key in metrics})
    table = calibration_table(coefs, labels, eta, family, DEFAULT_BINS, weights)
    out["ece"] = expected_calibration_error(table) if table.height else None
    return out


def calibration(
    coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str, weights: np.ndarray, bins: int
) -> list[dict]:
    """The reliability table of :func:`stats.metrics.calibration_table` as records (votes
    oriented from the lower-indexed model; empty bins left out)."""
    return calibration_table(coefs, labels, eta, family, bins, weights).to_dicts()


def _number(value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, (np.integer, int)):
        return int(value)
    return float(value)


def bootstrap_gain(
    loss_base: np.ndarray,
    loss_new: np.ndarray,
    weights: np.ndarray,
    clusters: np.ndarray,
    reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float, float]:
    """Weighted mean of ``loss_base - loss_new`` and its percentile interval from a paired
    bootstrap that resamples clusters (prompts) with replacement."""
    diff_sums = np.bincount(clusters, weights=weights * (loss_base - loss_new))
    weight_sums = np.bincount(clusters, weights=weights)
    total = weight_sums.sum()
    if total <= 0:
        return math.nan, math.nan, math.nan
    gain = float(diff_sums.sum() / total)
    if reps <= 0 or len(diff_sums) < 2:
        return gain, math.nan, math.nan
    rng = np.random.default_rng(seed)
    count = len(diff_sums)
    stats = []
    for start in range(0, reps, 200):
        draws = rng.multinomial(count, np.full(count, 1.0 / count), size=min(200, reps - start))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append((draws @ diff_sums) / (draws @ weight_sums))
    values = np.concatenate(stats)
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return gain, float(low), float(high)


# -------------------------------------------------------------------------- baselines


def fit_leaderboard(votes: Votes, num_models: int, family: str) -> tuple[np.ndarray, Any]:
    """The marginal leaderboard (MLE of the family) of a set of votes."""
    from p2l_cli.stats.marginal import fit_marginal

    fit = fit_marginal(
        votes.labels[:, 0],
        votes.labels[:, 1],
        votes.labels[:, 2],
        num_models,
        family=family,
        weights=votes.weights,
    )
    return np.asarray(fit.theta, dtype=np.float64), fit.eta


def pairwise_gap(
    theta: np.ndarray, eta: Any, theta_true: np.ndarray, eta_true: Any, family: str
) -> float:
    """Mean absolute difference of the pairwise win probabilities (over ordered pairs i != j)."""
    est = win_matrix(_tensor(theta), _tensor(eta) if _uses_eta(family, eta) else None, family)
    true = win_matrix(
        _tensor(theta_true), _tensor(eta_true) if _uses_eta(family, eta_true) else None, family
    )
    off = ~np.eye(len(theta), dtype=bool)
    return float(np.abs(est.numpy() - true.numpy())[off].mean())


def _uses_eta(family: str, eta: Any) -> bool:
    return has_eta(family) and eta is not None


def rank_agreement(theta: np.ndarray, theta_true: np.ndarray) -> float:
    tau = kendalltau(theta, theta_true).statistic
    return float(tau) if tau is not None else math.nan


def recovery(
    theta: np.ndarray, eta: Any, theta_true: np.ndarray, eta_true: Any, family: str
) -> dict:
    return {
        "kendall_tau": rank_agreement(theta, theta_true),
        "win_prob_gap": pairwise_gap(theta, eta, theta_true, eta_true, family),
    }


def first_per_cluster(clusters: np.ndarray) -> np.ndarray:
    """Indices of the first vote of each prompt, so a prompt counts once in an aggregate."""
    return np.unique(clusters, return_index=True)[1]


def aggregate_rows(coefs: np.ndarray, eta: np.ndarray | None, family: str) -> tuple:
    from p2l_cli.stats.aggregate import aggregate

    etas = None if eta is None or not has_eta(family) else eta
    return aggregate(coefs, etas, family=family)
