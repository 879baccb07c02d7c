"""Vote metrics and calibration bins against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from p2l_cli.stats.metrics import calibration_table, expected_calibration_error, vote_metrics


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


THETA = [0.5, -0.5, 1.0]
# winner, loser, tie code: 0 beats 1; 2 beats 0; 1 beats 2 (an upset); 0 ties 2
LABELS = [[0, 1, 0], [2, 0, 0], [1, 2, 0], [0, 2, 1]]


def test_bt_metrics_by_hand():
    got = vote_metrics(np.array(THETA), np.array(LABELS), family="bt")
    p = [sig(1.0), sig(0.5), sig(-1.5)]  # the winners' probabilities, ties dropped
    assert got["n"] == 3
    assert got["nll"] == pytest.approx(-sum(math.log(x) for x in p) / 3, rel=1e-12)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["brier"] == pytest.approx(sum((1 - x) ** 2 for x in p) / 3, rel=1e-12)


def test_bt_tie_metrics_count_ties():
    got = vote_metrics(torch.tensor(THETA), torch.tensor(LABELS), family="bt-tie")
    p = [sig(1.0), sig(0.5), sig(-1.5)]
    tie_nll = -0.5 * (math.log(sig(-0.5)) + math.log(sig(0.5)))
    assert got["n"] == 4
    assert got["nll"] == pytest.approx((-sum(math.log(x) for x in p) + tie_nll) / 4, rel=1e-12)
    assert got["accuracy"] == pytest.approx(2 / 3)  # the tie has no predicted winner
    brier = (sum((1 - x) ** 2 for x in p) + (sig(-0.5) - 0.5) ** 2) / 4
    assert got["brier"] == pytest.approx(brier, rel=1e-12)


def test_rk_per_vote_coefficients_and_weights():
    coefs = np.array([THETA, [0.0, 0.0, 0.0], [2.0, 1.0, -1.0], THETA])
    eta = np.array([-10.0, -12.0, -8.0, -9.0])
    weights = np.array([1.0, 2.0, 0.5, 1.5])
    got = vote_metrics(coefs, LABELS, eta=eta, family="rk", weights=weights)

    def width(e):
        return max(10 * math.log1p(math.exp(0.1 * (e - 22.5))), 0.02)

    nlls, briers = [], []
    for row, (w_idx, l_idx, code), e in zip(coefs, LABELS, eta):
        d, s = row[w_idx] - row[l_idx], width(e)
        p_win, p_loss = sig(d - s), sig(-d - s)
        p_tie = 1 - p_win - p_loss
        nlls.append(-math.log(p_win if code == 0 else p_tie))
        briers.append((p_win + p_tie / 2 - (1.0 if code == 0 else 0.5)) ** 2)
    # vote 1: 0 beats 1 with 0.5 > -0.5; vote 2: equal coefficients count half;
    # vote 3: with row [2, 1, -1], 1 beats 2 as predicted; vote 4 is a tie (left out)
    correct = [1.0, 0.5, 1.0]
    assert got["n"] == 4
    assert got["nll"] == pytest.approx(np.average(nlls, weights=weights), rel=1e-10)
    assert got["brier"] == pytest.approx(np.average(briers, weights=weights), rel=1e-10)
    assert got["accuracy"] == pytest.approx(np.average(correct, weights=weights[:3]))


def test_calibration_bins_by_hand():
    theta = np.array([0.0, 2.0, -1.0])
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 2, 0], [2, 0, 0], [1, 2, 1]])
    table = calibration_table(theta, labels, family="bt-tie", bins=4)
    # oriented from the lower index: P(0>1)=s(-2), P(0>1)=s(-2), P(0>2)=s(1), P(0>2)=s(1),
    # P(1>2)=s(3); observed 0, 1, 1, 0, 1/2
    preds = np.array([sig(-2), sig(-2), sig(1), sig(1), sig(3)])
    obs = np.array([0, 1, 1, 0, 0.5])
    bins = np.minimum((preds * 4).astype(int), 3)
    assert table["bin"].to_list() == sorted(set(bins.tolist()))
    for row in table.iter_rows(named=True):
        inside = bins == row["bin"]
        assert row["votes"] == inside.sum()
        assert row["predicted"] == pytest.approx(preds[inside].mean())
        assert row["observed"] == pytest.approx(obs[inside].mean())
    ece = sum(abs(preds[bins == b].mean() - obs[bins == b].mean()) * (bins == b).sum()
              for b in set(bins.tolist())) / 5
    assert expected_calibration_error(table) == pytest.approx(ece)


def test_bad_label_shape():
    with pytest.raises(ValueError, match="labels"):
        vote_metrics(np.zeros(3), np.zeros((4, 2), int))
