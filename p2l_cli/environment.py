"""What p2l runs on: package versions, the device, threads, offline mode, the Hugging Face
cache. ``p2l env`` shows it for bug reports; model folders record the versions they were
trained with."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from p2l_cli import __version__

PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "polars", "scipy")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def versions() -> dict[str, str | None]:
    """p2l, Python, and the packages p2l trains and predicts with (``None``: not installed)."""
    found: dict[str, str | None] = {"p2l": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def device() -> dict[str, Any]:
    """The accelerator torch would use: ``cuda`` (with the GPUs' names), ``mps`` or ``cpu``."""
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return {"kind": "cuda", "gpus": names, "cuda": torch.version.cuda}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"kind": "mps", "gpus": [], "cuda": None}
    return {"kind": "cpu", "gpus": [], "cuda": None}


def environment() -> dict[str, Any]:
    """Everything ``p2l env`` reports, as JSON-ready values."""
    import torch
    from huggingface_hub import constants

    return {
        "versions": versions(),
        "platform": platform.platform(),
        "device": device(),
        "threads": {"torch": torch.get_num_threads(), "cpus": os.cpu_count()},
        "offline": {
            **{name: os.environ.get(name) for name in OFFLINE_VARIABLES},
            "effective": bool(constants.HF_HUB_OFFLINE),
        },
        "hf_cache": str(constants.HF_HUB_CACHE),
    }
