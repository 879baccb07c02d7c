"""Maximum likelihood over weighted pair-outcome rows, by Newton's method (float64, batched).

Marginal fits (rows = votes grouped by winner, loser and tie code) and aggregation (rows =
model pairs weighted by mean outcome probabilities) both minimise, for each of R weight
vectors at once (R > 1 for bootstrap replicates),

    L_r(theta, eta) = sum_k w_rk nll_k(theta[winner_k], theta[loser_k], eta) / sum_k w_rk
                      + ridge / 2 * |theta|^2

where ``nll_k`` is :func:`p2l_cli.stats.families.vote_nll`. Its first and second derivatives
with respect to the three inputs of each row (winner's theta, loser's theta, eta) come from
torch autograd and are scattered into the gradient and Hessian over (theta, eta). For the
shift-invariant families (all but ``grk``) the step keeps theta centred (mean 0).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
import torch

from p2l_cli.stats import families

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_RIDGE = 1e-9
DEFAULT_TOL = 1e-10
# LMArena's sandwich adds 1e-5 x (number of votes) to the Hessian's diagonal when votes are
# unweighted and 1e-5 when they are weighted (arena-rank's hessian_reg). It keeps intervals
# finite for models with few votes; p2l follows it so that its intervals match LMArena's.
SANDWICH_RIDGE = 1e-5


def lmarena_hessian_ridge(weight: np.ndarray, count: np.ndarray, ridge: float = SANDWICH_RIDGE):
    """The diagonal term LMArena's sandwich adds for grouped rows (see SANDWICH_RIDGE)."""
    unweighted = np.allclose(weight, count)
    return ridge * float(np.sum(count)) if unweighted else ridge


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run torch on ``count`` threads inside the block. The stats loops issue many small
    ops; on a busy 2-core machine, torch's thread pool spinning on them ran 10x slower
    than one thread."""
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


def single_threaded(function: Callable[P, T]) -> Callable[P, T]:
    """Run ``function`` under :func:`torch_threads` (1)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with torch_threads(1):
            return function(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class PairRows:
    """Distinct (winner, loser, tie_code) rows over ``num_models`` models."""

    winner: np.ndarray
    loser: np.ndarray
    tie_code: np.ndarray
    num_models: int

    def __len__(self) -> int:
        return len(self.winner)


@dataclass
class Solution:
    theta: np.ndarray  # [R, M]
    eta: np.ndarray | None  # [R], raw head scale; None for bt and bt-tie
    nll: np.ndarray  # [R] weighted mean NLL, without the ridge
    grad_norm: np.ndarray  # [R] max |gradient| of the objective at the solution
    iterations: int


def shift_invariant(family: str) -> bool:
    """Whether adding a constant to every theta leaves the likelihood unchanged."""
    return not families.is_grounded(family)


def initial_eta(family: str) -> float | None:
    family = families.canonical_family(family)
    if family == "rk":
        return families.rk_raw_eta(0.5)
    if family in families.GROUNDED_FAMILIES:
        return 0.0
    return None


# ------------------------------------------------------------------- per-row derivatives


def _row_inputs(rows: PairRows, theta: torch.Tensor, eta: torch.Tensor | None):
    winner = torch.as_tensor(rows.winner)
    loser = torch.as_tensor(rows.loser)
    x = theta[:, winner]
    y = theta[:, loser]
    e = None if eta is None else eta[:, None].expand_as(x).contiguous()
    return x, y, e


def _row_nll(rows: PairRows, theta, eta, family: str) -> torch.Tensor:
    x, y, e = _row_inputs(rows, theta, eta)
    return families.vote_nll(x, y, torch.as_tensor(rows.tie_code), e, family)


def _row_derivatives(rows: PairRows, theta, eta, family: str, second: bool = True):
    """Per-row NLL, gradient and (optionally) Hessian with respect to (x, y[, e]).

    Returns ``nll [R, K]``, ``grads`` (a list of [R, K]) and ``hess`` (a dict from index
    pairs (a, b), a <= b, to [R, K]), where index 0 is x (winner), 1 is y (loser), 2 is eta.
    """
    x, y, e = _row_inputs(rows, theta, eta)
    inputs = [x.detach().requires_grad_(), y.detach().requires_grad_()]
    if e is not None:
        inputs.append(e.detach().requires_grad_())
    with torch.enable_grad():
        nll = families.vote_nll(
            inputs[0], inputs[1], torch.as_tensor(rows.tie_code),
            inputs[2] if e is not None else None, family,
        )
        grads = torch.autograd.grad(
            nll.sum(), inputs, create_graph=second, materialize_grads=True
        )
        hess: dict[tuple[int, int], torch.Tensor] = {}
        if second:
            for a in range(len(inputs)):
                row = torch.autograd.grad(
                    grads[a].sum(), inputs[a:], retain_graph=True, materialize_grads=True
                )
                for offset, value in enumerate(row):
                    hess[(a, a + offset)] = value.detach()
    return nll.detach(), [g.detach() for g in grads], hess


def _param_index(rows: PairRows) -> list[torch.Tensor]:
    m = rows.num_models
    return [
        torch.as_tensor(rows.winner),
        torch.as_tensor(rows.loser),
        torch.full((len(rows),), m, dtype=torch.long),
    ]


def _assemble_vector(rows: PairRows, parts: list[torch.Tensor], size: int) -> torch.Tensor:
    out = torch.zeros(parts[0].shape[0], size, dtype=torch.float64)
    for index, part in zip(_param_index(rows), parts):
        out.index_add_(1, index, part)
    return out


def _assemble_matrix(
    rows: PairRows, local: dict[tuple[int, int], torch.Tensor], size: int
) -> torch.Tensor:
    """Sum the local symmetric blocks ``local[(a, b)] [R, K]`` into ``[R, size, size]``."""
    index = _param_index(rows)
    batch = next(iter(local.values())).shape[0]
    out = torch.zeros(batch, size * size, dtype=torch.float64)
    for (a, b), value in local.items():
        out.index_add_(1, index[a] * size + index[b], value)
        if a != b:
            out.index_add_(1, index[b] * size + index[a], value)
    return out.view(batch, size, size)


# -------------------------------------------------------------------------------- solving


def _objective(rows, weights, theta, eta, family, ridge) -> tuple[torch.Tensor, torch.Tensor]:
    nll = (_row_nll(rows, theta, eta, family) * weights).sum(1)
    return nll + 0.5 * ridge * (theta**2).sum(1), nll


def _gradient_and_hessian(rows, weights, theta, eta, family, ridge):
    m = rows.num_models
    size = m + (eta is not None)
    _, grads, hess = _row_derivatives(rows, theta, eta, family)
    grad = _assemble_vector(rows, [g * weights for g in grads], size)
    hessian = _assemble_matrix(rows, {k: v * weights for k, v in hess.items()}, size)
    grad[:, :m] += ridge * theta
    hessian[:, range(m), range(m)] += ridge
    return grad, hessian


def _newton_direction(hessian: torch.Tensor, grad: torch.Tensor, m: int, centre: bool):
    """Solve (H + c 11^T/M [+ damping]) d = -g; the 11^T term fixes the free shift of theta
    without changing the step inside the centred subspace."""
    system = hessian.clone()
    if centre:
        scale = hessian[:, range(m), range(m)].mean(1).clamp_min(1e-12)
        system[:, :m, :m] += scale[:, None, None] / m
    eye = torch.eye(system.shape[-1], dtype=system.dtype)
    diag_scale = system.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-12)
    damping = torch.zeros(system.shape[0], dtype=system.dtype)
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(system + damping[:, None, None] * eye)
        bad = info != 0
        if not bool(bad.any()):
            break
        damping = torch.where(bad, torch.where(damping == 0, 1e-8 * diag_scale, damping * 10),
                              damping)
    return -torch.cholesky_solve(grad.unsqueeze(-1), factor).squeeze(-1)


