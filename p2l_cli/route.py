"""Cost-aware routing of prompts to models: the paper's Algorithm 1, vectorised over prompts.

For a prompt ``z`` with coefficients ``theta(z)``, an opponent distribution ``q`` and a cost
``c_i`` per answer of model ``i``, the *value* of model ``i`` on ``z`` is its expected win rate
against an opponent drawn from ``q``: ``v_i(z) = sum_a q_a P(i preferred to a | z)`` (the
family's win probability, a tie counting half). A routing *strategy* ``pi(z)`` is a
distribution over the models that may be chosen; its expected win rate is ``pi . v`` and its
expected cost ``pi . c``.

- No budget: each prompt goes to its best model (``argmax v``; the cheaper one on ties).
- A budget per prompt: ``max pi . v  s.t.  pi . c <= C``. The optimum lies on the upper concave
  frontier of the points ``(c_i, v_i)``: a mix of the two frontier models whose costs straddle
  ``C`` (or a single model). :func:`frontier` finds the frontiers of all prompts at once.
- A budget over a batch: ``max mean_z pi(z) . v(z)  s.t.  mean_z pi(z) . c <= C``. Its
  Lagrangian dual is a one-dimensional problem in the price ``lambda`` of the budget: every
  prompt takes ``argmax v - lambda c``; walking the frontier segments of all prompts in order
  of decreasing slope until the budget is spent gives the exact optimum and ``lambda``
  (:func:`route_batch`). :func:`route_batch_linprog` solves the same LP with HiGHS.
- A price: every prompt independently takes ``argmax v - lambda c`` (:func:`route_by_price`),
  which routes a stream online with the price calibrated on an earlier batch.

The router's Bradley-Terry coefficient (Algorithm 1, last step) pools the prompts: it is the
``theta`` at which a model of fixed strength ``theta`` has, averaged over the prompts and over
opponents drawn from ``q``, the router's mean win rate (:func:`router_thetas`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import optimize, sparse

from p2l_cli.contracts.costs import read_weights
from p2l_cli.errors import UserError
from p2l_cli.stats.aggregate import aggregate
from p2l_cli.stats.families import canonical_family, has_eta, win_probability
from p2l_cli.stats.marginal import arena_scale
from p2l_cli.stats.pairfit import torch_threads
from p2l_cli.stats.winrates import BLOCK_ELEMENTS, win_rates_vs_opponents

SCOPES = ("batch", "prompt")
SOLVERS = ("exact", "highs")
SHIFT_INVARIANT = ("bt", "bt-tie", "rk")
_TOP_K = re.compile(r"^leaderboard-top-(\d+)$")

# ------------------------------------------------------------------- models and costs


def _unknown(names, models: Sequence[str], where: str, what: str) -> None:
    known = set(models)
    for name in names:
        if name not in known:
            raise UserError(f"{where}: {what} {name!r} is not in the predictions' model list")


def choosable_models(models: Sequence[str], restrict: str | None) -> list[int]:
    """Indices of the models that routing may choose: all, or those named by ``--models``."""
    if restrict is None:
        return list(range(len(models)))
    names = [n.strip() for n in restrict.split(",") if n.strip()]
    if not names:
        raise UserError("--models: no model names given")
    _unknown(names, models, "--models", "model")
    chosen = set(names)
    return [i for i, name in enumerate(models) if name in chosen]


def cost_vector(
    costs: dict[str, float], models: Sequence[str], choosable: Sequence[int], source: str
) -> np.ndarray:
    """Costs of the choosable models. A cost for a model the predictions do not know is an
    error (a typo, most likely); a model without a cost is one only if it may be chosen."""
    _unknown(costs, models, source, "model")
    missing = [models[i] for i in choosable if models[i] not in costs]
    if missing:
        raise UserError(
            f"{source}: no cost for model {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; add it, or leave it out with --models"
        )
    return np.array([costs[models[i]] for i in choosable], dtype=np.float64)


def check_budget(budget: float, costs: np.ndarray, names: Sequence[str]) -> None:
    if not math.isfinite(budget):
        raise UserError(f"--budget {budget}: not a finite number")
    cheapest = int(np.argmin(costs))
    if budget < costs[cheapest]:
        raise UserError(
            f"--budget {budget:g} is below the cost of the cheapest allowed model "
            f"({names[cheapest]}: {costs[cheapest]:g}); the smallest feasible budget is "
            f"{costs[cheapest]:g}"
        )


def check_options(costs, budget, scope, price, solver, sweep, plot) -> None:
    """Reject option combinations that make no sense, before any work."""
    if scope not in SCOPES:
        raise UserError(f"--budget-scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if solver not in SOLVERS:
        raise UserError(f"--solver {solver!r}: expected one of {', '.join(SOLVERS)}")
    if budget is not None and price is not None:
        raise UserError("--budget and --price: give one (a price routes without a budget)")
    if price is not None and not price >= 0:
        raise UserError(f"--price {price:g}: must be a number >= 0")
    if sweep is not None and (budget is not None or price is not None):
        raise UserError("--sweep sets the budgets itself; drop --budget/--price")
    if plot is not None and sweep is None:
        raise UserError("--plot draws the --sweep curve; give --sweep C1,C2,...")
    if costs is None:
        for name, value in (("--budget", budget), ("--price", price), ("--sweep", sweep)):
            if value is not None:
                raise UserError(f"{name} needs --costs")


# --------------------------------------------------------------------- opponents and values


def opponent_distribution(
    spec: str, models: Sequence[str], coefs: np.ndarray, eta: np.ndarray | None, family: str
) -> np.ndarray:
    """``q`` over all models: ``uniform``, ``leaderboard-top-K`` (uniform over the K best of
    the leaderboard aggregated over the input's prompts) or a file of weights."""
    m = len(models)
    if spec == "uniform":
        return np.full(m, 1.0 / m)
    top = _TOP_K.match(spec)
    if top:
        k = int(top.group(1))
        if not 1 <= k <= m:
            raise UserError(f"--opponents {spec}: K must be between 1 and {m}")
        best = np.argsort(-leaderboard_theta(coefs, eta, family), kind="stable")[:k]
        q = np.zeros(m)
        q[best] = 1.0 / k
        return q
    if not Path(spec).exists():
        raise UserError(
            f"--opponents {spec!r}: expected 'uniform', 'leaderboard-top-K' or a weights file"
        )
    weights = read_weights(spec)
    _unknown(weights, models, spec, "model")
    q = np.array([weights.get(name, 0.0) for name in models])
    if q.sum() <= 0:
        raise UserError(f"{spec}: the opponent weights sum to 0")
    return q / q.sum()


def leaderboard_theta(coefs: np.ndarray, eta: np.ndarray | None, family: str) -> np.ndarray:
    """The leaderboard aggregated over the prompts (the paper's aggregation)."""
    return np.asarray(aggregate(coefs, eta, family=family)[0], dtype=np.float64)


# ------------------------------------------------------------------------------- solvers


@dataclass(frozen=True)
class Routing:
    """``strategy [N, S]``: each prompt's distribution over the choosable models; ``price``:
    the dual price of the budget (win rate per unit of cost), when the solver has one."""

    strategy: np.ndarray
    price: float | None = None


def _cheapest_first(costs: np.ndarray) -> np.ndarray:
    return np.argsort(costs, kind="stable")


def route_by_price(values: np.ndarray, costs: np.ndarray, price: float = 0.0) -> Routing:
    """Each prompt to ``argmax v - price * c`` (the cheaper model on ties)."""
    order = _cheapest_first(costs)
    best = order[np.argmax(values[:, order] - price * costs[order], axis=1)]
    strategy = np.zeros_like(values)
    strategy[np.arange(len(values)), best] = 1.0
    return Routing(strategy, price)


def frontier(values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Vertices of every prompt's cost-quality frontier, cheapest first: ``[N, H]`` model
    indices padded with -1 (the last column is always padding).

    The frontier is the upper concave hull of the points ``(c_i, v_i)`` from the best of the
    cheapest models up to the best model, along which cost and value both increase. It is
    walked from its cheap end for all prompts at once: the next vertex is the model of
    highest slope ``(v_j - v_k) / (c_j - c_k)`` over the dearer, better models ``j``.
    """
    n = values.shape[0]
    order = _cheapest_first(costs)
    c, v = costs[order], values[:, order]
    current = np.argmax(np.where(c == c[0], v, -np.inf), axis=1)
    steps = [current]
    rows = np.arange(n)
    while rows.size:
        at = steps[-1][rows]
        rise = v[rows] - v[rows, at][:, None]
        run = c[None, :] - c[at][:, None]
        ahead = (run > 0) & (rise > 0)
        slope = np.full(rise.shape, -np.inf)
        np.divide(rise, run, out=slope, where=ahead)
        nxt = np.argmax(slope, axis=1)
        moved = np.isfinite(slope[np.arange(rows.size), nxt])
        if not moved.any():
            break
        step = np.full(n, -1)
        step[rows[moved]] = nxt[moved]
        steps.append(step)
        rows = rows[moved]
    steps.append(np.full(n, -1))
    hull = np.stack(steps, axis=1)
    return np.where(hull >= 0, order[np.maximum(hull, 0)], -1)


def route_per_prompt(values: np.ndarray, costs: np.ndarray, budget: float) -> Routing:
    """``max pi . v  s.t.  pi . c <= budget`` for every prompt: at most two models each."""
    n = values.shape[0]
    rows = np.arange(n)
    hull = frontier(values, costs)
    vertex_cost = np.where(hull >= 0, costs[np.maximum(hull, 0)], np.inf)
    k = (vertex_cost <= budget).sum(axis=1) - 1  # the dearest affordable vertex
    lo, hi = hull[rows, k], hull[rows, k + 1]
    mix = hi >= 0
    share = np.zeros(n)
    share[mix] = (budget - costs[lo[mix]]) / (costs[hi[mix]] - costs[lo[mix]])
    strategy = np.zeros_like(values)
    strategy[rows, lo] = 1.0 - share
    strategy[rows[mix], hi[mix]] = share[mix]
    return Routing(strategy)


def route_batch(values: np.ndarray, costs: np.ndarray, budget: float) -> Routing:
    """``max mean_z pi(z) . v(z)  s.t.  mean_z pi(z) . c <= budget``, exactly, by the dual.

    Every prompt starts at the cheap end of its frontier; moving along a frontier segment buys
    ``slope`` win rate per unit of cost. Taking the segments of all prompts in order of
    decreasing slope until the mean cost reaches the budget is optimal (a fractional knapsack
    whose items come in concave chains); the slope of the segment that exhausts the budget is
    the price ``lambda``, and only that prompt mixes two models.
    """
    n = values.shape[0]
    rows = np.arange(n)
    hull = frontier(values, costs)
    lo, hi = hull[:, :-1], hull[:, 1:]
    valid = hi >= 0
    safe_lo, safe_hi = np.maximum(lo, 0), np.maximum(hi, 0)
    run = np.where(valid, costs[safe_hi] - costs[safe_lo], 1.0)
    rise = np.take_along_axis(values, safe_hi, 1) - np.take_along_axis(values, safe_lo, 1)
    slope = np.where(valid, rise / run, -np.inf)
    slope = np.minimum.accumulate(slope, axis=1)  # concave chains, robust to rounding
    step_of, prompt_of = np.nonzero(valid.T)  # step-major, so ties keep each chain in order
    seg_slope = slope[prompt_of, step_of]
    seg_run = run[prompt_of, step_of] / n
    order = np.argsort(-seg_slope, kind="stable")
    spent = costs.min() + np.cumsum(seg_run[order])
    first_short = int(np.searchsorted(spent, budget, side="right"))
    taken = np.bincount(prompt_of[order[:first_short]], minlength=n)
    strategy = np.zeros_like(values)
    if first_short == order.size:  # every prompt affords its best model
        strategy[rows, hull[rows, taken]] = 1.0
        return Routing(strategy, 0.0)
    seg = order[first_short]
    z = prompt_of[seg]
    share = (budget - (spent[first_short] - seg_run[seg])) / seg_run[seg]
    strategy[rows, hull[rows, taken]] = 1.0
    strategy[z, hull[z, taken[z]]] = 1.0 - share
    strategy[z, hull[z, taken[z] + 1]] = share
    return Routing(strategy, float(seg_slope[seg]))


def route_batch_linprog(values: np.ndarray, costs: np.ndarray, budget: float) -> Routing:
    """The batch LP as one generic LP for HiGHS (``scipy.optimize.linprog``), with the dual
    price of the budget from its marginal."""
    n, m = values.shape
    simplex = sparse.kron(sparse.identity(n, format="csr"), np.ones((1, m)), format="csr")
    res = optimize.linprog(
        -values.ravel() / n,
        A_ub=np.tile(costs, n)[None, :] / n,
        b_ub=[budget],
        A_eq=simplex,
        b_eq=np.ones(n),
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return Routing(_clean(res.x.reshape(n, m)), float(-res.ineqlin.marginals[0]))


def route_per_prompt_linprog(values: np.ndarray, costs: np.ndarray, budget: float) -> Routing:
    """The per-prompt LP with HiGHS, one prompt at a time (the generic reference method)."""
    strategy = np.empty_like(values)
    ones = np.ones((1, values.shape[1]))
    for z, v in enumerate(values):
        res = optimize.linprog(
            -v, A_ub=costs[None, :], b_ub=[budget], A_eq=ones, b_eq=[1.0],
            bounds=(0, None), method="highs",
        )  # fmt: skip
        if res.status != 0:
            raise RuntimeError(f"linprog failed on prompt {z}: {res.message}")
        strategy[z] = res.x
    return Routing(_clean(strategy))


def _clean(strategy: np.ndarray) -> np.ndarray:
    strategy = np.where(strategy > 1e-12, strategy, 0.0)
    return strategy / strategy.sum(axis=1, keepdims=True)


def solve_routing(
    values: np.ndarray,
    costs: np.ndarray | None,
    budget: float | None = None,
    scope: str = "batch",
    price: float | None = None,
    solver: str = "exact",
) -> Routing:
    """Route with a price, a budget (per prompt or over the batch) or neither (then
    ``costs`` may be ``None``)."""
    costs = np.zeros(values.shape[1]) if costs is None else costs
    if price is not None:
        return route_by_price(values, costs, price)
    if budget is None:
        return route_by_price(values, costs, 0.0)
    if scope == "prompt":
        method = route_per_prompt if solver == "exact" else route_per_prompt_linprog
    else:
        method = route_batch if solver == "exact" else route_batch_linprog
    return method(values, costs, budget)


def choose(strategy: np.ndarray, costs: np.ndarray | None, seed: int | None) -> np.ndarray:
    """One model per prompt: sampled from its strategy with ``seed``, or (``seed=None``)
    the most likely model, the cheaper on ties."""
    if seed is None:
        costs = np.zeros(strategy.shape[1]) if costs is None else costs
        order = _cheapest_first(costs)
        return order[np.argmax(strategy[:, order], axis=1)]
    cumulative = np.cumsum(strategy, axis=1)
    draw = np.random.default_rng(seed).random(len(strategy)) * cumulative[:, -1]
    return np.minimum((cumulative <= draw[:, None]).sum(axis=1), strategy.shape[1] - 1)


# --------------------------------------------------------------------------- router score


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
    if family in SHIFT_INVARIANT:
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


# ------------------------------------------------------------------------------ summaries


@dataclass
class Problem:
    """Everything routing needs, from a predictions table and the options."""

    models: list[str]  # the predictions' model list
    family: str
    coefs: np.ndarray  # [N, M]
    eta: np.ndarray | None  # [N] raw head output (rk, grk)
    q: np.ndarray  # [M] opponent distribution
    choosable: list[int]  # indices into models
    costs: np.ndarray | None  # [S] costs of the choosable models (None: no costs file)
    values: np.ndarray  # [N, S] expected win rates of the choosable models

    @property
    def names(self) -> list[str]:
        return [self.models[i] for i in self.choosable]


def build_problem(
    models: Sequence[str],
    family: str,
    coefs: np.ndarray,
    eta: np.ndarray | None,
    opponents: str,
    choosable: Sequence[int],
    costs: np.ndarray | None,
) -> Problem:
    q = opponent_distribution(opponents, models, coefs, eta, family)
    values = win_rates_vs_opponents(coefs, q, eta, family)[:, list(choosable)]
    return Problem(list(models), family, coefs, eta, q, list(choosable), costs, values)


def summarise(problem: Problem, routing: Routing, chosen: np.ndarray, budget: float | None) -> dict:
    """Mean cost and win rate of the router and of every single choosable model; the
    Bradley-Terry coefficient and Arena-scale score of the router and of every single model
    that fits the budget (``None`` for the others)."""
    values, costs = problem.values, problem.costs
    router_rate = float((routing.strategy * values).sum(axis=1).mean())
    single_rates = values.mean(axis=0)
    fits = np.ones(len(single_rates), bool) if budget is None else costs <= budget
    thetas = np.full(len(single_rates) + 1, np.nan)
    scored = np.concatenate([[True], fits])
    thetas[scored] = router_thetas(
        problem.coefs, problem.q, [router_rate, *single_rates[fits]], problem.eta, problem.family
    )
    scores = arena_scale(thetas)
    router = {"mean_win_rate": router_rate, "theta": float(thetas[0]), "score": float(scores[0])}
    if costs is not None:
        router["mean_cost"] = float((routing.strategy @ costs).mean())
        router["mean_cost_sampled"] = float(costs[chosen].mean())
    singles = []
    for s, name in enumerate(problem.names):
        row = {"model": name, "mean_win_rate": float(single_rates[s])}
        if costs is not None:
            row["cost"] = float(costs[s])
            row["fits_budget"] = bool(fits[s])
        row["theta"] = float(thetas[s + 1]) if fits[s] else None
        row["score"] = float(scores[s + 1]) if fits[s] else None
        row["chosen_share"] = float(np.mean(chosen == s))
        singles.append(row)
    singles.sort(key=lambda r: -r["mean_win_rate"])
    return {
        "n_prompts": int(values.shape[0]),
        "family": problem.family,
        "budget": budget,
        "price": routing.price,
        "opponents": {problem.models[a]: float(w) for a, w in enumerate(problem.q) if w > 0},
        "router": router,
        "models": singles,
    }


def sweep(problem: Problem, budgets: Sequence[float], scope: str, solver: str) -> list[dict]:
    """The cost-quality curve: the router's mean cost, win rate and score at each budget."""
    rows = []
    for budget in budgets:
        check_budget(budget, problem.costs, problem.names)
        routing = solve_routing(problem.values, problem.costs, budget, scope, solver=solver)
        rows.append(
            {
                "budget": float(budget),
                "scope": scope,
                "mean_cost": float((routing.strategy @ problem.costs).mean()),
                "mean_win_rate": float((routing.strategy * problem.values).sum(axis=1).mean()),
                "price": routing.price,
            }
        )
    rates = [row["mean_win_rate"] for row in rows]
    thetas = router_thetas(problem.coefs, problem.q, rates, problem.eta, problem.family)
    for row, theta in zip(rows, thetas):
        row.update(theta=float(theta), score=float(arena_scale(theta)))
    return rows


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--sweep {text!r}: expected comma-separated numbers") from None
    if not budgets:
        raise UserError("--sweep: no budgets given")
    return budgets


# ------------------------------------------------------------------------ predictions input


def predict_prompts_table(model_source: str, source: str):
    """Predict a prompts table (file or ``-``) with a P2L model: ``(frame, metadata)``."""
    from p2l_cli.io import read_table_meta, source_name
    from p2l_cli.predict import load_for_inference, predict_frame

    df, _ = read_table_meta(source)
    if df.height == 0:
        raise UserError(f"{source_name(source)}: no prompts to route")
    model, tokenizer = load_for_inference(model_source)
    frame = predict_frame(model, tokenizer, df, name=source_name(source))
    return frame, model.info.metadata()


# ------------------------------------------------------------------------------- outputs


def routes_frame(df, problem: Problem, routing: Routing, chosen: np.ndarray, drop_coefs: bool):
    """The input rows plus ``model``, ``strategy`` (non-zero model -> probability entries),
    ``win_rate`` and ``cost`` (expected; ``cost`` only with a costs file)."""
    import polars as pl
    import pyarrow as pa

    strategy = routing.strategy
    names = np.asarray(problem.names, dtype=object)
    rows, cols = np.nonzero(strategy > 0)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(strategy)))])
    entries = pa.StructArray.from_arrays(
        [pa.array(names[cols].tolist(), pa.string()), pa.array(strategy[rows, cols])],
        ["model", "prob"],
    )
    columns = {
        "model": pl.Series("model", names[chosen].tolist(), dtype=pl.String),
        "strategy": pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), entries)),
        "win_rate": pl.Series("win_rate", (strategy * problem.values).sum(axis=1)),
    }
    if problem.costs is not None:
        columns["cost"] = pl.Series("cost", strategy @ problem.costs)
    if drop_coefs:
        df = df.drop([c for c in ("coefs", "eta") if c in df.columns])
    return df.with_columns(**{name: series.alias(name) for name, series in columns.items()})


