"""`p2l predict`: per-prompt leaderboards from a P2L model, for one prompt or a file."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from p2l_cli.errors import UserError
from p2l_cli.ui import QuietOption, console, info, progress, set_quiet, warn

INPUT, OUTPUT, SPEED = "Input", "Output", "Hardware and speed"


def predict(
    model: Annotated[
        str,
        typer.Argument(
            help="P2L model: a folder from `p2l train`, a published lmarena-ai "
            "checkpoint folder, or a Hub id in the local cache.",
            show_default=False,
        ),
    ],
    prompts: Annotated[
        str | None,
        typer.Argument(help="Prompts: JSONL, Parquet or CSV, or - for stdin.", show_default=False),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Predictions file (.parquet, .jsonl, .csv, .json) or - for stdout.",
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            "-p",
            help="Predict one prompt and print its leaderboard.",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = None,
    prompt_column: Annotated[
        str | None,
        typer.Option(
            help="Column holding the prompt (text, list of user turns, or messages); "
            "found automatically when absent (prompt, messages, conversation_a, ...).",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = None,
    input_format: Annotated[
        str | None,
        typer.Option(
            help="Format of PROMPTS when its extension does not tell "
            "(jsonl, parquet, csv, json); stdin is sniffed.",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option(
            "--skip-bad-rows",
            help="Drop rows with no usable prompt or invalid JSON (counted on "
            "stderr) instead of stopping.",
            rich_help_panel=INPUT,
        ),
    ] = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Output format (parquet, jsonl, csv, json); default: "
            "the extension, JSONL for stdout.",
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=SPEED),
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (bfloat16 on GPUs that support it, else float16 on GPU, "
            "float32 on CPU), float32, bfloat16 or float16.",
            rich_help_panel=SPEED,
        ),
    ] = "auto",
    batch_tokens: Annotated[
        int | None,
        typer.Option(
            help="Padded tokens per batch (rows x longest row); prompts are sorted by length "
            "so that batches are dense. Default: 2048 on CPU, 16384 on CUDA GPUs.",
            rich_help_panel=SPEED,
            show_default=False,
        ),
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option(help="Most prompts in one batch.", rich_help_panel=SPEED)
    ] = 256,
    chunk_rows: Annotated[
        int,
        typer.Option(
            help="Rows read, sorted and written at a time (memory stays bounded by "
            "this, not by the input size).",
            rich_help_panel=SPEED,
        ),
    ] = 4096,
    max_length: Annotated[
        int | None,
        typer.Option(
            help="Truncate prompts (from the left) to this many tokens; default: the model's.",
            rich_help_panel=SPEED,
            show_default=False,
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Predict each prompt's leaderboard: one coefficient per model (and eta for rk heads).

    Examples:

      p2l predict model/ prompts.jsonl -o preds.parquet

      p2l predict lmarena-ai/p2l-135m-grk --prompt "write a haiku about rust"

      cat prompts.jsonl | p2l predict model/ - -o - | p2l route - --costs costs.yaml

      accelerate launch -m p2l_cli predict model/ prompts.parquet -o preds.parquet
    """
    set_quiet(quiet)
    from p2l_cli import predict as library
    from p2l_cli.io import check_writable, refuse_overwriting_inputs

    options = library.PredictOptions(
        prompt_column=prompt_column,
        batch_tokens=batch_tokens,
        max_batch_size=max_batch_size,
        chunk_rows=chunk_rows,
        max_length=max_length,
        skip_bad_rows=skip_bad_rows,
    )
    options.check()
    if prompt is not None:
        if prompts is not None:
            raise UserError("give PROMPTS or --prompt, not both")
        check_writable(output, "--output/-o")
        _one_prompt(library, model, prompt, output, fmt, options, device, dtype)
        return
    if prompts is None:
        raise UserError("PROMPTS: missing; give a file, - for stdin, or --prompt TEXT")
    if output is None:
        raise UserError("--output/-o: missing; give a file, or - for stdout")
    refuse_overwriting_inputs({"--output/-o": output}, {"PROMPTS": prompts})
    workers = library.Workers.from_env()
    if workers.main:
        check_writable(output, "--output/-o")
    else:
        set_quiet(True)
    # a reader that goes away (`... -o - | head`) ends the command quietly: see p2l_cli.cli
    summary = _predict_with_progress(
        library, model, prompts, output, fmt, input_format, options, device, dtype, workers
    )
    if summary.skipped:
        warn(f"skipped {summary.skipped} bad row(s) of {prompts} (first: {summary.first_bad})")
    where = "stdout" if output == "-" else output
    processes = f" on {workers.world} processes" if workers.world > 1 else ""
    info(
        f"predicted {summary.rows} prompts in {summary.seconds:.1f} s "
        f"({summary.rate:.1f} prompts/s{processes}) -> {where}"
    )


def _predict_with_progress(
    library, model, prompts, output, fmt, input_format, options, device, dtype, workers
):
    with progress() as bar:

        def start(total: int | None):
            task = bar.add_task("predicting", total=total, status="")
            return lambda rows: bar.advance(task, rows)

        return library.predict_file(
            model,
            prompts,
            output,
            fmt=fmt,
            input_format=input_format,
            options=options,
            device=device,
            dtype=dtype,
            workers=workers,
            progress=start,
        )


def _one_prompt(library, model_source, text, output, fmt, options, device, dtype) -> None:
    import polars as pl
    from rich.table import Table

    from p2l_cli.io import write_table
    from p2l_cli.leaderboard import prompt_rows

    model, tokenizer = library.load_for_inference(model_source, device, dtype)
    frame = library.predict_frame(
        model,
        tokenizer,
        pl.DataFrame({"prompt": [text]}),
        max_length=options.max_length,
        name="--prompt",
    )
    coefs = frame["coefs"][0].to_numpy()
    eta = float(frame["eta"][0]) if "eta" in frame.columns else None
    rows = prompt_rows(list(model.info.model_list), coefs, eta, model.info.family)
    shown = text if len(text) <= 70 else text[:67] + "..."
    table = Table(title=f"Leaderboard for: {shown}", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("model")
    table.add_column("coefficient", justify="right")
    table.add_column("score", justify="right")
    table.add_column("win rate vs field", justify="right")
    for row in rows:
        table.add_row(str(row["rank"]), row["model"], f"{row['coef']:+.4f}",
                      f"{row['score']:.1f}", f"{row['win_rate']:.1%}")
    centred = "coefficient" if model.info.family == "grk" else "coefficient - mean"
    table.caption = f"score: 1000 + 400/ln(10) x ({centred}); " + (
        f"{model.info.family} family" + ("" if eta is None else f", eta {eta:.4f}")
    )
    console.print(table)
    if output is not None:
        write_table(frame, output, fmt=fmt, meta=model.info.metadata())
        if output != "-":
            info(f"wrote the prediction to {output}")
    sys.stderr.flush()