@single_threaded
def solve(
    rows: PairRows,
    weights: np.ndarray,
    family: str,
    theta0: np.ndarray | None = None,
    eta0: np.ndarray | float | None = None,
    ridge: float = DEFAULT_RIDGE,
    tol: float = DEFAULT_TOL,
    max_iter: int = 200,
) -> Solution:
    """Minimise the weighted mean NLL for each row of ``weights [R, K]`` (or ``[K]``)."""
    family = families.canonical_family(family)
    m = rows.num_models
    w = torch.as_tensor(np.atleast_2d(np.asarray(weights, dtype=np.float64)))
    w = w / w.sum(1, keepdim=True).clamp_min(1e-300)
    batch = w.shape[0]
    theta = torch.zeros(batch, m, dtype=torch.float64)
    if theta0 is not None:
        theta += torch.as_tensor(np.asarray(theta0, dtype=np.float64))
    eta = None
    if families.has_eta(family):
        start = initial_eta(family) if eta0 is None else eta0
        eta = torch.zeros(batch, dtype=torch.float64) + torch.as_tensor(
            np.asarray(start, dtype=np.float64)
        )
    centre = shift_invariant(family)
    if centre:
        theta -= theta.mean(1, keepdim=True)
    value, nll = _objective(rows, w, theta, eta, family, ridge)
    grad_norm = torch.full((batch,), np.inf, dtype=torch.float64)
    iteration = 0
    for iteration in range(1, max_iter + 1):
        grad, hessian = _gradient_and_hessian(rows, w, theta, eta, family, ridge)
        grad_norm = grad.abs().amax(1)
        active = grad_norm > tol
        if not bool(active.any()):
            iteration -= 1
            break
        step = _newton_direction(hessian, grad, m, centre)
        step[~active] = 0.0
        theta, eta, value, nll = _line_search(
            rows, w, theta, eta, value, nll, grad, step, family, ridge, centre
        )
    else:
        grad, _ = _gradient_and_hessian(rows, w, theta, eta, family, ridge)
        grad_norm = grad.abs().amax(1)
    return Solution(
        theta=theta.numpy(),
        eta=None if eta is None else eta.numpy(),
        nll=nll.numpy(),
        grad_norm=grad_norm.numpy(),
        iterations=iteration,
    )


