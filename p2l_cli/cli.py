"""The ``p2l`` command line: one module per subcommand in ``p2l_cli/commands``, joined here.

Every subcommand is a thin function that parses options and calls library code. Errors that
are the user's (``UserError``) print one line on stderr and exit 2; other failures print one
line and exit 1 (``P2L_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer vendors click from 0.20 on
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from p2l_cli import __version__
from p2l_cli.commands import (
    demo,
    env,
    evaluate,
    extend,
    leaderboard,
    predict,
    prepare,
    push,
    route,
    serve,
    simulate,
    train,
)
from p2l_cli.errors import UserError
from p2l_cli.ui import error_console, reset_quiet

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer killed by SIGPIPE
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so that temporary files and folders (hidden
    ``.parts-*`` folders of ``predict``, half-written outputs) are removed on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _install_sigterm() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _broken_pipe(exc: BaseException) -> bool:
    # polars reports a closed pipe as a plain OSError without errno
    return isinstance(exc, OSError) and (exc.errno == errno.EPIPE or "Broken pipe" in str(exc))


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not complain."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _flush_stdout() -> None:
    if sys.stdout is not None:
        sys.stdout.flush()


class P2LGroup(TyperGroup):
    """Turns exceptions from any subcommand into one line on stderr and an exit code.

    A reader that goes away (``p2l route ... -o - | head -1``) ends every command the same
    way, quietly, with exit 141 (what a shell reports for a writer killed by SIGPIPE, and
    what ``set -o pipefail`` sees from other Unix tools). SIGTERM ends it with exit 143 after
    removing its temporary files.
    """

    def invoke(self, ctx: Any) -> Any:
        previous = _install_sigterm()
        try:
            result = super().invoke(ctx)
            _flush_stdout()  # a closed pipe shows here, not at the interpreter's exit
            return result
        except UserError as exc:
            error_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            error_console.print("[red]interrupted[/]")
            raise typer.Exit(130) from None
        except Terminated:
            error_console.print("[red]terminated[/]")
            raise typer.Exit(EXIT_TERMINATED) from None
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:
            if _broken_pipe(exc):
                _quiet_stdout()
                raise typer.Exit(EXIT_BROKEN_PIPE) from None
            if os.environ.get("P2L_DEBUG"):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            error_console.print(
                f"[red]error:[/] {escape(type(exc).__name__)}: {escape(message)} "
                "(set P2L_DEBUG=1 for the traceback)",
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_FAILURE) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


EPILOG = """Examples:

  p2l simulate arena/ && p2l prepare arena/battles.parquet -o data/

  p2l train data/ -o model/ --recipe recipes/minilm-cpu.yaml

  p2l predict model/ prompts.jsonl -o - | p2l route - --costs costs.yaml --budget 0.002
"""

app = typer.Typer(
    name="p2l",
    cls=P2LGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    epilog=EPILOG,
    help="Prompt-to-Leaderboard: per-prompt Bradley-Terry leaderboards from pairwise votes.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"p2l {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing but errors on stderr.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    reset_quiet(quiet)


DATA, MODEL, USE = "Data", "Model", "Leaderboards and routing"


def _register(name: str, function: Any, panel: str, no_args_is_help: bool = True) -> None:
    """Add a subcommand; its one-line summary in `p2l --help` is the docstring's first
    paragraph on one line."""
    first_paragraph = (function.__doc__ or "").strip().split("\n\n")[0]
    app.command(
        name,
        rich_help_panel=panel,
        no_args_is_help=no_args_is_help,
        short_help=" ".join(first_paragraph.split()),
    )(function)


_register("simulate", simulate.simulate, DATA)
_register("prepare", prepare.prepare, DATA)
_register("train", train.train, MODEL)
_register("predict", predict.predict, MODEL)
_register("evaluate", evaluate.evaluate, MODEL)
_register("extend", extend.extend, MODEL)
_register("push", push.push, MODEL)
_register("leaderboard", leaderboard.leaderboard, USE)
_register("route", route.route, USE)
_register("serve", serve.serve, USE)
_register("demo", demo.demo, "Getting started", no_args_is_help=False)
_register("env", env.env, "Getting started", no_args_is_help=False)


def main() -> None:
    """The ``p2l`` process (the console script and ``python -m p2l_cli``)."""
    try:
        app()
    except UserError as exc:  # raised outside a subcommand, e.g. while parsing
        error_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        _leave(EXIT_USAGE)
    except SystemExit as exc:
        _leave(exc.code)


def _leave(code: Any) -> NoReturn:
    """Exit with ``code``; a failed command skips the interpreter's teardown.

    By the time a command has failed, its message is printed and its temporary files are
    removed (both happen while the error unwinds). What is left is the teardown of native
    thread pools (torch, Arrow), and their destructors, racing at exit, now and then abort
    the process ("terminate called without an active exception", a SIGABRT) after the error
    line: exit 2 would turn into a crash. A successful command exits normally."""
    if isinstance(code, int) and code != 0:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        os._exit(code)
    sys.exit(code)
