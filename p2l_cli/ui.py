"""Messages, tables and progress bars: all on stderr, so stdout stays pipeable."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from p2l_cli.reporting import NOTICE, WARNING

console = Console(stderr=True, highlight=False)
error_console = Console(stderr=True, highlight=False)  # errors print even with --quiet

QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing but errors on stderr.")
]

T = TypeVar("T")


def reset_quiet(quiet: bool) -> None:
    """Called once per invocation by the top-level ``p2l`` callback."""
    console.quiet = bool(quiet or os.environ.get("P2L_QUIET", "") not in ("", "0"))


def set_quiet(quiet: bool) -> None:
    """Silence stderr messages; ``p2l -q CMD`` and ``p2l CMD -q`` both do, and a later
    ``set_quiet(False)`` from a subcommand does not undo the global flag."""
    env_quiet = os.environ.get("P2L_QUIET", "") not in ("", "0")
    console.quiet = bool(quiet or env_quiet or console.quiet)


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


def progress(transient: bool = True) -> Progress:
    """A rich progress bar on stderr; hidden with --quiet or when stderr is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=transient,
        disable=console.quiet or not console.is_terminal,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with progress() as bar:
        task = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            bar.advance(task)


class _Bar:
    def __init__(self, bar: Progress, task: TaskID):
        self._bar, self._task = bar, task

    def advance(self, amount: int = 1) -> None:
        self._bar.advance(self._task, amount)

    def update(self, completed: int, status: str = "") -> None:
        self._bar.update(self._task, completed=completed, status=status)


class ConsoleReporter:
    """Renders library events (:mod:`p2l_cli.reporting`) on stderr; silent with --quiet."""

    def event(self, kind: str, message: str) -> None:
        text = escape(message)
        if kind == WARNING:
            warn(text)
        elif kind == NOTICE:
            console.print(f"[yellow]{text}[/]", soft_wrap=True)
        else:
            console.print(text, soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int, completed: int = 0) -> Iterator[_Bar]:
        with progress() as bar:
            yield _Bar(bar, bar.add_task(description, total=total, completed=completed, status=""))
