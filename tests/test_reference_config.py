"""Keys of the reference implementation's training YAMLs: what has a meaning here is used
(pad_token_if_none, cls_token_if_none), what has none (reweight_scale, head_config) is
ignored with one warning line each."""

from __future__ import annotations

import pytest
import torch
from tiny import make_backbone
from transformers import AutoTokenizer

from p2l_cli.errors import UserError
from p2l_cli.model import build_p2l
from p2l_cli.model.backbone import prepare_tokenizer
from p2l_cli.stats.families import labels_nll
from p2l_cli.train_config import read_recipe, resolve_config

REFERENCE_STYLE = """\
proj_name: Llama-3.1-8B-full-train
learning_rate: 4.0e-6
pretrain_model_name: meta-llama/Llama-3.1-8B-Instruct
loss_type: bag
head_type: rk
weighted_loss: true
reweight_scale: 2.5
head_config:
  dropout: 0.1
pad_token_if_none: <|finetune_right_pad_id|>
cls_token_if_none: <|reserved_special_token_3|>
"""


def test_reference_yaml_keys_are_accepted_with_one_warning_each(tmp_path):
    recipe = tmp_path / "reference.yaml"
    recipe.write_text(REFERENCE_STYLE)
    settings, warnings = read_recipe(str(recipe))
    assert settings["pad_token"] == "<|finetune_right_pad_id|>"
    assert settings["cls_token"] == "<|reserved_special_token_3|>"
    assert settings["weighted"] is True and settings["loss"] == "bag"
    for key in ("reweight_scale", "head_config", "proj_name"):
        lines = [w for w in warnings if f"ignoring {key!r}" in w]
        assert len(lines) == 1 and "\n" not in lines[0], warnings
    assert "weighted mean" in next(w for w in warnings if "reweight_scale" in w)
    config, _, _ = resolve_config(str(recipe), {})
    assert (config.pad_token, config.cls_token) == (
        "<|finetune_right_pad_id|>", "<|reserved_special_token_3|>")


def test_blank_special_token_is_refused(tmp_path):
    recipe = tmp_path / "blank.yaml"
    recipe.write_text("cls_token_if_none: '  '\n")
    with pytest.raises(UserError, match="--cls-token: must not be blank"):
        resolve_config(str(recipe), {})


def test_reweight_scale_would_change_nothing():
    """Why reweight_scale is ignored: the training loss is the weighted mean NLL, so a
    constant factor on every weight gives the same loss (checked against the plain sum)."""
    torch.manual_seed(0)
    coefs = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 0], [2, 3, 0], [1, 2, 0], [3, 0, 0], [0, 2, 0], [1, 3, 0]])
    weights = torch.rand(6, dtype=torch.float64) + 0.1
    pair = coefs.gather(1, labels[:, :2])
    per_vote = torch.nn.functional.softplus(pair[:, 1] - pair[:, 0])  # -log sigmoid(a - b)
    expected = (per_vote * weights).sum() / weights.sum()
    for scale in (1.0, 2.5, 1e-3):
        got = labels_nll(coefs, labels, None, "bt", weights * scale)
        torch.testing.assert_close(got, expected)


def test_custom_tokens_are_the_ones_added_to_a_decoder_without_them(tmp_path):
    backbone = make_backbone("qwen2", tmp_path / "qwen2")
    _, plain = build_p2l(str(backbone), ["a", "b"], max_length=32)
    _, custom = build_p2l(str(backbone), ["a", "b"], max_length=32, pad_token="<|mypad|>",
                          cls_token="<|mycls|>")
    assert plain.cls_token == "<|cls|>" and custom.cls_token == "<|mycls|>"
    assert custom.pad_token == plain.pad_token  # it had one: kept
    assert custom.convert_tokens_to_ids("<|mycls|>") == len(custom) - 1

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    tokenizer.pad_token = None
    prepare_tokenizer(tokenizer, False, None, "<|mypad|>", None)
    assert (tokenizer.pad_token, tokenizer.cls_token) == ("<|mypad|>", "<|cls|>")
