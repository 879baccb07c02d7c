"""The evaluation's inputs: validation (and training) votes in the predictions' model indices,
joined to the predictions on ``id`` or on the prompt; predictions made on the spot by a model
folder; and the votes a model was trained or selected on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from p2l_cli.contracts.battles import outcome_column
from p2l_cli.contracts.predictions import Predictions, predictions_from_frame
from p2l_cli.errors import UserError
from p2l_cli.io import read_json, read_table
from p2l_cli.stats.families import (
    has_eta,
)


@dataclass
class Votes:
    """Validation votes in the predictions' model indices, with what the metrics need."""

    frame: pl.DataFrame  # the kept rows of the battles file
    labels: np.ndarray  # [N, 3] winner, loser, tie code
    weights: np.ndarray  # [N]
    clusters: np.ndarray  # [N] prompt index: the bootstrap resamples these
    dropped: int  # votes on models the predictions do not cover


def read_battles(path: str | Path, what: str) -> pl.DataFrame:
    frame = read_table(path)
    if frame.height == 0:
        raise UserError(f"{path}: no votes ({what})")
    return frame


def default_train_path(val_path: str | Path) -> Path | None:
    """``DATA/train.parquet`` when the validation file lies in a `p2l prepare` folder."""
    path = Path(str(val_path))
    candidate = path.parent / "train.parquet"
    if str(val_path) == "-" or not candidate.is_file() or candidate.resolve() == path.resolve():
        return None
    return candidate


def data_model_list(path: str | Path) -> list[str] | None:
    """``models.json`` beside a battles file (a `p2l prepare` folder), if there is one."""
    if str(path) == "-":
        return None
    candidate = Path(path).parent / "models.json"
    return list(read_json(candidate)) if candidate.is_file() else None


def _index_of(names: pl.Series, models: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(models)}
    return np.array([lookup.get(name, -1) for name in names.to_list()], dtype=np.int64)


def vote_labels(
    frame: pl.DataFrame, models: list[str], source: str, data_models: list[str] | None = None
) -> np.ndarray:
    """``[N, 3]`` labels in the index space of ``models``, matched by model name; -1 marks a
    model ``models`` lacks. Uses ``model_a``/``model_b``/``winner`` when present, else the
    ``labels`` column with the data's own model list."""
    if {"model_a", "model_b", "winner"} <= set(frame.columns):
        a = _index_of(frame["model_a"].cast(pl.String), models)
        b = _index_of(frame["model_b"].cast(pl.String), models)
        b_won, codes = outcome_column(frame["winner"], frame["model_a"], frame["model_b"], source)
        first, second = np.where(b_won, b, a), np.where(b_won, a, b)
        return np.stack([first, second, codes], axis=1)
    if "labels" in frame.columns and data_models is not None:
        raw = frame["labels"].list.to_array(3).to_numpy().astype(np.int64)
        mapping = np.array([models.index(m) if m in models else -1 for m in data_models])
        if raw[:, :2].max(initial=0) >= len(data_models) or raw[:, :2].min(initial=0) < 0:
            raise UserError(f"{source}: labels index past the {len(data_models)} models")
        return np.stack([mapping[raw[:, 0]], mapping[raw[:, 1]], raw[:, 2]], axis=1)
    raise UserError(
        f"{source}: expected the battles columns model_a, model_b and winner (or labels with "
        "models.json beside the file)"
    )


def prompt_keys(frame: pl.DataFrame) -> pl.Series:
    """One key per prompt (its user turns, however the file spells them), for joining
    predictions to votes and for the bootstrap's clusters."""
    prompt = frame["prompt"]
    if prompt.dtype != pl.List(pl.String):
        from p2l_cli.contracts.prompts import BadPrompt, prompt_turns

        try:
            turns = [prompt_turns(value) for value in prompt.to_list()]
        except BadPrompt as exc:
            raise UserError(f"a 'prompt' value cannot be read: {exc}") from None
        prompt = pl.Series(turns, dtype=pl.List(pl.String))
    return prompt.hash().alias("_prompt_key")


def cluster_ids(frame: pl.DataFrame) -> np.ndarray:
    if "prompt" not in frame.columns:
        return np.arange(frame.height)
    return np.unique(prompt_keys(frame).to_numpy(), return_inverse=True)[1].reshape(-1)


def make_votes(
    frame: pl.DataFrame, models: list[str], source: str, data_models: list[str] | None = None
) -> Votes:
    labels = vote_labels(frame, models, source, data_models)
    keep = (labels[:, :2] >= 0).all(axis=1)
    bad_codes = ~np.isin(labels[:, 2], (0, 1, 2))
    if bad_codes.any():
        row = int(np.flatnonzero(bad_codes)[0])
        raise UserError(f"{source}: row {row + 1}: tie code {labels[row, 2]}; expected 0, 1 or 2")
    kept = frame.filter(pl.Series(keep))
    if kept.height == 0:
        raise UserError(f"{source}: no vote is between models of the predictions' model list")
    weights = (
        np.array(kept["weight"].cast(pl.Float64).fill_null(1.0).to_numpy())
        if "weight" in kept.columns
        else np.ones(kept.height)
    )
    return Votes(kept, labels[keep], weights, cluster_ids(kept), int((~keep).sum()))


