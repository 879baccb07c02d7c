"""`p2l leaderboard` end to end: battles and predictions files, views, every output format,
exit codes; numbers checked against an independent scipy fit or a known answer."""

from __future__ import annotations

import io as pyio
import json
import math

import numpy as np
import polars as pl
import pytest
from conftest import run_cli, run_p2l
from scipy.optimize import minimize

from p2l_cli import io
from p2l_cli.leaderboard import rank_with_ties

MODELS = ["alpha", "bravo", "charlie", "delta", "echo"]
TRUTH = np.array([0.8, 0.3, 0.0, -0.4, -0.7])
ARENA = 400 / np.log(10)


def simulate_battles(n: int = 1500, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, n)
    b = (a + rng.integers(1, 5, n)) % 5
    a_wins = rng.random(n) < 1 / (1 + np.exp(-(TRUTH[a] - TRUTH[b])))
    draw = rng.random(n)
    winner = np.where(draw < 0.1, "tie", np.where(draw < 0.15, "tie (bothbad)",
                                                   np.where(a_wins, "model_a", "model_b")))
    names = np.array(MODELS)
    return pl.DataFrame({
        "id": [f"b{i}" for i in range(n)],
        "model_a": names[a],
        "model_b": names[b],
        "winner": winner,
        "category": rng.choice(["code", "math"], n),
    })


def scipy_bt_tie_scores(df: pl.DataFrame, weights=None) -> dict[str, float]:
    """Arena scores by a separate route: per-vote bt-tie likelihood, BFGS, mean-zero."""
    ia = np.array([MODELS.index(m) for m in df["model_a"]])
    ib = np.array([MODELS.index(m) for m in df["model_b"]])
    y = df["winner"].replace_strict({"model_a": 1.0, "model_b": 0.0}, default=0.5).to_numpy()
    w = np.ones(len(y)) if weights is None else weights

    def nll(free):
        theta = np.concatenate([[0.0], free])
        d = theta[ia] - theta[ib]
        return np.average(y * np.logaddexp(0, -d) + (1 - y) * np.logaddexp(0, d), weights=w)

    res = minimize(nll, np.zeros(4), method="BFGS", jac="3-point", options={"gtol": 1e-10})
    theta = np.concatenate([[0.0], res.x])
    return dict(zip(MODELS, 1000 + ARENA * (theta - theta.mean())))


@pytest.fixture(scope="module")
def battles(tmp_path_factory):
    path = tmp_path_factory.mktemp("lb") / "battles.parquet"
    df = simulate_battles()
    df.write_parquet(path)
    return path, df


def write_predictions(path, coefs, family="bt", eta=None, extra=None):
    df = pl.DataFrame({"prompt": [[f"q{i}"] for i in range(len(coefs))],
                       "coefs": [list(map(float, row)) for row in coefs]})
    df = df.with_columns(pl.col("coefs").cast(pl.List(pl.Float32)))
    if eta is not None:
        df = df.with_columns(pl.Series("eta", eta))
    if extra:
        df = df.with_columns(**{k: pl.Series(v) for k, v in extra.items()})
    io.write_table(df, path, meta={"models": MODELS, "head": "rk" if eta is not None else "bt",
                                   "loss": family})


# ------------------------------------------------------------------------- battles files


