"""The vote files `p2l prepare` reads: finding them, streaming their records, telling their
schema apart, and turning one record into one battle.

Schemas (what the columns hold; any file type carries any schema):

- ``arena``: the Arena conversation data (lmarena-ai/arena-human-preference-100k and -140k,
  lmsys/chatbot_arena_conversations): ``model_a``, ``model_b``, ``winner`` and
  ``conversation_a``, a list of ``{role, content}`` messages (content a string, or a list
  of ``{type, text}`` parts); ``id`` or ``question_id``, ``anony``, ``language``, ``tstamp``
  or ``timestamp`` when present. The prompt is the user turns of ``conversation_a``.
  The answers are the assistant turns of ``conversation_a`` and ``conversation_b``; the
  140k release also has ``conv_metadata``, their style counts.
- ``kaggle``: the LMSYS arena-human-preference-55k CSV: ``id, model_a, model_b, prompt,
  response_a, response_b, winner_model_a, winner_model_b, winner_tie``; ``prompt`` is a
  JSON-encoded list of user turns, which may hold nulls and escaped non-ASCII text;
  ``response_a`` and ``response_b`` are the answers' turns, encoded the same way.
- ``generic``: ``prompt`` (a string, a list of strings, or a list of messages; in CSV also
  a JSON list), ``model_a``, ``model_b``, ``winner``; the names can be mapped; the style
  columns of a battles file (``sum_assistant_tokens_a``, ...) are copied when present.

File types: Parquet (streamed by record batches, reading only the columns used), JSONL and
CSV (streamed by lines; ``.gz`` is read too), JSON arrays (read whole); ``-`` is stdin,
sniffed. Positions in messages: ``line N`` (1-based) for JSONL and CSV, where the record
starts; ``row N`` (0-based, as in a data frame) for Parquet and JSON arrays.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from p2l_cli.contracts.battles import outcome_of
from p2l_cli.contracts.prompts import USER_ROLES, BadPrompt, user_turns, utf8_text
from p2l_cli.contracts.style import STYLE_COLUMNS
from p2l_cli.data.style_counts import StyleCounts, turns_style
from p2l_cli.errors import UserError
from p2l_cli.io import STDIO, format_of, open_stdin, source_name

SCHEMAS = ("arena", "kaggle", "generic")
FILE_TYPES = ("parquet", "jsonl", "csv", "json")
KAGGLE_WINNER_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")

# Where the style values of a record come from, in this order (see RecordParser._style).
CONV_METADATA = "conv_metadata"
ARENA_ANSWERS = ("conversation_a", "conversation_b")
KAGGLE_ANSWERS = ("response_a", "response_b")
# The assistant turns' text of ARENA_ANSWERS, put into records by the Parquet reader.
ANSWER_TEXTS = ("_answer_texts_a", "_answer_texts_b")
ASSISTANT_ROLE = "assistant"

class BadRow(Exception):
    """A record that cannot be read as a battle; the message says why."""


# ------------------------------------------------------------------------------ columns


@dataclass(frozen=True)
class Columns:
    """Which column holds what. ``None`` for prompt/id/tstamp means "the schema's default"."""

    prompt: str | None = None
    model_a: str = "model_a"
    model_b: str = "model_b"
    winner: str = "winner"
    id: str | None = None
    tstamp: str | None = None
    language: str = "language"
    category: str = "category"
    weight: str = "weight"
    anony: str = "anony"

    def resolve(self, schema: str, present: Iterable[str]) -> Columns:
        """Fill the defaults for ``schema`` from the columns ``present``."""
        present = set(present)
        prompt = self.prompt or ("conversation_a" if schema == "arena" else "prompt")
        ident = self.id or next((c for c in ("id", "question_id") if c in present), "id")
        tstamp = self.tstamp or next((c for c in ("tstamp", "timestamp") if c in present), "tstamp")
        return replace(self, prompt=prompt, id=ident, tstamp=tstamp)

    def required(self, schema: str) -> list[str]:
        winner = list(KAGGLE_WINNER_COLUMNS) if schema == "kaggle" else [self.winner]
        return [self.prompt or "prompt", self.model_a, self.model_b, *winner]

    def used(self, schema: str) -> list[str]:
        optional = [self.id, self.tstamp, self.language, self.category, self.weight, self.anony]
        return list(dict.fromkeys([*self.required(schema), *(c for c in optional if c)]))


def detect_schema(columns: Iterable[str], user: Columns, name: str) -> str:
    present = set(columns)
    if set(KAGGLE_WINNER_COLUMNS) <= present:
        return "kaggle"
    if user.prompt is None and "conversation_a" in present:
        return "arena"
    if (user.prompt or "prompt") in present:
        return "generic"
    shown = ", ".join(sorted(present)[:15]) or "none"
    raise UserError(
        f"{name}: cannot tell the format: expected Arena columns (conversation_a, model_a, "
        f"model_b, winner), the Kaggle 55k columns (prompt, winner_model_a, ...) or a prompt "
        f"column (map it with --prompt-column); found: {shown}"
    )


def check_columns(schema: str, columns: Columns, present: Iterable[str], name: str) -> None:
    missing = [c for c in columns.required(schema) if c not in set(present)]
    if missing:
        raise UserError(
            f"{name}: no column {', '.join(repr(m) for m in missing)} for the {schema} format "
            "(map columns with --prompt-column, --model-a-column, --model-b-column, "
            "--winner-column)"
        )


# -------------------------------------------------------------------------------- files


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files from paths, globs and folders (their Parquet, JSONL and CSV files, sorted);
    ``-`` is stdin."""
    files: list[str] = []
    for pattern in patterns:
        if pattern == STDIO:
            files.append(pattern)
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"{pattern}: no file matches")
            files.extend(matches)
        elif Path(pattern).is_dir():
            inside = sorted(str(p) for p in Path(pattern).iterdir() if _is_table(p))
            if not inside:
                raise UserError(f"{pattern}: folder holds no .parquet, .jsonl or .csv file")
            files.extend(inside)
        elif Path(pattern).is_file():
            files.append(pattern)
        else:
            raise UserError(f"{pattern}: no such file")
    if files.count(STDIO) > 1:
        raise UserError("- (stdin) can be given only once")
    return list(dict.fromkeys(files))


