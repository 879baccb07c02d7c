"""Building a fresh P2L model, saving it as a Hugging Face folder, loading it back.

The folder holds ``config.json`` (the backbone's own config, ``architectures: ["P2LModel"]``),
``model.safetensors`` (or shards with an index) with keys ``model.<backbone keys>`` and
``head.*``, the tokenizer files, ``model_list.json`` and ``training_config.json``. Published
lmarena-ai P2L checkpoints share this layout and load unchanged (their ``loss_type`` "bag" is
this package's ``grk``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

from p2l_cli import __version__
from p2l_cli.errors import UserError
from p2l_cli.io import atomic_path, current_umask, read_json_file, write_json
from p2l_cli.model.backbone import (
    clamp_max_length,
    default_pooling,
    is_encoder,
    load_backbone_config,
    load_pretrained_backbone,
    load_tokenizer,
    prepare_tokenizer,
)
from p2l_cli.model.heads import head_for_family
from p2l_cli.model.p2l import P2LInfo, P2LModel
from p2l_cli.model.prompt_features import LENGTH_STEPS, continues_word, token_classes
from p2l_cli.stats.families import canonical_family, has_eta

WEIGHTS = "model.safetensors"
_REBUILDABLE = ("position_ids", "inv_freq", "token_type_ids")
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
CONFIG_KEYS = {"head_type", "loss_type", "pooling", "max_length", "backbone", "model_type",
               "head_rank", "head_hidden", "head_activation", "chat_template",
               "encoder", "normalize", "prompt_features", "length_steps", "untruncated_features",
               "word_pieces",
               "neighbours", "smoothing", "head_rank_bias", "head_eta_downsize"}  # fmt: skip


def build_p2l(
    backbone: str,
    model_list: list[str],
    head_type: str = "bt",
    loss_type: str = "bt",
    pooling: str | None = None,
    max_length: int = 1024,
    head_rank: int | None = None,
    chat_template: str | None = None,
    dtype: torch.dtype | None = None,
    extra: dict | None = None,
    head_hidden: int | None = None,
    head_activation: str = "gelu",
    normalize: bool = False,
    prompt_features: bool = False,
    pad_token: str | None = None,
    cls_token: str | None = None,
    head_rank_bias: bool = False,
    head_eta_downsize: bool = False,
):
    """A P2L model on a pretrained backbone, with cls/pad tokens (``pad_token``,
    ``cls_token``, else p2l's own) added when the tokenizer lacks them (the embeddings are
    resized if that adds tokens). ``max_length`` is lowered to what a backbone
    with absolute positions can read (512 for BERT/MiniLM). Returns ``(model, tokenizer)``."""
    config = load_backbone_config(backbone)
    encoder = is_encoder(config)
    tokenizer = load_tokenizer(backbone, encoder, chat_template, pad_token, cls_token)
    network = load_pretrained_backbone(backbone, dtype)
    if len(tokenizer) > network.get_input_embeddings().weight.shape[0]:
        network.resize_token_embeddings(len(tokenizer))
    loss_type = canonical_family(loss_type)
    head_type = head_for_family(loss_type) if has_eta(loss_type) else head_type
    info = P2LInfo(
        model_list=sorted(model_list),
        head_type=head_type,
        loss_type=loss_type,
        pooling=pooling or default_pooling(config),
        max_length=clamp_max_length(max_length, config),
        backbone=backbone,
        model_type=config.model_type,
        head_rank=head_rank,
        head_hidden=head_hidden,
        head_activation=head_activation,
        head_rank_bias=head_rank_bias,
        head_eta_downsize=head_eta_downsize,
        chat_template=None if encoder else tokenizer.chat_template,
        encoder=encoder,
        normalize=normalize,
        prompt_features=prompt_features,
        extra=dict(extra or {}),
    )
    classes = continuations = None
    if prompt_features:
        info.length_steps = list(LENGTH_STEPS)
        info.untruncated_features = True
        info.word_pieces = True
        vocab = network.get_input_embeddings().weight.shape[0]
        classes = token_classes(tokenizer, encoder, vocab)
        continuations = continues_word(tokenizer, vocab)
    model = P2LModel(network, info, tokenizer.cls_token_id, classes, continuations)
    model.head.to(dtype=dtype or torch.float32)
    return model, tokenizer


def model_from_config(config, info: P2LInfo, tokenizer) -> P2LModel:
    """A P2L model with freshly initialised weights for a backbone config (no download)."""
    network = AutoModel.from_config(config)
    if len(tokenizer) > network.get_input_embeddings().weight.shape[0]:
        network.resize_token_embeddings(len(tokenizer))
    return P2LModel(network, info, tokenizer.cls_token_id)


# ---------------------------------------------------------------------------------- save


def state_dict_for_saving(model: P2LModel) -> dict[str, torch.Tensor]:
    """The weights, one copy of each shared tensor, contiguous and on the CPU."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape)) if tensor.numel() else (id(tensor), ())
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors


