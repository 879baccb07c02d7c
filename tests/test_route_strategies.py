"""Routing strategies (``--strategy optimal|strict|simple-lp``), each checked against an
independent computation written here: a brute-force per-prompt choice for ``strict``,
``scipy.optimize.linprog`` set up from the reference's formula for ``simple-lp``
(``max sum_i p_i sigmoid(coef_i)  s.t.  sum_i p_i c_i <= C, sum_i p_i = 1, p >= 0``)."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import polars as pl
import pytest
from conftest import run_cli, run_p2l
from scipy import optimize
from scipy.special import expit

from p2l_cli import api, route
from p2l_cli import io as p2l_io
from p2l_cli.contracts.predictions import Predictions
from p2l_cli.errors import UserError

# ----------------------------------------------------------------------------- helpers


def arena(n: int, m: int = 6, seed: int = 0):
    """Per-prompt coefficients with specialists, and costs that rise with overall strength."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.normal(0, 0.8, m))
    specialty = rng.normal(0, 1.2, (3, m))
    coefs = base + specialty[rng.integers(0, 3, n)] + rng.normal(0, 0.4, (n, m))
    costs = np.exp(1.5 * base + rng.normal(0, 0.3, m)) / 100
    return coefs, costs


def uniform_win_rates(coefs: np.ndarray) -> np.ndarray:
    """bt win rates against a uniformly drawn opponent (itself included), written out."""
    return expit(coefs[:, :, None] - coefs[:, None, :]).mean(axis=2)


def problem_of(coefs: np.ndarray, costs: np.ndarray) -> route.Problem:
    models = [f"m{i}" for i in range(coefs.shape[1])]
    return route.build_problem(models, "bt", coefs, None, "uniform", list(range(len(models))),
                               costs)  # fmt: skip


