"""A routing problem from predictions and choices: the choosable models, their costs, the
opponents, and each prompt's values; its solution summarised against every single model, and
the cost-quality curve over budgets."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from p2l_cli.contracts.costs import read_weights
from p2l_cli.errors import UserError
from p2l_cli.route.score import router_thetas
from p2l_cli.route.solver import STRATEGIES, Routing, Scope, Solver, Strategy, solve_routing
from p2l_cli.stats.aggregate import aggregate
from p2l_cli.stats.marginal import arena_scale
from p2l_cli.stats.winrates import win_rates_vs_opponents

_TOP_K = re.compile(r"^leaderboard-top-(\d+)$")


def _unknown(names, models: Sequence[str], where: str, what: str) -> None:
    known = set(models)
    for name in names:
        if name not in known:
            raise UserError(f"{where}: {what} {name!r} is not in the predictions' model list")


def choosable_models(models: Sequence[str], restrict: Sequence[str] | None) -> list[int]:
    """Indices of the models that routing may choose: all, or those named by ``--models``."""
    if restrict is None:
        return list(range(len(models)))
    names = list(restrict)
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

    @property
    def scores(self) -> np.ndarray:
        """``sigmoid(coef) [N, S]`` of the choosable models: the objective of the reference's
        ``simple-lp`` strategy."""
        return expit(self.coefs[:, self.choosable])


def route_problem(
    problem: Problem,
    budget: float | None = None,
    scope: Scope = "batch",
    price: float | None = None,
    solver: Solver = "exact",
    strategy: Strategy = "optimal",
) -> Routing:
    """:func:`solve_routing` on the problem with ``strategy`` (``simple-lp``'s objective is
    :attr:`Problem.scores`; its LP's dual price, in those units, is not reported)."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if price is not None and strategy != "optimal":
        raise UserError(f"--price routes with --strategy optimal, not {strategy}")
    scores = problem.scores if strategy == "simple-lp" else None
    routing = solve_routing(
        problem.values, problem.costs, budget, scope, price, solver, strategy, scores
    )
    return routing if strategy == "optimal" else Routing(routing.strategy)


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


def sweep(
    problem: Problem,
    budgets: Sequence[float],
    scope: Scope,
    solver: Solver,
    strategy: Strategy = "optimal",
    compare: Sequence[Strategy] = (),
) -> list[dict]:
    """The cost-quality curve: the router's mean cost, win rate and score at each budget with
    ``strategy``; for each strategy in ``compare``, the same under keys prefixed with its name
    (``strict_mean_cost``, ``simple_lp_mean_win_rate``, ...). Win rates are always the
    problem's values, whatever a strategy optimises."""
    for budget in budgets:
        check_budget(budget, problem.costs, problem.names)
    rows = [{"budget": float(budget), "scope": scope} for budget in budgets]
    for name in (strategy, *[s for s in compare if s != strategy]):
        prefix = "" if name == strategy else name.replace("-", "_") + "_"
        rates = []
        for row in rows:
            routing = route_problem(problem, row["budget"], scope, None, solver, name)
            rate = float((routing.strategy * problem.values).sum(axis=1).mean())
            rates.append(rate)
            row[prefix + "mean_cost"] = float((routing.strategy @ problem.costs).mean())
            row[prefix + "mean_win_rate"] = rate
            if not prefix:
                row["price"] = routing.price
        thetas = router_thetas(problem.coefs, problem.q, rates, problem.eta, problem.family)
        for row, theta in zip(rows, thetas):
            row[prefix + "theta"] = float(theta)
            row[prefix + "score"] = float(arena_scale(theta))
    return rows


def single_models(problem: Problem) -> list[dict]:
    """Mean cost and win rate of always using each choosable model."""
    rates = problem.values.mean(axis=0)
    return [
        {"model": name, "cost": float(problem.costs[s]), "mean_win_rate": float(rates[s])}
        for s, name in enumerate(problem.names)
    ]


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
