"""`p2l demo`: the pipeline's command lines, and the reduced demo run as a real subprocess."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import polars as pl
import pytest

from p2l_cli import demo
from p2l_cli.commands.demo import run_command
from p2l_cli.errors import UserError
from tests.conftest import REPO, run_p2l


def test_stages_are_command_lines_that_the_shell_splits_back():
    layout = demo.Layout(Path("/tmp/some where"))
    stages = (
        demo.data_stages(layout, demo.SIZES["small"], 3)
        + demo.model_stages(layout, demo.SIZES["small"], 3, overwrite=True)
        + demo.evaluation_stages(layout, plots=False)
        + demo.leaderboard_stages(layout)
        + demo.route_stages(layout, 0.00123)
    )
    for stage in stages:
        words = shlex.split(stage.command)
        assert words[0] == "p2l" and words[1:] == stage.argv
    commands = [stage.argv[0] for stage in stages]
    assert commands[:5] == ["simulate", "prepare", "prepare", "train", "predict"]
    assert {"evaluate", "leaderboard", "route"} <= set(commands)
    route = stages[-1].argv
    assert route[route.index("--budget") + 1] == "0.00123"
    # training validates on development votes split off the training votes; evaluate scores
    # the held-out votes, which no stage before it reads
    held_out, fit = str(layout.data / "val.parquet"), str(layout.fit)
    assert stages[2].argv[1] == str(layout.data / "train.parquet") and stages[2].argv[3] == fit
    assert "--overwrite" in stages[3].argv
    assert stages[3].argv[1] == fit
    evaluate = next(i for i, stage in enumerate(stages) if stage.argv[0] == "evaluate")
    assert not any(held_out in stage.argv for stage in stages[:4])
    assert stages[evaluate].argv[2] == held_out


def test_budget_is_between_the_cheapest_and_the_dearest_answer(tmp_path):
    costs = tmp_path / "costs.yaml"
    costs.write_text(
        "a: 0.0001\nb:\n  price_per_million_output_tokens: 10\n  mean_output_tokens: 400\n"
    )
    assert demo.default_budget(costs) == pytest.approx(math.sqrt(0.0001 * 0.004))


def test_out_folder_must_be_empty_unless_overwrite(tmp_path):
    assert demo.check_out_dir(tmp_path / "new", overwrite=False) is False
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        demo.check_out_dir(tmp_path / "used", overwrite=False)
    assert demo.check_out_dir(tmp_path / "used", overwrite=True) is True


def test_example_prompts_file_is_valid():
    rows = pl.read_ndjson(REPO / "examples" / "prompts.jsonl")
    assert rows.height >= 20 and set(rows.columns) == {"prompt", "category"}
    from p2l_cli.data.prompt_bank import CATEGORY_NAMES

    assert set(rows["category"]) == set(CATEGORY_NAMES)


def test_the_listing_leaves_out_checkpoints_and_hidden_files(tmp_path):
    for name in ("model/model.safetensors", "model/.p2l-train.lock", "model/checkpoints/a",
                 "arena/battles.parquet", "evaluation.json", ".hidden/x"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert demo.written_files(tmp_path) == [
        Path("arena/battles.parquet"), Path("evaluation.json"), Path("model/model.safetensors")
    ]


def test_recap_reports_the_share_with_ties_as_half_when_the_families_differ(tmp_path):
    """A bt-tie model scored against an rk truth has no share in its own likelihood (the
    families differ) but has one with ties counted as half a win for both."""
    layout = demo.Layout(tmp_path)
    report = {
        "p2l": {"nll": 0.6228}, "marginal": {"nll": 0.6561},
        "gain": {"nll": 0.0333, "low": 0.0187, "high": 0.0467},
        "oracle": {"available": True, "fraction_captured": None,
                   "fraction_captured_half": 0.8799},
    }  # fmt: skip
    layout.evaluation.write_text(json.dumps(report))
    lines = demo.recap(layout)
    assert lines[0].startswith("held-out NLL per vote: P2L 0.6228, marginal leaderboard 0.6561")
    assert lines[1] == ("share of the achievable gain (true coefficients) captured, ties as "
                        "half a win: 88%")  # fmt: skip
    report["oracle"] = {"available": False, "reason": "no truth"}
    layout.evaluation.write_text(json.dumps(report))
    assert len(demo.recap(layout)) == 1


@pytest.mark.slow
def test_small_demo_runs_every_stage_and_prints_rerunnable_commands(tmp_path):
    out = tmp_path / "demo"
    env = {"P2L_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_p2l("demo", "--small", "--out", out, env=env, timeout=600)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr[-4000:]
    for name in (
        "arena/battles.parquet",
        "arena/truth.parquet",
        "arena/costs.yaml",
        "arena/prompts.jsonl",
        "data/train.parquet",
        "data/val.parquet",
        "data/models.json",
        "fit/train.parquet",
        "fit/val.parquet",
        "model/model.safetensors",
        "model/metrics.json",
        "val_predictions.parquet",
        "evaluation.json",
        "prompt_predictions.parquet",
        "routes.parquet",
        "route_summary.json",
        "commands.sh",
    ):
        assert (out / name).is_file(), name
    commands = [
        line for line in (out / "commands.sh").read_text().splitlines() if line.startswith("p2l ")
    ]
    assert [shlex.split(c)[1] for c in commands][:5] == [
        "simulate", "prepare", "prepare", "train", "predict"
    ]
    flat = " ".join(stderr.split())  # the terminal may wrap long lines
    for command in commands:
        assert f"$ {command}" in flat

    report = json.loads((out / "evaluation.json").read_text())
    assert report["marginal"]["available"] and report["oracle"]["available"]
    share = round(100 * report["oracle"]["fraction_captured_half"])
    assert f"ties as half a win: {share}%" in flat
    assert "model/model.safetensors" in flat and ".p2l-train.lock" not in flat
    assert report["votes"] > 100 and math.isfinite(report["p2l"]["nll"])
    # the oracle (rk, the simulator's family) and the marginal (bt-tie) on one footing
    assert report["oracle"]["nll_half"] < report["marginal"]["nll_half"]

    # a printed command reruns by hand and gives the same figures
    evaluate = next(c for c in commands if shlex.split(c)[1] == "evaluate")
    words = shlex.split(evaluate)[1:]
    words[words.index("--json") + 1] = str(tmp_path / "again.json")
    again = run_p2l(*words, env=env, check=True)
    assert again.returncode == 0
    rerun = json.loads((tmp_path / "again.json").read_text())
    assert rerun["p2l"] == report["p2l"] and rerun["gain"] == report["gain"]

    again = run_p2l("demo", "--small", "--out", out, env=env)
    assert again.returncode == 2 and b"not empty" in again.stderr


def test_a_failing_stage_stops_the_demo_with_a_user_error(tmp_path):
    with pytest.raises(UserError, match="`p2l evaluate` failed"):
        run_command(["evaluate", str(tmp_path / "none.parquet"), str(tmp_path / "v.parquet")])
