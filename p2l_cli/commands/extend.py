"""`p2l extend`: add the models of new votes to a trained P2L model without retraining it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2l_cli.ui import QuietOption, console, set_quiet

FIT = "Fit"


def extend(
    model: Annotated[
        str,
        typer.Argument(help="The trained model: a p2l train folder or a published P2L "
                       "checkpoint folder.", show_default=False),
    ],
    votes: Annotated[
        Path,
        typer.Argument(help="Battles that involve the new models (prompt, model_a, model_b, "
                       "winner; e.g. p2l prepare's train.parquet).", show_default=False),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="The new model folder.", show_default=False),
    ],
    folds: Annotated[
        int, typer.Option("--cv-folds", min=2, help="Cross-validation folds (split by prompt) "
                          "that choose the new rows' penalty.", rich_help_panel=FIT)
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds.", rich_help_panel=FIT)] = 0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Prompts per backbone batch.",
                          rich_help_panel=FIT)
    ] = 32,
    rating_only: Annotated[
        bool, typer.Option("--rating-only", help="One rating per new model, fitted against the "
                           "known models' per-prompt coefficients; no prompt-specific weights.",
                           rich_help_panel=FIT)
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output folder.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Add the models that appear in VOTES to MODEL, fitting only their new head rows.

    The backbone and the known models' coefficients stay as they are.

    Each new row is fitted on the frozen features of the votes with a new model.

    Its ridge penalty is chosen by cross-validation over those votes, split by prompt.

    With too few votes for prompt-specific weights, a new model gets one rating.

    Example:

      p2l extend model/ new_votes.parquet -o model-plus/
    """
    set_quiet(quiet or console.quiet)
    from p2l_cli.extend import extend_p2l

    result = extend_p2l(model, votes, out, folds=folds, seed=seed, batch_size=batch_size,
                        overwrite=overwrite, rating_only=rating_only,
                        on_message=console.print)
    console.print(f"wrote {out}: {len(result.models)} models ({len(result.new_models)} new) "
                  f"in {result.seconds:.1f} s", markup=False)