def test_marginal_csv_matches_independent_fit(battles, tmp_path):
    path, df = battles
    out = tmp_path / "board.csv"
    proc = run_p2l("leaderboard", path, "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "alpha" in proc.stderr.decode()  # the table on stderr
    assert proc.stdout == b""
    table = pl.read_csv(out)
    assert table.columns == ["rank", "model", "score", "lower", "upper", "votes", "win_rate",
                             "theta"]
    want = scipy_bt_tie_scores(df)
    for row in table.iter_rows(named=True):
        assert row["score"] == pytest.approx(want[row["model"]], abs=1e-3)
        assert row["lower"] < row["score"] < row["upper"]
        assert row["votes"] == int(((df["model_a"] == row["model"])
                                    | (df["model_b"] == row["model"])).sum())
    assert table["score"].to_list() == sorted(table["score"].to_list(), reverse=True)
    assert table["model"][0] == "alpha"


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl", "parquet", "md"])
def test_every_output_format(battles, tmp_path, suffix):
    path, _ = battles
    out = tmp_path / f"board.{suffix}"
    result = run_cli("leaderboard", path, "-o", out, "--ci", "none", "-q")
    assert result.exit_code == 0, result.output
    if suffix == "md":
        lines = out.read_text().splitlines()
        assert lines[0].startswith("### bt-tie")
        assert lines[2].startswith("| rank | model | score")
        assert len([line for line in lines if line.startswith("| ")]) == 2 + len(MODELS)
        return
    table = io.read_table(out)
    assert table.height == len(MODELS)
    assert set(table["model"]) == set(MODELS)
    if suffix in ("json", "parquet"):
        meta = io.read_table_meta(out)[1]
        assert meta["family"] == "bt-tie" and meta["kind"] == "marginal"


def test_stdout_with_format_and_stdin_input(battles):
    _, df = battles
    buffer = pyio.BytesIO()
    df.write_csv(buffer)
    proc = run_p2l("leaderboard", "-", "-o", "-", "--format", "csv", "--top", "2", "-q",
                   input=buffer.getvalue())
    assert proc.returncode == 0, proc.stderr.decode()
    table = pl.read_csv(pyio.BytesIO(proc.stdout))
    assert table.height == 2
    assert table["model"].to_list() == ["alpha", "bravo"]


def test_anchor_and_families(battles, tmp_path):
    path, _ = battles
    out = tmp_path / "a.json"
    assert run_cli("leaderboard", path, "-o", out, "--ci", "none").exit_code == 0
    plain = {r["model"]: r["score"] for r in io.read_table(out).iter_rows(named=True)}
    result = run_cli("leaderboard", path, "-o", out, "--ci", "none", "--anchor", "charlie=1200")
    assert result.exit_code == 0, result.output
    anchored = {r["model"]: r["score"] for r in io.read_table(out).iter_rows(named=True)}
    assert anchored["charlie"] == pytest.approx(1200.0)
    for model in MODELS:
        assert anchored[model] - plain[model] == pytest.approx(1200.0 - plain["charlie"])
    for family in ("bt", "rk", "grk"):
        result = run_cli("leaderboard", path, "-o", out, "--family", family, "--ci",
                         "bootstrap", "--bootstrap-rounds", "10")
        assert result.exit_code == 0, result.output
        assert io.read_table_meta(out)[1]["family"] == family


def test_by_group_matrix_and_model_view(battles, tmp_path):
    path, df = battles
    out = tmp_path / "groups.csv"
    result = run_cli("leaderboard", path, "--by", "category", "-o", out, "--ci", "none")
    assert result.exit_code == 0, result.output
    assert "Rank by category" in result.output
    table = pl.read_csv(out)
    assert table.columns[0] == "category"
    assert sorted(set(table["category"])) == ["code", "math"]
    code_votes = df.filter(pl.col("category") == "code")
    want = scipy_bt_tie_scores(code_votes)
    for row in table.filter(pl.col("category") == "code").iter_rows(named=True):
        assert row["score"] == pytest.approx(want[row["model"]], abs=1e-3)

    view = tmp_path / "view.csv"
    result = run_cli("leaderboard", path, "--by", "category", "--model", "echo", "-o", view)
    assert result.exit_code == 0, result.output
    rows = pl.read_csv(view)
    assert rows.height == 2 and rows.columns[:3] == ["category", "models", "rank"]
    assert rows["rank"].to_list() == sorted(rows["rank"].to_list())


def test_model_view_groups_by_category_unless_told(battles, tmp_path):
    path, df = battles
    implicit, explicit = tmp_path / "implicit.csv", tmp_path / "explicit.csv"
    assert run_cli("leaderboard", path, "--model", "echo", "-o", implicit, "-q").exit_code == 0
    assert run_cli("leaderboard", path, "--by", "category", "--model", "echo", "-o", explicit,
                   "-q").exit_code == 0
    assert pl.read_csv(implicit).equals(pl.read_csv(explicit))
    for row in pl.read_csv(implicit).iter_rows(named=True):
        want = scipy_bt_tie_scores(df.filter(pl.col("category") == row["category"]))
        assert row["score"] == pytest.approx(want["echo"], abs=1e-3)
    ungrouped = tmp_path / "ungrouped.parquet"
    df.drop("category").write_parquet(ungrouped)
    result = run_cli("leaderboard", ungrouped, "--model", "echo")
    assert result.exit_code == 2
    assert "add --by COLUMN (the input has no 'category' column)" in result.output


def test_terminal_table_leaves_theta_to_files(battles, tmp_path):
    path, _ = battles
    out = tmp_path / "board.csv"
    result = run_cli("leaderboard", path, "-o", out)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "rank" in line)
    assert "win_rate" in header and "theta" not in header
    assert "theta" in pl.read_csv(out).columns


