"""The two expected win rates, and the one prompt leaderboard that ``predict --prompt``,
``serve`` and ``leaderboard --prompt-index`` all show, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from p2l_cli.contracts.predictions import predictions_from_frame
from p2l_cli.leaderboard import prompt_leaderboard, prompt_rows
from p2l_cli.stats.families import outcome_probs
from p2l_cli.stats.winrates import win_rates_vs_opponents, win_rates_vs_others


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_the_two_win_rates_for_three_models_in_bt():
    theta = np.array([1.0, 0.0, -1.0])
    # the top model against the two others, and against a uniform opponent (itself: 1/2)
    others = (sigmoid(1) + sigmoid(2)) / 2
    uniform = (0.5 + sigmoid(1) + sigmoid(2)) / 3
    assert others == pytest.approx(0.806, abs=5e-4) and uniform == pytest.approx(0.704, abs=5e-4)
    assert win_rates_vs_others(theta, None, "bt")[0] == pytest.approx(others, abs=1e-12)
    vs_uniform = win_rates_vs_opponents(theta[None], np.full(3, 1 / 3))[0]
    assert vs_uniform[0] == pytest.approx(uniform, abs=1e-12)


@pytest.mark.parametrize(("family", "eta"), [("bt", None), ("bt-tie", None), ("rk", 24.0),
                                             ("grk", 0.7)])
def test_win_rates_vs_others_sum_the_pairs_by_brute_force(family, eta):
    theta = np.array([0.4, -0.2, 1.1, 0.3])
    got = win_rates_vs_others(theta, eta, family)

    for i in range(4):
        rates = []
        for j in range(4):
            if j != i:
                tie = None if eta is None else torch.tensor(eta, dtype=torch.float64)
                p = outcome_probs(torch.tensor(theta[i], dtype=torch.float64),
                                  torch.tensor(theta[j], dtype=torch.float64), tie, family)
                win, _, tie, both_bad = p.tolist()
                rates.append(win + 0.5 * (tie + both_bad))
        assert got[i] == pytest.approx(np.mean(rates), abs=1e-9)


def test_win_rates_vs_others_in_rk_by_hand():
    theta = np.array([0.4, -0.2, 1.1])
    eta = 24.0
    width = max(math.log1p(math.exp(0.1 * (eta - 22.5))) / 0.1, 0.02)
    got = win_rates_vs_others(theta, eta, "rk")
    for i in range(3):
        rates = []
        for j in range(3):
            if j != i:
                win = sigmoid(theta[i] - theta[j] - width)
                loss = sigmoid(theta[j] - theta[i] - width)
                rates.append(win + 0.5 * (1 - win - loss))
        assert got[i] == pytest.approx(np.mean(rates), abs=1e-9)


@pytest.mark.parametrize(("family", "eta", "centred"), [("rk", 24.0, True), ("grk", 0.7, False),
                                                        ("bt", None, True)])
def test_one_prompt_leaderboard_for_predict_serve_and_leaderboard(family, eta, centred):
    models = ["a", "b", "c"]
    theta = np.array([0.4, -0.2, 1.1], dtype=np.float32)
    rows = prompt_rows(models, theta, eta, family)
    assert [r["model"] for r in rows] == ["c", "a", "b"] and [r["rank"] for r in rows] == [1, 2, 3]
    level = theta.astype(np.float64).mean() if centred else 0.0
    rates = win_rates_vs_others(theta.astype(np.float64), eta, family)
    for row in rows:
        i = models.index(row["model"])
        assert row["coef"] == pytest.approx(theta[i])
        assert row["score"] == pytest.approx(1000 + 400 / math.log(10) * (theta[i] - level))
        assert row["win_rate"] == pytest.approx(rates[i], abs=1e-9)
    frame = pl.DataFrame({"coefs": [theta.tolist()], "eta": [eta or 0.0]})
    preds = predictions_from_frame(frame, {"models": models, "loss": family}, "p")
    table = prompt_leaderboard(preds, 0).table
    assert table["model"].to_list() == [r["model"] for r in rows]
    np.testing.assert_allclose(table["score"].to_numpy(), [r["score"] for r in rows])
