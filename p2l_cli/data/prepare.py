"""`p2l prepare`: vote files in, the battles contract out, in bounded memory.

Three passes, so that memory grows with the number of battles only by a few small
columns, never by the prompts:

1. stream every input record by record: parse it, drop what cannot be used (counting
   why), apply the row filters, and append the battle to a staging Parquet file together
   with a key for de-duplication and a key for its prompt text;
2. read back only the small columns (keys, model names, time) to de-duplicate, drop
   models with too few battles, fix the sorted model list and choose the validation rows;
3. stream the staging file again, encode the labels against the model list, and write
   ``train.parquet`` and ``val.parquet``.

Everything is written into a staging folder inside ``DATA_DIR`` and moved into place at
the end, so a failed run leaves the previous outputs as they were.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from p2l_cli import __version__
from p2l_cli.contracts.style import STYLE_COLUMNS
from p2l_cli.data.formats import (
    ARENA_ANSWERS,
    FILE_TYPES,
    SCHEMAS,
    BadRow,
    Battle,
    Columns,
    RecordParser,
    RecordStream,
    check_columns,
    detect_schema,
    expand_inputs,
    open_records,
    style_source_columns,
)
from p2l_cli.errors import UserError
from p2l_cli.io import write_json

OUTPUTS = ("train.parquet", "val.parquet", "models.json", "prepare.json")
SPLITS = ("random", "chrono")
# progress(description, total) -> advance(rows)
Progress = Callable[[str, int | None], Callable[[int], None]]

# Why a record was not kept, in the order the checks run (a record counts once).
DROP_REASONS = {
    "malformed": "malformed rows skipped (--skip-bad-rows)",
    "empty_prompt": "empty prompt",
    "unknown_winner": "unknown winner",
    "same_model": "same model on both sides",
    "not_anonymous": "not anonymous (--anony-only)",
    "language": "language not selected (--language)",
    "model_not_allowed": "model not in --models",
    "duplicate": "duplicate battle",
    "prompt_in_val": "prompt also in --val-file",
    "few_battles": "model below --min-battles-per-model",
}

STAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.list_(pa.string())),
        ("model_a", pa.string()),
        ("model_b", pa.string()),
        ("winner", pa.string()),
        ("tstamp", pa.float64()),
        ("language", pa.string()),
        ("category", pa.string()),
        ("weight", pa.float64()),
        *((column, pa.float64()) for column in STYLE_COLUMNS),
        ("_key", pa.binary(16)),
        ("_pkey", pa.int64()),
        ("_val", pa.bool_()),
        ("_src", pa.int32()),
        ("_pos", pa.int64()),
    ]
)
OPTIONAL = {
    "weight": pa.float64(),
    "language": pa.string(),
    "category": pa.string(),
    "tstamp": pa.float64(),
    **{column: pa.float64() for column in STYLE_COLUMNS},
}


@dataclass
class PrepareOptions:
    schema: str | None = None  # arena | kaggle | generic; None = detect per file
    file_type: str | None = None  # parquet | jsonl | csv | json; None = from the extension
    columns: Columns = field(default_factory=Columns)
    anony_only: bool = False
    languages: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    min_battles_per_model: int = 0
    dedupe: bool = True
    val_fraction: float = 0.05
    val_split: str = "random"
    val_file: str | None = None
    seed: int = 0
    skip_bad_rows: bool = False
    batch_rows: int = 20_000

    def check(self) -> None:
        if self.schema is not None and self.schema not in SCHEMAS:
            raise UserError(f"--format {self.schema!r}: expected one of {', '.join(SCHEMAS)}")
        if self.file_type is not None and self.file_type not in FILE_TYPES:
            raise UserError(
                f"--input-format {self.file_type!r}: expected one of {', '.join(FILE_TYPES)}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if self.val_split not in SPLITS:
            raise UserError(f"--val-split {self.val_split!r}: expected random or chrono")
        if self.min_battles_per_model < 0:
            raise UserError("--min-battles-per-model: must be 0 or more")
        if self.batch_rows < 1:
            raise UserError("--batch-rows: must be at least 1")

    def filter_reason(self, battle: Battle) -> str | None:
        """The row filters' reason to drop a parsed battle, if any."""
        if self.anony_only and battle.anony is False:
            return "not_anonymous"
        if self.languages and (battle.language or "").lower() not in self._languages:
            return "language"
        if self.models and not (battle.model_a in self._models and battle.model_b in self._models):
            return "model_not_allowed"
        return None

    def __post_init__(self) -> None:
        self._languages = {lang.lower() for lang in self.languages}
        self._models = set(self.models)


