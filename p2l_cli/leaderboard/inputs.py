"""Reading a leaderboard's input: a battles file (votes as model indices) or a predictions
file (:mod:`p2l_cli.contracts.predictions`), told apart by their columns."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from p2l_cli import io
from p2l_cli.contracts.battles import BATTLE_COLUMNS, outcome_column
from p2l_cli.contracts.predictions import Predictions, predictions_from_frame
from p2l_cli.contracts.style import STYLE_COLUMNS, style_from_frame
from p2l_cli.errors import UserError

NO_GROUP = "(none)"


@dataclass
class Battles:
    """Votes as indices into ``models`` (sorted), one entry per vote."""

    models: list[str]
    winner: np.ndarray
    loser: np.ndarray
    tie_code: np.ndarray
    weight: np.ndarray | None = None
    groups: np.ndarray | None = None
    # style control: relative style differences (model_a over model_b) [votes, features],
    # their names, and +1 where the winner (a tie's first model) is model_a, -1 otherwise
    style: np.ndarray | None = None
    style_names: list[str] | None = None
    sign: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> Battles:
        """The votes under ``mask``, re-indexed to the models they involve."""
        winner, loser = self.winner[mask], self.loser[mask]
        used = np.union1d(winner, loser)
        remap = np.full(len(self.models), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return Battles(
            models=[self.models[i] for i in used],
            winner=remap[winner],
            loser=remap[loser],
            tie_code=self.tie_code[mask],
            weight=None if self.weight is None else self.weight[mask],
            style=None if self.style is None else self.style[mask],
            style_names=self.style_names,
            sign=None if self.sign is None else self.sign[mask],
        )


def _read_columns(
    source: str, fmt: str | None, wanted: set[str]
) -> tuple[pl.DataFrame, dict, list[str]]:
    """Read a table and its p2l metadata; for Parquet files only the columns we use."""
    name = io.source_name(source)
    if source != io.STDIO or fmt:
        fmt = io.format_of(source, fmt, option="--input-format")
    if source != io.STDIO and fmt == "parquet":
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{source}: no such file")
        try:
            schema = pq.read_schema(path)
            if "coefs" in schema.names:
                wanted = wanted | {"eta"}
            columns = [c for c in schema.names if c in wanted]
            table = _read_parquet(path, columns, schema)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{name}: not a readable Parquet file ({exc})") from None
        raw = (schema.metadata or {}).get(io.METADATA_KEY.encode())
        meta = json.loads(raw) if raw else {}
        return pl.from_arrow(table), meta, schema.names
    df, meta = io.read_table_meta(source, fmt)
    return df, meta or {}, df.columns


def _read_parquet(path: Path, columns: list[str], schema: pa.Schema) -> pa.Table:
    """The columns of one Parquet file. Text columns (model names, outcomes, groups: few
    distinct values) come dictionary-encoded, which polars reads as categoricals without
    building a string per row."""
    text = [c for c in columns
            if pa.types.is_string(schema.field(c).type)
            or pa.types.is_large_string(schema.field(c).type)]
    with pq.ParquetFile(path, read_dictionary=text) as parquet:
        return parquet.read(columns=columns)


def load_input(source: str, fmt: str | None = None, by: str | None = None,
               family: str | None = None, by_required: bool = True,
               style: bool = False) -> Battles | Predictions:
    """Read a battles or predictions file, telling them apart by their columns. Without
    ``by_required``, a missing ``by`` column leaves the data ungrouped (``groups`` None).
    With ``style``, battles must carry style columns (:mod:`p2l_cli.contracts.style`)."""
    name = io.source_name(source)
    wanted = {*BATTLE_COLUMNS, "coefs", "eta", "weight"} | ({by} if by else set())
    if style:
        wanted |= set(STYLE_COLUMNS)
    df, meta, columns = _read_columns(source, fmt, wanted)
    if by and by not in columns:
        if by_required:
            raise UserError(
                f"--by {by}: {name} has no column {by!r} (columns: {_list(columns)})"
            )
        by = None
    if "coefs" in columns:
        if style:
            raise UserError(f"--style-control: {name} is a predictions file; style control "
                            "fits battles that carry style columns")
        return replace(predictions_from_frame(df, meta, name, family), groups=_groups(df, by))
    if all(c in columns for c in BATTLE_COLUMNS):
        return battles_from_frame(df, name, by, style)
    raise UserError(
        f"{name}: neither a battles file (needs columns model_a, model_b, winner) nor a "
        f"predictions file (needs coefs); found columns: {_list(columns)}"
    )


def _list(columns, limit: int = 12) -> str:
    columns = list(columns)
    shown = ", ".join(columns[:limit]) or "none"
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _first_bad_row(mask: pl.Series) -> int:
    return int(mask.arg_true()[0]) + 1


def _groups(df: pl.DataFrame, by: str | None) -> np.ndarray | None:
    if not by:
        return None
    return df.get_column(by).cast(pl.String).fill_null(NO_GROUP).to_numpy()


def _categorical(series: pl.Series) -> pl.Series:
    """``series`` as a categorical of its text values (a no-op for Parquet text columns)."""
    if series.dtype == pl.Categorical:
        return series
    return series.cast(pl.String).cast(pl.Categorical)


def _text_codes(series: pl.Series) -> tuple[np.ndarray, list[str]]:
    """A categorical column without nulls as (each row's index into ``values``, ``values``:
    its distinct texts), from the categorical's integer ids rather than its strings."""
    distinct = series.unique()
    ids = distinct.to_physical().to_numpy().astype(np.int64)
    position = np.zeros(ids.max() + 1, dtype=np.int64)
    position[ids] = np.arange(len(ids))
    codes = position[series.to_physical().to_numpy()]
    return codes, distinct.cast(pl.String).to_list()


