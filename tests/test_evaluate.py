"""`p2l evaluate`: metrics against hand-computed values, the baseline and the oracle on
simulated votes, and the command line end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from p2l_cli import evaluate as ev
from p2l_cli.contracts.predictions import predictions_from_frame
from p2l_cli.errors import UserError
from p2l_cli.io import write_table
from tests.conftest import run_cli


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def battles(rows: list[tuple[str, str, str, str]], prefix: str = "v") -> pl.DataFrame:
    """Battles from (prompt, model_a, model_b, winner) tuples."""
    return pl.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(len(rows))],
            "prompt": [[r[0]] for r in rows],
            "model_a": [r[1] for r in rows],
            "model_b": [r[2] for r in rows],
            "winner": [r[3] for r in rows],
        }
    )


def predictions(prompts: dict[str, list[float]], models: list[str], loss: str = "bt"):
    frame = pl.DataFrame(
        {"prompt": [[p] for p in prompts], "coefs": list(prompts.values())},
        schema={"prompt": pl.List(pl.String), "coefs": pl.List(pl.Float32)},
    )
    return predictions_from_frame(frame, {"models": models, "head": "bt", "loss": loss}, "preds")


# ------------------------------------------------------------------ per-vote pieces by hand


def test_vote_losses_by_hand():
    coefs = np.array([[1.0, 0.0], [1.0, 0.0], [0.3, 0.3]])
    labels = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 1]])  # 0 wins, 1 wins, a tie
    nll, mask = ev.vote_losses(coefs, labels, None, "bt-tie")
    expected = [
        math.log1p(math.exp(-1.0)),
        math.log1p(math.exp(1.0)),
        math.log(2.0),  # a tie at equal strength: half of -log(1/2) twice
    ]
    assert nll == pytest.approx(expected, abs=1e-12)
    assert mask.tolist() == [1.0, 1.0, 1.0]
    assert ev.vote_losses(coefs, labels, None, "bt")[1].tolist() == [1.0, 1.0, 0.0]


def test_bootstrap_over_two_prompts_by_hand():
    # Prompt A (two votes) gains 1 nat per vote, prompt B (two votes) gains 0. Resampling two
    # prompts gives the mean gain 1 (A twice, p = 1/4), 1/2 (p = 1/2) or 0 (p = 1/4).
    base = np.array([2.0, 2.0, 1.0, 1.0])
    new = np.array([1.0, 1.0, 1.0, 1.0])
    clusters = np.array([0, 0, 1, 1])
    gain, low, high = ev.bootstrap_gain(base, new, np.ones(4), clusters, reps=4000, seed=1)
    assert gain == pytest.approx(0.5)
    assert (low, high) == (0.0, 1.0)
    gain, low, high = ev.bootstrap_gain(base, new, np.ones(4), clusters, reps=4000, level=0.4)
    assert (low, high) == (0.5, 0.5)  # the middle 40% of the resamples are all 1/2
    # the same seed gives the same interval; a constant difference has no spread
    again = ev.bootstrap_gain(base, new, np.ones(4), clusters, reps=4000, seed=1)
    assert again == ev.bootstrap_gain(base, new, np.ones(4), clusters, reps=4000, seed=1)
    assert ev.bootstrap_gain(base, base - 0.25, np.ones(4), clusters, 500)[1:] == pytest.approx(
        (0.25, 0.25)
    )


def test_votes_map_to_the_predictions_model_list_by_name():
    frame = battles(
        [
            ("p", "x", "y", "model_a"),
            ("p", "x", "y", "model_b"),
            ("p", "y", "x", "tie"),
            ("p", "x", "z", "tie (bothbad)"),
            ("p", "y", "w", "model_a"),
        ]
    )
    votes = ev.make_votes(frame, ["z", "y", "x"], "val")
    assert votes.labels.tolist() == [[2, 1, 0], [1, 2, 0], [1, 2, 1], [2, 0, 2]]
    assert votes.dropped == 1  # "w" is not in the model list
    bad = battles([("p", "x", "y", "model_c")])
    with pytest.raises(UserError, match="row 1: winner 'model_c'"):
        ev.make_votes(bad, ["x", "y"], "val")


def test_labels_column_maps_through_the_data_model_list():
    frame = pl.DataFrame({"id": ["a", "b"], "labels": [[0, 1, 0], [2, 0, 1]]})
    votes = ev.make_votes(frame, ["c", "b", "a"], "val", data_models=["a", "b", "c"])
    assert votes.labels.tolist() == [[2, 1, 0], [0, 2, 1]]


# ----------------------------------------------------------------- the evaluation by hand


def test_p2l_and_marginal_scores_by_hand():
    """Two models: the marginal bt leaderboard of 3 wins to 1 has theta_x - theta_y = log 3
    (closed form); P2L predicts +1 on prompt 'p' and -1 on prompt 'q'."""
    train = battles([("t", "x", "y", "model_a")] * 3 + [("t", "x", "y", "model_b")], prefix="t")
    val = battles(
        [
            ("p", "x", "y", "model_a"),
            ("p", "y", "x", "model_b"),
            ("q", "x", "y", "model_b"),
            ("q", "x", "y", "model_a"),
            ("q", "x", "y", "tie"),
        ]
    )
    preds = predictions({"p": [0.5, -0.5], "q": [-0.5, 0.5]}, ["x", "y"])
    result = ev.evaluate_predictions(
        preds, val, "val", train, "train", settings=ev.Settings(bootstrap=200)
    )
    assert result["votes"] == 5 and result["prompts"] == 2 and result["joined_on"] == "prompt"
    # bt drops the tie: x won 3 of the 4 decisive votes; P2L: right on 3 (p, p, q's b-win)
    p2l_nll = [math.log1p(math.exp(-1))] * 3 + [math.log1p(math.exp(1))]
    assert result["p2l"]["nll"] == pytest.approx(np.mean(p2l_nll), abs=1e-6)
    assert result["p2l"]["accuracy"] == pytest.approx(0.75)
    assert result["p2l"]["n"] == 4
    d = math.log(3.0)
    marginal_nll = [math.log1p(math.exp(-d))] * 3 + [math.log1p(math.exp(d))]
    assert result["marginal"]["nll"] == pytest.approx(np.mean(marginal_nll), abs=1e-6)
    assert result["marginal"]["accuracy"] == pytest.approx(0.75)
    gain = result["gain"]
    assert gain["nll"] == pytest.approx(np.mean(marginal_nll) - np.mean(p2l_nll), abs=1e-6)
    assert gain["low"] <= gain["nll"] <= gain["high"]
    # calibration, oriented from x (the lower index): P2L said sigmoid(1) on prompt p (x won
    # both) and sigmoid(-1) on prompt q (x won one of two decisive votes)
    bins = {row["bin"]: row for row in result["calibration"]["p2l"]}
    assert sorted(bins) == [2, 7]
    assert bins[7]["votes"] == 2 and bins[7]["observed"] == pytest.approx(1.0)
    assert bins[7]["predicted"] == pytest.approx(sigmoid(1.0), abs=1e-6)
    assert bins[2]["votes"] == 2 and bins[2]["observed"] == pytest.approx(0.5)
    assert bins[2]["predicted"] == pytest.approx(sigmoid(-1.0), abs=1e-6)
    assert result["p2l"]["ece"] == pytest.approx(
        (1 - sigmoid(1.0) + abs(sigmoid(-1.0) - 0.5)) / 2, abs=1e-6
    )
    assert result["p2l"]["brier"] == pytest.approx(
        (3 * (1 - sigmoid(1.0)) ** 2 + sigmoid(1.0) ** 2) / 4, abs=1e-6
    )


def test_without_training_votes_the_baseline_is_unavailable():
    val = battles([("p", "x", "y", "model_a"), ("p", "x", "y", "model_b")])
    result = ev.evaluate_predictions(predictions({"p": [0.0, 0.0]}, ["x", "y"]), val, "val")
    assert result["marginal"]["available"] is False
    assert "gain" not in result
    assert result["p2l"]["nll"] == pytest.approx(math.log(2.0))


def test_by_turns_groups_votes():
    val = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "prompt": [["one"], ["one", "two"], ["three"]],
            "model_a": ["x", "x", "x"],
            "model_b": ["y", "y", "y"],
            "winner": ["model_a", "model_b", "model_a"],
        }
    )
    frame = pl.DataFrame({"id": ["a", "b", "c"], "coefs": [[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]})
    preds = predictions_from_frame(frame, {"models": ["x", "y"], "loss": "bt"}, "preds")
    result = ev.evaluate_predictions(preds, val, "val", settings=ev.Settings(by="turns"))
    rows = {row["group"]: row for row in result["groups"]["rows"]}
    assert result["joined_on"] == "id"
    assert rows["1"]["votes"] == 2 and rows["2"]["votes"] == 1
    assert rows["1"]["p2l"]["nll"] == pytest.approx(
        (math.log1p(math.exp(-1)) + math.log(2)) / 2, abs=1e-6
    )
    assert rows["2"]["p2l"]["nll"] == pytest.approx(math.log1p(math.exp(-2)), abs=1e-6)
    with pytest.raises(UserError, match="--by language"):
        ev.evaluate_predictions(preds, val, "val", settings=ev.Settings(by="language"))


# ------------------------------------------------------------------------ the command line


def write_hand_case(folder):
    """The two-model case above as files: val/train battles and a predictions file."""
    train = battles([("t", "x", "y", "model_a")] * 3 + [("t", "x", "y", "model_b")], "t")
    val = battles(
        [
            ("p", "x", "y", "model_a"),
            ("p", "y", "x", "model_b"),
            ("q", "x", "y", "model_b"),
            ("q", "x", "y", "model_a"),
        ]
    ).with_columns(pl.Series("category", ["code", "code", "poem", "poem"]))
    preds = pl.DataFrame(
        {"id": val["id"], "prompt": val["prompt"], "coefs": [[0.5, -0.5]] * 2 + [[-0.5, 0.5]] * 2}
    )
    write_table(train, folder / "train.parquet")
    write_table(val, folder / "val.parquet")
    write_table(
        preds, folder / "preds.parquet", meta={"models": ["x", "y"], "head": "bt", "loss": "bt"}
    )
    return folder


def test_cli_json_by_category_and_plots(tmp_path):
    write_hand_case(tmp_path)
    out = tmp_path / "eval.json"
    result = run_cli(
        "evaluate",
        tmp_path / "preds.parquet",
        tmp_path / "val.parquet",
        "--by",
        "category",
        "--json",
        out,
        "--plot",
        tmp_path / "plots",
        "--bootstrap",
        "100",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # train.parquet beside val.parquet is the default baseline
    assert report["train"].endswith("train.parquet") and report["train_votes"] == 4
    d = math.log(3.0)
    p2l = (3 * math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 4
    marginal = (3 * math.log1p(math.exp(-d)) + math.log1p(math.exp(d))) / 4
    assert report["gain"]["nll"] == pytest.approx(marginal - p2l, abs=1e-6)
    rows = {row["group"]: row for row in report["groups"]["rows"]}
    assert rows["code"]["p2l"]["nll"] == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert rows["poem"]["marginal"]["nll"] == pytest.approx(
        (math.log1p(math.exp(-d)) + math.log1p(math.exp(d))) / 2, abs=1e-6
    )
    assert (tmp_path / "plots" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / "gain_by_category.png").stat().st_size > 1000
    assert "Held-out votes" in result.stderr


def test_cli_json_to_stdout(tmp_path):
    write_hand_case(tmp_path)
    result = run_cli(
        "evaluate",
        tmp_path / "preds.parquet",
        tmp_path / "val.parquet",
        "--json",
        "-",
        "--bootstrap",
        "0",
        "-q",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["p2l"]["n"] == 4 and "low" not in report["gain"]
    assert result.stderr == ""


def test_cli_user_errors_are_one_line(tmp_path):
    write_hand_case(tmp_path)
    write_table(pl.read_parquet(tmp_path / "preds.parquet"), tmp_path / "bare.parquet")
    result = run_cli("evaluate", tmp_path / "bare.parquet", tmp_path / "val.parquet")
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bare.parquet: no p2l metadata" in last
    assert "Traceback" not in result.stderr
    result = run_cli(
        "evaluate", tmp_path / "preds.parquet", tmp_path / "val.parquet", "--by", "language"
    )
    assert result.exit_code == 2 and "--by language" in result.stderr


# ------------------------------------------------------------- simulated votes and truth


def simulated_split(family: str, seed: int = 3, battles: int = 1600, models: int = 5):
    """Simulated votes as battles (ids, models, winner, category), split 2:1 by row."""
    from p2l_cli.data.simulate import simulate_arena

    arena = simulate_arena(
        num_battles=battles, num_models=models, family=family, seed=seed, num_prompts=0
    )
    frame = arena.battles.select(
        pl.col("question_id").alias("id"), "model_a", "model_b", "winner", "category"
    )
    cut = 2 * battles // 3
    truth = ev.TruthTable(arena.truth, list(arena.models), "truth")
    return arena, frame[:cut], frame[cut:], truth


def true_predictions(arena, val: pl.DataFrame, family: str) -> ev.Predictions:
    """A "P2L model" that outputs the true coefficients of each validation prompt."""
    rows = val.select("id").join(arena.truth, on="id", how="left")
    columns = [pl.col("id"), pl.col("true_coefs").alias("coefs")]
    if "true_eta" in rows.columns:
        columns.append(pl.col("true_eta").alias("eta"))
    meta = {"models": list(arena.models), "head": "bt", "loss": family}
    return predictions_from_frame(rows.select(columns), meta, "truth-as-p2l")


@pytest.mark.parametrize("family", ["bt", "rk"])
@pytest.mark.slow
def test_true_coefficients_capture_all_of_the_achievable_gain(family):
    arena, train, val, truth = simulated_split(family)
    preds = true_predictions(arena, val, family)
    result = ev.evaluate_predictions(
        preds, val, "val", train, "train", truth, settings=ev.Settings(bootstrap=200)
    )
    assert result["votes"] == val.height and result["dropped_votes"] == 0
    assert result["p2l"]["nll"] == result["oracle"]["nll"]
    assert result["gain"]["nll"] == result["oracle"]["gain"]["nll"] > 0
    assert result["oracle"]["fraction_captured"] == 1.0
    assert result["gain"]["low"] < result["gain"]["nll"] < result["gain"]["high"]
    for row in result["recovery"]:
        assert row["p2l"]["kendall_tau"] == pytest.approx(1.0)
        assert row["p2l"]["win_prob_gap"] == pytest.approx(0.0, abs=1e-9)
    if family == "bt":
        # the oracle's NLL by hand: mean log(1 + exp(-(theta_winner - theta_loser)))
        coefs = np.array(val.join(arena.truth, on="id", how="left")["true_coefs"].to_list())
        names = list(arena.models)
        a = np.array([names.index(m) for m in val["model_a"]])
        b = np.array([names.index(m) for m in val["model_b"]])
        sign = np.where(val["winner"].to_numpy() == "model_a", 1.0, -1.0)
        rows = np.arange(val.height)
        margin = sign * (coefs[rows, a] - coefs[rows, b])
        assert result["oracle"]["nll"] == pytest.approx(np.mean(np.log1p(np.exp(-margin))))


@pytest.mark.slow
def test_category_leaderboards_match_a_direct_fit():
    """The per-category baseline, refitted per category with scipy on a hand-written
    Bradley-Terry likelihood, gives the same validation NLL."""
    from scipy.optimize import minimize

    arena, train, val, truth = simulated_split("bt", seed=5, battles=900, models=4)
    names = list(arena.models)
    preds = true_predictions(arena, val, "bt")
    result = ev.evaluate_predictions(
        preds, val, "val", train, "train", truth, settings=ev.Settings(bootstrap=0)
    )

    def indices(frame):
        a = np.array([names.index(m) for m in frame["model_a"]])
        b = np.array([names.index(m) for m in frame["model_b"]])
        a_won = frame["winner"].to_numpy() == "model_a"
        return np.where(a_won, a, b), np.where(a_won, b, a)

    def bt_nll(theta, winner, loser):
        return np.mean(np.log1p(np.exp(-(theta[winner] - theta[loser]))))

    losses = []
    for category in sorted(set(val["category"])):
        w, l = indices(train.filter(pl.col("category") == category))
        theta = minimize(
            bt_nll, np.zeros(len(names)), args=(w, l), method="BFGS", options={"gtol": 1e-10}
        ).x
        vw, vl = indices(val.filter(pl.col("category") == category))
        losses.append(np.log1p(np.exp(-(theta[vw] - theta[vl]))))
    assert result["category_fit"]["nll"] == pytest.approx(np.concatenate(losses).mean(), abs=1e-5)
    counts = result["train_votes_per_category"]
    assert sum(counts.values()) == train.height


@pytest.mark.slow
def test_end_to_end_with_a_tiny_backbone(tmp_path):
    """simulate -> prepare -> train (tiny random BERT) -> evaluate the model folder and its
    predictions file: both agree with each other and with the training run's own validation
    figures (an independent computation of the same numbers)."""
    from tests.conftest import run_cli
    from tests.tiny import make_backbone

    backbone = make_backbone("bert", tmp_path / "backbone")
    arena, data, model = tmp_path / "arena", tmp_path / "data", tmp_path / "model"
    steps = [
        ["simulate", arena, "--battles", "400", "--models", "4", "--prompts", "0", "--seed", "2"],
        ["prepare", arena / "battles.parquet", "-o", data, "--val-fraction", "0.25"],
        [
            "train",
            data,
            "-o",
            model,
            "--backbone",
            backbone,
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--max-length",
            "64",
            "--cache-dir",
            tmp_path / "cache",
        ],
        ["predict", model, data / "val.parquet", "-o", tmp_path / "preds.parquet"],
    ]
    for argv in steps:
        result = run_cli(*argv)
        assert result.exit_code == 0, f"{argv[0]}: {result.output}"
    reports = {}
    for name, source in (("model", model), ("file", tmp_path / "preds.parquet")):
        out = tmp_path / f"{name}.json"
        result = run_cli(
            "evaluate",
            source,
            data / "val.parquet",
            "--truth",
            arena / "truth.parquet",
            "--json",
            out,
            "--bootstrap",
            "100",
        )
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(out.read_text())
    by_model, by_file = reports["model"], reports["file"]
    assert by_model["joined_on"] == "prompt" and by_file["joined_on"] == "id"
    for key in ("p2l", "marginal", "oracle", "category_fit"):
        assert by_model[key]["nll"] == pytest.approx(by_file[key]["nll"], abs=1e-6)
    trained = json.loads((model / "metrics.json").read_text())["val"]
    assert by_model["votes"] == trained["p2l"]["n"]
    for key in ("p2l", "marginal"):
        assert by_model[key]["nll"] == pytest.approx(trained[key]["nll"], abs=1e-4)
        assert by_model[key]["accuracy"] == pytest.approx(trained[key]["accuracy"], abs=1e-6)


def test_summary_names_why_the_own_family_share_is_missing():
    from p2l_cli.evaluate.report import summary_lines

    result = {
        "family": "bt-tie",
        "marginal": {"available": True, "nll": 0.6561, "nll_half": 0.6561},
        "p2l": {"nll": 0.6228, "nll_half": 0.6228},
        "gain": {"nll": 0.0333},
        "gain_half": {"nll": 0.0333},
        "oracle": {"available": True, "family": "rk", "fraction_captured": None,
                   "fraction_captured_half": 0.88},
    }  # fmt: skip
    line = summary_lines(result)[-1]
    assert line.startswith("fraction of the achievable gain captured (oracle), ties as half: 88.0%")
    assert "the truth is rk, the model bt-tie" in line
    result["oracle"] = {"available": True, "fraction_captured": 0.5,
                        "fraction_captured_half": 0.52}  # fmt: skip
    assert summary_lines(result)[-1] == ("fraction of the achievable gain captured (oracle), "
                                         "ties as half: 52.0%; in the family's own NLL: 50.0%")
