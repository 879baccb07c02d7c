"""Benchmarks for `p2l train` on CPU with the embedded MiniLM backbone (run by hand).

1. Step overhead: one full fine-tuning step of p2l's loop (collate, forward, vote NLL,
   backward, clipping, AdamW, schedule) against the backbone's own forward+backward on the
   same batches, measured alternately so that machine load hits both alike.
   Target: at most 1.15x.
2. Frozen backbone: epochs of head-only training after the first (the first pays for the
   pooled features, which are then cached) against full fine-tuning epochs at the same batch
   size. Target: at least 20x faster.
3. Quality: `p2l train DATA -o MODEL --recipe minilm-cpu` on `p2l simulate` data, as a user
   runs it (a subprocess, wall time included): validation NLL against the marginal
   leaderboard fit on the training votes; the simulation's true coefficients and a
   per-category marginal fit give the ceiling for context.

    python benchmarks/bench_train.py                 # 6,000 battles, 12 models
    python benchmarks/bench_train.py --battles 3000 --steps 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from p2l_cli.model import collate, encode_prompts, load_p2l
from p2l_cli.stats.families import vote_nll
from p2l_cli.stats.marginal import fit_marginal
from p2l_cli.stats.metrics import vote_metrics
from p2l_cli.train import RunOptions, Trainer, make_accelerator, train_p2l
from p2l_cli.train_config import resolve_config
from p2l_cli.ui import console


def p2l(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, "-m", "p2l_cli", *args], check=True, env=env, cwd=REPO)


def make_data(out: Path, battles: int, models: int, seed: int) -> tuple[Path, Path]:
    arena, data = out / "arena", out / "data"
    if not (data / "train.parquet").is_file():
        p2l("simulate", str(arena), "--battles", str(battles), "--models", str(models),
            "--seed", str(seed), "-q")
        p2l("prepare", str(arena / "battles.parquet"), "-o", str(data), "--val-fraction", "0.2",
            "-q")
    return arena, data


def build_trainer(data: Path, out: Path, cache: Path, **overrides) -> Trainer:
    out.mkdir(parents=True, exist_ok=True)
    config, _, _ = resolve_config("minilm-cpu", overrides)
    accelerator = make_accelerator(config)
    trainer = Trainer(config, data, out, accelerator, RunOptions(cache_dir=cache))
    trainer.setup()
    return trainer


# ------------------------------------------------------------------------ 1. overhead


def backbone_forward_backward(trainer: Trainer, examples: np.ndarray) -> None:
    """What any fine-tuning of the backbone pays: forward, a scalar of the pooled states,
    backward (gradients dropped afterwards, as an optimizer step would)."""
    ids = trainer.token_ids["train"]
    input_ids, mask = collate([ids[i] for i in examples], trainer.tokenizer.pad_token_id)
    hidden = trainer.model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    hidden.mean(dim=1).sum().backward()
    for param in trainer.model.parameters():
        param.grad = None


def step_overhead(data: Path, out: Path, batch_size: int, steps: int) -> dict:
    trainer = build_trainer(data, out / f"overhead-{batch_size}", out / "cache",
                            freeze_backbone=False, batch_size=batch_size, eval_every=10**9)
    order = trainer._epoch_order(0)
    size = trainer.layout.global_batch
    step_times, base_times = [], []
    for i in range(steps + 2):  # the first two warm up
        examples = order[i * size : (i + 1) * size]
        start = time.perf_counter()
        backbone_forward_backward(trainer, examples)
        middle = time.perf_counter()
        trainer._train_step(order)
        end = time.perf_counter()
        if i >= 2:
            base_times.append(middle - start)
            step_times.append(end - middle)
    tokens = np.mean([len(trainer.token_ids["train"][i]) for i in order[: steps * size]])
    return {
        "batch_size": batch_size,
        "mean_tokens": round(float(tokens), 1),
        "backbone_fwd_bwd_s": round(statistics.median(base_times), 4),
        "p2l_step_s": round(statistics.median(step_times), 4),
        "ratio_of_medians": round(statistics.median(step_times) / statistics.median(base_times), 3),
        "ratio_of_sums": round(sum(step_times) / sum(base_times), 3),
    }


# ------------------------------------------------------------------- 2. frozen backbone


def frozen_epochs(data: Path, out: Path, epochs: int, full_steps: int) -> dict:
    config, _, _ = resolve_config("minilm-cpu", {})
    timings: dict[int, float] = {}
    original = Trainer._train_step

    def timed(self, order):
        start = time.perf_counter()
        result = original(self, order)
        epoch = self.state.epoch
        timings[epoch] = timings.get(epoch, 0.0) + time.perf_counter() - start
        return result

    cache = out / "frozen-cache"
    shutil.rmtree(cache, ignore_errors=True)
    setup_start = time.perf_counter()
    build_trainer(data, out / "frozen-cold", cache)  # computes and caches the features
    cold_setup = time.perf_counter() - setup_start
    setup_start = time.perf_counter()
    trainer = build_trainer(data, out / "frozen-warm", cache)  # reads them back
    warm_setup = time.perf_counter() - setup_start

    Trainer._train_step = timed
    try:
        start = time.perf_counter()
        train_p2l(data, out / "frozen", "minilm-cpu", {"epochs": epochs, "patience": 10**6,
                  "eval_every": 10**9}, RunOptions(overwrite=True, cache_dir=cache))
        frozen_wall = time.perf_counter() - start
    finally:
        Trainer._train_step = original

    # full fine-tuning at the recipe's batch size: time a few steps, scale to an epoch
    full = build_trainer(data, out / "full", cache, freeze_backbone=False, eval_every=10**9)
    order = full._epoch_order(0)
    full._train_step(order)  # warm-up
    start = time.perf_counter()
    for _ in range(full_steps):
        full._train_step(order)
    full_step = (time.perf_counter() - start) / full_steps
    full_epoch = full_step * full.steps_per_epoch
    later = [timings[e] for e in sorted(timings) if e > 0]
    return {
        "batch_size": config.batch_size,
        "steps_per_epoch": trainer.steps_per_epoch,
        "setup_computing_features_s": round(cold_setup, 2),
        "setup_with_cached_features_s": round(warm_setup, 2),
        "feature_extraction_s": round(cold_setup - warm_setup, 2),
        "frozen_run_wall_s (cached features)": round(frozen_wall, 2),
        "frozen_epoch_s": [round(timings[e], 3) for e in sorted(timings)],
        "full_finetune_step_s": round(full_step, 4),
        "full_finetune_epoch_s (steps x step time)": round(full_epoch, 1),
        "speedup_after_first_epoch": round(full_epoch / statistics.mean(later), 1),
    }


# --------------------------------------------------------------------------- 3. quality


def reference_points(data: Path, arena: Path) -> dict:
    train = pl.read_parquet(data / "train.parquet")
    val = pl.read_parquet(data / "val.parquet")
    models = json.loads((data / "models.json").read_text())
    truth = pl.read_parquet(arena / "truth.parquet").select("id", "true_coefs")
    joined = val.join(truth, on="id", how="left")
    labels = np.asarray(val["labels"].to_list())
    oracle = vote_metrics(np.asarray(joined["true_coefs"].to_list()), labels, None, "bt")
    train_labels = np.asarray(train["labels"].to_list())
    coefs = np.zeros((len(val), len(models)))
    for category in val["category"].unique():
        rows = train_labels[(train["category"] == category).to_numpy()]
        fit = fit_marginal(rows[:, 0], rows[:, 1], rows[:, 2], len(models), "bt")
        coefs[(val["category"] == category).to_numpy()] = fit.theta
    per_category = vote_metrics(coefs, labels, None, "bt")
    return {"oracle_nll": round(oracle["nll"], 4), "per_category_marginal_nll":
            round(per_category["nll"], 4)}


def paired_gain(model_dir: Path, data: Path) -> tuple[float, float]:
    """Mean per-vote NLL gain of the model over the marginal fit on the validation votes,
    and its standard error (the same votes score both)."""
    model, tokenizer = load_p2l(model_dir)
    train = pl.read_parquet(data / "train.parquet")
    val = pl.read_parquet(data / "val.parquet")
    ids = encode_prompts(tokenizer, val["prompt"].to_list(), model.info)
    coefs = []
    with torch.no_grad():
        for start in range(0, len(ids), 128):
            input_ids, mask = collate(ids[start : start + 128], tokenizer.pad_token_id)
            coefs.append(model(input_ids, mask).coefs)
    coefs = torch.cat(coefs).double()
    labels = torch.as_tensor(np.asarray(val["labels"].to_list()))
    train_labels = np.asarray(train["labels"].to_list())
    fit = fit_marginal(train_labels[:, 0], train_labels[:, 1], train_labels[:, 2],
                       coefs.shape[1], "bt")
    theta = torch.as_tensor(fit.theta).expand_as(coefs)
    keep = labels[:, 2] == 0  # bt scores decisive votes only

    def nll(c):
        pair = c.gather(1, labels[:, :2])
        return vote_nll(pair[:, 0], pair[:, 1], labels[:, 2], None, "bt")[keep]

    gain = (nll(theta) - nll(coefs)).numpy()
    return float(gain.mean()), float(gain.std(ddof=1) / np.sqrt(len(gain)))


def quality(data: Path, arena: Path, out: Path) -> dict:
    model = out / "model"
    env_cache = out / "quality-cache"
    shutil.rmtree(env_cache, ignore_errors=True)
    start = time.perf_counter()
    p2l("train", str(data), "-o", str(model), "--recipe", "minilm-cpu", "--overwrite",
        "--cache-dir", str(env_cache), "-q")
    wall = time.perf_counter() - start
    metrics = json.loads((model / "metrics.json").read_text())
    val = metrics["val"]
    result = {
        "wall_s (cold cache, incl. start-up)": round(wall, 1),
        "steps": metrics["steps"],
        "best_step": metrics["best_step"],
        "val_votes": metrics["val_votes"],
        "p2l_val_nll": round(val["p2l"]["nll"], 4),
        "marginal_val_nll": round(val["marginal"]["nll"], 4),
        "p2l_accuracy": round(val["p2l"]["accuracy"], 4),
        "marginal_accuracy": round(val["marginal"]["accuracy"], 4),
        **reference_points(data, arena),
    }
    gain, error = paired_gain(model, data)
    result["nll_gain_over_marginal"] = round(gain, 4)
    result["nll_gain_standard_error"] = round(error, 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--battles", type=int, default=6000)
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20, help="timed steps for part 1")
    parser.add_argument("--epochs", type=int, default=4, help="frozen epochs for part 2")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 on a shared machine")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/train")
    parser.add_argument("--skip", nargs="*", default=[], choices=["overhead", "frozen",
                                                                  "quality"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the p2l subprocesses
    console.quiet = True
    args.out.mkdir(parents=True, exist_ok=True)
    arena, data = make_data(args.out, args.battles, args.models, args.seed)
    results = {"machine": f"{os.cpu_count()}-core CPU, torch threads "
                          f"{torch.get_num_threads()}", "battles": args.battles,
               "models": args.models}
    if "overhead" not in args.skip:
        results["step_overhead"] = [step_overhead(data, args.out, b, args.steps)
                                    for b in (16, 64)]
        print(json.dumps(results["step_overhead"], indent=2), flush=True)
    if "frozen" not in args.skip:
        results["frozen_backbone"] = frozen_epochs(data, args.out, args.epochs,
                                                   max(3, args.steps // 4))
        print(json.dumps(results["frozen_backbone"], indent=2), flush=True)
    if "quality" not in args.skip:
        results["quality"] = quality(data, arena, args.out)
        print(json.dumps(results["quality"], indent=2), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
