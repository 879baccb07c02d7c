"""Leaderboards from battles (marginal fit) or from P2L predictions (aggregation).

A leaderboard is a table, best first, with the columns ``rank``, ``model``, ``score``
(Arena scale), ``lower``, ``upper`` (the interval, on the same scale), ``votes`` (battles
only: the votes the fit used that involve the model), ``win_rate`` (expected win rate
against a uniformly drawn other model, ties counting half) and ``theta`` (the raw
coefficient). Ranks tie when intervals overlap, as LMArena shows them: a model's rank is
1 + the number of models whose lower bound is above its upper bound.

Inputs are detected from their columns: ``coefs`` (+ p2l metadata) is a predictions file;
``model_a``, ``model_b`` and ``winner`` make a battles file (``p2l prepare`` output or a raw
Arena-schema file).
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from p2l_cli import io
from p2l_cli.contracts.battles import BATTLE_COLUMNS, outcome_column
from p2l_cli.contracts.predictions import Predictions, predictions_from_frame
from p2l_cli.errors import UserError
from p2l_cli.stats import families
from p2l_cli.stats.aggregate import aggregate_fit, bootstrap_aggregate
from p2l_cli.stats.marginal import (
    CI_METHODS,
    arena_scale,
    fit_grouped,
    group_votes,
    percentile_interval,
)
from p2l_cli.stats.pairfit import shift_invariant
from p2l_cli.stats.winrates import win_rates_vs_others

OUTPUT_FORMATS = ("csv", "json", "jsonl", "parquet", "md")
NO_GROUP = "(none)"
DEFAULT_GROUP = "category"  # what --model groups by when --by is not given
# in written tables, not in the terminal's (they fit 80 columns without them)
FILE_ONLY_COLUMNS = ("theta", "models")


# ------------------------------------------------------------------------------ inputs


@dataclass
class Battles:
    """Votes as indices into ``models`` (sorted), one entry per vote."""

    models: list[str]
    winner: np.ndarray
    loser: np.ndarray
    tie_code: np.ndarray
    weight: np.ndarray | None = None
    groups: np.ndarray | None = None

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
               family: str | None = None, by_required: bool = True) -> Battles | Predictions:
    """Read a battles or predictions file, telling them apart by their columns. Without
    ``by_required``, a missing ``by`` column leaves the data ungrouped (``groups`` None)."""
    name = io.source_name(source)
    wanted = {*BATTLE_COLUMNS, "coefs", "eta", "weight"} | ({by} if by else set())
    df, meta, columns = _read_columns(source, fmt, wanted)
    if by and by not in columns:
        if by_required:
            raise UserError(
                f"--by {by}: {name} has no column {by!r} (columns: {_list(columns)})"
            )
        by = None
    if "coefs" in columns:
        return replace(predictions_from_frame(df, meta, name, family), groups=_groups(df, by))
    if all(c in columns for c in BATTLE_COLUMNS):
        return battles_from_frame(df, name, by)
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


def battles_from_frame(df: pl.DataFrame, name: str, by: str | None = None) -> Battles:
    """Votes from Arena-schema columns ``model_a``, ``model_b``, ``winner``."""
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
    return Battles(
        models=models,
        winner=np.where(b_wins, ib, ia),
        loser=np.where(b_wins, ia, ib),
        tie_code=tie_code,
        weight=weight,
        groups=_groups(df, by),
    )


# ------------------------------------------------------------------------ leaderboards


@dataclass
class Leaderboard:
    table: pl.DataFrame
    family: str
    kind: str  # "marginal", "aggregate" or "prompt"
    ci: str
    n: int  # votes (marginal) or prompts (aggregate)
    eta: float | None = None
    group: str | None = None
    meta: dict = field(default_factory=dict)


def rank_with_ties(score: np.ndarray, lower: np.ndarray | None = None,
                   upper: np.ndarray | None = None) -> np.ndarray:
    """1 + the number of models clearly better: whose lower bound exceeds this model's upper
    bound, or without intervals, whose score is higher. An undefined bound (NaN) is taken
    as unbounded: such a model is never clearly better or worse on that side."""
    if lower is None or upper is None:
        lower = upper = np.asarray(score, dtype=np.float64)
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    lower = np.where(np.isnan(lower), -np.inf, lower)
    upper = np.where(np.isnan(upper), np.inf, upper)
    order = np.sort(lower)
    return 1 + len(order) - np.searchsorted(order, upper, side="right")


def build_table(models, theta, family, eta=None, lower=None, upper=None, votes=None):
    """The leaderboard table, best first (theta and its bounds on the raw scale)."""
    theta = np.asarray(theta, dtype=np.float64)
    columns = {
        "rank": rank_with_ties(theta, lower, upper),
        "model": list(models),
        "score": arena_scale(theta),
        "lower": arena_scale(lower) if lower is not None else np.full(len(theta), np.nan),
        "upper": arena_scale(upper) if upper is not None else np.full(len(theta), np.nan),
    }
    if votes is not None:
        columns["votes"] = np.asarray(votes, dtype=np.int64)
    columns["win_rate"] = win_rates_vs_others(theta, eta, family)
    columns["theta"] = theta
    table = pl.DataFrame(columns).with_columns(pl.col("lower", "upper").fill_nan(None))
    return table.sort(["score", "model"], descending=[True, False])


def marginal_leaderboard(
    battles: Battles, family: str = "bt-tie", ci: str = "sandwich", rounds: int = 100,
    seed: int = 0, reweight: bool = False, level: float = 0.95,
) -> Leaderboard:
    family = families.canonical_family(family)
    votes = group_votes(battles.winner, battles.loser, battles.tie_code, len(battles.models),
                        family, battles.weight, reweight)
    if votes.count.sum() == 0:
        raise UserError("no votes to fit" + (" (family bt drops ties)" if family == "bt" else ""))
    fit = fit_grouped(votes, family, ci, rounds, seed, level)
    support = vote_support(votes, family, len(battles.models))
    lower, upper = support.bounds(fit.lower, fit.upper)
    table = build_table(battles.models, fit.theta, family, fit.eta, lower, upper,
                        votes.model_votes)
    return Leaderboard(table, family, "marginal", ci, fit.n_votes, fit.eta,
                       meta={"reweight": reweight, "level": level, "nll": fit.nll,
                             "warnings": support.warnings(battles.models)})


@dataclass
class VoteSupport:
    """Where the votes cannot place a model (its maximum-likelihood score does not exist):
    it never won (the score runs to -infinity), never lost (+infinity), or has no kept vote;
    or the models split into groups that never meet (their relative scores are unknown)."""

    no_wins: np.ndarray  # bool [M]
    no_losses: np.ndarray  # bool [M]
    no_votes: np.ndarray  # bool [M]
    components: list[np.ndarray]  # indices per connected group of models, largest first

    def bounds(self, lower: np.ndarray | None, upper: np.ndarray | None):
        """The intervals with what the votes do not support replaced: -inf below a model
        that never won, +inf above one that never lost, undefined (NaN) on the other side
        (a Wald or bootstrap bound at a boundary means nothing), and undefined for models
        outside the largest connected group."""
        if lower is None or upper is None:
            return lower, upper
        lower, upper = np.array(lower, np.float64), np.array(upper, np.float64)
        lower[self.no_losses] = np.nan
        upper[self.no_wins] = np.nan
        lower[self.no_wins] = -np.inf
        upper[self.no_losses] = np.inf
        unplaced = self.no_votes.copy()
        for component in self.components[1:]:
            unplaced[component] = True
        lower[unplaced] = upper[unplaced] = np.nan
        return lower, upper

    def warnings(self, models: list[str]) -> list[str]:
        out = []
        never_won = self.no_wins & ~self.no_losses & ~self.no_votes
        never_lost = self.no_losses & ~self.no_wins & ~self.no_votes
        if never_won.any():
            out.append(f"{_names(models, never_won)} never won a vote: the maximum-likelihood "
                       "score is -infinity, the interval is unbounded below and the score "
                       "shown only reflects the fit's small ridge penalty")
        if never_lost.any():
            out.append(f"{_names(models, never_lost)} never lost a vote: the maximum-likelihood "
                       "score is +infinity, the interval is unbounded above and the score "
                       "shown only reflects the fit's small ridge penalty")
        if self.no_votes.any():
            out.append(f"{_names(models, self.no_votes)}: no vote that the fit kept (this "
                       "family drops ties): score and interval undefined")
        if len(self.components) > 1:
            groups = " | ".join(
                ", ".join(models[i] for i in c[:6]) + (", ..." if len(c) > 6 else "")
                for c in self.components[:4]
            ) + (" | ..." if len(self.components) > 4 else "")
            out.append(f"the models form {len(self.components)} groups that never meet in a "
                       f"vote ({groups}): scores are not comparable across groups; intervals "
                       "outside the largest group are undefined")
        return out


def _names(models: list[str], mask: np.ndarray, limit: int = 8) -> str:
    names = [models[i] for i in np.flatnonzero(mask)]
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)"
                                        if len(names) > limit else "")
    return f"{len(names)} model{'s' if len(names) > 1 else ''} ({shown})"


def vote_support(votes, family: str, num_models: int) -> VoteSupport:
    """Which models the votes can place. A decisive vote is a win for one model and a loss
    for the other; a tie (in the families that keep ties) bounds both models from both
    sides; in grk a both-bad tie pushes both models down, like a loss."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = votes.rows
    kept = np.asarray(votes.weight) > 0
    winner, loser = rows.winner[kept], rows.loser[kept]
    code = rows.tie_code[kept]
    decisive = code == families.DECISIVE
    loss_for_both = (code == families.BOTH_BAD_CODE) & (family == "grk")
    both_ways = ~decisive & ~loss_for_both

    def count(index, mask):
        return np.bincount(index[mask], minlength=num_models)

    wins = count(winner, decisive) + count(winner, both_ways) + count(loser, both_ways)
    losses = (count(loser, decisive) + count(winner, both_ways) + count(loser, both_ways)
              + count(winner, loss_for_both) + count(loser, loss_for_both))
    voted = (wins + losses) > 0
    graph = coo_matrix((np.ones(len(winner)), (winner, loser)), shape=(num_models,) * 2)
    _, labels = connected_components(graph, directed=False)
    components = [np.flatnonzero(labels == label) for label in np.unique(labels[voted])]
    components.sort(key=lambda c: (-len(c), int(c[0])))
    return VoteSupport(no_wins=voted & (wins == 0), no_losses=voted & (losses == 0),
                       no_votes=~voted, components=components)


