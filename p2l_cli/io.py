"""Reading and writing tables: files or stdin/stdout, atomic writes, p2l metadata.

Formats: Parquet, JSONL, CSV, JSON (an array of records). The format follows the file's
extension unless given; stdin is sniffed (Parquet magic bytes, else JSON, else CSV) and
stdout defaults to JSONL. Predictions carry a JSON object in the Parquet key-value metadata
under the key ``p2l``, or as a first JSONL line ``{"p2l": {...}}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from p2l_cli.errors import UserError

STDIO = "-"
METADATA_KEY = "p2l"
FORMATS = ("parquet", "jsonl", "csv", "json")
SNIFF_BYTES = 4096  # the most read at a time while telling stdin's format
PARQUET_MAGIC = b"PAR1"
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
}


def source_name(source: str | Path) -> str:
    return "<stdin>" if str(source) == STDIO else str(source)


def format_of(
    path: str | Path, fmt: str | None = None, default: str | None = None, option: str = "--format"
) -> str:
    """The table format of ``path``: ``fmt`` if given, else its extension, else ``default``.
    Messages name ``option``, the command's option that sets ``fmt``."""
    if fmt:
        fmt = fmt.lower().lstrip(".")
        if fmt == "ndjson":
            fmt = "jsonl"
        if fmt not in FORMATS:
            raise UserError(f"{option} {fmt!r}: expected one of {', '.join(FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in Path(str(path)).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst"):
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    if default:
        return default
    raise UserError(
        f"{source_name(path)}: cannot tell the file type from the extension; use {option} "
        f"({', '.join(FORMATS)})"
    )


def sniff_format(head: bytes) -> str:
    """The table format of data that starts with ``head`` (for stdin, which has no name).
    Empty data counts as JSONL, the one format in which no rows is a valid table."""
    if head[:4] == PARQUET_MAGIC:
        return "parquet"
    first = head.lstrip()[:1]
    if first in (b"{", b""):
        return "jsonl"
    return "json" if first == b"[" else "csv"


# ---------------------------------------------------------------------------------- reading


def open_stdin(fmt: str | None = None, option: str = "--format") -> tuple[str, IO[bytes]]:
    """stdin as ``(format, stream)``: ``fmt`` if given, else sniffed from the first bytes,
    which the stream still yields. It reads only what has arrived once the format is clear,
    so a live pipe streams. Every reader of tables on stdin opens it here."""
    stream = sys.stdin.buffer
    if fmt:
        return format_of(STDIO, fmt, option=option), stream
    head = b""
    while len(head) < len(PARQUET_MAGIC) or not head.strip():
        chunk = stream.read1(SNIFF_BYTES)
        if not chunk:
            break
        head += chunk
    return sniff_format(head), io.BufferedReader(_Chained(head, stream))


