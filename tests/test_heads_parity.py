"""Heads of the reference implementation (lmarena/p2l): the biased low-rank head, RKHead with
eta_downsize, BAHead's gamma, and its init schemes. Checkpoints are written here with the
reference's parameter names and checked against numpy forward passes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file
from tiny import make_backbone
from train_helpers import write_data_dir
from transformers import AutoModel, AutoTokenizer

from p2l_cli.model import P2LHead, collate, encode_prompts, load_p2l, save_p2l
from p2l_cli.stats import families
from p2l_cli.train_config import read_recipe, resolve_config

PROMPTS = [["what is the derivative of sine of x"], ["tell me a story", "about a dragon"]]


# ---------------------------------------------------------------------------- init schemes


def _fan_in_out(layer):
    return layer.weight.shape[1], layer.weight.shape[0]


@pytest.mark.parametrize("scheme, bound", [
    ("he_unif", lambda fi, fo: math.sqrt(3.0 / fi)),  # kaiming uniform, sigmoid gain 1
    ("xavier_unif", lambda fi, fo: math.sqrt(6.0 / (fi + fo))),
    ("reset_params", lambda fi, fo: 1.0 / math.sqrt(fi)),  # torch's Linear default
])  # fmt: skip
def test_uniform_inits_fill_their_interval(scheme, bound):
    torch.manual_seed(0)
    head = P2LHead(384, 256, "rk", rank=128, rank_bias=True)
    head.initialise(scheme)
    for layer in (head.head[0], head.head[1], head.eta_head):
        fan_in, fan_out = _fan_in_out(layer)
        b = bound(fan_in, fan_out)
        w = layer.weight.detach().double()
        assert w.abs().max() <= b * (1 + 1e-6)
        if w.numel() > 10_000:  # a uniform on [-b, b]: reaches the ends, variance b^2 / 3
            assert w.abs().max() > 0.99 * b
            assert w.std().item() == pytest.approx(b / math.sqrt(3), rel=0.03)
            assert abs(w.mean().item()) < 0.02 * b
        assert torch.count_nonzero(layer.bias) == 0  # biases start at 0, as in the reference


def test_tiny_normal_is_kaiming_normal_with_the_default_gain():
    torch.manual_seed(0)
    head = P2LHead(512, 256)
    head.initialise("tiny_normal")
    w = head.head.weight.detach().double()
    want = math.sqrt(2.0 / 512)  # N(0, gain^2 / fan_in), gain sqrt(2) (leaky relu, slope 0)
    assert w.std().item() == pytest.approx(want, rel=0.02)
    assert abs(w.mean().item()) < 0.02 * want
    # fourth moment of a normal: E w^4 = 3 sigma^4 (a uniform would give 1.8)
    assert (w**4).mean().item() / want**4 == pytest.approx(3.0, rel=0.06)
    with pytest.raises(ValueError, match="unknown head init"):
        head.initialise("orthogonal")


def test_bias_and_eta_set_after_the_scheme():
    head = P2LHead(16, 5, "ba")
    head.initialise("he_unif", bias=torch.arange(5.0), eta=0.4)
    assert torch.equal(head.output_layer.bias, torch.arange(5.0))
    assert head.eta_head.bias.item() == pytest.approx(0.4)
    assert head.gamma_head.bias.item() == 0.0


# ----------------------------------------------------------------------------- head shapes


def test_ba_head_returns_coefficients_relative_to_gamma():
    torch.manual_seed(1)
    head = P2LHead(8, 3, "ba")
    head.initialise("normal", std=0.5)
    pooled = torch.randn(4, 8)
    raw, eta, gamma = head.parts(pooled)
    assert raw.shape == (4, 3) and eta.shape == (4,) and gamma.shape == (4,)
    w, b = head.gamma_head.weight, head.gamma_head.bias
    torch.testing.assert_close(gamma, pooled @ w[0] + b[0])
    coefs, eta2 = head(pooled)
    torch.testing.assert_close(coefs, raw - gamma[:, None])
    torch.testing.assert_close(eta2, eta)


def test_rank_bias_and_eta_downsize_layers():
    head = P2LHead(16, 6, "rk", rank=3, rank_bias=True, eta_downsize=True)
    assert head.head[0].bias is not None and head.head[0].bias.shape == (3,)
    assert head.eta_head[0] is head.head[0]  # shared, as in the reference's RKHead
    assert head.eta_head[1].weight.shape == (1, 3)
    keys = set(head.state_dict())
    assert {"head.0.weight", "head.0.bias", "eta_head.0.weight", "eta_head.1.weight"} <= keys
    with pytest.raises(ValueError, match="eta_downsize"):
        P2LHead(16, 6, "rk", eta_downsize=True)


# ---------------------------------------------------- reference checkpoints load and predict


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    backbone = make_backbone("llama", tmp_path_factory.mktemp("bb") / "llama")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.add_special_tokens({"cls_token": "<|cls|>", "pad_token": "<|pad|>"})
    network = AutoModel.from_pretrained(backbone)
    network.resize_token_embeddings(len(tokenizer))
    return network.eval(), tokenizer


def _write_reference_folder(folder, network, tokenizer, head, num_models, training_config):
    folder.mkdir()
    tensors = {f"model.{k}": v.contiguous() for k, v in network.state_dict().items()}
    tensors |= {k: torch.from_numpy(v) for k, v in head.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(network.config.to_dict() | {"architectures": ["P2LModel"]})
    )
    tokenizer.save_pretrained(str(folder))
    (folder / "model_list.json").write_text(json.dumps([f"llm-{i}" for i in range(num_models)]))
    (folder / "training_config.json").write_text(json.dumps(
        {"model_type": "llama", "chat_template": tokenizer.chat_template} | training_config
    ))


def _pooled(network, ids):
    with torch.no_grad():
        return np.stack([network(input_ids=torch.tensor([row])).last_hidden_state[0, -1].numpy()
                         for row in ids])


def _predict(folder):
    model, tokenizer = load_p2l(folder)
    ids = encode_prompts(tokenizer, PROMPTS, model.info)
    with torch.no_grad():
        out = model(*collate(ids, tokenizer.pad_token_id))
    return model, tokenizer, ids, out


@pytest.mark.parametrize("both_names", [True, False])
def test_reference_rk_head_with_eta_downsize_loads_and_predicts(llama, tmp_path, both_names):
    """RKHead(linear_head_downsize_factor=2, eta_downsize=True): eta = Linear(rank, 1)
    applied to the shared first layer's output. A checkpoint holds the shared layer under
    both names, or (deduplicated on saving) under head.head.0 only."""
    network, tokenizer = llama
    hidden, num_models, factor = network.config.hidden_size, 6, 2
    rank = num_models // factor
    rng = np.random.default_rng(3)
    f32 = np.float32
    head = {
        "head.head.0.weight": rng.normal(size=(rank, hidden)).astype(f32),
        "head.head.0.bias": rng.normal(size=rank).astype(f32),
        "head.head.1.weight": rng.normal(size=(num_models, rank)).astype(f32),
        "head.head.1.bias": rng.normal(size=num_models).astype(f32),
        "head.eta_head.1.weight": rng.normal(size=(1, rank)).astype(f32),
        "head.eta_head.1.bias": np.array([0.25], f32),
    }
    if both_names:
        head["head.eta_head.0.weight"] = head["head.head.0.weight"].copy()
        head["head.eta_head.0.bias"] = head["head.head.0.bias"].copy()
    folder = tmp_path / "ref"
    _write_reference_folder(folder, network, tokenizer, head, num_models, {
        "head_type": "rk", "loss_type": "bag", "linear_head_downsize_factor": factor,
    })  # fmt: skip
    model, loaded, ids, out = _predict(folder)
    assert model.info.head_rank == rank and model.info.head_eta_downsize
    low = _pooled(network, ids) @ head["head.head.0.weight"].T + head["head.head.0.bias"]
    coefs = low @ head["head.head.1.weight"].T + head["head.head.1.bias"]
    eta = low @ head["head.eta_head.1.weight"][0] + head["head.eta_head.1.bias"][0]
    np.testing.assert_allclose(out.coefs.numpy(), coefs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.eta.numpy(), eta, rtol=1e-4, atol=1e-4)

    save_p2l(model, loaded, tmp_path / "again")  # saved by p2l: the shared layer once
    _, _, _, again = _predict(tmp_path / "again")
    np.testing.assert_allclose(again.coefs.numpy(), out.coefs.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(again.eta.numpy(), out.eta.numpy(), rtol=0, atol=1e-6)


def test_reference_ba_head_loads_and_gives_the_reference_probabilities(llama, tmp_path):
    """BAHead: head, eta_head and gamma_head, all Linear(hidden, .). p2l's coefficients are
    theta - gamma; the outcome probabilities equal the reference's formulas (t = e^eta +
    1.02, reference strength e^gamma) evaluated on the raw layers."""
    network, tokenizer = llama
    hidden, num_models = network.config.hidden_size, 4
    rng = np.random.default_rng(4)
    f32 = np.float32
    head = {
        "head.head.weight": (rng.normal(size=(num_models, hidden)) * 0.3).astype(f32),
        "head.head.bias": rng.normal(size=num_models).astype(f32),
        "head.eta_head.weight": (rng.normal(size=(1, hidden)) * 0.1).astype(f32),
        "head.eta_head.bias": np.array([-0.5], f32),
        "head.gamma_head.weight": (rng.normal(size=(1, hidden)) * 0.1).astype(f32),
        "head.gamma_head.bias": np.array([0.8], f32),
    }
    folder = tmp_path / "ref"
    _write_reference_folder(folder, network, tokenizer, head, num_models,
                            {"head_type": "ba", "loss_type": "ba"})
    model, _loaded, ids, out = _predict(folder)
    assert model.info.family == "ba" and model.info.head_type == "ba"
    pooled = _pooled(network, ids).astype(np.float64)
    theta = pooled @ head["head.head.weight"].T + head["head.head.bias"]
    eta = pooled @ head["head.eta_head.weight"][0] + head["head.eta_head.bias"][0]
    gamma = pooled @ head["head.gamma_head.weight"][0] + head["head.gamma_head.bias"][0]
    np.testing.assert_allclose(out.coefs.numpy(), theta - gamma[:, None], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.eta.numpy(), eta, rtol=1e-4, atol=1e-4)

    # the reference's BA probabilities for the pair (0, 1) of each prompt, from raw layers
    pa, pb, pg = np.exp(theta[:, 0]), np.exp(theta[:, 1]), np.exp(gamma)
    t = np.exp(eta) + 1.02
    win, loss = pa / (pa + t * pb + pg), pb / (pb + t * pa + pg)
    both_bad = pg / (pg + pa + pb)
    want = np.stack([win, loss, 1 - win - loss - both_bad, both_bad], axis=-1)
    got = families.outcome_probs(out.coefs[:, 0].double(), out.coefs[:, 1].double(),
                                 out.eta.double(), "ba").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ recipes and the CLI


def test_reference_yaml_keys_reach_the_configuration(tmp_path):
    recipe = tmp_path / "ref.yaml"
    recipe.write_text("loss_type: rk-reparam\ninit_type: he_unif\n"
                      "linear_head_downsize_factor: 2\neta_downsize: true\n")
    _settings, warnings = read_recipe(recipe)
    assert not warnings
    config, _, _ = resolve_config(str(recipe), {})
    assert config.head_init == "he_unif" and config.head_downsize == 2
    assert config.head_eta_downsize and config.head_type == "rk"
    assert config.resolved_rank(7) == 3


@pytest.mark.parametrize("args, words", [
    (["--loss", "tie-rk"], "tie-only likelihood"),
    (["--loss", "tie-bb-grk"], "tie-only likelihood"),
    (["--loss", "rk-reparam", "--head-eta-downsize"], "--head-eta-downsize"),
    (["--loss", "ba", "--head", "rk"], "--head ba"),
    (["--head-init", "orthogonal"], "--head-init"),
    (["--head-downsize", "0"], "--head-downsize"),
])  # fmt: skip
def test_bad_head_and_loss_options_are_one_line_exit_2(tmp_path, args, words):
    data = write_data_dir(tmp_path / "votes", n_train=16, n_val=8)
    result = run_cli("train", data, "-o", tmp_path / "m", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.stderr


@pytest.mark.parametrize("loss, extra", [
    ("ba", ["--head-init", "xavier_unif"]),
    ("rk-reparam", ["--head-downsize", "2", "--head-eta-downsize", "--head-init", "he_unif"]),
])  # fmt: skip
def test_train_then_predict_with_the_new_losses_and_heads(tmp_path, loss, extra):
    data = write_data_dir(tmp_path / "votes", n_train=64, n_val=32)
    backbone = make_backbone("llama", tmp_path / "llama")
    out = tmp_path / "model"
    result = run_cli("train", data, "-o", out, "--backbone", backbone, "--loss", loss,
                     "--epochs", "1", "--batch-size", "16", *extra)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "training_config.json").read_text())
    assert config["loss_type"] == loss
    model, _tokenizer, _ids, pred = _predict(out)
    assert model.info.family == loss
    assert torch.isfinite(pred.coefs).all() and torch.isfinite(pred.eta).all()
    if loss == "rk-reparam":
        assert model.info.head_eta_downsize and model.info.head_rank_bias
        assert model.info.head_rank == 3 // 2
    else:
        assert model.head.gamma_head is not None


def test_extend_gives_a_ba_head_new_rows_that_predict_the_fitted_coefficients():
    """extend fits a new model's final coefficient b + w.h; with a ba head the layer's row
    must carry gamma back, since the forward pass subtracts it."""
    from types import SimpleNamespace

    from p2l_cli.extend import grow_output_layer

    torch.manual_seed(2)
    head = P2LHead(6, 2, "ba")
    head.initialise("normal", std=0.7)
    model = SimpleNamespace(head=head, info=SimpleNamespace(model_list=["a", "b"]),
                            neighbours=None)
    pooled = torch.randn(5, 6)
    before, _ = head(pooled)
    w, b = np.arange(6.0) / 10, 0.3
    grow_output_layer(model, ["a", "b", "c"], {"c": (w, b)})
    with torch.no_grad():
        after, _ = head(pooled)
    torch.testing.assert_close(after[:, :2], before.detach())
    torch.testing.assert_close(after[:, 2], pooled @ torch.tensor(w, dtype=torch.float32) + b)


def test_extend_refuses_a_low_rank_ba_head():
    from types import SimpleNamespace

    from p2l_cli.errors import UserError
    from p2l_cli.extend import check_extendable

    check_extendable(SimpleNamespace(head=P2LHead(6, 2, "ba")))
    with pytest.raises(UserError, match="ba head with a rank"):
        check_extendable(SimpleNamespace(head=P2LHead(6, 2, "ba", rank=1)))