def summary_tables(summary: dict):
    """Rich tables of a summary: the router against every single model."""
    from rich.table import Table

    has_cost = "mean_cost" in summary["router"]
    title = "routing"
    if summary["budget"] is not None:
        title += f" with a budget of {summary['budget']:g}"
    if summary["price"] is not None and summary["budget"] is not None:
        title += f" (price {summary['price']:.4g} win rate per unit cost)"
    elif summary["price"]:  # --price: each prompt alone, no budget
        title += f" at a price of {summary['price']:.4g} win rate per unit cost"
    table = Table(title=title, title_justify="left")
    table.add_column("policy")
    if has_cost:
        table.add_column("mean cost", justify="right")
    table.add_column("win rate", justify="right")
    table.add_column("theta", justify="right")
    table.add_column("score", justify="right")
    table.add_column("chosen", justify="right")
    router = summary["router"]
    cells = ["[bold]router[/]"]
    if has_cost:
        cells.append(f"{router['mean_cost']:.6g}")
    cells += [f"{router['mean_win_rate']:.4f}", f"{router['theta']:+.3f}", f"{router['score']:.1f}", ""]
    table.add_row(*cells, end_section=True)
    for row in summary["models"]:
        style = None if row.get("fits_budget", True) else "dim"
        cells = [row["model"] + ("" if style is None else " (over budget)")]
        if has_cost:
            cells.append(f"{row['cost']:.6g}")
        scored = row["theta"] is not None
        cells += [
            f"{row['mean_win_rate']:.4f}",
            f"{row['theta']:+.3f}" if scored else "-",
            f"{row['score']:.1f}" if scored else "-",
            f"{row['chosen_share']:.1%}",
        ]
        table.add_row(*cells, style=style)
    return table


