"""Routing library: costs files, win rates, the per-prompt and batch LPs, the price router,
sampling and the router's score, each checked against an independent computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize
from scipy.special import expit

from p2l_cli import route
from p2l_cli.errors import UserError
from p2l_cli.stats.winrates import win_rates_vs_opponents

# ----------------------------------------------------------------------------- helpers


def simulated_arena(n: int, m: int = 8, seed: int = 0, categories: int = 4):
    """Per-prompt coefficients with a strong category effect, and costs that rise with the
    models' overall strength (strong models are dear)."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.normal(0, 0.7, m))
    specialty = rng.normal(0, 1.2, (categories, m))
    category = rng.integers(0, categories, n)
    coefs = base + specialty[category] + rng.normal(0, 0.3, (n, m))
    costs = np.exp(1.5 * base + rng.normal(0, 0.2, m)) / 100
    return coefs, costs


def brute_force_value(v: np.ndarray, c: np.ndarray, budget: float) -> float:
    """Best expected win rate over every pure strategy and every two-model mixture whose
    expected cost is at most the budget (the LP has two constraints, so its optimum has at
    most two non-zero entries)."""
    best = max((v[i] for i in range(len(v)) if c[i] <= budget), default=-np.inf)
    for i, j in itertools.combinations(range(len(v)), 2):
        lo, hi = (i, j) if c[i] <= c[j] else (j, i)
        if c[lo] <= budget < c[hi]:
            share = (budget - c[lo]) / (c[hi] - c[lo])
            best = max(best, (1 - share) * v[lo] + share * v[hi])
    return best


def linprog_prompt(v: np.ndarray, c: np.ndarray, budget: float) -> float:
    res = optimize.linprog(-v, A_ub=[c], b_ub=[budget], A_eq=[np.ones_like(v)], b_eq=[1.0],
                           bounds=(0, None), method="highs")  # fmt: skip
    assert res.status == 0
    return -res.fun


def linprog_batch(values: np.ndarray, c: np.ndarray, budget: float) -> tuple[float, float]:
    """The batch LP written densely from scratch: (optimal mean win rate, budget price)."""
    n, m = values.shape
    a_eq = np.zeros((n, n * m))
    for z in range(n):
        a_eq[z, z * m : (z + 1) * m] = 1
    res = optimize.linprog(-values.ravel(), A_ub=[np.tile(c, n)], b_ub=[n * budget], A_eq=a_eq,
                           b_eq=np.ones(n), bounds=(0, None), method="highs")  # fmt: skip
    assert res.status == 0
    return -res.fun / n, -res.ineqlin.marginals[0]  # d(sum v)/d(n C) = d(mean v)/dC


def check_strategies(strategy: np.ndarray, most: int | None = None) -> None:
    assert (strategy >= 0).all()
    np.testing.assert_allclose(strategy.sum(axis=1), 1.0, atol=1e-12)
    if most is not None:
        assert ((strategy > 0).sum(axis=1) <= most).all()


def random_case(rng, n_max=6, m_max=7):
    n, m = int(rng.integers(1, n_max + 1)), int(rng.integers(1, m_max + 1))
    values = rng.random((n, m))
    costs = rng.random(m)
    if rng.random() < 0.4:  # ties in cost and in value
        costs = np.round(costs, 1)
        values = np.round(values, 1)
    budget = float(rng.uniform(costs.min(), costs.max() + 0.05))
    return values, costs, budget


# ------------------------------------------------------------------------- cost vector


def test_cost_vector_checks_names_against_the_model_list():
    models = ["a", "b", "c"]
    costs = {"a": 1.0, "b": 2.0}
    with pytest.raises(UserError, match="no cost for model 'c'"):
        route.cost_vector(costs, models, [0, 1, 2], "costs.yaml")
    # a model that may not be chosen needs no cost
    np.testing.assert_array_equal(route.cost_vector(costs, models, [0, 1], "costs.yaml"), [1, 2])
    with pytest.raises(UserError, match="'zzz'"):
        route.cost_vector({**costs, "c": 1.0, "zzz": 1.0}, models, [0, 1, 2], "costs.yaml")
    assert route.choosable_models(models, ["c", "a"]) == [0, 2]
    with pytest.raises(UserError, match="--models.*'d'"):
        route.choosable_models(models, ["a", "d"])


