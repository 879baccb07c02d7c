"""Batched inference: prompts in, one P2L coefficient vector (and eta) per prompt out.

Three entry points, from small to large:

- :func:`predict_prompts` turns a list of prompts (each a list of user turns) into arrays;
- :func:`predict_frame` adds ``coefs`` (and ``eta``) columns to a DataFrame;
- :func:`predict_file` streams a file or stdin to a file or stdout, chunk by chunk, so that
  memory does not grow with the number of prompts.

Speed comes from batching by a token budget: within a chunk the prompts are sorted by token
length (longest first) and each batch holds as many as fit in ``batch_tokens`` padded tokens
(rows x longest row), closing early rather than let padding exceed a quarter of it, so short
prompts are not padded to the length of long ones. The original order is restored before
anything is written.

Several processes (``accelerate launch -m p2l_cli predict ...`` or ``torchrun``) split the
input by chunk: process ``r`` of ``w`` predicts the chunks whose index is ``r`` modulo ``w``
and writes each as a Parquet part; the main process merges the parts in chunk order.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from p2l_cli.contracts.prompts import BadPrompt, prompt_turns
from p2l_cli.errors import UserError
from p2l_cli.io import (
    METADATA_KEY,
    STDIO,
    TableWriter,
    atomic_path,
    format_of,
    open_stdin,
    parse_table,
    source_name,
    split_metadata_line,
    stdout_buffer,
    write_table,
)
from p2l_cli.model import collate, encode_prompts, load_p2l
from p2l_cli.model.backbone import clamp_max_length

# Padded tokens per batch. CPUs run fastest on small batches that stay in cache (MiniLM on
# 2 cores: 235 prompts/s at 2048, 170 at 16384); GPUs want large ones.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "mps": 8192, "cuda": 16384}
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_CHUNK_ROWS = 4096
DEFAULT_MIN_FILL = 0.75
PREDICTION_COLUMNS = ("coefs", "eta")
PROMPT_COLUMNS = (
    "prompt", "prompts", "messages", "conversation", "conversation_a", "question", "text",
    "instruction", "input", "query", "content",
)  # fmt: skip


def find_prompt_column(columns: Sequence[str], name: str, requested: str | None = None) -> str:
    """The column that holds the prompts: ``requested``, else the first known name."""
    if requested is not None:
        if requested not in columns:
            raise UserError(
                f"{name}: no column {requested!r} (--prompt-column); columns: {_listing(columns)}"
            )
        return requested
    for candidate in PROMPT_COLUMNS:
        if candidate in columns:
            return candidate
    lowered = {column.lower(): column for column in columns}
    for candidate in PROMPT_COLUMNS:
        if candidate in lowered:
            return lowered[candidate]
    raise UserError(
        f"{name}: no prompt column (looked for {', '.join(PROMPT_COLUMNS[:6])}, ...); "
        f"columns: {_listing(columns)}; name one with --prompt-column"
    )


def _listing(columns: Sequence[str]) -> str:
    shown = ", ".join(columns[:12]) or "(none)"
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > 12 else "")


# ----------------------------------------------------------------------- device, dtype


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the process's GPU when there is one, else Apple MPS, else the CPU."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # fmt: skip


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPUs that support it, float16 on other GPUs, else float32."""
    if isinstance(name, torch.dtype):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"--dtype {name}: expected auto, float32, bfloat16 or float16")
    return DTYPES[name]


def load_for_inference(
    source: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    local_rank: int = 0,
):
    """Load a P2L model for prediction; the head stays in float32 whatever the backbone's
    dtype. Returns ``(model, tokenizer)``."""
    target = resolve_device(device, local_rank)
    model, tokenizer = load_p2l(source, device=target, dtype=resolve_dtype(dtype, target))
    model.head.float()
    return model, tokenizer


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def token_limit(model, tokenizer, max_length: int | None = None) -> int:
    """The longest input the model reads: ``max_length`` (default: the model's own), and no
    more than its position embeddings (and an encoder's tokenizer) allow."""
    limit = clamp_max_length(int(max_length or model.info.max_length), model.config)
    declared = getattr(tokenizer, "model_max_length", None)
    if model.info.encoder and isinstance(declared, int) and 0 < declared < 10**7:
        limit = min(limit, declared)
    return limit


