"""The reference implementation's extra likelihoods (rk-reparam, ba and the tie-only ones)
against its formulas written out here in 200-digit arithmetic, not in log space."""

from __future__ import annotations

import json
import math

import mpmath as mp
import numpy as np
import pytest
import torch

from p2l_cli.stats import families

mp.mp.dps = 200
ABS_TOL, REL_TOL = 1e-12, 1e-10


def close(got: float, want: mp.mpf) -> bool:
    if want == 0:
        return got == -math.inf or abs(got) <= ABS_TOL
    return abs(got - float(want)) <= ABS_TOL + REL_TOL * abs(float(want))


def reference_probs(a, b, eta, family, gamma=0.0):
    """(a wins, b wins, tie, tie both bad) by the reference's formulas: rk-reparam
    t = e^eta + 1.000001, p_win = pi_a / (pi_a + t pi_b + 1), tie the rest; ba
    t = e^eta + 1.02 and a reference strength pi_gamma = e^gamma in place of 1."""
    pa, pb = mp.exp(mp.mpf(a)), mp.exp(mp.mpf(b))
    if family == "rk-reparam":
        t = mp.exp(mp.mpf(eta)) + mp.mpf("1.000001")
        win, loss = pa / (pa + t * pb + 1), pb / (pb + t * pa + 1)
        return [win, loss, 1 - win - loss, mp.mpf(0)]
    t = mp.exp(mp.mpf(eta)) + mp.mpf("1.02")
    pg = mp.exp(mp.mpf(gamma))
    win, loss = pa / (pa + t * pb + pg), pb / (pb + t * pa + pg)
    bb = pg / (pg + pa + pb)
    return [win, loss, 1 - win - loss - bb, bb]


CASES = [
    (0.0, 0.0, 0.0, 0.0),
    (1.3, -0.4, -8.0, 0.7),
    (-2.0, 3.5, 1.5, -1.2),
    (30.0, -30.0, -12.0, 2.0),
    (12.0, -3.0, 20.0, 0.0),
    (-5.0, -5.5, 0.3, -3.0),
]


