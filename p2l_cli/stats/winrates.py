"""Expected win rates: the probability of being preferred, a tie counting half, averaged
over opponents. Two quantities with two names, because they differ:

- :func:`win_rates_vs_opponents`: against an opponent drawn from a distribution ``q`` over
  the models, which may draw the model itself (a coin flip). Routing maximises it.
- :func:`win_rates_vs_others`: against each *other* model equally. The ``win_rate`` column
  of every leaderboard.

For ``theta = [1, 0, -1]`` in ``bt`` the top model's rate is 0.806 against the others and
0.704 against a uniformly drawn opponent.
"""

from __future__ import annotations

import numpy as np
import torch

from p2l_cli.stats.families import canonical_family, has_eta, win_probability
from p2l_cli.stats.pairfit import torch_threads

BLOCK_ELEMENTS = 1 << 15  # pairwise probabilities per block: a block's temporaries stay in cache


def win_rates_vs_opponents(
    coefs: np.ndarray, q: np.ndarray, eta: np.ndarray | None = None, family: str = "bt"
) -> np.ndarray:
    """``v[z, i] = sum_a q_a P(i preferred to a | z)`` for every prompt and model ``[N, M]``."""
    family = canonical_family(family)
    coefs = np.atleast_2d(coefs)
    support = np.flatnonzero(q > 0)
    weights = torch.tensor(q[support], dtype=torch.float64)
    out = np.empty(coefs.shape, dtype=np.float64)
    block = max(1, BLOCK_ELEMENTS // (coefs.shape[1] * len(support)))
    with torch_threads():
        for start in range(0, coefs.shape[0], block):
            theta = torch.tensor(coefs[start : start + block], dtype=torch.float64)
            tie = None
            if has_eta(family):
                tie = torch.tensor(eta[start : start + block], dtype=torch.float64)[:, None, None]
            p = win_probability(theta[:, :, None], theta[:, None, support], tie, family)
            out[start : start + block] = (p @ weights).numpy()
    return out


def win_rates_vs_others(theta: np.ndarray, eta: float | None, family: str) -> np.ndarray:
    """``[M]``: each model's mean probability of being preferred to each other model; NaN
    with fewer than two models. A model meets itself with probability 1/M under a uniform
    opponent and is then preferred with probability 1/2 (the families are symmetric), so
    this is ``(M * uniform - 1/2) / (M - 1)``."""
    m = len(theta)
    if m < 2:
        return np.full(m, np.nan)
    tie = None if eta is None else np.array([float(eta)])
    uniform = win_rates_vs_opponents(np.asarray(theta, dtype=np.float64)[None], np.full(m, 1 / m),
                                     tie, family)[0]
    return (m * uniform - 0.5) / (m - 1)