def strict_brute_force(values: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """Per prompt, over every model that fits: the highest value, then the cheaper, then the
    lower index."""
    chosen = []
    for v in values:
        fits = [i for i in range(len(costs)) if costs[i] <= budget]
        chosen.append(min(fits, key=lambda i: (-v[i], costs[i], i)))
    return np.array(chosen)


def strict_reference(coefs: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """The reference's strict rule on the raw scores: scan the models in list order, skip
    those dearer than the budget, keep one whose score beats the best so far."""
    chosen = []
    for scores in coefs:
        best, best_score = None, -np.inf
        for i in range(len(costs)):
            if costs[i] <= budget and scores[i] > best_score:
                best, best_score = i, scores[i]
        chosen.append(best)
    return np.array(chosen)


def simple_lp_optimum(scores: np.ndarray, costs: np.ndarray, budget: float) -> float:
    """``max p . scores  s.t.  p . c <= C, sum p = 1, p >= 0`` with HiGHS (one prompt)."""
    res = optimize.linprog(-scores, A_ub=[costs], b_ub=[budget], A_eq=[np.ones_like(costs)],
                           b_eq=[1.0], bounds=[(0, None)] * len(costs), method="highs")  # fmt: skip
    assert res.status == 0, res.message
    return -res.fun


def batch_lp_optimum(objective: np.ndarray, costs: np.ndarray, budget: float) -> float:
    """``max mean_z p(z) . o(z)  s.t.  mean_z p(z) . c <= C``, one dense LP."""
    n, m = objective.shape
    a_eq = np.kron(np.eye(n), np.ones(m))
    res = optimize.linprog(-objective.ravel() / n, A_ub=[np.tile(costs, n) / n], b_ub=[budget],
                           A_eq=a_eq, b_eq=np.ones(n), bounds=(0, None), method="highs")  # fmt: skip
    assert res.status == 0, res.message
    return -res.fun


def mean_rate(strategy: np.ndarray, values: np.ndarray) -> float:
    return float((strategy * values).sum(axis=1).mean())


BUDGET_QUANTILES = (0.0, 0.2, 0.45, 0.7, 1.0)


def budgets_of(costs: np.ndarray) -> list[float]:
    lo, hi = costs.min(), costs.max()
    return [float(lo + q * (hi - lo)) for q in BUDGET_QUANTILES]


# ------------------------------------------------------------------------------ strict


@pytest.mark.parametrize("scope", ["batch", "prompt"])
def test_strict_is_the_best_affordable_model_per_prompt(scope):
    rng = np.random.default_rng(3)
    values = rng.integers(0, 5, (200, 6)) / 5.0  # many ties in value
    costs = np.array([0.3, 0.1, 0.3, 0.7, 0.1, 0.5])  # and in cost
    for budget in (0.1, 0.2, 0.3, 0.55, 0.7, 2.0):
        routing = route.solve_routing(values, costs, budget, scope, strategy="strict")
        assert routing.price is None
        assert set(np.unique(routing.strategy)) <= {0.0, 1.0}
        assert (routing.strategy.sum(axis=1) == 1).all()
        chosen = routing.strategy.argmax(axis=1)
        np.testing.assert_array_equal(chosen, strict_brute_force(values, costs, budget))
        assert (costs[chosen] <= budget).all()


def test_strict_agrees_with_the_reference_rule_on_the_coefficients():
    """The win rate against any opponents rises with the coefficient, so ranking by win
    rate (ours) and by coefficient (the reference's) pick the same model."""
    coefs, costs = arena(300, seed=1)
    problem = problem_of(coefs, costs)
    for budget in budgets_of(costs):
        routing = route.route_problem(problem, budget, "prompt", strategy="strict")
        np.testing.assert_array_equal(routing.strategy.argmax(axis=1),
                                      strict_reference(coefs, costs, budget))  # fmt: skip


def test_strict_without_a_budget_takes_the_best_model():
    coefs, costs = arena(50, seed=2)
    problem = problem_of(coefs, costs)
    routing = route.route_problem(problem, None, strategy="strict")
    np.testing.assert_array_equal(routing.strategy.argmax(axis=1), coefs.argmax(axis=1))


# --------------------------------------------------------------------------- simple-lp


def test_simple_lp_per_prompt_solves_the_references_lp():
    coefs, costs = arena(60, seed=4)
    problem = problem_of(coefs, costs)
    scores = expit(coefs)
    for budget in budgets_of(costs):
        routing = route.route_problem(problem, budget, "prompt", strategy="simple-lp")
        strategy = routing.strategy
        assert (strategy >= 0).all() and np.allclose(strategy.sum(axis=1), 1)
        assert (strategy @ costs <= budget + 1e-12).all()
        ours = (strategy * scores).sum(axis=1)
        expected = [simple_lp_optimum(scores[z], costs, budget) for z in range(len(coefs))]
        np.testing.assert_allclose(ours, expected, atol=1e-9)


def test_simple_lp_brute_force_on_a_tiny_case():
    """Three models: the optimum is a pure model or a two-model mix that spends the budget."""
    coefs = np.array([[-1.0, 0.5, 2.0], [0.3, 0.2, 0.1], [-2.0, 1.5, 1.6]])
    costs = np.array([1.0, 2.0, 4.0])
    problem = problem_of(coefs, costs)
    for budget in (1.0, 1.5, 2.0, 3.0, 4.0):
        routing = route.route_problem(problem, budget, "prompt", strategy="simple-lp")
        for z, s in enumerate(expit(coefs)):
            best = max(s[i] for i in range(3) if costs[i] <= budget)
            for i, j in itertools.combinations(range(3), 2):
                if costs[i] <= budget < costs[j]:
                    share = (budget - costs[i]) / (costs[j] - costs[i])
                    best = max(best, (1 - share) * s[i] + share * s[j])
            assert routing.strategy[z] @ s == pytest.approx(best, abs=1e-12)


def test_simple_lp_over_the_batch_solves_the_lp_on_the_scores():
    coefs, costs = arena(40, seed=5)
    problem = problem_of(coefs, costs)
    for budget in budgets_of(costs)[1:-1]:
        for solver in route.SOLVERS:
            routing = route.route_problem(problem, budget, "batch", None, solver, "simple-lp")
            assert (routing.strategy @ costs).mean() <= budget + 1e-9
            assert routing.price is None  # its dual price is not in win rate per unit cost
            assert mean_rate(routing.strategy, expit(coefs)) == pytest.approx(
                batch_lp_optimum(expit(coefs), costs, budget), abs=1e-8)


def test_simple_lp_without_a_budget_takes_the_highest_coefficient():
    coefs, costs = arena(50, seed=6)
    routing = route.route_problem(problem_of(coefs, costs), None, strategy="simple-lp")
    np.testing.assert_array_equal(routing.strategy.argmax(axis=1), coefs.argmax(axis=1))


def test_simple_lp_needs_scores_and_bad_strategies_are_refused():
    values, costs = np.full((2, 2), 0.5), np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="simple-lp"):
        route.solve_routing(values, costs, 1.5, strategy="simple-lp")
    with pytest.raises(ValueError, match="strategy 'greedy'"):
        route.solve_routing(values, costs, 1.5, strategy="greedy")
    with pytest.raises(ValueError, match="price"):
        route.solve_routing(values, costs, None, price=1.0, strategy="strict")


# ---------------------------------------------------------------- optimal, and comparisons


@pytest.mark.parametrize("scope", ["batch", "prompt"])
def test_optimal_is_unchanged_and_beats_the_others_on_win_rate(scope):
    differs = {"strict": False, "simple-lp": False}
    for seed in range(6):
        coefs, costs = arena(80, seed=10 + seed)
        problem = problem_of(coefs, costs)
        values = uniform_win_rates(coefs)
        np.testing.assert_allclose(problem.values, values, atol=1e-12)
        for budget in budgets_of(costs):
            optimal = route.route_problem(problem, budget, scope)
            default = route.solve_routing(values, costs, budget, scope)
            np.testing.assert_allclose(optimal.strategy, default.strategy, atol=1e-12)
            best = mean_rate(optimal.strategy, values)
            if scope == "batch":
                assert best == pytest.approx(batch_lp_optimum(values, costs, budget), abs=1e-8)
            elif seed == 0:  # the per-prompt LP, as linprog solves it
                expected = [simple_lp_optimum(v, costs, budget) for v in values]
                np.testing.assert_allclose((optimal.strategy * values).sum(axis=1), expected,
                                           atol=1e-9)  # fmt: skip
            for name in differs:
                other = mean_rate(route.route_problem(problem, budget, scope, strategy=name)
                                  .strategy, values)  # fmt: skip
                assert best >= other - 1e-12, (seed, budget, name)
                differs[name] |= best > other + 1e-6
    assert all(differs.values()), differs  # the strategies are not all the same


def test_sweep_reports_every_strategy():
    coefs, costs = arena(70, seed=20)
    problem = problem_of(coefs, costs)
    values = uniform_win_rates(coefs)
    budgets = budgets_of(costs)
    plain = route.sweep(problem, budgets, "prompt", "exact")
    rows = route.sweep(problem, budgets, "prompt", "exact", "optimal", route.STRATEGIES)
    for old, new in zip(plain, rows):  # the optimal columns are today's, first
        assert list(new)[: len(old)] == list(old)
        assert {k: new[k] for k in old} == pytest.approx(old)
    for row, budget in zip(rows, budgets):
        strict = strict_brute_force(values, costs, budget)
        assert row["strict_mean_cost"] == pytest.approx(costs[strict].mean())
        assert row["strict_mean_win_rate"] == pytest.approx(values[np.arange(70), strict].mean())
        assert row["simple_lp_mean_cost"] <= budget + 1e-12
        assert row["mean_win_rate"] >= row["strict_mean_win_rate"] - 1e-12
        assert row["mean_win_rate"] >= row["simple_lp_mean_win_rate"] - 1e-12
        assert np.isfinite([row["strict_score"], row["simple_lp_theta"]]).all()
    led = route.sweep(problem, budgets, "prompt", "exact", "strict", route.STRATEGIES)
    for row, other in zip(led, rows):
        assert row["mean_win_rate"] == other["strict_mean_win_rate"]
        assert row["optimal_mean_win_rate"] == other["mean_win_rate"]
        assert row["price"] is None


# ------------------------------------------------------------------------------------ API


def predictions(coefs: np.ndarray) -> Predictions:
    models = [f"m{i}" for i in range(coefs.shape[1])]
    return Predictions(models, "bt", "bt", coefs, None, pl.DataFrame({"i": range(len(coefs))}),
                       "<test>")  # fmt: skip


def test_route_prompts_takes_a_strategy():
    coefs, costs = arena(100, seed=30)
    preds = predictions(coefs)
    cost_map = {f"m{i}": float(c) for i, c in enumerate(costs)}
    budget = float(np.median(costs))
    strict = api.route_prompts(preds, cost_map, budget, scope="batch", strategy="strict")
    expected = strict_reference(coefs, costs, budget)
    assert strict["model"].to_list() == [f"m{i}" for i in expected]
    assert (strict["cost"].to_numpy() <= budget).all()
    simple = api.route_prompts(preds, cost_map, budget, scope="prompt", strategy="simple-lp",
                               seed=None)  # fmt: skip
    chosen = np.array([int(name[1:]) for name in simple["model"]])
    values = uniform_win_rates(coefs)
    np.testing.assert_allclose(simple["expected_win_rate"], values[np.arange(100), chosen])
    assert api.route_prompts(preds, cost_map, budget)["model"].to_list() == api.route_prompts(
        preds, cost_map, budget, strategy="optimal")["model"].to_list()
    with pytest.raises(UserError, match="--strategy 'cheap'"):
        api.route_prompts(preds, cost_map, budget, strategy="cheap")


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("strategies")
    coefs, costs = arena(120, m=5, seed=40)
    models = [f"m{i}" for i in range(5)]
    df = pl.DataFrame({"id": [f"p{i}" for i in range(120)],
                       "prompt": [[f"prompt {i}"] for i in range(120)],
                       "coefs": pl.Series(coefs.tolist(), dtype=pl.List(pl.Float32))})  # fmt: skip
    p2l_io.write_table(df, folder / "pred.parquet", meta={"models": models, "head": "bt",
                                                           "loss": "bt"})  # fmt: skip
    (folder / "costs.yaml").write_text("".join(f"{m}: {float(c)!r}\n" for m, c in zip(models, costs)))
    return folder, coefs.astype(np.float32).astype(np.float64), costs


def routes_of(stdout: bytes) -> pl.DataFrame:
    lines = stdout.decode().splitlines()
    if set(json.loads(lines[0])) == {"p2l"}:
        lines = lines[1:]
    return pl.read_ndjson(io.StringIO("\n".join(lines)))


def test_cli_strategy_routes(files):
    folder, coefs, costs = files
    budget = float(np.sort(costs)[2])
    base = ["route", folder / "pred.parquet", "-c", folder / "costs.yaml", "-b", budget,
            "-o", "-", "--drop-coefs", "-q"]  # fmt: skip
    result = run_cli(*base, "--strategy", "strict")
    assert result.exit_code == 0, result.output
    routes = routes_of(result.stdout_bytes)
    assert routes["model"].to_list() == [f"m{i}" for i in strict_reference(coefs, costs, budget)]
    result = run_cli(*base, "--strategy", "simple-lp", "--budget-scope", "prompt",
                     "--summary", folder / "simple.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    routes = routes_of(result.stdout_bytes)
    scores = expit(coefs)
    for z, entries in enumerate(routes["strategy"].to_list()):
        p = np.zeros(5)
        for entry in entries:
            p[int(entry["model"][1:])] = entry["prob"]
        assert p @ costs <= budget + 1e-9
        assert p @ scores[z] == pytest.approx(simple_lp_optimum(scores[z], costs, budget),
                                              abs=1e-6)  # fmt: skip
    summary = json.loads((folder / "simple.json").read_text())
    assert summary["strategy"] == "simple-lp"


def test_cli_sweep_shows_all_three_strategies(files):
    folder, coefs, costs = files
    budgets = budgets_of(costs)
    result = run_cli("route", folder / "pred.parquet", "-c", folder / "costs.yaml",
                     "--sweep", ",".join(map(repr, budgets)), "--budget-scope", "prompt",
                     "-o", folder / "curve.csv", "--summary", folder / "curve.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = [line.split("│")[1:3] for line in result.stderr.splitlines() if "│" in line]
    assert [(b.strip(), s.strip()) for b, s in shown[:3]] == [
        (f"{budgets[0]:.6g}", name) for name in ("optimal", "strict", "simple-lp")]
    curve = pl.read_csv(folder / "curve.csv")
    assert curve.columns[:7] == ["budget", "scope", "mean_cost", "mean_win_rate", "price",
                                 "theta", "score"]  # fmt: skip
    values = uniform_win_rates(coefs)
    for row, budget in zip(curve.iter_rows(named=True), budgets):
        strict = strict_brute_force(values, costs, budget)
        assert row["strict_mean_win_rate"] == pytest.approx(values[np.arange(120), strict].mean())
        assert row["simple_lp_mean_cost"] <= budget + 1e-9
        assert row["mean_win_rate"] >= max(row["strict_mean_win_rate"],
                                           row["simple_lp_mean_win_rate"]) - 1e-12  # fmt: skip
    saved = json.loads((folder / "curve.json").read_text())["curve"]
    assert [r["simple_lp_mean_cost"] for r in saved] == pytest.approx(
        curve["simple_lp_mean_cost"].to_list())


def test_cli_sweep_plot_draws_three_curves(files, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    labels = []
    original = Axes.plot

    def plot(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    folder, _, costs = files
    result = run_cli("route", folder / "pred.parquet", "-c", folder / "costs.yaml",
                     "--sweep", ",".join(map(repr, budgets_of(costs))), "--plot",
                     folder / "curve.png", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (folder / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert labels == ["router (batch budget), optimal", "router, strict", "router, simple-lp"]


def test_cli_bad_strategy_exits_2_with_one_line(files):
    folder, _, _ = files
    proc = run_p2l("route", folder / "pred.parquet", "-c", folder / "costs.yaml", "-b", "1",
                   "--strategy", "greedy")  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b""
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "--strategy 'greedy'" in err and "optimal, strict, simple-lp" in err
    result = run_cli("route", folder / "pred.parquet", "-c", folder / "costs.yaml",
                     "--price", "3", "--strategy", "strict")  # fmt: skip
    assert result.exit_code == 2 and "--price" in result.stderr
