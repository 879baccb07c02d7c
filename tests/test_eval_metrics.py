"""The leaderboard metrics of `p2l evaluate` (Spearman, top-k fraction and displacement,
win-probability L1, coefficient spread, tie accuracy) and the subset-size curve: each against
a hand-computed case, against scipy where it has the statistic, and against the lmarena/p2l
reference's formulas written out here in numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.optimize import minimize

from p2l_cli import evaluate as ev
from p2l_cli.contracts.predictions import predictions_from_frame
from p2l_cli.errors import UserError
from tests.conftest import run_cli
from tests.test_evaluate import battles, predictions, write_hand_case


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# ------------------------------------------------------------------------------- Spearman


def test_spearman_by_hand():
    # ranks 1 2 3 4 against 1 3 2 4: d = (0, 1, 1, 0), rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert ev.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert ev.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(ev.spearman([1, 1, 1], [1, 2, 3]))  # a constant leaderboard


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 12).astype(float)  # many ties
    b = rng.normal(size=12)
    assert ev.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


# ------------------------------------------------------------------------------ top-k


def test_top_k_by_hand():
    reference = [5, 4, 3, 2, 1]  # order 0 1 2 3 4
    other = [5, 1, 4, 3, 2]  # order 0 2 3 4 1
    # top-2: {0, 1} against {0, 2}: one of two; top-3: {0, 1, 2} against {0, 2, 3}: two of three
    assert ev.top_k_fraction(reference, other, 1) == 1.0
    assert ev.top_k_fraction(reference, other, 2) == pytest.approx(1 / 2)
    assert ev.top_k_fraction(reference, other, 3) == pytest.approx(2 / 3)
    assert ev.top_k_fraction(reference, other, 5) == 1.0
    # the reference's top 3 (models 0, 1, 2 at places 0, 1, 2) sit at places 0, 4, 1 in other:
    # |0 - 0| + |4 - 1| + |1 - 2| = 4 over 3 models
    assert ev.top_k_displacement(reference, other, 3) == pytest.approx(4 / 3)
    assert ev.top_k_displacement(reference, other, 1) == 0.0
    assert ev.top_k_displacement(reference, reference, 5) == 0.0
    with pytest.raises(ValueError, match="k = 6"):
        ev.top_k_fraction(reference, other, 6)


def reference_top_k(gt: np.ndarray, model: np.ndarray, k: int) -> tuple[float, float]:
    """lmarena/p2l's definitions: the share of ground truth's k largest among the model's k
    largest; the mean |model rank - ground-truth rank| of ground truth's k largest."""
    gt_top = np.argsort(-gt)[:k]
    model_top = np.argsort(-model)[:k]
    fraction = len(set(gt_top) & set(model_top)) / k
    model_rank = np.empty(len(model), dtype=int)
    model_rank[np.argsort(-model)] = np.arange(len(model))
    displacement = float(np.mean([abs(model_rank[m] - r) for r, m in enumerate(gt_top)]))
    return fraction, displacement


@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_the_reference_formulas(seed):
    rng = np.random.default_rng(seed)
    gt = rng.normal(size=15)
    model = gt + rng.normal(scale=0.7, size=15)
    for k in (1, 3, 5, 10):
        fraction, displacement = reference_top_k(gt, model, k)
        assert ev.top_k_fraction(gt, model, k) == pytest.approx(fraction)
        assert ev.top_k_displacement(gt, model, k) == pytest.approx(displacement)


# ------------------------------------------------------------------------ win-prob L1


def test_win_prob_l1_bt_by_hand():
    # two equal models against one with theta_0 - theta_x = log 3: P(0 beats x) 1/2 -> 3/4
    # for two of the three pairs, (1, 2) unchanged: (1/4 + 1/4 + 0) / 3
    assert ev.win_prob_l1([0, 0, 0], [math.log(3), 0, 0]) == pytest.approx(1 / 6)
    assert ev.win_prob_l1([1.0, 2.0], [1.0, 2.0]) == 0.0


def reference_bt_l1(gt: np.ndarray, model: np.ndarray) -> float:
    """lmarena/p2l's bt formula: mean over the whole M x M matrix (diagonal included)."""
    p_gt = sigmoid(gt[:, None] - gt[None, :])
    p_model = sigmoid(model[:, None] - model[None, :])
    return float(np.abs(p_gt - p_model).mean())


