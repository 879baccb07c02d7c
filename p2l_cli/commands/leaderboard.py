"""`p2l leaderboard`: Arena leaderboards from battles, or aggregated from P2L predictions."""

from __future__ import annotations

from typing import Annotated

import typer

from p2l_cli.ui import QuietOption, console, set_quiet

INPUT, FIT, INTERVALS, VIEWS, OUTPUT = "Input", "Fit", "Intervals", "Views", "Output"


def leaderboard(
    input: Annotated[
        str,
        typer.Argument(
            help="Battles (model_a, model_b, winner: `p2l prepare` output or raw Arena data) "
            "or predictions (`p2l predict` output); '-' for stdin.",
            show_default=False,
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Write the table: .csv, .json, .jsonl, .parquet, "
                     ".md, or '-' for stdout.", rich_help_panel=OUTPUT),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help="Output format (csv, json, jsonl, parquet, md); "
                     "default from the extension, jsonl on stdout.", rich_help_panel=OUTPUT),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option("--plot", help="Draw scores with intervals to this image (png, svg, "
                     "pdf; needs matplotlib).", rich_help_panel=OUTPUT),
    ] = None,
    input_format: Annotated[
        str | None,
        typer.Option("--input-format", help="Input file type when the extension does not "
                     "say (parquet, jsonl, csv, json; stdin is sniffed).",
                     rich_help_panel=INPUT),
    ] = None,
    family: Annotated[
        str | None,
        typer.Option("--family", help="Likelihood: bt (ties dropped), bt-tie (tie = half a "
                     "win; LMArena's), rk, grk. Default: bt-tie for battles, the model's loss "
                     "for predictions.", rich_help_panel=FIT),
    ] = None,
    reweight: Annotated[
        bool,
        typer.Option("--reweight", help="Weight votes by inverse pair frequency "
                     "(1 / max(votes of the pair, 50)), as LMArena does.", rich_help_panel=FIT),
    ] = False,
    anchor: Annotated[
        str | None,
        typer.Option("--anchor", help="Shift scores so that MODEL scores VALUE, e.g. "
                     "'gpt-4o=1200'. Default: the mean model scores 1000 (grk: the "
                     "both-bad reference does).",
                     rich_help_panel=FIT),
    ] = None,
    ci: Annotated[
        str | None,
        typer.Option("--ci", help="Intervals: sandwich (robust, the default; for "
                     "predictions the delta method over prompts), bootstrap (resampling "
                     "votes, or prompts for predictions: a refit per round), none.",
                     rich_help_panel=INTERVALS),
    ] = None,
    bootstrap_rounds: Annotated[
        int, typer.Option("--bootstrap-rounds", help="Bootstrap resamples.",
                          rich_help_panel=INTERVALS),
    ] = 100,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the bootstrap.", rich_help_panel=INTERVALS)
    ] = 0,
    level: Annotated[
        float, typer.Option("--level", help="Confidence level of the intervals.",
                            rich_help_panel=INTERVALS),
    ] = 0.95,
    by: Annotated[
        str | None,
        typer.Option("--by", help="One leaderboard per value of this column (category, "
                     "language, ...) and a rank-by-group matrix.", rich_help_panel=VIEWS),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="This model's rank and score in every group of --by "
                     "(default: category), best first.", rich_help_panel=VIEWS),
    ] = None,
    prompt_index: Annotated[
        int | None,
        typer.Option("--prompt-index", help="Predictions: the leaderboard of the prompt in "
                     "this row (0-based).", rich_help_panel=VIEWS),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", "-n", help="Show and write only the best N models.",
                     rich_help_panel=VIEWS),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Leaderboard of models with confidence intervals, ranks tied where intervals overlap.

    From battles: the maximum-likelihood (Arena) leaderboard.

    From P2L predictions: the aggregate of all the prompts, or one prompt's (--prompt-index).

    Examples:

      p2l leaderboard data/train.parquet

      p2l leaderboard data/train.parquet --by category -o board.csv

      p2l leaderboard data/train.parquet --model gpt-4o --anchor gpt-4o=1200

      p2l leaderboard predictions.parquet --ci bootstrap --plot board.png
    """
    set_quiet(quiet)
    from p2l_cli.leaderboard import Request, run  # torch loads only when the command runs

    run(
        Request(
            source=input, input_format=input_format, output=output, output_format=format,
            family=family, ci=ci, rounds=bootstrap_rounds, seed=seed, level=level,
            anchor=anchor, reweight=reweight, by=by, model=model, prompt_index=prompt_index,
            top=top, plot_path=plot,
        ),
        console,
    )
