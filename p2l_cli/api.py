"""The Python API: the few calls a notebook needs, on plain Python and polars values.

    import p2l_cli as p2l

    board = p2l.fit_leaderboard("data/train.parquet")          # the marginal Arena leaderboard
    board, style = p2l.fit_style_leaderboard("data/train.parquet")  # with style held fixed
    model = p2l.load_model("model/")
    preds = p2l.predict_leaderboards(model, ["write a haiku about rust", "prove sqrt 2 is irrational"])
    overall = p2l.aggregate(preds)                              # one leaderboard for the prompts
    routes = p2l.route_prompts(preds, costs="costs.yaml", budget=0.002)  # or a dict of costs
    p2l.extend_model("model/", "new_votes.parquet", "model-plus/")  # new models, no retraining

The names differ from the command modules' (``p2l_cli.predict``, ``p2l_cli.route``,
``p2l_cli.extend``) so that importing those never hides a call.

Each call is what the command of the same name does, without files in between: the same
readers, fits and solvers. Bad input raises :class:`p2l_cli.errors.UserError` (a
``ValueError``) with the message the command would print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from p2l_cli.contracts.predictions import Predictions
from p2l_cli.contracts.prompts import prompt_turns
from p2l_cli.errors import UserError

Interval = Literal["sandwich", "bootstrap", "none"]


@dataclass
class Model:
    """A loaded P2L model: the network, its tokenizer, and the models it ranks."""

    network: Any
    tokenizer: Any
    source: str

    @property
    def models(self) -> list[str]:
        return list(self.network.info.model_list)

    @property
    def family(self) -> str:
        return self.network.info.family


def fit_leaderboard(
    battles: str | Path | pl.DataFrame,
    family: str = "bt-tie",
    ci: Interval = "sandwich",
    level: float = 0.95,
) -> pl.DataFrame:
    """The marginal leaderboard of battles (a file or a table with ``model_a``, ``model_b``
    and ``winner``): one row per model, best first, with ``rank``, ``model``, ``score``
    (Arena scale), ``lower``, ``upper``, ``votes``, ``win_rate`` and ``theta``."""
    from p2l_cli.leaderboard import battles_from_frame, load_input, marginal_leaderboard

    if isinstance(battles, pl.DataFrame):
        data = battles_from_frame(battles, "<battles>")
    else:
        data = load_input(str(battles))
        if isinstance(data, Predictions):
            raise UserError(f"{battles}: holds predictions; use aggregate() for those")
    return marginal_leaderboard(data, family=family, ci=ci, level=level).table


def fit_style_leaderboard(
    battles: str | Path | pl.DataFrame,
    family: str = "bt-tie",
    ci: Interval = "sandwich",
    level: float = 0.95,
    reweight: bool = True,
    reg: float = 1.0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The style-controlled leaderboard of battles that carry style columns (``p2l
    leaderboard --style-control``): the table of :func:`fit_leaderboard` with the answers'
    style held fixed, and the style coefficients (``feature``, ``coefficient``,
    ``coefficient_lower``, ``coefficient_upper``, ``points_per_sd``). ``reweight`` and
    ``reg`` default to LMArena's choices."""
    from p2l_cli.leaderboard import battles_from_frame, load_input
    from p2l_cli.leaderboard.fit import style_leaderboard
    from p2l_cli.leaderboard.report import style_table

    if isinstance(battles, pl.DataFrame):
        data = battles_from_frame(battles, "<battles>", style=True)
    else:
        data = load_input(str(battles), style=True)
    board = style_leaderboard(data, family=family, ci=ci, reweight=reweight, level=level,
                              reg=reg)
    return board.table, style_table(board.meta["style"])


def load_model(source: str | Path, device: str = "auto", dtype: str = "auto") -> Model:
    """A model folder written by ``p2l train`` (or ``p2l extend``), a published P2L
    checkpoint folder, or a Hub id already in the local cache."""
    from p2l_cli.predict import load_for_inference

    network, tokenizer = load_for_inference(source, device=device, dtype=dtype)
    return Model(network, tokenizer, str(source))


