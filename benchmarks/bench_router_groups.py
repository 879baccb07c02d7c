"""Where the router of a finished quality-benchmark run gains and loses, prompt group by
prompt group, and whether the training votes of each group point at the right model.

`bench_quality.py` reports one router figure per run: the true expected win rate (against
uniform opponents) of the model P2L ranks first on each fresh prompt, against the best
single model and the oracle router. This script splits that figure by the simulator's true
prompt properties (category, difficulty, a long pasted context). Per group of fresh
prompts, in win-rate points:

- router: the mean true win rate of P2L's pick minus the best single model's (the run's
  best single model, the same for every prompt), and oracle: the same for the true best;
- picks: the model P2L picks most in the group and on how many of its prompts, and the
  model the truth makes best on average over the group;
- votes say: the model ranked first by a leaderboard fitted (the model's own family, by
  maximum likelihood) on only the training votes whose prompts are in the group, and how
  many votes that is. Where it names the wrong model too, the votes themselves mislead, and
  a head fitted on them cannot be expected to route that group well.

Nothing is refitted but those group leaderboards; a run takes seconds.

    python benchmarks/bench_quality.py --worlds structure --seeds 0 --out /tmp/bq
    python benchmarks/bench_router_groups.py /tmp/bq/structure-0 [more runs ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
from bench_quality import fresh_picks  # this folder is on sys.path

from p2l_cli.stats.marginal import fit_marginal

PROPERTIES = ("category", "difficulty", "long")


def training_votes(run: Path) -> pl.DataFrame:
    """The run's training votes with the true properties of their battles."""
    votes = pl.read_parquet(run / "data" / "train.parquet", columns=["id", "labels"])
    truth = pl.read_parquet(run / "arena" / "truth.parquet", columns=["id", *PROPERTIES])
    return votes.join(truth, on="id")


def votes_leader(votes: pl.DataFrame, num_models: int, family: str) -> int | None:
    """The model a leaderboard fitted on ``votes`` alone ranks first (None without votes)."""
    if votes.height == 0:
        return None
    labels = np.array(votes["labels"].to_list(), dtype=np.int64)
    fit = fit_marginal(labels[:, 0], labels[:, 1], labels[:, 2], num_models, family)
    return int(np.argmax(fit.theta))


def run_groups(run: Path) -> list[dict]:
    truth_family = json.loads((run / "arena" / "simulation.json").read_text())["family"]
    frame, picks, values, meta = fresh_picks(
        run / "fresh_predictions.parquet", run / "arena" / "prompts.jsonl", truth_family
    )
    models, family = meta["models"], meta["loss"]
    votes = training_votes(run)
    best_single = int(values.mean(axis=0).argmax())
    router_gain = values[np.arange(len(picks)), picks] - values[:, best_single]
    oracle_gain = values.max(axis=1) - values[:, best_single]
    out = []
    for prop in PROPERTIES:
        keys = frame[prop].to_numpy()
        for key in sorted(set(keys.tolist())):
            members = keys == key
            picked = np.bincount(picks[members], minlength=len(models))
            group_votes = votes.filter(pl.col(prop) == key)
            leader = votes_leader(group_votes, len(models), family)
            out.append({
                "run": run.name,
                "group": f"{prop}={key}",
                "prompts": int(members.sum()),
                "router_points": 100 * float(router_gain[members].mean()),
                "oracle_points": 100 * float(oracle_gain[members].mean()),
                "p2l_picks": models[int(picked.argmax())],
                "p2l_picks_share": float(picked.max() / members.sum()),
                "truth_best": models[int(values[members].mean(axis=0).argmax())],
                "votes_say": None if leader is None else models[leader],
                "votes": group_votes.height,
                "best_single": models[best_single],
            })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished bench_quality.py run folders")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    everything = []
    for run in args.runs:
        rows = run_groups(run)
        everything += rows
        print(f"\n{run.name} (best single model: {rows[0]['best_single']}); win-rate points "
              "against it, on the fresh prompts")  # fmt: skip
        print(f"  {'group':32s} {'prompts':>7s} {'router':>7s} {'oracle':>7s}  "
              f"{'P2L picks most':34s} {'truth best':24s} votes say (votes)")  # fmt: skip
        for r in rows:
            print(f"  {r['group']:32s} {r['prompts']:7d} {r['router_points']:+7.2f} "
                  f"{r['oracle_points']:+7.2f}  {r['p2l_picks']:24s} ({r['p2l_picks_share']:4.0%})"
                  f"   {r['truth_best']:24s} {r['votes_say']} ({r['votes']})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
