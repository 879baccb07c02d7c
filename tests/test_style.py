"""Style control: the contextual pairwise model (``p2l_cli.stats.style``) against a
hand-written fit, a dense numpy sandwich, LMArena's arena-rank, and the command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from typer.testing import CliRunner

from p2l_cli.cli import app
from p2l_cli.contracts.style import STYLE_ELEMENTS, relative_difference, style_columns
from p2l_cli.stats.style import fit_style, standardize, style_votes

TRUE_BETA = np.array([0.4, 0.05, 0.15, -0.1])


def style_world(seed: int, n: int, m: int = 6, ties: float = 0.2, beta=TRUE_BETA):
    """Votes whose outcome depends on the models and on style differences: verbose models
    write longer, more formatted answers. Returns the arrays a fit takes and the raw counts."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 0.5, m)
    verbosity = rng.normal(0, 1, m)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m

    def counts(idx):
        v = verbosity[idx]
        return np.stack([
            np.round(np.exp(5.0 + 0.5 * v + rng.normal(0, 0.4, len(idx)))),
            rng.poisson(np.exp(0.3 * v)),
            rng.poisson(np.exp(0.2 + 0.4 * v)),
            rng.poisson(np.exp(0.6 + 0.4 * v)),
        ], axis=1)

    ca, cb = counts(a), counts(b)
    raw = relative_difference(ca, cb)
    z, _, _ = standardize(raw)
    p_a = expit(theta[a] - theta[b] + z @ beta)
    tie = rng.random(n) < ties
    b_won = ~tie & (rng.random(n) >= p_a)
    code = np.where(tie, np.where(rng.random(n) < 0.3, 2, 1), 0)
    winner, loser = np.where(b_won, b, a), np.where(b_won, a, b)
    sign = np.where(b_won, -1, 1)
    return {"winner": winner, "loser": loser, "code": code, "sign": sign, "raw": raw, "m": m,
            "a": a, "b": b, "b_won": b_won, "ca": ca, "cb": cb}


def test_relative_difference_and_standardize_by_hand():
    np.testing.assert_allclose(relative_difference([3, 0, 5], [1, 0, 0]), [0.5, 0.0, 1.0])
    z, mean, std = standardize(np.array([[1.0, 2.0], [3.0, 2.0]]))
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(std, [1.0, 1.0])  # a constant column keeps scale 1
    np.testing.assert_allclose(z, [[-1.0, 0.0], [1.0, 0.0]])


def _hand_objective(w, reg, family):
    """The contextual Bradley-Terry objective written out with scipy's log-sigmoid: "a wins"
    has logit theta_a - theta_b + x . beta; a tie is half a win and half a loss (bt-tie) or
    is left out (bt)."""

    def objective(params, data):
        m = data["m"]
        theta, beta = params[:m], params[m:]
        logit = theta[data["a"]] - theta[data["b"]] + data["z"] @ beta
        y = np.where(data["code"] > 0, 0.5, (~data["b_won"]).astype(float))
        ll = y * log_expit(logit) + (1 - y) * log_expit(-logit)
        keep = data["code"] == 0 if family == "bt" else np.ones(len(ll), bool)
        ww = w[keep] / w[keep].mean()
        return -(ww * ll[keep]).mean() + 0.5 * reg * beta @ beta

    return objective


@pytest.mark.parametrize("family,reg,weighted", [("bt-tie", 0.5, False), ("bt", 0.0, True),
                                                 ("bt-tie", 0.0, True)])
def test_fit_matches_a_hand_written_fit(family, reg, weighted):
    d = style_world(3, 400)
    rng = np.random.default_rng(0)
    w = rng.uniform(0.2, 2.0, len(d["a"])) if weighted else np.ones(len(d["a"]))
    keep = d["code"] == 0 if family == "bt" else np.ones(len(w), bool)
    z = np.zeros_like(d["raw"])
    z[keep] = standardize(d["raw"][keep])[0]
    data = {**d, "z": z}
    objective = _hand_objective(w, reg, family)
    start = np.zeros(d["m"] + 4)
    theirs = minimize(objective, start, args=(data,), method="BFGS",
                      options={"gtol": 1e-10, "maxiter": 5000}).x
    fit = fit_style(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], d["m"], family,
                    weights=w if weighted else None, reg=reg, ci="none")
    np.testing.assert_allclose(fit.theta, theirs[:d["m"]] - theirs[:d["m"]].mean(), atol=2e-5)
    np.testing.assert_allclose(fit.beta, theirs[d["m"]:], atol=2e-5)
    assert fit.n_votes == int(keep.sum())