def test_budget_below_the_cheapest_model_names_the_smallest_budget():
    with pytest.raises(UserError, match=r"smallest feasible budget is 0\.002"):
        route.check_budget(0.001, np.array([0.01, 0.002, 0.005]), ["a", "b", "c"])
    route.check_budget(0.002, np.array([0.01, 0.002, 0.005]), ["a", "b", "c"])


# --------------------------------------------------------------------- win rates, opponents


def test_expected_win_rates_bt_match_a_direct_sum():
    rng = np.random.default_rng(1)
    coefs = rng.normal(size=(5, 4))
    q = np.array([0.1, 0.2, 0.3, 0.4])
    got = win_rates_vs_opponents(coefs, q, family="bt")
    for z, i in itertools.product(range(5), range(4)):
        direct = sum(q[a] / (1 + math.exp(coefs[z, a] - coefs[z, i])) for a in range(4))
        assert got[z, i] == pytest.approx(direct, abs=1e-12)


def test_expected_win_rates_rk_count_half_a_tie():
    rng = np.random.default_rng(2)
    coefs, eta = rng.normal(size=(3, 4)), np.array([20.0, 30.0, 45.0])
    q = np.full(4, 0.25)
    got = win_rates_vs_opponents(coefs, q, eta, family="rk")
    for z, i in itertools.product(range(3), range(4)):
        x = eta[z] - 22.5
        width = max(math.log1p(math.exp(0.1 * x)) / 0.1, 0.02)  # softplus with beta 0.1
        total = 0.0
        for a in range(4):
            d = coefs[z, i] - coefs[z, a]
            win, loss = expit(d - width), expit(-d - width)
            total += q[a] * (win + 0.5 * (1 - win - loss))
        assert got[z, i] == pytest.approx(total, abs=1e-10)


def test_opponents_uniform_top_k_and_file(tmp_path):
    models = ["a", "b", "c", "d"]
    coefs = np.array([[0.0, 2.0, 1.0, -1.0], [0.5, 1.5, 1.2, -1.0]])
    np.testing.assert_allclose(route.opponent_distribution("uniform", models, coefs, None, "bt"),
                               0.25)  # fmt: skip
    q = route.opponent_distribution("leaderboard-top-2", models, coefs, None, "bt")
    np.testing.assert_allclose(q, [0, 0.5, 0.5, 0])
    weights = tmp_path / "q.yaml"
    weights.write_text("a: 1\nc: 3\n")
    q = route.opponent_distribution(str(weights), models, coefs, None, "bt")
    np.testing.assert_allclose(q, [0.25, 0, 0.75, 0])
    weights.write_text("a: 1\nzz: 3\n")
    with pytest.raises(UserError, match="'zz'"):
        route.opponent_distribution(str(weights), models, coefs, None, "bt")
    with pytest.raises(UserError, match="between 1 and 4"):
        route.opponent_distribution("leaderboard-top-9", models, coefs, None, "bt")
    with pytest.raises(UserError, match="uniform"):
        route.opponent_distribution("nonsense", models, coefs, None, "bt")


# ----------------------------------------------------------------------------- solvers


def test_unconstrained_routing_takes_the_best_model_the_cheaper_on_ties():
    values = np.array([[0.2, 0.7, 0.7], [0.9, 0.1, 0.3]])
    costs = np.array([1.0, 3.0, 2.0])
    strategy = route.route_by_price(values, costs, 0.0).strategy
    np.testing.assert_array_equal(strategy.argmax(axis=1), [2, 0])


