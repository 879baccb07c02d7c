"""`p2l evaluate`: score per-prompt predictions on held-out votes against the marginal
leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2l_cli.errors import UserError
from p2l_cli.ui import QuietOption, console, info, set_quiet, warn

BASELINE, TRUTH, OUTPUT, STATS, INFERENCE = (
    "Baseline",
    "Simulated truth",
    "Output",
    "Statistics",
    "Inference (model folder)",
)


def evaluate(
    source: Annotated[
        str,
        typer.Argument(
            metavar="MODEL_OR_PREDICTIONS",
            help="A P2L model folder (the validation prompts are predicted first) or a "
            "predictions file from `p2l predict`.",
        ),
    ],
    val: Annotated[
        Path,
        typer.Argument(
            metavar="VAL_BATTLES",
            help="Held-out votes (battles file, e.g. DATA/val.parquet from `p2l prepare`).",
        ),
    ],
    train: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="Training votes to fit the marginal leaderboard on (the baseline). Default: "
            "train.parquet beside VAL_BATTLES when there is one.",
            rich_help_panel=BASELINE,
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="truth.parquet from `p2l simulate`: adds the oracle, the fraction of the "
            "achievable gain captured and leaderboard recovery per category.",
            rich_help_panel=TRUTH,
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="Also report per group of this column (category, language, ...; 'turns' is "
            "derived from the prompt).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="FILE",
            help="Write all figures as JSON ('-' for stdout).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="DIR",
            help="Write calibration.png and a gain chart per group (needs matplotlib; "
            "implies --by category when the votes have categories).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap",
            min=0,
            help="Bootstrap resamples of prompts for the gain's interval (0: none).",
            rich_help_panel=STATS,
        ),
    ] = 1000,
    level: Annotated[
        float,
        typer.Option(
            "--level",
            min=0.5,
            max=0.999,
            help="Confidence level of the interval.",
            rich_help_panel=STATS,
        ),
    ] = 0.95,
    bins: Annotated[
        int,
        typer.Option(
            "--bins", min=1, max=50, help="Calibration bins over [0.5, 1].", rich_help_panel=STATS
        ),
    ] = 10,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help="Seed of the bootstrap and the subset curve.", rich_help_panel=STATS
        ),
    ] = 0,
    subset_curve: Annotated[
        str | None,
        typer.Option(
            "--subset-curve",
            metavar="SIZES",
            help="Comma-separated numbers of prompts (e.g. 10,30,100,300): per size, random "
            "subsets of the validation prompts are aggregated and compared with the "
            "aggregate of all of them (Spearman, top-k, win-probability L1).",
            rich_help_panel=STATS,
        ),
    ] = None,
    subset_repeats: Annotated[
        int,
        typer.Option(
            "--subset-repeats",
            min=1,
            help="Random subsets drawn per size of --subset-curve.",
            rich_help_panel=STATS,
        ),
    ] = 20,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", min=1, help="Prompts per forward pass.", rich_help_panel=INFERENCE
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="cpu, cuda, cuda:1, mps (default: the best available).",
            rich_help_panel=INFERENCE,
        ),
    ] = None,
    checkpoints: Annotated[
        bool,
        typer.Option(
            "--checkpoints",
            help="MODEL_OR_PREDICTIONS is a `p2l train` output folder: evaluate each saved "
            "set of weights (the model folder's best and checkpoints/last) and compare them.",
            rich_help_panel=INFERENCE,
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Score per-prompt leaderboards on held-out votes: NLL, accuracy, Brier, calibration,
    next to the marginal leaderboard fitted on the training votes, with the gain's bootstrap
    interval.

    Example:

      p2l evaluate model/ data/val.parquet --train data/train.parquet --by category

      p2l evaluate preds.parquet data/val.parquet --truth arena/truth.parquet --json -
    """
    set_quiet(quiet)
    from p2l_cli.evaluate.compare import Settings
    from p2l_cli.evaluate.subsets import parse_sizes

    try:
        sizes = parse_sizes(subset_curve)
    except ValueError as err:
        raise UserError(f"--subset-curve: {err}") from None
    runner = run_checkpoint_evaluation if checkpoints else run_evaluation
    runner(
        source,
        val,
        train,
        truth,
        Settings(
            by=by,
            bootstrap=bootstrap,
            seed=seed,
            bins=bins,
            level=level,
            subset_sizes=sizes,
            subset_repeats=subset_repeats,
        ),
        json_out=json_out,
        plot_dir=plot,
        batch_size=batch_size,
        device=device,
    )


