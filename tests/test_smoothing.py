"""Graph smoothing of the embedding before the ridge head: the diffusion against an explicit
k-nearest-neighbour matrix built here, new prompts against a brute-force neighbour mean, the
search that reads the prompts' words against one written here, its value on clustered
prompts that a raw linear head cannot use, the settings' rules, and a model folder that
stores and reapplies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import make_backbone

from p2l_cli.model.checkpoint import build_p2l, load_p2l, save_p2l
from p2l_cli.model.neighbours import nearest_votes
from p2l_cli.model.smoothing import (
    CANDIDATES,
    Smoothing,
    candidates_for,
    choose_anchors,
    diffuse,
    neighbourhood_size,
)
from p2l_cli.stats.headfit import fit_linear_head
from p2l_cli.train_config import resolve_config


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _knn_matrix(anchors: np.ndarray, k: int) -> np.ndarray:
    """Row-normalised: row i averages the k anchors most similar to anchor i (itself too)."""
    sims = anchors @ anchors.T
    p = np.zeros_like(sims)
    for i, row in enumerate(sims):
        p[i, np.argsort(-row, kind="stable")[:k]] = 1.0 / k
    return p


def test_diffusion_is_a_power_of_the_neighbour_graph():
    rng = np.random.default_rng(0)
    anchors = _unit(rng.normal(size=(120, 6))).astype(np.float32)
    p = _knn_matrix(anchors.astype(np.float64), 7)
    for steps in (1, 2, 5):
        expected = np.linalg.matrix_power(p, steps - 1) @ anchors
        graph = nearest_votes(torch.as_tensor(anchors), torch.as_tensor(anchors), 7)
        got = diffuse(torch.as_tensor(anchors), graph, steps).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_training_prompt_gets_its_full_walk_and_a_new_prompt_its_neighbours_mean():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(90, 5)) * 3.0
    module = Smoothing(len(raw), 5, k=6, steps=3)
    module.fill(torch.as_tensor(raw, dtype=torch.float32))
    anchors = module.anchors.double().numpy()  # what is stored (float16)
    np.testing.assert_allclose(anchors, _unit(raw), atol=1e-3)
    p = _knn_matrix(anchors, 6)
    values = module.values.double().numpy()
    np.testing.assert_allclose(values, np.linalg.matrix_power(p, 2) @ anchors, atol=2e-3)
    # a training prompt: its nearest anchor is itself, so it gets P^steps of the anchors
    on_anchors = module(torch.as_tensor(raw * 2.5)).double().numpy()  # scale is irrelevant
    np.testing.assert_allclose(on_anchors, p @ values, atol=1e-5)
    # a new prompt: the mean of the values of its 6 nearest anchors
    queries = rng.normal(size=(10, 5))
    near = np.argsort(-(_unit(queries) @ anchors.T), axis=1)[:, :6]
    expected = values[near].mean(axis=1)
    np.testing.assert_allclose(module(torch.as_tensor(queries)).double().numpy(), expected,
                               atol=1e-5)  # fmt: skip


def test_anchors_are_one_per_prompt_and_capped(monkeypatch):
    groups = np.array([3, 1, 3, 2, 1, 0, 2])
    rows = choose_anchors(np.zeros((7, 2)), groups, seed=0)
    assert sorted(groups[rows].tolist()) == [0, 1, 2, 3]
    monkeypatch.setattr("p2l_cli.model.smoothing.MAX_ANCHORS", 2)
    capped = choose_anchors(np.zeros((7, 2)), groups, seed=0)
    assert len(capped) == 2 and len(set(groups[capped].tolist())) == 2
    assert neighbourhood_size(60, 5000) == 60 and neighbourhood_size(60, 80) == 10
    assert neighbourhood_size(60, 3) == 1
    # the candidates training compares: capped alike, those that then coincide once
    assert candidates_for(5000) == [(60, 32), (60, 4), (20, 4)]
    assert candidates_for(200) == [(25, 32), (25, 4), (20, 4)]
    assert candidates_for(80) == [(10, 32), (10, 4)]


def _bt_tie_nll(theta_w, theta_l, tie):
    d = theta_w - theta_l
    log_win, log_loss = -np.logaddexp(0, -d), -np.logaddexp(0, d)
    return np.where(tie == 1, -0.5 * (log_win + log_loss), -log_win)


def _cluster_world(rng, n_prompts, centres, boards, votes_per_prompt=1):
    """Prompts near one of the centres (noise spread over every dimension), each voted on
    with its cluster's leaderboard."""
    cluster = rng.integers(0, len(centres), n_prompts)
    emb = _unit(centres[cluster] + rng.normal(scale=0.22, size=(n_prompts, centres.shape[1])))
    n = n_prompts * votes_per_prompt
    idx = np.arange(n) // votes_per_prompt
    theta = boards[cluster[idx]]
    m = boards.shape[1]
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    won = rng.random(n) < 1 / (1 + np.exp(-(theta[np.arange(n), a] - theta[np.arange(n), b])))
    labels = np.where(won[:, None], np.stack([a, b], 1), np.stack([b, a], 1))
    return emb, np.column_stack([labels, np.zeros(n, dtype=int)]), idx, theta