def _centre(theta: np.ndarray, family: str) -> np.ndarray:
    return theta - theta.mean() if shift_invariant(family) else theta


def aggregate_leaderboard(
    preds: Predictions, ci: str = "bootstrap", rounds: int = 100, seed: int = 0,
    level: float = 0.95,
) -> Leaderboard:
    """The aggregate of the prompts' leaderboards; intervals by bootstrap over prompts."""
    if ci == "sandwich":
        raise UserError("--ci sandwich needs votes; for predictions use --ci bootstrap "
                        "(resampling prompts) or --ci none")
    fit = aggregate_fit(preds.coefs, preds.eta, preds.family, preds.weight)
    lower = upper = None
    if ci == "bootstrap" and len(preds.coefs) > 1:
        boot = bootstrap_aggregate(preds.coefs, preds.eta, preds.family, preds.weight, rounds,
                                   seed)
        lower, upper = percentile_interval(boot, level)
    table = build_table(preds.models, fit.theta, preds.family, fit.eta, lower, upper)
    return Leaderboard(table, preds.family, "aggregate", ci if lower is not None else "none",
                       fit.n_prompts, fit.eta,
                       meta={"level": level, "cross_entropy": fit.cross_entropy})


def prompt_table(models: list[str], coefs: np.ndarray, eta: float | None,
                 family: str) -> pl.DataFrame:
    """One prompt's own leaderboard table: its coefficients, centred unless the family is
    ``grk`` (whose coefficients are absolute: a both-bad tie depends on their level)."""
    theta = _centre(np.asarray(coefs, dtype=np.float64), family)
    return build_table(models, theta, family, eta)