def run_evaluation(
    source: str | Path,
    val_path: str | Path,
    train_path: str | Path | None = None,
    truth_path: str | Path | None = None,
    settings=None,
    json_out: str | Path | None = None,
    plot_dir: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> dict:
    """What ``p2l evaluate`` does: read, predict if given a model, score, show, write."""
    from dataclasses import replace

    from p2l_cli.contracts.predictions import read_predictions
    from p2l_cli.evaluate.compare import Settings, evaluate_predictions
    from p2l_cli.evaluate.inputs import (
        data_model_list,
        default_train_path,
        is_model_source,
        predictions_from_model,
        read_battles,
        seen_votes,
    )
    from p2l_cli.evaluate.report import render, to_json, write_plots
    from p2l_cli.evaluate.truth import read_truth
    from p2l_cli.io import write_text

    s = settings or Settings()
    if str(val_path) != "-" and Path(val_path).is_dir():  # a `p2l prepare` folder
        val_path = Path(val_path) / "val.parquet"
    val = read_battles(val_path, "validation votes")
    data_models = data_model_list(val_path)
    if train_path is None:
        train_path = default_train_path(val_path)
        if train_path is not None:
            info(f"baseline: the marginal leaderboard fitted on {train_path} (--train overrides)")
    train = read_battles(train_path, "training votes") if train_path is not None else None
    if is_model_source(source):
        info(f"predicting the validation prompts with {source}")
        preds = predictions_from_model(source, val, batch_size, device)
    else:
        preds = read_predictions(source)
    truth = None
    if truth_path is not None:
        truth = read_truth(truth_path, [data_models, preds.models])
    if plot_dir is not None and s.by is None and _has_categories(val, truth):
        s = replace(s, by="category")
    result = evaluate_predictions(
        preds, val, str(val_path), train, str(train_path), truth, data_models, s
    )
    result["leakage"] = seen_votes(preds.model_dir, val)
    for message in result["leakage"]:
        warn(message)
    render(result, console)
    if json_out is not None:
        write_text(json_out, to_json(result))
    if plot_dir is not None:
        for path in write_plots(result, plot_dir):
            info(f"wrote {path}")
    return result


def _has_categories(val, truth) -> bool:
    return "category" in val.columns or (truth is not None and "category" in truth.frame.columns)


def run_checkpoint_evaluation(
    run_dir: str | Path,
    val_path: str | Path,
    train_path: str | Path | None = None,
    truth_path: str | Path | None = None,
    settings=None,
    json_out: str | Path | None = None,
    plot_dir: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> dict:
    """``p2l evaluate --checkpoints``: :func:`run_evaluation` on each checkpoint of a
    training run (:func:`~p2l_cli.evaluate.checkpoints.list_checkpoints`), then one table
    comparing them. Returns ``{"run": ..., "checkpoints": [{"name", "step", "result"}]}``."""
    import tempfile

    from p2l_cli.evaluate.checkpoints import list_checkpoints, model_folder_of
    from p2l_cli.evaluate.report import render_checkpoints, to_json
    from p2l_cli.io import write_text

    if str(run_dir) == "-" or not Path(run_dir).is_dir():
        raise UserError(f"--checkpoints: {run_dir} is not a training output folder")
    found = list_checkpoints(run_dir)
    if len(found) == 1:
        info(f"{run_dir}: no checkpoints/last with weights; evaluating the model folder only")
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2l-checkpoint-") as work:
        for checkpoint in found:
            step = "" if checkpoint.step is None else f" (step {checkpoint.step})"
            console.rule(f"checkpoint {checkpoint.name}{step}")
            folder = model_folder_of(checkpoint, Path(work) / checkpoint.name)
            plots = None if plot_dir is None else Path(plot_dir) / checkpoint.name
            result = run_evaluation(
                folder, val_path, train_path, truth_path, settings, None, plots, batch_size,
                device,
            )
            result["predictions"] = f"{run_dir} [{checkpoint.name}]"
            rows.append({"name": checkpoint.name, "step": checkpoint.step, "result": result})
    combined = {"run": str(run_dir), "checkpoints": rows}
    render_checkpoints(combined, console)
    if json_out is not None:
        write_text(json_out, to_json(combined))
    return combined