def _is_table(path: Path) -> bool:
    """A data file inside a folder: Parquet, JSONL or CSV (JSON files there are more often
    metadata, such as a prepared folder's models.json)."""
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        return format_of(path) in ("parquet", "jsonl", "csv")
    except UserError:
        return False


@dataclass
class RecordStream:
    """An opened input: its file type, columns, and its records in batches.

    ``batches(columns, size, messages=None, answers=None)`` yields ``(positions, records)``;
    a record is a dict, or a :class:`BadRow` for a line that is not a JSON object. Only
    ``columns`` are read where the file type allows; a Parquet column of messages named by
    ``messages`` arrives as its user turns only, and the two Parquet columns of messages
    named by ``answers`` arrive as the lists of their assistant turns' text, in the fields
    ``ANSWER_TEXTS`` (the other file types ignore ``answers``).
    """

    name: str
    file_type: str
    columns: list[str]
    batches: Callable[..., Iterator[tuple[list[int], list[Any]]]]
    rows: int | None = None  # known up front for Parquet and JSON

    def where(self, position: int) -> str:
        unit = "line" if self.file_type in ("jsonl", "csv") else "row"
        return f"{self.name}: {unit} {position}"


def open_records(path: str, file_type: str | None = None) -> RecordStream:
    name = source_name(path)
    if path == STDIO:
        return _open_stdin(file_type)
    kind = format_of(path, file_type, option="--input-format")
    if kind == "parquet":
        return _parquet_stream(name, path)
    if kind == "json":
        return _json_stream(name, _read_file_bytes(path))
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        fh = opener(path, "rb")
    except OSError as exc:
        raise UserError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if kind == "jsonl":
        return _jsonl_stream(name, fh)
    return _csv_stream(name, fh, delimiter="\t" if ".tsv" in str(path).lower() else ",")


