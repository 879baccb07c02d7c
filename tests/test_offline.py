"""A Hub id that is not in the local cache, while the Hub cannot be used (offline mode, or no
connection): one line at once that says how to fetch it, exit 2; no retries, no network."""

from __future__ import annotations

import socket
import time

import pytest

from p2l_cli.model import offline
from tests.conftest import run_cli, run_p2l

MISSING = "no-such-org/no-such-model"


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.fixture
def data(tmp_path):
    assert run_cli("simulate", tmp_path / "arena", "--battles", "120", "--models", "3",
                   "--prompts", "0", "-q").exit_code == 0
    assert run_cli("prepare", tmp_path / "arena" / "battles.parquet", "-o", tmp_path / "data",
                   "-q").exit_code == 0
    return tmp_path / "data"


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_train_with_an_uncached_hub_backbone_offline(data, tmp_path, monkeypatch, variable):
    for name in offline.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("train", data, "-o", tmp_path / "m", "--backbone", MISSING, "-q")
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert f"--backbone {MISSING}: not in the Hugging Face cache" in line
    assert f"{variable} is set" in line and f"hf download {MISSING}" in line


def test_predict_with_an_uncached_hub_model_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("predict", MISSING, "--prompt", "hello", "-q")
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert line.startswith(f"error: {MISSING}: not in the Hugging Face cache")
    assert f"hf download {MISSING}" in line and "HF_HUB_OFFLINE is set" in line


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "predict"])
def test_no_connection_fails_fast_without_offline_mode(data, tmp_path, command):
    """Offline mode not set, the Hub endpoint refuses connections (a closed local port, so
    nothing leaves the machine): the cache alone is used, at once, without retry noise."""
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    args = (["train", data, "-o", tmp_path / "m", "--backbone", MISSING] if command == "train"
            else ["predict", MISSING, "--prompt", "hello"])
    started = time.perf_counter()
    proc = run_p2l(*args, "-q", env=env, timeout=120)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr.decode())
    assert "127.0.0.1 cannot be reached" in line and f"hf download {MISSING}" in line
    assert elapsed < 60


def test_offline_reason(monkeypatch):
    for name in offline.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "true")
    assert offline.offline_reason() == "TRANSFORMERS_OFFLINE is set"
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert offline.offline_reason() == "127.0.0.1 cannot be reached"
    assert offline.is_hub_id(MISSING) and not offline.is_hub_id("./model")