def predict_leaderboards(model: Model, prompts: Sequence[Any]) -> Predictions:
    """Each prompt's coefficients (``.coefs [N, M]``, in ``model.models`` order; ``.eta``
    for rk and grk heads). A prompt is a string, a list of user turns, or an OpenAI-style
    ``messages`` list."""
    from p2l_cli.predict import predict_prompts

    turns = []
    for number, prompt in enumerate(prompts):
        try:
            turns.append(prompt_turns(prompt))
        except ValueError as exc:
            raise UserError(f"prompt {number}: {exc}") from None
    coefs, eta = predict_prompts(model.network, model.tokenizer, turns)
    return Predictions(
        models=model.models, family=model.family, head=model.network.info.head_type,
        coefs=coefs, eta=None if eta is None else eta.astype(np.float64),
        frame=pl.DataFrame({"prompt": turns}), source=model.source, model_dir=model.source,
    )  # fmt: skip


def aggregate(predictions: Predictions, ci: Interval = "sandwich", level: float = 0.95,
              seed: int = 0) -> pl.DataFrame:  # fmt: skip
    """One leaderboard for all the prompts of ``predictions`` (the paper's aggregation), with
    intervals over resampled prompts; the columns of :func:`fit_leaderboard`."""
    from p2l_cli.leaderboard import aggregate_leaderboard

    return aggregate_leaderboard(predictions, ci=ci, seed=seed, level=level).table


def route_prompts(
    predictions: Predictions,
    costs: Mapping[str, float] | str | Path | None = None,
    budget: float | None = None,
    scope: Literal["batch", "prompt"] = "batch",
    models: Sequence[str] | None = None,
    seed: int | None = 0,
    strategy: Literal["optimal", "strict", "simple-lp"] = "optimal",
) -> pl.DataFrame:
    """A model per prompt that maximises the expected win rate against uniform opponents;
    with ``costs`` (model -> cost of one answer, or a costs file) and ``budget``, within a mean cost of
    ``budget`` over the prompts (``scope="batch"``) or on every prompt (``"prompt"``).
    The optimum may mix two models on a prompt: one is drawn with ``seed`` (``None``: the
    more likely one). ``strategy`` (``p2l route --strategy``): ``"strict"`` takes each
    prompt's best model costing at most ``budget``; ``"simple-lp"`` solves the LP with
    ``sigmoid(coef)`` in place of the win rates. Columns: ``model``, ``expected_win_rate``,
    and ``cost`` with costs."""
    from p2l_cli.route import (
        build_problem,
        check_budget,
        choosable_models,
        choose,
        cost_vector,
        route_problem,
    )

    if budget is not None and costs is None:
        raise UserError("a budget needs costs")
    if isinstance(costs, (str, Path)):
        costs = read_costs(costs)
    choosable = choosable_models(predictions.models, models)
    cost = None if costs is None else cost_vector(dict(costs), predictions.models, choosable,
                                                  "costs")  # fmt: skip
    if budget is not None:
        check_budget(budget, cost, [predictions.models[i] for i in choosable])
    problem = build_problem(predictions.models, predictions.family, predictions.coefs,
                            predictions.eta, "uniform", choosable, cost)  # fmt: skip
    routing = route_problem(problem, budget, scope, strategy=strategy)
    chosen = choose(routing.strategy, cost, seed)
    columns = {
        "model": [problem.names[s] for s in chosen],
        "expected_win_rate": problem.values[np.arange(len(chosen)), chosen],
    }
    if cost is not None:
        columns["cost"] = cost[chosen]
    return pl.DataFrame(columns)


def read_costs(path: str | Path) -> dict[str, float]:
    """A costs file (YAML, JSON or CSV; the ``p2l route --costs`` format) as a dict."""
    from p2l_cli.contracts.costs import read_costs as read

    return read(path)


def extend_model(model: str | Path, votes: str | Path, out: str | Path,
                 rating_only: bool = False, overwrite: bool = False):  # fmt: skip
    """``p2l extend``: write to ``out`` the model with the models of ``votes`` added, without
    retraining. Returns what was done (new models, votes, the cross-validation)."""
    from p2l_cli.extend import extend_p2l

    return extend_p2l(model, votes, out, rating_only=rating_only, overwrite=overwrite)
