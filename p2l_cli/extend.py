"""Add models to a trained P2L model without retraining it.

The backbone and every known model's coefficients stay as they are. For each new model, a
new row of the head's output layer is fitted on the frozen inputs of that layer (the pooled
prompt state for a linear head, the hidden layer of a low-rank or two-layer head), by
penalised maximum likelihood on the votes that involve it, the known models' per-prompt
coefficients held fixed (neighbourhood refinement included):

    theta_new(z) = b + w . h(z)

The penalty on ``w`` is chosen by cross-validation over the new votes, folds split by
prompt; unless prompt-specific weights beat one rating per model on held-out folds by two
standard errors, ``w = 0`` and the new model's coefficient is its rating against the known
models on those votes (a weak prior keeps it finite when it won or lost every vote). So a
model with a few votes starts from its marginal rating, and prompt-specific structure
appears as the votes allow it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from p2l_cli.contracts.prompts import BadPrompt, prompt_turns
from p2l_cli.errors import UserError
from p2l_cli.evaluate import vote_labels
from p2l_cli.io import check_output_folder, current_umask, read_table
from p2l_cli.model import encode_prompts, load_p2l
from p2l_cli.model.checkpoint import resolve_model_dir, save_p2l
from p2l_cli.model.p2l import P2LModel, collate
from p2l_cli.stats.headfit import DEFAULT_FOLDS, MIN_GAIN_SE, HeadFitReport, fit_new_rows


@dataclass
class Extension:
    """What ``extend_p2l`` did: the new model list and, per new model, its votes and fit."""

    models: list[str]
    new_models: list[str]
    votes_used: int
    votes_ignored: int
    votes_per_model: dict[str, int]
    fit: HeadFitReport
    seconds: float

    def to_dict(self) -> dict:
        return {
            "new_models": self.new_models,
            "votes_used": self.votes_used,
            "votes_ignored_known_pairs": self.votes_ignored,
            "votes_per_new_model": self.votes_per_model,
            "head_fit": self.fit.to_dict(),
            "seconds": round(self.seconds, 2),
        }


def vote_prompts(frame: pl.DataFrame, source: str) -> list[list[str]]:
    """The user turns of each vote, read by the prompts contract."""
    if "prompt" not in frame.columns:
        raise UserError(f"{source}: no 'prompt' column (the battles written by p2l prepare)")
    turns = []
    for row, value in enumerate(frame["prompt"].to_list()):
        try:
            turns.append(prompt_turns(value))
        except BadPrompt as exc:
            raise UserError(f"{source}: row {row + 1}: {exc}") from None
    return turns


@torch.no_grad()
def head_inputs_and_coefs(
    model: P2LModel, token_ids: list[list[int]], pad_token_id: int, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per prompt: the input of the head's output layer, the model's coefficients (refined
    as ``predict`` refines them) and eta (``None`` without an eta head)."""
    inputs, coefs, etas = [], [], []
    layer_input = {}
    hook = model.head.output_layer.register_forward_hook(
        lambda module, args, output: layer_input.__setitem__("x", args[0])
    )
    try:
        for start in range(0, len(token_ids), batch_size):
            ids, mask = collate(token_ids[start : start + batch_size], pad_token_id)
            out = model(ids, mask)
            inputs.append(layer_input["x"].double())
            coefs.append(out.coefs.double())
            if out.eta is not None:
                etas.append(out.eta.double())
    finally:
        hook.remove()
    return torch.cat(inputs), torch.cat(coefs), torch.cat(etas) if etas else None


def extended_model_list(known: list[str], frame: pl.DataFrame, source: str) -> list[str]:
    for column in ("model_a", "model_b", "winner"):
        if column not in frame.columns:
            raise UserError(f"{source}: no {column!r} column (the battles written by p2l prepare)")
    names = set(frame["model_a"].cast(pl.String).to_list()) | set(
        frame["model_b"].cast(pl.String).to_list()
    )
    if None in names:
        raise UserError(f"{source}: a vote has no model name")
    return sorted(set(known) | names)


