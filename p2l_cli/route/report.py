"""What ``p2l route`` writes and shows: the routes table, the summary and curve tables, and
the curve's plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p2l_cli.errors import UserError
from p2l_cli.route.problem import Problem
from p2l_cli.route.solver import Routing


def routes_frame(df, problem: Problem, routing: Routing, chosen: np.ndarray, drop_coefs: bool):
    """The input rows plus ``model``, ``strategy`` (non-zero model -> probability entries),
    ``win_rate`` and ``cost`` (expected; ``cost`` only with a costs file)."""
    import polars as pl
    import pyarrow as pa

    strategy = routing.strategy
    names = np.asarray(problem.names, dtype=object)
    rows, cols = np.nonzero(strategy > 0)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(strategy)))])
    entries = pa.StructArray.from_arrays(
        [pa.array(names[cols].tolist(), pa.string()), pa.array(strategy[rows, cols])],
        ["model", "prob"],
    )
    columns = {
        "model": pl.Series("model", names[chosen].tolist(), dtype=pl.String),
        "strategy": pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), entries)),
        "win_rate": pl.Series("win_rate", (strategy * problem.values).sum(axis=1)),
    }
    if problem.costs is not None:
        columns["cost"] = pl.Series("cost", strategy @ problem.costs)
    if drop_coefs:
        df = df.drop([c for c in ("coefs", "eta") if c in df.columns])
    return df.with_columns(**{name: series.alias(name) for name, series in columns.items()})


def summary_tables(summary: dict):
    """Rich tables of a summary: the router against every single model."""
    from rich.table import Table

    has_cost = "mean_cost" in summary["router"]
    title = "routing"
    if summary["budget"] is not None:
        title += f" with a budget of {summary['budget']:g}"
    if summary.get("strategy"):
        title += f", strategy {summary['strategy']}"
    if summary["price"] is not None and summary["budget"] is not None:
        title += f" (price {summary['price']:.4g} win rate per unit cost)"
    elif summary["price"]:  # --price: each prompt alone, no budget
        title += f" at a price of {summary['price']:.4g} win rate per unit cost"
    table = Table(title=title, title_justify="left")
    table.add_column("policy")
    if has_cost:
        table.add_column("mean cost", justify="right")
    table.add_column("win rate", justify="right")
    table.add_column("theta", justify="right")
    table.add_column("score", justify="right")
    table.add_column("chosen", justify="right")
    router = summary["router"]
    cells = ["[bold]router[/]"]
    if has_cost:
        cells.append(f"{router['mean_cost']:.6g}")
    cells += [f"{router['mean_win_rate']:.4f}", f"{router['theta']:+.3f}", f"{router['score']:.1f}", ""]
    table.add_row(*cells, end_section=True)
    for row in summary["models"]:
        style = None if row.get("fits_budget", True) else "dim"
        cells = [row["model"] + ("" if style is None else " (over budget)")]
        if has_cost:
            cells.append(f"{row['cost']:.6g}")
        scored = row["theta"] is not None
        cells += [
            f"{row['mean_win_rate']:.4f}",
            f"{row['theta']:+.3f}" if scored else "-",
            f"{row['score']:.1f}" if scored else "-",
            f"{row['chosen_share']:.1%}",
        ]
        table.add_row(*cells, style=style)
    return table


def _compared(rows: list[dict]) -> list[tuple[str, str]]:
    """The other strategies a sweep's rows hold: ``(name, key prefix)`` pairs."""
    from p2l_cli.route import STRATEGIES

    pairs = [(name, name.replace("-", "_") + "_") for name in STRATEGIES]
    return [(name, prefix) for name, prefix in pairs if prefix + "mean_cost" in rows[0]]


def sweep_table(rows: list[dict], strategy: str = "optimal"):
    """The curve, one row per budget; with other strategies in the rows (a sweep's
    comparison), one row per budget and strategy, ``strategy`` first."""
    from rich.table import Table

    compared = _compared(rows)
    table = Table(title=f"cost-quality curve ({rows[0]['scope']} budget)", title_justify="left")
    names = ["budget", "mean cost", "win rate", "theta", "score", "price"]
    if compared:
        names.insert(1, "strategy")
    for name in names:
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for row in rows:
        for name, prefix in [(strategy, ""), *compared]:
            price = row["price"] if not prefix else None
            cells = [
                f"{row['budget']:.6g}", f"{row[prefix + 'mean_cost']:.6g}",
                f"{row[prefix + 'mean_win_rate']:.4f}", f"{row[prefix + 'theta']:+.3f}",
                f"{row[prefix + 'score']:.1f}", "" if price is None else f"{price:.4g}",
            ]  # fmt: skip
            if compared:
                cells.insert(1, name)
            table.add_row(*cells, end_section=bool(compared) and name == compared[-1][0])
    return table


def plot_curve(rows: list[dict], singles: list[dict], path: str | Path,
               strategy: str = "optimal") -> None:  # fmt: skip
    """The router's cost-quality curve (one per strategy the rows hold) with every single
    model as a point."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            f"--plot {path}: needs matplotlib (pip install 'p2l-cli[plot]')"
        ) from None
    from p2l_cli.io import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([r["mean_cost"] for r in rows], [r["mean_win_rate"] for r in rows], "o-",
            label=f"router ({rows[0]['scope']} budget)"
            + (f", {strategy}" if _compared(rows) or strategy != "optimal" else ""))  # fmt: skip
    for (name, prefix), style in zip(_compared(rows), ("s--", "^:")):
        ax.plot([r[prefix + "mean_cost"] for r in rows],
                [r[prefix + "mean_win_rate"] for r in rows], style,
                label=f"router, {name}")  # fmt: skip
    ax.scatter([s["cost"] for s in singles], [s["mean_win_rate"] for s in singles],
               marker="x", color="grey", label="single models")  # fmt: skip
    for s in singles:
        ax.annotate(s["model"], (s["cost"], s["mean_win_rate"]), fontsize=7, alpha=0.7)
    ax.set_xlabel("mean cost per prompt")
    ax.set_ylabel("mean win rate against the opponents")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fmt = Path(str(path)).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)