def _read_file_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _open_stdin(file_type: str | None) -> RecordStream:
    kind, stream = open_stdin(file_type, option="--input-format")
    if kind == "parquet":
        return _parquet_stream("<stdin>", io.BytesIO(stream.read()))
    if kind == "json":
        return _json_stream("<stdin>", stream.read())
    if kind == "jsonl":
        return _jsonl_stream("<stdin>", stream)
    return _csv_stream("<stdin>", stream, delimiter=",")


# --------------------------------------------------------------------------- the readers


def _parquet_stream(name: str, source) -> RecordStream:
    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{name}: not a readable Parquet file ({exc})") from None
    present = parquet.schema_arrow.names

    def batches(
        columns: list[str] | None,
        size: int,
        messages: str | None = None,
        answers: tuple[str, str] | None = None,
    ):
        wanted = [c for c in dict.fromkeys(columns or present) if c in present]

        def holds_messages(column: str | None) -> bool:
            return column in wanted and _is_message_list(parquet.schema_arrow.field(column).type)

        answer_texts = answers if answers and all(map(holds_messages, answers)) else None
        # A prompt column that is also an answer column keeps its assistant turns, unless
        # they are taken out as ANSWER_TEXTS first.
        shrink = (
            messages
            if holds_messages(messages) and (answer_texts or messages not in (answers or ()))
            else None
        )
        position = 0
        try:
            for batch in parquet.iter_batches(batch_size=size, columns=wanted):
                if shrink or answer_texts:
                    records = _slim_records(batch, shrink, answer_texts)
                else:
                    records = batch.to_pylist()
                yield list(range(position, position + len(records))), records
                position += len(records)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{name}: row {position}: cannot read ({exc})") from None

    return RecordStream(name, "parquet", present, batches, parquet.metadata.num_rows)


def _is_message_list(kind: pa.DataType) -> bool:
    """``list<struct<role: string, content: string, ...>>``, as in Arena conversations."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return False
    item = kind.value_type
    if not pa.types.is_struct(item):
        return False
    fields = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    return all(
        name in fields
        and (pa.types.is_string(fields[name]) or pa.types.is_large_string(fields[name]))
        for name in ("role", "content")
    )


def _slim_records(
    batch: pa.RecordBatch, prompt: str | None, answers: tuple[str, str] | None
) -> list[dict]:
    """Records whose message columns never become Python objects whole: the ``prompt``
    column holds only its user turns' text, and the two ``answers`` columns are replaced
    by their assistant turns' text (the fields ``ANSWER_TEXTS``)."""
    frame = pl.from_arrow(batch)
    role = pl.element().struct.field("role").str.to_lowercase()
    texts = []
    if answers:
        texts += [
            _texts_of_turns(column, role == ASSISTANT_ROLE).alias(field)
            for column, field in zip(answers, ANSWER_TEXTS)
        ]
    if prompt:
        texts.append(_texts_of_turns(prompt, role.is_in(list(USER_ROLES))))
    frame = frame.with_columns(texts)
    if answers:
        frame = frame.drop([column for column in answers if column != prompt])
    return frame.to_dicts()


def _texts_of_turns(column: str, keep: pl.Expr) -> pl.Expr:
    return pl.col(column).list.eval(pl.element().filter(keep).struct.field("content"))


def _json_stream(name: str, data: bytes) -> RecordStream:
    try:
        records = json.loads(data)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text") from None
    if not isinstance(records, list):
        raise UserError(f"{name}: expected a JSON array of objects")
    present = list(dict.fromkeys(k for r in records[:1000] if isinstance(r, dict) for k in r))

    def batches(columns: list[str] | None, size: int, messages=None, answers=None):
        for start in range(0, len(records), size):
            chunk = [
                r if isinstance(r, dict) else BadRow("expected a JSON object")
                for r in records[start : start + size]
            ]
            yield list(range(start, start + len(chunk))), chunk

    return RecordStream(name, "json", present, batches, len(records))


