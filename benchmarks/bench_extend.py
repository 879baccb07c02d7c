"""Adding a model to a trained P2L model (`p2l extend`) against retraining from scratch.

Per seed: `p2l simulate` an arena (8,000 battles, 12 models, the mixed world), `p2l prepare`
it (2,000 held-out votes), pick the newcomer (the model whose true coefficient varies most
across prompts: a specialist, where prompt structure matters), and `p2l train` with the
defaults on the training votes without it. Then:

- extend: `p2l extend` with 100, 300 and 1,000 (or all, if fewer) of its training votes;
- one rating: the same votes, the newcomer's coefficient one number for every prompt (the
  extension's fallback, forced), the known models from the trained model;
- retrain: `p2l train` from scratch on every training vote.

Scored on the held-out votes that involve the newcomer: NLL with ties counted half (the
truth in its own family for reference), and its per-category rank error: over the
categories, the mean absolute difference between its rank by mean predicted coefficient and
by mean true coefficient. Each stage runs as a subprocess (one rating is
`p2l extend --rating-only`). Times are wall seconds, encoding included.

    python benchmarks/bench_extend.py                 # seeds 0 1 2, ~45 min on 2 cores
    python benchmarks/bench_extend.py --seeds 0
    python benchmarks/bench_extend.py --train-args "--no-smoothing"   # other `p2l train` flags
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
from pathlib import Path

import numpy as np
import polars as pl
import torch
from bench_quality import run_p2l  # this folder is on sys.path

from p2l_cli.io import read_table_meta
from p2l_cli.stats.families import half_tie_nll

SIZES = (100, 300, 1000)


def relabel(frame: pl.DataFrame, models: list[str]) -> pl.DataFrame:
    index = {name: i for i, name in enumerate(models)}
    labels = []
    for a, b, winner in frame.select("model_a", "model_b", "winner").iter_rows():
        first, second = (b, a) if winner == "model_b" else (a, b)
        code = {"model_a": 0, "model_b": 0, "tie": 1}.get(winner, 2)
        labels.append([index[first], index[second], code])
    return frame.with_columns(pl.Series("labels", labels))


def involves(frame: pl.DataFrame, name: str) -> pl.Expr:
    return (pl.col("model_a") == name) | (pl.col("model_b") == name)


def scores(predictions: Path, votes: pl.DataFrame, truth: pl.DataFrame, truth_meta: dict,
           newcomer: str) -> dict:  # fmt: skip
    """Held-out NLL (ties half) on the newcomer's votes and its per-category rank error."""
    frame, meta = read_table_meta(predictions)
    models = meta["models"]
    joined = votes.join(frame.select("id", "coefs", *(["eta"] if "eta" in frame.columns
                                                      else [])), on="id")  # fmt: skip
    coefs = torch.tensor(joined["coefs"].to_list(), dtype=torch.float64)
    eta = torch.tensor(joined["eta"].to_list(), dtype=torch.float64) if "eta" in joined.columns else None
    nll = vote_nll_half(coefs, eta, joined, models, meta["loss"])
    with_truth = joined.join(truth.select("id", "category", "true_coefs", "true_eta"), on="id")
    true_models = truth_meta["models"]
    true = np.array(with_truth["true_coefs"].to_list())[:, [true_models.index(m) for m in models]]
    true_nll = vote_nll_half(torch.tensor(true), torch.tensor(with_truth["true_eta"].to_numpy()),
                             with_truth, models, truth_meta["family"])  # fmt: skip
    predicted = np.array(with_truth["coefs"].to_list())
    errors = []
    column = models.index(newcomer)
    for category in with_truth["category"].unique().to_list():
        rows = (with_truth["category"] == category).to_numpy()
        if rows.sum() < 20:
            continue
        rank_pred = int((predicted[rows].mean(0) > predicted[rows].mean(0)[column]).sum())
        rank_true = int((true[rows].mean(0) > true[rows].mean(0)[column]).sum())
        errors.append(abs(rank_pred - rank_true))
    return {"nll_half": nll, "truth_nll_half": true_nll, "rank_error": float(np.mean(errors))}


def vote_nll_half(coefs, eta, votes: pl.DataFrame, models: list[str], family: str) -> float:
    labels = torch.tensor(relabel(votes, models)["labels"].to_list())
    rows = torch.arange(len(labels))
    a, b = coefs[rows, labels[:, 0]], coefs[rows, labels[:, 1]]
    return float(half_tie_nll(a, b, labels[:, 2], eta, family).mean())


