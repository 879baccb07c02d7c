"""Padding benchmark: how many token positions a fine-tuning epoch computes, with random
batches and with `--group-by-length`, for the embedded MiniLM backbone.

Every batch is padded to its longest prompt, so an epoch costs the sum over batches of
batch size x longest length (the positions every layer's feed-forward computes), and its
attention the sum of batch size x longest length squared. The orders are those `p2l train`
uses (`p2l_cli.train_data.epoch_order`, one process, no gradient accumulation), on the
training votes of a `p2l simulate` + `p2l prepare` run like ``bench_quality.py``'s, or of
a data folder you pass.

    python benchmarks/bench_padding.py                          # mixed world, seed 0
    python benchmarks/bench_padding.py --data data/ --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from bench_quality import simulate_and_prepare  # this folder is on sys.path

from p2l_cli.model import build_p2l
from p2l_cli.train_data import MEGABATCH, Layout, epoch_order, load_data_dir, tokenize


def padded_cost(order: np.ndarray, lengths: np.ndarray, layout: Layout) -> dict:
    """Positions computed and the attention proxy over the epoch's full steps."""
    positions = attention = real = 0
    for step in range(layout.steps_per_epoch(len(order))):
        examples = order[step * layout.global_batch : (step + 1) * layout.global_batch]
        batch = layout.micro_batch(examples, 0, 0)
        longest = int(lengths[batch].max())
        positions += len(batch) * longest
        attention += len(batch) * longest**2
        real += int(lengths[batch].sum())
    return {"real_tokens": real, "padded_positions": positions,
            "padding_factor": positions / real, "attention_positions": attention}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a p2l prepare folder (default: simulate one)")
    parser.add_argument("--world", default="mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = (
            Path(args.data)
            if args.data
            else simulate_and_prepare(Path(tmp), args.world, args.seed)[1]
        )
        data = load_data_dir(data_dir)
        model, tokenizer = build_p2l("minilm", data.models, max_length=args.max_length)
        token_ids = tokenize(tokenizer, data.train, model.info)
    lengths = np.array([min(len(r), model.info.max_length) for r in token_ids], dtype=np.int64)
    layout = Layout(args.batch_size, processes=1, grad_accum=1)
    rows = []
    for grouped in (False, True):
        for epoch in range(args.epochs):
            order = epoch_order(len(lengths), epoch, seed=42, lengths=lengths if grouped else None,
                                global_batch=layout.global_batch)  # fmt: skip
            rows.append({"batches": "grouped" if grouped else "random", "epoch": epoch,
                         **padded_cost(order, lengths, layout)})  # fmt: skip

    print(f"{len(lengths):,} training votes, prompts of {lengths.min()}-{lengths.max()} tokens "
          f"(median {int(np.median(lengths))}), batch {args.batch_size}, "
          f"megabatches of {MEGABATCH} batches when grouped")  # fmt: skip
    print(f"{'batches':<8} {'epoch':>5} {'real tokens':>12} {'positions':>12} {'factor':>7} "
          f"{'attention':>15}")  # fmt: skip
    for row in rows:
        print(f"{row['batches']:<8} {row['epoch']:>5} {row['real_tokens']:>12,} "
              f"{row['padded_positions']:>12,} {row['padding_factor']:>7.2f} "
              f"{row['attention_positions']:>15,}")  # fmt: skip
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