class _Chained(io.RawIOBase):
    """Bytes already read from a stream, then the rest of the stream."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_bytes(source: str | Path) -> bytes:
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{source}: is a folder, expected a file") from None
    except OSError as exc:
        raise UserError(f"{source}: cannot read ({exc.strerror})") from None


def _first_bad_json_line(data: bytes) -> tuple[int, str] | None:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return number, f"not valid JSON ({exc.msg})"
        if not isinstance(value, dict):
            return number, "expected a JSON object"
    return None


def split_metadata_line(data: bytes) -> tuple[dict | None, bytes]:
    """Strip a leading ``{"p2l": {...}}`` line from JSONL bytes."""
    stripped = data.lstrip()
    newline = stripped.find(b"\n")
    first = stripped if newline < 0 else stripped[:newline]
    if b'"' + METADATA_KEY.encode() + b'"' not in first:
        return None, data
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return None, data
    if isinstance(obj, dict) and set(obj) == {METADATA_KEY} and isinstance(obj[METADATA_KEY], dict):
        return obj[METADATA_KEY], (b"" if newline < 0 else stripped[newline + 1 :])
    return None, data


def parse_table(data: bytes, fmt: str, name: str) -> tuple[pl.DataFrame, dict | None]:
    meta = None
    if fmt == "parquet":
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{name}: not a readable Parquet file ({exc})") from None
        raw = (table.schema.metadata or {}).get(METADATA_KEY.encode())
        if raw:
            meta = json.loads(raw)
        return pl.from_arrow(table), meta
    if fmt == "jsonl":
        meta, data = split_metadata_line(data)
        if not data.strip():
            return pl.DataFrame(), meta
        try:
            return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None), meta
        except Exception as exc:  # noqa: BLE001 -- polars raises several types; find the line
            bad = _first_bad_json_line(data)
            if bad:
                raise UserError(f"{name}: line {bad[0]}: {bad[1]}") from None
            raise UserError(f"{name}: cannot read as JSONL ({str(exc).splitlines()[0]})") from None
    if fmt == "json":
        try:
            records = json.loads(data)
        except json.JSONDecodeError as exc:
            raise UserError(f"{name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if isinstance(records, dict) and METADATA_KEY in records and "rows" in records:
            meta, records = records[METADATA_KEY], records["rows"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UserError(f"{name}: expected a JSON array of objects")
        return pl.from_dicts(records, infer_schema_length=None) if records else pl.DataFrame(), meta
    if fmt == "csv":
        separator = "\t" if name.lower().endswith(".tsv") else ","
        try:
            return (
                pl.read_csv(
                    io.BytesIO(data),
                    separator=separator,
                    infer_schema_length=10000,
                    truncate_ragged_lines=False,
                ),
                meta,
            )
        except Exception as exc:  # noqa: BLE001 -- polars raises several types
            raise UserError(f"{name}: cannot read as CSV ({str(exc).splitlines()[0]})") from None
    raise UserError(f"{name}: unknown format {fmt!r}")


def read_table_meta(
    source: str | Path, fmt: str | None = None
) -> tuple[pl.DataFrame, dict | None]:
    """Read a whole table and its p2l metadata (``None`` when it has none)."""
    name = source_name(source)
    if str(source) == STDIO:
        fmt, stream = open_stdin(fmt)
        data = stream.read()
    else:
        data = _read_bytes(source)
        fmt = format_of(source, fmt)
    if not data.strip():
        raise UserError(f"{name}: empty input")
    return parse_table(data, fmt, name)


def read_table(source: str | Path, fmt: str | None = None) -> pl.DataFrame:
    return read_table_meta(source, fmt)[0]


def read_metadata(source: str | Path) -> dict | None:
    """The p2l metadata of a file without reading its rows (Parquet) or only its first line."""
    if str(source) == STDIO:
        raise UserError("read_metadata cannot peek at stdin; use read_table_meta")
    fmt = format_of(source)
    path = Path(source)
    if not path.exists():
        raise UserError(f"{source}: no such file")
    if fmt == "parquet":
        try:
            raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY.encode())
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{source}: not a readable Parquet file ({exc})") from None
        return json.loads(raw) if raw else None
    if fmt == "jsonl":
        with path.open("rb") as fh:
            return split_metadata_line(fh.readline())[0]
    return read_table_meta(source, fmt)[1]


# ---------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.
    A folder that cannot be written is the user's error, named by ``path`` (not by the
    hidden temporary file)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise UserError(f"{target}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.filename in (tmp, str(target)) or exc.filename2 == str(target):
            raise UserError(f"{target}: cannot write ({exc.strerror or exc})") from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | Path | None, option: str) -> None:
    """Fail early, before long work, when ``path`` cannot be written: a folder, or a place
    where no file can be created (tried with a temporary file, which is removed)."""
    if path is None:
        return
    if str(path) == STDIO:
        stdout_buffer()  # a closed stdout is found now, not after the work
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{option} {path}: is a folder, expected a file name")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".p2l-write-check.", dir=folder)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


OVERWRITE = "--overwrite"


def check_output_folder(path: str | Path, option: str, overwrite: bool) -> bool:
    """The rule for output folders (simulate, prepare, train, demo): a folder that already
    holds files is refused unless ``--overwrite`` is given. Returns whether it holds files."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{option} {path}: exists and is not a folder")
    used = target.is_dir() and any(target.iterdir())
    if used and not overwrite:
        raise UserError(f"{option} {path}: folder is not empty; pass {OVERWRITE} to replace its files")
    return used


def _same_path(a: str | Path, b: str | Path) -> bool:
    first, second = Path(a), Path(b)
    with contextlib.suppress(OSError):
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def refuse_overwriting_inputs(
    outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]
) -> None:
    """Refuse an output option that names one of the command's input files (or another
    output): writing it would destroy the input. Paths are compared resolved, and by
    ``os.path.samefile`` when both exist (hard and symbolic links)."""
    named = [(o, p) for o, p in outputs.items() if p is not None and str(p) != STDIO]
    sources = [(o, p) for o, p in inputs.items() if p is not None and str(p) != STDIO]
    for number, (option, path) in enumerate(named):
        for other, source in sources:
            if _same_path(path, source):
                raise UserError(f"{option} {path}: is the input file {other}; it would be "
                                "overwritten, write elsewhere")
        for other, earlier in named[:number]:
            if _same_path(path, earlier):
                raise UserError(f"{option} {path}: is also {other}; give two different files")


