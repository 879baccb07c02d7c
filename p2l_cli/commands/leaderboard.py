"""`p2l leaderboard`: Arena leaderboards from battles, or aggregated from P2L predictions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import typer

from p2l_cli.errors import UserError
from p2l_cli.ui import QuietOption, console, set_quiet

INPUT, FIT, INTERVALS, VIEWS, OUTPUT = "Input", "Fit", "Intervals", "Views", "Output"
DEFAULT_GROUP = "category"  # what --model groups by when --by is not given


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
                     "win; LMArena's), rk, grk, rk-reparam, ba. Default: bt-tie for battles, "
                     "the model's loss for predictions.", rich_help_panel=FIT),
    ] = None,
    reweight: Annotated[
        bool | None,
        typer.Option("--reweight/--no-reweight", help="Weight votes by inverse pair "
                     "frequency (1 / max(votes of the pair, 50)), as LMArena does. Default: "
                     "on with --style-control (LMArena's style-control view), off otherwise.",
                     rich_help_panel=FIT, show_default=False),
    ] = None,
    style_control: Annotated[
        bool,
        typer.Option("--style-control", help="Hold the answers' style fixed: a contextual "
                     "model with the relative differences in length, headers, bold and "
                     "lists (the battles' style columns, z-scored) as vote features. Prints "
                     "the style coefficients beside the table.", rich_help_panel=FIT),
    ] = False,
    style_reg: Annotated[
        float,
        typer.Option("--style-reg", help="L2 penalty on the style coefficients, added as "
                     "reg/2 |beta|^2 to the mean NLL (LMArena's default 1.0 shrinks them "
                     "strongly; 0 is the plain maximum likelihood).", rich_help_panel=FIT),
    ] = 1.0,
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

      p2l leaderboard data/train.parquet --style-control --by category

      p2l leaderboard predictions.parquet --ci bootstrap --plot board.png
    """
    set_quiet(quiet)
    run(
        Request(
            source=input, input_format=input_format, output=output, output_format=format,
            family=family, ci=ci, rounds=bootstrap_rounds, seed=seed, level=level,
            anchor=anchor, reweight=reweight, by=by, model=model, prompt_index=prompt_index,
            top=top, plot_path=plot, style_control=style_control, style_reg=style_reg,
        ),
        console,
    )


def parse_anchor(text: str) -> tuple[str, float]:
    model, sep, value = text.rpartition("=")
    try:
        if not sep or not model:
            raise ValueError
        return model, float(value)
    except ValueError:
        raise UserError(f"--anchor {text!r}: expected MODEL=VALUE, e.g. gpt-4o=1200") from None



@dataclass
class Request:
    """What ``p2l leaderboard`` was asked for (the command's options, validated)."""

    source: str
    input_format: str | None = None
    output: str | None = None
    output_format: str | None = None
    family: str | None = None
    ci: str | None = None
    rounds: int = 100
    seed: int = 0
    level: float = 0.95
    anchor: str | None = None
    reweight: bool | None = None  # None: on with style control, off otherwise
    by: str | None = None
    model: str | None = None
    prompt_index: int | None = None
    top: int | None = None
    plot_path: str | None = None
    style_control: bool = False
    style_reg: float = 1.0


def _check(request: Request) -> None:
    from p2l_cli import io
    from p2l_cli.leaderboard.report import output_format

    if request.rounds < 2:
        raise UserError(f"--bootstrap-rounds {request.rounds}: need at least 2")
    if not 0 < request.level < 1:
        raise UserError(f"--level {request.level}: expected a number between 0 and 1")
    if not request.style_reg >= 0:
        raise UserError(f"--style-reg {request.style_reg}: expected a number >= 0")
    if request.top is not None and request.top < 1:
        raise UserError(f"--top {request.top}: expected a positive number")
    if request.prompt_index is not None and (request.by or request.model):
        raise UserError(f"--prompt-index and --{'by' if request.by else 'model'} cannot be "
                        "combined")
    if request.output:
        output_format(request.output, request.output_format)
    outputs = {"--output/-o": request.output, "--plot": request.plot_path}
    io.refuse_overwriting_inputs(outputs, {"INPUT": request.source})
    for option, path in outputs.items():
        io.check_writable(path, option)