@pytest.mark.parametrize("a,b,eta,gamma", CASES)
def test_rk_reparam_matches_reference_formula(a, b, eta, gamma):
    want = reference_probs(a, b, eta, "rk-reparam")
    got = families.outcome_log_probs(torch.tensor(a, dtype=torch.float64),
                                     torch.tensor(b, dtype=torch.float64),
                                     torch.tensor(eta, dtype=torch.float64), "rk-reparam")
    for g, w in zip(got.tolist(), want):
        assert close(g, mp.log(w) if w > 0 else w), (g, w)
    assert math.isclose(float(got.exp().sum()), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("a,b,eta,gamma", CASES)
def test_ba_matches_reference_formula_with_gamma(a, b, eta, gamma):
    want = reference_probs(a, b, eta, "ba", gamma)
    coefs = families.ba_coefficients(torch.tensor([[a, b]], dtype=torch.float64),
                                     torch.tensor([gamma], dtype=torch.float64))
    got = families.outcome_log_probs(coefs[0, 0], coefs[0, 1],
                                     torch.tensor(eta, dtype=torch.float64), "ba")
    for g, w in zip(got.tolist(), want):
        assert close(g, mp.log(w)), (g, w)
    assert math.isclose(float(got.exp().sum()), 1.0, abs_tol=1e-12)


def _tie_only_reference(a, b, eta, code, family):
    """The reference's tie-only losses: P(not tie) = p_win + p_loss; P(tie) = the rest
    (tie-rk, tie-grk: either kind of tie); tie-bb-grk: P(both bad) against the rest."""
    pa, pb = mp.exp(mp.mpf(a)), mp.exp(mp.mpf(b))
    if family == "tie-rk":
        w = max(mp.log(1 + mp.exp(mp.mpf("0.1") * (mp.mpf(eta) - mp.mpf("22.5")))) / mp.mpf("0.1"),
                mp.mpf("0.02"))
        sig = lambda x: 1 / (1 + mp.exp(-x))
        decisive = sig(mp.mpf(a) - b - w) + sig(mp.mpf(b) - a - w)
        p = decisive if code == 0 else 1 - decisive
    else:
        t = mp.exp(mp.mpf(eta)) + mp.mpf("1.000001")
        win, loss = pa / (pa + t * pb + 1), pb / (pb + t * pa + 1)
        bb = 1 / (1 + pa + pb)
        if family == "tie-grk":
            p = win + loss if code == 0 else 1 - win - loss
        else:
            p = bb if code == 2 else 1 - bb
    return -mp.log(p)


@pytest.mark.parametrize("family", ["tie-rk", "tie-grk", "tie-bb-grk"])
@pytest.mark.parametrize("a,b,eta,gamma", CASES)
def test_tie_only_likelihoods_match_reference(family, a, b, eta, gamma):
    if family == "tie-rk":
        eta = eta + 22.5  # around the rk link's working range
    for code in (0, 1, 2):
        got = families.vote_nll(torch.tensor(a, dtype=torch.float64),
                                torch.tensor(b, dtype=torch.float64), torch.tensor(code),
                                torch.tensor(eta, dtype=torch.float64), family)
        want = _tie_only_reference(a, b, eta, code, family)
        assert close(float(got), want), (family, code, float(got), want)


def test_tie_only_probabilities_sum_to_one_and_ignore_order():
    a, b, eta = torch.tensor([0.4, -2.0]), torch.tensor([1.1, 3.0]), torch.tensor([22.0, 25.0])
    for family in ("tie-rk", "tie-grk", "tie-bb-grk"):
        eta_f = eta if family == "tie-rk" else eta - 22.0
        codes = (0, 1) if family != "tie-bb-grk" else (0, 2)
        total = sum(torch.exp(-families.vote_nll(a, b, torch.tensor(c), eta_f, family))
                    for c in codes)
        torch.testing.assert_close(total, torch.ones(2, dtype=total.dtype))
        if family == "tie-rk":  # symmetric in the pair
            torch.testing.assert_close(families.vote_nll(a, b, torch.tensor(0), eta_f, family),
                                       families.vote_nll(b, a, torch.tensor(0), eta_f, family))


def test_tie_only_refused_where_a_ranking_is_needed():
    with pytest.raises(ValueError, match="tie-only likelihood, for evaluating tie prediction"):
        families.canonical_family("tie-rk")
    assert families.canonical_family("tie-bag", tie_only=True) == "tie-grk"
    assert families.base_family("tie-bb-bag") == "grk"
    assert families.has_eta("tie-rk")


@pytest.mark.parametrize("family", ["rk-reparam", "ba", "tie-rk", "tie-grk", "tie-bb-grk"])
def test_gradients_finite_at_extremes(family):
    coefs = torch.tensor([[60.0, -60.0, 0.0], [-0.5, 0.5, 40.0]], dtype=torch.float64,
                         requires_grad=True)
    eta = torch.tensor([-30.0, 30.0], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 1, 0], [2, 1, 2]])
    loss = families.labels_nll(coefs, labels, eta, family)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(coefs.grad).all() and torch.isfinite(eta.grad).all()


@pytest.mark.parametrize("family", ["rk-reparam", "ba"])
def test_bulk_and_factored_forms_agree_with_log_space(family):
    gen = torch.Generator().manual_seed(0)
    coefs = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 3
    eta = torch.randn(5, generator=gen, dtype=torch.float64)
    want = families.outcome_probs(coefs[:, :, None], coefs[:, None, :], eta[:, None, None],
                                  family)[..., families.WIN]
    torch.testing.assert_close(families.outright_win_matrices(coefs, eta, family), want)
    wins = families.win_matrix(coefs, eta, family)
    torch.testing.assert_close(wins + wins.transpose(-1, -2),
                               torch.ones_like(wins))  # a tie counts half to each side
    if family == "ba":
        bb = families.outcome_probs(coefs[:, :, None], coefs[:, None, :], eta[:, None, None],
                                    family)[..., families.TIE_BOTH_BAD]
        torch.testing.assert_close(families.both_bad_matrices(coefs), bb)


