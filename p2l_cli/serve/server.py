"""Start-up of ``p2l serve``: check everything that can be wrong before loading the model,
load it, warm it up, and run uvicorn (which shuts down gracefully on SIGTERM and SIGINT:
it stops accepting connections, lets running requests finish, then runs the shutdown)."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys

from p2l_cli.errors import UserError

SWITCH_INTERVAL = 0.0005
EXTRA_HINT = "p2l serve needs the serve extra: pip install 'p2l-cli[serve]' (fastapi, uvicorn)"


def check_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(EXTRA_HINT) from None


def router_key(api_key_env: str | None) -> str | None:
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env, "")
    if not key:
        raise UserError(f"--api-key-env {api_key_env}: the environment variable is not set")
    return key


def check_bind(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: expected 0..65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UserError(f"--host {host!r}: expected an IP address or localhost") from None


def default_threads() -> int:
    """Torch threads for the forward pass: every core but one, which the event loop (HTTP,
    JSON, routing) needs; one on a 2-core machine. Two threads contending with the event
    loop and other processes ran the forward pass many times slower than one."""
    return max(1, (os.cpu_count() or 2) - 1)


def build_state(model_source: str, config_path, dry_run: bool = False,
                api_key: str | None = None, device: str = "auto",
                threads: int | None = None):  # fmt: skip
    """Read and check the configuration, load the P2L model, and return the ServerState."""
    from p2l_cli.serve.config import model_list_of, read_config

    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: must be 1 or more")
    models = model_list_of(model_source)
    config = read_config(config_path, models, need_keys=not dry_run)
    import torch

    from p2l_cli.predict import load_for_inference

    torch.set_num_threads(threads or default_threads())
    # the event loop and the scoring thread share the GIL; with Python's default 5 ms switch
    # interval, each waited up to 5 ms per hand-over while the other ran Python code (the
    # forward pass releases the GIL in every torch op): 0.5 ms measured faster on 2 cores
    sys.setswitchinterval(SWITCH_INTERVAL)
    from p2l_cli.serve.app import ServerState
    from p2l_cli.serve.router import RouterCore, Scorer

    model, tokenizer = load_for_inference(model_source, device)
    core = RouterCore(model.info.model_list, model.info.family, config)
    scorer = Scorer(model, tokenizer, core)
    scorer.core.route(*_warm_up(model, tokenizer), [(config.budget, config.price, False)], [False])
    return ServerState(config, core, scorer, model.info, str(model_source), dry_run, api_key)


def _warm_up(model, tokenizer):
    from p2l_cli.predict import predict_prompts

    return predict_prompts(model, tokenizer, [["hello"]])


def run(model_source: str, config_path, host: str = "127.0.0.1", port: int = 8000,
        dry_run: bool = False, api_key_env: str | None = None, device: str = "auto",
        log_level: str = "info", access_log: bool = False,
        threads: int | None = None) -> None:  # fmt: skip
    check_extra()
    check_bind(host, port)
    api_key = router_key(api_key_env)
    state = build_state(model_source, config_path, dry_run, api_key, device, threads)
    import uvicorn

    from p2l_cli.serve.app import create_app

    app = create_app(state)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log,
        timeout_graceful_shutdown=30, lifespan="on",
    )  # fmt: skip
    # uvicorn handles SIGTERM itself (graceful shutdown), then raises it again once done:
    # that second SIGTERM ends the process with status 0
    signal.signal(signal.SIGTERM, _terminated)
    uvicorn.Server(config).run()


def _terminated(signum, frame) -> None:
    raise SystemExit(0)