def prompt_leaderboard(preds: Predictions, index: int) -> Leaderboard:
    """The leaderboard of the prompt at ``index`` (negative counts from the end)."""
    n = len(preds.coefs)
    if not -n <= index < n:
        raise UserError(f"--prompt-index {index}: the input has {n} prompts (0 to {n - 1})")
    eta = None if preds.eta is None else float(preds.eta[index])
    table = prompt_table(preds.models, preds.coefs[index], eta, preds.family)
    return Leaderboard(table, preds.family, "prompt", "none", 1, eta,
                       meta={"prompt_index": index % n})


def prompt_rows(models: list[str], coefs: np.ndarray, eta: float | None,
                family: str) -> list[dict]:
    """:func:`prompt_table` as rows, best first, with each model's raw coefficient
    (``coef``) beside its score and win rate: what ``predict --prompt`` and ``serve`` show."""
    coef_of = dict(zip(models, np.asarray(coefs, dtype=np.float64).tolist()))
    return [
        {"rank": row["rank"], "model": row["model"], "coef": coef_of[row["model"]],
         "score": row["score"], "win_rate": row["win_rate"]}
        for row in prompt_table(models, coefs, eta, family).iter_rows(named=True)
    ]


def build_leaderboard(data: Battles | Predictions, *, family: str | None = None,
                      ci: str | None = None, rounds: int = 100, seed: int = 0,
                      reweight: bool = False, prompt_index: int | None = None,
                      level: float = 0.95) -> Leaderboard:
    """The leaderboard a file asks for: marginal for battles, aggregate for predictions
    (or one prompt's with ``prompt_index``, or when there is a single prompt)."""
    if ci is not None and ci not in CI_METHODS:
        raise UserError(f"--ci {ci}: expected one of {', '.join(CI_METHODS)}")
    if isinstance(data, Battles):
        if prompt_index is not None:
            raise UserError("--prompt-index needs a predictions file (with coefs), not battles")
        try:
            family = families.canonical_family(family or "bt-tie")
        except ValueError as exc:
            raise UserError(f"--family: {exc}") from None
        return marginal_leaderboard(data, family, ci or "sandwich", rounds, seed, reweight, level)
    if reweight:
        raise UserError("--reweight applies to battles, not to predictions")
    if prompt_index is not None or len(data.coefs) == 1:
        return prompt_leaderboard(data, prompt_index or 0)
    return aggregate_leaderboard(data, ci or "bootstrap", rounds, seed, level)


