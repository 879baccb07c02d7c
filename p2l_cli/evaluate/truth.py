"""The simulator's truth (``p2l simulate``'s ``truth.parquet``): the coefficients each vote
was drawn from, aligned to the votes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from p2l_cli.errors import UserError
from p2l_cli.evaluate.inputs import Votes, data_model_list
from p2l_cli.io import read_table_meta
from p2l_cli.stats.families import (
    canonical_family,
)


@dataclass
class TruthTable:
    """``truth.parquet`` of `p2l simulate`: per battle ``id``, ``category``, ``true_coefs``
    (in ``models`` order) and ``true_eta`` for rk/grk."""

    frame: pl.DataFrame
    models: list[str]
    source: str
    family: str | None = None  # the family the votes were drawn from, when known


@dataclass
class Truth:
    """The truth of each vote, in the predictions' model order."""

    coefs: np.ndarray  # [N, M]
    eta: np.ndarray | None  # [N]
    category: np.ndarray  # [N] str ("" when unknown)
    found: np.ndarray  # [N] bool: the vote's id is in the truth file


def truth_model_list(meta: dict | None, source: str, width: int, candidates: list) -> list[str]:
    if meta and isinstance(meta.get("models"), list):
        return list(meta["models"])
    for models in candidates:
        if models is not None and len(models) == width:
            return list(models)
    raise UserError(
        f"{source}: cannot tell which model each of the {width} true coefficients belongs to "
        "(no model list in its metadata and no models.json of that length beside it or VAL)"
    )


def read_truth(path: str | Path, candidate_models: list | None = None) -> TruthTable:
    """Read a truth file; its model list comes from its metadata, else from a ``models.json``
    beside it, else from the first of ``candidate_models`` with the right length."""
    frame, meta = read_table_meta(path)
    missing = {"id", "true_coefs"} - set(frame.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    width = int(frame["true_coefs"].list.len().max() or 0)
    candidates = [data_model_list(path), *(candidate_models or [])]
    family = (meta or {}).get("family") or (meta or {}).get("loss")
    try:
        family = canonical_family(family) if family else None
    except ValueError:
        family = None
    models = truth_model_list(meta, str(path), width, candidates)
    return TruthTable(frame, models, str(path), family)


def align_truth(ids: pl.Series, truth: TruthTable, models: list[str]) -> Truth:
    missing = [m for m in models if m not in truth.models]
    if missing:
        raise UserError(f"{truth.source}: no true coefficients for {', '.join(missing[:5])}")
    order = np.array([truth.models.index(m) for m in models])
    extra = [c for c in ("category", "true_eta") if c in truth.frame.columns]
    right = truth.frame.select(pl.col("id").cast(pl.String).alias("_key"), "true_coefs", *extra)
    right = right.unique("_key", keep="first")
    left = pl.DataFrame({"_key": ids.cast(pl.String)}).with_row_index("_row")
    joined = left.join(right, on="_key", how="left").sort("_row")
    found = joined["true_coefs"].is_not_null().to_numpy()
    coefs = np.zeros((joined.height, len(models)))
    if found.any():
        rows = joined.filter(pl.Series(found))["true_coefs"].list.to_array(len(truth.models))
        coefs[found] = rows.to_numpy().astype(np.float64)[:, order]
    eta = None
    if "true_eta" in joined.columns:
        eta = np.array(joined["true_eta"].cast(pl.Float64).fill_null(0.0).to_numpy())
    category = np.full(joined.height, "", dtype=object)
    if "category" in joined.columns:
        category = joined["category"].cast(pl.String).fill_null("").to_numpy().astype(object)
    return Truth(coefs, eta, category, found)


def votes_category(votes: Votes, truth: Truth | None) -> np.ndarray | None:
    """The true category of each vote (from the truth file), else the battles' own column."""
    if truth is not None and truth.found.all() and (truth.category != "").all():
        return truth.category
    if "category" in votes.frame.columns:
        return votes.frame["category"].cast(pl.String).fill_null("").to_numpy().astype(object)
    return None