def test_unconstrained_choice_is_the_top_coefficient_for_every_family():
    # the win probability rises with a model's own coefficient in every family, so the best
    # expected win rate against any q belongs to the prompt's top coefficient
    rng = np.random.default_rng(3)
    coefs, eta = rng.normal(0, 2, size=(200, 6)), rng.normal(0, 3, 200)
    q = rng.dirichlet(np.ones(6))
    for family in ("bt", "rk", "grk"):
        values = win_rates_vs_opponents(coefs, q, eta + (25 if family == "rk" else 0), family)
        chosen = route.route_by_price(values, np.ones(6), 0.0).strategy.argmax(axis=1)
        np.testing.assert_array_equal(chosen, coefs.argmax(axis=1))


def test_per_prompt_lp_equals_brute_force_and_linprog():
    rng = np.random.default_rng(4)
    for _ in range(150):
        values, costs, budget = random_case(rng)
        strategy = route.route_per_prompt(values, costs, budget).strategy
        check_strategies(strategy, most=2)
        assert (strategy @ costs <= budget + 1e-12).all()
        got = (strategy * values).sum(axis=1)
        for z in range(len(values)):
            assert got[z] == pytest.approx(brute_force_value(values[z], costs, budget), abs=1e-12)
            assert got[z] == pytest.approx(linprog_prompt(values[z], costs, budget), abs=1e-9)


def test_frontier_is_concave_and_increasing():
    rng = np.random.default_rng(5)
    values, costs = rng.random((50, 9)), rng.random(9)
    hull = route.frontier(values, costs)
    for z in range(50):
        vertices = hull[z][hull[z] >= 0]
        c, v = costs[vertices], values[z, vertices]
        assert v[-1] == values[z].max()
        assert (np.diff(c) > 0).all() and (np.diff(v) > 0).all()
        slopes = np.diff(v) / np.diff(c)
        assert (np.diff(slopes) <= 1e-12).all()
        # no model lies above the frontier within its cost range
        inside = (costs >= c[0]) & (costs <= c[-1])
        assert (values[z, inside] <= np.interp(costs[inside], c, v) + 1e-12).all()


def test_batch_lp_equals_a_generic_lp_with_the_same_price():
    rng = np.random.default_rng(6)
    for trial in range(60):
        values, costs, budget = random_case(rng, n_max=8)
        routing = route.route_batch(values, costs, budget)
        check_strategies(routing.strategy)
        assert (routing.strategy @ costs).mean() <= budget + 1e-12
        value = (routing.strategy * values).sum(axis=1).mean()
        reference, price = linprog_batch(values, costs, budget)
        assert value == pytest.approx(reference, abs=1e-9)
        # strong duality: the price attains the dual bound
        dual = routing.price * budget + (values - routing.price * costs).max(axis=1).mean()
        assert dual == pytest.approx(value, abs=1e-9)
        if trial % 2 == 0 and (values.round(1) != values).any():  # generic: unique price
            assert routing.price == pytest.approx(price, rel=1e-6, abs=1e-9)


def brute_force_batch_value(values: np.ndarray, c: np.ndarray, budget: float) -> float:
    """Best mean win rate over every pure assignment of models to prompts, and every such
    assignment with one prompt moved part of the way to another model so that the mean cost
    is exactly the budget (a vertex of the batch LP has N + 1 constraints, so at most one
    prompt mixes two models)."""
    n, m = values.shape
    best = -np.inf
    for assignment in itertools.product(range(m), repeat=n):
        rows = np.arange(n)
        cost = c[list(assignment)].mean()
        value = values[rows, list(assignment)].mean()
        if cost <= budget + 1e-15:
            best = max(best, value)
        for z, j in itertools.product(range(n), range(m)):
            step = (c[j] - c[assignment[z]]) / n
            if step == 0:
                continue
            share = (budget - cost) / step
            if 0 < share < 1:
                best = max(best, value + share * (values[z, j] - values[z, assignment[z]]) / n)
    return best


