"""Benchmark `p2l prepare` on a large Arena-schema Parquet file: wall time and peak memory.

The input is built from one simulated chunk (`simulate_arena`), its assistant answers
padded to a realistic length, repeated with fresh question ids and shifted timestamps
until it holds ``--rows`` battles. `p2l prepare` then runs in a fresh process under
``/usr/bin/time -v``, which reports its peak resident memory. Extra arguments are passed
on to `p2l prepare` (e.g. ``--batch-rows 5000``).

    python benchmarks/bench_prepare.py                  # 1.5 million battles
    python benchmarks/bench_prepare.py --rows 200000    # quicker

Files go to benchmarks/out/prepare/ (ignored by git); --keep keeps them.
"""

from __future__ import annotations

import argparse
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from p2l_cli.data.simulate import simulate_arena

OUT = Path(__file__).resolve().parent / "out" / "prepare"
FILLER = (
    "Here is a detailed answer that walks through the reasoning, gives an example, and ends "
    "with a short summary of the main points so that the reader can act on it. "
) * 40


def padded(conversation: list[dict], answer_chars: int, tag: str) -> list[dict]:
    """Assistant answers made ``answer_chars`` longer and unique per battle (as real answers
    are, so that Parquet cannot shrink them into a dictionary)."""
    start = int(tag[:4], 16) % 600
    extra = f" [{tag}] " + FILLER[start : start + answer_chars]
    return [
        {**m, "content": m["content"] + extra} if m["role"] == "assistant" else m
        for m in conversation
    ]


def build_input(path: Path, rows: int, chunk: int, models: int, answer_chars: int) -> float:
    started = time.perf_counter()
    base = simulate_arena(num_battles=chunk, num_models=models, seed=0, num_prompts=0).battles
    ids = base["question_id"].to_list()
    base = base.with_columns(
        pl.Series(
            "conversation_a",
            [padded(c, answer_chars, i) for c, i in zip(base["conversation_a"].to_list(), ids)],
        ),
        pl.Series(
            "conversation_b",
            [
                padded(c, answer_chars, i[::-1])
                for c, i in zip(base["conversation_b"].to_list(), ids)
            ],
        ),
    )
    writer = None
    written = 0
    copy = 0
    while written < rows:
        part = base.head(rows - written).with_columns(
            pl.format("{}-{}", pl.lit(f"{copy:03d}"), "question_id").alias("question_id"),
            (pl.col("tstamp") + copy * 60 * 86400.0).alias("tstamp"),
        )
        table = part.to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=10_000)
        written += part.height
        copy += 1
    writer.close()
    return time.perf_counter() - started


def to_jsonl(source: Path) -> Path:
    target = source.with_suffix(".jsonl")
    if not target.exists():
        with target.open("wb") as fh:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=20_000):
                pl.from_arrow(batch).write_ndjson(fh)
    return target


def run_prepare(source: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (GiB) of `p2l prepare` in a fresh process."""
    command = [
        sys.executable,
        "-m",
        "p2l_cli",
        "prepare",
        str(source),
        "-o",
        str(out),
        "-q",
        "--overwrite",
        *extra,
    ]
    timer = shutil.which("time") or "/usr/bin/time"
    measured = Path(timer).exists()
    if measured:
        command = [timer, "-v", *command]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{proc.stderr}")
    if measured:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        peak_kib = int(found.group(1))
    else:  # may count memory the child shared with this process before exec
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kib / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--chunk", type=int, default=100_000, help="simulated battles, repeated")
    parser.add_argument("--models", type=int, default=60)
    parser.add_argument(
        "--answer-chars", type=int, default=1500, help="characters added to every assistant answer"
    )
    parser.add_argument("--jsonl", action="store_true", help="benchmark a JSONL copy instead")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args, extra = parser.parse_known_args()

    OUT.mkdir(parents=True, exist_ok=True)
    source = OUT / f"arena-{args.rows}.parquet"
    if not source.exists():
        seconds = build_input(
            source, args.rows, min(args.chunk, args.rows), args.models, args.answer_chars
        )
        print(f"built {source.name}: {args.rows:,} battles in {seconds:.0f} s")
    metadata = pq.ParquetFile(source).metadata
    raw_gb = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    raw_gb /= 1e9
    if args.jsonl:
        source = to_jsonl(source)
    size_gb = source.stat().st_size / 1e9
    out = OUT / "data"
    wall, peak_gib = run_prepare(source, out, extra)
    summary = (out / "prepare.json").read_text()
    print(
        f"machine: {platform.machine()}, {shutil.os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}"
    )
    print(
        f"input: {args.rows:,} battles, {source.suffix[1:]}, {size_gb:.2f} GB on disk, "
        f"{raw_gb:.2f} GB as Arrow data"
    )
    print(
        f"p2l prepare: {wall:.0f} s wall, {args.rows / wall:,.0f} battles/s, "
        f"peak RSS {peak_gib:.2f} GiB"
    )
    print(
        f"outputs: {sum(p.stat().st_size for p in out.iterdir()) / 1e6:.0f} MB, "
        f"prepare.json {len(summary)} bytes"
    )
    if not args.keep:
        shutil.rmtree(OUT)


if __name__ == "__main__":
    main()
