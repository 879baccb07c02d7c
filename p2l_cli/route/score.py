"""The router's Bradley-Terry coefficient (Algorithm 1, last step): the strength of a single
model that would win as often, against the same opponents, as the router does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from p2l_cli.stats.families import canonical_family, has_eta, win_probability
from p2l_cli.stats.pairfit import shift_invariant, torch_threads
from p2l_cli.stats.winrates import BLOCK_ELEMENTS


def router_thetas(
    coefs: np.ndarray,
    q: np.ndarray,
    win_rates: Sequence[float],
    eta: np.ndarray | None = None,
    family: str = "bt",
    tol: float = 1e-12,
) -> np.ndarray:
    """The Bradley-Terry coefficient of each mean win rate ``R`` (Algorithm 1, last step).

    ``theta`` solves ``mean_z sum_a q_a P(theta vs theta_a(z)) = R`` with the family's win
    probability (``sigmoid`` for bt; ties count half; each prompt's ``eta``), so that a model
    of fixed strength ``theta`` would win as often as the router does. It is anchored to the
    field: for the shift-invariant families (bt, bt-tie, rk) each prompt's coefficients are
    first centred on their ``q``-weighted mean; grk keeps its absolute scale (0 = the
    "both bad" reference) and the mean over prompts of that ``q``-weighted mean is subtracted
    from the root. Either way ``theta = 0`` is the average opponent.

    Rates that no strength reaches map to the end of the searched range (the field's range
    widened by 1): a mixture of the models always lies inside it.
    """
    family = canonical_family(family)
    support = np.flatnonzero(q > 0)
    weights = q[support] / q[support].sum()
    theta = np.asarray(coefs, np.float64)[:, support]
    centre = theta @ weights
    offset = 0.0
    if shift_invariant(family):
        theta = theta - centre[:, None]
    else:
        offset = float(centre.mean())
    pooled = _PooledWinRate(theta, weights, eta if has_eta(family) else None, family)
    targets = np.asarray(win_rates, dtype=np.float64)
    low, high = float(theta.min()) - 1.0, float(theta.max()) + 1.0
    with torch_threads():
        return _invert(pooled, targets, low, high, tol) - offset


class _PooledWinRate:
    """``F(x) = mean_z sum_a q_a P(x vs theta_a(z))`` for many ``x`` at once, increasing in
    ``x``; evaluated in blocks of prompts small enough to stay in cache."""

    def __init__(self, field: np.ndarray, weights: np.ndarray, eta, family: str):
        self.field = torch.tensor(field, dtype=torch.float64)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.tie = None if eta is None else torch.tensor(eta, dtype=torch.float64)[None, :, None]
        self.family = family

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        n, k = self.field.shape
        x = torch.tensor(xs, dtype=torch.float64)[:, None, None]
        rows = max(1, BLOCK_ELEMENTS // max(len(xs) * k, 1))
        total = torch.zeros(len(xs), dtype=torch.float64)
        for start in range(0, n, rows):
            tie = None if self.tie is None else self.tie[:, start : start + rows]
            p = win_probability(x, self.field[None, start : start + rows], tie, self.family)
            total += (p @ self.weights).sum(dim=1)
        return total.numpy() / n


def _invert(fn, targets: np.ndarray, low: float, high: float, tol: float) -> np.ndarray:
    """Solve ``fn(x) = target`` for an increasing ``fn`` and many targets at once: bracket on
    a grid, then the Illinois variant of regula falsi, only on the targets not yet solved."""
    grid = np.linspace(low, high, 33)
    values = np.maximum.accumulate(fn(grid))
    j = np.clip(np.searchsorted(values, targets), 1, len(grid) - 1)
    a, b = grid[j - 1], grid[j]
    fa, fb = values[j - 1] - targets, values[j] - targets
    x = np.where(fa >= 0, a, b)  # targets outside the range stay at its ends
    active = (fa < 0) & (fb > 0)
    side = np.zeros(len(targets))
    for _ in range(100):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        guess = (a[idx] * fb[idx] - b[idx] * fa[idx]) / (fb[idx] - fa[idx])
        value = fn(guess) - targets[idx]
        x[idx] = guess
        low_side = value < 0
        # Illinois: halve the kept end's value when the same end is kept twice running
        fb[idx] = np.where(low_side & (side[idx] < 0), fb[idx] / 2, fb[idx])
        fa[idx] = np.where(~low_side & (side[idx] > 0), fa[idx] / 2, fa[idx])
        a[idx] = np.where(low_side, guess, a[idx])
        fa[idx] = np.where(low_side, value, fa[idx])
        b[idx] = np.where(low_side, b[idx], guess)
        fb[idx] = np.where(low_side, fb[idx], value)
        side[idx] = np.where(low_side, -1.0, 1.0)
        active[idx] = (np.abs(value) > tol) & (b[idx] - a[idx] > 1e-13 * (1 + np.abs(guess)))
    return x