def check_extendable(model: P2LModel) -> None:
    if getattr(model.head, "gamma_head", None) is not None and isinstance(
        model.head.head, nn.Sequential
    ):
        raise UserError("extend: a ba head with a rank or hidden layer cannot take new rows "
                        "(gamma reads the pooled state, the new rows the low-rank layer)")


def grow_output_layer(model: P2LModel, models: list[str], rows: dict[str, tuple]) -> None:
    """Replace the head's output layer by one over ``models``: the known models' rows move
    to their new positions, each new model gets ``rows[name] = (weight, bias)``."""
    check_extendable(model)
    old_layer = model.head.output_layer
    known = {name: i for i, name in enumerate(model.info.model_list)}
    layer = nn.Linear(old_layer.in_features, len(models)).to(old_layer.weight.dtype)
    # a ba head subtracts gamma (linear in the pooled state) from every coefficient: a new
    # row fitted for the final coefficient gets gamma's layer added back
    gamma = getattr(model.head, "gamma_head", None)
    with torch.no_grad():
        for i, name in enumerate(models):
            if name in known:
                layer.weight[i] = old_layer.weight[known[name]]
                layer.bias[i] = old_layer.bias[known[name]]
            else:
                weight, bias = rows[name]
                layer.weight[i] = torch.as_tensor(weight, dtype=layer.weight.dtype)
                layer.bias[i] = float(bias)
                if gamma is not None:
                    layer.weight[i] += gamma.weight[0].to(layer.weight.dtype)
                    layer.bias[i] += gamma.bias[0].to(layer.bias.dtype)
    if isinstance(model.head.head, nn.Sequential):
        model.head.head[-1] = layer
    else:
        model.head.head = layer
    if model.neighbours is not None:  # stored votes index the old list
        position = torch.tensor([models.index(name) for name in model.info.model_list])
        labels = model.neighbours.labels.long()
        labels[:, :2] = position[labels[:, :2]]
        model.neighbours.labels.copy_(labels.to(model.neighbours.labels.dtype))
    model.info.model_list = list(models)