def _jsonl_line(line: bytes) -> Any:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRow(f"not valid JSON ({exc.msg})")
    except UnicodeDecodeError:
        return BadRow("not UTF-8 text")
    return value if isinstance(value, dict) else BadRow("expected a JSON object")


def _jsonl_stream(name: str, fh: IO[bytes]) -> RecordStream:
    numbered = enumerate(fh, start=1)
    head: list[tuple[int, bytes]] = []
    present: list[str] = []
    for number, line in numbered:
        head.append((number, line))
        if line.strip():
            value = _jsonl_line(line)
            if isinstance(value, dict):
                present = list(value)
                break

    def batches(columns: list[str] | None, size: int, messages=None, answers=None):
        positions: list[int] = []
        records: list[Any] = []
        for number, line in _chain(head, numbered):
            if not line.strip():
                continue
            positions.append(number)
            records.append(_jsonl_line(line))
            if len(records) >= size:
                yield positions, records
                positions, records = [], []
        if records:
            yield positions, records

    return RecordStream(name, "jsonl", present, batches)


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _csv_stream(name: str, fh: IO[bytes], delimiter: str) -> RecordStream:
    csv.field_size_limit(2**31 - 1)
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader, None)
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text") from None
    except csv.Error as exc:
        raise UserError(f"{name}: line 1: not valid CSV ({exc})") from None
    if not header:
        raise UserError(f"{name}: empty CSV file (no header line)")

    def batches(columns: list[str] | None, size: int, messages=None, answers=None):
        positions: list[int] = []
        records: list[Any] = []
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader, None)
            except UnicodeDecodeError:
                raise UserError(f"{name}: line {start}: not UTF-8 text") from None
            except csv.Error as exc:
                raise UserError(f"{name}: line {start}: not valid CSV ({exc})") from None
            if row is None:
                break
            if row:
                positions.append(start)
                if len(row) == len(header):
                    records.append(dict(zip(header, row)))
                else:
                    records.append(BadRow(f"{len(row)} fields, the header has {len(header)}"))
            start = reader.line_num + 1
            if len(records) >= size:
                yield positions, records
                positions, records = [], []
        if records:
            yield positions, records

    return RecordStream(name, "csv", header, batches)


# ------------------------------------------------------------------------ one record


@dataclass
class Battle:
    id: str | None
    prompt: list[str]
    model_a: str
    model_b: str
    winner: str
    tstamp: float | None = None
    language: str | None = None
    category: str | None = None
    weight: float | None = None
    anony: bool | None = None
    style: tuple[float | None, ...] | None = None  # in STYLE_COLUMNS order