def reference_rk_probs(theta: np.ndarray, eta: float) -> list[np.ndarray]:
    """lmarena/p2l's Rao-Kupper pair probabilities over i < j: width
    max(softplus_{beta=0.1}(eta - 22.5), 0.02)."""
    width = max(math.log1p(math.exp(0.1 * (eta - 22.5))) / 0.1, 0.02)
    i, j = np.triu_indices(len(theta), 1)
    d = theta[i] - theta[j]
    win, loss = sigmoid(d - width), sigmoid(-d - width)
    return [win, loss, 1 - win - loss]


def reference_grk_probs(theta: np.ndarray, eta: float) -> list[np.ndarray]:
    """lmarena/p2l's 'bag' pair probabilities over i < j: t = e^eta + 1.000001."""
    t = math.exp(eta) + 1.000001
    i, j = np.triu_indices(len(theta), 1)
    a, b = np.exp(theta[i]), np.exp(theta[j])
    win = a / (a + t * b + 1)
    loss = b / (b + t * a + 1)
    both_bad = 1 / (1 + a + b)
    return [win, loss, 1 - win - loss - both_bad, both_bad]


@pytest.mark.parametrize("seed", range(3))
def test_win_prob_l1_matches_the_reference_formulas(seed):
    rng = np.random.default_rng(seed)
    m = 6
    gt, model = rng.normal(size=m), rng.normal(size=m)
    # bt: the reference averages over all M^2 entries, diagonal (always 0) included; ours
    # over the M (M - 1) off-diagonal ones, so the reference's is ours times (M - 1) / M
    assert ev.win_prob_l1(gt, model, "bt") * (m - 1) / m == pytest.approx(
        reference_bt_l1(gt, model), abs=1e-12
    )
    for family, probs, eta_gt, eta_model in (
        ("rk", reference_rk_probs, 25.0, 35.0),
        ("grk", reference_grk_probs, -0.5, 0.7),
    ):
        expected = np.mean(
            [
                np.abs(p - q).mean()
                for p, q in zip(probs(gt, eta_gt), probs(model, eta_model), strict=True)
            ]
        )
        got = ev.win_prob_l1(gt, model, family, eta_gt, eta_model)
        assert got == pytest.approx(expected, abs=1e-9)
    # without an eta, rk falls back to the bt formula (as the reference does)
    assert ev.win_prob_l1(gt, model, "rk", None, 1.0) == ev.win_prob_l1(gt, model, "bt")


# --------------------------------------------------------------------------- spread


def test_coefficient_spread_by_hand_and_against_scipy():
    # 1 2 3 4: quartiles at positions 0.75 and 2.25 -> 1.75 and 3.25; var = 5/3 (M - 1)
    assert ev.coef_iqr([1, 2, 3, 4]) == pytest.approx(1.5)
    assert ev.coef_std([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3))
    assert ev.coef_spread([1, 2, 3, 4]) == 3.0
    assert math.isnan(ev.coef_std([2.0]))
    values = np.random.default_rng(0).normal(size=11)
    assert ev.coef_iqr(values) == pytest.approx(stats.iqr(values), abs=1e-12)
    assert ev.coef_std(values) == pytest.approx(stats.tstd(values), abs=1e-12)
    assert ev.coef_spread_stats(values)["spread"] == pytest.approx(np.ptp(values))


# ---------------------------------------------------------------------- tie accuracy


def test_tie_accuracy_by_hand():
    # rk with eta = 22.5: tie width log(2) / 0.1 ~ 6.93. Equal models: P(tie) ~ 0.998, a tie
    # is predicted; a gap of 10: P(win) ~ sigmoid(3.07) ~ 0.956, a decisive vote is predicted.
    coefs = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    labels = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 2]])  # a tie, a win, a both-bad tie
    # right, wrong (tie predicted, decisive seen), wrong (decisive predicted, tie seen)
    assert ev.tie_accuracy(coefs, labels, 22.5, "rk") == pytest.approx(1 / 3)
    labels[2, 2] = 0
    assert ev.tie_accuracy(coefs, labels, 22.5, "rk") == pytest.approx(2 / 3)
    assert ev.tie_accuracy(coefs, labels, 22.5, "rk", weights=[1, 2, 1]) == pytest.approx(2 / 4)
    assert ev.tie_accuracy(coefs, labels, None, "bt") is None  # bt has no tie probability
    assert ev.tie_accuracy(coefs, labels, None, "rk") is None


