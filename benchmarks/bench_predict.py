"""Speed and memory of `p2l predict` on the embedded MiniLM backbone (CPU).

Throughput, in prompts per second, of:

- ``backbone``: the backbone's own batched forward pass (tokenizer with padding, batches of
  ``--batch-size`` in input order, ``last_hidden_state``), what P2L should at least match;
- ``backbone_only``: the backbone alone on P2L's own length-sorted batches, tokenized in
  advance (so the ratio shows P2L's whole overhead: tokenization, head, reordering);
- ``p2l``: :func:`p2l_cli.predict.predict_prompts` (length-sorted, token-budget batches);
- ``fixed``: the same P2L model fed fixed-size batches in input order.

on a uniform set (all prompts of similar length) and a length-skewed set (many short prompts,
a few long ones). Targets: p2l >= 0.9x backbone (and near backbone_only); p2l >= 1.5x
fixed on the skewed set.

Then peak memory (max RSS) of the real CLI streaming JSONL -> JSONL and JSONL -> Parquet for
two input sizes: it should not grow with the number of prompts.

    .venv/bin/python benchmarks/bench_predict.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_predict.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from p2l_cli.model import build_p2l, collate, save_p2l
from p2l_cli.predict import DEFAULT_BATCH_TOKENS, encode, plan_batches, predict_prompts

VOCABULARY = (
    "the a model prompt write explain code python function list sort data table query "
    "translate poem story history science math equation derivative integral cat dragon "
    "moon sea autumn recipe cook travel plan budget email letter summary review question"
)
WORDS = VOCABULARY.split()
MODELS = [f"model-{i:02d}" for i in range(24)]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def uniform_prompts(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[sentence(rng, rng.randint(50, 70))] for _ in range(n)]


def skewed_prompts(n: int, seed: int = 1) -> list[list[str]]:
    """90% short (5-25 words), 10% long (200-300 words), in random order."""
    rng = random.Random(seed)
    return [
        [sentence(rng, rng.randint(200, 300) if rng.random() < 0.1 else rng.randint(5, 25))]
        for _ in range(n)
    ]


def best_times(runs: dict, repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` timings of each run, the runs taken in turn so that a
    change in machine load hits them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for key, fn in runs.items():
            started = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - started)
    return best


@torch.inference_mode()
def backbone_forward(model, tokenizer, prompts, batch_size: int, max_length: int) -> list:
    texts = ["\n\n".join(turns) for turns in prompts]
    pooled = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        pooled.append(hidden[:, 0])
    return pooled


@torch.inference_mode()
def backbone_only(model, batches) -> list:
    """The backbone alone on P2L's own batches, tokenized and padded in advance: the
    strictest floor (no tokenization, no head, no reordering)."""
    return [model.model(input_ids=x, attention_mask=m).last_hidden_state[:, 0] for x, m in batches]


@torch.inference_mode()
def fixed_order(model, tokenizer, prompts, batch_size: int) -> None:
    ids = encode(model, tokenizer, prompts)
    for start in range(0, len(ids), batch_size):
        input_ids, mask = collate(ids[start : start + batch_size], tokenizer.pad_token_id)
        model(input_ids, mask)


def throughput(model, tokenizer, name, prompts, args) -> dict:
    limit = 512
    lengths = [len(row) for row in encode(model, tokenizer, prompts)]
    n = len(prompts)
    ids = encode(model, tokenizer, prompts)
    batches = [
        collate([ids[i] for i in batch], tokenizer.pad_token_id)
        for batch in plan_batches(lengths, args.batch_tokens or DEFAULT_BATCH_TOKENS["cpu"])
    ]
    runs = {
        "backbone": lambda: backbone_forward(model, tokenizer, prompts, args.batch_size, limit),
        "backbone_only": lambda: backbone_only(model, batches),
        "p2l": lambda: predict_prompts(model, tokenizer, prompts, batch_tokens=args.batch_tokens),
        "fixed": lambda: fixed_order(model, tokenizer, prompts, args.batch_size),
    }
    predict_prompts(model, tokenizer, prompts[:32])  # warm up
    rates = {key: n / seconds for key, seconds in best_times(runs, args.repeats).items()}
    result = {
        "set": name,
        "prompts": n,
        "tokens_mean": sum(lengths) / n,
        "tokens_max": max(lengths),
        **{f"{k}_prompts_per_s": round(v, 1) for k, v in rates.items()},
        "p2l_vs_backbone": round(rates["p2l"] / rates["backbone"], 2),
        "p2l_vs_backbone_only": round(rates["p2l"] / rates["backbone_only"], 2),
        "p2l_vs_fixed": round(rates["p2l"] / rates["fixed"], 2),
    }
    print(json.dumps(result), flush=True)
    return result


def peak_rss_mb(command: list[str]) -> float:
    """Max resident set size of a command, from GNU time."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as report:
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
        return int(Path(report.name).read_text().split()[-1]) / 1024


def memory(folder: Path, sizes: list[int], chunk_rows: int, work: Path) -> list[dict]:
    rng = random.Random(2)
    results = []
    for size in sizes:
        source = work / f"prompts-{size}.jsonl"
        with source.open("w") as fh:
            for i in range(size):
                fh.write(json.dumps({"id": i, "prompt": sentence(rng, rng.randint(5, 40))}) + "\n")
        for out in ("preds.jsonl", "preds.parquet"):
            command = [sys.executable, "-m", "p2l_cli", "predict", str(folder), str(source)]
            command += ["-o", str(work / out), "--chunk-rows", str(chunk_rows), "-q"]
            started = time.perf_counter()
            rss = peak_rss_mb(command)
            result = {
                "prompts": size,
                "output": out.split(".")[-1],
                "peak_rss_mb": round(rss, 1),
                "wall_s": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: p2l's")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="2000,16000", help="prompt counts for the RSS runs")
    parser.add_argument("--chunk-rows", type=int, default=256, help="for the RSS runs")
    parser.add_argument("--only", choices=["throughput", "memory"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.repeats, args.sizes, args.chunk_rows = 128, 1, "300,1200", 100
    print(f"# machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    model, tokenizer = build_p2l("minilm", MODELS)
    model.eval()
    if args.only != "memory":
        throughput(model, tokenizer, "uniform", uniform_prompts(args.prompts), args)
        throughput(model, tokenizer, "skewed", skewed_prompts(args.prompts), args)
    if args.only != "throughput":
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_p2l(model, tokenizer, Path(tmp) / "p2l-minilm")
            sizes = [int(size) for size in args.sizes.split(",")]
            memory(folder, sizes, args.chunk_rows, Path(tmp))


if __name__ == "__main__":
    main()
