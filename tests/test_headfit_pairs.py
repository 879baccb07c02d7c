"""The linear head fit computes only each vote's two coefficients: checked against all M
coefficients of every vote (a plain matrix product) picked by the vote's models."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from p2l_cli.stats.families import DECISIVE, TIE_CODE, labels_nll, pairs_nll, with_style_offset
from p2l_cli.stats.headfit import (
    _linear_coefs,
    _linear_pairs,
    _with_style_offset,
    fit_linear_head,
)


def random_votes(n: int, m: int, seed: int, unused: int = 0) -> torch.Tensor:
    """Votes among the first ``m - unused`` of ``m`` models (the others have no votes, as a
    model can in a fold)."""
    rng = np.random.default_rng(seed)
    playing = m - unused
    first = rng.integers(0, playing, n)
    second = (first + rng.integers(1, playing, n)) % playing
    tie = np.where(rng.random(n) < 0.3, TIE_CODE, DECISIVE)
    return torch.as_tensor(np.stack([first, second, tie], axis=1), dtype=torch.long)


@pytest.mark.parametrize("with_eta", [False, True])
@pytest.mark.parametrize("unused", [0, 3])
def test_pairs_equal_the_picked_full_coefficients(with_eta: bool, unused: int) -> None:
    n, d, m = 400, 6, 9
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = random_votes(n, m, seed=2, unused=unused)
    params = [torch.randn(d, m, generator=generator, dtype=torch.float64),
              torch.randn(m, generator=generator, dtype=torch.float64)]  # fmt: skip
    if with_eta:
        params += [torch.randn(d, generator=generator, dtype=torch.float64),
                   torch.tensor(0.4, dtype=torch.float64)]  # fmt: skip
    pairs, eta = _linear_pairs(x, labels, m)(params)
    expected = (x @ params[0] + params[1]).gather(1, labels[:, :2])
    assert pairs.shape == (n, 2)
    torch.testing.assert_close(pairs, expected, rtol=0, atol=1e-12)
    if with_eta:
        torch.testing.assert_close(eta, x @ params[2] + params[3], rtol=0, atol=1e-12)
    else:
        assert eta is None


def test_gradients_and_style_offset_match_the_full_coefficients() -> None:
    n, d, m = 300, 5, 7
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = random_votes(n, m, seed=4)
    offset = torch.randn(n, generator=generator, dtype=torch.float64)
    weight = torch.randn(d, m, generator=generator, dtype=torch.float64) * 0.3
    bias = torch.randn(m, generator=generator, dtype=torch.float64)

    def loss_and_grad(pairs_path: bool):
        w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
        if pairs_path:
            pairs = _with_style_offset(_linear_pairs(x, labels, m)([w, b])[0], offset)
            loss = pairs_nll(pairs, labels, None, "bt-tie")
        else:
            coefs = with_style_offset(_linear_coefs(x, [w, b])[0], labels, offset)
            loss = labels_nll(coefs, labels, None, "bt-tie")
        loss.backward()
        return loss.detach(), w.grad, b.grad

    for fast, full in zip(loss_and_grad(True), loss_and_grad(False), strict=True):
        torch.testing.assert_close(fast, full, rtol=0, atol=1e-12)


def test_fit_linear_head_is_the_same_either_way() -> None:
    n, d, m = 1500, 8, 6
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, d))
    truth = rng.standard_normal((d, m)) * 0.6
    labels = random_votes(n, m, seed=6).numpy()
    theta = x @ truth
    rows = np.arange(n)
    first_wins = rng.random(n) < 1 / (1 + np.exp(theta[rows, labels[:, 1]] - theta[rows, labels[:, 0]]))
    labels[:, :2] = np.where(first_wins[:, None], labels[:, :2], labels[:, 1::-1])
    groups = rng.integers(0, 500, n)
    fast, fast_report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), groups=groups)
    with mock.patch("p2l_cli.stats.headfit._linear_pairs", None):
        full, full_report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), groups=groups)
    assert fast_report.penalty == full_report.penalty
    assert fast_report.penalty is not None  # a real head was fitted, not the fallback
    for penalty, nll in full_report.cv_nll.items():
        assert fast_report.cv_nll[penalty] == pytest.approx(nll, abs=1e-9)
    np.testing.assert_allclose(fast.weight, full.weight, atol=1e-6)
    np.testing.assert_allclose(fast.bias, full.bias, atol=1e-6)