def join_key(votes: pl.DataFrame, preds: pl.DataFrame) -> str:
    """``id`` when both tables have unique-enough ids in common, else the prompt."""
    if "id" in votes.columns and "id" in preds.columns:
        ids = preds["id"].cast(pl.String)
        if (
            ids.n_unique() == preds.height
            and votes["id"].cast(pl.String).is_in(ids.implode()).any()
        ):
            return "id"
    if "prompt" in votes.columns and "prompt" in preds.columns:
        return "prompt"
    raise UserError("cannot match predictions to votes: they share neither 'id' nor 'prompt'")


def align_predictions(
    votes: Votes, preds: Predictions, val_source: str
) -> tuple[Votes, np.ndarray, np.ndarray | None, str]:
    """Coefficients (and eta) per vote, joined on ``id`` or on the prompt; votes without a
    prediction are dropped (a warning says how many)."""
    key = join_key(votes.frame, preds.frame)
    columns = ["coefs"] + (["eta"] if "eta" in preds.frame.columns else [])
    if key == "id":
        left = votes.frame.select(pl.col("id").cast(pl.String).alias("_key"))
        right = preds.frame.select(pl.col("id").cast(pl.String).alias("_key"), *columns)
    else:
        left = pl.DataFrame({"_key": prompt_keys(votes.frame)})
        right = preds.frame.select(*columns).with_columns(prompt_keys(preds.frame).alias("_key"))
        right = right.unique("_key", keep="first", maintain_order=True)
    joined = left.with_row_index("_row").join(right, on="_key", how="left").sort("_row")
    found = joined["coefs"].is_not_null().to_numpy()
    if not found.any():
        raise UserError(
            f"{preds.source}: no prediction matches a vote of {val_source} (joined on {key})"
        )
    joined = joined.filter(pl.Series(found))
    votes = subset_votes(votes, found)
    coefs = joined["coefs"].list.to_array(len(preds.models)).to_numpy().astype(np.float64)
    eta = None
    if has_eta(preds.family):
        eta = np.array(joined["eta"].cast(pl.Float64).to_numpy(), dtype=np.float64)
    return votes, coefs, eta, key


def subset_votes(votes: Votes, keep: np.ndarray) -> Votes:
    if keep.all():
        return votes
    frame = votes.frame.filter(pl.Series(keep))
    clusters = np.unique(votes.clusters[keep], return_inverse=True)[1].reshape(-1)
    return Votes(frame, votes.labels[keep], votes.weights[keep], clusters, votes.dropped)


def is_model_source(source: str | Path) -> bool:
    """A model folder (or a Hub id of one) rather than a predictions file."""
    path = Path(str(source))
    if path.is_dir():
        return True
    text = str(source)
    return not path.exists() and text.count("/") == 1 and not path.suffix


def predictions_from_model(
    source: str | Path, val: pl.DataFrame, batch_size: int | None, device: str | None
) -> Predictions:
    """Predict the validation prompts (each distinct prompt once) with a P2L model."""
    from p2l_cli.predict import (
        DEFAULT_MAX_BATCH_SIZE,
        load_for_inference,
        predict_frame,
        predictions_metadata,
    )

    if "prompt" not in val.columns:
        raise UserError("VAL_BATTLES: no 'prompt' column to predict from")
    prompts = (
        val.select("prompt")
        .with_columns(prompt_keys(val))
        .unique("_prompt_key", keep="first", maintain_order=True)
        .drop("_prompt_key")
    )
    model, tokenizer = load_for_inference(source, device or "auto")
    frame = predict_frame(
        model,
        tokenizer,
        prompts,
        prompt_column="prompt",
        max_batch_size=batch_size or DEFAULT_MAX_BATCH_SIZE,
        name="VAL_BATTLES",
    )
    return predictions_from_frame(frame, predictions_metadata(model, source), str(source))


def seen_votes(model_dir: str | None, votes: pl.DataFrame) -> list[str]:
    """Warnings when the votes being scored were seen by the model: its training votes, or
    the validation votes that chose its weights (early stopping). Found through the model
    folder's ``training_config.json`` (its data folder) and ``metrics.json``."""
    if not model_dir or "id" not in votes.columns:
        return []
    folder = Path(model_dir)
    try:
        data = Path(read_json(folder / "training_config.json").get("data") or "")
        selected_on = str(read_json(folder / "metrics.json").get("selected_on") or "val")
    except (OSError, ValueError, AttributeError, UserError):
        return []
    scored = set(votes["id"].cast(pl.String).to_list())
    splits = [("train.parquet", "trained on")]
    if selected_on.startswith("val"):
        splits.append(("val.parquet", "used for early stopping (choosing the weights) by"))
    warnings = []
    for name, how in splits:
        path = data / name
        if not path.is_file():
            continue
        try:
            ids = pl.scan_parquet(path).select(pl.col("id").cast(pl.String)).collect()["id"]
        except Exception:  # noqa: BLE001, S112 (an unreadable data folder: nothing to compare)
            continue
        overlap = len(scored.intersection(ids.to_list()))
        if overlap:
            warnings.append(
                f"{overlap:,} of the {len(scored):,} scored votes were {how} the model "
                f"({path}): its scores are optimistic; score votes no stage saw"
            )
    return warnings
