"""Quality benchmark: does `p2l train` with its defaults beat the marginal leaderboard on
votes no stage saw, and by how much of what is achievable?

For each world and seed: `p2l simulate` an arena (ties by default) with 8,000 battles and
12 models, `p2l prepare` it into 6,000 training and 2,000 held-out votes (split by prompt),
`p2l train` with the defaults (nothing is chosen on the held-out votes), `p2l predict` the
held-out prompts and the simulator's fresh prompts, and `p2l evaluate` against the truth.
Reported per run and as mean ± sd:

1. share of the achievable NLL gain: (NLL marginal - NLL P2L) / (NLL marginal - NLL truth),
   every NLL with ties counted as half a win (the Arena's convention), on the held-out votes;
   and its expected counterpart (``bench_expected.py``: the same share scored with the
   truth's outcome probabilities of each held-out battle instead of its one sampled vote);
2. router share: on the fresh prompts, the true expected win rate (against uniform
   opponents) of the model P2L ranks first, as a share of the way from the best single
   model to the oracle router (which picks with the true coefficients);
3. the held-out gain over the marginal leaderboard with its 95% bootstrap interval (the
   ``flat`` world has nothing to learn: there the gain must not be negative);
4. training time (feature encoding included), its peak memory, and prediction speed.

Each stage runs as a subprocess, as a user runs it.

    python benchmarks/bench_quality.py                      # 3 worlds x 3 seeds, ~1 h on 2 cores
    python benchmarks/bench_quality.py --worlds mixed --seeds 0
    python benchmarks/bench_quality.py --worlds mixed --seeds 0 --battles 40000 --models 30
    python benchmarks/bench_quality.py --train-args "--head-solver adamw --epochs 40"
    python benchmarks/bench_quality.py --simulate-args "--family grk" --battles 2000
    python benchmarks/bench_quality.py --summarise run1/results.json run2/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import bench_expected as expected  # this folder is on sys.path
import numpy as np
import polars as pl

from p2l_cli.io import read_table_meta
from p2l_cli.stats.winrates import win_rates_vs_opponents


class Finished(NamedTuple):
    seconds: float
    peak_mib: float  # the process's peak resident memory


def run_p2l(argv: list[str], log: Path) -> Finished:
    """``p2l ARGV`` as a subprocess (stderr appended to ``log``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    started = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ p2l {shlex.join(argv)}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", "p2l_cli", *argv], stdout=fh, stderr=fh,
                                env=env)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        fh.write(f"# p2l {argv[0]}: {seconds:.1f} s\n")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"p2l {argv[0]} failed (exit {os.waitstatus_to_exitcode(status)}); "
                         f"see {log}")  # fmt: skip
    return Finished(seconds, usage.ru_maxrss / 1024)  # Linux reports KiB


def fresh_picks(
    predictions: Path, fresh: Path, truth_family: str
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, dict]:
    """The fresh prompts with their truth, the model P2L ranks first for each (expected win
    rate against uniform opponents), every model's true expected win rate ``[P, M]``, and
    the predictions' metadata."""
    frame, meta = read_table_meta(predictions)
    truth = pl.read_ndjson(fresh)
    joined = frame.select("id", "coefs", *(["eta"] if "eta" in frame.columns else [])).join(
        truth, on="id"
    )
    m = len(meta["models"])
    q = np.full(m, 1.0 / m)
    predicted = np.array(joined["coefs"].to_list(), dtype=np.float64)
    eta = joined["eta"].to_numpy() if "eta" in joined.columns else None
    true = np.array(joined["true_coefs"].to_list(), dtype=np.float64)
    true_eta = joined["true_eta"].to_numpy() if "true_eta" in joined.columns else None
    chosen = win_rates_vs_opponents(predicted, q, eta, meta["loss"]).argmax(axis=1)
    value = win_rates_vs_opponents(true, q, true_eta, truth_family)
    return joined, chosen, value, meta


def router_share(predictions: Path, fresh: Path, truth_family: str) -> dict:
    """The P2L router on fresh prompts, valued with their true coefficients."""
    _, chosen, value, _ = fresh_picks(predictions, fresh, truth_family)
    router = float(value[np.arange(len(chosen)), chosen].mean())
    best_single = float(value.mean(axis=0).max())
    oracle = float(value.max(axis=1).mean())
    headroom = oracle - best_single
    return {
        "prompts": len(chosen),
        "router": router,
        "best_single": best_single,
        "oracle": oracle,
        "share": (router - best_single) / headroom if headroom > 1e-9 else None,
    }