@pytest.mark.parametrize("family", ["rk", "grk"])
def test_tie_accuracy_matches_the_reference_formulas(family):
    """The reference predicts a tie when P(tie) (plus P(both bad) for 'bag') is at least
    P(win) + P(loss), and scores it against 'the vote was a tie'."""
    rng = np.random.default_rng(1)
    n, m = 400, 5
    coefs = rng.normal(scale=1.5, size=(n, m))
    eta = rng.normal(loc=28.0 if family == "rk" else 0.0, scale=5.0 if family == "rk" else 1.0,
                     size=n)
    pairs = np.stack([rng.choice(m, 2, replace=False) for _ in range(n)])
    labels = np.column_stack([pairs, rng.integers(0, 3, n)])
    probs_of = reference_rk_probs if family == "rk" else reference_grk_probs
    correct = []
    for row in range(n):
        theta = coefs[row, labels[row, :2]]  # the pair (i < j after this pick)
        p = [float(x[0]) for x in probs_of(theta, float(eta[row]))]
        tie = p[2] + (p[3] if family == "grk" else 0.0)
        correct.append((tie >= p[0] + p[1]) == (labels[row, 2] > 0))
    assert ev.tie_accuracy(coefs, labels, eta, family) == pytest.approx(np.mean(correct))


# ----------------------------------------------------------- in the evaluation result


def bt_fit(winners: list[int], losers: list[int], m: int) -> np.ndarray:
    """The bt maximum-likelihood leaderboard, centred, by direct minimisation."""
    w, lo = np.array(winners), np.array(losers)

    def nll(theta):
        return np.logaddexp(0.0, -(theta[w] - theta[lo])).sum() + 1e3 * theta.sum() ** 2

    return minimize(nll, np.zeros(m), method="BFGS", options={"gtol": 1e-10}).x


def bt_aggregate(prompts: np.ndarray) -> np.ndarray:
    """The leaderboard whose win probabilities best match (cross-entropy) the prompts' mean."""
    target = sigmoid(prompts[:, :, None] - prompts[:, None, :]).mean(axis=0)
    off = ~np.eye(prompts.shape[1], dtype=bool)

    def loss(theta):
        d = theta[:, None] - theta[None, :]
        return (target * np.logaddexp(0.0, -d))[off].sum() + 1e3 * theta.sum() ** 2

    return minimize(loss, np.zeros(prompts.shape[1]), method="BFGS", options={"gtol": 1e-10}).x


def three_model_case():
    """x beats y, y beats z and x beats z, each 2 to 1: the val marginal ranks x > y > z.
    P2L puts y first on both prompts: y > x > z."""
    rows = []
    for a, b in (("x", "y"), ("y", "z"), ("x", "z")):
        rows += [("p", a, b, "model_a"), ("q", a, b, "model_a"), ("q", a, b, "model_b")]
    val = battles(rows)
    prompts = {"p": [1.0, 1.5, -2.5], "q": [0.2, 0.6, -0.8]}
    return val, prompts, predictions(prompts, ["x", "y", "z"])


def test_leaderboards_in_the_result_against_independent_fits():
    val, prompts, preds = three_model_case()
    result = ev.evaluate_predictions(preds, val, "val", settings=ev.Settings(bootstrap=0))
    block = result["leaderboards"]
    index = {"x": 0, "y": 1, "z": 2}
    rows = val.to_dicts()
    winners = [index[r["model_a"] if r["winner"] == "model_a" else r["model_b"]] for r in rows]
    losers = [index[r["model_b"] if r["winner"] == "model_a" else r["model_a"]] for r in rows]
    reference = bt_fit(winners, losers, 3)
    aggregate = bt_aggregate(np.array(list(prompts.values())))
    assert np.argsort(-reference).tolist() == [0, 1, 2]
    assert np.argsort(-aggregate).tolist() == [1, 0, 2]
    p2l = block["agreement"]["p2l"]
    # ranks 1 2 3 against 2 1 3: d^2 = 2, rho = 1 - 6 * 2 / (3 * 8) = 0.5
    assert p2l["spearman"] == pytest.approx(0.5)
    assert p2l["spearman"] == pytest.approx(stats.spearmanr(reference, aggregate).statistic)
    assert p2l["top_k_fraction"] == {"1": 0.0, "3": 1.0}
    assert p2l["top_k_displacement"] == {"1": 1.0, "3": pytest.approx(2 / 3)}
    assert p2l["win_prob_l1"] * 2 / 3 == pytest.approx(
        reference_bt_l1(reference, aggregate), abs=1e-5
    )
    spread = block["spread"]
    assert spread["reference"]["iqr"] == pytest.approx(stats.iqr(reference), abs=1e-5)
    assert spread["p2l"]["std"] == pytest.approx(np.std(aggregate, ddof=1), abs=1e-5)
    assert "marginal" not in block["agreement"]  # no training votes given
    assert "tie_accuracy" not in result["p2l"]  # bt predicts no ties