# ----------------------------------------------------------------------- views of groups


def group_names(groups: np.ndarray) -> list[str]:
    return sorted(set(groups.tolist()))


def grouped_leaderboards(data: Battles | Predictions, **options) -> dict[str, Leaderboard]:
    """One leaderboard per value of the ``--by`` column (groups too small to fit skipped)."""
    out = {}
    for name in group_names(data.groups):
        part = data.subset(data.groups == name)
        if isinstance(part, Battles) and len(part.models) < 2:
            continue
        try:
            board = build_leaderboard(part, **options)
        except UserError as exc:
            if "no votes" in str(exc):
                continue
            raise
        out[name] = replace(board, group=name)
    return out


def long_table(boards: dict[str, Leaderboard], by: str) -> pl.DataFrame:
    """All groups' leaderboards stacked, with the group in the first column."""
    frames = [b.table.select(pl.lit(name).alias(by), pl.all()) for name, b in boards.items()]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def rank_matrix(boards: dict[str, Leaderboard], overall: Leaderboard | None = None,
                top: int | None = None) -> pl.DataFrame:
    """Models by groups, each cell the model's rank in that group (empty if absent)."""
    if overall is not None:
        order = overall.table.get_column("model").to_list()
        columns = {"model": order, "overall": overall.table.get_column("rank").to_list()}
    else:
        order = sorted({m for b in boards.values() for m in b.table.get_column("model")})
        columns = {"model": order}
    for name, board in boards.items():
        ranks = dict(zip(board.table.get_column("model"), board.table.get_column("rank")))
        columns[name] = [ranks.get(model) for model in order]
    matrix = pl.DataFrame(columns, schema_overrides={k: pl.Int64 for k in columns
                                                     if k != "model"})
    return matrix.head(top) if top else matrix