def save_p2l(
    model: P2LModel,
    tokenizer,
    out_dir: str | Path,
    training_config: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the model folder; each file is written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = state_dict if state_dict is not None else state_dict_for_saving(model)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o666 & ~current_umask())  # safetensors creates its files 0600
    if (out / WEIGHTS_INDEX).exists():
        (out / WEIGHTS_INDEX).unlink()
    config = model.model.config.to_dict()
    config["architectures"] = ["P2LModel"]
    write_json(out / "config.json", config)
    tokenizer.save_pretrained(str(out))
    write_json(out / "model_list.json", list(model.info.model_list))
    info_config = model.info.to_config()
    info_config["loss_type"] = model.info.family
    write_json(
        out / "training_config.json",
        {**(training_config or {}), **info_config, "p2l_version": __version__},
    )
    return out



# ---------------------------------------------------------------------------------- load


def resolve_model_dir(source: str | Path) -> Path:
    """A local model folder, or a Hub id resolved through the Hub cache (offline respected)."""
    path = Path(source)
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/")):
        raise UserError(f"{source}: not a model folder")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover
        raise UserError(f"{source}: not a model folder") from None
    from p2l_cli.model.offline import not_cached, offline_reason

    reason = offline_reason()
    try:
        return Path(snapshot_download(text, local_files_only=reason is not None))
    except LocalEntryNotFoundError:
        raise UserError(not_cached(text, text, reason or "no connection")) from None
    except Exception as exc:  # noqa: BLE001 (network and Hub errors of many types)
        raise UserError(f"{source}: cannot fetch from the Hub ({str(exc).splitlines()[0]})") from None


def check_model_folder(model_dir: Path) -> None:
    """Refuse a folder that lacks a file the model cannot do without: a model must be
    complete or refused, never run with stand-ins (a tokenizer rebuilt from nothing gives
    other token ids, hence other coefficients)."""
    for required in ("config.json", "model_list.json"):
        if not (model_dir / required).is_file():
            raise UserError(f"{model_dir}: not a P2L model folder (no {required})")
    if not (model_dir / WEIGHTS).is_file() and not (model_dir / WEIGHTS_INDEX).is_file():
        raise UserError(
            f"{model_dir}: incomplete model folder (no {WEIGHTS}; weights are read from "
            "safetensors only)"
        )
    if not (model_dir / TOKENIZER).is_file():
        raise UserError(f"{model_dir}: incomplete model folder (no {TOKENIZER})")


def read_info(model_dir: Path) -> P2LInfo:
    check_model_folder(model_dir)
    models = read_json_file(model_dir / "model_list.json", list)
    config = {}
    if (model_dir / "training_config.json").is_file():
        config = read_json_file(model_dir / "training_config.json", dict)
    backbone_config = read_json_file(model_dir / "config.json", dict)
    model_type = backbone_config.get("model_type", config.get("model_type", ""))
    encoder = bool(config.get("encoder", model_type in _encoder_types()))
    loss = canonical_family(config.get("loss_type", "bt"))
    head = config.get("head_type") or head_for_family(loss)
    max_length = clamp_max_length(int(config.get("max_length") or 8192), backbone_config)
    rank = config.get("head_rank")
    if rank is None and config.get("linear_head_downsize_factor"):
        rank = len(models) // int(config["linear_head_downsize_factor"])
    head_kwargs = config.get("head_kwargs") or config.get("head_config") or {}
    return P2LInfo(
        model_list=list(models),
        head_type=head,
        loss_type=loss,
        pooling=config.get("pooling") or ("first" if encoder else "cls"),
        max_length=max_length,
        backbone=config.get("backbone") or config.get("pretrain_model_name", ""),
        model_type=model_type,
        head_rank=rank,
        head_hidden=config.get("head_hidden"),
        head_activation=config.get("head_activation") or "gelu",
        head_rank_bias=bool(config.get("head_rank_bias", config.get("linear_head_downsize_factor"))),
        head_eta_downsize=bool(config.get("head_eta_downsize", head_kwargs.get("eta_downsize"))),
        chat_template=config.get("chat_template"),
        encoder=encoder,
        normalize=bool(config.get("normalize", False)),
        prompt_features=bool(config.get("prompt_features", False)),
        length_steps=[int(count) for count in config.get("length_steps") or []] or None,
        untruncated_features=bool(config.get("untruncated_features", False)),
        word_pieces=bool(config.get("word_pieces", False)),
        neighbours=config.get("neighbours") or None,
        smoothing=config.get("smoothing") or None,
        extra={k: v for k, v in config.items() if k not in CONFIG_KEYS},
    )


