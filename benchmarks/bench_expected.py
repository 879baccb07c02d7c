"""Expected-loss score of finished quality-benchmark runs: less noisy than the sampled share.

`bench_quality.py` scores each model on the one vote sampled for every held-out battle, so
two models that the truth calls equal can differ by several points of "share" on 2,000
votes. The simulator knows each battle's true outcome probabilities, so the loss a model
would take on average over the votes the battle could have produced can be computed
exactly. Per held-out battle (models i and j): q, the true probability that i is preferred
with a tie counted half (the truth's own family, its tie width included), and p, the
model's (sigmoid of its coefficient difference, as `bt-tie` reads coefficients). The
expected excess loss of p over q is their binary Kullback-Leibler divergence

    excess(p) = q log(q / p) + (1 - q) log((1 - q) / (1 - p)),

which is zero for a model that knows q. Reported per run: the mean excess of the marginal
leaderboard (fitted on the run's training votes) and of the P2L model on the held-out
battles, and the expected share, 1 - excess(P2L) / excess(marginal): the part of the
marginal leaderboard's avoidable loss that P2L removes (the sampled share's expected
counterpart, up to the truth's own fit to ``bt-tie``). Nothing is refitted; a run takes
seconds.

    python benchmarks/bench_quality.py --worlds mixed,structure --seeds 5,6 --out /tmp/bq
    python benchmarks/bench_expected.py /tmp/bq/mixed-5 /tmp/bq/structure-6 ... --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from p2l_cli.evaluate.scoring import fit_leaderboard
from p2l_cli.stats.families import win_probability
from p2l_cli.train_data import load_data_dir


def binary_kl(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(q) || Bernoulli(p)), elementwise; p and q are kept inside (0, 1)."""
    q, p = np.clip(q, 1e-12, 1 - 1e-12), np.clip(p, 1e-12, 1 - 1e-12)
    return q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))


def pair_values(coefs: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple:
    """Per battle: the coefficients of its two models (``coefs`` one row per battle)."""
    rows = np.arange(len(first))
    return coefs[rows, first], coefs[rows, second]


def one_run(run: Path) -> dict:
    data = load_data_dir(run / "data")
    val = data.val.labels
    marginal, _ = fit_leaderboard(data.train, len(data.models), "bt-tie")
    simulation = json.loads((run / "arena" / "simulation.json").read_text())
    ids = pl.read_parquet(run / "data" / "val.parquet", columns=["id"])
    truth = pl.read_parquet(run / "arena" / "truth.parquet")
    preds = pl.read_parquet(run / "val_predictions.parquet", columns=["id", "coefs"])
    rows = ids.join(truth, on="id", how="left", maintain_order="left").join(
        preds, on="id", how="left", maintain_order="left"
    )
    if rows["true_coefs"].null_count() or rows["coefs"].null_count():
        raise SystemExit(f"{run}: held-out votes without a truth or a prediction row")
    first, second = val[:, 0].astype(np.int64), val[:, 1].astype(np.int64)
    true_i, true_j = pair_values(np.array(rows["true_coefs"].to_list()), first, second)
    eta = torch.tensor(rows["true_eta"].to_numpy()) if "true_eta" in rows.columns else None
    q = win_probability(torch.as_tensor(true_i), torch.as_tensor(true_j), eta,
                        simulation["family"]).numpy()  # fmt: skip

    def excess(coefs: np.ndarray) -> float:
        c_i, c_j = pair_values(np.broadcast_to(coefs, (len(val), len(data.models))), first, second)
        return float(binary_kl(q, 1.0 / (1.0 + np.exp(-(c_i - c_j)))).mean())

    marginal_excess = excess(np.asarray(marginal, dtype=np.float64))
    p2l_excess = excess(np.array(rows["coefs"].to_list(), dtype=np.float64))
    evaluation = json.loads((run / "evaluation.json").read_text())
    return {
        "run": str(run),
        "world": run.name.rsplit("-", 1)[0],
        "seed": int(run.name.rsplit("-", 1)[1]),
        "marginal_excess": marginal_excess,
        "p2l_excess": p2l_excess,
        "expected_share": 1.0 - p2l_excess / marginal_excess,
        "sampled_share": evaluation["oracle"]["fraction_captured_half"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_quality run folders")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = [one_run(run) for run in args.runs]
    for r in results:
        print(f"{r['world']:10s} seed {r['seed']}: expected share {r['expected_share']:.3f} "
              f"(excess marginal {r['marginal_excess']:.5f}, P2L {r['p2l_excess']:.5f}), "
              f"sampled share {r['sampled_share']:.3f}")  # fmt: skip
    for world in sorted({r["world"] for r in results}):
        shares = [r["expected_share"] for r in results if r["world"] == world]
        sd = np.std(shares, ddof=1) if len(shares) > 1 else 0.0
        print(f"{world}: expected share {np.mean(shares):.3f} ± {sd:.3f} over {len(shares)} runs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