def _recode(codes: np.ndarray, values: list[str], order: list[str]) -> np.ndarray:
    """``codes`` into ``values`` as indices into ``order`` (which holds every value)."""
    index = {value: i for i, value in enumerate(order)}
    return np.array([index[value] for value in values], dtype=np.int64)[codes]


def battles_from_frame(df: pl.DataFrame, name: str, by: str | None = None,
                       style: bool = False) -> Battles:
    """Votes from Arena-schema columns ``model_a``, ``model_b``, ``winner`` (and, with
    ``style``, the relative differences of the style columns)."""
    if df.height == 0:
        raise UserError(f"{name}: no battles")
    a = _categorical(df.get_column("model_a"))
    b = _categorical(df.get_column("model_b"))
    for column, series in (("model_a", a), ("model_b", b)):
        if series.null_count():
            raise UserError(f"{name}: row {_first_bad_row(series.is_null())}: {column} is empty")
    b_wins, tie_code = outcome_column(df.get_column("winner"), a, b, name)
    (codes_a, values_a), (codes_b, values_b) = _text_codes(a), _text_codes(b)
    models = sorted(set(values_a) | set(values_b))
    ia, ib = _recode(codes_a, values_a, models), _recode(codes_b, values_b, models)
    same = np.flatnonzero(ia == ib)
    if len(same):
        raise UserError(f"{name}: row {same[0] + 1}: model_a and model_b are the same")
    weight = None
    if "weight" in df.columns:
        w = df.get_column("weight").cast(pl.Float64, strict=False)
        bad = w.is_null() | w.is_nan() | (w < 0)
        if bad.any():
            raise UserError(f"{name}: row {_first_bad_row(bad)}: weight must be a number >= 0")
        weight = w.to_numpy()
    features, names = style_from_frame(df, name) if style else (None, None)
    return Battles(
        models=models,
        winner=np.where(b_wins, ib, ia),
        loser=np.where(b_wins, ia, ib),
        tie_code=tie_code,
        weight=weight,
        groups=_groups(df, by),
        style=features,
        style_names=names,
        sign=np.where(b_wins, -1, 1) if style else None,
    )