def model_view(boards: dict[str, Leaderboard], model: str, by: str) -> pl.DataFrame:
    """One model's row in every group, where it does best first."""
    rows = []
    for name, board in boards.items():
        row = board.table.filter(pl.col("model") == model)
        if row.height:
            rows.append(row.select(pl.lit(name).alias(by), pl.lit(board.table.height)
                                   .alias("models"), pl.all().exclude("model")))
    if not rows:
        known = sorted({m for b in boards.values() for m in b.table.get_column("model")})
        raise UserError(f"--model {model}: not in any group{_did_you_mean(model, known)}")
    table = pl.concat(rows, how="vertical_relaxed")
    return table.sort(["rank", "score"], descending=[False, True])


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


# ---------------------------------------------------------------------------- anchoring


def parse_anchor(text: str) -> tuple[str, float]:
    model, sep, value = text.rpartition("=")
    try:
        if not sep or not model:
            raise ValueError
        return model, float(value)
    except ValueError:
        raise UserError(f"--anchor {text!r}: expected MODEL=VALUE, e.g. gpt-4o=1200") from None


def anchor_table(table: pl.DataFrame, model: str, value: float) -> pl.DataFrame:
    """Shift scores and bounds so that ``model`` scores ``value`` (theta stays centred)."""
    row = table.filter(pl.col("model") == model)
    if row.height == 0:
        known = table.get_column("model").to_list()
        raise UserError(f"--anchor {model}: no such model{_did_you_mean(model, known)}")
    shift = value - float(row.get_column("score")[0])
    return table.with_columns(pl.col("score", "lower", "upper") + shift)


# ------------------------------------------------------------------------------- output