class RecordParser:
    """Turns one record of a schema into a :class:`Battle`, or the reason to drop it
    (``"empty_prompt"``, ``"unknown_winner"``, ``"same_model"``); raises :class:`BadRow`
    for a record that is malformed."""

    def __init__(self, schema: str, columns: Columns, text_fields: bool):
        self.schema = schema
        self.columns = columns
        # CSV holds only text: a prompt there may be a JSON list, and "" means missing.
        self.text_fields = text_fields

    def __call__(self, record: dict) -> Battle | str:
        c = self.columns
        prompt = self._prompt(record.get(c.prompt))
        model_a = _model(record.get(c.model_a), c.model_a)
        model_b = _model(record.get(c.model_b), c.model_b)
        if self.schema == "kaggle":
            winner = _one_hot_winner(record)
        else:
            winner = outcome_of(record.get(c.winner), model_a, model_b)
        battle = Battle(
            id=_ident(self._get(record, c.id)),
            prompt=prompt,
            model_a=model_a,
            model_b=model_b,
            winner=winner or "",
            tstamp=parse_tstamp(self._get(record, c.tstamp), c.tstamp),
            language=_label(self._get(record, c.language)),
            category=_label(self._get(record, c.category)),
            weight=_weight(self._get(record, c.weight), c.weight),
            anony=_flag(self._get(record, c.anony), c.anony),
        )
        if not prompt:
            return "empty_prompt"
        if winner is None:
            return "unknown_winner"
        if model_a == model_b:
            return "same_model"
        battle.style = self._style(record)
        return battle

    def _get(self, record: dict, column: str | None) -> Any:
        value = record.get(column) if column else None
        return None if self.text_fields and value == "" else value

    def _style(self, record: dict) -> tuple[float | None, ...] | None:
        """The style values, from the first source the record has: ``conv_metadata``; the
        assistant turns of ``conversation_a`` and ``conversation_b``; the Kaggle
        ``response_a`` and ``response_b``; its own style columns. ``None`` when it has none
        (or its source is null)."""
        if CONV_METADATA in record:
            return metadata_style(self._get(record, CONV_METADATA))
        if ANSWER_TEXTS[0] in record:
            texts = [record.get(field) for field in ANSWER_TEXTS]
            if any(t is None for t in texts):
                return None
            return _pair(*(turns_style(t for t in side if t) for side in texts))
        for columns, read in ((ARENA_ANSWERS, assistant_texts), (KAGGLE_ANSWERS, response_texts)):
            if all(column in record for column in columns):
                sides = [read(self._get(record, column), column) for column in columns]
                if any(side is None for side in sides):
                    return None
                return _pair(*(turns_style(side) for side in sides))
        return _copied_style([self._get(record, column) for column in STYLE_COLUMNS])

    def _prompt(self, value: Any) -> list[str]:
        column = self.columns.prompt or "prompt"
        if self.schema == "kaggle" and isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise BadRow(f"{column} is not a JSON list ({exc.msg})") from None
        try:
            return user_turns(value)
        except BadPrompt as exc:
            raise BadRow(f"{column}: {exc}") from None


# ------------------------------------------------------------------------ style values


def style_source_columns(present: Iterable[str]) -> list[str]:
    """The columns a file's style values come from (see ``RecordParser._style``)."""
    present = set(present)
    if CONV_METADATA in present:
        return [CONV_METADATA]
    for pair in (ARENA_ANSWERS, KAGGLE_ANSWERS):
        if set(pair) <= present:
            return list(pair)
    return [column for column in STYLE_COLUMNS if column in present]


# conv_metadata keys that differ from the column names
_METADATA_KEYS = {
    "sum_assistant_tokens_a": "sum_assistant_a_tokens",
    "sum_assistant_tokens_b": "sum_assistant_b_tokens",
}


def metadata_style(value: Any) -> tuple[float, ...] | None:
    """Style values from an Arena ``conv_metadata`` object (or its JSON text): the token
    sums, and header, bold and list counts each a number or an object of counts (summed;
    missing counts are 0). ``None`` without both token sums."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadRow(f"{CONV_METADATA} is not a JSON object ({exc.msg})") from None
    if not isinstance(value, dict):
        raise BadRow(f"{CONV_METADATA} is {type(value).__name__}, not an object")
    keys = [_METADATA_KEYS.get(column, column) for column in STYLE_COLUMNS]
    if any(value.get(_METADATA_KEYS[column]) is None for column in _METADATA_KEYS):
        return None
    return tuple(_summed_count(value.get(key), f"{CONV_METADATA} {key}") for key in keys)


def _summed_count(value: Any, what: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, dict):
        return sum(_summed_count(v, f"{what}.{k}") for k, v in value.items())
    return _count(value, what)


def _count(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRow(f"{what} {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise BadRow(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise BadRow(f"{what} {value!r} must be a finite number >= 0")
    return number


def _copied_style(values: list[Any]) -> tuple[float | None, ...] | None:
    """A battles file's own style columns: each a count or null (NaN counts as null)."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
    if all(missing):
        return None
    return tuple(
        None if gone else _count(value, column)
        for value, gone, column in zip(values, missing, STYLE_COLUMNS)
    )


