"""The P2L model core: save -> load round trips, published checkpoints, the head's maths."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from tiny import make_backbone
from transformers import AutoModel, AutoTokenizer

from p2l_cli.errors import UserError
from p2l_cli.model import P2LHead, build_p2l, collate, encode_prompts, load_p2l, save_p2l
from p2l_cli.model.p2l import backbone_window, prompt_text
from p2l_cli.model.prompt_features import turn_marker_id

MODELS = ["model-b", "model-a", "model-c", "model-d"]  # build_p2l sorts them
PROMPTS = [
    ["write a python function that sorts a list of numbers"],
    ["hello how are you", "translate this sentence into french please"],
    ["compose a short poem about the autumn sea <|cls|> and the moon"],
]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {kind: make_backbone(kind, root / kind) for kind in ("qwen2", "llama", "bert")}


def _forward(model, tokenizer, prompts):
    ids = encode_prompts(tokenizer, prompts, model.info)
    input_ids, mask = collate(ids, tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids, mask), ids


@pytest.mark.parametrize(
    "kind, loss, rank, pooling",
    [("qwen2", "grk", None, None), ("llama", "bt", 2, None), ("bert", "rk", 3, "mean")],
)
def test_save_then_load_gives_identical_coefficients(backbones, tmp_path, kind, loss, rank,
                                                     pooling):
    torch.manual_seed(1)
    model, tokenizer = build_p2l(str(backbones[kind]), MODELS, loss_type=loss, head_rank=rank,
                                 pooling=pooling, max_length=64)
    model.head.initialise("normal", std=0.5)
    model.eval()
    before, ids_before = _forward(model, tokenizer, PROMPTS)
    save_p2l(model, tokenizer, tmp_path / "m", {"lr": 1e-3})

    loaded, tokenizer2 = load_p2l(tmp_path / "m")
    after, ids_after = _forward(loaded, tokenizer2, PROMPTS)
    assert ids_after == ids_before
    assert loaded.info.model_list == sorted(MODELS)
    assert loaded.info.family == ("grk" if loss == "grk" else loss)
    assert loaded.info.head_rank == rank
    assert loaded.info.pooling == model.info.pooling
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[name], restored[name]) for name in saved)
    # Identical weights; a matmul over differently aligned memory may differ in the last bit.
    torch.testing.assert_close(after.coefs, before.coefs, rtol=0, atol=1e-6)
    if loss == "bt":
        assert after.eta is None
    else:
        torch.testing.assert_close(after.eta, before.eta, rtol=0, atol=1e-6)
    config = json.loads((tmp_path / "m" / "training_config.json").read_text())
    assert config["lr"] == 1e-3 and config["loss_type"] == model.info.family
    assert json.loads((tmp_path / "m" / "model_list.json").read_text()) == sorted(MODELS)


def test_decoder_input_is_chat_template_then_cls(backbones):
    model, tokenizer = build_p2l(str(backbones["qwen2"]), MODELS, max_length=512)
    ids = encode_prompts(tokenizer, [PROMPTS[2]], model.info)[0]
    text = "<|im_start|>user\n" + PROMPTS[2][0].replace("<|cls|>", "") + "<|im_end|>\n"
    expected = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.cls_token_id]
    assert ids == expected
    assert ids.count(tokenizer.cls_token_id) == 1
    # left truncation keeps the cls token and the end of the prompt
    model.info.max_length = 8
    short = encode_prompts(tokenizer, [PROMPTS[2]], model.info)[0]
    assert short == expected[-8:]


def _published_checkpoint(backbone_dir, folder, num_models=3):
    """A checkpoint in lmarena-ai's layout, written by hand from the backbone's files."""
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    tokenizer.add_special_tokens({"cls_token": "<|cls|>", "pad_token": "<|pad|>"})
    network = AutoModel.from_pretrained(backbone_dir)
    network.resize_token_embeddings(len(tokenizer))
    hidden = network.config.hidden_size
    generator = torch.Generator().manual_seed(7)
    head = {
        "head.head.weight": torch.randn(num_models, hidden, generator=generator),
        "head.head.bias": torch.randn(num_models, generator=generator),
        "head.eta_head.weight": torch.randn(1, hidden, generator=generator) * 0.1,
        "head.eta_head.bias": torch.tensor([0.3]),
    }
    tensors = {f"model.{k}": v.contiguous() for k, v in network.state_dict().items()}
    tensors.update(head)
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    config = network.config.to_dict()
    config["architectures"] = ["P2LModel"]
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(folder))
    models = [f"llm-{i}" for i in range(num_models)]
    (folder / "model_list.json").write_text(json.dumps(models))
    (folder / "training_config.json").write_text(json.dumps({
        "model_type": config["model_type"], "head_type": "rk", "loss_type": "bag",
        "chat_template": tokenizer.chat_template, "learning_rate": 8e-6,
    }))  # fmt: skip
    return network.eval(), tokenizer, head, models


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_published_layout_loads_and_matches_a_hand_written_forward(backbones, tmp_path, kind):
    network, tokenizer, head, models = _published_checkpoint(backbones[kind], tmp_path / "pub")
    model, loaded_tokenizer = load_p2l(tmp_path / "pub")
    assert model.info.family == "grk" and model.info.head_type == "rk"
    assert model.info.model_list == models

    prompt = ["what is the derivative of sine of x", "and of cosine?"]
    messages = [{"role": "user", "content": turn} for turn in prompt]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.cls_token_id]
    with torch.no_grad():
        hidden = network(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    coefs = head["head.head.weight"] @ hidden + head["head.head.bias"]
    eta = head["head.eta_head.weight"][0] @ hidden + head["head.eta_head.bias"][0]

    out, encoded = _forward(model, loaded_tokenizer, [prompt, ["a longer second prompt " * 5]])
    assert encoded[0] == ids
    torch.testing.assert_close(out.coefs[0], coefs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.eta[0], eta, rtol=1e-5, atol=1e-5)


def test_weights_of_another_shape_are_a_clear_error(backbones, tmp_path):
    _published_checkpoint(backbones["qwen2"], tmp_path / "pub")
    (tmp_path / "pub" / "model_list.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    with pytest.raises(UserError, match="weights do not match"):
        load_p2l(tmp_path / "pub")


def test_low_rank_head_and_initialisation():
    head = P2LHead(16, 5, "rk", rank=2)
    assert sum(p.numel() for p in head.head.parameters()) == 16 * 2 + 2 * 5 + 5
    bias = torch.linspace(-1, 1, 5)
    head.initialise("zeros", bias=bias, eta=0.7)
    coefs, eta = head(torch.randn(3, 16))
    assert torch.equal(coefs, bias.expand(3, 5))  # starts exactly at the given leaderboard
    assert torch.allclose(eta, torch.full((3,), 0.7))


# ------------------------------------------------------------------- position limits


def _longest_input_that_runs(model: torch.nn.Module, upper: int) -> int:
    """Brute force: the largest sequence length the backbone accepts, up to ``upper``."""
    best = 0
    for length in range(1, upper + 1):
        ids = torch.full((1, length), 5, dtype=torch.long)
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
        except (IndexError, RuntimeError):
            break
        best = length
    return best


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_position_limit_is_the_longest_input_an_absolute_encoder_reads(kind):
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    from p2l_cli.model.backbone import position_limit

    size = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    config = {
        "bert": BertConfig(vocab_size=50, num_hidden_layers=1, max_position_embeddings=24, **size),
        "roberta": RobertaConfig(vocab_size=50, num_hidden_layers=1, max_position_embeddings=24,
                                 pad_token_id=1, **size),
        "distilbert": DistilBertConfig(vocab_size=50, n_layers=1, dim=16, n_heads=2,
                                       hidden_dim=32, max_position_embeddings=24),
    }[kind]
    network = AutoModel.from_config(config).eval()
    assert position_limit(config) == _longest_input_that_runs(network, 40)
    assert position_limit(config.to_dict()) == position_limit(config)


def test_rotary_decoders_have_no_position_limit(backbones):
    from transformers import AutoConfig

    from p2l_cli.model.backbone import position_limit

    for kind in ("qwen2", "llama"):
        assert position_limit(AutoConfig.from_pretrained(backbones[kind])) is None


def test_max_length_is_clamped_to_the_encoders_positions(backbones, tmp_path):
    """The tiny BERT has 256 positions: a default max_length of 1024 must not reach it,
    neither when building, nor when loading a folder whose config asks for more."""
    model, tokenizer = build_p2l(str(backbones["bert"]), MODELS)  # max_length 1024 by default
    assert model.info.max_length == 256
    long_prompt = [" ".join(["write a python function that sorts"] * 200)]
    ids = encode_prompts(tokenizer, [long_prompt], model.info)
    assert len(ids[0]) == 256
    model.eval()
    with torch.no_grad():
        coefs = model(*collate(ids, tokenizer.pad_token_id)).coefs
    assert coefs.shape == (1, len(MODELS)) and torch.isfinite(coefs).all()

    save_p2l(model, tokenizer, tmp_path / "m")
    config_path = tmp_path / "m" / "training_config.json"
    config = json.loads(config_path.read_text())
    assert config["max_length"] == 256
    config["max_length"] = 4096  # e.g. written by hand or by another tool
    config_path.write_text(json.dumps(config))
    loaded, _ = load_p2l(tmp_path / "m")
    assert loaded.info.max_length == 256

    decoder, _ = build_p2l(str(backbones["qwen2"]), MODELS, max_length=1024)
    assert decoder.info.max_length == 1024  # rotary positions: no clamp (256 in its config)


def test_saved_files_are_readable_by_others(backbones, tmp_path):
    import os

    model, tokenizer = build_p2l(str(backbones["bert"]), MODELS, max_length=32)
    previous = os.umask(0o022)
    try:
        save_p2l(model, tokenizer, tmp_path / "m")
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "config.json", "training_config.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize("activation", ["gelu", "softmax"])
def test_a_hidden_layer_head_saves_loads_and_computes_its_formula(backbones, tmp_path,
                                                                   activation):
    from p2l_cli.hub import read_model_folder

    torch.manual_seed(2)
    model, tokenizer = build_p2l(str(backbones["bert"]), MODELS, head_hidden=5,
                                 head_activation=activation, pooling="mean", max_length=64)
    model.head.initialise("normal", std=0.5)
    with torch.no_grad():  # a non-trivial normalisation, to check it is saved too
        model.head.head[0].weight.uniform_(0.5, 1.5)
        model.head.head[0].bias.uniform_(-0.2, 0.2)
    model.eval()
    shapes = {k: tuple(v.shape) for k, v in model.head.state_dict().items()}
    hidden = model.config.hidden_size
    assert shapes == {"head.0.weight": (hidden,), "head.0.bias": (hidden,),
                      "head.1.weight": (5, hidden), "head.1.bias": (5,),
                      "head.3.weight": (len(MODELS), 5), "head.3.bias": (len(MODELS),)}
    out = _forward(model, tokenizer, PROMPTS)[0]

    # the formula, written out: normalise, project, nonlinearity, coefficient layer
    ids = encode_prompts(tokenizer, PROMPTS, model.info)
    input_ids, mask = collate(ids, tokenizer.pad_token_id)
    with torch.no_grad():
        states = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        w = {k: v.double() for k, v in model.head.state_dict().items()}
        x = pooled.double()
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True)
                                                        + 1e-5)
        x = x * w["head.0.weight"] + w["head.0.bias"]
        z = x @ w["head.1.weight"].T + w["head.1.bias"]
        if activation == "gelu":
            a = 0.5 * z * (1 + torch.erf(z / 2**0.5))
        else:
            a = torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)  # mixture weights
            assert torch.allclose(a.sum(-1), torch.ones(len(PROMPTS), dtype=a.dtype))
        expected = a @ w["head.3.weight"].T + w["head.3.bias"]
    torch.testing.assert_close(out.coefs.double(), expected, rtol=0, atol=1e-5)

    save_p2l(model, tokenizer, tmp_path / "m", {"lr": 1e-3})
    config = json.loads((tmp_path / "m" / "training_config.json").read_text())
    assert config["head_hidden"] == 5 and config["head_activation"] == activation
    loaded, tokenizer2 = load_p2l(tmp_path / "m")
    assert (loaded.info.head_hidden, loaded.info.head_activation) == (5, activation)
    assert loaded.info.head_rank is None
    after = _forward(loaded, tokenizer2, PROMPTS)[0]
    torch.testing.assert_close(after.coefs, out.coefs, rtol=0, atol=1e-6)
    # the Hub check finds the coefficient layer (the last one) and its M outputs
    assert read_model_folder(tmp_path / "m").model_list == sorted(MODELS)
    from p2l_cli.hub import build_model_upload

    card = build_model_upload(tmp_path / "m", "alice/p2l").card
    kind = "a GELU layer" if activation == "gelu" else "a mixture of leaderboards"
    assert f"through {kind} of 5 units" in card


def test_a_head_is_linear_low_rank_or_hidden_never_two_at_once():
    with pytest.raises(ValueError, match="not both"):
        P2LHead(8, 3, rank=2, hidden=4)
    with pytest.raises(ValueError, match="activation"):
        P2LHead(8, 3, hidden=4, activation="relu6")
    assert set(P2LHead(8, 3).state_dict()) == {"head.weight", "head.bias"}
    assert set(P2LHead(8, 3, rank=2).state_dict()) == {"head.0.weight", "head.1.weight",
                                                      "head.1.bias"}


@pytest.mark.parametrize("kind", ["bert", "qwen2"])
def test_the_backbone_reads_what_truncating_at_tokenisation_gives(backbones, kind):
    """Rows of whole prompts, cut by ``backbone_window`` inside the model, give the backbone
    exactly the ids (and so the pooled state) that truncating from the left at tokenisation
    gives, in a batch mixing rows that fit and rows that do not."""
    model, tokenizer = build_p2l(str(backbones[kind]), MODELS, max_length=32,
                                 prompt_features=True)  # fmt: skip
    assert model.info.untruncated_features
    prompts = [["alpha"], ["alpha beta gamma delta"], [" ".join(["alpha beta gamma delta"] * 6)]]
    whole = encode_prompts(tokenizer, prompts, model.info)
    assert [len(row) > 32 for row in whole] == [False, False, True]
    texts = [prompt_text(tokenizer, p, model.info) for p in prompts]
    if kind == "bert":  # the tokenizer truncates from the left, inside its special tokens
        cut = tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    else:  # the chat template's end, then the cls token
        body = tokenizer(texts, add_special_tokens=False)["input_ids"]
        cut = [row[-31:] + [tokenizer.cls_token_id] for row in body]
    ids, mask = collate(whole, tokenizer.pad_token_id)
    window, window_mask = backbone_window(ids, mask, 32, model.info.encoder)
    for i, row in enumerate(cut):
        assert window[i, : len(row)].tolist() == row
        assert window_mask[i].tolist() == [1] * len(row) + [0] * (window.shape[1] - len(row))
    model.eval()
    with torch.no_grad():
        from_whole = model.pool(ids, mask)
        from_cut = model.pool(*collate(cut, tokenizer.pad_token_id))
    hidden = model.config.hidden_size
    torch.testing.assert_close(from_whole[:, :hidden], from_cut[:, :hidden])
    # the descriptors count every token of the whole prompt, not the backbone's 32
    marks = {*tokenizer.all_special_ids, turn_marker_id(tokenizer, model.info.encoder)}
    text = [sum(token not in marks for token in row) for row in whole]
    assert text[0] < 16 < text[1] < 32 and text[2] > 64  # the last: past the backbone
    names = model.feature_names
    for i, count in enumerate(text):  # the log length stops at max_length, the steps do not
        assert from_whole[i, hidden].item() == pytest.approx(math.log1p(min(count, 32)))
        assert from_whole[i, hidden + names.index("over_16_tokens")].item() == float(count > 16)
        assert from_whole[i, hidden + names.index("over_64_tokens")].item() == float(count > 64)


def test_models_saved_before_count_after_truncation(backbones, tmp_path):
    model, tokenizer = build_p2l(str(backbones["bert"]), MODELS, max_length=12,
                                 prompt_features=True)  # fmt: skip
    save_p2l(model, tokenizer, tmp_path / "m")
    config_path = tmp_path / "m" / "training_config.json"
    config = json.loads(config_path.read_text())
    del config["untruncated_features"]  # as written before the descriptors read whole prompts
    config_path.write_text(json.dumps(config))
    old, tokenizer = load_p2l(tmp_path / "m")
    assert not old.info.untruncated_features
    prompt = [" ".join(["alpha beta gamma delta"] * 6)]
    ids = encode_prompts(tokenizer, [prompt], old.info)
    assert len(ids[0]) == 12  # truncated at tokenisation, as before
    with torch.no_grad():
        pooled = old.pool(*collate(ids, tokenizer.pad_token_id))
    assert pooled[0, old.config.hidden_size].item() == pytest.approx(math.log1p(10))


def test_word_pieces_table_is_saved_and_models_saved_before_lack_it(backbones, tmp_path):
    from safetensors.torch import load_file

    model, tokenizer = build_p2l(str(backbones["bert"]), MODELS, max_length=12,
                                 prompt_features=True)  # fmt: skip
    glued = model.features.continues_word
    assert model.info.word_pieces and 0 < int(glued.sum()) < len(glued)
    save_p2l(model, tokenizer, tmp_path / "m")
    loaded, _ = load_p2l(tmp_path / "m")
    assert torch.equal(loaded.features.continues_word, glued)
    assert loaded.feature_names == model.feature_names and "word_pieces" in model.feature_names
    # as saved before the descriptor: no flag in the config, no table in the weights
    config_path = tmp_path / "m" / "training_config.json"
    config = json.loads(config_path.read_text())
    del config["word_pieces"]
    config_path.write_text(json.dumps(config))
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    del weights["features.continues_word"]
    column = model.config.hidden_size + model.feature_names.index("word_pieces")
    for key, tensor in weights.items():  # the head read one descriptor fewer
        if key.startswith("head.") and tensor.ndim == 2 and tensor.shape[1] == model.pooled_size:
            weights[key] = torch.cat([tensor[:, :column], tensor[:, column + 1 :]], 1)
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    old, _ = load_p2l(tmp_path / "m")
    assert "word_pieces" not in old.feature_names
    assert len(old.feature_names) == len(model.feature_names) - 1
    ids = encode_prompts(tokenizer, [["alpha beta gamma"]], old.info)
    with torch.no_grad():
        pooled = old.pool(*collate(ids, tokenizer.pad_token_id))
    assert pooled.shape[1] == old.config.hidden_size + len(old.feature_names)
