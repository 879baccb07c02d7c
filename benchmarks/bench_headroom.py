"""Headroom benchmark: which prompt properties would close the gap to the truth?

Reads finished `bench_quality.py` runs (each folder holds the simulated arena with its
truth, the prepared votes and the trained model), rebuilds the features the model was
fitted on (the cached prompt encodings, the chosen smoothing and descriptor columns) and
refits the cross-validated ridge head with the simulator's true prompt properties added:

- ``category``: the prompt's planted category, one-hot;
- ``difficulty``: its planted difficulty level;
- ``multi-turn``, ``long``, ``not English``: its planted form;
- ``all``: every one of them together; ``truth only``: the true properties without the
  model's features.

Two more rows fit no head: ``true coefficients`` scores the simulator's true coefficients
themselves as the head's family reads coefficients (``bt-tie``: a tie is half a win, no tie
parameter), and ``true coefficients, scaled`` the same times one factor fitted on the
training votes by maximum likelihood. The truth is a sum of per-property effects, so a
linear head on the true properties has the right form; the gap from ``truth only`` to the
scaled truth is what estimating it from this many votes costs, the gap from the scaled truth
to 100% what the family cannot express (the truth's votes are Rao-Kupper, with ties whose
width varies by category).

Each head is scored as `p2l evaluate` scores a model: the share of the achievable NLL gain
(ties as half a win) on the held-out votes, against the marginal and the truth that the
run's ``evaluation.json`` reports. Every head is fitted as the run's `p2l train` fitted
its own (refitted under the model-covariance prior when that run's was). The first row
refits the model's own features: it must reproduce the run's share (a check of this script,
printed next to it). The gap between a
row and that one is what recognising the property perfectly would be worth to a linear
head at this many votes; nothing here is available to `p2l train`.

    python benchmarks/bench_quality.py --worlds mixed,structure --out /tmp/bq
    python benchmarks/bench_headroom.py /tmp/bq/mixed-0 /tmp/bq/mixed-1 ... --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from scipy.optimize import minimize_scalar

from p2l_cli.data.simulate import not_english
from p2l_cli.stats.headfit import fit_linear_head, prompt_groups
from p2l_cli.stats.metrics import vote_metrics
from p2l_cli.train import RunOptions, Trainer, fit_side_by_side, make_accelerator
from p2l_cli.train_config import resolve_config

TRUTH_WEIGHT = 10.0  # the few true-property columns are penalised like the descriptors at 10


def truth_of_votes(truth: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    """The rows of ``truth.parquet`` for the votes ``ids``, in their order."""
    rows = pl.DataFrame({"id": ids}).join(truth, on="id", how="left", maintain_order="left")
    if rows["category"].null_count():
        raise SystemExit("votes without a row in truth.parquet")
    return rows


def truth_blocks(rows: pl.DataFrame, categories: list[str]) -> dict:
    """The true prompt properties of the votes' ``rows``, one block of columns per property."""
    category = np.array([[c == k for k in categories] for c in rows["category"]], np.float64)

    def column(values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)[:, None]

    return {
        "category": category,
        "difficulty": column(rows["difficulty"].to_numpy()),
        "multi-turn": column(rows["turns"].to_numpy() > 1),
        "long": column(rows["long"].to_numpy()),
        "not English": column(np.array([not_english(x) for x in rows["language"].to_list()])),
    }


def truth_rows(rows: dict, train, val, family: str) -> dict:
    """The held-out NLL of the true coefficients (of the truth ``rows`` per split) read as
    ``family``'s, as they are and times the factor that fits the training votes best
    (families without a tie parameter only)."""
    if family not in ("bt", "bt-tie"):
        return {}
    true_train, true_val = (np.array(rows[s]["true_coefs"].to_list()) for s in ("train", "val"))

    def train_nll(scale: float) -> float:
        return vote_metrics(scale * true_train, train.labels, None, family, train.weights)["nll"]

    scale = float(minimize_scalar(train_nll, bounds=(0.05, 5.0), method="bounded").x)
    return {
        "true coefficients": (vote_metrics(true_val, val.labels, None, family)["nll_half"], 1.0),
        "true coefficients, scaled": (
            vote_metrics(scale * true_val, val.labels, None, family)["nll_half"], scale
        ),
    }


