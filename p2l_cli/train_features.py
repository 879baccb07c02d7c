"""Pooled backbone features for ``--freeze-backbone``: computed once, cached on disk.

With the backbone frozen, training only needs the pooled hidden state of each prompt. They
are computed in one pass (inference mode, batches of similar length) and stored as
safetensors under a key made from the backbone's weights, the pooling, the precision and the
token ids (which carry the data, the tokenizer, the chat template and the max length), so a
second run on the same inputs starts training at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from p2l_cli.io import atomic_path
from p2l_cli.model import P2LModel, collate
from p2l_cli.reporting import SILENT, Reporter

FEATURES_VERSION = 1


def default_cache_dir() -> Path:
    if os.environ.get("P2L_CACHE_DIR"):
        return Path(os.environ["P2L_CACHE_DIR"]) / "features"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p2l" / "features"


def weights_fingerprint(module: torch.nn.Module, samples: int = 4096) -> str:
    """A cheap hash of a module's weights: names, shapes, dtypes and evenly spaced values."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // samples)
        picked = flat[::stride][:samples].to("cpu", torch.float32).numpy()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(picked.tobytes())
    return digest.hexdigest()


def special_rows_fingerprint(model: P2LModel, token_ids: list[int]) -> str:
    """Embedding rows of special tokens in full: tokens p2l added (cls, pad) start from
    random rows that a sampled fingerprint could miss."""
    table = model.model.get_input_embeddings().weight.detach()
    rows = sorted({i for i in token_ids if i is not None and 0 <= i < table.shape[0]})
    picked = table[rows].to("cpu", torch.float32).numpy() if rows else np.zeros(0)
    return hashlib.sha256(picked.tobytes()).hexdigest()


def cache_key(
    model: P2LModel, data_fingerprints: list[str], precision: str, special_ids: list[int]
) -> str:
    parts = {
        "version": FEATURES_VERSION,
        "backbone": weights_fingerprint(model.model),
        "special_rows": special_rows_fingerprint(model, special_ids),
        "pooling": model.info.pooling,
        "normalize": model.info.normalize,
        "prompt_features": model.feature_names or None,
        "max_length": model.info.max_length,
        "precision": precision,
        "data": data_fingerprints,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


@torch.inference_mode()
def pooled_features(
    model: P2LModel,
    token_ids: list[np.ndarray],
    pad_token_id: int,
    device: torch.device,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager] | None = None,
    label: str = "",
    reporter: Reporter = SILENT,
) -> torch.Tensor:
    """``[N, hidden]`` float32 pooled states, computed in batches of similar length; a
    prompt that repeats (same token ids) is encoded once."""
    was_training = model.training
    model.eval()
    first: dict[bytes, int] = {}
    inverse = np.array([first.setdefault(r.tobytes(), len(first)) for r in token_ids], np.int64)
    unique_at = np.zeros(len(first), dtype=np.int64)
    unique_at[inverse[::-1]] = np.arange(len(token_ids))[::-1]  # first row of each prompt
    token_ids = [token_ids[i] for i in unique_at]
    order = np.argsort([-len(r) for r in token_ids], kind="stable")
    hidden = model.pooled_size
    out = torch.empty((len(token_ids), hidden), dtype=torch.float32)
    with reporter.progress(f"encoding {label}".strip(), total=len(token_ids)) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, mask = collate([token_ids[i] for i in idx], pad_token_id, device)
            with autocast() if autocast else nullcontext():
                pooled = model.pool(input_ids, mask)
            out[torch.from_numpy(idx)] = pooled.float().cpu()
            bar.advance(len(idx))
    model.train(was_training)
    return out[torch.from_numpy(inverse)]


def load_cached(path: Path, names: list[str]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError):  # a damaged cache entry is recomputed
        return None
    return tensors if all(n in tensors for n in names) else None


def save_cached(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
