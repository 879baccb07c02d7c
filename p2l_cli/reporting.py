"""How library code tells the user what it does, without printing.

Training (and what it calls) reports through a :class:`Reporter`: ``event(kind, message)``
for a line of text and ``progress(...)`` for a progress bar. The command layer passes one
that renders on stderr (``p2l_cli.ui.ConsoleReporter``); the default, :data:`SILENT`, drops
everything, so library callers and tests see nothing unless they ask.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

INFO = "info"  # what the run does and how it went
WARNING = "warning"  # something the user may want to change
NOTICE = "notice"  # a stop signal arrived


class ProgressBar(Protocol):
    def advance(self, amount: int = 1) -> None: ...

    def update(self, completed: int, status: str = "") -> None: ...


class Reporter(Protocol):
    def event(self, kind: str, message: str) -> None: ...

    def progress(
        self, description: str, total: int, completed: int = 0
    ) -> AbstractContextManager[ProgressBar]: ...


class _NoBar:
    def advance(self, amount: int = 1) -> None:
        pass

    def update(self, completed: int, status: str = "") -> None:
        pass


class Silent:
    """A reporter that reports nothing."""

    def event(self, kind: str, message: str) -> None:
        pass

    @contextmanager
    def progress(self, description: str, total: int, completed: int = 0) -> Iterator[ProgressBar]:
        yield _NoBar()


SILENT = Silent()


class Recorder(Silent):
    """A reporter that keeps the events, for tests and callers that show them later."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def event(self, kind: str, message: str) -> None:
        self.events.append((kind, message))

    def messages(self, kind: str | None = None) -> list[str]:
        return [message for k, message in self.events if kind is None or k == kind]
