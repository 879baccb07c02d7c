"""`p2l extend`: new models' head rows fitted with the known models held fixed, checked
against a second optimiser on an objective written here, and end to end on a tiny model
(the known models' coefficients unchanged, the new row equal to a direct fit on the frozen
backbone's features)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from conftest import run_p2l
from scipy.optimize import minimize
from tiny import make_backbone
from train_helpers import CODE, MODELS, OTHER, WRITING, planted_battles
from transformers import AutoModel

from p2l_cli.model import load_p2l, save_p2l
from p2l_cli.stats.headfit import fit_new_rows
from p2l_cli.train import RunOptions, train_p2l


@pytest.fixture(autouse=True)
def _feature_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("P2L_CACHE_DIR", str(tmp_path / "cache"))


def _bt_tie_nll(theta_w, theta_l, tie):
    """Written here: -log sigmoid(d) for a decisive vote, the mean of both sides for a tie."""
    d = theta_w - theta_l
    log_win, log_loss = -np.logaddexp(0, -d), -np.logaddexp(0, d)
    return np.where(tie == 1, -0.5 * (log_win + log_loss), -log_win)


def _direct_fit(x, labels, fixed, new, penalty, prior_mean):
    """The new rows minimising mean NLL + penalty |W|^2 (standardised x) + a N(prior_mean, 1)
    prior on b per vote, by scipy's BFGS; returns the coefficients of every vote."""
    mean, sd = x.mean(0), x.std(0, ddof=1)
    z = (x - mean) / sd
    n, d = z.shape
    k = len(new)

    def coefs(params):
        w, b = params[: d * k].reshape(d, k), params[d * k :]
        theta = fixed.copy()
        theta[:, new] = z @ w + b
        return theta

    def objective(params):
        theta = coefs(params)
        rows = np.arange(n)
        nll = _bt_tie_nll(theta[rows, labels[:, 0]], theta[rows, labels[:, 1]], labels[:, 2])
        w, b = params[: d * k], params[d * k :]
        return nll.mean() + (penalty or 0.0) * np.sum(w**2) + 0.5 * np.sum((b - prior_mean) ** 2) / n

    start = np.concatenate([np.zeros(d * k), np.full(k, prior_mean)])
    if penalty is None:  # W = 0: only the ratings
        result = minimize(lambda b: objective(np.concatenate([np.zeros(d * k), b])),
                          start[d * k :], method="BFGS", options={"gtol": 1e-10})  # fmt: skip
        return coefs(np.concatenate([np.zeros(d * k), result.x]))
    result = minimize(objective, start, method="BFGS", options={"gtol": 1e-10})
    return coefs(result.x)


def _arena(rng, n, m_known, structured: bool):
    """Votes between 3 known models (coefficients fixed per prompt) and 1 new one whose
    strength depends on the prompt's first feature when ``structured``."""
    x = rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, 3.0]
    fixed = np.zeros((n, m_known + 1))
    fixed[:, :m_known] = rng.normal(scale=0.5, size=m_known) + 0.3 * x[:, :1]
    new_truth = 0.4 + (1.2 * x[:, 0] if structured else 0.0)
    theta = fixed.copy()
    theta[:, m_known] = new_truth
    a = np.full(n, m_known)
    b = rng.integers(0, m_known, n)
    p = 1 / (1 + np.exp(-(theta[np.arange(n), a] - theta[np.arange(n), b])))
    won = rng.random(n) < p
    tie = rng.random(n) < 0.15
    labels = np.where(won[:, None], np.stack([a, b], 1), np.stack([b, a], 1))
    labels[tie] = np.stack([a, b], 1)[tie]
    return x, np.column_stack([labels, tie.astype(int)]), fixed


@pytest.mark.parametrize("structured", [True, False])
def test_new_rows_match_a_second_optimiser(structured):
    rng = np.random.default_rng(3)
    x, labels, fixed = _arena(rng, 1500 if structured else 300, 3, structured)
    head, report = fit_new_rows(x, labels, "bt-tie", fixed, np.array([3]), prior_mean=0.1)
    # with structure the prompt-specific weights win clearly; without, one rating is kept
    assert report.fell_back is (not structured)
    got = fixed.copy()
    got[:, 3] = x @ head.weight[0] + head.bias[0]
    want = _direct_fit(x, labels, fixed, np.array([3]), report.penalty, 0.1)
    np.testing.assert_allclose(got, want, atol=2e-4)
    if not structured:
        assert np.ptp(got[:, 3]) < 1e-9  # one coefficient for every prompt
    else:  # the planted slope is found (shrunk a little by the penalty)
        slope = np.polyfit(x[:, 0], got[:, 3], 1)[0]
        assert 0.9 < slope < 1.3


