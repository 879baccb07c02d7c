"""Style control: a contextual pairwise model whose votes also depend on how the two answers
look (length, headers, bold, lists), so that a model's rating is its strength with style held
fixed.

Each vote k carries features ``x_k`` (the relative style differences of model_a's answer
over model_b's, z-scored over the votes of the fit). The winner's and loser's coefficients
enter the family's likelihood shifted by half the style term each way,

    nll_k = vote_nll(theta[w_k] + o_k / 2, theta[l_k] - o_k / 2, tie_k, eta),
    o_k = s_k * x_k . beta,

with ``s_k`` = +1 when the winner is model_a (and for ties, stored as model_a first) and -1
when it is model_b. For ``bt`` and ``bt-tie`` this is LMArena's contextual Bradley-Terry
model (the logit of "a wins" is theta_a - theta_b + x . beta); the symmetric split keeps the
grounded families' "both bad" level free of style. The objective is

    sum_k w_k nll_k / sum_k w_k + reg / 2 * |beta|^2

with ``w_k`` the vote weights (optionally LMArena's inverse pair frequency), solved by
Newton's method on the exact Hessian (float64). Intervals: a sandwich estimate computed the
way LMArena's ``arena-rank`` computes it (see :func:`style_sandwich`), or a bootstrap over
votes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from p2l_cli.stats import families
from p2l_cli.stats.marginal import percentile_interval
from p2l_cli.stats.pairfit import (
    DEFAULT_RIDGE,
    _newton_direction,
    initial_eta,
    shift_invariant,
    torch_threads,
)

DEFAULT_STYLE_REG = 1.0
# `p2l train --style-control`: a penalty that only keeps constant features (all-zero
# columns) well posed; the coefficients are then close to the maximum likelihood
TRAIN_STYLE_REG = 1e-4
# arena-rank adds this to every diagonal entry of the mean Hessian in its sandwich.
STYLE_HESSIAN_RIDGE = 1e-5
X, Y, E, O = 0, 1, 2, 3  # local inputs of a vote: winner's theta, loser's, eta, style offset


def standardize(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each column (population standard deviation; a constant column keeps scale
    1). Returns the scores, the means and the standard deviations."""
    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return (features - mean) / std, mean, std


def style_terms(raw_features: np.ndarray, sign: np.ndarray, mean, std, beta) -> np.ndarray:
    """Each vote's style term ``s x . beta`` under a fitted style model: the raw relative
    differences standardised with that fit's ``mean`` and ``std``, signed by ``sign``
    (+1 when the vote's first model is model_a)."""
    z = (np.asarray(raw_features) - np.asarray(mean)) / np.asarray(std)
    return np.asarray(sign) * (z @ np.asarray(beta))


@dataclass
class StyleVotes:
    """The votes of one contextual fit: indices, tie codes, orientation and features."""

    winner: np.ndarray  # [n]
    loser: np.ndarray  # [n]
    tie_code: np.ndarray  # [n]
    sign: np.ndarray  # [n] +1 when the winner (or the first model of a tie) is model_a
    features: np.ndarray  # [n, F] z-scored, in model_a-minus-model_b orientation
    weight: np.ndarray  # [n] mean 1
    num_models: int

    @property
    def oriented(self) -> np.ndarray:
        """Features in winner-minus-loser orientation."""
        return self.features * self.sign[:, None]


@dataclass
class StyleFit:
    theta: np.ndarray  # [M]
    beta: np.ndarray  # [F] log-odds per standard deviation of each feature
    eta: float | None
    family: str
    nll: float  # weighted mean NLL, without the penalty
    n_votes: int
    feature_mean: np.ndarray  # of the raw relative differences, over the fit's votes
    feature_std: np.ndarray
    reg: float
    ci: str = "none"
    lower: np.ndarray | None = None  # theta's bounds
    upper: np.ndarray | None = None
    beta_lower: np.ndarray | None = None
    beta_upper: np.ndarray | None = None
    cov: np.ndarray | None = field(default=None, repr=False)  # (theta[, eta], beta)


