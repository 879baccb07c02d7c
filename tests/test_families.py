"""The likelihood families against textbook formulas evaluated in 200-digit arithmetic."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch

from p2l_cli.stats import families

mp.mp.dps = 200  # "1 - win - loss - both bad" cancels down to e^-113 at |theta| = 50

# the links use an exact softplus (log(1 + e^x) via logaddexp, no switch to the identity),
# so float64 results agree with 200-digit arithmetic to rounding error
ABS_TOL, REL_TOL = 1e-12, 1e-10


def close(got: float, want: float) -> bool:
    return abs(got - want) <= ABS_TOL + REL_TOL * abs(want)


def textbook_rk_width(eta: float) -> mp.mpf:
    # softplus with beta 0.1 of (eta - 22.5), at least 0.02 (the published checkpoints' link)
    return max(mp.log(1 + mp.exp(mp.mpf("0.1") * (mp.mpf(eta) - mp.mpf("22.5")))) / mp.mpf("0.1"),
               mp.mpf("0.02"))


def textbook_probs(a: float, b: float, eta: float | None, family: str) -> list[mp.mpf]:
    """(a wins, b wins, tie, tie both bad) from the family's definition, not in log space."""
    pa, pb = mp.exp(mp.mpf(a)), mp.exp(mp.mpf(b))
    if family in ("bt", "bt-tie"):
        return [pa / (pa + pb), pb / (pa + pb), mp.mpf(0), mp.mpf(0)]
    if family == "rk":  # Rao-Kupper: P(a beats b) = pi_a / (pi_a + nu pi_b), nu = e^width
        nu = mp.exp(textbook_rk_width(eta))
        win, loss = pa / (pa + nu * pb), pb / (pb + nu * pa)
        tie = (nu**2 - 1) * pa * pb / ((pa + nu * pb) * (pb + nu * pa))
        return [win, loss, tie, mp.mpf(0)]
    # grounded RK with reference strength 0 (ba's coefficients are taken relative to gamma)
    t = mp.exp(mp.mpf(eta)) + 1 + mp.mpf("0.02" if family == "ba" else "1e-6")
    win = pa / (pa + t * pb + 1)
    loss = pb / (pb + t * pa + 1)
    if family == "rk-reparam":  # one tie outcome: everything but a win or a loss
        return [win, loss, 1 - win - loss, mp.mpf(0)]
    both_bad = 1 / (pa + pb + 1)
    return [win, loss, 1 - win - loss - both_bad, both_bad]


def _log(value: mp.mpf) -> float:
    return -math.inf if value == 0 else float(mp.log(value))


CASES = [
    (0.0, 0.0, 0.0),
    (1.3, -0.4, -8.0),
    (-2.0, 3.5, 1.5),
    (50.0, -50.0, -12.0),
    (-50.0, 50.0, 30.0),
    (50.0, 49.5, -40.0),
    (-50.0, -50.0, 0.0),
    (12.0, -3.0, 60.0),
]
ETA_EDGES = [-1e3, -200.0, -60.0, -14.0, 22.5, 100.0, 250.0]


def _family_log_probs(a, b, eta, family, dtype=torch.float64):
    return families.outcome_log_probs(
        torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype),
        None if eta is None else torch.tensor(eta, dtype=dtype), family,
    )


@pytest.mark.parametrize("family", families.FAMILIES)
@pytest.mark.parametrize("a,b,eta", CASES)
def test_log_probs_match_textbook(family, a, b, eta):
    eta = eta if families.has_eta(family) else None
    got = _family_log_probs(a, b, eta, family).numpy()
    want = [_log(p) for p in textbook_probs(a, b, eta, family)]
    for g, w in zip(got, want):
        if w == -math.inf:
            assert g == -math.inf
        else:
            assert close(g, w), (got, want)