def test_a_model_that_won_every_vote_gets_a_finite_rating():
    rng = np.random.default_rng(0)
    n = 12
    x = rng.normal(size=(n, 2))
    fixed = np.zeros((n, 3))
    labels = np.column_stack([np.full(n, 2), rng.integers(0, 2, n), np.zeros(n, int)])
    head, report = fit_new_rows(x, labels, "bt-tie", fixed, np.array([2]), prior_mean=0.0,
                                folds=3)  # fmt: skip
    assert report.fell_back
    want = _direct_fit(x, labels, fixed, np.array([2]), None, 0.0)[0, 2]
    assert 1.0 < head.bias[0] < 6.0
    assert head.bias[0] == pytest.approx(want, abs=1e-4)


# ------------------------------------------------------------------------- end to end

KNOWN = ["coder", "generalist"]


def _without_writer(frame: pl.DataFrame) -> pl.DataFrame:
    kept = frame.filter((pl.col("model_a") != "writer") & (pl.col("model_b") != "writer"))
    index = {name: i for i, name in enumerate(KNOWN)}
    labels = [[index[MODELS[w]], index[MODELS[lo]], t] for w, lo, t in kept["labels"].to_list()]
    return kept.with_columns(pl.Series("labels", labels))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    bert = make_backbone("bert", root / "bert")
    data = root / "data"
    data.mkdir()
    _without_writer(planted_battles(300, 0)).write_parquet(data / "train.parquet")
    _without_writer(planted_battles(100, 1000)).write_parquet(data / "val.parquet")
    (data / "models.json").write_text(json.dumps(KNOWN))
    settings = {"backbone": str(bert), "freeze_backbone": True, "head_solver": "ridge-cv",
                "pooling": "mean", "loss": "bt-tie", "max_length": 64}  # fmt: skip
    train_p2l(data, root / "model", None, settings, RunOptions())
    new_votes = planted_battles(600, 7)
    new_votes.write_parquet(root / "new.parquet")
    return root