@dataclass
class PrepareReport:
    inputs: list[dict] = field(default_factory=list)
    rows_read: int = 0
    drops: Counter = field(default_factory=Counter)
    bad_rows: list[str] = field(default_factory=list)  # the first few, for the user
    train: int = 0
    val: int = 0
    models: list[str] = field(default_factory=list)
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)
    winners: dict[str, int] = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count_bad(self, message: str) -> None:
        self.drops["malformed"] += 1
        if len(self.bad_rows) < 5:
            self.bad_rows.append(message)

    def to_json(self, options: PrepareOptions) -> dict:
        return {
            "p2l_version": __version__,
            "inputs": self.inputs,
            "rows_read": self.rows_read,
            "drops": {reason: int(self.drops.get(reason, 0)) for reason in DROP_REASONS},
            "dropped": int(sum(self.drops.values())),
            "battles": self.train + self.val,
            "train": self.train,
            "val": self.val,
            "num_models": len(self.models),
            "winners": self.winners,
            "per_model": self.per_model,
            "split": self.split,
            "columns": self.columns,
            "filters": {
                "anony_only": options.anony_only,
                "languages": list(options.languages),
                "models": list(options.models),
                "min_battles_per_model": options.min_battles_per_model,
                "dedupe": options.dedupe,
            },
            "bad_rows": self.bad_rows,
            "warnings": self.warnings,
        }


# --------------------------------------------------------------------------------- keys


def battle_key(battle: Battle) -> bytes:
    """Same key, same battle: the id from the data (if any), prompt, models, winner, time."""
    fields = (
        "" if battle.id is None else battle.id,
        "\x1e".join(battle.prompt),
        battle.model_a,
        battle.model_b,
        battle.winner,
        "" if battle.tstamp is None else repr(battle.tstamp),
    )
    return hashlib.blake2b("\x1f".join(fields).encode("utf-8"), digest_size=16).digest()