def test_sandwich_matches_a_dense_numpy_sandwich():
    """arena-rank's formula, built densely from per-vote scores written out in numpy:
    V = H^-1 G H^-1 / n, H = mean(w p(1-p) J J^T) + 1e-5 I, G = mean(w^2 (y-p)^2 J J^T)
    - reg^2/n p p^T, with J the vote's design row (e_a - e_b, x)."""
    d = style_world(5, 3000)
    reg = 0.3
    fit = fit_style(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], d["m"], "bt-tie",
                    reweight=True, reg=reg, ci="sandwich")
    votes, _, _ = style_votes(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], d["m"],
                              "bt-tie", reweight=True)
    m, n = d["m"], len(d["a"])
    design = np.zeros((n, m + 4))
    design[np.arange(n), d["a"]] += 1
    design[np.arange(n), d["b"]] -= 1
    design[:, m:] = votes.features
    p = expit(design @ np.concatenate([fit.theta, fit.beta]))
    y = np.where(d["code"] > 0, 0.5, (~d["b_won"]).astype(float))
    w = votes.weight
    hessian = (design.T * (w * p * (1 - p))) @ design / n + 1e-5 * np.eye(m + 4)
    meat = (design.T * (w * (y - p)) ** 2) @ design / n
    params = np.concatenate([np.zeros(m), fit.beta])
    meat -= reg**2 / n * np.outer(params, params)
    inverse = np.linalg.inv(hessian)
    cov = inverse @ meat @ inverse / n
    np.testing.assert_allclose(fit.cov, cov, rtol=1e-6, atol=1e-12)
    se = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(fit.upper - fit.theta, 1.959964 * se[:m], rtol=1e-5)


@pytest.mark.parametrize("family", ["rk", "grk"])
def test_eta_families_match_a_generic_optimizer(family):
    """For the families with eta, the Newton solution equals scipy's BFGS on the same
    objective assembled in the test (checks the eta and style cross terms)."""
    import torch

    from p2l_cli.stats.families import vote_nll
    from p2l_cli.stats.pairfit import initial_eta

    d = style_world(7, 600, ties=0.3)
    reg = 0.2
    fit = fit_style(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], d["m"], family,
                    reg=reg, ci="sandwich")
    assert np.all(fit.lower < fit.theta) and np.all(fit.theta < fit.upper)
    assert np.all(fit.beta_lower < fit.beta) and np.all(fit.beta < fit.beta_upper)
    z = standardize(d["raw"])[0] * d["sign"][:, None]
    m = d["m"]

    def objective(params):
        t = torch.as_tensor(params)
        offset = torch.as_tensor(z) @ t[m + 1:]
        nll = vote_nll(t[:m][d["winner"]] + offset / 2, t[:m][d["loser"]] - offset / 2,
                       torch.as_tensor(d["code"]), t[m].expand(len(offset)), family)
        return float(nll.mean() + 0.5 * reg * (t[m + 1:] ** 2).sum())

    start = np.zeros(m + 5)
    start[m] = initial_eta(family)
    theirs = minimize(objective, start, method="BFGS",
                      options={"gtol": 1e-9, "maxiter": 5000}).x
    ours = np.concatenate([fit.theta, [fit.eta], fit.beta])
    if family == "rk":
        theirs[:m] -= theirs[:m].mean()
    assert objective(ours) <= objective(theirs) + 1e-9
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_recovers_the_planted_style_effect_and_bootstrap_agrees():
    d = style_world(11, 20000, ties=0.0)
    fit = fit_style(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], d["m"], "bt",
                    reg=0.0, ci="sandwich")
    se = (fit.beta_upper - fit.beta) / 1.959964
    assert np.all(np.abs(fit.beta - TRUE_BETA) < 4 * se), (fit.beta, se)
    boot = fit_style(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], d["m"], "bt",
                     reg=0.0, ci="bootstrap", rounds=40, seed=1)
    ratio = (boot.upper - boot.lower) / (fit.upper - fit.lower)
    assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio
    # LMArena's default penalty shrinks the coefficients towards 0
    shrunk = fit_style(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], d["m"], "bt")
    assert np.all(np.abs(shrunk.beta) < np.abs(fit.beta))