def test_input_file_type_option(battles, tmp_path):
    _, df = battles
    odd = tmp_path / "battles.txt"
    df.write_csv(odd)
    result = run_cli("leaderboard", odd)
    assert result.exit_code == 2
    assert "use --input-format (parquet, jsonl, csv, json)" in result.output
    out = tmp_path / "board.csv"
    result = run_cli("leaderboard", odd, "--input-format", "csv", "--ci", "none", "-o", out)
    assert result.exit_code == 0, result.output
    want = scipy_bt_tie_scores(df)
    for row in pl.read_csv(out).iter_rows(named=True):
        assert row["score"] == pytest.approx(want[row["model"]], abs=1e-3)
    result = run_cli("leaderboard", odd, "-o", tmp_path / "board.xlsx")
    assert result.exit_code == 2 and "csv, json, jsonl, parquet, md" in result.output


def test_reweight_by_inverse_pair_frequency(battles, tmp_path):
    _, df = battles
    skewed = df.filter((pl.col("model_a") == "alpha") | (pl.col("model_b") == "alpha")
                       | (pl.col("id").str.slice(1).cast(pl.Int64) % 4 == 0))
    skewed_path = tmp_path / "skewed.parquet"
    skewed.write_parquet(skewed_path)
    out = tmp_path / "r.csv"
    assert run_cli("leaderboard", skewed_path, "-o", out, "--ci", "none", "--reweight",
                   "-q").exit_code == 0
    pair = [tuple(sorted(p)) for p in zip(skewed["model_a"], skewed["model_b"])]
    counts = {p: pair.count(p) for p in set(pair)}
    weights = np.array([1 / max(counts[p], 50) for p in pair])
    want = scipy_bt_tie_scores(skewed, weights)
    plain = scipy_bt_tie_scores(skewed)
    for row in pl.read_csv(out).iter_rows(named=True):
        assert row["score"] == pytest.approx(want[row["model"]], abs=1e-3)
    assert max(abs(want[m] - plain[m]) for m in MODELS) > 0.5


def test_plot(battles, tmp_path):
    path, _ = battles
    png = tmp_path / "board.png"
    result = run_cli("leaderboard", path, "--by", "category", "--plot", png, "-q")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------- predictions files


def test_predictions_sharing_one_leaderboard_aggregate_to_it(tmp_path):
    theta = np.array([1.1, 0.2, -0.3, 0.4, -1.4])
    path = tmp_path / "preds.parquet"
    write_predictions(path, np.tile(theta, (40, 1)))
    out = tmp_path / "agg.csv"
    result = run_cli("leaderboard", path, "-o", out)
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out)
    assert "votes" not in table.columns
    want = dict(zip(MODELS, 1000 + ARENA * (theta - theta.mean())))
    for row in table.iter_rows(named=True):
        assert row["score"] == pytest.approx(want[row["model"]], abs=1e-3)
        # identical prompts: every bootstrap resample gives the same leaderboard
        assert row["upper"] - row["lower"] == pytest.approx(0.0, abs=1e-3)


def test_single_prompt_leaderboards(tmp_path):
    rng = np.random.default_rng(3)
    coefs = rng.normal(0, 1, (6, 5))
    eta = rng.normal(-10, 1, 6)
    path = tmp_path / "preds.jsonl"
    write_predictions(path, coefs, family="rk", eta=eta)
    out = tmp_path / "one.json"
    result = run_cli("leaderboard", path, "--prompt-index", "4", "-o", out)
    assert result.exit_code == 0, result.output
    table = io.read_table(out)
    row4 = coefs[4].astype(np.float32).astype(np.float64)
    want = dict(zip(MODELS, 1000 + ARENA * (row4 - row4.mean())))
    for row in table.iter_rows(named=True):
        assert row["score"] == pytest.approx(want[row["model"]], abs=1e-3)
        assert row["rank"] == 1 + sum(v > want[row["model"]] + 1e-9 for v in want.values())
    one = tmp_path / "one.parquet"
    write_predictions(one, coefs[:1], family="rk", eta=eta[:1])
    assert run_cli("leaderboard", one, "-o", out).exit_code == 0
    assert io.read_table(out)["model"][0] == MODELS[int(np.argmax(coefs[0]))]