def prompt_key(prompt: list[str]) -> int:
    """A 64-bit key of the prompt text (all user turns), for splitting by prompt."""
    digest = hashlib.blake2b("\x1e".join(prompt).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


# --------------------------------------------------------------------- pass 1: ingest


class _Stage:
    """The staging Parquet file of parsed battles."""

    def __init__(self, path: Path):
        self.path = path
        self.writer = pq.ParquetWriter(path, STAGE_SCHEMA, compression="zstd")
        self.rows = 0
        self.seen_optional: set[str] = set()

    def write(self, kept: list[tuple[int, Battle]], val: bool, source: int) -> None:
        if not kept:
            return
        battles = [b for _, b in kept]
        keys = [battle_key(b) for b in battles]
        columns = {
            "id": [b.id if b.id is not None else k.hex()[:16] for b, k in zip(battles, keys)],
            "prompt": [b.prompt for b in battles],
            "model_a": [b.model_a for b in battles],
            "model_b": [b.model_b for b in battles],
            "winner": [b.winner for b in battles],
            "tstamp": [b.tstamp for b in battles],
            "language": [b.language for b in battles],
            "category": [b.category for b in battles],
            "weight": [b.weight for b in battles],
            **_style_columns(battles),
            "_key": keys,
            "_pkey": [prompt_key(b.prompt) for b in battles],
            "_val": [val] * len(battles),
            "_src": [source] * len(battles),
            "_pos": [p for p, _ in kept],
        }
        for name in OPTIONAL:
            if name not in self.seen_optional and any(v is not None for v in columns[name]):
                self.seen_optional.add(name)
        self.writer.write_batch(pa.record_batch(columns, schema=STAGE_SCHEMA))
        self.rows += len(battles)

    def close(self) -> None:
        self.writer.close()


def _style_columns(battles: list[Battle]) -> dict[str, list[float | None]]:
    """The style values of ``battles`` by column; nulls for a battle without them."""
    return {
        column: [b.style[i] if b.style else None for b in battles]
        for i, column in enumerate(STYLE_COLUMNS)
    }


def _open_input(path: str, options: PrepareOptions) -> tuple[RecordStream, str, RecordParser]:
    stream = open_records(path, options.file_type)
    schema = options.schema or detect_schema(stream.columns, options.columns, stream.name)
    columns = options.columns.resolve(schema, stream.columns)
    if stream.columns or stream.rows:
        check_columns(schema, columns, stream.columns, stream.name)
    parser = RecordParser(schema, columns, text_fields=stream.file_type == "csv")
    return stream, schema, parser


def _ingest(
    path: str,
    val: bool,
    index: int,
    options: PrepareOptions,
    stage: _Stage,
    report: PrepareReport,
    progress: Progress,
) -> None:
    stream, schema, parser = _open_input(path, options)
    _warn_missing_filter_columns(stream, parser.columns, options, report)
    advance = progress(stream.name, stream.rows)
    rows = 0
    style_sources = style_source_columns(stream.columns)
    batches = stream.batches(
        [*parser.columns.used(schema), *style_sources],
        options.batch_rows,
        messages=parser.columns.prompt,
        answers=ARENA_ANSWERS if set(ARENA_ANSWERS) <= set(style_sources) else None,
    )
    for positions, records in batches:
        kept: list[tuple[int, Battle]] = []
        for position, record in zip(positions, records):
            try:
                if isinstance(record, BadRow):
                    raise record
                result = parser(record)
            except BadRow as exc:
                if not options.skip_bad_rows:
                    raise UserError(
                        f"{stream.where(position)}: {exc} (--skip-bad-rows drops such rows)"
                    ) from None
                report.count_bad(f"{stream.where(position)}: {exc}")
                continue
            reason = result if isinstance(result, str) else options.filter_reason(result)
            if reason:
                report.drops[reason] += 1
            else:
                kept.append((position, result))
        stage.write(kept, val, index)
        rows += len(records)
        advance(len(records))
    report.rows_read += rows
    report.inputs.append(
        {
            "path": stream.name,
            "file_type": stream.file_type,
            "format": schema,
            "rows": rows,
            "role": "val" if val else "input",
        }
    )


def _warn_missing_filter_columns(stream, columns: Columns, options, report) -> None:
    if not stream.columns:
        return
    if options.anony_only and columns.anony not in stream.columns:
        report.warnings.append(
            f"{stream.name}: no {columns.anony!r} column, so --anony-only keeps all its battles"
        )
    if options.languages and columns.language not in stream.columns:
        report.warnings.append(
            f"{stream.name}: no {columns.language!r} column, so --language drops all its battles"
        )


# -------------------------------------------------------------------- pass 2: decide


@dataclass
class Decision:
    keep: np.ndarray  # [rows of the stage] bool
    val: np.ndarray  # [rows of the stage] bool (only meaningful where keep)
    models: list[str]


def drop_rare_models(a: pl.Series, b: pl.Series, keep: np.ndarray, minimum: int) -> np.ndarray:
    """Drop battles of models with fewer than ``minimum`` battles, until none is left."""
    keep = keep.copy()
    while minimum > 1:
        counts = pl.concat([a.filter(keep), b.filter(keep)]).value_counts()
        rare = counts.filter(pl.col("count") < minimum)[a.name]
        if rare.is_empty():
            break
        rare = rare.to_numpy()
        keep &= ~(np.isin(a.to_numpy(), rare) | np.isin(b.to_numpy(), rare))
    return keep


def random_val_rows(
    pkey: np.ndarray, candidates: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, int]:
    """Validation rows chosen by whole prompts: prompts in a seeded random order are taken
    until their battles come closest to ``fraction`` of all; a prompt is never split."""
    keys, counts = np.unique(pkey[candidates], return_counts=True)
    if fraction <= 0 or len(keys) < 2:
        return np.zeros_like(candidates), 0
    order = np.random.default_rng(seed).permutation(len(keys))
    sizes = np.concatenate([[0], np.cumsum(counts[order])])
    take = int(np.argmin(np.abs(sizes - fraction * sizes[-1])))
    take = min(max(take, 1), len(keys) - 1)
    chosen = keys[order[:take]]
    return candidates & np.isin(pkey, chosen), take


def chrono_val_rows(tstamp: np.ndarray, candidates: np.ndarray, fraction: float) -> np.ndarray:
    """The latest ``fraction`` of the battles by time (ties in time keep the input order)."""
    rows = np.flatnonzero(candidates)
    count = round(fraction * len(rows))
    val = np.zeros_like(candidates)
    if count:
        order = np.argsort(tstamp[rows], kind="stable")
        val[rows[order[len(rows) - count :]]] = True
    return val


def _decide(stage: Path, options: PrepareOptions, report: PrepareReport) -> Decision:
    frame = pl.read_parquet(
        stage,
        columns=["_key", "_pkey", "_val", "_src", "_pos", "model_a", "model_b", "winner", "tstamp"],
    )
    keep = np.ones(frame.height, dtype=bool)
    from_val_file = frame["_val"].to_numpy()
    if options.dedupe:
        first = frame.select(pl.struct("_val", "_key").is_first_distinct()).to_series().to_numpy()
        report.drops["duplicate"] += int((~first).sum())
        keep &= first
    if from_val_file.any():
        pkey = frame["_pkey"].to_numpy()
        clash = keep & ~from_val_file & np.isin(pkey, pkey[keep & from_val_file])
        report.drops["prompt_in_val"] += int(clash.sum())
        keep &= ~clash
    before = keep.sum()
    keep = drop_rare_models(frame["model_a"], frame["model_b"], keep, options.min_battles_per_model)
    report.drops["few_battles"] += int(before - keep.sum())
    kept = frame.filter(pl.Series(keep))
    models = sorted(set(kept["model_a"].unique()) | set(kept["model_b"].unique()))
    if len(models) < 2:
        raise UserError(_nothing_left(report, len(models)))
    val = _choose_val(frame, keep, from_val_file, options, report)
    if not (keep & ~val).any():
        raise UserError("no training battles left: every kept battle went to validation")
    _count(frame, keep, val, models, report)
    _warn_shared_ids(stage, keep, report)
    return Decision(keep, val, models)


def _warn_shared_ids(stage: Path, keep: np.ndarray, report: PrepareReport) -> None:
    ids = pl.read_parquet(stage, columns=["id"])["id"].filter(keep)
    shared = ids.len() - ids.n_unique()
    if shared:
        report.warnings.append(
            f"{shared} battles share their id with another, different battle (ids that mean "
            "something else in another input?); joins on id will be ambiguous"
        )


def _choose_val(frame, keep, from_val_file, options, report) -> np.ndarray:
    candidates = keep & ~from_val_file
    if options.val_file:
        report.split = {"method": "file", "val_file": options.val_file}
        return from_val_file.copy()
    if options.val_split == "chrono":
        tstamp = frame["tstamp"].to_numpy()
        missing = np.flatnonzero(candidates & np.isnan(tstamp))
        if missing.size:
            row = frame.row(int(missing[0]), named=True)
            where = _where(report, row["_src"], row["_pos"])
            raise UserError(
                f"--val-split chrono: {missing.size} battles have no tstamp (first: {where})"
            )
        val = chrono_val_rows(tstamp, candidates, options.val_fraction)
        cutoff = float(tstamp[val].min()) if val.any() else None
        report.split = {
            "method": "chrono",
            "val_fraction": options.val_fraction,
            "val_from": _iso(cutoff) if cutoff is not None else None,
        }
        return val
    val, prompts = random_val_rows(
        frame["_pkey"].to_numpy(), candidates, options.val_fraction, options.seed
    )
    report.split = {
        "method": "random",
        "val_fraction": options.val_fraction,
        "seed": options.seed,
        "val_prompts": prompts,
    }
    return val


def _count(frame, keep, val, models, report) -> None:
    train = keep & ~val
    valid = keep & val
    report.train, report.val, report.models = int(train.sum()), int(valid.sum()), models
    per_model = {m: {"battles": 0, "train": 0, "val": 0} for m in models}
    for split, mask in (("train", train), ("val", valid)):
        part = frame.filter(pl.Series(mask))
        for name, count in pl.concat([part["model_a"], part["model_b"]]).value_counts().iter_rows():
            per_model[name][split] += count
            per_model[name]["battles"] += count
    report.per_model = per_model
    winners = frame["winner"].filter(keep).value_counts()
    report.winners = {w: 0 for w in ("model_a", "model_b", "tie", "tie (bothbad)")}
    report.winners.update(dict(winners.iter_rows()))


def _where(report: PrepareReport, source: int, position: int) -> str:
    info = report.inputs[source]
    unit = "line" if info["file_type"] in ("jsonl", "csv") else "row"
    return f"{info['path']}: {unit} {position}"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _nothing_left(report: PrepareReport, models: int) -> str:
    drops = ", ".join(f"{DROP_REASONS[r]}: {n}" for r, n in report.drops.items() if n)
    return f"no usable battles: {report.rows_read} rows read, {models} model(s) left" + (
        f" (dropped: {drops})" if drops else ""
    )


# --------------------------------------------------------------------- pass 3: write


def output_schema(optional: set[str]) -> pa.Schema:
    fields = [
        ("id", pa.string()),
        ("prompt", pa.list_(pa.string())),
        ("model_a", pa.string()),
        ("model_b", pa.string()),
        ("winner", pa.string()),
        ("labels", pa.list_(pa.int64())),
    ]
    fields += [(name, kind) for name, kind in OPTIONAL.items() if name in optional]
    return pa.schema(fields)


def encode_labels(frame: pl.DataFrame, models: list[str]) -> pl.DataFrame:
    """Add ``labels`` = [winner_idx, loser_idx, tie_code] against the sorted ``models``;
    for ties the order is a then b, tie_code 1 (tie) or 2 (both bad)."""
    index = list(range(len(models)))
    a = pl.col("model_a").replace_strict(models, index, return_dtype=pl.Int64)
    b = pl.col("model_b").replace_strict(models, index, return_dtype=pl.Int64)
    b_won = pl.col("winner") == "model_b"
    code = (
        pl.when(pl.col("winner") == "tie")
        .then(1)
        .when(pl.col("winner") == "tie (bothbad)")
        .then(2)
        .otherwise(0)
        .cast(pl.Int64)
    )
    first = pl.when(b_won).then(b).otherwise(a)
    second = pl.when(b_won).then(a).otherwise(b)
    return frame.with_columns(labels=pl.concat_list([first, second, code]))


def _write_splits(
    stage: Path, decision: Decision, optional: set[str], folder: Path, batch_rows: int,
    progress: Progress,
) -> None:
    schema = output_schema(optional)
    names = schema.names
    parquet = pq.ParquetFile(stage)
    advance = progress("writing", parquet.metadata.num_rows)
    writers = {
        split: pq.ParquetWriter(folder / f"{split}.parquet", schema, compression="zstd")
        for split in ("train", "val")
    }
    try:
        offset = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            rows = slice(offset, offset + batch.num_rows)
            offset += batch.num_rows
            frame = pl.from_arrow(batch)
            for split, in_val in (("train", False), ("val", True)):
                mask = decision.keep[rows] & (decision.val[rows] == in_val)
                if not mask.any():
                    continue
                part = encode_labels(frame.filter(pl.Series(mask)), decision.models)
                writers[split].write_table(part.select(names).to_arrow().cast(schema))
            advance(batch.num_rows)
    finally:
        for writer in writers.values():
            writer.close()


# ------------------------------------------------------------------------------ run


def _no_progress(description: str, total: int | None) -> Callable[[int], None]:
    return lambda rows: None


def prepare_battles(
    inputs: list[str], out_dir: str | Path, options: PrepareOptions,
    progress: Progress | None = None,
) -> PrepareReport:
    """Prepare the battles in ``inputs`` (files, globs, folders or ``-``) into ``out_dir``.
    ``progress(description, total)`` is called as each input and the writing start; it
    returns the function to call with each batch's row count."""
    progress = progress or _no_progress
    options.check()
    files = expand_inputs(inputs)
    val_files = expand_inputs([options.val_file]) if options.val_file else []
    if (files + val_files).count("-") > 1:
        raise UserError("- (stdin) can be given only once")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    report = PrepareReport()
    try:
        stage = _Stage(staging / "stage.parquet")
        try:
            for path in files:
                _ingest(path, False, len(report.inputs), options, stage, report, progress)
            for path in val_files:
                _ingest(path, True, len(report.inputs), options, stage, report, progress)
        finally:
            stage.close()
        if stage.rows == 0:
            raise UserError(_nothing_left(report, 0))
        decision = _decide(stage.path, options, report)
        report.columns = output_schema(stage.seen_optional).names
        _write_splits(
            stage.path, decision, stage.seen_optional, staging, options.batch_rows, progress
        )
        (staging / "stage.parquet").unlink()
        write_json(staging / "models.json", decision.models)
        write_json(staging / "prepare.json", report.to_json(options))
        for name in OUTPUTS:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
