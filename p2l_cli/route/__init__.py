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
- Strategies (``--strategy``, after the reference's cost optimisers): ``optimal`` is the LP
  above; ``simple-lp`` is the same LP with ``sigmoid(coef)`` in place of the win rates;
  ``strict`` takes each prompt's best model whose cost is at most the budget (no mixing).
- A price: every prompt independently takes ``argmax v - lambda c`` (:func:`route_by_price`),
  which routes a stream online with the price calibrated on an earlier batch.

The router's Bradley-Terry coefficient (Algorithm 1, last step) pools the prompts: it is the
``theta`` at which a model of fixed strength ``theta`` has, averaged over the prompts and over
opponents drawn from ``q``, the router's mean win rate (:func:`router_thetas`).

The package: :mod:`~p2l_cli.route.solver` (the pure LP solvers), :mod:`~p2l_cli.route.score`
(the router's coefficient), :mod:`~p2l_cli.route.problem` (a problem from predictions,
costs and opponents; summaries and sweeps) and :mod:`~p2l_cli.route.report` (tables, plot).
The costs file is :mod:`p2l_cli.contracts.costs`.
"""

from p2l_cli.route.problem import (
    Problem,
    build_problem,
    check_budget,
    choosable_models,
    cost_vector,
    leaderboard_theta,
    opponent_distribution,
    predict_prompts_table,
    route_problem,
    single_models,
    summarise,
    sweep,
)
from p2l_cli.route.score import router_thetas
from p2l_cli.route.solver import (
    SCOPES,
    SOLVERS,
    STRATEGIES,
    Routing,
    Scope,
    Solver,
    Strategy,
    choose,
    frontier,
    route_batch,
    route_batch_linprog,
    route_by_price,
    route_per_prompt,
    route_per_prompt_linprog,
    route_strict,
    solve_routing,
)

__all__ = [
    "SCOPES", "SOLVERS", "STRATEGIES", "Problem", "Routing", "Scope", "Solver", "Strategy",
    "build_problem", "check_budget", "choosable_models", "choose", "cost_vector", "frontier",
    "leaderboard_theta", "opponent_distribution", "predict_prompts_table", "route_batch",
    "route_batch_linprog", "route_by_price", "route_per_prompt", "route_per_prompt_linprog",
    "route_problem", "route_strict", "router_thetas", "single_models", "solve_routing",
    "summarise", "sweep",
]
