"""Table I/O: formats, metadata, stdin/stdout, streaming and atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pyarrow.parquet as pq
import pytest

from p2l_cli import io
from p2l_cli.errors import UserError

META = {"models": ["a", "b"], "head": "bt", "loss": "bt"}


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ["x", "y", "z"],
            "prompt": [["hi"], ["two", "turns"], ["数学"]],
            "coefs": [[0.5, -0.5], [1.0, 2.0], [0.0, 0.25]],
        }
    )


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json"])
def test_round_trip_keeps_rows_and_metadata(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    io.write_table(_frame(), path, meta=META)
    df, meta = io.read_table_meta(path)
    assert meta == META
    assert df["id"].to_list() == ["x", "y", "z"]
    assert df["prompt"].to_list() == [["hi"], ["two", "turns"], ["数学"]]
    assert df["coefs"].to_list()[1] == [1.0, 2.0]
    assert io.read_metadata(path) == META


def test_parquet_metadata_is_a_key_value_entry(tmp_path):
    path = tmp_path / "t.parquet"
    io.write_table(_frame(), path, meta=META)
    raw = pq.read_schema(path).metadata[b"p2l"]
    assert json.loads(raw) == META


def test_jsonl_first_line_carries_metadata(tmp_path):
    path = tmp_path / "t.jsonl"
    io.write_table(_frame(), path, meta=META)
    first = path.read_text().splitlines()[0]
    assert json.loads(first) == {"p2l": META}
    assert len(path.read_text().splitlines()) == 4


def test_csv_writes_nested_columns_as_json(tmp_path):
    path = tmp_path / "t.csv"
    io.write_table(_frame(), path)
    back = io.read_table(path)
    assert json.loads(back["coefs"][1]) == [1.0, 2.0]


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": \n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 3: not valid JSON"):
        io.read_table(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        io.read_table(tmp_path / "nope.parquet")
    (tmp_path / "data.xyz").write_text("x")
    with pytest.raises(UserError, match="--format"):
        io.read_table(tmp_path / "data.xyz")


def test_failed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_table_writer_streams_batches(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    frame = _frame()
    with io.TableWriter(path, meta=META) as writer:
        writer.write(frame.head(2))
        writer.write(frame.tail(1))
    got, meta = io.read_table_meta(path)
    assert meta == META
    assert got["id"].to_list() == ["x", "y", "z"]


def test_table_writer_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "s.parquet"
    io.write_table(_frame(), path, meta=META)
    with pytest.raises(ValueError), io.TableWriter(path, meta={"other": 1}) as writer:
        writer.write(_frame().head(1))
        raise ValueError("boom")
    assert io.read_metadata(path) == META


def _roundtrip_through_pipe(payload: bytes, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                          check=False)


@pytest.mark.slow
def test_stdin_is_sniffed_and_stdout_defaults_to_jsonl(tmp_path):
    src = tmp_path / "t.parquet"
    io.write_table(_frame(), src, meta=META)
    code = (
        "from p2l_cli import io\n"
        "df, meta = io.read_table_meta('-')\n"
        "io.write_table(df, '-', meta=meta)\n"
    )
    proc = _roundtrip_through_pipe(src.read_bytes(), code)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert json.loads(lines[0]) == {"p2l": META}
    assert [json.loads(line)["id"] for line in lines[1:]] == ["x", "y", "z"]

    jsonl = proc.stdout
    code = (
        "from p2l_cli import io\n"
        "df, meta = io.read_table_meta('-')\n"
        "print(meta['models'], df.height)\n"
    )
    proc = _roundtrip_through_pipe(jsonl, code)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "['a', 'b'] 3"


def test_json_output_is_strict_json(tmp_path):
    """JSON has no NaN or infinity: such values are written as null (as JSONL does), never
    as the NaN/Infinity tokens other parsers reject."""
    df = pl.DataFrame({"x": [1.5, float("inf"), float("-inf"), float("nan")],
                       "v": [[1.0, float("nan")], [2.0, 3.0], [0.0, 0.0], [1.0, 1.0]]})
    io.write_table(df, tmp_path / "t.json")
    text = (tmp_path / "t.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    rows = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert [r["x"] for r in rows] == [1.5, None, None, None]
    assert rows[0]["v"] == [1.0, None]
