"""Whether the Hugging Face Hub can be used now, decided at once rather than after the Hub
client's retries: offline mode set by the user (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), or
no connection to the Hub's endpoint within a short timeout. Then models are read from the
local cache only, and a model missing from it is one line that says how to fetch it."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlsplit

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_SECONDS = 2.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=4)
def _reachable(url: str, timeout: float) -> bool:
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:  # no route, refused, no name resolution, timeout
        return False


def offline_reason() -> str | None:
    """Why the Hub cannot be used now (``None`` when it can)."""
    for name in OFFLINE_VARIABLES:
        if _truthy(os.environ.get(name)):
            return f"{name} is set"
    url = endpoint()
    if not _reachable(url, PROBE_SECONDS):
        return f"{urlsplit(url).hostname or url} cannot be reached"
    return None


def is_hub_id(text: str) -> bool:
    """``org/name`` that is not a path on this machine."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not os.path.exists(
        text
    )


def not_cached(label: str, repo_id: str, reason: str) -> str:
    """The one-line error for a Hub model that is needed offline and not in the cache."""
    return (
        f"{label}: not in the Hugging Face cache, and the Hub cannot be used ({reason}); "
        f"run `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) where there "
        "is network and copy the cache (HF_HOME, default ~/.cache/huggingface) here, or give "
        "a local folder"
    )
