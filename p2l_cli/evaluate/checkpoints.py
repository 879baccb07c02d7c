"""The checkpoints of a training run that hold weights, as model folders ``p2l evaluate`` can
load.

``p2l train -o RUN`` keeps two sets of weights: the model folder ``RUN`` itself (the best
validation NLL so far) and ``RUN/checkpoints/last`` (the weights of the latest save, for
``--resume``; an Accelerate state whose ``model.safetensors`` holds the trained module's
weights). There are no per-step checkpoints, so "every checkpoint" is these two. ``last``
becomes a model folder by taking ``RUN``'s files and replacing the weights it saved.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from p2l_cli.errors import UserError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
STATE_FILE = "trainer_state.json"


@dataclass
class Checkpoint:
    name: str  # "best" (the model folder) or "last"
    path: Path  # where its weights are
    step: int | None  # the optimizer step the weights are from, when recorded


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """``best`` (the model folder) and, when it holds weights, ``last``."""
    from p2l_cli.train import checkpoint_dir

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise UserError(f"--checkpoints: {run} is not a model folder from `p2l train`")
    found = []
    last = checkpoint_dir(run)
    state = _read_json(last / STATE_FILE) if last is not None else {}
    best_step = _read_json(run / "leaderboard.json").get("step", state.get("best_step"))
    found.append(Checkpoint("best", run, best_step if isinstance(best_step, int) else None))
    if last is not None and (last / WEIGHTS).is_file():
        step = state.get("last_save_step", state.get("step"))
        found.append(Checkpoint("last", last, step if isinstance(step, int) else None))
    return found


def _matched(base: dict, saved: dict, where: Path) -> dict:
    """``saved``'s tensors under the model folder's names (the whole model, or the head
    alone when the backbone was frozen)."""
    if set(saved) <= set(base):
        return saved
    prefixed = {f"head.{key}": value for key, value in saved.items()}
    if set(prefixed) <= set(base):
        return prefixed
    unknown = sorted(set(saved) - set(base))[:3]
    raise UserError(f"{where / WEIGHTS}: weights the model folder does not have ({unknown})")


def model_folder_of(checkpoint: Checkpoint, work_dir: str | Path) -> Path:
    """A folder ``p2l evaluate`` loads as a model: the run folder itself for ``best``; for
    ``last``, ``work_dir`` with the run folder's files and the checkpoint's weights."""
    from safetensors.torch import load_file, save_file

    from p2l_cli.model.checkpoint import _read_weights

    if checkpoint.name == "best":
        return checkpoint.path
    run = checkpoint.path.parent.parent
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in run.iterdir():
        weights = item.name in (WEIGHTS, WEIGHTS_INDEX) or item.name.startswith("model-")
        if item.is_file() and not weights and not item.name.startswith("."):
            shutil.copy2(item, out / item.name)
    tensors = dict(_read_weights(run))
    tensors.update(_matched(tensors, load_file(str(checkpoint.path / WEIGHTS)), checkpoint.path))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / WEIGHTS))
    return out