def style_votes(winner, loser, tie_code, sign, raw_features, num_models: int,
                family: str = "bt-tie", weights=None, reweight: bool = False,
                min_pair_count: int = 50) -> tuple[StyleVotes, np.ndarray, np.ndarray]:
    """The votes a family keeps (``bt`` drops ties; zero weights drop out), their weights
    (times LMArena's inverse pair frequency with ``reweight``), normalised to mean 1, and
    their features z-scored over those votes. Returns the votes, the raw features' means
    and standard deviations."""
    from p2l_cli.stats.marginal import pair_weights

    family = families.canonical_family(family)
    winner = np.asarray(winner, dtype=np.int64)
    loser = np.asarray(loser, dtype=np.int64)
    tie_code = np.asarray(tie_code, dtype=np.int64)
    raw = np.asarray(raw_features, dtype=np.float64)
    if raw.ndim != 2 or len(raw) != len(winner):
        raise ValueError("features must be an array [votes, features]")
    if not np.isfinite(raw).all():
        raise ValueError("style features must be finite")
    w = np.ones(len(winner)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = w > 0
    if family == "bt":
        keep &= tie_code == families.DECISIVE
    winner, loser, tie_code, w, raw = winner[keep], loser[keep], tie_code[keep], w[keep], raw[keep]
    sign = np.asarray(sign, dtype=np.float64)[keep]
    if reweight and len(winner):
        w = w * pair_weights(winner, loser, num_models, min_pair_count)
    if len(w):
        w = w / w.mean()
    if len(raw):
        scores, mean, std = standardize(raw)
    else:
        scores, mean, std = raw, np.zeros(raw.shape[1]), np.ones(raw.shape[1])
    votes = StyleVotes(winner, loser, tie_code, sign, scores, w, num_models)
    return votes, mean, std


# ------------------------------------------------------------------------ per-vote terms


def _local(votes: StyleVotes, theta, eta, beta, family: str, second: bool | None = True):
    """Per vote: NLL, gradient and (with ``second``) Hessian with respect to the local
    inputs (winner's theta, loser's theta[, eta], style offset o); ``second=None``: the NLL
    alone."""
    if shift_invariant(family):
        return _local_by_difference(votes, theta, eta, beta, family, second)
    oriented = torch.as_tensor(votes.oriented)
    inputs = [theta[torch.as_tensor(votes.winner)], theta[torch.as_tensor(votes.loser)]]
    if eta is not None:
        inputs.append(eta.expand(len(votes.winner)).clone())
    inputs.append(oriented @ beta)
    names = [X, Y] + ([E] if eta is not None else []) + [O]

    def nll_of(inputs):
        half = inputs[-1] / 2
        return families.vote_nll(inputs[0] + half, inputs[1] - half,
                                 torch.as_tensor(votes.tie_code),
                                 inputs[2] if eta is not None else None, family)

    nll, grads, hess = _derivatives(nll_of, inputs, second)
    return (nll, dict(zip(names, grads)),
            {(names[i], names[j]): v for (i, j), v in hess.items()})


def _local_by_difference(votes: StyleVotes, theta, eta, beta, family: str,
                         second: bool | None):
    """:func:`_local` for a family whose likelihood depends on the two strengths only
    through their difference d = theta_w - theta_l + o: derivatives with respect to d
    (and eta), spread over the local inputs (d moves with the winner's theta and the
    offset, against the loser's)."""
    oriented = torch.as_tensor(votes.oriented)
    d = theta[torch.as_tensor(votes.winner)] - theta[torch.as_tensor(votes.loser)] \
        + oriented @ beta
    inputs = [d] + ([eta.expand(len(d)).clone()] if eta is not None else [])
    zero = torch.zeros(len(d), dtype=d.dtype)

    def nll_of(inputs):
        return families.vote_nll(inputs[0], zero, torch.as_tensor(votes.tie_code),
                                 inputs[1] if eta is not None else None, family)

    nll, grads, hess = _derivatives(nll_of, inputs, second)
    if second is None:
        return nll, {}, {}
    out_grads = {X: grads[0], Y: -grads[0], O: grads[0]}
    if eta is not None:
        out_grads[E] = grads[1]
    out_hess = {}
    if second:
        h = hess[(0, 0)]
        out_hess = {(X, X): h, (X, Y): -h, (Y, Y): h, (X, O): h, (Y, O): -h, (O, O): h}
        if eta is not None:
            he = hess[(0, 1)]
            out_hess.update({(X, E): he, (Y, E): -he, (E, E): hess[(1, 1)], (E, O): he})
    return nll, out_grads, out_hess


def _derivatives(nll_of, inputs: list[torch.Tensor], second: bool | None):
    """Per-vote values of ``nll_of(inputs)``, its gradient (a list over inputs) and, with
    ``second``, its Hessian (a dict over index pairs i <= j) by autograd. ``second=None``:
    the values alone."""
    if second is None:
        with torch.no_grad():
            return nll_of(inputs), [], {}
    inputs = [v.detach().requires_grad_() for v in inputs]
    with torch.enable_grad():
        nll = nll_of(inputs)
        grads = torch.autograd.grad(nll.sum(), inputs, create_graph=second,
                                    materialize_grads=True)
        hess = {}
        if second:
            for i in range(len(inputs)):
                row = torch.autograd.grad(grads[i].sum(), inputs[i:], retain_graph=True,
                                          materialize_grads=True)
                for j, value in enumerate(row, start=i):
                    hess[(i, j)] = value.detach()
    return nll.detach(), [g.detach() for g in grads], hess


def _assemble_vector(votes: StyleVotes, parts: dict, size: int, num_features: int):
    out = torch.zeros(size, dtype=torch.float64)
    m = votes.num_models
    out.index_add_(0, torch.as_tensor(votes.winner), parts[X])
    out.index_add_(0, torch.as_tensor(votes.loser), parts[Y])
    if E in parts:
        out[m] += parts[E].sum()
    out[size - num_features:] += parts[O] @ torch.as_tensor(votes.oriented)
    return out


def _assemble_matrix(votes: StyleVotes, local: dict, size: int, num_features: int):
    """Sum symmetric per-vote blocks ``local[(a, b)] [n]`` over the parameters (theta[, eta],
    beta): theta entries scatter to the vote's two models, the style offset to beta through
    the vote's oriented features."""
    m = votes.num_models
    first = size - num_features
    oriented = torch.as_tensor(votes.oriented)
    index = {X: torch.as_tensor(votes.winner), Y: torch.as_tensor(votes.loser)}
    flat = torch.zeros(size * size, dtype=torch.float64)
    out_cross = torch.zeros(size, num_features, dtype=torch.float64)
    beta_block = torch.zeros(num_features, num_features, dtype=torch.float64)
    for (a, b), value in local.items():
        if a == O and b == O:
            beta_block += oriented.T @ (value[:, None] * oriented)
        elif b == O:
            weighted = value[:, None] * oriented
            if a == E:
                out_cross[m] += weighted.sum(0)
            else:
                out_cross.index_add_(0, index[a], weighted)
        elif a == E and b == E:
            flat[m * size + m] += value.sum()
        elif b == E:
            column = torch.zeros(size, dtype=torch.float64)
            column.index_add_(0, index[a], value)
            flat.view(size, size)[:, m] += column
            flat.view(size, size)[m, :] += column
        else:
            flat.index_add_(0, index[a] * size + index[b], value)
            if a != b:
                flat.index_add_(0, index[b] * size + index[a], value)
    matrix = flat.view(size, size)
    matrix[:, first:] += out_cross
    matrix[first:, :] += out_cross.T
    matrix[first:, first:] += beta_block
    return matrix


# ------------------------------------------------------------------------------- solving


def _objective(votes, theta, eta, beta, family, reg, ridge):
    nll, _, _ = _local(votes, theta, eta, beta, family, second=None)
    mean = (torch.as_tensor(votes.weight) * nll).sum() / len(nll)
    return mean + 0.5 * reg * (beta**2).sum() + 0.5 * ridge * (theta**2).sum(), mean


def _gradient_and_hessian(votes, theta, eta, beta, family, reg, ridge):
    m, f = votes.num_models, len(beta)
    size = m + (eta is not None) + f
    _, grads, hess = _local(votes, theta, eta, beta, family)
    w = torch.as_tensor(votes.weight) / len(votes.weight)
    grad = _assemble_vector(votes, {k: v * w for k, v in grads.items()}, size, f)
    hessian = _assemble_matrix(votes, {k: v * w for k, v in hess.items()}, size, f)
    grad[:m] += ridge * theta
    grad[size - f:] += reg * beta
    hessian[range(m), range(m)] += ridge
    idx = range(size - f, size)
    hessian[idx, idx] += reg
    return grad, hessian


def _split(params: torch.Tensor, m: int, has_eta: bool):
    theta = params[:m]
    eta = params[m:m + 1][0] if has_eta else None
    return theta, eta, params[m + has_eta:]


def _threads(votes: StyleVotes):
    """Torch threads for one fit: one for small problems (many small ops, where a busy
    pool only spins), the default for large ones (each op spans many votes)."""
    return torch_threads(1 if len(votes.weight) < 100_000 else torch.get_num_threads())


def solve_style(votes: StyleVotes, family: str = "bt-tie", reg: float = DEFAULT_STYLE_REG,
                ridge: float = DEFAULT_RIDGE, tol: float = 1e-10, max_iter: int = 100,
                start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The parameters (theta[, eta], beta) minimising the penalised objective, and the
    weighted mean NLL there."""
    with _threads(votes):
        return _solve_style(votes, family, reg, ridge, tol, max_iter, start)


def _solve_style(votes, family, reg, ridge, tol, max_iter, start):
    family = families.canonical_family(family)
    m, f = votes.num_models, votes.features.shape[1]
    has_eta = families.has_eta(family)
    params = torch.zeros(m + has_eta + f, dtype=torch.float64)
    if has_eta:
        params[m] = initial_eta(family)
    if start is not None:
        params = torch.as_tensor(np.array(start, dtype=np.float64))
    centre = shift_invariant(family)

    def value_of(p):
        return _objective(votes, *_split(p, m, has_eta), family, reg, ridge)

    value, nll = value_of(params)
    for _ in range(max_iter):
        grad, hessian = _gradient_and_hessian(votes, *_split(params, m, has_eta), family,
                                              reg, ridge)
        if float(grad.abs().max()) <= tol:
            break
        step = _newton_direction(hessian[None], grad[None], m, centre)[0]
        slope = float(grad @ step)
        alpha = 1.0
        for _ in range(40):
            candidate = params + alpha * step
            if centre:
                candidate[:m] -= candidate[:m].mean()
            cand_value, cand_nll = value_of(candidate)
            if torch.isfinite(cand_value) and cand_value <= value + 1e-4 * alpha * slope + \
                    1e-15 * abs(float(value)):
                break
            alpha /= 2
        else:
            break
        params, value, nll = candidate, cand_value, cand_nll
    return params.numpy(), float(nll)


def style_sandwich(votes: StyleVotes, params: np.ndarray, family: str,
                   reg: float = DEFAULT_STYLE_REG,
                   hessian_ridge: float = STYLE_HESSIAN_RIDGE) -> np.ndarray:
    """Covariance of (theta[, eta], beta) as ``arena-rank``'s contextual model computes it:
    H^-1 G H^-1 / n with H the weighted mean Hessian of the NLL plus ``hessian_ridge`` on
    the diagonal (the penalty is left out of H), G the mean outer product of the weighted
    per-vote scores less (reg^2 / n) p p^T, p = (0, beta), and n the number of votes."""
    with _threads(votes):
        return _style_sandwich(votes, params, family, reg, hessian_ridge)


def _style_sandwich(votes, params, family, reg, hessian_ridge):
    family = families.canonical_family(family)
    m, f = votes.num_models, votes.features.shape[1]
    has_eta = families.has_eta(family)
    size = m + has_eta + f
    p = torch.as_tensor(np.asarray(params, dtype=np.float64))
    n = len(votes.weight)
    _, grads, hess = _local(votes, *_split(p, m, has_eta), family)
    w = torch.as_tensor(votes.weight)
    hessian = _assemble_matrix(votes, {k: v * w for k, v in hess.items()}, size, f) / n
    hessian += hessian_ridge * torch.eye(size, dtype=torch.float64)
    names = sorted(grads)  # pairs (a, b) with a before b in the order X, Y, E, O
    outer = {(a, b): grads[a] * grads[b] * w * w
             for i, a in enumerate(names) for b in names[i:]}
    meat = _assemble_matrix(votes, outer, size, f) / n
    penalty_score = torch.zeros(size, dtype=torch.float64)
    penalty_score[size - f:] = p[size - f:]
    meat -= (reg**2 / n) * torch.outer(penalty_score, penalty_score)
    inverse = torch.linalg.inv(hessian)
    cov = inverse @ meat @ inverse / n
    return (0.5 * (cov + cov.T)).numpy()


def style_bootstrap(votes: StyleVotes, params: np.ndarray, family: str, reg: float,
                    rounds: int, seed: int) -> np.ndarray:
    """Parameters refitted on ``rounds`` resamples of the votes (with replacement; the
    resampled counts multiply the vote weights), warm-started at ``params``."""
    rng = np.random.default_rng(seed)
    n = len(votes.weight)
    out = []
    for _ in range(rounds):
        counts = rng.multinomial(n, np.full(n, 1.0 / n))
        resampled = StyleVotes(votes.winner, votes.loser, votes.tie_code, votes.sign,
                               votes.features, votes.weight * counts, votes.num_models)
        out.append(solve_style(resampled, family, reg, start=params)[0])
    return np.array(out)


def _style_free_start(votes: StyleVotes, family: str) -> np.ndarray:
    """A starting point: the marginal fit of the same votes and weights (grouped rows, so
    cheap) with the style coefficients at 0; Newton then needs few steps."""
    from p2l_cli.stats.marginal import group_votes
    from p2l_cli.stats.pairfit import solve

    grouped = group_votes(votes.winner, votes.loser, votes.tie_code, votes.num_models,
                          family, votes.weight)
    sol = solve(grouped.rows, grouped.weight, family)
    eta = [] if sol.eta is None else [float(sol.eta[0])]
    return np.concatenate([sol.theta[0], eta, np.zeros(votes.features.shape[1])])


def fit_style(winner, loser, tie_code, sign, raw_features, num_models: int,
              family: str = "bt-tie", weights=None, reweight: bool = False,
              reg: float = DEFAULT_STYLE_REG, ci: str = "sandwich", rounds: int = 100,
              seed: int = 0, level: float = 0.95) -> StyleFit:
    """Fit the contextual model to votes given as indices, with ``raw_features [n, F]``
    (relative style differences, model_a over model_b) and ``sign`` (+1 when the winner,
    or a tie's first model, is model_a; -1 otherwise)."""
    family = families.canonical_family(family)
    if reg < 0:
        raise ValueError("reg must be >= 0")
    votes, mean, std = style_votes(winner, loser, tie_code, sign, raw_features, num_models,
                                   family, weights, reweight)
    if len(votes.weight) == 0:
        raise ValueError("no votes to fit" + (" (bt drops ties)" if family == "bt" else ""))
    params, nll = solve_style(votes, family, reg, start=_style_free_start(votes, family))
    m = num_models
    has_eta = families.has_eta(family)
    fit = StyleFit(theta=params[:m], beta=params[m + has_eta:],
                   eta=float(params[m]) if has_eta else None, family=family, nll=nll,
                   n_votes=len(votes.weight), feature_mean=mean, feature_std=std, reg=reg,
                   ci=ci)
    if ci == "sandwich":
        fit.cov = style_sandwich(votes, params, family, reg)
        se = np.sqrt(np.clip(np.diag(fit.cov), 0.0, None))
        z = NormalDist().inv_cdf(0.5 + level / 2)
        fit.lower, fit.upper = fit.theta - z * se[:m], fit.theta + z * se[:m]
        fit.beta_lower, fit.beta_upper = fit.beta - z * se[m + has_eta:], \
            fit.beta + z * se[m + has_eta:]
    elif ci == "bootstrap":
        samples = style_bootstrap(votes, params, family, reg, rounds, seed)
        fit.lower, fit.upper = percentile_interval(samples[:, :m], level)
        fit.beta_lower, fit.beta_upper = percentile_interval(samples[:, m + has_eta:], level)
    elif ci != "none":
        raise ValueError(f"ci must be sandwich, bootstrap or none, not {ci!r}")
    return fit
