"""Leaderboards as text, files and figures: the terminal table, Markdown, the written table
and the interval plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from p2l_cli import io
from p2l_cli.errors import UserError
from p2l_cli.leaderboard.fit import Leaderboard

OUTPUT_FORMATS = ("csv", "json", "jsonl", "parquet", "md")
# in written tables, not in the terminal's (they fit 80 columns without them)
FILE_ONLY_COLUMNS = ("theta", "models")


def output_format(dest: str, fmt: str | None) -> str:
    if fmt:
        fmt = fmt.lower().lstrip(".")
        if fmt not in OUTPUT_FORMATS:
            raise UserError(f"--format {fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    if dest == io.STDIO:
        return "jsonl"
    if Path(dest).suffix.lower() in (".md", ".markdown"):
        return "md"
    try:
        return io.format_of(dest)
    except UserError:
        raise UserError(f"{dest}: cannot tell the output format from the extension; use "
                        f"--format ({', '.join(OUTPUT_FORMATS)})") from None


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "win_rate":
        return f"{value:.3f}"
    if column in ("theta", "coefficient", "coefficient_lower", "coefficient_upper"):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def to_markdown(table: pl.DataFrame, title: str | None = None) -> str:
    header = list(table.columns)
    numeric = [table.schema[c].is_numeric() for c in header]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    for row in table.iter_rows():
        cells = [_cell(v, c).replace("|", "\\|") for v, c in zip(row, header)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_output(table: pl.DataFrame, dest: str, fmt: str | None, meta: dict,
                 title: str | None = None) -> None:
    fmt = output_format(dest, fmt)
    if fmt == "md":
        text = to_markdown(table, title)
        if meta.get("style"):
            text += "\n" + to_markdown(style_table(meta["style"]), "Style coefficients")
        io.write_text(dest, text)
    else:
        io.write_table(table, dest, fmt, meta=meta if fmt in ("json", "parquet") else None)


def describe(board: Leaderboard) -> str:
    what = {"marginal": f"{board.n:,} votes", "aggregate": f"{board.n:,} prompts",
            "prompt": f"prompt {board.meta.get('prompt_index', 0)}"}[board.kind]
    parts = [board.family + (", style-controlled" if board.meta.get("style") else ""), what,
             f"{board.table.height} models"]
    if board.ci != "none":
        parts.append(f"{board.meta.get('level', 0.95):.0%} {board.ci} intervals")
    if board.eta is not None:
        parts.append(f"eta {board.eta:.3f}")
    return ", ".join(parts)


def terminal_columns(table: pl.DataFrame) -> list[str]:
    """The columns worth showing on a terminal: not the raw theta (files keep it), nor
    columns with no value at all (a single prompt's missing intervals)."""
    return [c for c in table.columns
            if c not in FILE_ONLY_COLUMNS and table.get_column(c).null_count() < table.height]


def render(table: pl.DataFrame, title: str):
    """A rich table for the terminal."""
    from rich.table import Table

    table = table.select(terminal_columns(table))
    out = Table(title=title, title_justify="left", header_style="bold")
    for column in table.columns:
        numeric = table.schema[column].is_numeric()
        widest = 0 if numeric else max((len(str(v)) for v in table.get_column(column)), default=0)
        out.add_column(column, justify="right" if numeric else "left",
                       min_width=min(widest, 40) or None)
    for row in table.iter_rows():
        out.add_row(*(_cell(v, c) for v, c in zip(row, table.columns)))
    return out


def style_table(rows: list[dict]) -> pl.DataFrame:
    """The style coefficients as a table: per feature, the change in log-odds of winning
    for +1 standard deviation of the answers' relative difference, in Arena points too."""
    return pl.DataFrame(
        {
            "feature": [r["feature"] for r in rows],
            "coefficient": [r["coefficient"] for r in rows],
            "coefficient_lower": [r["lower"] for r in rows],
            "coefficient_upper": [r["upper"] for r in rows],
            "points_per_sd": [r["points_per_sd"] for r in rows],
        },
        schema={"feature": pl.String, "coefficient": pl.Float64,
                "coefficient_lower": pl.Float64, "coefficient_upper": pl.Float64,
                "points_per_sd": pl.Float64},
    )


def render_style(rows: list[dict], level: float, title: str):
    """The style coefficients for the terminal, with a line that reads the largest one."""
    from rich.table import Table

    out = Table(title=f"{title}: log-odds per sd of the answers' relative difference, "
                f"{level:.0%} interval",
                title_justify="left", header_style="bold")
    for column in ("feature", "coefficient", "lower", "upper", "points_per_sd"):
        out.add_column(column, justify="left" if column == "feature" else "right")
    for r in rows:
        cells = [r["feature"]] + [
            "" if r[c] is None else f"{r[c]:+.4f}" for c in ("coefficient", "lower", "upper")
        ] + [f"{r['points_per_sd']:+.1f}"]
        out.add_row(*cells)
    top = max(rows, key=lambda r: abs(r["points_per_sd"]))
    out.caption = (f"+1 sd of {top['feature']} difference = {top['points_per_sd']:+.1f} "
                   "rating points")
    out.caption_justify = "left"
    return out


def plot(boards: dict[str, pl.DataFrame], path: str, title: str) -> None:
    """Scores with their intervals, one panel per table, best at the top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'p2l-cli[plot]'") from None
    panels = list(boards.items())
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    height = max(3.0, 0.28 * max(t.height for _, t in panels) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, height * rows), squeeze=False)
    for ax, (name, table) in zip(axes.ravel(), panels):
        labels = table.get_column(table.columns[0] if "model" not in table.columns
                                  else "model").to_list()
        score = table.get_column("score").to_numpy()
        y = np.arange(len(score))[::-1]
        lower = table.get_column("lower").fill_null(float("nan")).to_numpy()
        upper = table.get_column("upper").fill_null(float("nan")).to_numpy()
        err = np.vstack([score - lower, upper - score])
        has_err = np.isfinite(err).all()
        ax.errorbar(score, y, xerr=err if has_err else None, fmt="o", color="tab:blue",
                    ecolor="tab:gray", capsize=3, markersize=4)
        ax.set_yticks(y, [str(v) for v in labels], fontsize=8)
        ax.set_xlabel("score (Arena scale)")
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