def simulate_and_prepare(root: Path, world: str, seed: int, battles: int = 8000,
                         models: int = 12, val_fraction: float = 0.25,
                         simulate_args: str = "") -> tuple[Path, Path]:  # fmt: skip
    """The benchmark's arena for one world and seed (``root/arena``, 500 fresh prompts) and
    its data folder (``root/data``, split by prompt), each stage logged to ``root/bench.log``."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    arena, data = root / "arena", root / "data"
    run_p2l(["simulate", str(arena), "--battles", str(battles), "--models", str(models),
             "--world", world, "--seed", str(seed), "--prompts", "500", "--overwrite",
             *shlex.split(simulate_args)], log)  # fmt: skip
    run_p2l(["prepare", str(arena / "battles.parquet"), "-o", str(data), "--val-fraction",
             str(val_fraction), "--seed", str(seed), "--overwrite"], log)  # fmt: skip
    return arena, data


def one_run(root: Path, world: str, seed: int, args, train_args: list[str]) -> dict:
    arena, data = simulate_and_prepare(root, world, seed, args.battles, args.models,
                                       args.val_fraction, args.simulate_args)  # fmt: skip
    log, model = root / "bench.log", root / "model"
    val_preds, fresh_preds = root / "val_predictions.parquet", root / "fresh_predictions.parquet"
    train = run_p2l(["train", str(data), "-o", str(model), "--overwrite", *train_args], log)
    val_prompts = pl.scan_parquet(data / "val.parquet").select(pl.len()).collect().item()
    predict = run_p2l(["predict", str(model), str(data / "val.parquet"), "-o", str(val_preds)],
                      log)  # fmt: skip
    run_p2l(["predict", str(model), str(arena / "prompts.jsonl"), "-o", str(fresh_preds)], log)
    report_path = root / "evaluation.json"
    run_p2l(["evaluate", str(val_preds), str(data / "val.parquet"), "--truth",
             str(arena / "truth.parquet"), "--json", str(report_path), "--bootstrap", "1000",
             "--seed", str(seed)], log)  # fmt: skip
    report = json.loads(report_path.read_text())
    metrics = json.loads((model / "metrics.json").read_text())
    truth_family = json.loads((arena / "simulation.json").read_text())["family"]
    gain = report["gain_half"]
    oracle = report.get("oracle", {})
    return {
        "world": world,
        "seed": seed,
        "train_votes": report["train_votes"],
        "scored_votes": report["votes"],
        "nll_half": {k: report[k]["nll_half"] for k in ("p2l", "marginal", "oracle")},
        "share": oracle.get("fraction_captured_half"),
        "gain": gain["nll"],
        "gain_low": gain.get("low"),
        "gain_high": gain.get("high"),
        "expected_share": expected.one_run(root)["expected_share"],
        "router": router_share(fresh_preds, arena / "prompts.jsonl", truth_family),
        "train_seconds": train.seconds,
        "train_peak_mib": train.peak_mib,
        "predict_prompts_per_s": val_prompts / predict.seconds,
        "head_fit": metrics.get("head_fit"),
        "leakage": report.get("leakage"),
    }


def spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f} (min {min(values):.3f}, max {max(values):.3f})"


def _number(value) -> str:
    """``value`` to three decimals; a share without a denominator (the truth no better
    than the marginal on the scored votes) as a dash."""
    return "—" if value is None else f"{value:.3f}"


def summarise(results: list[dict]) -> None:
    print("\nper run:")
    for r in results:
        fit = r["head_fit"] or {}
        print(
            f"  {r['world']:9s} seed {r['seed']}: share {_number(r['share'])} (expected "
            f"{_number(r.get('expected_share'))}), gain "
            f"{r['gain']:+.4f} [{r['gain_low']:+.4f}, {r['gain_high']:+.4f}] nats/vote, router "
            f"share {_number(r['router']['share'])} "
            f"({r['router']['router']:.3f} vs best single {r['router']['best_single']:.3f}, "
            f"oracle {r['router']['oracle']:.3f}), penalty {fit.get('penalty')}, train "
            f"{r['train_seconds']:.0f} s (peak {r.get('train_peak_mib', float('nan')):.0f} MiB), "
            f"predict {r['predict_prompts_per_s']:.0f} prompts/s"
        )
    for world in dict.fromkeys(r["world"] for r in results):
        rows = [r for r in results if r["world"] == world]
        print(f"\n{world} ({len(rows)} seeds): mean ± sd")
        print(f"  share of the achievable NLL gain (ties half): {spread([r['share'] for r in rows])}")
        print(f"  expected share (the truth's vote probabilities): "
              f"{spread([r.get('expected_share') for r in rows])}")
        print(f"  router share of the oracle router's gain:     "
              f"{spread([r['router']['share'] for r in rows])}")
        print(f"  gain over the marginal (nats/vote):           {spread([r['gain'] for r in rows])}")
        below = sum(r["gain"] < -1e-9 for r in rows)
        router_below = sum(r["router"]["router"] < r["router"]["best_single"] - 1e-9 for r in rows)
        print(f"  runs below the marginal: {below}, router below the best single model: "
              f"{router_below}")
        print(f"  train seconds: {spread([r['train_seconds'] for r in rows])}")
        print(f"  train peak memory (MiB): {spread([r.get('train_peak_mib') for r in rows])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="mixed,structure,flat")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--battles", type=int, default=8000)
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--out", default="/tmp/p2l-bench-quality")
    parser.add_argument("--train-args", default="", help="extra `p2l train` flags")
    parser.add_argument("--simulate-args", default="",
                        help='extra `p2l simulate` flags, e.g. "--family grk"')  # fmt: skip
    parser.add_argument("--summarise", nargs="+", metavar="RESULTS_JSON",
                        help="only summarise these results files (e.g. of runs split over "
                        "several processes)")  # fmt: skip
    args = parser.parse_args()
    if args.summarise:
        summarise([r for path in args.summarise for r in json.loads(Path(path).read_text())])
        return
    out = Path(args.out)
    results = []
    for world in args.worlds.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"{world} seed {seed} ...", flush=True)
            results.append(one_run(out / f"{world}-{seed}", world, seed, args,
                                   shlex.split(args.train_args)))  # fmt: skip
            (out / "results.json").write_text(json.dumps(results, indent=2))
    summarise(results)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