def _pair(a: StyleCounts, b: StyleCounts) -> tuple[float, ...]:
    """The counts of both answers in STYLE_COLUMNS order: each element's a, then b."""
    return tuple(float(count) for counts in zip(a, b) for count in counts)


def assistant_texts(value: Any, column: str) -> list[str] | None:
    """The text of the assistant turns of a conversation: a list of ``{role, content}``
    messages (JSON text in CSV), content a string or a list of ``{type, text}`` parts of
    which only the text parts count. ``None`` for a null conversation."""
    if value is None:
        return None
    value = _decoded_list(value, column)
    texts = []
    for number, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRow(f"{column}: message {number} is not a {{role, content}} object")
        role = message.get("role")
        if isinstance(role, str) and role.lower() == ASSISTANT_ROLE:
            texts.append(_content_text(message.get("content"), column, number))
    return texts


def _content_text(content: Any, column: str, number: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "\n".join(
            part if isinstance(part, str) else part.get("text") or ""
            for part in content
            if isinstance(part, str)
            or (isinstance(part, dict) and part.get("type", "text") == "text")
        )
    raise BadRow(f"{column}: message {number} content must be text, not {type(content).__name__}")


def response_texts(value: Any, column: str) -> list[str] | None:
    """The turns of a Kaggle answer: a list of strings (JSON text in CSV), null entries
    skipped; plain text is one turn. ``None`` for a null answer."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip().startswith("["):
        return [value]
    turns = [turn for turn in _decoded_list(value, column) if turn is not None]
    if not all(isinstance(turn, str) for turn in turns):
        raise BadRow(f"{column} must be a list of strings")
    return turns


def _decoded_list(value: Any, column: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadRow(f"{column} is not a JSON list ({exc.msg})") from None
    if hasattr(value, "tolist"):  # numpy arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise BadRow(f"{column} is {type(value).__name__}, not a list")
    return list(value)


def _one_hot_winner(record: dict) -> str | None:
    flags = [_flag(record.get(c), c) for c in KAGGLE_WINNER_COLUMNS]
    if sum(1 for f in flags if f) != 1:
        return None
    return ("model_a", "model_b", "tie")[flags.index(True)]


def _model(value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{column} is {'missing' if value is None else type(value).__name__}")
    name = value.strip()
    if not name:
        raise BadRow(f"{column} is empty")
    return name


def _ident(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return utf8_text(str(value))


def _label(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return utf8_text(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _weight(value: Any, column: str) -> float | None:
    if value is None:
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise BadRow(f"{column} {value!r} is not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise BadRow(f"{column} {value!r} must be a finite number >= 0")
    return weight


_TRUE = ("true", "1", "1.0", "yes", "t")
_FALSE = ("false", "0", "0.0", "no", "f")


def _flag(value: Any, column: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise BadRow(f"{column} {value!r} is not true/false or 0/1")


def parse_tstamp(value: Any, column: str = "tstamp") -> float | None:
    """Seconds since the epoch from a number (seconds, or milli/microseconds when huge),
    a datetime, or an ISO 8601 string; naive times are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRow(f"{column} {value!r} is not a time")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if math.isnan(seconds):
            return None
        if abs(seconds) > 1e14:
            return seconds / 1e6
        if abs(seconds) > 1e11:
            return seconds / 1e3
        return seconds
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_tstamp(float(text), column)
        except ValueError:
            pass
        try:
            return parse_tstamp(datetime.fromisoformat(text.replace("Z", "+00:00")), column)
        except ValueError:
            pass
    raise BadRow(f"{column} {value!r} is not a time (seconds since 1970 or ISO 8601)")
