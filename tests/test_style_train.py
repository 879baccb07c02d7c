"""`p2l train --style-control`: the style coefficients come from the training votes and each
vote's style term enters the loss, so the trained coefficients hold style fixed."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import run_cli
from tiny import make_backbone
from train_helpers import CODE, MODELS, OTHER, WRITING

from p2l_cli.contracts.style import relative_difference
from p2l_cli.stats.style import TRAIN_STYLE_REG, fit_style
from p2l_cli.train import RunOptions, train_p2l

VERBOSE = 1  # "generalist" writes answers three times as long as the others


def styled_battles(n: int, seed: int, models=MODELS, verbose=(VERBOSE,),
                   must_include: int | None = None) -> pl.DataFrame:
    """Planted skills (models 0 on code prompts, 2 on writing prompts) plus a taste for long
    answers: the logit of "a wins" gains 2 x the relative length difference; the models in
    ``verbose`` write three times as long. ``must_include``: every vote involves it."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = rng.choice(["code", "writing", "other"])
        prompt = [str(rng.choice({"code": CODE, "writing": WRITING, "other": OTHER}[kind]))]
        a, b = (int(v) for v in rng.choice(len(models), size=2, replace=False))
        if must_include is not None and must_include not in (a, b):
            a = must_include
        skill = np.zeros(len(models))
        if kind != "other":
            skill[{"code": 0, "writing": 2}[kind]] = 0.8
        tokens = [300.0 * (3 if m in verbose else 1) * rng.lognormal(0, 0.2) for m in (a, b)]
        logit = skill[a] - skill[b] + 2.0 * relative_difference(tokens[0], tokens[1])
        a_won = rng.random() < 1 / (1 + np.exp(-logit))
        winner = "model_a" if a_won else "model_b"
        rows.append({
            "id": f"s{seed}-{i}", "prompt": prompt, "model_a": models[a], "model_b": models[b],
            "winner": winner, "labels": [a, b, 0] if a_won else [b, a, 0],
            "sum_assistant_tokens_a": tokens[0], "sum_assistant_tokens_b": tokens[1],
            "list_count_a": 0.0, "list_count_b": 0.0,
        })  # fmt: skip
    return pl.DataFrame(rows)


def write_styled_data(folder, n_train=600, n_val=150, seed=0):
    folder.mkdir(parents=True)
    styled_battles(n_train, seed).write_parquet(folder / "train.parquet")
    styled_battles(n_val, seed + 1).write_parquet(folder / "val.parquet")
    (folder / "models.json").write_text(json.dumps(MODELS))
    return folder


def _settings(backbone, **extra):
    return {"backbone": str(backbone), "freeze_backbone": True, "head_solver": "ridge-cv",
            "max_length": 32, "loss": "bt", **extra}


@pytest.mark.slow
def test_style_control_in_training_holds_length_fixed(tmp_path):
    backbone = make_backbone("bert", tmp_path / "bert")
    data = write_styled_data(tmp_path / "data")
    styled, plain = tmp_path / "styled", tmp_path / "plain"
    train_p2l(data, styled, None, _settings(backbone, style_control=True), RunOptions())
    train_p2l(data, plain, None, _settings(backbone), RunOptions())

    # the saved coefficients are the contextual fit of the training votes, read here anew
    saved = json.loads((styled / "training_config.json").read_text())["style"]
    train = pl.read_parquet(data / "train.parquet")
    labels = np.array(train["labels"].to_list())
    sign = np.where(train["winner"] == "model_b", -1, 1)
    raw = np.column_stack([
        relative_difference(train["sum_assistant_tokens_a"], train["sum_assistant_tokens_b"]),
        relative_difference(train["list_count_a"], train["list_count_b"]),
    ])
    direct = fit_style(labels[:, 0], labels[:, 1], labels[:, 2], sign, raw, len(MODELS), "bt",
                       reg=TRAIN_STYLE_REG, ci="none")
    assert saved["features"] == ["length", "lists"]
    np.testing.assert_allclose(saved["coefficients"], direct.beta, atol=1e-6)
    assert saved["coefficients"][0] > 0.5  # planted: 2 per unit, the feature's sd ~0.4
    assert saved["coefficients"][1] == 0.0  # no lists anywhere

    # the generalist wins by length alone: first without style control, not with it
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in OTHER + CODE + WRITING))
    boards = {}
    for name, folder in (("plain", plain), ("styled", styled)):
        out = tmp_path / f"{name}.parquet"
        result = run_cli("predict", str(folder), str(val), "-o", str(out))
        assert result.exit_code == 0, result.output
        coefs = np.array(pl.read_parquet(out)["coefs"].to_list())
        boards[name] = coefs.mean(axis=0)
    assert np.argmax(boards["plain"]) == VERBOSE
    lead = {k: v[VERBOSE] - np.delete(v, VERBOSE).max() for k, v in boards.items()}
    assert lead["styled"] < lead["plain"] - 0.3, lead
    metrics = json.loads((styled / "metrics.json").read_text())
    assert np.isfinite(metrics["val"]["p2l"]["nll"])