def test_rk_reparam_treats_both_kinds_of_tie_alike():
    a, b, eta = torch.tensor(0.3), torch.tensor(-0.2), torch.tensor(0.5)
    one = families.vote_nll(a, b, torch.tensor(1), eta, "rk-reparam")
    two = families.vote_nll(a, b, torch.tensor(2), eta, "rk-reparam")
    assert float(one) == float(two)


@pytest.mark.parametrize("family", ["rk-reparam", "ba"])
def test_marginal_fit_recovers_the_pair_probabilities(family):
    """A marginal fit (the aggregation's solver) of the expected votes of one pair under
    known (theta, eta) gets those probabilities back."""
    from p2l_cli.stats import marginal, pairfit

    assert not pairfit.shift_invariant(family)
    theta = torch.tensor([0.8, -0.3], dtype=torch.float64)
    eta = torch.tensor(0.4, dtype=torch.float64)
    probs = families.outcome_probs(theta[0], theta[1], eta, family)
    winner, loser, code, weight = [0, 1, 0], [1, 0, 1], [0, 0, 1], probs[:3].tolist()
    if family == "ba":
        winner, loser, code = winner + [0], loser + [1], code + [2]
        weight.append(float(probs[3]))
    fit = marginal.fit_marginal(winner, loser, code, 2, family, weights=weight, ci="none")
    got = families.outcome_probs(torch.as_tensor(fit.theta[0]), torch.as_tensor(fit.theta[1]),
                                 torch.as_tensor(fit.eta), family)
    torch.testing.assert_close(got, probs, atol=1e-5, rtol=0)


def test_vote_metrics_score_tie_prediction():
    """vote_metrics with a tie-only likelihood, and the tie columns of an rk/grk model,
    against the mean of the per-vote reference values computed above."""
    from p2l_cli.stats.metrics import vote_metrics

    coefs = [[0.5, -0.2, 1.0], [2.0, 0.0, -1.0], [0.1, 0.2, 0.3], [-1.0, 1.0, 0.0]]
    labels = [[0, 1, 0], [2, 0, 1], [1, 2, 2], [1, 0, 0]]
    eta = [0.3, -1.0, 2.0, 0.0]
    for family, base in (("tie-grk", "grk"), ("tie-bb-grk", "grk"), ("tie-rk", "rk")):
        etas = [e + 22.5 for e in eta] if base == "rk" else eta
        want = sum(_tie_only_reference(c[w], c[loser], e, code, family)
                   for c, (w, loser, code), e in zip(coefs, labels, etas)) / len(labels)
        c64, e64 = np.asarray(coefs, np.float64), np.asarray(etas, np.float64)
        got = vote_metrics(c64, np.asarray(labels), e64, family)
        assert close(got["nll"], want)
        key = "tie_bb_nll" if family == "tie-bb-grk" else "tie_nll"
        assert close(vote_metrics(c64, np.asarray(labels), e64, base)[key], want)
    assert "tie_nll" not in vote_metrics(coefs, labels, None, "bt")
    with pytest.raises(ValueError, match="no both-bad ties"):
        families.tie_event_nll(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1),
                               "rk", both_bad=True)


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_fits_the_new_families_and_refuses_tie_only_ones(tmp_path):
    """leaderboard fits rk-reparam and ba to votes (the fit's probabilities are those of the
    family); tie-only likelihoods and unsimulated families are one-line exit-2 errors."""
    from conftest import run_cli
    from train_helpers import write_data_dir

    data = write_data_dir(tmp_path / "votes", n_train=64, n_val=8)
    for family in ("rk-reparam", "ba"):
        out = tmp_path / f"{family}.json"
        result = run_cli("leaderboard", data / "train.parquet", "--family", family,
                         "--format", "json", "-o", out)
        assert result.exit_code == 0, result.output
        board = json.loads(out.read_text())
        assert board["p2l"]["family"] == family and len(board["rows"]) == 3
        assert math.isfinite(board["p2l"]["eta"])
    for args in (["leaderboard", data / "train.parquet", "--family", "tie-rk"],
                 ["simulate", tmp_path / "sim", "--family", "ba"]):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        assert "--family" in _one_line(result)