def output_format(dest: str, fmt: str | None) -> str:
    if fmt:
        fmt = fmt.lower().lstrip(".")
        if fmt not in OUTPUT_FORMATS:
            raise UserError(f"--format {fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    if dest == io.STDIO:
        return "jsonl"
    if Path(dest).suffix.lower() in (".md", ".markdown"):
        return "md"
    try:
        return io.format_of(dest)
    except UserError:
        raise UserError(f"{dest}: cannot tell the output format from the extension; use "
                        f"--format ({', '.join(OUTPUT_FORMATS)})") from None


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "win_rate":
        return f"{value:.3f}"
    if column == "theta":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def to_markdown(table: pl.DataFrame, title: str | None = None) -> str:
    header = list(table.columns)
    numeric = [table.schema[c].is_numeric() for c in header]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    for row in table.iter_rows():
        cells = [_cell(v, c).replace("|", "\\|") for v, c in zip(row, header)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_output(table: pl.DataFrame, dest: str, fmt: str | None, meta: dict,
                 title: str | None = None) -> None:
    fmt = output_format(dest, fmt)
    if fmt == "md":
        io.write_text(dest, to_markdown(table, title))
    else:
        io.write_table(table, dest, fmt, meta=meta if fmt in ("json", "parquet") else None)


def leaderboard_json(board: Leaderboard) -> dict:
    """The ``leaderboard.json`` object a model folder carries (see the brief)."""
    rows = board.table.select("rank", "model", "theta", "score").to_dicts()
    return {"family": board.family, "rows": rows}


def describe(board: Leaderboard) -> str:
    what = {"marginal": f"{board.n:,} votes", "aggregate": f"{board.n:,} prompts",
            "prompt": f"prompt {board.meta.get('prompt_index', 0)}"}[board.kind]
    parts = [board.family, what, f"{board.table.height} models"]
    if board.ci != "none":
        parts.append(f"{board.meta.get('level', 0.95):.0%} {board.ci} intervals")
    if board.eta is not None:
        parts.append(f"eta {board.eta:.3f}")
    return ", ".join(parts)


def terminal_columns(table: pl.DataFrame) -> list[str]:
    """The columns worth showing on a terminal: not the raw theta (files keep it), nor
    columns with no value at all (a single prompt's missing intervals)."""
    return [c for c in table.columns
            if c not in FILE_ONLY_COLUMNS and table.get_column(c).null_count() < table.height]


def render(table: pl.DataFrame, title: str):
    """A rich table for the terminal."""
    from rich.table import Table

    table = table.select(terminal_columns(table))
    out = Table(title=title, title_justify="left", header_style="bold")
    for column in table.columns:
        numeric = table.schema[column].is_numeric()
        widest = 0 if numeric else max((len(str(v)) for v in table.get_column(column)), default=0)
        out.add_column(column, justify="right" if numeric else "left",
                       min_width=min(widest, 40) or None)
    for row in table.iter_rows():
        out.add_row(*(_cell(v, c) for v, c in zip(row, table.columns)))
    return out


def plot(boards: dict[str, pl.DataFrame], path: str, title: str) -> None:
    """Scores with their intervals, one panel per table, best at the top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'p2l-cli[plot]'") from None
    panels = list(boards.items())
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    height = max(3.0, 0.28 * max(t.height for _, t in panels) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, height * rows), squeeze=False)
    for ax, (name, table) in zip(axes.ravel(), panels):
        labels = table.get_column(table.columns[0] if "model" not in table.columns
                                  else "model").to_list()
        score = table.get_column("score").to_numpy()
        y = np.arange(len(score))[::-1]
        lower = table.get_column("lower").fill_null(float("nan")).to_numpy()
        upper = table.get_column("upper").fill_null(float("nan")).to_numpy()
        err = np.vstack([score - lower, upper - score])
        has_err = np.isfinite(err).all()
        ax.errorbar(score, y, xerr=err if has_err else None, fmt="o", color="tab:blue",
                    ecolor="tab:gray", capsize=3, markersize=4)
        ax.set_yticks(y, [str(v) for v in labels], fontsize=8)
        ax.set_xlabel("score (Arena scale)")
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the command


@dataclass
class Request:
    """What ``p2l leaderboard`` was asked for (the command's options, validated)."""

    source: str
    input_format: str | None = None
    output: str | None = None
    output_format: str | None = None
    family: str | None = None
    ci: str | None = None
    rounds: int = 100
    seed: int = 0
    level: float = 0.95
    anchor: str | None = None
    reweight: bool = False
    by: str | None = None
    model: str | None = None
    prompt_index: int | None = None
    top: int | None = None
    plot_path: str | None = None


def _check(request: Request) -> None:
    if request.rounds < 2:
        raise UserError(f"--bootstrap-rounds {request.rounds}: need at least 2")
    if not 0 < request.level < 1:
        raise UserError(f"--level {request.level}: expected a number between 0 and 1")
    if request.top is not None and request.top < 1:
        raise UserError(f"--top {request.top}: expected a positive number")
    if request.prompt_index is not None and (request.by or request.model):
        raise UserError(f"--prompt-index and --{'by' if request.by else 'model'} cannot be "
                        "combined")
    if request.output:
        output_format(request.output, request.output_format)
    outputs = {"--output/-o": request.output, "--plot": request.plot_path}
    io.refuse_overwriting_inputs(outputs, {"INPUT": request.source})
    for option, path in outputs.items():
        io.check_writable(path, option)


def run(request: Request, console) -> None:
    """Build the leaderboard(s), print them on ``console`` and write/plot what was asked."""
    _check(request)
    anchor = parse_anchor(request.anchor) if request.anchor else None
    if request.model and not request.by:
        data = load_input(request.source, request.input_format, DEFAULT_GROUP, request.family,
                          by_required=False)
        if data.groups is None:
            raise UserError(f"--model shows one model across groups; add --by COLUMN (the "
                            f"input has no {DEFAULT_GROUP!r} column)")
        request = replace(request, by=DEFAULT_GROUP)
    else:
        data = load_input(request.source, request.input_format, request.by, request.family)
    options = {"family": request.family, "ci": request.ci, "rounds": request.rounds,
               "seed": request.seed, "reweight": request.reweight,
               "prompt_index": request.prompt_index, "level": request.level}
    overall = build_leaderboard(data, **options)
    _warn(console, overall)
    if anchor:
        overall.table = anchor_table(overall.table, *anchor)
    head = describe(overall)
    if not request.by:
        table = overall.table.head(request.top) if request.top else overall.table
        console.print(render(table, f"Leaderboard: {head}"))
        _finish(request, table, {"leaderboard": overall.table}, overall, head)
        return

    boards = grouped_leaderboards(data, **options)
    if not boards:
        raise UserError(f"--by {request.by}: no group has enough votes for a leaderboard")
    if anchor:
        for board in boards.values():
            if anchor[0] in board.table.get_column("model").to_list():
                board.table = anchor_table(board.table, *anchor)
    if request.model:
        for name, board in boards.items():
            _warn(console, board, f"{request.by} = {name}: ")
        table = model_view(boards, request.model, request.by)
        sizes = sorted(set(table.get_column("models").to_list()))
        among = f"{sizes[0]} models" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]} models"
        console.print(render(table, f"{request.model} by {request.by}: {overall.family}, "
                                    f"ranks of {among}"))
        _finish(request, table, {request.model: table}, overall, head)
        return
    for name, board in boards.items():
        table = board.table.head(request.top) if request.top else board.table
        _warn(console, board, f"{request.by} = {name}: ")
        console.print(render(table, f"{request.by} = {name}: {describe(board)}"))
    matrix = rank_matrix(boards, overall, request.top)
    console.print(render(matrix, f"Rank by {request.by} (overall: {head})"))
    stacked = long_table({k: replace(b, table=b.table.head(request.top) if request.top
                                     else b.table) for k, b in boards.items()}, request.by)
    panels = {name: (b.table.head(request.top) if request.top else b.table)
              for name, b in boards.items()}
    _finish(request, stacked, panels, overall, head)


def _warn(console, board: Leaderboard, prefix: str = "") -> None:
    """What the votes cannot support, said on stderr before the table (see VoteSupport)."""
    from rich.markup import escape

    for message in board.meta.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(prefix + message)}", soft_wrap=True)


def _finish(request: Request, table: pl.DataFrame, panels: dict[str, pl.DataFrame],
            overall: Leaderboard, head: str) -> None:
    meta = {"family": overall.family, "kind": overall.kind, "ci": overall.ci,
            "level": request.level, "n": overall.n, "eta": overall.eta,
            "by": request.by, "anchor": request.anchor,
            "warnings": list(overall.meta.get("warnings", []))}
    if request.output:
        write_output(table, request.output, request.output_format, meta, title=head)
    if request.plot_path:
        plot(panels, request.plot_path, head)
