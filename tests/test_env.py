"""`p2l env`: the versions, device and settings for a bug report, as text or JSON."""

from __future__ import annotations

import json
import platform

import torch
from conftest import run_cli

from p2l_cli import __version__


def test_env_json_on_stdout():
    result = run_cli("env", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["versions"]["p2l"] == __version__
    assert found["versions"]["python"] == platform.python_version()
    assert found["versions"]["torch"] == torch.__version__
    for name in ("transformers", "accelerate", "tokenizers", "polars", "scipy"):
        assert found["versions"][name], name
    if torch.cuda.is_available():
        expected, gpus = "cuda", torch.cuda.device_count()
    else:
        expected, gpus = ("mps" if torch.backends.mps.is_available() else "cpu"), 0
    assert found["device"]["kind"] == expected and len(found["device"]["gpus"]) == gpus
    assert found["threads"]["torch"] == torch.get_num_threads()
    assert found["offline"]["TRANSFORMERS_OFFLINE"] == "1"  # set by conftest
    assert found["hf_cache"]


def test_env_text_names_each_item(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    result = run_cli("env")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["p2l"].strip() == __version__
    assert lines["torch"].strip() == torch.__version__
    assert {"python", "polars", "scipy", "device", "threads", "offline", "hf cache"} <= set(lines)
    assert "TRANSFORMERS_OFFLINE=unset" in lines["offline"]