def one_seed(root: Path, seed: int, train_flags: list[str]) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    arena, data = root / "arena", root / "data"
    run_p2l(["simulate", str(arena), "--battles", "8000", "--models", "12", "--world", "mixed",
             "--seed", str(seed)], log)  # fmt: skip
    run_p2l(["prepare", str(arena / "battles.parquet"), "-o", str(data), "--val-fraction",
             "0.25", "--seed", str(seed)], log)  # fmt: skip
    truth, truth_meta = read_table_meta(arena / "truth.parquet")
    spread = np.array(truth["true_coefs"].to_list()).std(axis=0)
    newcomer = truth_meta["models"][int(spread.argmax())]
    models = json.loads((data / "models.json").read_text())
    known = [m for m in models if m != newcomer]
    train = pl.read_parquet(data / "train.parquet")
    val = pl.read_parquet(data / "val.parquet")
    base_data = root / "data-without"
    base_data.mkdir(exist_ok=True)
    relabel(train.filter(~involves(train, newcomer)), known).write_parquet(
        base_data / "train.parquet")
    relabel(val.filter(~involves(val, newcomer)), known).write_parquet(base_data / "val.parquet")
    (base_data / "models.json").write_text(json.dumps(known))
    held_out = val.filter(involves(val, newcomer))
    prompts = root / "held_out.parquet"
    held_out.write_parquet(prompts)

    result = {"seed": seed, "newcomer": newcomer, "held_out_votes": held_out.height,
              "newcomer_train_votes": train.filter(involves(train, newcomer)).height}
    base = root / "model-without"
    result["train_without_seconds"] = run_p2l(["train", str(base_data), "-o", str(base),
                                               "--overwrite", *train_flags], log).seconds  # fmt: skip
    rng = np.random.default_rng(seed)
    theirs = train.filter(involves(train, newcomer))
    for size in SIZES:
        take = min(size, theirs.height)
        votes = root / f"votes-{size}.parquet"
        theirs[np.sort(rng.choice(theirs.height, take, replace=False))].write_parquet(votes)
        for name, flags in (("extend", []), ("one_rating", ["--rating-only"])):
            out = root / f"{name}-{size}"
            seconds = run_p2l(["extend", str(base), str(votes), "-o", str(out), "--overwrite",
                               *flags], log).seconds  # fmt: skip
            preds = root / f"{name}-{size}.parquet"
            run_p2l(["predict", str(out), str(prompts), "-o", str(preds)], log)
            fit = json.loads((out / "training_config.json").read_text())["extensions"][-1]
            result[f"{name}_{size}"] = {
                **scores(preds, held_out, truth, truth_meta, newcomer), "votes": take,
                "seconds": seconds, "fell_back": fit["head_fit"]["fell_back_to_marginal"],
            }  # fmt: skip
    full = root / "model-all"
    seconds = run_p2l(["train", str(data), "-o", str(full), "--overwrite", *train_flags],
                      log).seconds
    preds = root / "retrain.parquet"
    run_p2l(["predict", str(full), str(prompts), "-o", str(preds)], log)
    result["retrain"] = {**scores(preds, held_out, truth, truth_meta, newcomer),
                         "votes": train.height, "seconds": seconds}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/p2l-bench-extend"))
    parser.add_argument("--train-args", default="", help="extra `p2l train` flags")
    args = parser.parse_args()
    train_flags = shlex.split(args.train_args)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"p2l train {args.train_args or '(defaults)'}")
    runs = []
    for seed in args.seeds:
        run = one_seed(args.out / f"seed-{seed}", seed, train_flags)
        runs.append(run)
        print(json.dumps(run, indent=1), flush=True)
    (args.out / "results.json").write_text(json.dumps(runs, indent=1))
    print("\n| variant | newcomer's votes | held-out NLL (ties ½) | rank error per category | "
          "seconds |\n|---|---|---|---|---|")
    keys = [f"{n}_{s}" for s in SIZES for n in ("extend", "one_rating")] + ["retrain"]
    for key in keys:
        rows = [r[key] for r in runs]
        nll = np.array([r["nll_half"] for r in rows])
        print(f"| {key} | {', '.join(str(r['votes']) for r in rows)} | "
              f"{nll.mean():.4f} ± {nll.std(ddof=1) if len(nll) > 1 else 0:.4f} | "
              f"{np.mean([r['rank_error'] for r in rows]):.2f} | "
              f"{np.mean([r['seconds'] for r in rows]):.0f} |")
    truth = [r["retrain"]["truth_nll_half"] for r in runs]
    print(f"truth NLL on the same votes: {np.mean(truth):.4f}; load at the end "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
