"""`p2l env`: versions, device and settings, for bug reports."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer


def env(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of text.")
    ] = False,
) -> None:
    """Show the versions, device and settings p2l runs with (paste them into a bug report).

    Example: p2l env --json > env.json
    """
    from p2l_cli.environment import environment

    found = environment()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    for name, value in _lines(found):
        typer.echo(f"{name + ':':<22} {value}")


def _lines(found: dict[str, Any]) -> list[tuple[str, str]]:
    lines = [(name, value or "not installed") for name, value in found["versions"].items()]
    device = found["device"]
    described = device["kind"]
    if device["gpus"]:
        described += f" (CUDA {device['cuda']}): " + ", ".join(device["gpus"])
    offline = found["offline"]
    variables = ", ".join(
        f"{name}={value if value is not None else 'unset'}"
        for name, value in offline.items() if name != "effective"
    )  # fmt: skip
    lines += [
        ("platform", found["platform"]),
        ("device", described),
        ("threads", f"{found['threads']['torch']} torch, {found['threads']['cpus']} CPUs"),
        ("offline", f"{'yes' if offline['effective'] else 'no'} ({variables})"),
        ("hf cache", found["hf_cache"]),
    ]
    return lines