@pytest.mark.parametrize("family", ["rk", "grk"])
@pytest.mark.parametrize("eta", ETA_EDGES)
def test_eta_near_its_limits(family, eta):
    for a, b in [(0.0, 0.0), (3.0, -2.0), (50.0, -50.0), (0.01, 0.0)]:
        got = _family_log_probs(a, b, eta, family).numpy()
        assert np.isfinite(got[:3]).all() and not np.isnan(got).any()
        want = [_log(p) for p in textbook_probs(a, b, eta, family)]
        for g, w in zip(got, want):
            if w != -math.inf:
                assert close(g, w), (a, b, got, want)


@pytest.mark.parametrize("family", families.FAMILIES)
def test_probabilities_sum_to_one(family):
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.uniform(-50, 50, 500))
    b = torch.tensor(rng.uniform(-50, 50, 500))
    eta = torch.tensor(rng.uniform(-60, 60, 500)) if families.has_eta(family) else None
    total = torch.logsumexp(families.outcome_log_probs(a, b, eta, family), dim=-1)
    assert total.abs().max() <= ABS_TOL


@pytest.mark.parametrize("family", families.FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vote_nll_gradients_finite_at_extremes(family, dtype):
    grid = torch.tensor([-50.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 50.0], dtype=dtype)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    a = a.reshape(-1).repeat(3).requires_grad_()
    b = b.reshape(-1).repeat(3).requires_grad_()
    code = torch.arange(3).repeat_interleave(49)
    eta = None
    if families.has_eta(family):
        eta = torch.linspace(-200, 200, a.numel(), dtype=dtype).requires_grad_()
    nll = families.vote_nll(a, b, code, eta, family)
    assert torch.isfinite(nll).all()
    grads = torch.autograd.grad(nll.sum(), [a, b] + ([eta] if eta is not None else []))
    for grad in grads:
        assert torch.isfinite(grad).all()


def test_vote_nll_by_family_and_tie_code():
    a, b = 0.7, -0.2
    a3, b3 = torch.full((3,), a, dtype=torch.float64), torch.full((3,), b, dtype=torch.float64)
    p = textbook_probs(a, b, None, "bt")
    nll = families.vote_nll(a3, b3, torch.tensor([0, 1, 2]),
                            family="bt-tie").numpy()
    half = -0.5 * (float(mp.log(p[0])) + float(mp.log(p[1])))
    np.testing.assert_allclose(nll, [-float(mp.log(p[0])), half, half], rtol=1e-12)
    bt = families.vote_nll(a3, b3, torch.tensor([0, 1, 2]),
                           family="bt").numpy()
    np.testing.assert_allclose(bt, [-float(mp.log(p[0])), 0.0, 0.0], rtol=1e-12)
    eta = -3.0
    g = textbook_probs(a, b, eta, "grk")
    grk = families.vote_nll(a3, b3, torch.tensor([0, 1, 2]),
                            torch.tensor(eta, dtype=torch.float64), family="grk").numpy()
    np.testing.assert_allclose(grk, [-float(mp.log(v)) for v in (g[0], g[2], g[3])], rtol=1e-10)


def test_win_matrix_counts_ties_half():
    coefs = torch.tensor([[0.3, -0.1, 1.2]], dtype=torch.float64)
    eta = torch.tensor([-5.0], dtype=torch.float64)
    w = families.win_matrix(coefs, eta, "rk")[0].numpy()
    for i in range(3):
        for j in range(3):
            p = textbook_probs(float(coefs[0, i]), float(coefs[0, j]), -5.0, "rk")
            assert abs(w[i, j] - float(p[0] + p[2] / 2)) < 1e-12
    np.testing.assert_allclose(w + w.T, np.ones((3, 3)), atol=1e-12)


def _direct_outcome_probs(theta_i, theta_j, eta, family):
    """(win, loss, tie, both bad) from the direct forms, the tie as one minus the rest."""
    family = families.canonical_family(family)
    zero = torch.zeros_like(theta_i)
    win = families.direct_win_probability(theta_i, theta_j, eta, family)
    if family in ("bt", "bt-tie"):
        return torch.stack([win, 1.0 - win, zero, zero], dim=-1)
    loss = families.direct_win_probability(theta_j, theta_i, eta, family)
    both_bad = (families.direct_both_bad_probability(theta_i, theta_j) if families.has_both_bad(family)
                else zero)
    tie = (1.0 - win - loss - both_bad).clamp_min(0.0)
    return torch.stack([win, loss, tie, both_bad], dim=-1)


@pytest.mark.parametrize("family", families.FAMILIES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, ABS_TOL), (torch.float32, 2e-6)])
def test_direct_probabilities_match_log_space(family, dtype, tol):
    rng = np.random.default_rng(2)
    a = torch.tensor(rng.uniform(-50, 50, 2000), dtype=dtype)
    b = torch.tensor(rng.uniform(-50, 50, 2000), dtype=dtype)
    a[:5] = torch.tensor([50.0, -50.0, 0.0, 3.0, -49.0])
    b[:5] = torch.tensor([-50.0, 50.0, 0.0, 3.0, -50.0])
    eta = torch.tensor(rng.uniform(-60, 60, 2000), dtype=dtype) if families.has_eta(family) else None
    direct = _direct_outcome_probs(a, b, eta, family)
    want = families.outcome_log_probs(a.double(), b.double(),
                                      None if eta is None else eta.double(), family).exp()
    assert torch.isfinite(direct).all()
    assert (direct.double() - want).abs().max() <= tol