@pytest.mark.slow
def test_extend_end_to_end(trained, tmp_path):
    model_dir, votes = trained / "model", trained / "new.parquet"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    out = tmp_path / "plus"
    proc = run_p2l("extend", model_dir, votes, "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "adding writer" in proc.stderr.decode()
    assert json.loads((out / "model_list.json").read_text()) == MODELS
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before

    old, tokenizer = load_p2l(model_dir)
    new, _ = load_p2l(out)
    texts = ["write a python function that sorts a list of numbers", "hello there"]
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            a = old(ids["input_ids"], ids["attention_mask"]).coefs[0]
            b = new(ids["input_ids"], ids["attention_mask"]).coefs[0]
            # the known models keep their coefficients exactly
            torch.testing.assert_close(b[[0, 1]], a, rtol=0, atol=0)

    # the new row equals a direct fit on the frozen backbone's mean-pooled states
    frame = pl.read_parquet(votes)
    frame = frame.filter((pl.col("model_a") == "writer") | (pl.col("model_b") == "writer"))
    backbone = AutoModel.from_pretrained(trained / "bert").eval()
    states, fixed = [], []
    with torch.no_grad():
        for turns in frame["prompt"].to_list():
            ids = tokenizer("\n\n".join(turns), return_tensors="pt")
            states.append(backbone(**ids).last_hidden_state[0].mean(0).double().numpy())
            fixed.append(old(ids["input_ids"], ids["attention_mask"]).coefs[0].double().numpy())
    x = np.array(states)
    labels = np.array([[MODELS.index(w), MODELS.index(lo), t] for w, lo, t in
                       _labels_by_name(frame)])  # fmt: skip
    fixed3 = np.zeros((len(x), 3))
    fixed3[:, [0, 1]] = np.array(fixed)
    record = json.loads((out / "training_config.json").read_text())["extensions"][-1]
    penalty = record["head_fit"]["penalty"]
    want = _direct_fit(x, labels, fixed3, np.array([2]), penalty, float(np.mean(fixed)))
    with torch.no_grad():
        got = []
        for turns in frame["prompt"].to_list()[:20]:
            ids = tokenizer("\n\n".join(turns), return_tensors="pt")
            got.append(new(ids["input_ids"], ids["attention_mask"]).coefs[0, 2].item())
    np.testing.assert_allclose(got, want[:20, 2], atol=2e-3)
    # writer is planted to win writing prompts and to be ordinary elsewhere
    assert record["votes_per_new_model"] == {"writer": frame.height}

    # the extended folder predicts like any model folder
    predicted = run_p2l("predict", out, "--prompt", "compose a short poem about the sea")
    assert predicted.returncode == 0, predicted.stderr.decode()[-2000:]
    assert b"writer" in predicted.stdout + predicted.stderr


@pytest.mark.slow
def test_extend_fits_a_smoothed_model_on_its_smoothed_embedding(trained, tmp_path):
    """A base model whose head reads a graph-smoothed embedding: the new row is fitted on
    that smoothed embedding (computed here from the stored anchors and values), the known
    models keep their coefficients and the extended folder keeps the smoothing."""
    base, tokenizer = load_p2l(trained / "model")
    # 40 variants of each prompt: enough distinct prompts for the prompt-split folds
    frame = planted_battles(600, 7).with_row_index("row").with_columns(
        pl.concat_list(pl.col("prompt").list.first() + " #" + (pl.col("row") % 40).cast(pl.String))
        .alias("prompt")
    ).drop("row")  # fmt: skip
    frame.write_parquet(tmp_path / "new.parquet")
    backbone = AutoModel.from_pretrained(trained / "bert").eval()

    def states(prompts):
        with torch.no_grad():
            return np.array([
                backbone(**tokenizer("\n\n".join(turns), return_tensors="pt"))
                .last_hidden_state[0].mean(0).double().numpy()
                for turns in prompts
            ])  # fmt: skip

    pool = [[f"{text} #{i}"] for text in CODE + WRITING + OTHER for i in range(40)]
    anchors = states(pool)
    module = base.attach_smoothing(1, 1, anchors=len(anchors))
    module.fill(torch.as_tensor(anchors, dtype=torch.float32))
    # each prompt is its own nearest anchor (k = 1); its value marks the prompt's kind, so
    # the new row has a signal that does not depend on the random backbone, and a fit on
    # the raw embedding cannot pass for the fit on the smoothed one
    rng = np.random.default_rng(4)
    values = rng.normal(scale=0.1, size=tuple(module.values.shape))
    values[: 40 * len(CODE), 0] += 1.0
    values[40 * len(CODE) : 40 * (len(CODE) + len(WRITING)), 1] += 1.0
    module.values.copy_(torch.as_tensor(values))
    with torch.no_grad():  # the known models: their marginal ratings on every prompt
        base.head.output_layer.weight.zero_()
    save_p2l(base, tokenizer, tmp_path / "smoothed")
    out = tmp_path / "plus"
    proc = run_p2l("extend", tmp_path / "smoothed", tmp_path / "new.parquet", "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    new, _ = load_p2l(out)
    assert new.info.smoothing == base.info.smoothing
    assert torch.equal(new.smoothing.values, module.values)

    stored = module.anchors.double().numpy()
    values = module.values.double().numpy()

    def smoothed(x):  # the value of the nearest anchor by cosine
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return values[np.argmax(unit @ stored.T, axis=1)]

    frame = frame.filter((pl.col("model_a") == "writer") | (pl.col("model_b") == "writer"))
    prompts = frame["prompt"].to_list()
    with torch.no_grad():
        fixed, got = [], []
        for turns in prompts:
            ids = tokenizer("\n\n".join(turns), return_tensors="pt")
            fixed.append(base(ids["input_ids"], ids["attention_mask"]).coefs[0].double().numpy())
            got.append(new(ids["input_ids"], ids["attention_mask"]).coefs[0].double().numpy())
    fixed, got = np.array(fixed), np.array(got)
    np.testing.assert_allclose(got[:, [0, 1]], fixed, rtol=0, atol=0)
    labels = np.array([[MODELS.index(w), MODELS.index(lo), t] for w, lo, t in
                       _labels_by_name(frame)])  # fmt: skip
    fixed3 = np.zeros((len(prompts), 3))
    fixed3[:, [0, 1]] = fixed
    penalty = json.loads((out / "training_config.json").read_text())["extensions"][-1][
        "head_fit"]["penalty"]  # fmt: skip
    assert penalty is not None, proc.stderr.decode()  # the new row reads the prompt
    want = _direct_fit(smoothed(states(prompts)), labels, fixed3, np.array([2]), penalty,
                       float(np.mean(fixed)))  # fmt: skip
    np.testing.assert_allclose(got[:20, 2], want[:20, 2], atol=2e-3)
    writing = np.array([turns[0].rsplit(" #", 1)[0] in WRITING for turns in prompts])
    assert got[writing, 2].mean() > got[~writing, 2].mean() + 0.5  # planted: writer writes


def _labels_by_name(frame: pl.DataFrame):
    for a, b, winner in frame.select("model_a", "model_b", "winner").iter_rows():
        if winner == "model_b":
            yield b, a, 0
        else:
            yield a, b, 0 if winner == "model_a" else 1


@pytest.mark.slow
def test_extend_refuses_what_it_cannot_do(trained, tmp_path):
    model_dir = trained / "model"
    known_only = tmp_path / "known.parquet"
    _without_writer(planted_battles(50, 3)).write_parquet(known_only)
    cases = [
        (("extend", model_dir, known_only, "-o", tmp_path / "a"), "already in"),
        (("extend", model_dir, trained / "new.parquet", "-o", model_dir), "is the model folder"),
        (("extend", model_dir, tmp_path / "missing.parquet", "-o", tmp_path / "b"), "missing"),
    ]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    cases.append((("extend", model_dir, trained / "new.parquet", "-o", busy), "--overwrite"))
    for argv, words in cases:
        proc = run_p2l(*argv)
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2, err
        assert words in err and len(err.splitlines()) == 1, err
    assert (busy / "keep.txt").read_text() == "mine"
