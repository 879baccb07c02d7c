"""`p2l prepare`: raw pairwise votes -> the training data folder (battles contract)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from p2l_cli.ui import QuietOption, console, progress, set_quiet, warn

INPUT, COLUMNS, FILTERS, SPLIT, OUTPUT = "Input", "Columns", "Filters", "Validation split", "Output"


def _column(name: str) -> typer.Option:
    return typer.Option(help=f"Column holding {name}.", rich_help_panel=COLUMNS)


def _names(values: list[str] | None) -> tuple[str, ...]:
    """``--models a,b --models c`` -> ``("a", "b", "c")``."""
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


def prepare(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Vote files (Parquet, JSONL, CSV, JSON; .gz too), globs, folders, or - for stdin.",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Output folder: train.parquet, val.parquet, models.json, prepare.json.",
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ],
    schema: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Input schema: arena (conversation_a messages), kaggle "
            "(the 55k CSV) or generic (prompt/model_a/model_b/winner). Default: "
            "detected per file from its columns.",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = None,
    input_format: Annotated[
        str | None,
        typer.Option(
            help="File type when the extension does not tell: parquet, jsonl, csv, "
            "json (stdin is sniffed).",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option(
            help="Drop malformed rows (counted in prepare.json) instead of stopping at the first.",
            rich_help_panel=INPUT,
        ),
    ] = False,
    prompt_column: Annotated[
        str | None,
        typer.Option(
            help="Column holding the prompt: text, a list of user turns, or a list "
            "of {role, content} messages. Default: conversation_a (arena) or prompt.",
            rich_help_panel=COLUMNS,
            show_default=False,
        ),
    ] = None,
    model_a_column: Annotated[str, _column("the first model's name")] = "model_a",
    model_b_column: Annotated[str, _column("the second model's name")] = "model_b",
    winner_column: Annotated[
        str,
        typer.Option(
            help="Column holding the winner: model_a, model_b, tie, tie (bothbad) "
            "(also a/b, both_bad, or the winning model's name).",
            rich_help_panel=COLUMNS,
            show_default=False,
        ),
    ] = "winner",
    id_column: Annotated[
        str | None,
        typer.Option(
            help="Column holding the battle id. Default: id, else question_id, "
            "else a hash of the battle.",
            rich_help_panel=COLUMNS,
            show_default=False,
        ),
    ] = None,
    tstamp_column: Annotated[
        str | None,
        typer.Option(
            help="Column holding the time (seconds since 1970 or ISO 8601). "
            "Default: tstamp, else timestamp.",
            rich_help_panel=COLUMNS,
            show_default=False,
        ),
    ] = None,
    language_column: Annotated[str, _column("the language")] = "language",
    category_column: Annotated[str, _column("the category")] = "category",
    weight_column: Annotated[str, _column("a per-vote weight")] = "weight",
    anony_column: Annotated[str, _column("the anonymous flag")] = "anony",
    anony_only: Annotated[
        bool,
        typer.Option(
            help="Drop battles whose anony flag is false (the model names were "
            "shown to the voter).",
            rich_help_panel=FILTERS,
        ),
    ] = False,
    language: Annotated[
        list[str] | None,
        typer.Option(
            "--language",
            help="Keep only these languages (repeat or comma-separate; case-insensitive).",
            rich_help_panel=FILTERS,
            show_default=False,
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Keep only battles between these models (repeat or comma-separate).",
            rich_help_panel=FILTERS,
            show_default=False,
        ),
    ] = None,
    min_battles_per_model: Annotated[
        int,
        typer.Option(
            help="Drop models with fewer battles than this (repeated until every "
            "model left has enough).",
            rich_help_panel=FILTERS,
        ),
    ] = 0,
    keep_duplicates: Annotated[
        bool,
        typer.Option(
            help="Keep repeated battles (same id, prompt, models, winner and time).",
            rich_help_panel=FILTERS,
        ),
    ] = False,
    val_fraction: Annotated[
        float,
        typer.Option(help="Share of battles for validation.", rich_help_panel=SPLIT),
    ] = 0.05,
    val_split: Annotated[
        str,
        typer.Option(
            help="random: by prompt text, so no prompt is in both splits; chrono: "
            "the latest battles by tstamp.",
            rich_help_panel=SPLIT,
        ),
    ] = "random",
    val_file: Annotated[
        str | None,
        typer.Option(
            help="Use this vote file as the validation split instead (prepared "
            "alike; training battles with the same prompt are dropped).",
            rich_help_panel=SPLIT,
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random split.", rich_help_panel=SPLIT)] = 0,
    batch_rows: Annotated[
        int,
        typer.Option(
            help="Rows read and written at a time (memory grows with this).", rich_help_panel=OUTPUT
        ),
    ] = 20_000,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the files of a non-empty output folder.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Turn pairwise votes into the training data folder: labelled battles, train and val.

    Reads Arena conversation data, the Kaggle 55k CSV, or a prompt/model_a/model_b/winner table.

    Files are Parquet, JSONL, CSV or JSON; the schema is detected from the columns (--format).

    When the input has the answers' style (Arena conv_metadata, both conversations, or the
    Kaggle responses), the battles keep per-answer style counts for --style-control.

    Examples:

      p2l prepare arena-100k.parquet -o data/

      p2l prepare "shards/*.parquet" -o data/ --anony-only --language English --min-battles-per-model 50

      p2l prepare train.csv -o data/ --skip-bad-rows     (the Kaggle 55k CSV)

      p2l prepare arena-140k.parquet -o data/ --val-split chrono --val-fraction 0.1

      cat votes.jsonl | p2l prepare - -o data/ --prompt-column question --winner-column vote
    """
    set_quiet(quiet)
    from p2l_cli.io import check_output_folder

    check_output_folder(output, "-o", overwrite)
    from p2l_cli.data.formats import Columns
    from p2l_cli.data.prepare import PrepareOptions, prepare_battles

    options = PrepareOptions(
        schema=schema,
        file_type=input_format,
        columns=Columns(
            prompt=prompt_column,
            model_a=model_a_column,
            model_b=model_b_column,
            winner=winner_column,
            id=id_column,
            tstamp=tstamp_column,
            language=language_column,
            category=category_column,
            weight=weight_column,
            anony=anony_column,
        ),
        anony_only=anony_only,
        languages=_names(language),
        models=_names(models),
        min_battles_per_model=min_battles_per_model,
        dedupe=not keep_duplicates,
        val_fraction=val_fraction,
        val_split=val_split,
        val_file=val_file,
        seed=seed,
        skip_bad_rows=skip_bad_rows,
        batch_rows=batch_rows,
    )
    with progress() as bars:

        def start(description: str, total: int | None):
            task = bars.add_task(description, total=total, status="")
            return lambda rows: bars.advance(task, rows)

        report = prepare_battles(inputs, output, options, progress=start)
    for message in report.bad_rows:
        warn(f"skipped {message}")
    for message in report.warnings:
        warn(message)
    unseen = sorted(set(options.models) - set(report.models))
    if unseen:
        warn(f"--models: no battles kept for {', '.join(unseen[:10])}")
    for table in summary_tables(report):
        console.print(table)
    folder = os.path.join(output, "")  # one trailing slash, whether given or not
    console.print(f"wrote {folder}: train.parquet, val.parquet, models.json, prepare.json")


