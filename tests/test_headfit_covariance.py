"""The model-covariance prior: a second head fit whose ridge penalty is
``tr(W Sigma^-1 W^T)``, ``Sigma`` across models read off a first fit, each fold's from that
fold's own first fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2l_cli.stats import headfit
from p2l_cli.stats.families import labels_nll
from p2l_cli.stats.headfit import fit_linear_head, model_covariance_map, prompt_folds
from tests.test_headfit_pairs import random_votes
from tests.test_headfit_threads import planted_votes


def shared_direction_votes(n: int, d: int, m: int, seed: int):
    """Votes whose truth moves the models together: every feature shifts them along one
    direction across models (plus a little noise); also returns that truth ``[d, m]``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    direction = rng.standard_normal(m)
    direction = (direction - direction.mean()) / np.std(direction)
    truth = np.outer(rng.standard_normal(d) * 0.25, direction)
    truth += rng.standard_normal((d, m)) * 0.03
    theta = x @ truth
    labels = random_votes(n, m, seed=seed + 1).numpy()
    rows = np.arange(n)
    p_first = 1 / (1 + np.exp(theta[rows, labels[:, 1]] - theta[rows, labels[:, 0]]))
    first_wins = rng.random(n) < p_first
    labels[:, :2] = np.where(first_wins[:, None], labels[:, :2], labels[:, 1::-1])
    return x, labels, rng.integers(0, n // 3, n), truth


def test_the_map_squares_to_the_shrunk_gram_matrix() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((9, 5)) * np.array([3.0, 1.0, 0.1, 0.0, 2.0])
    a = model_covariance_map(torch.as_tensor(weight)).numpy()
    gram = weight.T @ weight
    sigma = 0.8 * gram * 5 / np.trace(gram) + 0.2 * np.eye(5)
    np.testing.assert_allclose(a, a.T, atol=1e-12)
    np.testing.assert_allclose(a @ a, sigma, atol=1e-10)
    assert np.linalg.eigvalsh(a).min() > 0
    # a first fit with no weight leaves the plain ridge penalty
    np.testing.assert_allclose(model_covariance_map(torch.zeros(4, 3)).numpy(), np.eye(3),
                               atol=1e-12)  # fmt: skip


def test_the_refit_minimises_the_penalty_across_models() -> None:
    """The head is the optimum of the mean NLL plus ``penalty * tr(W Sigma^-1 W^T)`` on the
    standardised weights, ``Sigma`` from the first fit's refit (computed here)."""
    n, d, m = 1500, 5, 4
    x, labels, groups = planted_votes(n, d, m, seed=11)
    first, first_report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), groups=groups)
    head, report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(m), groups=groups,
                                   directions=first_report)  # fmt: skip
    assert report.penalty is not None and len(first_report.chain_weights) == 6
    gram = first_report.chain_weights[-1].T @ first_report.chain_weights[-1]
    sigma = 0.8 * gram * m / np.trace(gram) + 0.2 * np.eye(m)
    mean, sd = x.mean(0), x.std(0, ddof=1)
    z = torch.as_tensor((x - mean) / sd)
    weight = torch.as_tensor(head.weight.T * sd[:, None]).requires_grad_(True)
    bias = torch.as_tensor(head.bias + mean @ head.weight.T).requires_grad_(True)
    penalty = (weight @ torch.as_tensor(np.linalg.inv(sigma)) * weight).sum()
    loss = labels_nll(z @ weight + bias, torch.as_tensor(labels), None, "bt-tie")
    (loss + report.penalty * penalty).backward()
    assert float(weight.grad.abs().max()) < 1e-5
    assert float(bias.grad.abs().max()) < 1e-6
    assert np.abs(head.weight - first.weight).max() > 1e-3  # the prior changed the head


def test_each_fold_takes_its_directions_from_its_own_first_fit() -> None:
    """Flipping the outcomes of one fold's votes changes the refit on every vote, but not
    what the fits without that fold predict for it: the directions its second fit used came
    from a first fit that did not see those votes either."""
    x, labels, groups = planted_votes(1200, 5, 4, seed=5)
    held = prompt_folds(groups, 5, seed=0) == 0
    flipped = labels.copy()
    flipped[held, :2] = labels[held, 1::-1]
    runs = []
    kwargs = {"bias": np.zeros(4), "groups": groups, "penalties": (0.01,), "min_gain_se": -np.inf}
    for votes in (labels, flipped):
        _, first = fit_linear_head(x, votes, "bt-tie", **kwargs)
        runs.append(fit_linear_head(x, votes, "bt-tie", directions=first, **kwargs))
    (head, report), (flipped_head, flipped_report) = runs
    np.testing.assert_array_equal(report.held_out_coefs[held],
                                  flipped_report.held_out_coefs[held])  # fmt: skip
    assert np.abs(head.weight - flipped_head.weight).max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_the_prior_recovers_models_moving_together(seed: int) -> None:
    """Where the features move the models along one direction, the refit under the prior
    is clearly closer to the truth than the plain ridge head (about 12% on these worlds)."""
    x, labels, groups, truth = shared_direction_votes(2000, 30, 8, seed)
    plain, report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(8), groups=groups)
    shared, _ = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(8), groups=groups,
                                directions=report)  # fmt: skip

    def centred(w: np.ndarray) -> np.ndarray:  # the models' deviations from their mean
        return w - w.mean(axis=1, keepdims=True)

    def error(head) -> float:
        return float(np.linalg.norm(centred(head.weight.T - truth)) / np.linalg.norm(centred(truth)))

    assert error(shared) < 0.92 * error(plain)


def test_directions_from_a_different_fold_count_are_refused() -> None:
    x, labels, groups = planted_votes(600, 3, 4, seed=2)
    _, first = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups, folds=3)
    with pytest.raises(ValueError, match="4 output maps for 5 folds"):
        fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups, directions=first)


def test_without_a_first_head_there_are_no_directions() -> None:
    """A first fit that fell back to the marginal leaderboard gives none: the second fit is
    the plain ridge fit."""
    x, labels, groups = planted_votes(900, 4, 4, seed=3, strength=0.0)
    plain, report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups)
    assert report.fell_back and report.chain_weights is None
    again, _ = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups,
                               directions=report)  # fmt: skip
    np.testing.assert_array_equal(again.weight, plain.weight)
    assert headfit.COVARIANCE_IDENTITY_SHARE == 0.2
