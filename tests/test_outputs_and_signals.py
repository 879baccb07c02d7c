"""Outputs never destroy inputs, unwritable places fail early and name the user's path, and
signals (SIGTERM, a reader that goes away, a closed stdout) end commands cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import REPO, run_cli
from tiny import make_backbone

from p2l_cli import io as p2l_io
from p2l_cli.errors import UserError

MODELS = ["m-a", "m-b", "m-c"]


def _error_line(stderr: str | bytes) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    battles = pl.DataFrame({
        "model_a": rng.choice(MODELS, 300).tolist(), "model_b": ["m-x"] * 300,
        "winner": rng.choice(["model_a", "model_b"], 300).tolist(),
    })  # fmt: skip
    battles.write_parquet(folder / "b.parquet")
    coefs = rng.normal(size=(400, len(MODELS))).astype(np.float32)
    preds = pl.DataFrame({
        "prompt": [f"prompt {i}" for i in range(400)],
        "coefs": pl.Series(coefs.tolist(), dtype=pl.List(pl.Float32)),
    })  # fmt: skip
    p2l_io.write_table(
        preds, folder / "pred.parquet", meta={"models": MODELS, "head": "bt", "loss": "bt"}
    )
    pl.DataFrame({"prompt": ["write a python function", "hello"]}).write_ndjson(
        folder / "prompts.jsonl"
    )
    (folder / "costs.yaml").write_text("m-a: 1\nm-b: 2\nm-c: 3\n")
    return {p.name: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from p2l_cli.model import build_p2l, save_p2l

    root = tmp_path_factory.mktemp("model")
    backbone = make_backbone("bert", root / "backbone")
    model, tokenizer = build_p2l(str(backbone), MODELS, max_length=32)
    return save_p2l(model, tokenizer, root / "model")


# -------------------------------------------------------------- item 3: -o is an input file


@pytest.mark.parametrize("command", ["leaderboard", "route", "predict"])
@pytest.mark.parametrize("link", [False, True])
def test_an_output_that_is_the_input_is_refused(files, tmp_path, command, link):
    source = {"leaderboard": files["b.parquet"], "route": files["pred.parquet"],
              "predict": files["prompts.jsonl"]}[command]  # fmt: skip
    target = source
    if link:  # another name for the same file
        target = tmp_path / f"alias{source.suffix}"
        target.symlink_to(source)
    before = source.read_bytes()
    args = {
        "leaderboard": ["leaderboard", source, "-o", target],
        "route": ["route", source, "-c", files["costs.yaml"], "-o", target],
        "predict": ["predict", "no-model-needed", source, "-o", target],
    }[command]
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    line = _error_line(result.stderr)
    assert "--output/-o" in line and "input" in line
    assert source.read_bytes() == before


def test_route_summary_that_is_the_costs_file_is_refused(files):
    before = files["costs.yaml"].read_bytes()
    result = run_cli(
        "route", files["pred.parquet"], "-c", files["costs.yaml"], "--summary", files["costs.yaml"]
    )
    assert result.exit_code == 2, result.output
    assert "--summary" in _error_line(result.stderr)
    assert files["costs.yaml"].read_bytes() == before


# -------------------------------------------------------------- item 8: unwritable folders


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder where no file can be created (sysfs refuses even root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys")
    try:
        (folder / "p2l-probe").touch()
    except OSError:
        yield folder
        return
    pytest.skip("no folder refuses writes here")


def test_writing_into_an_unwritable_folder_names_the_users_path(unwritable):
    target = unwritable / "table.parquet"
    with pytest.raises(UserError, match=f"^{target}: cannot write"):
        p2l_io.write_table(pl.DataFrame({"a": [1]}), target)


@pytest.mark.parametrize("command", ["leaderboard", "route", "predict"])
def test_an_unwritable_output_fails_before_the_work(files, unwritable, command):
    target = unwritable / "out.parquet"
    # predict's model does not exist: the output is checked before it is even looked for
    args = {
        "leaderboard": ["leaderboard", files["b.parquet"]],
        "route": ["route", files["pred.parquet"], "-c", files["costs.yaml"]],
        "predict": ["predict", "no-such-model-folder", files["prompts.jsonl"]],
    }[command]
    result = run_cli(*args, "-o", target)
    assert result.exit_code == 2, result.output
    line = _error_line(result.stderr)
    assert f"--output/-o {target}" in line and ".tmp" not in line


# -------------------------------------------------------------- item 10: signals and pipes


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


@pytest.mark.slow
def test_sigterm_during_predict_removes_its_temporary_files(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2l_cli", "predict", model_dir, "-", "-o", out / "p.parquet",
         "--chunk-rows", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
        cwd=REPO,
    )  # fmt: skip
    proc.stdin.write(b'{"prompt": "hello"}\n{"prompt": "write a poem"}\n')
    proc.stdin.flush()  # stdin stays open: predict waits for more prompts
    deadline = time.monotonic() + 120
    while not list(out.glob(".*parts-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.1)
    assert list(out.glob(".*parts-*")), "predict never started its parts folder"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr.decode()
    assert list(out.iterdir()) == [], list(out.iterdir())
    assert b"Traceback" not in stderr


def _closed_pipe_run(args: list) -> subprocess.CompletedProcess:
    """Run p2l with stdout a pipe whose reader has already gone away."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "p2l_cli", *map(str, args)],
                              stdout=write_end, stderr=subprocess.PIPE, env=_env(),
                              cwd=REPO, timeout=300, check=False)  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_predict_and_route_alike(files, model_dir):
    route = _closed_pipe_run(["route", files["pred.parquet"], "-c", files["costs.yaml"], "-o", "-"])
    predict = _closed_pipe_run(["predict", model_dir, files["prompts.jsonl"], "-o", "-"])
    for proc in (route, predict):
        assert proc.returncode == 141, proc.stderr.decode()
        assert b"error" not in proc.stderr and b"Traceback" not in proc.stderr
        assert b"Exception ignored" not in proc.stderr


@pytest.mark.parametrize("command", ["route", "predict", "leaderboard"])
@pytest.mark.slow
def test_a_closed_stdout_is_exit_2(files, command):
    # predict's model does not exist: the closed stdout is found before the model is looked for
    args = {"route": ["route", files["pred.parquet"], "-c", files["costs.yaml"]],
            "predict": ["predict", "no-such-model-folder", files["prompts.jsonl"]],
            "leaderboard": ["leaderboard", files["b.parquet"]]}[command]  # fmt: skip
    proc = subprocess.run(
        ["bash", "-c", 'exec "$@" >&-', "p2l", sys.executable, "-m", "p2l_cli",
         *map(str, args), "-o", "-"],
        stderr=subprocess.PIPE, env=_env(), cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr.decode()
    assert "standard output is closed" in _error_line(proc.stderr)


@pytest.mark.slow
def test_head_of_a_route_pipe_is_quiet(files):
    """The real pipeline of the issue: `p2l route ... -o - | head -1`."""
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1 > /dev/null', "p2l", sys.executable,
         "-m", "p2l_cli", "route", str(files["pred.parquet"]), "-c", str(files["costs.yaml"]),
         "-o", "-"],
        stderr=subprocess.PIPE, env=_env(), cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 141), proc.stderr.decode()  # 0 when it all fit the pipe
    assert b"error" not in proc.stderr and b"Traceback" not in proc.stderr
