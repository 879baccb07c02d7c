"""A model folder is complete or refused: missing or truncated files are exit 2 naming the
file; the tokenizer is the one that was saved; reference low-rank heads (with a bias on the
first layer) load and predict as trained."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import run_cli
from safetensors.torch import save_file
from tiny import CORPUS, make_backbone
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Model,
)

from p2l_cli.errors import UserError
from p2l_cli.model import build_p2l, collate, encode_prompts, load_p2l, save_p2l

MODELS = ["model-a", "model-b", "model-c", "model-d"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A complete p2l model folder (tiny Qwen2, bt head)."""
    root = tmp_path_factory.mktemp("folder")
    backbone = make_backbone("qwen2", root / "backbone")
    torch.manual_seed(3)
    model, tokenizer = build_p2l(str(backbone), MODELS, max_length=64)
    model.head.initialise("normal", std=0.5)
    return save_p2l(model, tokenizer, root / "model")


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved, target)
    return target


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    pl.DataFrame({"prompt": ["write a python function", "hello how are you"]}).write_ndjson(path)
    return path


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------ item 1: incomplete folder


@pytest.mark.parametrize("also_config", [False, True])
def test_a_folder_without_tokenizer_json_is_refused(copy, tmp_path, also_config):
    (copy / "tokenizer.json").unlink()
    if also_config:
        (copy / "tokenizer_config.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json"):
        load_p2l(copy)
    result = run_cli("predict", copy, _prompts(tmp_path), "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert str(copy) in line and "no tokenizer.json" in line
    assert not (tmp_path / "out.jsonl").exists()
    pushed = run_cli("push", copy, "--repo-id", "alice/p2l", "--dry-run")
    assert pushed.exit_code == 2, pushed.output
    line = _one_error_line(pushed)
    assert str(copy) in line and "no tokenizer.json" in line


# ------------------------------------------------------------------ item 2: saved tokenizer


def _odd_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer that Qwen2Tokenizer would not rebuild: lowercasing, split on whitespace."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=["[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]",
        cls_token="<|cls|>", pad_token="<|pad|>",
    )  # fmt: skip
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    return fast


def test_the_saved_tokenizer_is_loaded_not_the_class_default(tmp_path):
    tokenizer = _odd_tokenizer()
    torch.manual_seed(0)
    network = Qwen2Model(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )).eval()  # fmt: skip
    folder = tmp_path / "pub"
    folder.mkdir()
    generator = torch.Generator().manual_seed(1)
    tensors = {f"model.{k}": v.contiguous() for k, v in network.state_dict().items()}
    tensors["head.head.weight"] = torch.randn(3, 32, generator=generator)
    tensors["head.head.bias"] = torch.randn(3, generator=generator)
    save_file(tensors, str(folder / "model.safetensors"))
    config = network.config.to_dict() | {"architectures": ["P2LModel"]}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(folder))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "model_list.json").write_text(json.dumps(["x", "y", "z"]))
    (folder / "training_config.json").write_text(json.dumps({"head_type": "bt", "loss_type": "bt"}))

    prompt = ["Write a PYTHON function", "and Hello"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": t} for t in prompt], tokenize=False
    )
    expected = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.cls_token_id]
    # the class default for model_type qwen2 splits otherwise: the test would catch it
    default = AutoTokenizer.from_pretrained(str(folder))
    assert default(text, add_special_tokens=False)["input_ids"] != expected[:-1]

    model, loaded = load_p2l(folder)
    [ids] = encode_prompts(loaded, [prompt], model.info)
    assert ids == expected
    with torch.no_grad():
        hidden = network(input_ids=torch.tensor([expected])).last_hidden_state[0, -1]
        coefs = model(*collate([ids], loaded.pad_token_id)).coefs[0]
    torch.testing.assert_close(
        coefs,
        tensors["head.head.weight"] @ hidden + tensors["head.head.bias"],
        rtol=1e-5,
        atol=1e-5,
    )


# ------------------------------------------------------------------ item 8: truncated files


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "config.json",
        "model_list.json",
        "training_config.json",
        "tokenizer.json",
    ],
)
def test_a_truncated_file_is_exit_2_naming_it(copy, tmp_path, name):
    path = copy / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = run_cli("predict", copy, _prompts(tmp_path), "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 2, result.output
    assert str(path) in _one_error_line(result)


# ------------------------------------------------------------------ item 13: reference rank head


def test_a_reference_low_rank_head_with_a_first_bias_loads_and_predicts(tmp_path):
    """The reference implementation's ``linear_head_downsize_factor`` head: Linear(h, M//f)
    with a bias, then Linear(M//f, M). Coefficients checked against numpy."""
    backbone = make_backbone("llama", tmp_path / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.add_special_tokens({"cls_token": "<|cls|>", "pad_token": "<|pad|>"})
    network = AutoModel.from_pretrained(backbone)
    network.resize_token_embeddings(len(tokenizer))
    network.eval()
    hidden_size, num_models, factor = network.config.hidden_size, 6, 3
    rank = num_models // factor
    rng = np.random.default_rng(5)
    head = {
        "head.head.0.weight": rng.normal(size=(rank, hidden_size)).astype(np.float32),
        "head.head.0.bias": rng.normal(size=rank).astype(np.float32),
        "head.head.1.weight": rng.normal(size=(num_models, rank)).astype(np.float32),
        "head.head.1.bias": rng.normal(size=num_models).astype(np.float32),
    }
    folder = tmp_path / "ref"
    folder.mkdir()
    tensors = {f"model.{k}": v.contiguous() for k, v in network.state_dict().items()}
    tensors |= {k: torch.from_numpy(v) for k, v in head.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(network.config.to_dict() | {"architectures": ["P2LModel"]})
    )
    tokenizer.save_pretrained(str(folder))
    models_ = [f"llm-{i}" for i in range(num_models)]
    (folder / "model_list.json").write_text(json.dumps(models_))
    (folder / "training_config.json").write_text(json.dumps({
        "model_type": "llama", "head_type": "bt", "loss_type": "bt",
        "linear_head_downsize_factor": factor, "chat_template": tokenizer.chat_template,
    }))  # fmt: skip

    model, loaded = load_p2l(folder)
    assert model.info.head_rank == rank
    prompts = [["what is the derivative of sine of x"], ["tell me a story", "about a dragon"]]
    ids = encode_prompts(loaded, prompts, model.info)
    with torch.no_grad():
        out = model(*collate(ids, loaded.pad_token_id)).coefs.numpy()
        pooled = np.stack([
            network(input_ids=torch.tensor([row])).last_hidden_state[0, -1].numpy() for row in ids
        ])  # fmt: skip
    low = pooled @ head["head.head.0.weight"].T + head["head.head.0.bias"]
    expected = low @ head["head.head.1.weight"].T + head["head.head.1.bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

    # saved again by p2l, it keeps the bias and the coefficients
    save_p2l(model, loaded, tmp_path / "again")
    again, tokenizer_again = load_p2l(tmp_path / "again")
    with torch.no_grad():
        out_again = again(*collate(ids, tokenizer_again.pad_token_id)).coefs.numpy()
    np.testing.assert_allclose(out_again, out, rtol=0, atol=1e-6)