def run(request: Request, console) -> None:
    """Build the leaderboard(s), print them on ``console`` and write/plot what was asked."""
    # torch loads only when the command runs
    from p2l_cli.leaderboard.fit import (
        anchor_table,
        build_leaderboard,
        grouped_leaderboards,
        long_table,
        model_view,
        rank_matrix,
    )
    from p2l_cli.leaderboard.inputs import load_input
    from p2l_cli.leaderboard.report import describe, render

    _check(request)
    anchor = parse_anchor(request.anchor) if request.anchor else None
    if request.model and not request.by:
        data = load_input(request.source, request.input_format, DEFAULT_GROUP, request.family,
                          by_required=False, style=request.style_control)
        if data.groups is None:
            raise UserError(f"--model shows one model across groups; add --by COLUMN (the "
                            f"input has no {DEFAULT_GROUP!r} column)")
        request = replace(request, by=DEFAULT_GROUP)
    else:
        data = load_input(request.source, request.input_format, request.by, request.family,
                          style=request.style_control)
    reweight = request.style_control if request.reweight is None else request.reweight
    options = {"family": request.family, "ci": request.ci, "rounds": request.rounds,
               "seed": request.seed, "reweight": reweight,
               "prompt_index": request.prompt_index, "level": request.level,
               "style_control": request.style_control, "style_reg": request.style_reg}
    overall = build_leaderboard(data, **options)
    _warn(console, overall)
    if anchor:
        overall.table = anchor_table(overall.table, *anchor)
    head = describe(overall)
    if not request.by:
        table = overall.table.head(request.top) if request.top else overall.table
        console.print(render(table, f"Leaderboard: {head}"))
        _print_style(console, overall, "Style")
        _finish(request, table, {"leaderboard": overall.table}, overall, head)
        return

    boards = grouped_leaderboards(data, **options)
    if not boards:
        raise UserError(f"--by {request.by}: no group has enough votes for a leaderboard")
    if anchor:
        for board in boards.values():
            if anchor[0] in board.table.get_column("model").to_list():
                board.table = anchor_table(board.table, *anchor)
    if request.model:
        for name, board in boards.items():
            _warn(console, board, f"{request.by} = {name}: ")
        table = model_view(boards, request.model, request.by)
        sizes = sorted(set(table.get_column("models").to_list()))
        among = f"{sizes[0]} models" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]} models"
        console.print(render(table, f"{request.model} by {request.by}: {overall.family}, "
                                    f"ranks of {among}"))
        _finish(request, table, {request.model: table}, overall, head)
        return
    for name, board in boards.items():
        table = board.table.head(request.top) if request.top else board.table
        _warn(console, board, f"{request.by} = {name}: ")
        console.print(render(table, f"{request.by} = {name}: {describe(board)}"))
        _print_style(console, board, f"Style, {request.by} = {name}")
    if request.style_control:
        overall.meta["style_by_group"] = {name: b.meta["style"] for name, b in boards.items()}
    matrix = rank_matrix(boards, overall, request.top)
    console.print(render(matrix, f"Rank by {request.by} (overall: {head})"))
    stacked = long_table({k: replace(b, table=b.table.head(request.top) if request.top
                                     else b.table) for k, b in boards.items()}, request.by)
    panels = {name: (b.table.head(request.top) if request.top else b.table)
              for name, b in boards.items()}
    _finish(request, stacked, panels, overall, head)


def _print_style(console, board, title: str) -> None:
    from p2l_cli.leaderboard.report import render_style

    if board.meta.get("style"):
        console.print(render_style(board.meta["style"], board.meta.get("level", 0.95), title))


def _warn(console, board, prefix: str = "") -> None:
    """What the votes cannot support, said on stderr before the table (see VoteSupport)."""
    from rich.markup import escape

    for message in board.meta.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(prefix + message)}", soft_wrap=True)


def _finish(request: Request, table, panels: dict,
            overall, head: str) -> None:
    from p2l_cli.leaderboard.report import plot, write_output

    meta = {"family": overall.family, "kind": overall.kind, "ci": overall.ci,
            "level": request.level, "n": overall.n, "eta": overall.eta,
            "by": request.by, "anchor": request.anchor,
            "warnings": list(overall.meta.get("warnings", []))}
    if "style" in overall.meta:
        meta["style"] = overall.meta["style"]
        meta["style_reg"] = overall.meta["style_reg"]
    if "style_by_group" in overall.meta:
        meta["style_by_group"] = overall.meta["style_by_group"]
    if request.output:
        write_output(table, request.output, request.output_format, meta, title=head)
    if request.plot_path:
        plot(panels, request.plot_path, head)
