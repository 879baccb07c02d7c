"""Shared test helpers: run the CLI in-process (CliRunner) or as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The tests compare numbers with float32 results on the CPU, and on a GPU machine `--device
# auto` would compute in bfloat16 there: hide the GPUs unless P2L_TESTS_GPU=1 (the GPU
# paths are measured by benchmarks/bench_gpu.py).
if os.environ.get("P2L_TESTS_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest
from typer.testing import CliRunner

from p2l_cli.cli import app

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, input: str | bytes | None = None):
    """Invoke ``p2l`` in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def run_p2l(*args, input: bytes | str | None = None, check: bool = False, env=None, cwd=None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m p2l_cli ARGS`` as a real subprocess (bytes in, bytes out)."""
    if isinstance(input, str):
        input = input.encode()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "p2l_cli", *map(str, args)], input=input,
                          capture_output=True, env=full_env, cwd=cwd, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"p2l {' '.join(map(str, args))} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
