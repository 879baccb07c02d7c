"""Property-based tests (hypothesis) of the statistics and the readers: arbitrary
coefficients, votes, tables and winner spellings either give the right answer, checked
against a property that holds whatever the input, or the documented one-line error (exit
2 from the command line), never a traceback and never a wrong answer with exit 0.

Few examples each, derandomised (the same examples on every run) and without deadlines,
so the layer stays fast and deterministic on a shared CPU."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from p2l_cli import io
from p2l_cli.contracts.battles import outcome_of
from p2l_cli.contracts.predictions import predictions_from_frame
from p2l_cli.errors import UserError
from p2l_cli.leaderboard import battles_from_frame
from p2l_cli.stats import families
from p2l_cli.stats.aggregate import aggregate_fit, sandwich_aggregate
from p2l_cli.stats.marginal import fit_marginal
from tests.conftest import run_cli

FEW = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])
FAMILIES = ["bt", "bt-tie", "rk", "grk"]

finite = st.floats(-30, 30, allow_nan=False, allow_infinity=False)
# raw head outputs: rk's eta goes through a softplus of 0.1 (eta - 22.5), so its useful
# range is wide; grk's through exp
rk_eta = st.floats(-60, 60, allow_nan=False, allow_infinity=False)
grk_eta = st.floats(-8, 8, allow_nan=False, allow_infinity=False)


def _eta(family: str):
    return {"rk": rk_eta, "grk": grk_eta}.get(family, st.none())


# -------------------------------------------------------------------------------- families


@FEW
@given(family=st.sampled_from(FAMILIES), data=st.data())
def test_outcome_probabilities_sum_to_one_and_ignore_a_common_shift(family, data):
    size = data.draw(st.integers(1, 6))
    a = torch.tensor(data.draw(st.lists(finite, min_size=size, max_size=size)),
                     dtype=torch.float64)
    b = torch.tensor(data.draw(st.lists(finite, min_size=size, max_size=size)),
                     dtype=torch.float64)
    eta_value = data.draw(_eta(family))
    eta = None if eta_value is None else torch.tensor(eta_value, dtype=torch.float64)
    probs = families.outcome_probs(a, b, eta, family)
    assert torch.all((probs >= 0) & (probs <= 1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(size, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    # the same pair seen from the other side: the win and loss swap, ties stay
    swapped = families.outcome_probs(b, a, eta, family)
    torch.testing.assert_close(swapped[..., [1, 0, 2, 3]], probs, rtol=0, atol=1e-9)
    if family != "grk":  # grk scores are measured against the "both bad" reference
        shift = data.draw(st.floats(-20, 20, allow_nan=False))
        moved = families.outcome_probs(a + shift, b + shift, eta, family)
        torch.testing.assert_close(moved, probs, rtol=1e-6, atol=1e-9)


@FEW
@given(family=st.sampled_from(FAMILIES), data=st.data())
def test_preference_matrix_is_complementary(family, data):
    m = data.draw(st.integers(2, 6))
    coefs = torch.tensor(data.draw(st.lists(finite, min_size=m, max_size=m)),
                         dtype=torch.float64)
    eta_value = data.draw(_eta(family))
    matrix = families.win_matrix(coefs, None if eta_value is None else
                                 torch.tensor(eta_value, dtype=torch.float64), family)
    torch.testing.assert_close(matrix + matrix.T, torch.ones(m, m, dtype=torch.float64),
                               rtol=0, atol=1e-9)


# ------------------------------------------------------------------------ marginal fit


@st.composite
def connected_votes(draw):
    """Decisive votes over M models in which every model beats and loses to another (a
    cycle), so the maximum-likelihood leaderboard is finite, plus random extra votes."""
    m = draw(st.integers(2, 6))
    extra = draw(st.lists(st.tuples(st.integers(0, m - 1), st.integers(0, m - 1))
                          .filter(lambda p: p[0] != p[1]), max_size=40))
    cycle = [(i, (i + 1) % m) for i in range(m)]
    pairs = cycle + extra
    winner = np.array([p[0] for p in pairs])
    loser = np.array([p[1] for p in pairs])
    return m, winner, loser


@FEW
@given(votes=connected_votes(), seed=st.integers(0, 2**32 - 1))
def test_marginal_fit_ignores_row_order_and_zeroes_the_gradient(votes, seed):
    m, winner, loser = votes
    codes = np.zeros(len(winner), dtype=np.int64)
    fit = fit_marginal(winner, loser, codes, m, family="bt")
    order = np.random.default_rng(seed).permutation(len(winner))
    again = fit_marginal(winner[order], loser[order], codes, m, family="bt")
    np.testing.assert_allclose(again.theta, fit.theta, rtol=0, atol=1e-7)
    # the Bradley-Terry score equations, written out: for each model, wins minus the
    # expected wins over its votes are zero at the maximum-likelihood point
    theta = fit.theta
    p = 1.0 / (1.0 + np.exp(-(theta[winner] - theta[loser])))
    grad = np.zeros(m)
    np.add.at(grad, winner, 1.0 - p)
    np.add.at(grad, loser, -(1.0 - p))
    assert np.abs(grad / len(winner)).max() <= 1e-6
    assert abs(theta.mean()) <= 1e-9


# ---------------------------------------------------------------------- aggregation


@FEW
@given(family=st.sampled_from(FAMILIES), data=st.data())
def test_aggregating_identical_leaderboards_returns_that_leaderboard(family, data):
    m = data.draw(st.integers(2, 6))
    n = data.draw(st.integers(1, 5))
    theta = np.array(data.draw(st.lists(st.floats(-4, 4, allow_nan=False), min_size=m,
                                        max_size=m)))
    eta_value = data.draw(_eta(family) if family != "rk" else st.floats(-30, 10))
    eta = None if eta_value is None else np.full(n, eta_value)
    coefs = np.tile(theta, (n, 1))
    weights = np.array(data.draw(st.lists(st.floats(0.1, 10), min_size=n, max_size=n)))
    fit = aggregate_fit(coefs, eta, family, weights)
    want = theta - theta.mean() if family != "grk" else theta
    np.testing.assert_allclose(fit.theta, want, rtol=0, atol=2e-4)
    if families.has_eta(families.canonical_family(family)):
        assert fit.eta == pytest.approx(eta_value, abs=2e-3 * max(1.0, abs(eta_value)))
    if n > 1:  # no spread between the prompts: no width
        _, cov = sandwich_aggregate(coefs, eta, family, weights)
        assert np.abs(cov).max() <= 1e-8


@FEW
@given(family=st.sampled_from(["bt", "rk", "grk"]), seed=st.integers(0, 2**32 - 1),
       n=st.integers(2, 30), m=st.integers(2, 6))
def test_aggregate_ignores_prompt_order(family, seed, n, m):
    rng = np.random.default_rng(seed)
    coefs = rng.normal(0, 1.5, (n, m))
    eta = {"rk": rng.normal(-10, 3, n), "grk": rng.normal(0.5, 1, n)}.get(family)
    order = rng.permutation(n)
    one = aggregate_fit(coefs, eta, family)
    two = aggregate_fit(coefs[order], None if eta is None else eta[order], family)
    np.testing.assert_allclose(two.theta, one.theta, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- readers

SPELLINGS = ["model_a", "model_b", "a", "b", "tie", "draw", "tie (bothbad)", "tie(bothbad)",
             "tie (both bad)", "tie_bothbad", "both_bad", "bothbad", "both bad"]
MEANING = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "both_bad"}


@st.composite
def winner_spellings(draw):
    """A known spelling in random case with stray spaces, or any text at all."""
    if draw(st.booleans()):
        word = draw(st.sampled_from(SPELLINGS))
        word = "".join(c.upper() if draw(st.booleans()) else c for c in word)
        return draw(st.sampled_from(["", " ", "\t"])) + word + draw(st.sampled_from(["", " "]))
    return draw(st.text(max_size=12))


@FEW
@given(winners=st.lists(st.one_of(winner_spellings(), st.none()), min_size=1, max_size=12))
def test_battles_reader_parses_every_spelling_prepare_knows_or_names_the_row(winners):
    n = len(winners)
    df = pl.DataFrame({"model_a": ["x"] * n, "model_b": ["y"] * n, "winner": winners},
                      schema={"model_a": pl.String, "model_b": pl.String,
                              "winner": pl.String})
    # the oracle: prepare's parser (a winner given by the model's name is prepare-only)
    meanings = [None if w is None else outcome_of(w, "\0a", "\0b") for w in winners]
    bad = [i for i, got in enumerate(meanings) if got is None]
    if bad:
        with pytest.raises(UserError) as caught:
            battles_from_frame(df, "votes.csv")
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"votes.csv: row {bad[0] + 1}: ")
        return
    battles = battles_from_frame(df, "votes.csv")
    x, y = battles.models.index("x"), battles.models.index("y")
    for i, meaning in enumerate(meanings):
        code = MEANING[meaning]
        expected_winner = y if code == "b" else x
        assert battles.winner[i] == expected_winner
        assert battles.loser[i] == (x if expected_winner == y else y)
        assert battles.tie_code[i] == {"a": 0, "b": 0, "tie": 1, "both_bad": 2}[code]


@FEW
@given(values=arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 4)),
                     elements=st.one_of(st.floats(-20, 20), st.just(np.nan),
                                        st.just(np.inf))),
       short_row=st.one_of(st.none(), st.integers(0, 5)))
def test_predictions_reader_refuses_non_finite_or_short_rows_by_row(values, short_row):
    n, m = values.shape
    rows = [list(map(float, row)) for row in values]
    if short_row is not None and short_row < n:
        rows[short_row] = rows[short_row][:-1]
    df = pl.DataFrame({"coefs": rows}, schema={"coefs": pl.List(pl.Float64)})
    meta = {"models": [f"m{i}" for i in range(m)], "loss": "bt"}
    short = [i for i, row in enumerate(rows) if len(row) != m]
    nonfinite = [i for i, row in enumerate(rows) if not np.isfinite(row).all()]
    if short or nonfinite:
        with pytest.raises(UserError) as caught:
            predictions_from_frame(df, meta, "p.parquet")
        first = short[0] if short else nonfinite[0]
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"p.parquet: row {first + 1}: ")
        return
    preds = predictions_from_frame(df, meta, "p.parquet")
    np.testing.assert_allclose(preds.coefs, values.astype(np.float32))


COLUMNS = ["model_a", "model_b", "winner", "weight"]


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.lists(st.sampled_from(COLUMNS), unique=True),
       winners=st.lists(winner_spellings(), min_size=1, max_size=6),
       weight=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1.0)))
def test_leaderboard_command_exits_0_or_2_with_one_line(tmp_path_factory, keep, winners,
                                                         weight):
    n = len(winners)
    full = {"model_a": ["x", "y"] * n, "model_b": ["y", "z"] * n,
            "winner": winners * 2, "weight": [weight] * (2 * n)}
    path = tmp_path_factory.mktemp("votes") / "votes.csv"
    pl.DataFrame({c: full[c] for c in COLUMNS if c in keep} or {"other": [1]}).write_csv(path)
    result = run_cli("leaderboard", path, "--ci", "none", "-q", "-o", path.with_suffix(".json"))
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    complete = {"model_a", "model_b", "winner"} <= set(keep)
    valid = complete and all(outcome_of(w, "\0a", "\0b") for w in winners) and (
        "weight" not in keep or (np.isfinite(weight) and weight >= 0))
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert not valid, result.output
    else:
        assert valid, result.output
        table = io.read_table(path.with_suffix(".json"))
        assert sorted(table["model"]) == ["x", "y", "z"]


@st.composite
def vote_rows(draw):
    """Mostly well-formed votes with any winner spelling; some with empty model names or
    winners (malformed rows, which stop prepare)."""
    messy = draw(st.integers(0, 3)) == 0
    names = ["x", "y", "", None] if messy else ["x", "y"]
    winners = st.one_of(winner_spellings(), st.none()) if messy else winner_spellings()
    return draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(["y", "z"]),
                                   winners), min_size=1, max_size=8))


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=vote_rows(), drop=st.sampled_from([None, None, None, "model_a", "winner"]))
def test_prepare_keeps_exactly_the_parsable_votes_or_exits_2(tmp_path_factory, rows, drop):
    """prepare either stops with one line (exit 2), or writes each vote whose winner it can
    read with that winner, and counts every other row under a drop reason."""
    table = pl.DataFrame(
        {"prompt": [f"prompt {i}" for i in range(len(rows))],
         "model_a": [r[0] for r in rows], "model_b": [r[1] for r in rows],
         "winner": [r[2] for r in rows]},
        schema={"prompt": pl.String, "model_a": pl.String, "model_b": pl.String,
                "winner": pl.String})
    if drop:
        table = table.drop(drop)
    folder = tmp_path_factory.mktemp("prepare")
    table.write_parquet(folder / "votes.parquet")
    out = folder / "data"
    result = run_cli("prepare", folder / "votes.parquet", "-o", out, "--val-fraction", "0",
                     "-q")
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        return
    assert drop is None  # a missing column is an error
    event("written")  # about a third of the examples (--hypothesis-show-statistics)
    kept = pl.read_parquet(out / "train.parquet")
    report = io.read_json(out / "prepare.json")
    assert kept.height + report["dropped"] == len(rows)
    for row in kept.iter_rows(named=True):
        a, b, winner = rows[int(row["prompt"][0].split()[1])]
        assert (row["model_a"], row["model_b"]) == (a.strip(), b)
        assert row["winner"] == outcome_of(winner, a.strip(), b)
