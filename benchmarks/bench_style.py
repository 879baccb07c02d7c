"""Style control: p2l's contextual leaderboard against LMArena's arena-rank, and what the
style penalty changes.

1. Agreement and speed: simulated Arena battles with style columns (models differ in how
   long and formatted their answers are, and the votes favour long, formatted answers).
   ``p2l leaderboard --style-control`` and a script running arena-rank's
   ``ContextualBradleyTerry`` (LMArena's example: relative differences, z-scored, pairs
   reweighted, reg 1.0) each run as a whole process on the same Parquet file; the table
   reports the largest rating, bound and coefficient differences and the median wall time
   of alternating runs.
2. Recovery: on worlds with known style coefficients (3 seeds), the error of the fitted
   coefficients and of the style-controlled ratings, for LMArena's penalty (1.0) and none.

    python benchmarks/bench_style.py            # both parts
    python benchmarks/bench_style.py --quick    # smaller sizes, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ELEMENTS = ("sum_assistant_tokens", "header_count", "bold_count", "list_count")
TRUE_BETA = np.array([0.35, 0.05, 0.12, 0.06])  # per sd of each relative difference

ARENA_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pandas as pd
    from arena_rank.models.contextual_bradley_terry import ContextualBradleyTerry
    from arena_rank.utils.data_utils import ContextualPairDataset
    elements = ["sum_assistant_tokens", "header_count", "bold_count", "list_count"]
    df = pd.read_parquet(sys.argv[1])
    for e in elements:
        a, b = df[e + "_a"], df[e + "_b"]
        total = (a + b).replace(0, 1)
        df[e] = (a - b) / total
    df["winner"] = df["winner"].replace({"tie (bothbad)": "both_bad"})
    data = ContextualPairDataset.from_pandas(df, feature_cols=elements)
    model = ContextualBradleyTerry(n_competitors=len(data.competitors), n_features=4)
    r = model.compute_ratings_and_cis(data, significance_level=0.05)
    import jax
    grad = jax.grad(model.loss_function)(model.params, data.as_dict())
    out = {"grad": max(float(abs(g).max()) for g in grad.values()),"model": list(r["competitors"]), "rating": np.asarray(r["ratings"]).tolist(),
           "lower": np.asarray(r["rating_lower"]).tolist(),
           "upper": np.asarray(r["rating_upper"]).tolist(),
           "coeffs": np.asarray(r["coeffs"]).tolist()}
    json.dump(out, open(sys.argv[2], "w"))
    """
)


def simulate(path: Path | None, n: int, m: int, seed: int, beta=TRUE_BETA):
    """Battles with style columns; returns the frame and the true strengths."""
    from p2l_cli.contracts.style import relative_difference
    from p2l_cli.stats.style import standardize

    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 0.5, m)
    verbosity = rng.normal(0, 1, m)
    popularity = rng.dirichlet(np.full(m, 3.0))
    a = rng.choice(m, n, p=popularity)
    b = (a + rng.integers(1, m, n)) % m

    def counts(idx):
        v = verbosity[idx]
        return np.stack([
            np.round(np.exp(5.5 + 0.5 * v + rng.normal(0, 0.4, len(idx)))),
            rng.poisson(np.exp(0.3 * v)),
            rng.poisson(np.exp(0.2 + 0.5 * v)),
            rng.poisson(np.exp(0.8 + 0.4 * v)),
        ], axis=1).astype(float)

    ca, cb = counts(a), counts(b)
    z, _, _ = standardize(relative_difference(ca, cb))
    p_a = 1 / (1 + np.exp(-(theta[a] - theta[b] + z @ beta)))
    draw = rng.random(n)
    winner = np.where(draw < 0.15, "tie", np.where(draw < 0.2, "tie (bothbad)", np.where(
        rng.random(n) < p_a, "model_a", "model_b")))
    names = np.array([f"model-{i:03d}" for i in range(m)])
    columns = {"model_a": names[a], "model_b": names[b], "winner": winner}
    for i, element in enumerate(ELEMENTS):
        columns[f"{element}_a"], columns[f"{element}_b"] = ca[:, i], cb[:, i]
    frame = pl.DataFrame(columns)
    if path is not None:
        frame.write_parquet(path)
    return frame, theta, names


def run(command: list[str]) -> float:
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def stationarity(path: Path) -> float:
    """The largest gradient entry of the penalised objective at p2l's solution (LMArena's
    defaults), to compare with arena-rank's at its stopping point."""
    import torch

    from p2l_cli.leaderboard import load_input
    from p2l_cli.stats.style import _gradient_and_hessian, _split, solve_style, style_votes

    battles = load_input(str(path), style=True)
    m = len(battles.models)
    votes, _, _ = style_votes(battles.winner, battles.loser, battles.tie_code, battles.sign,
                              battles.style, m, "bt-tie", reweight=True)
    params, _ = solve_style(votes, "bt-tie", 1.0)
    grad, _ = _gradient_and_hessian(votes, *_split(torch.as_tensor(params), m, False),
                                    "bt-tie", 1.0, 0.0)
    return float(grad.abs().max())


