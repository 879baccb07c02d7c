"""The command line as a whole: help, version, exit codes, stdout kept clean."""

from __future__ import annotations

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
