"""`p2l demo`: simulate, prepare, train, evaluate, rank and route, end to end on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2l_cli.errors import UserError
from p2l_cli.ui import QuietOption, console, set_quiet

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
    import time

    from rich.markup import escape

    from p2l_cli.demo import Layout, run_demo

    def show_stage(number, stage) -> None:
        console.rule(f"[bold]{number}. {stage.title}")
        if stage.note:
            console.print(f"[dim]{stage.note}[/]")
        console.print(f"[bold cyan]$ {escape(stage.command)}[/]", soft_wrap=True)

    def show_time(stage, seconds: float) -> None:
        console.print(f"[dim]({seconds:.1f} s)[/]")

    started = time.perf_counter()
    stages = run_demo(run_command, out, small=small, seed=seed, overwrite=overwrite, quiet=quiet,
                      on_stage=show_stage, on_stage_done=show_time)
    finish(Layout(Path(out)), stages, time.perf_counter() - started)


def run_command(argv: list[str], quiet: bool = False) -> None:
    """Run ``p2l ARGV`` through the CLI's Typer app, in this process."""
    from p2l_cli.cli import app

    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException

    args = (["--quiet"] if quiet else []) + list(argv)
    try:
        code = app(args=args, prog_name="p2l", standalone_mode=False)
    except ClickException as exc:
        raise UserError(f"p2l {argv[0]}: {exc.format_message()}") from None
    if isinstance(code, int) and code != 0:
        raise UserError(f"the stage `p2l {argv[0]}` failed (exit {code}); see above")


def finish(layout, stages: list, seconds: float) -> None:
    """The recap: headline figures and the files written."""
    from p2l_cli.demo import recap, written_files

    console.rule("[bold]Done")
    for line in recap(layout):
        console.print(line)
    console.print(
        f"{len(stages)} stages in {seconds / 60:.1f} minutes; every file is in {layout.root}/:"
    )
    for path in written_files(layout.root):
        console.print(f"  {path}", highlight=False)
    console.print(
        f"Rerun any stage by hand, or on your own data, with the commands in {layout.commands}"
    )