def model_features(
    trainer: Trainer, head_fit: dict, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The train and val features of the candidate the run chose, and its descriptor weight."""
    hidden = trainer.model.config.hidden_size
    raw_train = trainer.features["train"].float().cpu()
    train = raw_train.numpy().astype(np.float64)
    val = trainer.features["val"].float().cpu().numpy().astype(np.float64)
    steps = len(trainer.model.features.steps) if trainer.model.features is not None else 0
    if steps and head_fit.get("length_steps") is False:
        train[:, -steps:] = 0.0
        val[:, -steps:] = 0.0
    smoothing = head_fit.get("smoothing")
    if smoothing:
        embeddings = raw_train[:, :hidden].numpy()
        words = {"train": None, "val": None}
        if smoothing.get("lexical"):  # the neighbours were searched with the words too
            words = {split: trainer._prompt_words(split) for split in words}
        for smoother, smoothed in trainer._smoothing_candidates(embeddings, groups, words["train"]):
            if (smoother.k, smoother.steps) == (smoothing["k"], smoothing["steps"]):
                queries = torch.as_tensor(val[:, :hidden], dtype=torch.float32)
                train[:, :hidden] = smoothed
                val[:, :hidden] = smoother(queries, words["val"]).numpy()
                break
        else:
            raise SystemExit(f"smoothing {smoothing} is not among the candidates")
    return train, val, float(head_fit.get("descriptor_weight", 1.0))


def one_run(run: Path) -> dict:
    head_fit = json.loads((run / "model" / "metrics.json").read_text())["head_fit"]
    evaluation = json.loads((run / "evaluation.json").read_text())
    config, _, _ = resolve_config(None, {}, use_default_recipe=True)
    trainer = Trainer(config, run / "data", run / "headroom-scratch", make_accelerator(config),
                      RunOptions())  # fmt: skip
    started = time.perf_counter()
    trainer.setup()
    encode_seconds = time.perf_counter() - started
    train, val = trainer.data.train, trainer.data.val
    truth = pl.read_parquet(run / "arena" / "truth.parquet")
    categories = sorted(truth["category"].unique().to_list())
    ids = {s: pl.read_parquet(run / "data" / f"{s}.parquet", columns=["id"])["id"].to_list()
           for s in ("train", "val")}  # fmt: skip
    if (len(ids["train"]), len(ids["val"])) != (len(train.labels), len(val.labels)):
        raise SystemExit(f"{run}: the prepared files and the loaded votes differ in length")
    rows_of_truth = {split: truth_of_votes(truth, ids[split]) for split in ids}
    true_train = truth_blocks(rows_of_truth["train"], categories)
    true_val = truth_blocks(rows_of_truth["val"], categories)
    groups = prompt_groups(train.prompts)
    x_train, x_val, weight = model_features(trainer, head_fit, groups)
    hidden = trainer.model.config.hidden_size

    def with_truth(base_train, base_val, base_weights, names):
        parts_train = [base_train, *(true_train[n] for n in names)]
        parts_val = [base_val, *(true_val[n] for n in names)]
        weights = [base_weights, *(np.full(true_train[n].shape[1], TRUTH_WEIGHT) for n in names)]
        return np.concatenate(parts_train, 1), np.concatenate(parts_val, 1), np.concatenate(weights)

    own_weights = np.ones(x_train.shape[1])
    own_weights[hidden:] = weight
    empty = np.zeros((len(x_train), 0)), np.zeros((len(x_val), 0)), np.zeros(0)
    properties = list(true_train)
    variants = {"model's features": (x_train, x_val, own_weights)}
    for name in properties:
        variants[f"+ {name}"] = with_truth(x_train, x_val, own_weights, [name])
    variants["+ all"] = with_truth(x_train, x_val, own_weights, properties)
    variants["truth only"] = with_truth(*empty, properties)
    family = trainer.family

    refitted = bool(head_fit.get("model_covariance", {}).get("used"))

    def fit(xs, feature_weights):
        """The head as the run's `p2l train` fitted it: refitted under the model-covariance
        prior when the run's was."""
        torch.set_num_threads(1)
        common = {"bias": trainer.marginal.theta, "eta": trainer.marginal.eta,
                  "weights": train.weights, "groups": groups, "folds": config.cv_folds,
                  "seed": config.seed, "feature_weights": feature_weights}  # fmt: skip
        head, report = fit_linear_head(xs, train.labels, family, **common)
        if refitted and not report.fell_back:
            prior = fit_linear_head(xs, train.labels, family, directions=report,
                                    near=report.penalty, **common)  # as `p2l train` refits
            if not prior[1].fell_back:
                return prior
        return head, report

    started = time.perf_counter()
    fits = fit_side_by_side(fit, {name: (xs, w) for name, (xs, _, w) in variants.items()})
    fit_seconds = time.perf_counter() - started
    marginal = evaluation["marginal"]["nll_half"]
    oracle = evaluation["oracle"]["nll_half"]
    rows = {}
    for name, (head, report) in fits.items():
        xv = variants[name][1]
        coefs = xv @ np.asarray(head.weight).T + np.asarray(head.bias)
        eta = None if head.eta_weight is None else xv @ np.asarray(head.eta_weight) + head.eta_bias
        nll = vote_metrics(coefs, val.labels, eta, family)["nll_half"]
        rows[name] = {
            "nll_half": nll,
            "share": (marginal - nll) / (marginal - oracle),
            "penalty": report.penalty,
            "cv_nll": report.best_cv_nll,
        }
    for name, (nll, scale) in truth_rows(rows_of_truth, train, val, family).items():
        rows[name] = {"nll_half": nll, "share": (marginal - nll) / (marginal - oracle),
                      "scale": scale}  # fmt: skip
    return {
        "run": str(run),
        "world": run.name.rsplit("-", 1)[0],
        "seed": int(run.name.rsplit("-", 1)[1]),
        "reported_share": evaluation["oracle"]["fraction_captured_half"],
        "rows": rows,
        "encode_seconds": encode_seconds,
        "fit_seconds": fit_seconds,
    }


def summarise(results: list[dict]) -> None:
    names = list(results[0]["rows"])
    worlds = sorted({r["world"] for r in results})
    print(f"\n{'features':20s} " + " ".join(f"{w:>26s}" for w in worlds))
    for name in names:
        cells = []
        for world in worlds:
            shares = [100 * r["rows"][name]["share"] for r in results if r["world"] == world]
            each = ", ".join(f"{s:.0f}" for s in shares)
            cells.append(
                f"{np.mean(shares):4.0f}% ± {np.std(shares, ddof=1) if len(shares) > 1 else 0:3.0f} ({each})"
            )
        print(f"{name:20s} " + " ".join(f"{c:>26s}" for c in cells))
    for r in results:
        refit = 100 * r["rows"]["model's features"]["share"]
        print(
            f"{r['world']}-{r['seed']}: refit share {refit:.2f}% vs the run's "
            f"{100 * r['reported_share']:.2f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_quality run folders")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        result = one_run(run)
        results.append(result)
        print(f"{run}: " + ", ".join(f"{k} {100 * v['share']:.1f}%"
                                     for k, v in result["rows"].items())
              + f" ({result['encode_seconds']:.0f} s setup, {result['fit_seconds']:.0f} s fits)",
              flush=True)  # fmt: skip
        if args.json:
            payload = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                       "results": results}  # fmt: skip
            args.json.write_text(json.dumps(payload, indent=1))
    summarise(results)


if __name__ == "__main__":
    main()
