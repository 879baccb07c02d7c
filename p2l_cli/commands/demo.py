"""`p2l demo`: simulate, prepare, train, evaluate, rank and route, end to end on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2l_cli.ui import QuietOption, set_quiet

RUN = "Run"


def demo(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for every file the stages write.", rich_help_panel=RUN
        ),
    ] = Path("p2l-demo"),
    small: Annotated[
        bool,
        typer.Option(
            "--small",
            help="A reduced run for CI: a smaller arena and the backbone frozen (about a minute).",
            rich_help_panel=RUN,
        ),
    ] = False,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help="Seed of the arena, the split and the training.", rich_help_panel=RUN
        ),
    ] = 0,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            "--force",
            help="Reuse a non-empty --out folder, replacing its files (--force: the old name).",
            rich_help_panel=RUN,
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Run the whole pipeline offline on a simulated arena, printing each `p2l` command line
    before it runs; every file stays in --out, the command lines in --out/commands.sh.

    About 2 minutes on a 2-core CPU (--small: under one).

    Example:

      p2l demo --out p2l-demo
    """
    set_quiet(quiet)
    from p2l_cli.demo import run_demo

    run_demo(out, small=small, seed=seed, overwrite=overwrite, quiet=quiet)
