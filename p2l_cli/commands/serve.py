"""`p2l serve`: an OpenAI-compatible router in front of the configured models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2l_cli.ui import QuietOption, set_quiet


def serve(
    model: Annotated[
        str,
        typer.Argument(help="P2L model: a folder from `p2l train` or a Hub id in the local "
                       "cache.", show_default=False),
    ],
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="router.yaml: budget or price, and the upstream "
                     "of every model that may be chosen.", show_default=False),
    ],
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Answer with the routing decision; call no upstream."),
    ] = False,
    api_key_env: Annotated[
        str | None,
        typer.Option("--api-key-env", help="Environment variable holding the key clients must "
                     "send (Authorization: Bearer KEY).", show_default=False),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Device of the P2L model: auto, cpu, cuda, mps.")
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Torch threads for the P2L model (default: all cores "
                     "but one, at least 1).", show_default=False),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log every request (method, path, status).")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Serve an OpenAI-compatible router: POST /v1/chat/completions with model 'p2l' goes to
    the model that wins most often for the prompt, within the budget.

    Also GET /v1/models, POST /v1/leaderboard (the prompt's leaderboard), GET /healthz and
    GET /metrics (Prometheus). Needs the serve extra: pip install 'p2l-cli\\[serve]'.

    Examples:

      p2l serve model/ --config router.yaml --port 8000

      p2l serve model/ -c router.yaml --dry-run
    """
    set_quiet(quiet)
    from p2l_cli.serve.server import run

    run(model, config, host, port, dry_run, api_key_env, device,
        log_level="warning" if quiet else "info", access_log=access_log, threads=threads)