def _line_search(rows, w, theta, eta, value, nll, grad, step, family, ridge, centre):
    """Backtracking (Armijo) per replicate; a replicate whose step fails keeps its point."""
    m = rows.num_models
    slope = (grad * step).sum(1)
    alpha = torch.ones(theta.shape[0], dtype=torch.float64)
    pending = torch.ones(theta.shape[0], dtype=torch.bool)
    new_theta, new_eta, new_value, new_nll = theta, eta, value, nll
    for _ in range(40):
        cand_theta = theta + alpha[:, None] * step[:, :m]
        if centre:
            cand_theta = cand_theta - cand_theta.mean(1, keepdim=True)
        cand_eta = None if eta is None else eta + alpha * step[:, m]
        cand_value, cand_nll = _objective(rows, w, cand_theta, cand_eta, family, ridge)
        ok = pending & torch.isfinite(cand_value) & (
            cand_value <= value + 1e-4 * alpha * slope + 1e-15 * value.abs()
        )
        new_theta = torch.where(ok[:, None], cand_theta, new_theta)
        if eta is not None:
            new_eta = torch.where(ok, cand_eta, new_eta)
        new_value = torch.where(ok, cand_value, new_value)
        new_nll = torch.where(ok, cand_nll, new_nll)
        pending &= ~ok
        if not bool(pending.any()):
            break
        alpha = torch.where(pending, alpha * 0.5, alpha)
    return new_theta, new_eta, new_value, new_nll


# ------------------------------------------------------------------------------ sandwich


@single_threaded
def sandwich(
    rows: PairRows,
    weight: np.ndarray,
    weight_sq: np.ndarray,
    family: str,
    theta: np.ndarray,
    eta: float | None,
    hessian_ridge: float = 0.0,
) -> np.ndarray:
    """Robust covariance H^-1 B H^-1 of (theta[, eta]) for the summed objective.

    ``weight[k]`` is the summed vote weight of row k (its count when unweighted) and
    ``weight_sq[k]`` the summed squared weights: B = sum_k weight_sq_k g_k g_k^T with g_k one
    vote's score. H gets ``hessian_ridge`` on the theta diagonal. For
    shift-invariant families the inverse is taken on the centred subspace (B ignores the
    common shift, so with ``hessian_ridge=0`` this is the pseudo-inverse sandwich).
    """
    m = rows.num_models
    th = torch.as_tensor(np.asarray(theta, dtype=np.float64))[None]
    et = None if eta is None else torch.tensor([float(eta)], dtype=torch.float64)
    size = m + (et is not None)
    _, grads, hess = _row_derivatives(rows, th, et, family)
    w = torch.as_tensor(np.asarray(weight, dtype=np.float64))[None]
    w2 = torch.as_tensor(np.asarray(weight_sq, dtype=np.float64))[None]
    hessian = _assemble_matrix(rows, {k: v * w for k, v in hess.items()}, size)[0]
    hessian[range(m), range(m)] += hessian_ridge
    outer = {
        (a, b): grads[a] * grads[b] * w2 for a in range(len(grads)) for b in range(a, len(grads))
    }
    meat = _assemble_matrix(rows, outer, size)[0]
    system = hessian.clone()
    if shift_invariant(family):
        scale = hessian[range(m), range(m)].mean().clamp_min(1e-12)
        system[:m, :m] += scale / m
    inverse = torch.linalg.inv(system)
    cov = inverse @ meat @ inverse
    return (0.5 * (cov + cov.T)).numpy()