def test_batch_lp_equals_brute_force_over_vertices():
    rng = np.random.default_rng(15)
    for _ in range(80):
        values, costs, budget = random_case(rng, n_max=4, m_max=4)
        strategy = route.route_batch(values, costs, budget).strategy
        check_strategies(strategy)
        assert ((strategy > 0).sum(axis=1) == 2).sum() <= 1  # one prompt mixes at most
        got = (strategy * values).sum(axis=1).mean()
        assert got == pytest.approx(brute_force_batch_value(values, costs, budget), abs=1e-12)


def test_batch_lp_with_highs_matches_the_exact_method():
    coefs, costs = simulated_arena(60, seed=7)
    values = win_rates_vs_opponents(coefs, np.full(8, 1 / 8))
    budget = float(np.quantile(costs, 0.5))
    exact = route.route_batch(values, costs, budget)
    highs = route.route_batch_linprog(values, costs, budget)
    rate = lambda r: (r.strategy * values).sum(axis=1).mean()
    assert rate(exact) == pytest.approx(rate(highs), abs=1e-9)
    assert exact.price == pytest.approx(highs.price, rel=1e-6)


def test_batch_is_never_worse_than_per_prompt_at_equal_cost():
    rng = np.random.default_rng(8)
    for _ in range(100):
        values, costs, budget = random_case(rng, n_max=10)
        per_prompt = route.route_per_prompt(values, costs, budget).strategy
        spent = float((per_prompt @ costs).mean())
        batch = route.route_batch(values, costs, spent).strategy
        assert (batch * values).sum(axis=1).mean() >= (per_prompt * values).sum(
            axis=1
        ).mean() - 1e-12


def test_batch_beats_per_prompt_on_a_simulated_arena():
    coefs, costs = simulated_arena(400, seed=9)
    values = win_rates_vs_opponents(coefs, np.full(8, 1 / 8))
    for budget in np.quantile(costs, [0.3, 0.5, 0.7]):
        per_prompt = route.route_per_prompt(values, costs, budget).strategy
        spent = float((per_prompt @ costs).mean())
        batch = route.route_batch(values, costs, spent).strategy
        gain = (batch * values).sum(axis=1).mean() - (per_prompt * values).sum(axis=1).mean()
        assert gain > 0.005


def test_price_router_meets_the_budget_on_held_out_prompts():
    coefs, costs = simulated_arena(6000, seed=10)
    values = win_rates_vs_opponents(coefs, np.full(8, 1 / 8))
    calibrate, held_out = values[:3000], values[3000:]
    budget = float(np.quantile(costs, 0.5))
    price = route.route_batch(calibrate, costs, budget).price
    assert price > 0
    routed = route.route_by_price(calibrate, costs, price).strategy @ costs
    assert routed.mean() <= budget + 1e-12  # the cheap side of the one mixed prompt
    spent = route.route_by_price(held_out, costs, price).strategy @ costs
    standard_error = spent.std() / math.sqrt(len(spent))
    assert abs(spent.mean() - budget) < 4 * standard_error * math.sqrt(2)


def test_solve_dispatches_scopes_and_solvers():
    coefs, costs = simulated_arena(30, seed=11)
    values = win_rates_vs_opponents(coefs, np.full(8, 1 / 8))
    budget = float(np.median(costs))
    for scope in route.SCOPES:
        exact = route.solve_routing(values, costs, budget, scope, solver="exact").strategy
        highs = route.solve_routing(values, costs, budget, scope, solver="highs").strategy
        np.testing.assert_allclose((exact * values).sum(1).mean(), (highs * values).sum(1).mean(),
                                   atol=1e-9)  # fmt: skip


# ------------------------------------------------------------------------------ sampling


