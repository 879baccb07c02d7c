"""One leaderboard for a set of prompts from their per-prompt leaderboards (P2L aggregation).

The aggregate (theta, eta) minimises the mean, over prompts z (optionally weighted) and over
unordered model pairs {i, j}, of the cross-entropy between the pair's outcome distribution
under the prompt's coefficients and under the aggregate:

    L(theta, eta) = mean_z mean_{i<j} sum_o -P_z(o | i, j) log P(o | theta_i, theta_j, eta)

The outcomes o are the family's: (i wins, j wins) for ``bt``; plus a tie for ``rk``; plus
"tie, both bad" for ``grk``, with the scalar eta fitted too. ``bt-tie`` puts no probability
on ties (a tie is only half a win in its training likelihood), so it aggregates as ``bt``.

L is linear in P_z, so it needs only the mean outcome-probability matrices over prompts:
O(M^2) memory whatever the number of prompts. They are summed in blocks of prompts small
enough to stay in cache, each entry from per-model factors (one multiply-add and one
reciprocal, no exponential: :func:`families.outright_win_matrices`), then the problem is a
weighted pairwise fit, solved by Newton's method to a gradient norm far below 1e-8.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from p2l_cli.stats import families
from p2l_cli.stats.pairfit import (
    PairRows,
    _gradient_and_hessian,
    _row_derivatives,
    shift_invariant,
    single_threaded,
    solve,
)

# Prompts are summed in blocks of about this many pair entries per outcome kind (4 MB in
# float32): small enough to stay in cache, large enough that per-block overhead does not
# dominate (2^16 to 2^22 measured at M = 130: 2^19 to 2^20 were fastest for bt and grk).
BLOCK_ELEMENTS = 1 << 20
# A block's probabilities are summed in the input's dtype over at most this many prompts
# at a time, then added into float64: in float32, the rounding of a running sum grows
# with its size, and summing in float64 directly is ten times slower.
SUM_PROMPTS = 16
AGGREGATE_TOL = 1e-12
# The delta method's variance of the mean score is taken over at most about this many
# prompts (every k-th beyond it): its relative error on an interval's width is about
# 1 / sqrt(2 n), under 1%, and the intervals then cost less than the point estimate again.
MEAT_PROMPTS = 10_000
# Replicate-rows solved at once by the bootstrap (its memory is about 1 kB each).
SOLVE_ELEMENTS = 1 << 17
# Keeps the fit finite when a model wins a pair with probability exactly 1 in float32.
AGGREGATE_RIDGE = 1e-12


@dataclass
class AggregateFit:
    theta: np.ndarray
    eta: float | None
    family: str
    n_prompts: int
    total_weight: float
    cross_entropy: float
    grad_norm: float


@dataclass
class OutcomeSums:
    """Weighted sums over prompts of the pairwise outcome probabilities.

    ``win[i, j]`` sums P(i beats j); ``tie`` and ``both_bad`` are symmetric (None when the
    family has no such outcome).
    """

    win: np.ndarray
    tie: np.ndarray | None
    both_bad: np.ndarray | None
    total_weight: float
    n_prompts: int


def _outcome_family(family: str) -> str:
    family = families.canonical_family(family)
    return "bt" if family == "bt-tie" else family


def _as_tensor(values, dtype=None) -> torch.Tensor:
    if isinstance(values, np.ndarray) and not values.flags.writeable:
        values = values.copy()  # e.g. a view of an Arrow buffer
    tensor = torch.as_tensor(values)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    return tensor if dtype is None else tensor.to(dtype)


def block_outcome_probs(
    coefs: torch.Tensor, eta: torch.Tensor | None, family: str
) -> torch.Tensor:
    """Per-prompt pair probabilities ``[K, n, M, M]`` from which the sums are built: K = 1
    (P(i wins outright)) for bt and rk; 2 (wins, both bad) for grk. A tie's probability is
    one minus the rest, so its sum follows from these sums (linearity)."""
    family = _outcome_family(family)
    n, m = coefs.shape
    probs = torch.empty(_kinds(family), n, m, m, dtype=coefs.dtype)
    families.outright_win_matrices(coefs, eta, family, out=probs[0])
    if families.has_both_bad(family):
        families.both_bad_matrices(coefs, out=probs[1])
    return probs


def _kinds(family: str) -> int:
    return 2 if families.has_both_bad(family) else 1


def _outcome_stack(block_sums: np.ndarray, total_weight, family: str) -> np.ndarray:
    """(win, tie, both bad) sums ``[..., K, M, M]`` from the summed block probabilities."""
    family = _outcome_family(family)
    win = block_sums[..., 0, :, :]
    if family == "bt":
        return win[..., None, :, :]
    both_bad = block_sums[..., 1, :, :] if families.has_both_bad(family) else np.zeros_like(win)
    total = np.asarray(total_weight, dtype=np.float64).reshape(
        np.shape(total_weight) + (1, 1))
    tie = np.clip(total - win - np.swapaxes(win, -1, -2) - both_bad, 0.0, None)
    parts = [win, tie] + ([both_bad] if families.has_both_bad(family) else [])
    return np.stack(parts, axis=-3)


def _batches(coefs_batches, eta_batches, weights) -> Iterator[tuple]:
    """Yield aligned (coefs [n, M], eta [n] | None, weight [n] | None) batches."""
    if isinstance(coefs_batches, (np.ndarray, torch.Tensor)):
        coefs_batches = [coefs_batches]
    if isinstance(eta_batches, (np.ndarray, torch.Tensor, float, int)):
        eta_batches = [eta_batches]
    eta_iter = iter(eta_batches) if eta_batches is not None else None
    flat_weights = None
    weight_iter = None
    if weights is not None:
        if isinstance(weights, (np.ndarray, torch.Tensor)):
            flat_weights = np.asarray(weights, dtype=np.float64).ravel()
        else:
            weight_iter = iter(weights)
    offset = 0
    for coefs in coefs_batches:
        coefs = _as_tensor(coefs)
        if coefs.dim() == 1:
            coefs = coefs[None]
        n = coefs.shape[0]
        eta = None
        if eta_iter is not None:
            eta = _as_tensor(next(eta_iter), coefs.dtype).reshape(-1)
            if eta.numel() == 1 and n != 1:
                eta = eta.expand(n)
        weight = None
        if flat_weights is not None:
            weight = flat_weights[offset : offset + n]
            if len(weight) != n:
                raise ValueError("weights must have one value per prompt")
        elif weight_iter is not None:
            weight = np.asarray(next(weight_iter), dtype=np.float64).ravel()
        offset += n
        yield coefs, eta, weight
    if flat_weights is not None and offset != len(flat_weights):
        raise ValueError("weights must have one value per prompt")


def _add_prompt_sum(acc: torch.Tensor, probs: torch.Tensor, weight: torch.Tensor | None):
    """``acc [K, M, M]`` (float64) += the (weighted) sum over prompts of ``probs [K, n, M,
    M]``, SUM_PROMPTS prompts at a time."""
    for start in range(0, probs.shape[1], SUM_PROMPTS):
        part = probs[:, start : start + SUM_PROMPTS]
        if weight is None:
            acc += part.sum(1)
        else:
            flat = part.reshape(part.shape[0], part.shape[1], -1)
            acc += (weight[start : start + SUM_PROMPTS] @ flat).reshape(acc.shape)


@single_threaded
def outcome_sums(
    coefs_batches, eta_batches=None, family: str = "bt", weights=None,
    block_elements: int = BLOCK_ELEMENTS,
) -> OutcomeSums:
    """Stream over prompts and sum their weighted pairwise outcome probabilities."""
    family = _outcome_family(family)
    needs_eta = families.has_eta(family)
    if needs_eta and eta_batches is None:
        raise ValueError(f"family {family!r} needs eta for every prompt")
    acc = None
    total_weight, n_prompts = 0.0, 0
    for coefs, eta, weight in _batches(coefs_batches, eta_batches if needs_eta else None,
                                       weights):
        n, m = coefs.shape
        if acc is None:
            acc = torch.zeros(_kinds(family), m, m, dtype=torch.float64)
        w = None if weight is None else torch.as_tensor(weight, dtype=coefs.dtype)
        block = max(1, block_elements // (m * m))
        for start in range(0, n, block):
            part = slice(start, start + block)
            probs = block_outcome_probs(coefs[part], None if eta is None else eta[part], family)
            _add_prompt_sum(acc, probs, None if w is None else w[part])
        total_weight += float(n if w is None else w.to(torch.float64).sum())
        n_prompts += n
    if acc is None:
        raise ValueError("no prompts to aggregate")
    sums = _outcome_stack(acc.numpy(), total_weight, family)
    return OutcomeSums(
        win=sums[0],
        tie=sums[1] if needs_eta else None,
        both_bad=sums[2] if families.has_both_bad(family) else None,
        total_weight=total_weight,
        n_prompts=n_prompts,
    )


def pair_rows(num_models: int, family: str) -> PairRows:
    """Rows of the aggregation fit: every ordered pair as a win, then the tie outcomes of
    every unordered pair."""
    family = _outcome_family(family)
    i, j = np.nonzero(~np.eye(num_models, dtype=bool))
    lo, hi = np.triu_indices(num_models, k=1)
    winners, losers, codes = [i], [j], [np.zeros(len(i), dtype=np.int64)]
    if families.has_eta(family):
        winners.append(lo), losers.append(hi), codes.append(np.ones(len(lo), dtype=np.int64))
    if families.has_both_bad(family):
        winners.append(lo), losers.append(hi), codes.append(np.full(len(lo), 2, dtype=np.int64))
    return PairRows(np.concatenate(winners), np.concatenate(losers), np.concatenate(codes),
                    num_models)


def row_weights(sums: np.ndarray, family: str, num_models: int) -> np.ndarray:
    """Row weights (the summed outcome probabilities) aligned with :func:`pair_rows`.

    ``sums`` is ``[..., K, M, M]`` as stacked (win, tie, both bad) sums."""
    family = _outcome_family(family)
    i, j = np.nonzero(~np.eye(num_models, dtype=bool))
    lo, hi = np.triu_indices(num_models, k=1)
    parts = [sums[..., 0, i, j]]
    if families.has_eta(family):
        parts.append(sums[..., 1, lo, hi])
    if families.has_both_bad(family):
        parts.append(sums[..., 2, lo, hi])
    return np.concatenate(parts, axis=-1)


def _stack(sums: OutcomeSums) -> np.ndarray:
    return np.stack([s for s in (sums.win, sums.tie, sums.both_bad) if s is not None])


def fit_outcome_sums(sums: OutcomeSums, family: str, tol: float = AGGREGATE_TOL) -> AggregateFit:
    family = families.canonical_family(family)
    m = sums.win.shape[0]
    if m < 2:
        return AggregateFit(np.zeros(m), None, family, sums.n_prompts, sums.total_weight, 0.0, 0.0)
    rows = pair_rows(m, family)
    sol = solve(rows, row_weights(_stack(sums), family, m), _outcome_family(family),
                ridge=AGGREGATE_RIDGE, tol=tol)
    return AggregateFit(
        theta=sol.theta[0],
        eta=None if sol.eta is None else float(sol.eta[0]),
        family=family,
        n_prompts=sums.n_prompts,
        total_weight=sums.total_weight,
        cross_entropy=float(sol.nll[0]),
        grad_norm=float(sol.grad_norm[0]),
    )


def aggregate_fit(
    coefs_batches, eta_batches=None, family: str = "bt", weights=None
) -> AggregateFit:
    """:func:`aggregate` with diagnostics (cross-entropy, gradient norm, prompt count)."""
    sums = outcome_sums(coefs_batches, eta_batches, family, weights)
    return fit_outcome_sums(sums, family)


def aggregate(
    coefs_batches: Iterable | np.ndarray | torch.Tensor,
    eta_batches: Iterable | np.ndarray | torch.Tensor | None = None,
    family: str = "bt",
    weights=None,
) -> tuple[np.ndarray, float | None]:
    """The aggregate leaderboard (theta ``[M]``, eta or None) of many prompts.

    ``coefs_batches``: one ``[N, M]`` array/tensor or an iterable of ``[n_i, M]`` batches;
    ``eta_batches`` likewise (raw head outputs, needed for rk/grk); ``weights``: one value
    per prompt, as a single array or per batch. theta is centred except for ``grk``.
    """
    fit = aggregate_fit(coefs_batches, eta_batches, family, weights)
    return fit.theta, fit.eta


# --------------------------------------------------------- sandwich (delta method) intervals
#
# The aggregate minimises L = sum_z w_z l_z(theta) / W over prompts z. Resampling prompts
# moves it by about -H^-1 (sum_z w_z s_z / W), with s_z = grad l_z at the fit and H the
# Hessian of L, so Cov = H^-1 [sum_z w_z^2 (s_z - s)(s_z - s)^T / W^2] H^-1 (s the weighted
# mean score, 0 at the optimum). l_z is linear in the prompt's outcome probabilities, so s_z
# is those probabilities contracted with the pair rows' NLL derivatives at the fit: one
# more pass over the prompts, O(M^2) memory, no refits.


@dataclass
class _ScoreMaps:
    """Coefficients that turn a prompt's win matrix W and both-bad matrix B into its score:
    s_theta[a] = sum_j W[a,j] X[a,j] + sum_i W[i,a] Y[i,a] + sum_j B[a,j] U[a,j] + c[a] and
    s_eta = <W, E_w> + <B, E_b> + c_eta (the tie matrix 1 - W - W^T - B folded in)."""

    x: torch.Tensor
    y: torch.Tensor
    u: torch.Tensor | None
    c: torch.Tensor
    e_w: torch.Tensor | None
    e_b: torch.Tensor | None
    c_eta: float


def _score_maps(theta: np.ndarray, eta: float | None, family: str, dtype) -> _ScoreMaps:
    family = _outcome_family(family)
    m = len(theta)
    rows = pair_rows(m, family)
    th = torch.as_tensor(np.asarray(theta, dtype=np.float64))[None]
    et = None if eta is None else torch.tensor([float(eta)], dtype=torch.float64)
    _, grads, _ = _row_derivatives(rows, th, et, family, second=False)
    # g[code][part] = dNLL/d(winner theta, loser theta, eta) of row (winner, loser, code)
    g = torch.zeros(3, 3, m, m, dtype=torch.float64)
    winner, loser = torch.as_tensor(rows.winner), torch.as_tensor(rows.loser)
    code = torch.as_tensor(rows.tie_code)
    for part, values in enumerate(grads):
        g[code, part, winner, loser] = values[0]
    (x0, y0, e0), (x1, y1, e1), (x2, y2, e2) = g[0], g[1], g[2]
    x = x0 - x1 - y1.T
    y = y0 - y1 - x1.T
    u = (x2 - x1 + (y2 - y1).T) if family == "grk" else None
    c = x1.sum(1) + y1.sum(0)
    has_eta = families.has_eta(family)
    e_w = (e0 - e1 - e1.T) if has_eta else None
    e_b = (e2 - e1) if family == "grk" else None
    cast = (lambda t: None if t is None else t.to(dtype).contiguous())
    return _ScoreMaps(cast(x), cast(y), cast(u), c, cast(e_w), cast(e_b), float(e1.sum()))


def _block_scores(probs: torch.Tensor, maps: _ScoreMaps) -> torch.Tensor:
    """Per-prompt scores ``[n, M (+1)]`` (float64) from ``probs [K, n, M, M]``."""
    win = probs[0]
    theta = torch.einsum("naj,aj->na", win, maps.x) + (win * maps.y).sum(1)
    if maps.u is not None:
        theta += torch.einsum("naj,aj->na", probs[1], maps.u)
    theta = theta.to(torch.float64) + maps.c
    if maps.e_w is None:
        return theta
    n = win.shape[0]
    eta = win.reshape(n, -1) @ maps.e_w.reshape(-1)
    if maps.e_b is not None:
        eta += probs[1].reshape(n, -1) @ maps.e_b.reshape(-1)
    return torch.cat([theta, eta.to(torch.float64)[:, None] + maps.c_eta], 1)


@single_threaded
def sandwich_aggregate(
    coefs_batches, eta_batches=None, family: str = "bt", weights=None,
    block_elements: int = BLOCK_ELEMENTS, meat_prompts: int = MEAT_PROMPTS,
) -> tuple[AggregateFit, np.ndarray]:
    """The aggregate fit and the delta-method covariance of (theta[, eta]) when prompts are
    resampled, ``[M(+1), M(+1)]``, in O(M^2) memory. A second pass over the prompts
    (``coefs_batches`` must be re-iterable: an array, a tensor or a list of batches) sums
    the scores' outer products, over every prompt up to ``meat_prompts`` and over every k-th
    beyond (a systematic sample of at least ``meat_prompts / 2``)."""
    family_out = _outcome_family(family)
    needs_eta = families.has_eta(family_out)
    sums = outcome_sums(coefs_batches, eta_batches, family, weights, block_elements)
    fit = fit_outcome_sums(sums, family)
    m = len(fit.theta)
    size = m + needs_eta
    meat = torch.zeros(size, size, dtype=torch.float64)
    first = torch.zeros(size, dtype=torch.float64)
    stride = max(1, math.ceil(sums.n_prompts / meat_prompts))
    w2_sample = w2_all = 0.0
    maps = None
    offset = 0
    for coefs, eta, weight in _batches(coefs_batches, eta_batches if needs_eta else None,
                                       weights):
        n = coefs.shape[0]
        w = torch.ones(n, dtype=torch.float64) if weight is None else torch.as_tensor(
            weight, dtype=torch.float64)
        w2_all += float((w**2).sum())
        keep = torch.arange((-offset) % stride, n, stride)
        offset += n
        if len(keep) == 0:
            continue
        if stride > 1:
            coefs, w = coefs[keep], w[keep]
            eta = None if eta is None else eta[keep]
        if maps is None:
            maps = _score_maps(fit.theta, fit.eta, family_out, coefs.dtype)
        block = max(1, block_elements // (m * m))
        for start in range(0, len(coefs), block):
            part = slice(start, start + block)
            probs = block_outcome_probs(coefs[part], None if eta is None else eta[part],
                                        family_out)
            scores = _block_scores(probs, maps)
            w2 = w[part] ** 2
            meat += scores.T @ (scores * w2[:, None])
            first += w2 @ scores
            w2_sample += float(w2.sum())
    mean = first / max(w2_sample, 1e-300)  # the weighted mean score (about 0 at the optimum)
    meat = (meat - torch.outer(mean, first) - torch.outer(first, mean)
            + w2_sample * torch.outer(mean, mean))
    meat *= (w2_all / max(w2_sample, 1e-300)) / sums.total_weight**2
    if m < 2:
        return fit, np.zeros((size, size))
    rows = pair_rows(m, family_out)
    row_w = torch.as_tensor(row_weights(_stack(sums), family_out, m) / sums.total_weight)
    theta = torch.as_tensor(fit.theta, dtype=torch.float64)[None]
    eta_t = None if fit.eta is None else torch.tensor([fit.eta], dtype=torch.float64)
    _, hessian = _gradient_and_hessian(rows, row_w[None], theta, eta_t, family_out,
                                       AGGREGATE_RIDGE)
    system = hessian[0].clone()
    if shift_invariant(family_out):  # theta's free shift: scores are orthogonal to it
        system[:m, :m] += system.diagonal()[:m].mean().clamp_min(1e-12) / m
    inverse = torch.linalg.inv(system)
    cov = inverse @ meat @ inverse.T
    return fit, cov.numpy()


# ---------------------------------------------------------------------------- bootstrap


@single_threaded
def bootstrap_aggregate(
    coefs, eta=None, family: str = "bt", weights=None, rounds: int = 100, seed: int = 0,
    block_prompts: int = 512,
) -> np.ndarray:
    """Aggregate leaderboards of ``rounds`` resamples of the prompts: theta ``[rounds, M]``.

    Each replicate draws N prompts with replacement (multinomial counts, seeded); the
    per-replicate outcome sums are one matrix product per block of prompts.
    """
    family_out = _outcome_family(family)
    coefs = _as_tensor(coefs)
    n, m = coefs.shape
    eta_t = None
    if families.has_eta(family_out):
        if eta is None:
            raise ValueError(f"family {family!r} needs eta for every prompt")
        eta_t = _as_tensor(eta, coefs.dtype).reshape(-1).expand(n)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=rounds).astype(np.float64) * w
    mix = torch.as_tensor(counts, dtype=coefs.dtype)
    kinds = _kinds(family_out)
    acc = torch.zeros(rounds, kinds * m * m, dtype=torch.float64)
    for start in range(0, n, block_prompts):
        part = slice(start, start + block_prompts)
        probs = block_outcome_probs(coefs[part], None if eta_t is None else eta_t[part],
                                    family_out)
        flat = probs.reshape(kinds, probs.shape[1], -1)
        acc += (mix[:, part] @ flat).transpose(0, 1).reshape(rounds, -1).to(torch.float64)
    sums = _outcome_stack(acc.reshape(rounds, kinds, m, m).numpy(), counts.sum(1), family_out)
    rows = pair_rows(m, family_out)
    theta0, eta0 = aggregate(coefs, eta_t, family, w)
    weights_rows = row_weights(sums, family_out, m)
    # Newton's per-row derivatives take about 1 kB per (replicate, row): solve the
    # replicates a few at a time, so memory stays O(M^2) whatever the number of rounds.
    chunk = max(1, SOLVE_ELEMENTS // len(rows))
    return np.concatenate([
        solve(rows, weights_rows[start : start + chunk], family_out, theta0=theta0,
              eta0=eta0, ridge=AGGREGATE_RIDGE, tol=AGGREGATE_TOL).theta
        for start in range(0, rounds, chunk)
    ])