def agreement_and_speed(sizes: list[tuple[int, int]], repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script = tmp / "arena.py"
        script.write_text(ARENA_SCRIPT)
        for n, m in sizes:
            data = tmp / f"battles-{n}.parquet"
            simulate(data, n, m, seed=0)
            ours, theirs = tmp / "ours.json", tmp / "theirs.json"
            p2l_cmd = [sys.executable, "-m", "p2l_cli", "leaderboard", str(data),
                       "--style-control", "-q", "-o", str(ours)]
            arena_cmd = [sys.executable, str(script), str(data), str(theirs)]
            times = {"p2l": [], "arena": []}
            for _ in range(repeats):
                times["p2l"].append(run(p2l_cmd))
                times["arena"].append(run(arena_cmd))
            mine = json.loads(ours.read_text())
            board = pl.DataFrame(mine["rows"]).sort("model")
            other = json.loads(theirs.read_text())
            order = np.argsort(other["model"])
            diff = {key: float(np.max(np.abs(board[col].to_numpy()
                                             - np.asarray(other[key])[order])))
                    for key, col in (("rating", "score"), ("lower", "lower"),
                                     ("upper", "upper"))}
            coef = np.array([r["coefficient"] for r in mine["p2l"]["style"]])
            rows.append({
                "votes": n, "models": m,
                "p2l_s": float(np.median(times["p2l"])),
                "arena_rank_s": float(np.median(times["arena"])),
                "max_rating_diff": diff["rating"],
                "max_bound_diff": max(diff["lower"], diff["upper"]),
                "max_coef_diff": float(np.max(np.abs(coef - np.asarray(other["coeffs"])))),
                "arena_grad": other["grad"],
                "p2l_grad": stationarity(data),
            })
            print(rows[-1], flush=True)
    return rows


def recovery(seeds: list[int], n: int, m: int) -> list[dict]:
    from p2l_cli.leaderboard import battles_from_frame, build_leaderboard

    rows = []
    for reg in (1.0, 0.0):
        beta_err, rating_err, plain_err = [], [], []
        for seed in seeds:
            frame, theta, names = simulate(None, n, m, seed)
            battles = battles_from_frame(frame, "sim", style=True)
            board = build_leaderboard(battles, family="bt", style_control=True, style_reg=reg,
                                      ci="none")
            plain = build_leaderboard(battles, family="bt", ci="none")
            fitted = np.array([r["coefficient"] for r in board.meta["style"]])
            beta_err.append(np.abs(fitted - TRUE_BETA).mean())
            truth = dict(zip(names, theta - theta.mean()))

            def error(table, truth=truth):
                t = table.sort("model")
                return float(np.abs(t["theta"].to_numpy()
                                    - np.array([truth[x] for x in t["model"]])).mean())

            rating_err.append(error(board.table))
            plain_err.append(error(plain.table))
        rows.append({"reg": reg, "coef_abs_error": (np.mean(beta_err), np.std(beta_err)),
                     "theta_abs_error": (np.mean(rating_err), np.std(rating_err)),
                     "theta_abs_error_without_style": (np.mean(plain_err), np.std(plain_err))})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [(20_000, 20)] if args.quick else [(20_000, 20), (100_000, 60), (1_000_000, 100)]
    repeats = 1 if args.quick else 3
    speed = agreement_and_speed(sizes, repeats)
    fits = recovery([0, 1, 2], 20_000 if args.quick else 100_000, 30)
    print("\n| votes | models | p2l (s) | arena-rank (s) | speed-up | max rating diff | "
          "max bound diff | max coefficient diff | gradient at stop: p2l / arena-rank |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in speed:
        print(f"| {r['votes']:,} | {r['models']} | {r['p2l_s']:.1f} | {r['arena_rank_s']:.1f} | "
              f"{r['arena_rank_s'] / r['p2l_s']:.1f}x | {r['max_rating_diff']:.4f} | "
              f"{r['max_bound_diff']:.4f} | {r['max_coef_diff']:.2e} | "
              f"{r['p2l_grad']:.1e} / {r['arena_grad']:.1e} |")
    print("\n| style penalty | coefficient error | theta error | theta error, no style "
          "control |")
    print("|---:|---:|---:|---:|")
    for r in fits:
        print(f"| {r['reg']:g} | {r['coef_abs_error'][0]:.4f} ± {r['coef_abs_error'][1]:.4f} | "
              f"{r['theta_abs_error'][0]:.4f} ± {r['theta_abs_error'][1]:.4f} | "
              f"{r['theta_abs_error_without_style'][0]:.4f} ± "
              f"{r['theta_abs_error_without_style'][1]:.4f} |")


if __name__ == "__main__":
    main()