def extend_p2l(
    model_source: str | Path,
    votes_path: str | Path,
    out_dir: str | Path,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    batch_size: int = 32,
    overwrite: bool = False,
    rating_only: bool = False,
    on_message: Callable[[str], None] | None = None,
) -> Extension:
    """Write to ``out_dir`` the model of ``model_source`` with the models that appear in the
    votes of ``votes_path`` (battles: ``prompt``, ``model_a``, ``model_b``, ``winner``)
    added. ``rating_only``: one rating per new model, no prompt-specific weights. Raises
    ``UserError`` for votes that name no new model or are malformed."""
    say = on_message or (lambda message: None)
    started = time.perf_counter()
    source = str(votes_path)
    model_dir = resolve_model_dir(model_source)
    out = Path(out_dir)
    if out.exists() and out.resolve() == model_dir.resolve():
        raise UserError(f"-o {out}: is the model folder; extend writes a new folder")
    check_output_folder(out, "-o", overwrite)
    model, tokenizer = load_p2l(model_dir, device="cpu", dtype=torch.float32)
    check_extendable(model)
    known = list(model.info.model_list)
    frame = read_table(votes_path)
    if frame.height == 0:
        raise UserError(f"{source}: no votes")
    models = extended_model_list(known, frame, source)
    new_models = [name for name in models if name not in known]
    if not new_models:
        raise UserError(f"{source}: every model in the votes is already in {model_source}")
    labels = vote_labels(frame, models, source)
    new_index = np.array([models.index(name) for name in new_models])
    involved = np.isin(labels[:, :2], new_index).any(axis=1)
    ignored = int((~involved).sum())
    config = read_training_config(model_dir)
    offset = None
    if config.get("style"):
        offset = style_offsets(frame, labels, models, config["style"], source)[involved]
        say("style control: the model holds style fixed; the new votes' style terms enter "
            "the fit")
    labels = labels[involved]
    prompts = [turns for turns, keep in zip(vote_prompts(frame, source), involved) if keep]
    per_model = {
        name: int((labels[:, :2] == models.index(name)).any(axis=1).sum()) for name in new_models
    }
    say(
        f"adding {', '.join(f'{n} ({per_model[n]} votes)' for n in new_models)} to "
        f"{len(known)} models; {ignored} votes between known models ignored"
    )

    distinct, inverse = np.unique(
        np.array(["\x1e".join(t) for t in prompts], dtype=object), return_inverse=True
    )
    first = np.zeros(len(distinct), dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(prompts))[::-1]
    token_ids = encode_prompts(tokenizer, [prompts[i] for i in first], model.info)
    say(f"encoding {len(distinct)} distinct prompts with the frozen backbone")
    inputs, coefs, eta = head_inputs_and_coefs(model, token_ids, tokenizer.pad_token_id, batch_size)
    inputs, coefs = inputs[inverse], coefs[inverse]
    eta = None if eta is None else eta[inverse].numpy()

    # the known models' coefficients, placed in the extended list
    fixed = np.zeros((len(labels), len(models)))
    for i, name in enumerate(known):
        fixed[:, models.index(name)] = coefs[:, i].numpy()
    head, report = fit_new_rows(
        inputs.numpy(), labels, model.info.family, fixed, new_index, eta=eta,
        prior_mean=float(coefs.mean()), groups=inverse, folds=folds, seed=seed,
        min_gain_se=math.inf if rating_only else MIN_GAIN_SE, style_offset=offset,
    )  # fmt: skip
    if report.fell_back:
        say(
            "cross-validation: no clear gain from prompt-specific weights "
            f"({report.gain:+.4f} ± {report.gain_se:.4f} nats per vote): one rating per new model"
        )
    else:
        say(
            f"cross-validation: penalty {report.penalty:.3g}, held-out NLL "
            f"{report.cv_nll[report.penalty]:.4f} vs {report.cv_nll_marginal:.4f} with one rating"
        )
    rows = {name: (head.weight[j], head.bias[j]) for j, name in enumerate(new_models)}
    grow_output_layer(model, models, rows)

    extension = Extension(
        models=models,
        new_models=new_models,
        votes_used=len(labels),
        votes_ignored=ignored,
        votes_per_model=per_model,
        fit=report,
        seconds=time.perf_counter() - started,
    )
    history = list(config.get("extensions", [])) + [extension.to_dict()]
    write_folder(out, lambda folder: save_p2l(model, tokenizer, folder,
                                              {**config, "extensions": history}))
    return extension


def read_training_config(model_dir: Path) -> dict:
    path = model_dir / "training_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def style_offsets(frame: pl.DataFrame, labels: np.ndarray, models: list[str], style: dict,
                  source: str) -> np.ndarray:
    """Each vote's style term under a style-controlled model's saved fit (``style`` of its
    training_config.json): the votes' relative style differences, standardised with the
    training votes' means and standard deviations, times the coefficients, signed by
    whether the labels' first model is model_a."""
    from p2l_cli.contracts.style import first_is_model_a, style_from_frame
    from p2l_cli.stats.style import style_terms

    raw, names = style_from_frame(frame, source)
    missing = [name for name in style["features"] if name not in names]
    if missing:
        raise UserError(f"{source}: the model was trained with style control on "
                        f"{', '.join(style['features'])}; the votes lack {', '.join(missing)}")
    columns = [names.index(name) for name in style["features"]]
    sign = first_is_model_a(frame["model_a"].cast(pl.String).to_list(), labels[:, 0], models)
    return style_terms(raw[:, columns], sign, style["mean"], style["sd"],
                       style["coefficients"])


def write_folder(out: Path, write: Callable[[Path], object]) -> None:
    """Write a whole folder beside ``out`` and rename it into place only when complete."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise UserError(f"-o {out}: cannot write ({exc.strerror or exc})") from None
    try:
        write(staging)
        os.chmod(staging, 0o777 & ~current_umask())
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