def test_tie_accuracy_in_the_result_for_rk_predictions():
    val = battles([("p", "x", "y", "tie"), ("p", "x", "y", "model_a"), ("q", "x", "y", "tie")])
    frame = pl.DataFrame(
        {"prompt": [["p"], ["q"]], "coefs": [[0.0, 0.0], [10.0, 0.0]], "eta": [22.5, 22.5]},
        schema={"prompt": pl.List(pl.String), "coefs": pl.List(pl.Float32), "eta": pl.Float32},
    )
    preds = predictions_from_frame(frame, {"models": ["x", "y"], "head": "rk", "loss": "rk"}, "p")
    result = ev.evaluate_predictions(preds, val, "val", settings=ev.Settings(bootstrap=0))
    # p: tie predicted (right for the tie, wrong for the win); q: decisive predicted, a tie seen
    assert result["p2l"]["tie_accuracy"] == pytest.approx(1 / 3)


def test_tie_accuracy_of_the_leaderboards_for_rk():
    """x and y each win once and tie four times: the rk marginal of these votes has equal
    coefficients and P(tie) = 4/6, so it predicts a tie everywhere (4 of 6 right). P2L's one
    prompt (10 and 0, tie width ~6.9) predicts decisive votes, as does its aggregate (2 of 6)."""
    val = battles([("p", "x", "y", "model_a"), ("p", "x", "y", "model_b")]
                  + [("p", "x", "y", "tie")] * 4)
    frame = pl.DataFrame(
        {"prompt": [["p"]], "coefs": [[10.0, 0.0]], "eta": [22.5]},
        schema={"prompt": pl.List(pl.String), "coefs": pl.List(pl.Float32), "eta": pl.Float32},
    )
    preds = predictions_from_frame(frame, {"models": ["x", "y"], "head": "rk", "loss": "rk"}, "p")
    result = ev.evaluate_predictions(preds, val, "val", settings=ev.Settings(bootstrap=0))
    ties = result["leaderboards"]["tie_accuracy"]
    assert ties["reference"] == pytest.approx(4 / 6)
    assert ties["p2l"] == pytest.approx(2 / 6)
    assert result["p2l"]["tie_accuracy"] == pytest.approx(2 / 6)


# ------------------------------------------------------------------ subset-size curve


def test_subset_curve_hand_case():
    """Two bt prompts: A = 3 2 1 0 and B = 3 2 -0.5 0 (B swaps the last two). Their aggregate
    keeps A's order (model 2 beats 3 with mean probability (s(1) + s(-0.5)) / 2 > 1/2). A
    subset of one prompt aggregates to that prompt: Spearman 1 (A) or 0.8 (B, d^2 = 2), top-3
    fraction 1 or 2/3, top-3 displacement 0 or 1/3; with 400 draws the means are close to the
    midpoints. A subset of both is the full set: 1, 1, 0."""
    coefs = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, -0.5, 0.0]])
    curve = ev.subset_curve(coefs, None, "bt", (1, 2, 5), repeats=400, seed=7)
    one, two = curve["rows"]
    assert curve["skipped_sizes"] == [5] and curve["prompts"] == 2
    # binomial standard error of the share of A-draws: sqrt(1/4 / 400) = 0.025
    assert one["spearman"] == pytest.approx(0.9, abs=0.2 * 0.075)
    assert one["top_k_fraction"]["3"] == pytest.approx(5 / 6, abs=(1 / 3) * 0.075)
    assert one["top_k_displacement"]["3"] == pytest.approx(1 / 6, abs=(1 / 3) * 0.075)
    assert one["top_k_fraction"]["1"] == 1.0
    assert 0.9 - 0.2 * 0.075 < one["spearman"] < 1.0
    assert two["spearman"] == pytest.approx(1.0)
    assert two["top_k_fraction"] == {"1": 1.0, "3": 1.0}
    assert two["top_k_displacement"] == {"1": 0.0, "3": 0.0}
    assert two["win_prob_l1"] == pytest.approx(0.0, abs=1e-6)