def test_sampling_follows_the_strategy_and_deterministic_takes_the_mode():
    n = 20000
    strategy = np.tile([0.0, 0.3, 0.0, 0.7], (n, 1))
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    chosen = route.choose(strategy, costs, seed=3)
    assert set(np.unique(chosen)) == {1, 3}
    share = np.mean(chosen == 1)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    np.testing.assert_array_equal(chosen, route.choose(strategy, costs, seed=3))
    assert (route.choose(strategy, costs, None) == 3).all()
    tie = np.array([[0.5, 0.0, 0.5]])
    assert route.choose(tie, np.array([2.0, 0.0, 1.0]), None)[0] == 2  # the cheaper


# --------------------------------------------------------------------------- router score


def test_router_theta_pools_prompts_and_opponents():
    rng = np.random.default_rng(12)
    coefs = rng.normal(0, 1, (40, 5)) + rng.normal(0, 3, (40, 1))  # per-prompt offsets
    q = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    rate = 0.61
    theta = route.router_thetas(coefs, q, [rate])[0]
    centred = coefs - (coefs @ q)[:, None]
    direct = np.mean([sum(q[a] * expit(theta - centred[z, a]) for a in range(5))
                      for z in range(40)])  # fmt: skip
    assert direct == pytest.approx(rate, abs=1e-9)


def test_router_theta_of_one_model_on_one_prompt_is_its_coefficient():
    coefs = np.array([[0.3, -0.2, 1.1, 0.0]])
    q = np.full(4, 0.25)
    values = win_rates_vs_opponents(coefs, q)
    thetas = route.router_thetas(coefs, q, values[0])
    np.testing.assert_allclose(thetas, coefs[0] - coefs[0].mean(), atol=1e-8)


def test_router_theta_grk_keeps_the_absolute_scale():
    rng = np.random.default_rng(13)
    coefs, eta = rng.normal(0.5, 1, (30, 4)), rng.normal(0, 1, 30)
    q = np.full(4, 0.25)
    rate = 0.55
    theta = route.router_thetas(coefs, q, [rate], eta, "grk")[0]
    root = theta + (coefs @ q).mean()

    def preferred(a, b, e):  # grounded RK: p = 1/2 + (p_win - p_loss) / 2
        t = math.exp(e) + 1 + 1e-6
        win = math.exp(a) / (math.exp(a) + t * math.exp(b) + 1)
        loss = math.exp(b) / (math.exp(b) + t * math.exp(a) + 1)
        return 0.5 + 0.5 * (win - loss)

    direct = np.mean([sum(q[a] * preferred(root, coefs[z, a], eta[z]) for a in range(4))
                      for z in range(30)])  # fmt: skip
    assert direct == pytest.approx(rate, abs=1e-8)


def test_summary_orders_router_and_single_models():
    coefs, costs = simulated_arena(200, seed=14)
    models = [f"m{i}" for i in range(8)]
    problem = route.build_problem(models, "bt", coefs, None, "uniform", list(range(8)), costs)
    budget = float(np.quantile(costs, 0.6))
    routing = route.solve_routing(problem.values, costs, budget, "batch")
    chosen = route.choose(routing.strategy, costs, 0)
    summary = route.summarise(problem, routing, chosen, budget)
    fitting = [r for r in summary["models"] if r["fits_budget"]]
    assert {r["model"] for r in fitting} == {m for m, c in zip(models, costs) if c <= budget}
    best_single = max(r["mean_win_rate"] for r in fitting)
    assert summary["router"]["mean_win_rate"] > best_single
    assert summary["router"]["score"] > max(r["score"] for r in fitting)
    rates = [summary["router"]["mean_win_rate"], *(r["mean_win_rate"] for r in fitting)]
    scores = [summary["router"]["score"], *(r["score"] for r in fitting)]
    assert (np.diff(rates) < 0).all() and (np.diff(scores) < 0).all()  # same order
    assert all(r["score"] is None for r in summary["models"] if not r["fits_budget"])
    assert summary["router"]["mean_cost"] == pytest.approx(budget)