@pytest.mark.slow
def test_style_control_with_adamw_steps(tmp_path):
    backbone = make_backbone("bert", tmp_path / "bert")
    data = write_styled_data(tmp_path / "data", n_train=120, n_val=40)
    out = tmp_path / "model"
    train_p2l(data, out, None, _settings(backbone, head_solver="adamw", style_control=True,
                                         epochs=1, batch_size=32), RunOptions())
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["val"]["p2l"]["nll"])
    assert json.loads((out / "training_config.json").read_text())["style_control"] is True


def test_style_control_needs_style_columns(tmp_path):
    from train_helpers import write_data_dir

    data = write_data_dir(tmp_path / "data")
    result = run_cli("train", str(data), "-o", str(tmp_path / "model"), "--style-control",
                     "--backbone", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert "train.parquet has no style columns" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_extend_keeps_style_held_fixed(tmp_path):
    """A newcomer that wins by writing long answers: `p2l extend` on a style-controlled
    model gives it a lower rating than on a plain model (the new votes' style terms enter
    the fit), and refuses new votes without the style columns."""
    backbone = make_backbone("bert", tmp_path / "bert")
    data = write_styled_data(tmp_path / "data")
    styled, plain = tmp_path / "styled", tmp_path / "plain"
    train_p2l(data, styled, None, _settings(backbone, style_control=True), RunOptions())
    train_p2l(data, plain, None, _settings(backbone), RunOptions())
    everyone = [*MODELS, "newcomer"]
    votes = tmp_path / "new.parquet"
    styled_battles(400, 7, models=everyone, verbose=(3,), must_include=3).write_parquet(votes)
    ratings = {}
    for name, folder in (("styled", styled), ("plain", plain)):
        out = tmp_path / f"{name}-plus"
        result = run_cli("extend", str(folder), str(votes), "-o", str(out), "--rating-only")
        assert result.exit_code == 0, result.output
        preds = tmp_path / f"{name}.parquet"
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in OTHER))
        result = run_cli("predict", str(out), str(prompts), "-o", str(preds))
        assert result.exit_code == 0, result.output
        coefs = np.array(pl.read_parquet(preds)["coefs"].to_list()).mean(axis=0)
        order = json.loads((out / "model_list.json").read_text())
        new = order.index("newcomer")
        ratings[name] = coefs[new] - np.delete(coefs, new).mean()
    # on "other" prompts every known model is equal in strength; the newcomer too, but it
    # writes long answers: only the style-controlled extension sees through that
    assert ratings["plain"] > 0.4, ratings
    assert abs(ratings["styled"]) < ratings["plain"] - 0.3, ratings
    bare = tmp_path / "bare.parquet"
    pl.read_parquet(votes).drop("list_count_a", "list_count_b").write_parquet(bare)
    result = run_cli("extend", str(styled), str(bare), "-o", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "the votes lack lists" in result.output
