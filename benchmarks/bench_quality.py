"""Quality benchmark: is a P2L model trained on a CPU in minutes worth it on simulated votes?

For each seed: simulate an arena (a few thousand training votes), prepare it (the demo's
command lines), hold out a share of the training prompts as the development votes that
training validates on (early stopping, best weights), train the embedded MiniLM backbone with
the ``minilm-cpu`` recipe, predict the held-out validation prompts (never seen in training,
not even for early stopping) and the simulator's fresh prompts, then report

1. the validation NLL of P2L as a share of the way from the marginal leaderboard's NLL to
   that of per-category leaderboards fitted with the true categories (target >= 90%);
2. per category, Kendall tau to the true leaderboard of the aggregated P2L leaderboard and of
   a leaderboard fitted on that category's own training votes (target: P2L at least as close);
3. unconstrained routing on the fresh prompts: the true expected win rate against uniform
   opponents of the model P2L picks per prompt, minus that of the best single model
   (target >= 5 points);

The marginal and per-category baselines are fitted on all training votes, development votes
included. Mean and spread over the seeds. Each stage runs as a subprocess
(``python -m p2l_cli ...``), as a user would run it.

    python benchmarks/bench_quality.py                    # 3 seeds, ~20 minutes on 2 cores
    python benchmarks/bench_quality.py --seeds 0 --battles 3000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from p2l_cli.demo import SIZES, Layout, Size, data_stages, evaluation_stages, model_stages
from p2l_cli.io import read_table_meta
from p2l_cli.route import expected_win_rates


def run_p2l(argv: list[str], log: Path) -> float:
    """Run ``p2l ARGV`` as a subprocess, appending its stderr to ``log``; returns seconds."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ p2l {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "p2l_cli", *argv], check=False, stdout=fh, stderr=fh, env=env
        )
    if proc.returncode != 0:
        raise SystemExit(f"p2l {argv[0]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - started


def routing_gain(predictions: Path, fresh: Path) -> dict:
    """Unconstrained routing on fresh prompts, judged by their true coefficients."""
    frame, meta = read_table_meta(predictions)
    truth = pl.read_ndjson(fresh).select(
        "id", "true_coefs", *(["true_eta"] if "true_eta" in pl.read_ndjson(fresh).columns else [])
    )
    frame = frame.select("id", "coefs", *(["eta"] if "eta" in frame.columns else []))
    joined = frame.join(truth, on="id", how="inner")
    family, m = meta["loss"], len(meta["models"])
    q = np.full(m, 1.0 / m)
    predicted = np.array(joined["coefs"].to_list(), dtype=np.float64)
    true = np.array(joined["true_coefs"].to_list(), dtype=np.float64)
    eta = joined["eta"].to_numpy() if "eta" in joined.columns else None
    true_eta = joined["true_eta"].to_numpy() if "true_eta" in joined.columns else None
    chosen = expected_win_rates(predicted, q, eta, family).argmax(axis=1)
    value = expected_win_rates(true, q, true_eta, family)
    router = float(value[np.arange(len(chosen)), chosen].mean())
    best_single = float(value.mean(axis=0).max())
    oracle = float(value.max(axis=1).mean())
    return {
        "prompts": len(chosen),
        "router": router,
        "best_single": best_single,
        "oracle_router": oracle,
        "gain_points": 100 * (router - best_single),
    }


def category_recovery(report: dict) -> dict:
    rows = [r for r in report["recovery"] if r["category"] != "(all)" and "category_fit" in r]
    p2l = np.array([r["p2l"]["kendall_tau"] for r in rows])
    own = np.array([r["category_fit"]["kendall_tau"] for r in rows])
    gap_p2l = np.array([r["p2l"]["win_prob_gap"] for r in rows])
    gap_own = np.array([r["category_fit"]["win_prob_gap"] for r in rows])
    return {
        "categories": len(rows),
        "tau_p2l": float(p2l.mean()),
        "tau_own": float(own.mean()),
        "p2l_at_least_as_close": int((p2l >= own - 1e-12).sum()),
        "gap_p2l": float(gap_p2l.mean()),
        "gap_own": float(gap_own.mean()),
    }


def one_seed(root: Path, size: Size, seed: int, train_args: list[str] = ()) -> dict:
    layout = Layout(root)
    log = root / "bench.log"
    root.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for stage in data_stages(layout, size, seed):
        seconds[stage.argv[0]] = seconds.get(stage.argv[0], 0.0) + run_p2l(stage.argv, log)
    fit = layout.fit  # the training votes, less the development votes (fit/val.parquet)
    train, predict_val = (stage.argv for stage in model_stages(layout, size, seed, True))
    train.extend(train_args)
    seconds["train"] = run_p2l(train, log)
    seconds["predict_val"] = run_p2l(predict_val, log)
    fresh = layout.arena / "prompts.jsonl"
    run_p2l(["predict", str(layout.model), str(fresh), "-o", str(layout.prompt_predictions)], log)
    evaluate = evaluation_stages(layout, plots=False)[0].argv
    run_p2l([*evaluate, "--bootstrap", "1000", "--seed", str(seed)], log)
    report = json.loads(layout.evaluation.read_text())
    metrics = json.loads((layout.model / "metrics.json").read_text())
    return {
        "seed": seed,
        "train_votes": report["train_votes"],
        "fit_votes": pl.scan_parquet(fit / "train.parquet").select(pl.len()).collect().item(),
        "dev_votes": pl.scan_parquet(fit / "val.parquet").select(pl.len()).collect().item(),
        "val_votes": report["votes"],
        "train_seconds": seconds["train"],
        "best_step": metrics.get("best_step"),
        "steps": metrics.get("steps"),
        "nll": {
            name: report[name]["nll"] for name in ("p2l", "marginal", "category_fit", "oracle")
        },
        "gain": report["gain"],
        "share_of_category_gain": report["category_fit"]["fraction_captured"],
        "share_of_oracle_gain": report["oracle"]["fraction_captured"],
        "recovery": category_recovery(report),
        "routing": routing_gain(layout.prompt_predictions, fresh),
    }


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}" + (f"  (min {min(values):.3f})" if len(values) > 1 else "")