def test_a_shared_graph_gives_the_walk_a_fresh_search_gives():
    """Training searches the anchor graph once per k and hands it to every candidate."""
    rng = np.random.default_rng(2)
    raw = torch.as_tensor(rng.normal(size=(200, 8)), dtype=torch.float32)
    short, long = Smoothing(200, 8, k=9, steps=2), Smoothing(200, 8, k=9, steps=6)
    graph = short.fill(raw)
    assert graph.shape == (200, 9)
    long.fill(raw, graph=graph)
    fresh = Smoothing(200, 8, k=9, steps=6)
    fresh.fill(raw)
    assert torch.equal(long.values, fresh.values)
    queries = torch.as_tensor(rng.normal(size=(30, 8)), dtype=torch.float32)
    assert torch.equal(long.average(short.nearest(queries)), fresh(queries))


def test_a_search_with_words_joins_both_unit_rows_and_averages_the_embedding_only():
    """Neighbours are searched on [unit embedding, weight x unit(words - their mean over the
    anchors)] (unit length again), the values are the embeddings' walk on that graph, and
    the words move the neighbours (else this test could not tell the two searches apart)."""
    rng = np.random.default_rng(6)
    emb, words = rng.normal(size=(80, 5)), rng.normal(size=(80, 7)) + 2.0
    module = Smoothing(80, 5, k=6, steps=3, lexical=0.7, words_width=7)
    module.fill(torch.as_tensor(emb, dtype=torch.float32),
                torch.as_tensor(words, dtype=torch.float32))  # fmt: skip

    def search_rows(e, w):
        return _unit(np.hstack([_unit(e), 0.7 * _unit(w - words.mean(axis=0))]))

    np.testing.assert_allclose(module.centre.numpy(), words.mean(axis=0), atol=1e-6)
    rows = search_rows(emb, words)
    np.testing.assert_allclose(module.anchors.double().numpy(), rows, atol=1e-3)
    p = _knn_matrix(module.anchors.double().numpy(), 6)
    values = module.values.double().numpy()
    np.testing.assert_allclose(values, np.linalg.matrix_power(p, 2) @ _unit(emb), atol=2e-3)
    queries, query_words = rng.normal(size=(12, 5)), rng.normal(size=(12, 7)) + 2.0
    near = np.argsort(-(search_rows(queries, query_words) @ rows.T), axis=1)[:, :6]
    got = module(torch.as_tensor(queries), torch.as_tensor(query_words)).double().numpy()
    np.testing.assert_allclose(got, values[near].mean(axis=1), atol=1e-5)
    without_words = np.argsort(-(_unit(queries) @ _unit(emb).T), axis=1)[:, :6]
    assert any(set(a) != set(b) for a, b in zip(near, without_words))
    with pytest.raises(ValueError, match="words"):
        module(torch.as_tensor(queries))


