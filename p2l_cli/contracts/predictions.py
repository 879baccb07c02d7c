"""The predictions contract: what ``p2l predict`` writes and ``leaderboard``, ``route`` and
``evaluate`` read.

A predictions table has one row per prompt with ``coefs`` (a list of one float per model,
in the metadata's model order), ``eta`` (the tie parameter, for the ``rk`` and ``grk``
families) and any columns of the prompts file. Its ``p2l`` metadata (Parquet key-value
metadata, or the first JSONL line) holds ``models``, ``head`` and ``loss``. The likelihood
family is ``loss``; metadata without one takes it from the head (``rk`` for an ``rk`` head,
else ``bt``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from p2l_cli.errors import UserError
from p2l_cli.io import read_table_meta, source_name
from p2l_cli.stats.families import canonical_family, has_eta


@dataclass(frozen=True)
class Predictions:
    """Per-prompt coefficients ``[N, M]`` (model-list order) with their metadata and the
    rows they were read from."""

    models: list[str]
    family: str
    head: str
    coefs: np.ndarray  # [N, M] float32, as the files store them
    eta: np.ndarray | None  # [N] float64, for families with a tie parameter
    frame: pl.DataFrame  # the rows as read
    source: str
    model_dir: str | None = None  # the model folder that predicted them, when known
    weight: np.ndarray | None = None  # [N] from a ``weight`` column
    groups: np.ndarray | None = None  # [N] group labels a command attaches

    def subset(self, mask: np.ndarray) -> Predictions:
        """The prompts under ``mask``."""
        return replace(
            self,
            coefs=self.coefs[mask],
            eta=None if self.eta is None else self.eta[mask],
            frame=self.frame.filter(pl.Series(mask)),
            weight=None if self.weight is None else self.weight[mask],
            groups=None if self.groups is None else self.groups[mask],
        )


def family_of(meta: dict, source: str, override: str | None = None) -> str:
    """The likelihood family the predictions are read in: ``override``, else the metadata's
    ``loss``, else the head's (``rk`` for an ``rk`` head, else ``bt``)."""
    head = meta.get("head")
    family = override or meta.get("loss") or ("rk" if head == "rk" else "bt")
    try:
        return canonical_family(str(family))
    except ValueError as exc:
        raise UserError(f"{source}: p2l metadata: {exc}") from None


def predictions_from_frame(
    frame: pl.DataFrame, meta: dict | None, source: str, family: str | None = None
) -> Predictions:
    """Check a predictions table against the contract and pull out its arrays; ``family``
    overrides the metadata's."""
    models = (meta or {}).get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise UserError(
            f"{source}: no p2l metadata with a model list; expected the output of `p2l predict` "
            "(Parquet, or JSONL whose first line is {\"p2l\": {...}})"
        )
    meta = dict(meta)
    family = family_of(meta, source, family)
    if "coefs" not in frame.columns:
        raise UserError(f"{source}: no 'coefs' column; expected the output of `p2l predict`")
    if frame.height == 0:
        raise UserError(f"{source}: no rows (no predictions)")
    coefs = _coefs(frame.get_column("coefs"), len(models), source)
    eta = _eta(frame, family, source) if has_eta(family) else None
    weight = None
    if "weight" in frame.columns:
        weight = frame.get_column("weight").cast(pl.Float64).fill_null(1.0).to_numpy()
    model_dir = meta.get("model") if isinstance(meta.get("model"), str) else None
    return Predictions(
        models=list(models), family=family, head=str(meta.get("head") or "bt"), coefs=coefs,
        eta=eta, frame=frame, source=source, model_dir=model_dir, weight=weight,
    )


def _coefs(column: pl.Series, num_models: int, source: str) -> np.ndarray:
    lengths = column.list.len().fill_null(-1).to_numpy()
    bad = np.flatnonzero(lengths != num_models)
    if bad.size:
        row = int(bad[0])
        raise UserError(
            f"{source}: row {row + 1}: 'coefs' has {max(int(lengths[row]), 0)} values for "
            f"{num_models} models (one per model in the metadata)"
        )
    coefs = column.cast(pl.Array(pl.Float32, num_models)).to_numpy()
    finite = np.isfinite(coefs).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise UserError(f"{source}: row {row + 1}: 'coefs' holds a missing or non-finite value")
    return coefs


def _eta(frame: pl.DataFrame, family: str, source: str) -> np.ndarray:
    if "eta" not in frame.columns:
        raise UserError(f"{source}: the {family} family needs an 'eta' column")
    eta = frame.get_column("eta").cast(pl.Float64).fill_null(np.nan).to_numpy()
    if not np.isfinite(eta).all():
        row = int(np.flatnonzero(~np.isfinite(eta))[0])
        raise UserError(f"{source}: row {row + 1}: 'eta' is missing or not finite")
    return eta


def read_predictions(path: str | Path, family: str | None = None) -> Predictions:
    """A predictions file (or ``-``, stdin) as :class:`Predictions`."""
    frame, meta = read_table_meta(path)
    return predictions_from_frame(frame, meta, source_name(path), family)
