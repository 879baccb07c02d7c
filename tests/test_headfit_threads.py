"""The cross-validated head fit runs its folds (and its refit on every vote) on several
threads: the head must not depend on how many, the threads must really run side by side,
and the refit must still be the minimiser of the penalised loss at the chosen penalty."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from p2l_cli import train as train_module
from p2l_cli.stats import headfit
from p2l_cli.stats.families import labels_nll
from p2l_cli.stats.headfit import fit_linear_head, fit_new_rows
from tests.test_headfit_pairs import random_votes


def planted_votes(n: int, d: int, m: int, seed: int, strength: float = 0.6):
    """Features, votes whose winners follow a planted linear truth, prompt groups."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    theta = x @ (rng.standard_normal((d, m)) * strength)
    labels = random_votes(n, m, seed=seed + 1).numpy()
    rows = np.arange(n)
    p_first = 1 / (1 + np.exp(theta[rows, labels[:, 1]] - theta[rows, labels[:, 0]]))
    first_wins = rng.random(n) < p_first
    labels[:, :2] = np.where(first_wins[:, None], labels[:, :2], labels[:, 1::-1])
    return x, labels, rng.integers(0, n // 3, n)


@pytest.mark.parametrize("strength", [0.6, 0.0])  # a real head; the fallback (no signal)
def test_the_head_is_the_same_for_any_number_of_threads(strength: float) -> None:
    x, labels, groups = planted_votes(1200, 6, 5, seed=3, strength=strength)
    fits = {None: fit_linear_head(x, labels, "bt-tie", bias=np.zeros(5), groups=groups)}
    for threads in (1, 2, 3, 6):
        with ThreadPoolExecutor(threads) as pool:
            fits[threads] = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(5), groups=groups,
                                            pool=pool)  # fmt: skip
    one, one_report = fits[None]
    assert (one_report.penalty is None) == (strength == 0.0)
    for head, report in fits.values():
        np.testing.assert_array_equal(head.weight, one.weight)
        np.testing.assert_array_equal(head.bias, one.bias)
        assert report.cv_nll == one_report.cv_nll
        assert report.penalty == one_report.penalty
        np.testing.assert_array_equal(report.held_out_coefs, one_report.held_out_coefs)


def test_fold_fits_run_on_several_threads(monkeypatch) -> None:
    """With three threads, the first three fits of the penalty path run at once: each waits
    for the other two (a lone thread would time the barrier out and fail the fit)."""
    x, labels, groups = planted_votes(600, 4, 4, seed=7)
    fit = headfit._fit
    threads, calls = set(), itertools.count()
    barrier = threading.Barrier(3, timeout=10)

    def together(*args, **kwargs):
        threads.add(threading.get_ident())
        if next(calls) < 3:
            barrier.wait()
        return fit(*args, **kwargs)

    monkeypatch.setattr(headfit, "_fit", together)
    with ThreadPoolExecutor(3) as pool:
        fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups, pool=pool)
    assert len(threads) == 3


def test_fits_sharing_one_pool_get_their_own_heads() -> None:
    """Two fits side by side on one pool of threads (as `p2l train` runs its candidates)
    each get the head they get alone."""
    data = [planted_votes(900, 5, 4, seed=seed) for seed in (17, 19)]
    alone = [fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups)
             for x, labels, groups in data]  # fmt: skip
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(2) as side_by_side:
        shared = list(side_by_side.map(
            lambda xs: fit_linear_head(xs[0], xs[1], "bt-tie", bias=np.zeros(4), groups=xs[2],
                                       pool=pool),
            data,
        ))  # fmt: skip
    for (head, report), (own, own_report) in zip(shared, alone, strict=True):
        np.testing.assert_array_equal(head.weight, own.weight)
        assert report.cv_nll == own_report.cv_nll


def test_the_threaded_refit_minimises_the_penalised_loss() -> None:
    """The returned head (refitted alongside the folds) is the optimum of the mean NLL plus
    the chosen penalty on the standardised weights: its gradient there is zero."""
    n, d, m = 1500, 5, 4
    x, labels, groups = planted_votes(n, d, m, seed=11)
    with ThreadPoolExecutor(3) as pool:
        head, report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), groups=groups,
                                       pool=pool)  # fmt: skip
    assert report.penalty is not None
    mean, sd = x.mean(0), x.std(0, ddof=1)
    z = torch.as_tensor((x - mean) / sd)
    weight = torch.as_tensor(head.weight.T * sd[:, None]).requires_grad_(True)  # standardised
    bias = torch.as_tensor(head.bias + mean @ head.weight.T).requires_grad_(True)
    loss = labels_nll(z @ weight + bias, torch.as_tensor(labels), None, "bt-tie")
    loss = loss + report.penalty * weight.square().sum()
    loss.backward()
    assert float(weight.grad.abs().max()) < 1e-6
    assert float(bias.grad.abs().max()) < 1e-6


def test_new_rows_are_the_same_with_threads() -> None:
    """`p2l extend`'s fit of new models' rows shares the cross-validation."""
    x, labels, groups = planted_votes(900, 4, 5, seed=13)
    fixed = np.zeros((len(labels), 5))
    one = fit_new_rows(x, labels, "bt-tie", fixed, np.array([4]), groups=groups)
    threaded = headfit._cross_validated
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(3) as pool:
        patch.setattr(headfit, "_cross_validated",
                      lambda *a, **k: threaded(*a, **{**k, "pool": pool}))  # fmt: skip
        three = fit_new_rows(x, labels, "bt-tie", fixed, np.array([4]), groups=groups)
    np.testing.assert_array_equal(one[0].weight, three[0].weight)
    assert one[1].cv_nll == three[1].cv_nll


@pytest.mark.parametrize(
    ("cores", "memory_gib", "rows", "width", "expected"),
    [
        (16, 128, 30_000, 400, 16),  # one per core
        (2, 24, 6_000, 400, 2),
        (1, 24, 6_000, 400, 1),
        (64, 16, 1_000_000, 400, 1),  # half of 16 GiB holds no 9.6 GB fold fit: one anyway
        (64, 128, 1_000_000, 400, 7),  # half of 128 GiB holds 7 of them
    ],
)
def test_head_fit_threads(monkeypatch, cores, memory_gib, rows, width, expected) -> None:
    monkeypatch.setattr(train_module, "available_cores", lambda: cores)
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": memory_gib * 2**30 // 4096}
    monkeypatch.setattr(train_module.os, "sysconf", lambda name: pages[name])
    assert train_module.head_fit_threads(rows, width) == expected
