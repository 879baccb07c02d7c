"""The linear head fit computes only each vote's two coefficients (or, for a family that reads
only their difference, that difference): checked against all M coefficients of every vote (a
plain matrix product) picked by the vote's models."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from p2l_cli.stats import headfit
from p2l_cli.stats.families import DECISIVE, TIE_CODE, labels_nll, pairs_nll, with_style_offset
from p2l_cli.stats.headfit import (
    _linear_coefs,
    _linear_differences,
    _linear_pairs,
    _with_style_offset,
    fit_linear_head,
)


@pytest.fixture
def per_pair():
    """The difference layout whatever the block count (tests have few votes per pair)."""
    with mock.patch("p2l_cli.stats.headfit.PAIR_BLOCK_COST", 0):
        yield


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


@pytest.mark.parametrize("with_eta", [False, True])
@pytest.mark.parametrize("unused", [0, 3])
def test_differences_equal_the_picked_full_coefficients(with_eta: bool, unused: int,
                                                       per_pair) -> None:
    n, d, m = 400, 6, 7
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = random_votes(n, m, seed=8, unused=unused)
    assert ((labels[:, 0] < labels[:, 1]).any() and (labels[:, 0] > labels[:, 1]).any())
    params = [torch.randn(d, m, generator=generator, dtype=torch.float64),
              torch.randn(m, generator=generator, dtype=torch.float64)]  # fmt: skip
    if with_eta:
        params += [torch.randn(d, generator=generator, dtype=torch.float64),
                   torch.tensor(-0.3, dtype=torch.float64)]  # fmt: skip
    pairs, eta = _linear_differences(x, labels, m)(params)
    full = (x @ params[0] + params[1]).gather(1, labels[:, :2])
    assert pairs.shape == (n, 2)
    torch.testing.assert_close(pairs[:, 0], full[:, 0] - full[:, 1], rtol=0, atol=1e-12)
    assert torch.equal(pairs[:, 1], torch.zeros(n, dtype=torch.float64))
    if with_eta:
        torch.testing.assert_close(eta, x @ params[2] + params[3], rtol=0, atol=1e-12)
    else:
        assert eta is None


def skewed_votes(n: int, m: int, seed: int) -> torch.Tensor:
    """Votes whose models are drawn with probability 1 / rank (a few popular models, a long
    tail, as in the Arena): a few pairs with many votes, many pairs with few."""
    rng = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, m + 1)
    popularity /= popularity.sum()
    first = rng.choice(m, n, p=popularity)
    second = rng.choice(m, n, p=popularity)
    clash = first == second
    second[clash] = (first[clash] + rng.integers(1, m, int(clash.sum()))) % m
    tie = np.where(rng.random(n) < 0.3, TIE_CODE, DECISIVE)
    return torch.as_tensor(np.stack([first, second, tie], axis=1), dtype=torch.long)


def test_pairs_with_few_votes_keep_per_model_products() -> None:
    n, d, m = 3000, 10, 12
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = skewed_votes(n, m, seed=10)
    params = [torch.randn(d, m, generator=generator, dtype=torch.float64),
              torch.randn(m, generator=generator, dtype=torch.float64)]  # fmt: skip
    low, high = labels[:, :2].min(dim=1).values, labels[:, :2].max(dim=1).values
    votes_of_pair = torch.bincount(low * m + high, minlength=m * m)[low * m + high]
    cost = 40 * d  # a pair of models with at least 40 votes gets a block of its own
    light = votes_of_pair * d < cost
    assert 0 < int(light.sum()) < n // 2  # most votes in heavy pairs, a tail of light ones
    full = (x @ params[0] + params[1]).gather(1, labels[:, :2])
    tails = []

    def recording(x, votes, *args):
        tails.append(votes)
        return products(x, votes, *args)

    products = headfit._model_products
    with (mock.patch("p2l_cli.stats.headfit.PAIR_BLOCK_COST", cost),
          mock.patch("p2l_cli.stats.headfit._model_products", recording)):
        pairs, _ = _linear_differences(x, labels, m)(params)
    assert len(tails) == 1 and torch.equal(tails[0].sort().values, light.nonzero()[:, 0])
    torch.testing.assert_close(pairs[:, 0], full[:, 0] - full[:, 1], rtol=0, atol=1e-12)
    assert torch.equal(pairs[:, 1], torch.zeros(n, dtype=torch.float64))

    highest = int(votes_of_pair.max()) * d
    with mock.patch("p2l_cli.stats.headfit.PAIR_BLOCK_COST", highest + 1):  # no heavy pair
        per_model, _ = _linear_differences(x, labels, m)(params)
    assert torch.equal(per_model, _linear_pairs(x, labels, m)(params)[0])


@pytest.mark.parametrize("family", ["bt-tie", "rk"])
def test_difference_losses_and_gradients_match_the_full_coefficients(family: str, per_pair) -> None:
    n, d, m = 600, 5, 6
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = random_votes(n, m, seed=12)
    offset = torch.randn(n, generator=generator, dtype=torch.float64)
    start = [torch.randn(d, m, generator=generator, dtype=torch.float64) * 0.3,
             torch.randn(m, generator=generator, dtype=torch.float64)]  # fmt: skip
    if family == "rk":
        start += [torch.randn(d, generator=generator, dtype=torch.float64) * 0.1,
                  torch.tensor(1.5, dtype=torch.float64)]  # fmt: skip

    def loss_and_grads(differences: bool):
        params = [p.clone().requires_grad_(True) for p in start]
        if differences:
            pairs, eta = _linear_differences(x, labels, m)(params)
            loss = pairs_nll(_with_style_offset(pairs, offset), labels, eta, family)
        else:
            coefs, eta = _linear_coefs(x, params)
            loss = labels_nll(with_style_offset(coefs, labels, offset), labels, eta, family)
        loss.backward()
        return [loss.detach(), *(p.grad for p in params)]

    for fast, full in zip(loss_and_grads(True), loss_and_grads(False), strict=True):
        torch.testing.assert_close(fast, full, rtol=0, atol=1e-12)


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


@pytest.mark.parametrize("layout", ["per model", "per pair", "heavy pairs per pair"])
def test_fit_linear_head_is_the_same_either_way(layout: str) -> None:
    n, d, m = 1500, 8, 6
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, d))
    truth = rng.standard_normal((d, m)) * 0.6
    labels = (skewed_votes if layout == "heavy pairs per pair" else random_votes)(n, m, seed=6).numpy()
    theta = x @ truth
    rows = np.arange(n)
    first_wins = rng.random(n) < 1 / (1 + np.exp(theta[rows, labels[:, 1]] - theta[rows, labels[:, 0]]))
    labels[:, :2] = np.where(first_wins[:, None], labels[:, :2], labels[:, 1::-1])
    groups = rng.integers(0, 500, n)
    cost = {"per model": 1e12, "per pair": 0, "heavy pairs per pair": 50 * d}[layout]
    with mock.patch("p2l_cli.stats.headfit.PAIR_BLOCK_COST", cost):
        fast, fast_report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), groups=groups)
    with (mock.patch("p2l_cli.stats.headfit._linear_pairs", None),
          mock.patch("p2l_cli.stats.headfit._linear_differences", None)):
        full, full_report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), groups=groups)
    assert fast_report.penalty == full_report.penalty
    assert fast_report.penalty is not None  # a real head was fitted, not the fallback
    for penalty, nll in full_report.cv_nll.items():
        assert fast_report.cv_nll[penalty] == pytest.approx(nll, abs=1e-9)
    np.testing.assert_allclose(fast.weight, full.weight, atol=1e-6)
    np.testing.assert_allclose(fast.bias, full.bias, atol=1e-6)


def test_grounded_families_keep_both_coefficients() -> None:
    """A grounded family's likelihood reads each coefficient, not only their difference."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((300, 4))
    labels = random_votes(300, 5, seed=14).numpy()

    def refuse(*args):
        raise AssertionError("a grounded family was given differences")

    with mock.patch("p2l_cli.stats.headfit._linear_differences", refuse):
        fit_linear_head(x, labels, "grk", bias=np.zeros(5), penalties=(1.0,), folds=2)
        with pytest.raises(AssertionError, match="grounded"):
            fit_linear_head(x, labels, "bt-tie", bias=np.zeros(5), penalties=(1.0,), folds=2)