def summarise(results: list[dict]) -> None:
    print("\nper seed:")
    for r in results:
        rec, route = r["recovery"], r["routing"]
        print(
            f"  seed {r['seed']}: {r['fit_votes']} training votes ({r['dev_votes']} more for "
            f"early stopping, {r['val_votes']} held out); train {r['train_seconds'] / 60:.1f} min "
            f"(best step {r['best_step']} of {r['steps']}), NLL p2l {r['nll']['p2l']:.4f} "
            f"marginal {r['nll']['marginal']:.4f} categories {r['nll']['category_fit']:.4f} "
            f"oracle {r['nll']['oracle']:.4f}; share of category gain "
            f"{_pct(r['share_of_category_gain'])}, of oracle gain "
            f"{_pct(r['share_of_oracle_gain'])}; tau p2l {rec['tau_p2l']:.3f} vs own votes "
            f"{rec['tau_own']:.3f} ({rec['p2l_at_least_as_close']}/{rec['categories']} "
            f"categories at least as close); routing {100 * route['router']:.1f}% vs best "
            f"single {100 * route['best_single']:.1f}% (+{route['gain_points']:.1f} points)"
        )
    print(f"\nover {len(results)} seed(s): mean ± sd")
    print(
        f"  1. share of the marginal->category-fit NLL gain: "
        f"{spread([r['share_of_category_gain'] for r in results])}  (target >= 0.90)"
    )
    print(
        f"     share of the marginal->oracle NLL gain:       "
        f"{spread([r['share_of_oracle_gain'] for r in results])}"
    )
    print(
        f"  2. mean Kendall tau per category, P2L:           "
        f"{spread([r['recovery']['tau_p2l'] for r in results])}"
    )
    print(
        f"     mean Kendall tau per category, own votes:     "
        f"{spread([r['recovery']['tau_own'] for r in results])}  (target: P2L >= this)"
    )
    print(
        f"  3. routing gain over the best single model (pts): "
        f"{spread([r['routing']['gain_points'] for r in results])}  (target >= 5)"
    )
    headroom = [
        100 * (r["routing"]["oracle_router"] - r["routing"]["best_single"]) for r in results
    ]
    print(f"     headroom: true-coefficient router over it (pts): {spread(headroom)}")
    print(
        f"     training minutes:                             "
        f"{spread([r['train_seconds'] / 60 for r in results])}  (limit 10)"
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--battles", type=int, default=None, help="default: the demo's")
    parser.add_argument("--models", type=int, default=None, help="default: the demo's")
    parser.add_argument("--small", action="store_true", help="the demo's --small size (smoke)")
    parser.add_argument("--out", default="/tmp/p2l-bench-quality")
    parser.add_argument(
        "--train-args",
        default="",
        help="extra `p2l train` flags, e.g. '--head-hidden 64' (recipe variants)",
    )
    args = parser.parse_args()
    base = SIZES["small" if args.small else "full"]
    size = Size(
        battles=args.battles or base.battles,
        models=args.models or base.models,
        prompts=base.prompts,
        train_flags=base.train_flags,
    )
    out = Path(args.out)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        print(f"seed {seed} ...", flush=True)
        result = one_seed(out / f"seed{seed}", size, seed, shlex.split(args.train_args))
        results.append(result)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        summarise(results)
    print(f"\nmachine: {os.cpu_count()} CPU cores; size {size}; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
