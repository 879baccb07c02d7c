"""Routing as a linear programme, solved exactly: given each prompt's values ``v [N, S]``
(expected win rates of the choosable models) and their costs ``c [S]``, a strategy per
prompt under a price, a budget per prompt, or a budget over the batch (see
:mod:`p2l_cli.route`). Pure: arrays in, :class:`Routing` out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, sparse

Scope = Literal["batch", "prompt"]
Solver = Literal["exact", "highs"]
Strategy = Literal["optimal", "strict", "simple-lp"]
SCOPES: tuple[Scope, ...] = ("batch", "prompt")
SOLVERS: tuple[Solver, ...] = ("exact", "highs")
STRATEGIES: tuple[Strategy, ...] = ("optimal", "strict", "simple-lp")


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


def route_strict(values: np.ndarray, costs: np.ndarray, budget: float) -> Routing:
    """Each prompt to its best single model among those that cost at most ``budget`` (the
    cheaper on ties): no mixing, and the budget caps every prompt's cost."""
    affordable = costs <= budget
    if not affordable.any():
        raise ValueError(f"budget {budget:g}: no model costs that little")
    order = _cheapest_first(costs)
    masked = np.where(affordable[order], values[:, order], -np.inf)
    best = order[np.argmax(masked, axis=1)]
    strategy = np.zeros_like(values)
    strategy[np.arange(len(values)), best] = 1.0
    return Routing(strategy)


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
    scope: Scope = "batch",
    price: float | None = None,
    solver: Solver = "exact",
    strategy: Strategy = "optimal",
    scores: np.ndarray | None = None,
) -> Routing:
    """Route with a price, a budget (per prompt or over the batch) or neither (then
    ``costs`` may be ``None``).

    ``strategy``: ``"optimal"`` maximises the win rates ``values``; ``"simple-lp"`` solves
    the same LP with ``scores [N, S]`` (the reference's ``sigmoid(coef)``) as its objective;
    ``"strict"`` takes each prompt's best model by ``values`` among those whose cost is at
    most the budget, whatever the scope (a per-prompt cap also caps the mean). A price is
    for ``"optimal"`` only."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if strategy == "simple-lp":
        if scores is None or scores.shape != values.shape:
            raise ValueError("strategy 'simple-lp' needs scores shaped like the values")
        values = scores
    if price is not None and strategy != "optimal":
        raise ValueError(f"a price routes with strategy 'optimal', not {strategy!r}")
    if scope not in SCOPES:
        raise ValueError(f"budget scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r}: expected one of {', '.join(SOLVERS)}")
    costs = np.zeros(values.shape[1]) if costs is None else costs
    if price is not None:
        return route_by_price(values, costs, price)
    if budget is None:
        return route_by_price(values, costs, 0.0)
    if strategy == "strict":
        return route_strict(values, costs, budget)
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