def summary_tables(report, max_models: int = 20) -> list:
    """The counts of a :class:`~p2l_cli.data.prepare.PrepareReport` as rich tables."""
    from rich.table import Table

    from p2l_cli.data.prepare import DROP_REASONS

    counts = Table(title="p2l prepare", show_header=False)
    counts.add_column("what")
    counts.add_column("count", justify="right")
    counts.add_row("rows read", f"{report.rows_read:,}")
    for reason, label in DROP_REASONS.items():
        if report.drops.get(reason):
            counts.add_row(f"  dropped: {label}", f"{report.drops[reason]:,}")
    counts.add_row("battles kept", f"{report.train + report.val:,}")
    counts.add_row("  train", f"{report.train:,}")
    counts.add_row("  val", f"{report.val:,}")
    for winner, count in report.winners.items():
        if count:
            counts.add_row(f"  winner {winner}", f"{count:,}")
    counts.add_row("models", f"{len(report.models):,}")

    ranked = sorted(report.per_model.items(), key=lambda item: -item[1]["battles"])
    per_model = Table(title="battles per model")
    for column in ("model", "battles", "train", "val"):
        per_model.add_column(column, justify="left" if column == "model" else "right")
    for name, count in ranked[:max_models]:
        per_model.add_row(name, f"{count['battles']:,}", f"{count['train']:,}", f"{count['val']:,}")
    if len(ranked) > max_models:
        rest = ranked[max_models:]
        per_model.add_row(
            f"... {len(rest)} more", f"{sum(c['battles'] for _, c in rest):,}", "", ""
        )
    return [counts, per_model]