def _battles_frame(d) -> pl.DataFrame:
    names = np.array([f"model-{i}" for i in range(d["m"])])
    outcome = np.where(d["code"] == 1, "tie", np.where(d["code"] == 2, "tie (bothbad)",
                                                        np.where(d["b_won"], "model_b",
                                                                 "model_a")))
    columns = {"model_a": names[d["a"]], "model_b": names[d["b"]], "winner": outcome}
    for i, element in enumerate(STYLE_ELEMENTS):
        col_a, col_b = style_columns(element)
        columns[col_a], columns[col_b] = d["ca"][:, i], d["cb"][:, i]
    columns["category"] = np.where(np.arange(len(outcome)) % 3 == 0, "code", "chat")
    return pl.DataFrame(columns)


@pytest.mark.parametrize("reweighted", [False, True])
def test_agrees_with_arena_rank_contextual_model(reweighted):
    """LMArena's ContextualBradleyTerry (arena-rank, a test dependency) on the same battles
    and features: ratings within 0.01 points, bounds within 0.05."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("arena_rank")
    from arena_rank.models.contextual_bradley_terry import ContextualBradleyTerry
    from arena_rank.utils.data_utils import ContextualPairDataset

    from p2l_cli.leaderboard import battles_from_frame, build_leaderboard

    d = style_world(2, 6000, m=8, ties=0.25)
    frame = _battles_frame(d)
    features = relative_difference(d["ca"], d["cb"])
    df = pd.DataFrame({"model_a": frame["model_a"].to_list(),
                       "model_b": frame["model_b"].to_list(),
                       "winner": frame["winner"].str.replace(" (bothbad)", "").to_list(),
                       **{f"f{i}": features[:, i] for i in range(4)}})
    dataset = ContextualPairDataset.from_pandas(df, feature_cols=[f"f{i}" for i in range(4)],
                                                reweighted=reweighted)
    model = ContextualBradleyTerry(n_competitors=len(dataset.competitors), n_features=4)
    theirs = model.compute_ratings_and_cis(dataset, significance_level=0.05)

    battles = battles_from_frame(frame, "battles", style=True)
    board = build_leaderboard(battles, family="bt-tie", reweight=reweighted,
                              style_control=True)
    table = board.table.sort("model")
    assert table["model"].to_list() == list(theirs["competitors"])
    np.testing.assert_allclose(table["score"], np.asarray(theirs["ratings"]), atol=0.01)
    np.testing.assert_allclose(table["lower"], np.asarray(theirs["rating_lower"]), atol=0.05)
    np.testing.assert_allclose(table["upper"], np.asarray(theirs["rating_upper"]), atol=0.05)
    ours = [row["coefficient"] for row in board.meta["style"]]
    np.testing.assert_allclose(ours, np.asarray(theirs["coeffs"]), atol=1e-4)


def test_style_control_moves_a_verbose_model_down():
    """A model that wins by writing long answers ranks first without style control and
    below the stronger model with it."""
    rng = np.random.default_rng(4)
    n, m = 6000, 3
    theta = np.array([0.0, 0.3, 0.0])  # model 1 is the strongest; model 0 the most verbose
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    length = np.array([900.0, 300.0, 300.0])
    la = length[a] * rng.lognormal(0, 0.2, n)
    lb = length[b] * rng.lognormal(0, 0.2, n)
    raw = relative_difference(la, lb)
    p_a = expit(theta[a] - theta[b] + 1.5 * raw)
    b_won = rng.random(n) >= p_a
    code = np.zeros(n, dtype=int)
    winner, loser, sign = np.where(b_won, b, a), np.where(b_won, a, b), np.where(b_won, -1, 1)
    zero = np.zeros(n)
    plain = fit_style(winner, loser, code, sign, np.column_stack([zero]), m, "bt", reg=0.0,
                      ci="none")
    styled = fit_style(winner, loser, code, sign, raw[:, None], m, "bt", reg=0.0, ci="none")
    assert np.argmax(plain.theta) == 0
    assert np.argmax(styled.theta) == 1
    assert styled.beta[0] > 0


# -------------------------------------------------------------------------------- command


@pytest.fixture()
def battles_file(tmp_path):
    path = tmp_path / "battles.parquet"
    _battles_frame(style_world(9, 3000)).write_parquet(path)
    return path


@pytest.mark.slow
def test_command_prints_style_coefficients_and_writes_them(battles_file, tmp_path):
    out = tmp_path / "board.json"
    proc = subprocess.run(
        [sys.executable, "-m", "p2l_cli", "leaderboard", str(battles_file), "--style-control",
         "-o", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "length" in proc.stderr and "rating points" in proc.stderr  # messages: stderr
    written = json.loads(out.read_text())
    style = written["p2l"]["style"]
    assert [row["feature"] for row in style] == ["length", "headers", "bold", "lists"]
    assert len(written["rows"]) == 6
    for row in style:
        assert row["lower"] < row["coefficient"] < row["upper"]
        assert row["points_per_sd"] == pytest.approx(row["coefficient"] * 400 / np.log(10))


def test_style_control_with_by_fits_each_group(battles_file, tmp_path):
    out = tmp_path / "board.md"
    result = CliRunner().invoke(app, ["leaderboard", str(battles_file), "--style-control",
                                      "--by", "category", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "category = code" in result.output and "Style, category = chat" in result.output
    text = out.read_text()
    assert "Style coefficients" in text and "| length |" in text


def test_style_control_refuses_inputs_without_style(tmp_path):
    path = tmp_path / "plain.parquet"
    pl.DataFrame({"model_a": ["x", "y"], "model_b": ["y", "x"],
                  "winner": ["model_a", "tie"]}).write_parquet(path)
    result = CliRunner().invoke(app, ["leaderboard", str(path), "--style-control"])
    assert result.exit_code == 2
    assert "no style columns" in result.output
    assert "Traceback" not in result.output


def test_style_control_names_the_row_with_a_missing_count(tmp_path):
    path = tmp_path / "gap.parquet"
    frame = pl.DataFrame({"model_a": ["x", "y", "x"], "model_b": ["y", "x", "y"],
                          "winner": ["model_a", "model_b", "tie"],
                          "sum_assistant_tokens_a": [10.0, None, 3.0],
                          "sum_assistant_tokens_b": [4.0, 5.0, 3.0]})
    frame.write_parquet(path)
    result = CliRunner().invoke(app, ["leaderboard", str(path), "--style-control"])
    assert result.exit_code == 2
    assert "row 2: sum_assistant_tokens_a" in result.output


def test_style_control_refuses_a_negative_penalty(battles_file):
    result = CliRunner().invoke(app, ["leaderboard", str(battles_file), "--style-control",
                                      "--style-reg", "-1"])
    assert result.exit_code == 2
    assert "--style-reg -1.0" in result.output


@pytest.mark.slow
def test_prepare_then_style_control_end_to_end(tmp_path):
    """Arena records with both answers -> `p2l prepare` (style counted from the answers) ->
    `p2l leaderboard --style-control`, as real subprocesses. In these votes the longer,
    list-heavy answer wins 80% of the time whichever model wrote it, so the length and lists
    coefficients come out positive."""
    rng = np.random.default_rng(0)
    models = ["alpha", "beta", "gamma", "delta"]
    records = []
    for i in range(1200):
        a, b = rng.choice(4, 2, replace=False)
        long_side = rng.integers(2)
        answers = []
        for side in range(2):
            if side == long_side:
                text = "Here is a full answer.\n" + "".join(
                    f"- point {k} with some detail and more words\n" for k in range(6))
            else:
                text = "Short answer."
            answers.append(text)
        long_wins = rng.random() < 0.8
        winner = ("model_a" if long_side == 0 else "model_b") if long_wins else (
            "model_b" if long_side == 0 else "model_a")
        records.append({
            "id": str(i), "model_a": models[a], "model_b": models[b], "winner": winner,
            "conversation_a": [{"role": "user", "content": f"question {i}"},
                               {"role": "assistant", "content": answers[0]}],
            "conversation_b": [{"role": "user", "content": f"question {i}"},
                               {"role": "assistant", "content": answers[1]}],
        })
    source = tmp_path / "arena.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    run = [sys.executable, "-m", "p2l_cli"]
    prep = subprocess.run([*run, "prepare", str(source), "-o", str(tmp_path / "data"),
                           "--val-fraction", "0"], capture_output=True, text=True, check=False)
    assert prep.returncode == 0, prep.stderr
    board = tmp_path / "board.json"
    proc = subprocess.run([*run, "leaderboard", str(tmp_path / "data" / "train.parquet"),
                           "--style-control", "--style-reg", "0", "-o", str(board)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    style = {row["feature"]: row for row in json.loads(board.read_text())["p2l"]["style"]}
    assert style["length"]["lower"] > 0 and style["lists"]["lower"] > 0
    # the long answer's relative differences are about +-0.9 sd each: together they move
    # the log-odds by about logit(0.8) = 1.39
    total = style["length"]["coefficient"] + style["lists"]["coefficient"]
    assert 1.0 < 0.95 * total < 1.8
    assert style["headers"]["coefficient"] == 0.0  # no headers in any answer


def test_python_api_matches_the_command(battles_file, tmp_path):
    import p2l_cli as p2l

    board, style = p2l.fit_style_leaderboard(battles_file)
    out = tmp_path / "board.json"
    result = CliRunner().invoke(app, ["leaderboard", str(battles_file), "--style-control",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert board["model"].to_list() == [row["model"] for row in written["rows"]]
    np.testing.assert_allclose(board["score"], [row["score"] for row in written["rows"]])
    np.testing.assert_allclose(style["coefficient"],
                               [row["coefficient"] for row in written["p2l"]["style"]])
    with pytest.raises(ValueError, match="no style columns"):
        p2l.fit_style_leaderboard(pl.DataFrame({"model_a": ["x"], "model_b": ["y"],
                                                "winner": ["model_a"]}))


@pytest.mark.parametrize("family", ["rk", "grk"])
def test_eta_family_sandwich_matches_dense_autograd(family):
    """The sandwich for families with eta (rk by the strength difference, grk by the
    generic path) against one built densely in the test: per-vote score vectors by
    torch.func.jacrev over all parameters, the Hessian by torch.func.hessian."""
    import torch

    from p2l_cli.stats.families import vote_nll
    from p2l_cli.stats.style import style_sandwich

    d = style_world(8, 500, ties=0.3)
    reg, m = 0.2, d["m"]
    fit = fit_style(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], m, family,
                    reg=reg, ci="none")
    votes, _, _ = style_votes(d["winner"], d["loser"], d["code"], d["sign"], d["raw"], m,
                              family)
    params = torch.as_tensor(np.concatenate([fit.theta, [fit.eta], fit.beta]))
    z = torch.as_tensor(votes.oriented)

    def per_vote(p):
        offset = z @ p[m + 1:]
        return vote_nll(p[:m][d["winner"]] + offset / 2, p[:m][d["loser"]] - offset / 2,
                        torch.as_tensor(d["code"]), p[m].expand(len(offset)), family)

    n = len(d["winner"])
    scores = torch.func.jacrev(per_vote)(params).numpy()  # [n, P]
    hessian = torch.func.hessian(lambda p: per_vote(p).mean())(params).numpy()
    hessian += 1e-5 * np.eye(len(params))
    meat = scores.T @ scores / n
    penalty = np.concatenate([np.zeros(m + 1), fit.beta])
    meat -= reg**2 / n * np.outer(penalty, penalty)
    inverse = np.linalg.inv(hessian)
    expected = inverse @ meat @ inverse / n
    ours = style_sandwich(votes, params.numpy(), family, reg)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-12)
