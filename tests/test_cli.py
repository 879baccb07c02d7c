"""The command line as a whole: help, version, exit codes, stdout kept clean."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import run_cli, run_p2l

from p2l_cli import __version__

COMMANDS = ["simulate", "prepare", "train", "predict", "evaluate", "push", "leaderboard",
            "route", "demo", "env"]  # fmt: skip


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_each_subcommand_has_help_with_an_example():
    for name in COMMANDS:
        result = run_cli(name, "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "p2l " + name in result.output, f"{name} --help shows no example"


def test_version():
    result = run_cli("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_is_a_usage_error():
    proc = run_p2l("frobnicate")
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr


def test_user_error_is_one_line_on_stderr_and_exit_2(tmp_path):
    missing = tmp_path / "missing.parquet"
    proc = run_p2l("leaderboard", missing)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert str(missing.name) in err


# ``main`` with an exit handler that says when the interpreter's teardown runs
WITH_TEARDOWN_MARK = """
import atexit, sys
from p2l_cli.cli import main
atexit.register(lambda: print("teardown ran", file=sys.stderr, flush=True))
sys.argv = ["p2l", *sys.argv[1:]]
main()
"""


def _main_with_mark(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", WITH_TEARDOWN_MARK, *map(str, args)],
                          capture_output=True, env=env, timeout=120, check=False)  # fmt: skip


def test_a_failed_command_skips_the_interpreters_teardown(tmp_path):
    # native thread pools racing at teardown once turned an exit-2 error into a SIGABRT
    missing = tmp_path / "missing.parquet"
    failed = _main_with_mark("leaderboard", missing)
    err = failed.stderr.decode()
    assert failed.returncode == 2, err
    assert err.startswith("error:") and missing.name in err and len(err.splitlines()) == 1, err
    assert "teardown ran" not in err
    assert not list(tmp_path.iterdir())  # nothing left behind

    usage = _main_with_mark("leaderboard", "--no-such-option")
    assert usage.returncode == 2 and "teardown ran" not in usage.stderr.decode()

    ok = _main_with_mark("--version")
    assert ok.returncode == 0 and __version__ in ok.stdout.decode()
    assert "teardown ran" in ok.stderr.decode()

