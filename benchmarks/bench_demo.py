"""`p2l demo` as a new user runs it: wall time, peak memory and the headline figures.

Runs `p2l demo` (and `p2l demo --small`, the size the tests run) in a fresh process with an
empty feature cache and an empty output folder, as the README's first command does on a
fresh machine, and reports for each: the wall seconds (process start, model loading and
prompt encoding included), the peak resident memory of the demo process, the seconds of
each stage as the demo printed them, the held-out NLL gain over the marginal leaderboard
and the share of the achievable gain captured with ties counted as half a win (the
evaluation's own figures, read from its evaluation.json).

    python benchmarks/bench_demo.py                 # full size, then --small
    python benchmarks/bench_demo.py --sizes full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
from pathlib import Path

from bench_quality import run_p2l  # this folder is on sys.path

STAGE_LINE = re.compile(r"^\((\d+\.\d) s\)$")  # the demo's own line after each stage


def one_demo(size: str, root: Path) -> dict:
    out, log = root / "p2l-demo", root / "demo.log"
    os.environ["P2L_CACHE_DIR"] = str(root / "cache")  # run_p2l passes the environment on
    finished = run_p2l(["demo", "--out", str(out), *(["--small"] if size == "small" else [])],
                       log)  # fmt: skip
    report = json.loads((out / "evaluation.json").read_text())
    stages = [float(m.group(1)) for line in log.read_text().splitlines()
              if (m := STAGE_LINE.match(line.strip()))]  # fmt: skip
    return {
        "size": size,
        "seconds": round(finished.seconds, 1),
        "peak_mib": round(finished.peak_mib),
        "stage_seconds": stages,
        "train_votes": report["train_votes"],
        "held_out_votes": report["votes"],
        "gain_nll": report["gain"]["nll"],
        "gain_low": report["gain"].get("low"),
        "gain_high": report["gain"].get("high"),
        "share_ties_half": report["oracle"]["fraction_captured_half"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=["full", "small"], default=["full", "small"])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f} at the start")  # fmt: skip
    print("| demo | wall time | peak memory | training / held-out votes | gain over the "
          "marginal, nats/vote [95%] | share of the achievable gain (ties ½) |\n"
          "|---|---|---|---|---|---|")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"p2l-bench-demo-{size}-") as tmp:
            r = one_demo(size, Path(tmp))
        print(f"| `p2l demo{' --small' if size == 'small' else ''}` | "
              f"{r['seconds'] / 60:.1f} min ({r['seconds']:.0f} s) | {r['peak_mib']} MiB | "
              f"{r['train_votes']:,} / {r['held_out_votes']:,} | {r['gain_nll']:+.4f} "
              f"[{r['gain_low']:+.4f}, {r['gain_high']:+.4f}] | "
              f"{100 * r['share_ties_half']:.0f}% |", flush=True)
        print(f"  stage seconds as printed: {r['stage_seconds']}", flush=True)
    print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
