"""`p2l demo`: the whole pipeline on a simulated arena, offline, on the CPU.

Each stage is an ordinary ``p2l`` command line, run by the command (through the same Typer
app as the shell runs it, in this process) and printed before it runs; every file it writes stays
in one folder, and ``commands.sh`` there lists the command lines, so any stage can be
rerun by hand or pointed at other data:

    simulate -> prepare -> prepare (development split) -> train -> predict -> evaluate
      -> leaderboards -> route

Training chooses its settings by cross-validation over its own votes and reports on the
development votes, split off the training votes (with ``--head-solver adamw`` they would
choose when to stop), so the held-out votes that ``evaluate`` scores stay unseen until then.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT = "p2l-demo"
VAL_FRACTION = 0.2  # of the prompts: held out for the evaluation, never seen in training
DEV_FRACTION = 0.125  # of the training votes: what training reports (or stops early) on
# Prompts whose leaderboards the demo prints: two categories whose best models differ.
EXAMPLE_PROMPTS = (
    (
        "Write a Python function that removes duplicate entries from a list while keeping "
        "their order. This is for production, so it must be correct and efficient."
    ),
    "hey there! how are you today?",
    "Write a haiku about a lighthouse in winter in the style of Basho.",
)


@dataclass(frozen=True)
class Size:
    """How big a demo run is: the arena, and what training may spend."""

    battles: int
    models: int
    prompts: int
    train_flags: tuple[str, ...] = ()


SIZES = {
    # A few thousand training votes, trained with the minilm-cpu recipe as it stands.
    "full": Size(battles=6000, models=10, prompts=300),
    # For CI: a small arena, trained with the same defaults.
    "small": Size(
        battles=1200,
        models=6,
        prompts=60,
        train_flags=(),
    ),
}


@dataclass
class Stage:
    """One command line of the pipeline, with what to tell the user before it runs."""

    title: str
    argv: list[str]
    note: str = ""

    @property
    def command(self) -> str:
        return shlex.join(["p2l", *self.argv])


@dataclass
class Layout:
    """Where each stage reads and writes, all under one folder."""

    root: Path
    arena: Path = field(init=False)
    data: Path = field(init=False)
    fit: Path = field(init=False)
    model: Path = field(init=False)

    def __post_init__(self) -> None:
        self.arena = self.root / "arena"
        self.data = self.root / "data"  # train.parquet and the held-out val.parquet
        self.fit = self.root / "fit"  # data/train.parquet split again: train and development
        self.model = self.root / "model"

    @property
    def val_predictions(self) -> Path:
        return self.root / "val_predictions.parquet"

    @property
    def prompt_predictions(self) -> Path:
        return self.root / "prompt_predictions.parquet"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def routes(self) -> Path:
        return self.root / "routes.parquet"

    @property
    def route_summary(self) -> Path:
        return self.root / "route_summary.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def commands(self) -> Path:
        return self.root / "commands.sh"


def data_stages(layout: Layout, size: Size, seed: int, overwrite: bool = False) -> list[Stage]:
    again = ["--overwrite"] if overwrite else []
    return [
        Stage(
            "Simulate an arena",
            [
                "simulate",
                str(layout.arena),
                "--battles",
                str(size.battles),
                "--models",
                str(size.models),
                "--prompts",
                str(size.prompts),
                "--seed",
                str(seed),
                *again,
            ],
            "votes on prompts whose true leaderboard depends on the prompt's category and "
            "difficulty; truth.parquet holds the truth, costs.yaml what each answer costs",
        ),
        Stage(
            "Prepare the votes",
            [
                "prepare",
                str(layout.arena / "battles.parquet"),
                "-o",
                str(layout.data),
                "--val-fraction",
                str(VAL_FRACTION),
                "--seed",
                str(seed),
                *again,
            ],
            "the battles contract, split by prompt into training and held-out votes",
        ),
        Stage(
            "Set development votes aside",
            [
                "prepare",
                str(layout.data / "train.parquet"),
                "-o",
                str(layout.fit),
                "--val-fraction",
                str(DEV_FRACTION),
                "--seed",
                str(seed),
                *again,
            ],
            "training reports on these (and would stop early on them with --head-solver "
            "adamw), so the held-out votes stay unseen",
        ),
    ]


def model_stages(layout: Layout, size: Size, seed: int, overwrite: bool) -> list[Stage]:
    train = [
        "train",
        str(layout.fit),
        "-o",
        str(layout.model),
        "--recipe",
        "minilm-cpu",
        "--seed",
        str(seed),
        *size.train_flags,
    ]
    if overwrite:
        train.append("--overwrite")
    return [
        Stage(
            "Train a P2L model",
            train,
            "on the embedded MiniLM backbone; the head starts at the marginal leaderboard",
        ),
        Stage(
            "Predict the held-out prompts",
            [
                "predict",
                str(layout.model),
                str(layout.data / "val.parquet"),
                "-o",
                str(layout.val_predictions),
            ],
        ),
    ]


def evaluation_stages(layout: Layout, plots: bool) -> list[Stage]:
    evaluate = [
        "evaluate",
        str(layout.val_predictions),
        str(layout.data / "val.parquet"),
        "--train",
        str(layout.data / "train.parquet"),
        "--truth",
        str(layout.arena / "truth.parquet"),
        "--by",
        "category",
        "--json",
        str(layout.evaluation),
    ]
    if plots:
        evaluate += ["--plot", str(layout.plots)]
    return [
        Stage(
            "Evaluate against the marginal leaderboard",
            evaluate,
            "held-out votes; the truth adds the oracle and how well leaderboards are recovered",
        )
    ]


def leaderboard_stages(layout: Layout) -> list[Stage]:
    stages = [
        Stage(
            f"Leaderboard for one prompt ({i + 1} of {len(EXAMPLE_PROMPTS)})",
            ["predict", str(layout.model), "--prompt", text],
        )
        for i, text in enumerate(EXAMPLE_PROMPTS)
    ]
    stages.append(
        Stage(
            "Leaderboards per category",
            [
                "leaderboard",
                str(layout.val_predictions),
                "--by",
                "category",
                "--ci",
                "none",
                "--top",
                "5",
            ],
            "each aggregated over that category's held-out prompts",
        )
    )
    return stages


def route_stages(layout: Layout, budget: float) -> list[Stage]:
    prompts = layout.arena / "prompts.jsonl"
    return [
        Stage(
            "Predict a prompt file",
            ["predict", str(layout.model), str(prompts), "-o", str(layout.prompt_predictions)],
            "fresh prompts that no vote was cast on",
        ),
        Stage(
            "Route the prompts under a budget",
            [
                "route",
                str(layout.prompt_predictions),
                "--costs",
                str(layout.arena / "costs.yaml"),
                "--budget",
                f"{budget:.3g}",
                "-o",
                str(layout.routes),
                "--summary",
                str(layout.route_summary),
            ],
            "the best expected win rate against the other models at this mean cost per prompt",
        ),
    ]


# ------------------------------------------------------------------------------- running


def default_budget(costs_path: Path) -> float:
    """A budget that binds: the geometric mean of the cheapest and the dearest answer."""
    from p2l_cli.contracts.costs import read_costs

    costs = read_costs(costs_path)
    low, high = min(costs.values()), max(costs.values())
    return math.sqrt(low * high) if low > 0 else (low + high) / 2


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def check_out_dir(root: Path, overwrite: bool) -> bool:
    """Whether earlier results are there (and may be replaced, with ``overwrite``)."""
    from p2l_cli.io import check_output_folder

    return check_output_folder(root, "--out", overwrite)


def run_demo(
    runner: Callable[[list[str], bool], None],
    out: str | Path = DEFAULT_OUT,
    small: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
    on_stage: Callable[[int, Stage], None] | None = None,
    on_stage_done: Callable[[Stage, float], None] | None = None,
) -> list[Stage]:
    """Run every stage with ``runner(argv, quiet)``; ``on_stage(number, stage)`` is called
    before each and ``on_stage_done(stage, seconds)`` after. Returns the stages run."""
    root = Path(out)
    overwrite = check_out_dir(root, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    layout = Layout(root)
    size = SIZES["small" if small else "full"]
    done: list[Stage] = []

    def run(stages: list[Stage]) -> None:
        for stage in stages:
            if on_stage is not None:
                on_stage(len(done) + 1, stage)
            stage_started = time.perf_counter()
            runner(stage.argv, quiet)
            done.append(stage)
            write_commands(layout.commands, done)
            if on_stage_done is not None:
                on_stage_done(stage, time.perf_counter() - stage_started)

    run(data_stages(layout, size, seed, overwrite))
    run(model_stages(layout, size, seed, overwrite))
    run(evaluation_stages(layout, has_matplotlib()))
    run(leaderboard_stages(layout))
    run(route_stages(layout, default_budget(layout.arena / "costs.yaml")))
    return done


def write_commands(path: Path, stages: list[Stage]) -> None:
    from p2l_cli.io import write_text

    lines = ["#!/usr/bin/env bash", "# The commands `p2l demo` ran, in order.", "set -euo pipefail"]
    for stage in stages:
        lines += ["", f"# {stage.title}", stage.command]
    write_text(path, "\n".join(lines) + "\n")


def written_files(root: Path) -> list[Path]:
    """The files the stages left in ``root``, relative to it and sorted, without training
    checkpoints and hidden files (e.g. the lock that `p2l train` keeps in its folder)."""
    files = [path.relative_to(root) for path in sorted(root.rglob("*")) if path.is_file()]
    return [path for path in files
            if not any(part == "checkpoints" or part.startswith(".") for part in path.parts)]  # fmt: skip


def recap(layout: Layout) -> list[str]:
    """The headline figures of the evaluation and of the routing, in a few lines."""
    import json

    lines = []
    if layout.evaluation.is_file():
        report = json.loads(layout.evaluation.read_text())
        gain = report.get("gain") or {}
        if gain:
            lines.append(
                f"held-out NLL per vote: P2L {report['p2l']['nll']:.4f}, marginal leaderboard "
                f"{report['marginal']['nll']:.4f} (gain {gain['nll']:+.4f}, interval "
                f"{gain.get('low', math.nan):+.4f} to {gain.get('high', math.nan):+.4f})"
            )
        # ties as half a win: defined whichever family the model and the truth are in
        captured = (report.get("oracle") or {}).get("fraction_captured_half")
        if captured is not None:
            lines.append(
                f"share of the achievable gain (true coefficients) captured, ties as half a "
                f"win: {100 * captured:.0f}%"
            )
    if layout.route_summary.is_file():
        summary = json.loads(layout.route_summary.read_text())
        router = summary["router"]
        affordable = [m for m in summary["models"] if m.get("fits_budget")]
        best = affordable[0] if affordable else None
        line = (
            f"routing {summary['n_prompts']} prompts at a budget of {summary['budget']:.3g}: "
            f"mean cost {router.get('mean_cost', math.nan):.3g}, predicted win rate "
            f"{100 * router['mean_win_rate']:.1f}%"
        )
        if best is not None:
            line += (
                f" vs {100 * best['mean_win_rate']:.1f}% for the best single model within "
                f"the budget ({best['model']})"
            )
        lines.append(line)
    return lines