def sweep_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title=f"cost-quality curve ({rows[0]['scope']} budget)", title_justify="left")
    for name in ("budget", "mean cost", "win rate", "theta", "score", "price"):
        table.add_column(name, justify="right")
    for row in rows:
        price = "" if row["price"] is None else f"{row['price']:.4g}"
        table.add_row(
            f"{row['budget']:.6g}", f"{row['mean_cost']:.6g}", f"{row['mean_win_rate']:.4f}",
            f"{row['theta']:+.3f}", f"{row['score']:.1f}", price,
        )  # fmt: skip
    return table


def plot_curve(rows: list[dict], singles: list[dict], path: str | Path) -> None:
    """The router's cost-quality curve with every single model as a point."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            f"--plot {path}: needs matplotlib (pip install 'p2l-cli[plot]')"
        ) from None
    from p2l_cli.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([r["mean_cost"] for r in rows], [r["mean_win_rate"] for r in rows], "o-",
            label=f"router ({rows[0]['scope']} budget)")  # fmt: skip
    ax.scatter([s["cost"] for s in singles], [s["mean_win_rate"] for s in singles],
               marker="x", color="grey", label="single models")  # fmt: skip
    for s in singles:
        ax.annotate(s["model"], (s["cost"], s["mean_win_rate"]), fontsize=7, alpha=0.7)
    ax.set_xlabel("mean cost per prompt")
    ax.set_ylabel("mean win rate against the opponents")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fmt = Path(str(path)).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)


def single_models(problem: Problem) -> list[dict]:
    """Mean cost and win rate of always using each choosable model."""
    rates = problem.values.mean(axis=0)
    return [
        {"model": name, "cost": float(problem.costs[s]), "mean_win_rate": float(rates[s])}
        for s, name in enumerate(problem.names)
    ]