@pytest.mark.slow
def test_smoothing_lets_a_linear_head_use_clusters_it_cannot_find_alone():
    """Six clusters of prompts in 64 dimensions, buried in noise along every direction, each
    with its own leaderboard: the head on smoothed embeddings scores better on fresh votes
    (NLL written here) than the head on the raw ones, and cross-validation says so too."""
    rng = np.random.default_rng(3)
    centres = _unit(rng.normal(size=(6, 64)))
    boards = rng.normal(scale=0.8, size=(6, 5))
    emb, labels, groups, _ = _cluster_world(rng, 1500, centres, boards, votes_per_prompt=2)
    test_emb, test_labels, test_idx, _ = _cluster_world(rng, 3000, centres, boards)
    module = Smoothing(1500, 64, k=neighbourhood_size(60, 1500), steps=8)
    module.fill(torch.as_tensor(emb, dtype=torch.float32))  # one anchor per prompt
    x_train = emb[groups]

    def held_out_nll(features, test_features):
        head, report = fit_linear_head(features, labels, "bt-tie", bias=np.zeros(5),
                                       groups=groups)  # fmt: skip
        theta = test_features @ head.weight.T + head.bias
        rows = np.arange(len(test_labels))
        nll = _bt_tie_nll(theta[rows, test_labels[:, 0]], theta[rows, test_labels[:, 1]], 0)
        return nll.mean(), report.best_cv_nll

    def smooth(embeddings):
        return module(torch.as_tensor(embeddings, dtype=torch.float32)).double().numpy()

    raw_nll, raw_cv = held_out_nll(x_train, test_emb[test_idx])
    smooth_nll, smooth_cv = held_out_nll(smooth(x_train), smooth(test_emb)[test_idx])
    assert smooth_nll < raw_nll - 0.01 and smooth_cv < raw_cv



@pytest.mark.slow
def test_a_short_walk_keeps_small_groups_a_long_walk_merges():
    """Twelve pairs of nearby clusters, the two of a pair with opposite leaderboards: a walk
    of 32 hops over 60 neighbours (the first of ``CANDIDATES``) averages each pair into one
    group and the head learns nothing, while 4 hops over 20 neighbours keep the pair apart.
    The held-out NLL (written here) and the cross-validation both rank the short walk first,
    so training, which picks the candidate with the best cross-validated NLL, takes it."""
    rng = np.random.default_rng(0)
    pairs = _unit(rng.normal(size=(12, 64)))
    centres = _unit(np.repeat(pairs, 2, 0) + 0.8 * _unit(rng.normal(size=(24, 64))))
    boards = rng.normal(scale=0.8, size=(12, 5))
    boards = np.stack([boards, -boards], 1).reshape(24, 5)
    emb, labels, groups, _ = _cluster_world(rng, 1500, centres, boards, votes_per_prompt=2)
    test_emb, test_labels, test_idx, _ = _cluster_world(rng, 3000, centres, boards)
    assert {(60, 32), (20, 4)} <= set(CANDIDATES)
    scores = {}
    for k, steps in CANDIDATES:
        module = Smoothing(1500, 64, k=neighbourhood_size(k, 1500), steps=steps)
        module.fill(torch.as_tensor(emb, dtype=torch.float32))

        def smooth(embeddings, module=module):
            return module(torch.as_tensor(embeddings, dtype=torch.float32)).double().numpy()

        head, report = fit_linear_head(smooth(emb[groups]), labels, "bt-tie", bias=np.zeros(5),
                                       groups=groups)  # fmt: skip
        theta = smooth(test_emb)[test_idx] @ head.weight.T + head.bias
        rows = np.arange(len(test_labels))
        nll = _bt_tie_nll(theta[rows, test_labels[:, 0]], theta[rows, test_labels[:, 1]], 0)
        scores[(k, steps)] = nll.mean(), report.best_cv_nll
    assert scores[(20, 4)][0] < scores[(60, 32)][0] - 0.03
    assert min(scores, key=lambda key: scores[key][1]) == (20, 4)

def test_smoothing_is_a_ridge_cv_setting():
    from p2l_cli.errors import UserError

    config, _, warnings = resolve_config(None, {"head_solver": "adamw"})
    assert config.smoothing is False
    assert any("graph-smoothed embeddings (from the recipe)" in w for w in warnings)
    assert resolve_config(None, {})[0].smoothing is True
    with pytest.raises(UserError, match="--smoothing"):
        resolve_config(None, {"head_solver": "adamw", "smoothing": True})


