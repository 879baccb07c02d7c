"""The Python API: the README's example runs as written, after the tour's commands (a tiny
backbone stands in for MiniLM), and each call agrees with its command."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import REPO, run_p2l
from tiny import make_backbone

import p2l_cli as p2l
from p2l_cli.errors import UserError


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    root = tmp_path_factory.mktemp("tour")
    run_p2l("simulate", root / "arena", "--battles", "400", "--models", "4", "--seed", "3",
            check=True)  # fmt: skip
    run_p2l("prepare", root / "arena" / "battles.parquet", "-o", root / "data", check=True)
    bert = make_backbone("bert", root / "bert")
    run_p2l("train", root / "data", "-o", root / "model", "--backbone", bert,
            "--freeze-backbone", "--max-length", "64", check=True)  # fmt: skip
    return root


@pytest.mark.slow
def test_the_readme_example_runs(tour):
    proc = subprocess.run([sys.executable, "-c", readme_example()], cwd=tour,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads((tour / "model" / "model_list.json").read_text())
    assert f"{models} (2, {len(models)})" in proc.stdout


@pytest.mark.slow
def test_calls_agree_with_their_commands(tour, tmp_path):
    board = p2l.fit_leaderboard(tour / "data" / "train.parquet")
    csv = tmp_path / "board.csv"
    run_p2l("leaderboard", tour / "data" / "train.parquet", "-o", csv, check=True)
    by_command = pl.read_csv(csv)
    assert board["model"].to_list() == by_command["model"].to_list()
    np.testing.assert_allclose(board["score"].to_numpy(), by_command["score"].to_numpy(),
                               atol=0.05)  # fmt: skip

    prompts = ["write a python function that sorts a list", "hola, ¿qué tal?"]
    model = p2l.load_model(tour / "model")
    preds = p2l.predict_leaderboards(model, prompts)
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    run_p2l("predict", tour / "model", jsonl, "-o", tmp_path / "p.parquet", check=True)
    stored = np.array(pl.read_parquet(tmp_path / "p.parquet")["coefs"].to_list())
    np.testing.assert_allclose(preds.coefs, stored, atol=1e-5)

    # routing: within the budget, each prompt's chosen model is on its cost/win-rate frontier
    costs = p2l.read_costs(tour / "arena" / "costs.yaml")
    cheapest = min(costs.values())
    routes = p2l.route_prompts(preds, costs=costs, budget=cheapest, scope="prompt")
    assert (routes["cost"].to_numpy() <= cheapest + 1e-12).all()
    unbounded = p2l.route_prompts(preds)
    best = preds.coefs.argmax(axis=1)  # bt-family win rates rise with the coefficient
    assert unbounded["model"].to_list() == [preds.models[i] for i in best]


def test_bad_input_raises_the_commands_message(tmp_path):
    votes = pl.DataFrame({"model_a": ["x"], "model_b": ["y"], "winner": ["nobody"]})
    with pytest.raises(UserError, match="row 1: winner 'nobody'"):
        p2l.fit_leaderboard(votes)
    with pytest.raises(ValueError, match="a budget needs costs"):
        p2l.route_prompts(None, budget=1.0)


def test_the_package_imports_its_api_lazily():
    code = "import sys, p2l_cli; assert 'torch' not in sys.modules; print(p2l_cli.__all__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError):
        p2l.no_such_call  # noqa: B018