def _encoder_types() -> set[str]:
    from p2l_cli.model.backbone import ENCODER_TYPES

    return ENCODER_TYPES


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (named by {WEIGHTS_INDEX})") from None
    except (SafetensorError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable safetensors file ({detail})") from None


def _read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    if (model_dir / WEIGHTS).is_file():
        return _load_safetensors(model_dir / WEIGHTS)
    if (model_dir / WEIGHTS_INDEX).is_file():
        index = read_json_file(model_dir / WEIGHTS_INDEX, dict)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{model_dir / WEIGHTS_INDEX}: no weight_map object")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_load_safetensors(model_dir / shard))
        return tensors
    raise UserError(f"{model_dir}: no {WEIGHTS} (weights are read from safetensors only)")


def load_saved_tokenizer(model_dir: Path):
    """Exactly the tokenizer that was saved: ``tokenizer.json`` with the special tokens and
    chat template of ``tokenizer_config.json``. ``AutoTokenizer`` would pick the class of the
    backbone's ``model_type`` (transformers 5 loads a qwen2 folder as ``Qwen2Tokenizer``,
    which rebuilds its own normalizer and pre-tokenizer and ignores the saved pipeline), and
    the token ids would differ from those the model was trained on."""
    for name in (TOKENIZER, "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            read_json_file(model_dir / name, dict)  # a truncated file is named
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 (tokenizers raises a bare Exception)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{model_dir / TOKENIZER}: cannot load the tokenizer ({detail})") from None


def _reference_head_layout(info: P2LInfo, tensors: dict[str, torch.Tensor]) -> None:
    """What the weights say about a head of the reference implementation: a first bias of
    the low-rank head (``linear_head_downsize_factor``), eta read from the low-rank layer
    (``RKHead(eta_downsize=True)``: ``eta_head.0`` is ``head.0``, saved under either name
    or both) and ``BAHead``'s ``gamma_head``."""
    if info.head_rank and not info.head_hidden and "head.head.0.bias" in tensors:
        info.head_rank_bias = True
    if "head.eta_head.1.weight" in tensors:
        info.head_eta_downsize = True
        for name in ("weight", "bias"):
            shared = (f"head.head.0.{name}", f"head.eta_head.0.{name}")
            present = [k for k in shared if k in tensors]
            if present:
                for k in shared:
                    tensors.setdefault(k, tensors[present[0]])
    if "head.gamma_head.weight" in tensors:
        info.head_type = "ba"


def load_p2l(
    source: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
):
    """Load a P2L model folder (written by p2l or published by lmarena-ai) or a cached Hub id.

    Returns ``(model, tokenizer)``; the model is in eval mode; ``model.info`` describes it.
    """
    model_dir = resolve_model_dir(source)
    info = read_info(model_dir)
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{model_dir / 'config.json'}: cannot load the config ({str(exc).splitlines()[0]})"
        ) from None
    tokenizer = load_saved_tokenizer(model_dir)
    prepare_tokenizer(tokenizer, info.encoder, info.chat_template)
    if not info.encoder and info.chat_template is None:
        info.chat_template = tokenizer.chat_template
    tensors = _read_weights(model_dir)
    first = tensors.get("head.head.0.weight")
    two_layers = first is not None and "head.head.1.weight" in tensors and first.ndim == 2
    if two_layers and not info.head_hidden:
        info.head_rank = int(first.shape[0])  # the rank the weights have
    _reference_head_layout(info, tensors)
    with torch.device("meta"):
        network = AutoModel.from_config(config)
    model = P2LModel(network, info, tokenizer.cls_token_id)
    expected = set(model.state_dict())
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    # Tied or non-persistent buffers may be absent; anything else is a mismatch.
    missing = [k for k in missing if not k.endswith(_REBUILDABLE)]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    resized = [
        f"{k} {tuple(v.shape)} (expected {tuple(shapes[k])})"
        for k, v in tensors.items()
        if k in shapes and v.shape != shapes[k]
    ]
    if missing or unexpected or resized:
        detail = ", ".join((missing + unexpected + resized)[:4])
        raise UserError(
            f"{model_dir}: weights do not match a {info.model_type} backbone with a "
            f"{info.head_type} head for {len(info.model_list)} models ({detail})"
        )
    model.load_state_dict(tensors, strict=False, assign=True)
    _materialise_meta(model)
    model.eval()
    if dtype is not None:
        model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    return model, tokenizer


def _materialise_meta(model: P2LModel) -> None:
    """Buffers that are not in the file (rotary frequencies, position ids) are rebuilt."""
    for module in model.modules():
        meta = [n for n, b in module.named_buffers(recurse=False) if b.is_meta]
        if not meta:
            continue
        fresh = _fresh_copy(module)
        persistent = set(module.state_dict(keep_vars=True))
        for name in meta:
            buffer = getattr(module, name)
            value = _fallback_buffer(name, buffer) if fresh is None else getattr(fresh, name)
            module.register_buffer(name, value, persistent=name in persistent)
    for name, param in model.named_parameters():
        if param.is_meta:
            raise UserError(f"parameter {name} is not in the weights file")


def _fresh_copy(module: torch.nn.Module) -> torch.nn.Module | None:
    """A new instance of a module built from its config (how transformers builds rotary
    embeddings), on the CPU."""
    config = getattr(module, "config", None)
    if config is None:
        return None
    try:
        with torch.device("cpu"):
            return type(module)(config=config)
    except Exception:  # noqa: BLE001 (not every module builds from its config alone)
        return None


def _fallback_buffer(name: str, buffer: torch.Tensor) -> torch.Tensor:
    if name == "position_ids":
        return torch.arange(buffer.shape[-1]).expand(buffer.shape).clone()
    return torch.zeros(buffer.shape, dtype=buffer.dtype)
