"""`p2l route`: send each prompt to the model that wins most often for it, within a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2l_cli.errors import UserError
from p2l_cli.ui import QuietOption, console, set_quiet

BUDGET, CHOICE, OUTPUT = "Budget", "Models and opponents", "Output"


def route(
    input: Annotated[
        str,
        typer.Argument(
            help="Predictions (Parquet/JSONL from `p2l predict`; '-' for stdin), or prompts "
            "with --model.",
            show_default=False,
        ),
    ],
    costs: Annotated[
        Path | None,
        typer.Option(
            "--costs", "-c", help="YAML/JSON/CSV: model -> cost of one answer.",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget", "-b", help="Expected cost per prompt (without it: the best model).",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    budget_scope: Annotated[
        str,
        typer.Option(
            "--budget-scope",
            help="'batch': the mean cost over the input is at most the budget (one LP; "
            "reports its price); 'prompt': every prompt's expected cost is.",
            rich_help_panel=BUDGET,
        ),
    ] = "batch",
    price: Annotated[
        float | None,
        typer.Option(
            "--price", help="Route each prompt alone to argmax win rate - PRICE x cost (the "
            "price a batch run reported).", rich_help_panel=BUDGET,
        ),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy", help="'optimal': the LP on the win rates; 'strict': each prompt's "
            "best model costing at most the budget; 'simple-lp': the LP on sigmoid(coef).",
            rich_help_panel=BUDGET,
        ),
    ] = "optimal",
    solver: Annotated[
        str,
        typer.Option(
            "--solver", help="'exact': the frontier/dual method; 'highs': scipy's linprog "
            "(slow on large inputs; for checking).", rich_help_panel=BUDGET,
        ),
    ] = "exact",
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep", help="Comma-separated budgets: print the cost-quality curves of all "
            "three strategies (and write them with -o) instead of routing.",
            rich_help_panel=BUDGET,
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option("--models", help="Comma-separated models that may be chosen.",
                     rich_help_panel=CHOICE),
    ] = None,
    opponents: Annotated[
        str,
        typer.Option(
            "--opponents", help="Opponents q for the win rate: 'uniform', 'leaderboard-top-K' "
            "or a YAML/JSON/CSV file of model -> weight.", rich_help_panel=CHOICE,
        ),
    ] = "uniform",
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="A P2L model: INPUT holds prompts to predict first.",
                     rich_help_panel=CHOICE),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for sampling mixed strategies.",
                          rich_help_panel=OUTPUT),
    ] = 0,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Take each strategy's most likely model.",
                           rich_help_panel=OUTPUT),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Routes (.parquet/.jsonl/.csv/.json; '-' stdout).",
                     rich_help_panel=OUTPUT),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="Output format, overriding the extension.",
                     rich_help_panel=OUTPUT),
    ] = None,
    drop_coefs: Annotated[
        bool, typer.Option("--drop-coefs", help="Leave the coefs and eta columns out.",
                           rich_help_panel=OUTPUT),
    ] = False,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="Write the summary (or the sweep) as JSON.",
                     rich_help_panel=OUTPUT),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="With --sweep: draw the curve (needs matplotlib).",
                     rich_help_panel=OUTPUT),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Route prompts to models by their per-prompt leaderboards, within a cost budget.

    Without --budget, each prompt goes to its best model.

    --budget-scope batch (default): the mean expected cost is at most the budget (one LP).

    --budget-scope prompt: every prompt's expected cost is.

    --strategy strict / simple-lp: the reference's simpler optimisers, for comparison.

    Examples:

      p2l route preds.parquet -c costs.yaml --budget 0.002 -o routes.parquet

      p2l predict model/ prompts.jsonl -o - | p2l route - -c costs.yaml -b 0.002

      p2l route prompts.jsonl --model model/ -c costs.yaml --price 120 -o -

      p2l route preds.parquet -c costs.yaml --sweep 0.001,0.002,0.004 --plot curve.png
    """
    set_quiet(quiet)
    from p2l_cli import io  # polars/pyarrow, and numpy/torch/scipy: only when routing
    from p2l_cli import route as lib
    from p2l_cli.contracts.costs import read_costs
    from p2l_cli.contracts.predictions import predictions_from_frame
    from p2l_cli.route import report

    check_options(costs, budget, budget_scope, price, solver, sweep, plot, strategy)
    outputs = {"--output/-o": output, "--summary": summary, "--plot": plot}
    opponents_file = opponents if Path(opponents).is_file() else None
    io.refuse_overwriting_inputs(
        outputs, {"INPUT": input, "--costs": costs, "--opponents": opponents_file}
    )
    for option, path in outputs.items():
        io.check_writable(path, option)
    source = io.source_name(input)
    if model is None:
        df, meta = io.read_table_meta(input)
    else:
        df, meta = lib.predict_prompts_table(model, input)
    preds = predictions_from_frame(df, meta, source)
    choosable = lib.choosable_models(preds.models, model_names(models))
    cost_vector = None
    if costs is not None:
        cost_vector = lib.cost_vector(read_costs(costs), preds.models, choosable, str(costs))
    problem = lib.build_problem(
        preds.models, preds.family, preds.coefs, preds.eta, opponents, choosable, cost_vector
    )
    if sweep is not None:
        rows = lib.sweep(problem, parse_budgets(sweep), budget_scope, solver, strategy,
                         lib.STRATEGIES)  # fmt: skip
        console.print(report.sweep_table(rows, strategy))
        if output is not None:
            import polars as pl

            io.write_table(pl.DataFrame(rows), output, fmt)
        if summary is not None:
            io.write_json(summary, {"curve": rows, "models": lib.single_models(problem)})
        if plot is not None:
            report.plot_curve(rows, lib.single_models(problem), plot, strategy)
        return
    if budget is not None:
        lib.check_budget(budget, cost_vector, problem.names)
    routing = lib.route_problem(problem, budget, budget_scope, price, solver, strategy)
    chosen = lib.choose(routing.strategy, cost_vector, None if deterministic else seed)
    result = lib.summarise(problem, routing, chosen, budget)
    result["scope"] = budget_scope if budget is not None else None
    if strategy != "optimal":
        result["strategy"] = strategy
    if output is not None:
        frame = report.routes_frame(df, problem, routing, chosen, drop_coefs)
        io.write_table(frame, output, fmt, meta=None if drop_coefs else meta)
    console.print(report.summary_tables(result))
    if summary is not None:
        io.write_json(summary, result)


def check_options(costs, budget, scope, price, solver, sweep, plot, strategy="optimal") -> None:
    """Reject option combinations that make no sense, before any work."""
    from p2l_cli.route import SCOPES, SOLVERS, STRATEGIES

    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if price is not None and strategy != "optimal":
        raise UserError(f"--price routes with --strategy optimal, not {strategy}")
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




def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--sweep {text!r}: expected comma-separated numbers") from None
    if not budgets:
        raise UserError("--sweep: no budgets given")
    return budgets


def model_names(text: str | None) -> list[str] | None:
    """``--models a,b``: the names, or ``None`` (every model)."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError("--models: no model names given")
    return names