# ----------------------------------------------------------------------- batching


def default_batch_tokens(device: torch.device) -> int:
    return DEFAULT_BATCH_TOKENS.get(device.type, DEFAULT_BATCH_TOKENS["cuda"])


def plan_batches(
    lengths: Sequence[int],
    batch_tokens: int = DEFAULT_BATCH_TOKENS["cpu"],
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    min_fill: float = DEFAULT_MIN_FILL,
) -> list[np.ndarray]:
    """Row indices grouped into batches, longest first. A batch's padded size (rows x its
    longest row) stays within ``batch_tokens`` (a longer row goes alone), and a batch closes
    before real tokens would fall below ``min_fill`` of its padded size, so that a few long
    prompts do not pad many short ones."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        room = max(1, min(max_batch_size, batch_tokens // longest))
        real = np.cumsum(lengths[order[start : start + room]])
        rows = np.arange(1, len(real) + 1)
        dense = real >= min_fill * rows * longest  # holds for a prefix: lengths decrease
        size = max(1, int(dense.sum()))
        batches.append(order[start : start + size])
        start += size
    return batches


@torch.inference_mode()
def predict_ids(
    model,
    ids: list[list[int]],
    pad_token_id: int,
    batch_tokens: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
    max_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Coefficients ``[N, M]`` (float32) and raw ``eta`` ``[N]`` (rk heads) for token ids,
    in the order of ``ids``; the backbone reads ``max_length`` tokens of each (default:
    the model's own; rows are whole when the model's descriptors read whole prompts)."""
    device = torch.device(device) if device is not None else model_device(model)
    batch_tokens = batch_tokens or default_batch_tokens(device)
    limit = max_length or model.info.max_length
    coefs = np.empty((len(ids), len(model.info.model_list)), dtype=np.float32)
    eta = np.empty(len(ids), dtype=np.float32) if model.head.eta_head is not None else None
    for batch in plan_batches([min(len(row), limit) for row in ids], batch_tokens, max_batch_size):
        input_ids, attention_mask = _collate([ids[i] for i in batch], pad_token_id, device)
        output = model(input_ids, attention_mask, max_length=limit)
        coefs[batch] = output.coefs.float().cpu().numpy()
        if eta is not None:
            eta[batch] = output.eta.float().cpu().numpy()
        if on_batch is not None:
            on_batch(len(batch))
    return coefs, eta


def _collate(rows: list[list[int]], pad_token_id: int, device: torch.device):
    input_ids, attention_mask = collate(rows, pad_token_id)
    non_blocking = device.type == "cuda"
    return (
        input_ids.to(device, non_blocking=non_blocking),
        attention_mask.to(device, non_blocking=non_blocking),
    )


def encode(model, tokenizer, prompts: list[list[str]], max_length: int | None = None):
    """Token ids per prompt, truncated to :func:`token_limit` (whole, when the model's
    descriptors read whole prompts: pass the limit to :func:`predict_ids`)."""
    if not prompts:
        return []
    limit = token_limit(model, tokenizer, max_length)
    info = (
        model.info
        if limit == model.info.max_length
        else dataclasses.replace(model.info, max_length=limit)
    )
    return encode_prompts(tokenizer, prompts, info)