def test_a_model_folder_stores_and_reapplies_its_smoothing(tmp_path):
    """Anchors and values travel in model.safetensors and the head reads the smoothed
    embedding after loading, as it did before saving."""
    backbone = make_backbone("bert", tmp_path / "bert")
    model, tokenizer = build_p2l(str(backbone), ["a", "b", "c"], pooling="mean",
                                 normalize=True, prompt_features=True)  # fmt: skip
    rng = np.random.default_rng(2)
    module = model.attach_smoothing(4, 3, anchors=30)
    module.fill(torch.as_tensor(rng.normal(size=(30, model.config.hidden_size)),
                                dtype=torch.float32))  # fmt: skip
    torch.nn.init.normal_(model.head.output_layer.weight)
    ids = tokenizer(["hello there", "a longer prompt about code"], padding=True,
                    return_tensors="pt")  # fmt: skip
    model.eval()
    with torch.no_grad():
        before = model(ids["input_ids"], ids["attention_mask"], return_pooled=True)
    hidden = model.config.hidden_size
    layer = model.head.output_layer
    with torch.no_grad():
        read = torch.cat([module(before.pooled[:, :hidden]), before.pooled[:, hidden:]], 1)
        expected = read @ layer.weight.T + layer.bias
    np.testing.assert_allclose(before.coefs.numpy(), expected.numpy(), atol=1e-5)
    save_p2l(model, tokenizer, tmp_path / "model")
    loaded, _ = load_p2l(tmp_path / "model")
    assert loaded.info.smoothing == {"k": 4, "steps": 3, "anchors": 30}
    with torch.no_grad():
        after = loaded(ids["input_ids"], ids["attention_mask"])
    np.testing.assert_allclose(after.coefs.numpy(), before.coefs.numpy(), atol=1e-6)


def test_fits_side_by_side_equal_the_fits_one_after_another():
    from p2l_cli.train import fit_side_by_side

    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 4))
    labels = np.column_stack([rng.integers(0, 2, 400), np.full(400, 2), np.zeros(400, int)])
    labels[::3, :2] = labels[::3, 1::-1]

    def fit(scale):
        head, report = fit_linear_head(x * scale, labels, "bt-tie", bias=np.zeros(3),
                                       min_gain_se=-np.inf)  # fmt: skip
        return head.weight, report.best_cv_nll

    jobs = {s: (s,) for s in (0.5, 1.0, 3.0)}
    together = fit_side_by_side(fit, jobs)
    for scale in jobs:
        alone = fit(scale)
        np.testing.assert_array_equal(together[scale][0], alone[0])
        assert together[scale][1] == alone[1]


def test_a_model_folder_stores_and_reapplies_a_search_with_words(tmp_path):
    """The model reads each prompt's words as the mean input embedding of its text tokens
    (computed here from the ids, special tokens left out), searches with them, and a saved
    folder does the same after loading."""
    backbone = make_backbone("bert", tmp_path / "bert")
    model, tokenizer = build_p2l(str(backbone), ["a", "b", "c"], pooling="mean",
                                 normalize=True, prompt_features=True)  # fmt: skip
    hidden = model.config.hidden_size
    rng = np.random.default_rng(7)
    module = model.attach_smoothing(4, 3, anchors=30, lexical=0.7)
    module.fill(torch.as_tensor(rng.normal(size=(30, hidden)), dtype=torch.float32),
                torch.as_tensor(rng.normal(size=(30, hidden)), dtype=torch.float32))  # fmt: skip
    torch.nn.init.normal_(model.head.output_layer.weight)
    ids = tokenizer(["hello there", "a longer prompt about code"], padding=True,
                    return_tensors="pt")  # fmt: skip
    table = model.model.get_input_embeddings().weight.detach().double().numpy()
    special = set(tokenizer.all_special_ids)
    by_hand = np.array([
        table[[t for t in row.tolist() if t not in special]].mean(axis=0)
        for row in ids["input_ids"]
    ])  # fmt: skip
    model.eval()
    with torch.no_grad():
        words = model.words(ids["input_ids"], ids["attention_mask"])
        before = model(ids["input_ids"], ids["attention_mask"], return_pooled=True)
        read = torch.cat([module(before.pooled[:, :hidden], torch.as_tensor(by_hand)),
                          before.pooled[:, hidden:]], 1)  # fmt: skip
    np.testing.assert_allclose(words.double().numpy(), by_hand, atol=1e-5)
    layer = model.head.output_layer
    expected = (read @ layer.weight.T + layer.bias).detach().numpy()
    np.testing.assert_allclose(before.coefs.numpy(), expected, atol=1e-5)
    save_p2l(model, tokenizer, tmp_path / "model")
    loaded, _ = load_p2l(tmp_path / "model")
    assert loaded.info.smoothing == {"k": 4, "steps": 3, "anchors": 30, "lexical": 0.7}
    with torch.no_grad():
        after = loaded(ids["input_ids"], ids["attention_mask"])
    np.testing.assert_allclose(after.coefs.numpy(), before.coefs.numpy(), atol=1e-6)
    without, _ = build_p2l(str(backbone), ["a", "b", "c"], pooling="mean", normalize=True)
    with pytest.raises(ValueError, match="prompt_features"):
        without.attach_smoothing(4, 3, anchors=30, lexical=0.7)
