"""One rule for outputs: a command that writes a folder (simulate, prepare, train, demo)
refuses a folder that already holds files unless --overwrite is given; single output files
(-o of predict, leaderboard, route; --json of evaluate) are replaced atomically."""

from __future__ import annotations

import json

import polars as pl
import pytest

from p2l_cli import demo
from tests.conftest import run_cli

SMALL_ARENA = ["--battles", "120", "--models", "3", "--prompts", "0", "-q"]


def _refused(result, option_value: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert option_value in lines[0] and "not empty" in lines[0] and "--overwrite" in lines[0]
    assert "Traceback" not in result.output


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("as_option", [False, True])
def test_simulate_refuses_a_used_folder_unless_overwrite(tmp_path, as_option):
    arena = tmp_path / "arena"
    target = ["-o", arena] if as_option else [arena]
    assert run_cli("simulate", *target, *SMALL_ARENA, "--seed", "1").exit_code == 0
    before = _snapshot(arena)
    _refused(run_cli("simulate", *target, *SMALL_ARENA, "--seed", "2"), str(arena))
    assert _snapshot(arena) == before  # nothing replaced
    result = run_cli("simulate", *target, *SMALL_ARENA, "--seed", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert _snapshot(arena) != before


def test_simulate_refuses_a_folder_with_foreign_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    _refused(run_cli("simulate", tmp_path, *SMALL_ARENA), str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_prepare_refuses_a_used_folder_unless_overwrite(tmp_path):
    arena, data = tmp_path / "arena", tmp_path / "data"
    assert run_cli("simulate", arena, *SMALL_ARENA).exit_code == 0
    votes = str(arena / "battles.parquet")
    assert run_cli("prepare", votes, "-o", data, "-q", "--val-fraction", "0.2").exit_code == 0
    before = _snapshot(data)
    _refused(run_cli("prepare", votes, "-o", data, "-q", "--val-fraction", "0.5"), str(data))
    assert _snapshot(data) == before
    result = run_cli("prepare", votes, "-o", data, "-q", "--val-fraction", "0.5", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((data / "prepare.json").read_bytes()) != json.loads(before["prepare.json"])
    assert sorted(p.name for p in data.iterdir()) == sorted(before)  # no staging left


def test_demo_refuses_a_used_folder_and_passes_overwrite_to_every_folder_stage(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    _refused(run_cli("demo", "--small", "--out", tmp_path), str(tmp_path))
    layout = demo.Layout(tmp_path)
    size = demo.SIZES["small"]
    for again in (False, True):
        stages = demo.data_stages(layout, size, 0, again) + demo.model_stages(
            layout, size, 0, again
        )
        folder_stages = [s for s in stages if s.argv[0] in ("simulate", "prepare", "train")]
        assert len(folder_stages) == 4
        assert all(("--overwrite" in s.argv) is again for s in folder_stages)


def test_single_output_files_are_replaced(tmp_path):
    battles = pl.DataFrame(
        {"model_a": ["a", "b", "a", "c"] * 5, "model_b": ["b", "c", "c", "a"] * 5,
         "winner": ["model_a", "model_b", "model_a", "model_b"] * 5}
    )
    votes = tmp_path / "votes.parquet"
    battles.write_parquet(votes)
    out = tmp_path / "board.csv"
    out.write_text("old contents\n")
    result = run_cli("leaderboard", votes, "-o", out, "--ci", "none", "-q")
    assert result.exit_code == 0, result.output
    assert "old contents" not in out.read_text() and "model" in out.read_text()