def stdout_buffer() -> IO[bytes]:
    """The binary standard output, or the user's error when it is closed (``>&-``)."""
    if sys.stdout is None or getattr(sys.stdout, "buffer", None) is None:
        raise UserError("-o -: standard output is closed")
    return sys.stdout.buffer


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    if str(path) == STDIO:
        stdout_buffer()  # closed: the user's error
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _arrow_with_meta(df: pl.DataFrame, meta: dict | None) -> pa.Table:
    table = df.to_arrow()
    if meta is not None:
        existing = dict(table.schema.metadata or {})
        existing[METADATA_KEY.encode()] = json.dumps(meta).encode()
        table = table.replace_schema_metadata(existing)
    return table


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    return value


def _flatten_for_csv(df: pl.DataFrame) -> pl.DataFrame:
    nested = [n for n, t in df.schema.items() if isinstance(t, (pl.List, pl.Array, pl.Struct))]
    if not nested:
        return df
    return df.with_columns(
        pl.col(n).map_elements(
            lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v, ensure_ascii=False),
            return_dtype=pl.String,
        )
        for n in nested
    )


def _encode(df: pl.DataFrame, fmt: str, meta: dict | None, fh: IO[bytes]) -> None:
    if fmt == "parquet":
        pq.write_table(_arrow_with_meta(df, meta), fh, compression="zstd")
    elif fmt == "jsonl":
        if meta is not None:
            fh.write(json.dumps({METADATA_KEY: meta}).encode() + b"\n")
        df.write_ndjson(fh)
    elif fmt == "csv":
        _flatten_for_csv(df).write_csv(fh)
    elif fmt == "json":
        rows = df.to_dicts()
        obj: Any = {METADATA_KEY: meta, "rows": rows} if meta is not None else rows
        obj = _finite_or_null(obj)  # as JSONL does: JSON has no NaN or infinity
        fh.write(json.dumps(obj, ensure_ascii=False, default=_json_default).encode())
        fh.write(b"\n")
    else:
        raise UserError(f"unknown output format {fmt!r}")


def write_table(
    df: pl.DataFrame, dest: str | Path, fmt: str | None = None, meta: dict | None = None
) -> None:
    """Write ``df`` to a file (atomically) or to stdout (``-``; JSONL unless ``fmt`` says)."""
    if str(dest) == STDIO:
        fmt = format_of(dest, fmt, default="jsonl")
        buffer = io.BytesIO()
        _encode(df, fmt, meta, buffer)
        out = stdout_buffer()
        out.write(buffer.getvalue())
        out.flush()
        return
    fmt = format_of(dest, fmt)
    with atomic_path(dest) as tmp, tmp.open("wb") as fh:
        _encode(df, fmt, meta, fh)


class TableWriter:
    """Write a table batch by batch (Parquet or JSONL; stdout for ``-``), atomically for files.

    Use as a context manager; on an exception the destination file is left untouched.
    """

    def __init__(self, dest: str | Path, fmt: str | None = None, meta: dict | None = None):
        self.dest = dest
        self.to_stdout = str(dest) == STDIO
        self.fmt = format_of(dest, fmt, default="jsonl" if self.to_stdout else None)
        if self.fmt not in ("parquet", "jsonl"):
            raise UserError(f"streamed output must be Parquet or JSONL, not {self.fmt}")
        self.meta = meta
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._stack = contextlib.ExitStack()
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> TableWriter:  # noqa: PYI034 -- Self needs Python 3.11
        if self.to_stdout:
            self._fh = stdout_buffer()
        else:
            tmp = self._stack.enter_context(atomic_path(self.dest))
            self._fh = self._stack.enter_context(tmp.open("wb"))
        if self.fmt == "jsonl" and self.meta is not None:
            self._fh.write(json.dumps({METADATA_KEY: self.meta}).encode() + b"\n")
        return self

    def write(self, df: pl.DataFrame) -> None:
        assert self._fh is not None, "use TableWriter as a context manager"
        if self.fmt == "jsonl":
            df.write_ndjson(self._fh)
            self._fh.flush()
        else:
            table = _arrow_with_meta(df, self.meta)
            if self._parquet is None:
                self._schema = table.schema
                self._parquet = pq.ParquetWriter(self._fh, self._schema, compression="zstd")
            else:
                table = table.cast(self._schema)
            self._parquet.write_table(table)
        self.rows += df.height

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.fmt == "parquet" and self._parquet is None:
                self._parquet = pq.ParquetWriter(
                    self._fh, _arrow_with_meta(pl.DataFrame(), self.meta).schema
                )
            if self._parquet is not None:
                self._parquet.close()
        finally:
            if self.to_stdout and self._fh is not None:
                self._fh.flush()
            self._stack.__exit__(exc_type, exc, tb)


def read_json_file(path: Path, expected: type | None = None):
    """A JSON file of a model folder; a truncated or unreadable one is the user's error,
    named."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if expected is not None and not isinstance(value, expected):
        kind = "an object" if expected is dict else "an array"
        raise UserError(f"{path}: expected a JSON {kind}")
    return value