def test_subset_curve_improves_with_more_prompts():
    rng = np.random.default_rng(0)
    base = np.linspace(1.0, -1.0, 8)
    coefs = base + rng.normal(scale=2.0, size=(200, 8))
    curve = ev.subset_curve(coefs, None, "bt", (3, 150), repeats=15, seed=1)
    small, large = curve["rows"]
    assert large["spearman"] > small["spearman"] + 0.1
    assert large["win_prob_l1"] < small["win_prob_l1"]


# ------------------------------------------------------------------------ command line


def test_cli_reports_the_metrics_and_the_subset_curve(tmp_path):
    write_hand_case(tmp_path)
    out = tmp_path / "eval.json"
    result = run_cli(
        "evaluate", tmp_path / "preds.parquet", tmp_path / "val.parquet", "--bootstrap", "0",
        "--subset-curve", "1,2,50", "--subset-repeats", "3", "--json", out,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    block = report["leaderboards"]
    # two models, x won 3 of 4 val votes and 3 of 4 training votes: the training marginal
    # agrees; P2L's two prompts (+1 and -1 for x) aggregate to a tie, P(x beats y) = 1/2
    # against the val marginal's 3/4
    assert block["agreement"]["marginal"]["spearman"] == pytest.approx(1.0)
    assert block["agreement"]["marginal"]["top_k_fraction"] == {"1": 1.0}
    assert block["agreement"]["marginal"]["win_prob_l1"] == pytest.approx(0.0, abs=1e-4)
    assert block["agreement"]["p2l"]["win_prob_l1"] == pytest.approx(0.25, abs=1e-4)
    # the val marginal: x won 3 of 4, theta_x - theta_y = log 3
    assert block["spread"]["reference"]["spread"] == pytest.approx(math.log(3), abs=1e-4)
    curve = report["subset_curve"]
    assert [row["size"] for row in curve["rows"]] == [1, 2] and curve["skipped_sizes"] == [50]
    assert report["settings"]["subset_sizes"] == [1, 2, 50]
    assert "Leaderboards against" in result.stderr and "Spearman" in result.stderr
    assert "Aggregating random subsets" in result.stderr


def test_cli_bad_subset_sizes_are_one_line(tmp_path):
    write_hand_case(tmp_path)
    result = run_cli(
        "evaluate", tmp_path / "preds.parquet", tmp_path / "val.parquet", "--subset-curve", "10,x"
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --subset-curve: 'x'")
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------- checkpoints


def fake_run(folder, last_tensors: dict, state: dict | None = None):
    """A `p2l train` output folder's layout: the model folder (config, best weights) and
    checkpoints/last with its state and weights."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model_list.json").write_text('["x", "y"]')
    base = {"backbone.w": torch.zeros(2), "head.head.weight": torch.ones(2, 2)}
    save_file(base, str(folder / "model.safetensors"))
    last = folder / "checkpoints" / "last"
    last.mkdir(parents=True)
    (last / "trainer_state.json").write_text(json.dumps(state or {"step": 7, "best_step": 3,
                                                                  "last_save_step": 7}))
    save_file(last_tensors, str(last / "model.safetensors"))
    return folder


def test_checkpoints_of_a_run(tmp_path):
    import torch
    from safetensors.torch import load_file

    run = fake_run(tmp_path / "run", {"backbone.w": torch.full((2,), 5.0),
                                      "head.head.weight": torch.full((2, 2), 2.0)})
    found = ev.list_checkpoints(run)
    assert [(c.name, c.step) for c in found] == [("best", 3), ("last", 7)]
    assert ev.model_folder_of(found[0], tmp_path / "w0") == run
    folder = ev.model_folder_of(found[1], tmp_path / "w1")
    tensors = load_file(str(folder / "model.safetensors"))
    assert tensors["backbone.w"].tolist() == [5.0, 5.0]  # the last weights, not the best
    assert tensors["head.head.weight"].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert (folder / "model_list.json").read_text() == '["x", "y"]'
    assert not (folder / "checkpoints").exists()


def test_checkpoints_with_a_frozen_backbone_replace_the_head_only(tmp_path):
    import torch
    from safetensors.torch import load_file

    run = fake_run(tmp_path / "run", {"head.weight": torch.full((2, 2), 3.0)})
    folder = ev.model_folder_of(ev.list_checkpoints(run)[1], tmp_path / "w")
    tensors = load_file(str(folder / "model.safetensors"))
    assert tensors["head.head.weight"].tolist() == [[3.0, 3.0], [3.0, 3.0]]
    assert tensors["backbone.w"].tolist() == [0.0, 0.0]  # kept from the model folder


def test_checkpoints_errors(tmp_path):
    import torch

    run = fake_run(tmp_path / "run", {"other.weight": torch.ones(1)})
    with pytest.raises(UserError, match="does not have"):
        ev.model_folder_of(ev.list_checkpoints(run)[1], tmp_path / "w")
    write_hand_case(tmp_path)
    result = run_cli(
        "evaluate", tmp_path / "preds.parquet", tmp_path / "val.parquet", "--checkpoints"
    )
    assert result.exit_code == 2
    assert "--checkpoints" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_every_checkpoint_of_a_tiny_training_run(tmp_path):
    """train a tiny random BERT, then `evaluate --checkpoints`: the best and the last
    weights score the validation votes exactly as the training loop recorded (its own,
    independent computation of the same NLL)."""
    from tests.tiny import make_backbone

    backbone = make_backbone("bert", tmp_path / "backbone")
    arena, data, model = tmp_path / "arena", tmp_path / "data", tmp_path / "model"
    for argv in (
        ["simulate", arena, "--battles", "400", "--models", "4", "--prompts", "0", "--seed", "2"],
        ["prepare", arena / "battles.parquet", "-o", data, "--val-fraction", "0.25"],
        ["train", data, "-o", model, "--backbone", backbone, "--epochs", "1", "--batch-size",
         "32", "--max-length", "64", "--cache-dir", tmp_path / "cache"],
    ):
        result = run_cli(*argv)
        assert result.exit_code == 0, f"{argv[0]}: {result.output}"
    out = tmp_path / "checkpoints.json"
    result = run_cli("evaluate", model, data / "val.parquet", "--checkpoints", "--bootstrap",
                     "0", "--json", out)
    assert result.exit_code == 0, result.output
    report = {row["name"]: row for row in json.loads(out.read_text())["checkpoints"]}
    state = json.loads((model / "checkpoints" / "last" / "trainer_state.json").read_text())
    evals = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    last_eval = [e for e in evals if e.get("type") == "eval"][-1]
    assert report["best"]["step"] == state["best_step"]
    assert report["last"]["step"] == state["last_save_step"] == last_eval["step"]
    assert report["best"]["result"]["p2l"]["nll"] == pytest.approx(state["best_nll"], abs=1e-6)
    assert report["last"]["result"]["p2l"]["nll"] == pytest.approx(
        last_eval["val"]["p2l"]["nll"], abs=1e-6
    )
    assert "Checkpoints of" in result.stderr


def test_evaluate_scores_tie_prediction_for_rk():
    """``score`` reports the tie-only NLL: -log P(tie) on ties, -log(1 - P(tie)) otherwise,
    with the Rao-Kupper tie width log(1 + e^(0.1 (eta - 22.5))) / 0.1 written out here."""
    from p2l_cli.evaluate.scoring import score

    rng = np.random.default_rng(5)
    n = 40
    coefs = rng.normal(size=(n, 3))
    eta = rng.normal(20.0, 5.0, n)
    labels = np.column_stack([np.zeros(n, int), np.ones(n, int), rng.integers(0, 2, n)])
    d = coefs[:, 0] - coefs[:, 1]
    width = np.maximum(np.log1p(np.exp(0.1 * (eta - 22.5))) / 0.1, 0.02)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    p_tie = 1 - sigmoid(d - width) - sigmoid(-d - width)
    want = np.mean(np.where(labels[:, 2] == 1, -np.log(p_tie), -np.log(1 - p_tie)))
    got = score(coefs, labels, eta, "rk", np.ones(n))
    assert got["tie_nll"] == pytest.approx(want, rel=1e-9)
    assert "tie_nll" not in score(coefs, labels, None, "bt-tie", np.ones(n))