def predict_prompts(
    model,
    tokenizer,
    prompts: list[list[str]],
    batch_tokens: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    device: torch.device | str | None = None,
    max_length: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(coefs [N, M] float32, eta [N] float32 or None)`` for prompts given as user turns
    (a plain string counts as one turn), in input order."""
    prompts = [[p] if isinstance(p, str) else list(p) for p in prompts]
    limit = token_limit(model, tokenizer, max_length)
    ids = encode(model, tokenizer, prompts, limit)
    return predict_ids(
        model, ids, tokenizer.pad_token_id, batch_tokens, max_batch_size, device, on_batch,
        max_length=limit,
    )


# ----------------------------------------------------------------------- DataFrames


def predictions_metadata(model, source: str | Path | None) -> dict:
    """The predictions' ``p2l`` metadata; with the model folder's path when it came from
    one (``evaluate`` finds the votes it was trained on through it)."""
    meta = model.info.metadata()
    if source is not None and Path(str(source)).is_dir():
        meta["model"] = str(Path(str(source)).resolve())
    return meta


def with_predictions(df: pl.DataFrame, coefs: np.ndarray, eta: np.ndarray | None) -> pl.DataFrame:
    """``df`` with ``coefs`` (list[float32]) and ``eta`` (float32, rk heads) appended; any
    earlier prediction columns are replaced."""
    df = df.drop([c for c in PREDICTION_COLUMNS if c in df.columns])
    columns = [
        pl.Series("coefs", np.ascontiguousarray(coefs, dtype=np.float32)).cast(pl.List(pl.Float32))
    ]
    if eta is not None:
        columns.append(pl.Series("eta", np.asarray(eta, dtype=np.float32)))
    return df.with_columns(columns)


def frame_prompts(
    df: pl.DataFrame, column: str, rows: Sequence[int] | None = None
) -> tuple[list[list[str]], list[tuple[int, int, str]]]:
    """The user turns of each row, and the rows that hold no usable prompt as
    ``(position, row label, reason)``."""
    values = df[column].to_list() if column in df.columns else [None] * df.height
    turns, bad = [], []
    for position, value in enumerate(values):
        try:
            turns.append(prompt_turns(value))
        except BadPrompt as exc:
            label = rows[position] if rows is not None else position + 1
            reason = f"no {column!r} value" if value is None else str(exc)
            bad.append((position, label, reason))
    return turns, bad


def drop_rows(df: pl.DataFrame, positions: Sequence[int]) -> pl.DataFrame:
    if not positions:
        return df
    keep = np.ones(df.height, dtype=bool)
    keep[list(positions)] = False
    return df.filter(pl.Series(keep))


def predict_frame(
    model,
    tokenizer,
    df: pl.DataFrame,
    prompt_column: str | None = None,
    batch_tokens: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    device: torch.device | str | None = None,
    max_length: int | None = None,
    skip_bad_rows: bool = False,
    name: str = "<frame>",
) -> pl.DataFrame:
    """``df`` with ``coefs`` (and ``eta``) columns, rows in their input order.

    A row without a usable prompt raises ``UserError("<name>: row N: ...")``, or is dropped
    when ``skip_bad_rows``.
    """
    column = find_prompt_column(df.columns, name, prompt_column)
    turns, bad = frame_prompts(df, column)
    if bad and not skip_bad_rows:
        raise UserError(f"{name}: row {bad[0][1]}: {bad[0][2]}")
    df = drop_rows(df, [position for position, _, _ in bad])
    coefs, eta = predict_prompts(
        model, tokenizer, turns, batch_tokens, max_batch_size, device, max_length
    )
    return with_predictions(df, coefs, eta)


# ----------------------------------------------------------------------- reading in chunks


@dataclass
class Chunk:
    """Rows of the input: ``frame`` and, per row, its line (JSONL) or row number;
    ``bad`` lists rows that could not be parsed as ``(label, reason)``."""

    index: int
    frame: pl.DataFrame
    rows: list[int]
    bad: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class RawChunk:
    """A chunk not parsed yet (JSONL lines), so that other processes skip it cheaply."""

    index: int
    lines: list[tuple[int, bytes]] | None = None
    frame: pl.DataFrame | None = None
    first_row: int = 1

    def parse(self, name: str) -> Chunk:
        if self.frame is not None:
            rows = list(range(self.first_row, self.first_row + self.frame.height))
            return Chunk(self.index, self.frame, rows)
        return _parse_jsonl_lines(self.index, self.lines or [], name)


@dataclass
class InputTable:
    name: str
    unit: str  # how rows are counted in messages: "line" (JSONL) or "row"
    chunks: Iterator[RawChunk]
    total: int | None = None


def _parse_jsonl_lines(index: int, lines: list[tuple[int, bytes]], name: str) -> Chunk:
    good, rows, bad = [], [], []
    for number, line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            bad.append((number, f"not valid JSON ({getattr(exc, 'msg', exc)})"))
            continue
        if not isinstance(value, dict):
            bad.append((number, "expected a JSON object"))
            continue
        good.append(line.rstrip(b"\r\n"))
        rows.append(number)
    if not good:
        return Chunk(index, pl.DataFrame(), rows, bad)
    try:
        frame = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
    except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
        raise UserError(
            f"{name}: lines {rows[0]}-{rows[-1]}: cannot build a table ({str(exc).splitlines()[0]})"
        ) from None
    return Chunk(index, frame, rows, bad)


def read_chunks(
    source: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, fmt: str | None = None
) -> InputTable:
    """Open a table (file or ``-``) for reading in chunks of ``chunk_rows`` rows.

    JSONL and Parquet stream; CSV and JSON arrays are read whole and then chunked; Parquet
    on stdin is read whole (it cannot be streamed).
    """
    name = source_name(source)
    if str(source) == STDIO:
        fmt, stream = open_stdin(fmt, option="--input-format")
        if fmt == "jsonl":
            return InputTable(name, "line", _jsonl_chunks(stream, chunk_rows, close=False))
        return _whole_table(stream.read(), fmt, name, chunk_rows)
    path = Path(source)
    fmt = format_of(source, fmt, option="--input-format")
    if not path.is_file():
        raise UserError(f"{name}: no such file" if not path.exists() else f"{name}: not a file")
    if fmt == "jsonl":
        return InputTable(
            name, "line", _jsonl_chunks(path.open("rb"), chunk_rows, close=True), _count_lines(path)
        )
    if fmt == "parquet":
        return _parquet_chunks(path, name, chunk_rows)
    return _whole_table(path.read_bytes(), fmt, name, chunk_rows)


def _jsonl_chunks(stream: IO[bytes], chunk_rows: int, close: bool) -> Iterator[RawChunk]:
    with contextlib.closing(stream) if close else contextlib.nullcontext():
        lines: list[tuple[int, bytes]] = []
        index = 0
        for number, line in enumerate(stream, start=1):
            if number == 1 and split_metadata_line(line)[0] is not None:
                continue  # a predictions file's {"p2l": ...} line
            lines.append((number, line))
            if len(lines) >= chunk_rows:
                yield RawChunk(index, lines=lines)
                lines, index = [], index + 1
        if lines:
            yield RawChunk(index, lines=lines)


def _count_lines(path: Path) -> int | None:
    """Non-empty-ish line count for the progress bar (a fast pass over the bytes)."""
    try:
        count, last = 0, b"\n"
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                count += block.count(b"\n")
                last = block[-1:]
        return count + (last != b"\n")
    except OSError:
        return None


def _parquet_chunks(path: Path | io.BytesIO, name: str, chunk_rows: int) -> InputTable:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{name}: not a readable Parquet file ({exc})") from None

    def chunks() -> Iterator[RawChunk]:
        first = 1
        for index, batch in enumerate(parquet.iter_batches(batch_size=chunk_rows)):
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            yield RawChunk(index, frame=frame, first_row=first)
            first += frame.height

    return InputTable(name, "row", chunks(), parquet.metadata.num_rows)


def _whole_table(data: bytes, fmt: str, name: str, chunk_rows: int) -> InputTable:
    if fmt == "parquet":
        return _parquet_chunks(io.BytesIO(data), name, chunk_rows)
    frame, _ = parse_table(data, fmt, name)

    def chunks() -> Iterator[RawChunk]:
        for index, start in enumerate(range(0, frame.height, chunk_rows)):
            yield RawChunk(index, frame=frame.slice(start, chunk_rows), first_row=start + 1)

    return InputTable(name, "row", chunks(), frame.height)


# ----------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Workers:
    """This process's place among those that share the input (``torchrun``/``accelerate``
    set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Workers:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
        local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
        return cls(rank, world, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def owns(self, chunk_index: int) -> bool:
        return chunk_index % self.world == self.rank

    def start(self) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")

    def broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def stop(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------- writing


def parts_folder(dest: str | Path, workers: Workers) -> Path:
    """A fresh folder for Parquet parts beside the destination (the main process makes it
    and tells the others)."""
    folder = None
    if workers.main:
        parent = None if str(dest) == STDIO else Path(dest).resolve().parent
        if parent is not None:
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"{dest}: cannot write ({exc.strerror or exc})") from None
        name = "predict" if str(dest) == STDIO else Path(dest).name
        try:
            folder = tempfile.mkdtemp(prefix=f".{name}.parts-", dir=parent)
        except OSError as exc:
            raise UserError(f"{source_name(dest)}: cannot write ({exc.strerror or exc})") from None
    return Path(workers.broadcast(folder))


def part_path(folder: Path, index: int) -> Path:
    return folder / f"part-{index:09d}.parquet"


def merge_parts(folder: Path, dest: str | Path, fmt: str, meta: dict) -> int:
    """Join the parts in chunk order into ``dest``; column types are unified across parts
    (a column that is all null in one chunk and text in another becomes text)."""
    parts = sorted(folder.glob("part-*.parquet"))
    schema = _unified_schema(parts)
    if fmt in ("csv", "json"):
        frames = [pl.from_arrow(_conform(pq.read_table(p), schema)) for p in parts]
        df = pl.concat(frames) if frames else pl.DataFrame()
        write_table(df, dest, fmt=fmt, meta=meta)
        return df.height
    rows = 0
    if fmt == "jsonl" or not parts:
        with TableWriter(dest, fmt, meta=meta) as writer:
            for part in parts:
                writer.write(pl.from_arrow(_conform(pq.read_table(part), schema)))
            return writer.rows
    schema = schema.with_metadata({METADATA_KEY.encode(): json.dumps(meta).encode()})
    with contextlib.ExitStack() as stack:
        if str(dest) == STDIO:
            fh: IO[bytes] = stdout_buffer()
        else:
            fh = stack.enter_context(stack.enter_context(atomic_path(dest)).open("wb"))
        writer = pq.ParquetWriter(fh, schema, compression="zstd")
        for part in parts:
            table = _conform(pq.read_table(part), schema)
            writer.write_table(table)
            rows += table.num_rows
        writer.close()
        fh.flush()
    return rows


def _unified_schema(parts: list[Path]) -> pa.Schema:
    if not parts:
        return pa.schema([])
    try:
        schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UserError(
            f"the input's columns change type between chunks ({str(exc).splitlines()[0]}); "
            "write JSONL, or give a larger --chunk-rows"
        ) from None
    names = [n for n in schema.names if n not in PREDICTION_COLUMNS]
    names += [n for n in PREDICTION_COLUMNS if n in schema.names]
    return pa.schema([schema.field(n) for n in names])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for target in schema:
        if target.name in table.column_names:
            column = table.column(target.name)
            try:
                columns.append(column.cast(target.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserError(
                    f"column {target.name!r} changes type between chunks "
                    f"({str(exc).splitlines()[0]}); write JSONL instead"
                ) from None
        else:
            columns.append(pa.nulls(table.num_rows, target.type))
    return pa.Table.from_arrays(columns, schema=schema)


# ----------------------------------------------------------------------- files and streams


@dataclass
class PredictOptions:
    prompt_column: str | None = None
    batch_tokens: int | None = None  # None: by device (default_batch_tokens)
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    max_length: int | None = None
    skip_bad_rows: bool = False

    def check(self) -> None:
        for option, value in (
            ("--batch-tokens", self.batch_tokens),
            ("--max-batch-size", self.max_batch_size),
            ("--chunk-rows", self.chunk_rows),
        ):
            if value is not None and value < 1:
                raise UserError(f"{option} {value}: must be at least 1")
        if self.max_length is not None and self.max_length < 2:
            raise UserError(f"--max-length {self.max_length}: must be at least 2")


@dataclass
class PredictSummary:
    rows: int = 0
    skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    first_bad: str | None = None
    dest: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf

    def add(self, other: PredictSummary) -> None:
        self.rows += other.rows
        self.skipped += other.skipped
        self.tokens += other.tokens
        self.first_bad = self.first_bad or other.first_bad


def predict_chunks(
    model,
    tokenizer,
    table: InputTable,
    write: Callable[[int, pl.DataFrame], None],
    options: PredictOptions,
    workers: Workers = Workers(),
    on_rows: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Predict every chunk this process owns and hand each result to ``write(index, df)``."""
    summary = PredictSummary()
    device = model_device(model)
    column = None
    limit = token_limit(model, tokenizer, options.max_length)
    for raw in table.chunks:
        if not workers.owns(raw.index):
            continue
        chunk = raw.parse(table.name)
        if column is None and chunk.frame.width:
            column = find_prompt_column(chunk.frame.columns, table.name, options.prompt_column)
        turns, bad_prompts = frame_prompts(chunk.frame, column or "prompt", chunk.rows)
        bad = sorted(chunk.bad + [(label, reason) for _, label, reason in bad_prompts])
        if bad and not options.skip_bad_rows:
            raise UserError(f"{table.name}: {table.unit} {bad[0][0]}: {bad[0][1]}")
        frame = drop_rows(chunk.frame, [position for position, _, _ in bad_prompts])
        if bad:
            summary.skipped += len(bad)
            summary.first_bad = summary.first_bad or f"{table.unit} {bad[0][0]}: {bad[0][1]}"
            if on_rows is not None:
                on_rows(len(bad))
        ids = encode(model, tokenizer, turns, limit)
        coefs, eta = predict_ids(
            model,
            ids,
            tokenizer.pad_token_id,
            options.batch_tokens,
            options.max_batch_size,
            device,
            on_rows,
            max_length=limit,
        )
        summary.rows += frame.height
        summary.tokens += sum(len(row) for row in ids)
        write(raw.index, with_predictions(frame, coefs, eta))
        trim_heap()
    return summary


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def trim_heap() -> None:
    """Give freed heap pages back to the system (glibc). Activations of ever-changing
    shapes otherwise fragment the heap, and the resident size creeps up chunk after chunk
    (by ~200 MB over 16,000 prompts with MiniLM); with this it stays flat."""
    malloc_trim = _libc_malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


def predict_file(
    model_source: str | Path | tuple,
    source: str | Path,
    dest: str | Path,
    fmt: str | None = None,
    input_format: str | None = None,
    options: PredictOptions | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    workers: Workers | None = None,
    progress: Callable[[int | None], Callable[[int], None]] | None = None,
) -> PredictSummary:
    """Predict every prompt of ``source`` (file or ``-``) into ``dest`` (file or ``-``).

    ``model_source`` is a model folder or Hub id, or an already loaded ``(model,
    tokenizer)``. JSONL output is written chunk by chunk as it is predicted; Parquet, CSV
    and JSON outputs are assembled from per-chunk Parquet parts at the end. ``progress``,
    given the expected number of rows, returns a callback that counts rows done.
    """
    options = options or PredictOptions()
    options.check()
    workers = workers or Workers.from_env()
    out_fmt = format_of(dest, fmt, default="jsonl" if str(dest) == STDIO else None)
    if workers.world > 1 and str(source) == STDIO:
        raise UserError("PROMPTS -: several processes cannot share stdin; give a file")
    if isinstance(model_source, tuple):
        model, tokenizer = model_source
    else:
        model, tokenizer = load_for_inference(model_source, device, dtype, workers.local_rank)
    meta = predictions_metadata(model, None if isinstance(model_source, tuple) else model_source)
    table = read_chunks(source, options.chunk_rows, input_format)
    expected = None if table.total is None else -(-table.total // workers.world)
    on_rows = progress(expected) if progress is not None else None
    started = time.perf_counter()
    if workers.world == 1 and out_fmt == "jsonl":
        with TableWriter(dest, "jsonl", meta=meta) as writer:
            summary = predict_chunks(
                model, tokenizer, table, lambda _, df: writer.write(df), options, workers, on_rows
            )
    else:
        summary = _predict_in_parts(
            model, tokenizer, table, dest, out_fmt, meta, options, workers, on_rows
        )
    summary.seconds = time.perf_counter() - started
    summary.dest = source_name(dest)
    return summary


def _predict_in_parts(model, tokenizer, table, dest, fmt, meta, options, workers, on_rows):
    workers.start()
    folder = parts_folder(dest, workers)
    try:
        error = None
        summary = PredictSummary()
        try:
            summary = predict_chunks(
                model,
                tokenizer,
                table,
                lambda index, df: df.write_parquet(part_path(folder, index)),
                options,
                workers,
                on_rows,
            )
        except Exception as exc:  # every process must reach the gather below
            if workers.world == 1:
                raise
            error = (isinstance(exc, UserError), f"{exc}")
        reports = workers.gather((summary, error))
        errors = [e for _, e in reports if e is not None]
        if errors:
            user_error, message = errors[0]
            raise (UserError if user_error else RuntimeError)(message)
        total = PredictSummary()
        for part_summary, _ in reports:
            total.add(part_summary)
        if workers.main:
            merge_parts(folder, dest, fmt, meta)
        return total
    finally:
        if workers.main:
            shutil.rmtree(folder, ignore_errors=True)
        workers.stop()