def _log_space_pair_probs(coefs, eta, family):
    c = coefs.double()
    e = None if eta is None else eta.double()[:, None, None]
    return families.outcome_log_probs(c[:, :, None], c[:, None, :], e, family).exp()


@pytest.mark.parametrize("family", families.FAMILIES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, ABS_TOL), (torch.float32, 1e-6)])
@pytest.mark.parametrize("offset", [0.0, 100.0, -130.0])
def test_factored_matrices_match_log_space(family, dtype, tol, offset):
    # 40 prompts x 9 models spanning [-50, 50]; a common offset moves bt/rk prompts far out
    # (the factored form centres them), grk ones into the direct fallback (|theta| > 80)
    rng = np.random.default_rng(3)
    coefs = torch.tensor(rng.uniform(-50, 50, (40, 9)), dtype=dtype)
    coefs[0] = torch.tensor([50.0, -50.0, 0.0, 49.5, -49.5, 3.0, 3.0, 1e-3, -1e-3])
    if family != "grk" or offset == 0.0:
        coefs[1:] = coefs[1:] + offset
    else:
        coefs[1] = coefs[1] + offset  # one far-out grk prompt in the block
    eta = torch.tensor(rng.uniform(-60, 60, 40), dtype=dtype) if families.has_eta(family) else None
    want = _log_space_pair_probs(coefs, eta, family)
    win = families.outright_win_matrices(coefs, eta, family)
    assert win.dtype == dtype and torch.isfinite(win).all()
    assert (win.double() - want[..., families.WIN]).abs().max() <= tol
    if family == "grk":
        both_bad = families.both_bad_matrices(coefs)
        assert torch.isfinite(both_bad).all()
        assert (both_bad.double() - want[..., families.TIE_BOTH_BAD]).abs().max() <= tol


def test_factored_matrices_match_textbook_values():
    coefs = torch.tensor([[1.3, -0.4, 2.0]], dtype=torch.float64)
    for family, eta in (("bt", None), ("rk", -8.0), ("grk", 1.5)):
        eta_t = None if eta is None else torch.tensor([eta], dtype=torch.float64)
        win = families.outright_win_matrices(coefs, eta_t, family)[0]
        for i in range(3):
            for j in range(3):
                p = textbook_probs(float(coefs[0, i]), float(coefs[0, j]), eta, family)
                assert close(float(win[i, j]), float(p[0]))
                if family == "grk":
                    bb = families.both_bad_matrices(coefs)[0]
                    assert close(float(bb[i, j]), float(p[3]))


def test_factored_matrices_write_into_out():
    coefs = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    out = torch.full((2, 2, 2), math.nan)
    got = families.outright_win_matrices(coefs, None, "bt", out=out)
    assert got.data_ptr() == out.data_ptr()
    np.testing.assert_allclose(out[1].numpy(), [[0.5, 1 / (1 + math.exp(-2.0))],
                                                [1 / (1 + math.exp(2.0)), 0.5]], atol=1e-7)