def test_predictions_by_group(tmp_path):
    coefs = np.vstack([np.tile([2.0, 1.0, 0.0, -1.0, -2.0], (5, 1)),
                       np.tile([-2.0, -1.0, 0.0, 1.0, 2.0], (5, 1))])
    path = tmp_path / "preds.parquet"
    write_predictions(path, coefs, extra={"category": ["up"] * 5 + ["down"] * 5})
    out = tmp_path / "g.csv"
    result = run_cli("leaderboard", path, "--by", "category", "--ci", "none", "-o", out)
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out)
    assert table.filter(pl.col("category") == "up")["model"][0] == "alpha"
    assert table.filter(pl.col("category") == "down")["model"][0] == "echo"


# ------------------------------------------------------------------------------- errors


def test_exit_2_for_unreadable_or_schema_less_input(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    schemaless = tmp_path / "x.csv"
    schemaless.write_text("x,y\n1,2\n")
    bad_winner = tmp_path / "w.csv"
    bad_winner.write_text("model_a,model_b,winner\na,b,model_a\na,b,model_c\n")
    no_meta = tmp_path / "nometa.parquet"
    pl.DataFrame({"coefs": [[0.1, 0.2]]}).write_parquet(no_meta)
    cases = [
        ([tmp_path / "missing.parquet"], "no such file"),
        ([broken], "Parquet"),
        ([schemaless], "neither a battles file"),
        ([bad_winner], "row 2"),
        ([no_meta], "metadata"),
    ]
    for args, message in cases:
        proc = run_p2l("leaderboard", *args) if args[0] == broken else None
        result = run_cli("leaderboard", *args) if proc is None else None
        code = proc.returncode if proc else result.exit_code
        text = proc.stderr.decode() if proc else result.output
        assert code == 2, (args, text)
        assert message in text, (args, text)
        assert "Traceback" not in text


def test_exit_2_for_bad_options(battles, tmp_path):
    path, _ = battles
    preds = tmp_path / "p.parquet"
    write_predictions(preds, np.zeros((3, 5)))
    cases = [
        (["--anchor", "nobody=1000"], "nobody"),
        (["--anchor", "alpha"], "MODEL=VALUE"),
        (["--by", "nope"], "nope"),
        (["--family", "elo"], "elo"),
        (["--ci", "jackknife"], "jackknife"),
        (["-o", "out.xlsx"], "format"),
        (["--prompt-index", "0"], "predictions"),
    ]
    for extra, message in cases:
        result = run_cli("leaderboard", path, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
    result = run_cli("leaderboard", preds, "--ci", "sandwich")
    assert result.exit_code == 2 and "sandwich" in result.output
    result = run_cli("leaderboard", preds, "--prompt-index", "7")
    assert result.exit_code == 2 and "3 prompts" in result.output


# ---------------------------------------------------------------------------- ranks


def test_rank_with_ties_as_lmarena():
    lower = np.array([10.0, 8.0, 7.5, 2.0])
    upper = np.array([12.0, 11.0, 9.0, 3.0])
    score = (lower + upper) / 2
    # model 2's upper bound 9 is below model 0's lower bound 10 only
    assert rank_with_ties(score, lower, upper).tolist() == [1, 1, 2, 4]
    assert rank_with_ties(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [1, 4, 1, 3]


# -------------------------------------------------------------- simulate + prepare


def test_simulate_prepare_leaderboard_end_to_end(tmp_path):
    arena, data = tmp_path / "arena", tmp_path / "data"
    run_p2l("simulate", arena, "--battles", "2000", "--models", "5", "--family", "rk",
            "--seed", "2", "-q", check=True)
    run_p2l("prepare", arena / "battles.parquet", "-o", data, "-q", check=True)
    out = tmp_path / "board.json"
    run_p2l("leaderboard", data / "train.parquet", "--family", "rk", "-o", out, check=True)
    board = io.read_table(out)
    result = run_cli("leaderboard", arena / "battles.parquet", "--by", "category", "--ci",
                     "none")
    assert result.exit_code == 0 and "Rank by category" in result.output
    # the same fit from prepare's own labels (indices into models.json), by the library
    from p2l_cli.stats.marginal import fit_marginal

    train = pl.read_parquet(data / "train.parquet")
    models = json.loads((data / "models.json").read_text())
    labels = np.array(train["labels"].to_list())
    fit = fit_marginal(labels[:, 0], labels[:, 1], labels[:, 2], len(models), family="rk")
    present = sorted(set(train["model_a"]) | set(train["model_b"]))
    assert present == models
    for row in board.iter_rows(named=True):
        assert row["theta"] == pytest.approx(fit.theta[models.index(row["model"])], abs=1e-8)
    # the leaderboard's order follows the simulation's truth, averaged over the battles
    truth = pl.read_parquet(arena / "truth.parquet")
    mean_truth = np.array(truth["true_coefs"].to_list()).mean(0)
    best_true = models[int(np.argmax(mean_truth))]
    assert board.filter(pl.col("rank") == 1)["model"].to_list().count(best_true) == 1


# ------------------------------------------------- what the votes cannot support (issue 12)


def _warnings(stderr: str) -> list[str]:
    text = " ".join(stderr.split())  # rich wraps long lines
    return [part.strip() for part in text.split("warning:")[1:]]


def _board(tmp_path, rows, *extra):
    path = tmp_path / "votes.parquet"
    pl.DataFrame(rows, schema=["model_a", "model_b", "winner"], orient="row").write_parquet(path)
    result = run_cli("leaderboard", path, "-o", tmp_path / "board.csv", *extra)
    assert result.exit_code == 0, result.output
    board = pl.read_csv(tmp_path / "board.csv")
    return {row["model"]: row for row in board.to_dicts()}, _warnings(result.stderr)


def test_one_vote_gives_unbounded_intervals_and_a_warning(tmp_path):
    board, warnings = _board(tmp_path, [("a", "b", "model_a")])
    assert board["a"]["upper"] == math.inf and board["a"]["lower"] is None
    assert board["b"]["lower"] == -math.inf and board["b"]["upper"] is None
    assert board["a"]["rank"] == board["b"]["rank"] == 1  # one vote ranks nobody
    assert any("(b) never won" in w for w in warnings), warnings
    assert any("(a) never lost" in w for w in warnings), warnings
    result = run_cli("leaderboard", tmp_path / "votes.parquet", "-o", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "b.json").read_text())  # strict JSON: bounds are null
    assert len(saved["p2l"]["warnings"]) == 2
    assert {r["model"]: r["upper"] for r in saved["rows"]} == {"a": None, "b": None}


def test_a_model_that_never_wins_is_unbounded_below(tmp_path):
    rows = [("a", "b", "model_a"), ("b", "a", "model_a"), ("a", "c", "model_a"),
            ("c", "b", "model_b")] * 20  # fmt: skip
    board, warnings = _board(tmp_path, rows)
    assert board["c"]["lower"] == -math.inf and board["c"]["upper"] is None
    for model in ("a", "b"):  # they beat each other: finite intervals
        assert math.isfinite(board[model]["lower"]) and math.isfinite(board[model]["upper"])
    [warning] = warnings
    assert "(c) never won a vote" in warning and "-infinity" in warning


def test_a_tie_bounds_a_model_in_families_that_keep_ties(tmp_path):
    rows = [("a", "b", "model_a"), ("b", "a", "model_a"), ("a", "c", "tie")] * 20
    board, warnings = _board(tmp_path, rows)
    assert warnings == [] and all(math.isfinite(r["lower"]) for r in board.values())
    _, dropped = _board(tmp_path, rows, "--family", "bt")  # bt drops ties: c has no vote
    assert any("(c): no vote" in w for w in dropped), dropped


def test_a_disconnected_comparison_graph_is_named(tmp_path):
    rows = [("a", "b", "model_a"), ("b", "a", "model_a"), ("a", "c", "model_a"),
            ("c", "a", "model_a"), ("b", "c", "tie"), ("x", "y", "model_a"),
            ("y", "x", "model_a")] * 10  # fmt: skip
    board, warnings = _board(tmp_path, rows)
    [warning] = warnings
    assert "2 groups that never meet" in warning and "(a, b, c | x, y)" in warning
    assert board["x"]["lower"] is None and board["y"]["upper"] is None
    assert math.isfinite(board["a"]["lower"])


def test_well_supported_battles_give_no_warning(battles, tmp_path):
    path, _ = battles
    result = run_cli("leaderboard", path, "-o", tmp_path / "board.csv")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
