"""The evaluation's result as rich tables, JSON and figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from p2l_cli.errors import UserError
from p2l_cli.evaluate.compare import PREDICTOR_NOTES, PREDICTORS


def clean_json(value: Any) -> Any:
    """NaN and infinities become null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(result: dict) -> str:
    return json.dumps(clean_json(result), indent=2, ensure_ascii=False) + "\n"


def _fmt(value: Any, digits: int = 4, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pct(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"


def _gain_text(gain: dict | None) -> str:
    if not gain:
        return "—"
    text = _fmt(gain.get("nll"), signed=True)
    if gain.get("low") is not None and math.isfinite(gain.get("low", math.nan)):
        text += f" [{_fmt(gain['low'], signed=True)}, {_fmt(gain['high'], signed=True)}]"
    return text


def render(result: dict, console: Any) -> None:
    """The evaluation as rich tables (on stderr through ``console``)."""
    from rich.table import Table

    console.print(
        f"[bold]{result['predictions']}[/] on [bold]{result['val']}[/]: {result['votes']} votes "
        f"on {result['prompts']} prompts, {len(result['models'])} models, family "
        f"{result['family']} (joined on {result['joined_on']})"
    )
    if result["dropped_votes"]:
        console.print(
            f"[yellow]skipped {result['dropped_votes']} votes on models outside the "
            "predictions' model list[/]"
        )
    table = Table(title="Held-out votes", title_justify="left")
    columns = ("predictor", "NLL", "NLL, ties ½", "gain, ties ½", "accuracy", "Brier", "ECE")
    for column in columns:
        table.add_column(column, justify="left" if column == "predictor" else "right")
    for name, label in PREDICTORS.items():
        block = result.get(name)
        if not block or not block.get("available", True):
            continue
        own = f" ({block['family']})" if block.get("family") else ""
        table.add_row(
            label,
            _fmt(block["nll"]) + own,
            _fmt(block.get("nll_half")),
            _gain_text(block.get("gain_half")),
            _pct(block["accuracy"]),
            _fmt(block["brier"]),
            _fmt(block["ece"], 3),
        )
    _print_table(console, table)
    shown = [n for n in PREDICTORS if result.get(n, {}).get("available", False)]
    console.print(
        "[dim]" + "; ".join(PREDICTOR_NOTES[n] for n in shown) + ". NLL: the family's own; "
        "ties ½: every vote, a tie counting as half a win (one footing for all families)[/]"
    )
    for line in summary_lines(result):
        console.print(line)
    render_calibration(result, console, Table)
    render_groups(result, console, Table)
    render_recovery(result, console, Table)
    render_leaderboards(result, console, Table)
    render_subset_curve(result, console, Table)


def summary_lines(result: dict) -> list[str]:
    lines = []
    marginal = result.get("marginal", {})
    if not marginal.get("available", False):
        lines.append(f"[yellow]baseline unavailable:[/] {marginal.get('reason', '')}")
        return lines
    gain = result["gain"]
    relative = gain["nll"] / marginal["nll"] if marginal["nll"] else math.nan
    low, high = gain.get("low"), gain.get("high")
    if low is None or high is None or not math.isfinite(low):
        verdict = "P2L vs the marginal leaderboard"
        interval = "no bootstrap interval"
    else:
        interval = (
            f"{100 * gain['level']:.0f}% interval {_fmt(low, signed=True)} to "
            f"{_fmt(high, signed=True)}; paired bootstrap over prompts, "
            f"{gain['bootstrap']} resamples"
        )
        if low > 0:
            verdict = "[green]P2L beats the marginal leaderboard[/]"
        elif high < 0:
            verdict = "[red]P2L is worse than the marginal leaderboard[/]"
        else:
            verdict = "[yellow]P2L is not distinguishable from the marginal leaderboard[/]"
    lines.append(
        f"{verdict}: NLL gain {_fmt(gain['nll'], signed=True)} nats/vote "
        f"({_pct(relative, signed=True)}; {interval})"
    )
    half = result.get("gain_half")
    if half:
        lines.append(
            f"ties counted as half (every family alike): NLL {_fmt(result['p2l']['nll_half'])} "
            f"vs marginal {_fmt(marginal['nll_half'])}, gain {_fmt(half['nll'], signed=True)}"
        )
    oracle = result.get("oracle", {})
    if oracle.get("available"):
        own = oracle.get("fraction_captured")
        own_text = _pct(own) if own is not None or "family" not in oracle else (
            f"none (the truth is {oracle['family']}, the model {result.get('family')}: their "
            "own likelihoods do not compare)"
        )  # fmt: skip
        lines.append(
            f"fraction of the achievable gain captured (oracle), ties as half: "
            f"{_pct(oracle.get('fraction_captured_half'))}; in the family's own NLL: {own_text}"
        )
    elif oracle:
        lines.append(f"[yellow]oracle unavailable:[/] {oracle.get('reason', '')}")
    if "category_fit" in result:
        lines.append(
            f"P2L's gain as a share of the per-category leaderboards' gain: "
            f"{_pct(result['category_fit'].get('fraction_captured'))}"
        )
    return lines


def render_calibration(result: dict, console: Any, table_class: Any) -> None:
    tables = result["calibration"]
    names = list(tables)
    table = table_class(
        title="Calibration: predicted P(lower-indexed model preferred) vs how often it was "
        "(ties half)",
        title_justify="left",
    )
    table.add_column("bin")
    for name in names:
        label = "P2L" if name == "p2l" else "marg."
        for column in ("n", "pred.", "obs."):
            table.add_column(f"{label} {column}", justify="right")
    by_bin = {name: {row["bin"]: row for row in tables[name]} for name in names}
    edges = {row["bin"]: (row["lower"], row["upper"]) for n in names for row in tables[n]}
    for b in sorted(edges):
        cells = [f"{edges[b][0]:.2g}-{edges[b][1]:.2g}"]
        for name in names:
            row = by_bin[name].get(b)
            if row is None:
                cells += ["0", "—", "—"]
            else:
                cells += [str(row["votes"]), _fmt(row["predicted"], 3), _fmt(row["observed"], 3)]
        table.add_row(*cells)
    _print_table(console, table)


def _interval(gain: dict | None) -> str:
    if not gain or gain.get("low") is None or not math.isfinite(gain["low"]):
        return "—"
    return f"{gain['low']:+.3f}..{gain['high']:+.3f}"


def _add_columns(table: Any, columns: list[str]) -> None:
    table.add_column(columns[0], no_wrap=True)
    for column in columns[1:]:
        table.add_column(column, justify="right", no_wrap=True)


def _wide_table(table_class: Any, title: str) -> Any:
    return table_class(title=title, title_justify="left")


def _print_table(console: Any, table: Any) -> None:
    """Print a table whole: wider than the terminal rather than with its numbers cut."""
    from rich.console import Console
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(max_width=1000), table).maximum
    if console.quiet or needed <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=min(needed, 200),
        force_terminal=console.is_terminal,
        color_system=console.color_system,
        highlight=False,
    )
    wide.print(table)


def render_groups(result: dict, console: Any, table_class: Any) -> None:
    groups = result.get("groups")
    if not groups or not groups["rows"]:
        return
    has_marginal = any("marginal" in row for row in groups["rows"])
    has_oracle = any("oracle" in row for row in groups["rows"])
    table = _wide_table(table_class, f"By {groups['by']} (NLL per vote)")
    columns = [groups["by"], "votes", "P2L"]
    columns += ["marginal", "gain", "interval"] if has_marginal else []
    columns += ["oracle"] if has_oracle else []
    columns += ["acc. P2L"]
    _add_columns(table, columns)
    for row in groups["rows"]:
        cells = [str(row["group"]), str(row["votes"]), _fmt(row["p2l"]["nll"], 3)]
        if has_marginal:
            gain = row.get("gain")
            cells += [
                _fmt(row["marginal"]["nll"], 3),
                _fmt((gain or {}).get("nll"), 3, signed=True),
                _interval(gain),
            ]
        if has_oracle:
            cells += [_fmt(row.get("oracle", {}).get("nll"), 3)]
        cells += [_pct(row["p2l"]["accuracy"])]
        table.add_row(*cells)
    _print_table(console, table)


def render_recovery(result: dict, console: Any, table_class: Any) -> None:
    rows = result.get("recovery")
    if not rows:
        return
    table = _wide_table(
        table_class,
        "Leaderboard recovery: Kendall tau to the true leaderboard (higher is better), "
        "mean |difference| of pairwise win probabilities (lower is better)",
    )
    columns = [
        "category",
        "val",
        "train",
        "τ P2L",
        "τ own",
        "τ marg.",
        "|ΔW| P2L",
        "|ΔW| own",
        "|ΔW| marg.",
    ]
    _add_columns(table, columns)
    counts = result.get("train_votes_per_category", {})
    for row in rows:
        everything = row["category"] == "(all)"
        train_votes = result.get("train_votes") if everything else counts.get(row["category"])
        cells = [
            row["category"],
            str(row["val_prompts"]),
            "—" if train_votes is None else str(train_votes),
        ]
        for key in ("kendall_tau", "win_prob_gap"):
            for name in ("p2l", "category_fit", "marginal"):
                cells.append(_fmt(row.get(name, {}).get(key), 3))
        table.add_row(*cells)
    _print_table(console, table)
    console.print(
        "[dim]val: validation prompts aggregated; train: training votes; own: a leaderboard "
        "fitted on the category's training votes alone; marg.: the marginal leaderboard[/]"
    )


LEADERBOARD_LABELS = {"reference": "val marginal", "p2l": "P2L aggregate", "marginal": "marginal"}


def _k_cells(block: dict, ks: list[str]) -> list[str]:
    cells = [_pct(block["top_k_fraction"].get(k)) for k in ks]
    return cells + [_fmt(block["top_k_displacement"].get(k), 2) for k in ks]


def render_leaderboards(result: dict, console: Any, table_class: Any) -> None:
    """The leaderboard comparisons with the marginal leaderboard of the validation votes,
    the spread of each leaderboard and the tie accuracy of each predictor."""
    block = result.get("leaderboards")
    if not block:
        return
    ks = [str(k) for k in block["top_k"]]
    table = _wide_table(table_class, "Leaderboards against the validation votes' marginal fit")
    columns = ["leaderboard", "Spearman", "τ", "|ΔP| L1"]
    columns += [f"top-{k}" for k in ks] + [f"disp. {k}" for k in ks]
    columns += ["IQR", "std", "spread"]
    board_ties = block.get("tie_accuracy")
    columns += ["tie acc."] if board_ties else []
    _add_columns(table, columns)
    for name, label in LEADERBOARD_LABELS.items():
        spread = block["spread"].get(name)
        if spread is None:
            continue
        agree = block["agreement"].get(name)
        if agree is None:
            cells = ["—"] * (3 + 2 * len(ks))
        else:
            cells = [_fmt(agree["spearman"], 3), _fmt(agree["kendall_tau"], 3),
                     _fmt(agree["win_prob_l1"], 3), *_k_cells(agree, ks)]
        cells += [_fmt(spread["iqr"], 3), _fmt(spread["std"], 3), _fmt(spread["spread"], 3)]
        if board_ties:
            cells.append(_pct(board_ties.get(name)))
        table.add_row(label, *cells)
    _print_table(console, table)
    ties = [f"{PREDICTORS[n]} {_pct(result[n]['tie_accuracy'])}" for n in PREDICTORS
            if isinstance(result.get(n), dict) and "tie_accuracy" in result[n]]
    note = ("[dim]top-k: share of the reference's top k also in the row's top k; disp. k: "
            "mean places moved by the reference's top k; |ΔP| L1: mean |difference| of the "
            "pairwise outcome probabilities")
    console.print(note + (f"; tie accuracy: {', '.join(ties)}" if ties else "") + "[/]")


def render_subset_curve(result: dict, console: Any, table_class: Any) -> None:
    curve = result.get("subset_curve")
    if not curve:
        return
    rows = curve["rows"]
    ks = list(rows[0]["top_k_fraction"]) if rows else []
    table = _wide_table(
        table_class,
        f"Aggregating random subsets of the {curve['prompts']} validation prompts, against "
        "the aggregate of all (means over repeats)",
    )
    columns = ["prompts", "repeats", "Spearman", "± std", "τ", "|ΔP| L1"]
    columns += [f"top-{k}" for k in ks] + [f"disp. {k}" for k in ks]
    _add_columns(table, columns)
    for row in rows:
        table.add_row(
            str(row["size"]), str(row["repeats"]), _fmt(row["spearman"], 3),
            _fmt(row["spearman_std"], 3), _fmt(row["kendall_tau"], 3),
            _fmt(row["win_prob_l1"], 3), *_k_cells(row, ks),
        )
    _print_table(console, table)
    if curve["skipped_sizes"]:
        skipped = ", ".join(map(str, curve["skipped_sizes"]))
        console.print(f"[yellow]subset sizes above the {curve['prompts']} prompts skipped: "
                      f"{skipped}[/]")


def render_checkpoints(combined: dict, console: Any) -> None:
    """One row per checkpoint of a training run (``p2l evaluate --checkpoints``)."""
    from rich.table import Table

    table = _wide_table(Table, f"Checkpoints of {combined['run']}")
    columns = ["checkpoint", "step", "NLL P2L", "gain", "accuracy", "Spearman", "|ΔP| L1"]
    _add_columns(table, columns)
    for row in combined["checkpoints"]:
        result = row["result"]
        agree = result.get("leaderboards", {}).get("agreement", {}).get("p2l", {})
        table.add_row(
            row["name"],
            "—" if row["step"] is None else str(row["step"]),
            _fmt(result["p2l"]["nll"]),
            _gain_text(result.get("gain")),
            _pct(result["p2l"]["accuracy"]),
            _fmt(agree.get("spearman"), 3),
            _fmt(agree.get("win_prob_l1"), 3),
        )
    _print_table(console, table)
    console.print(
        "[dim]best: the model folder (the best validation NLL during training); last: "
        "checkpoints/last (the latest weights). Spearman and |ΔP| L1: the aggregated P2L "
        "leaderboard against the validation votes' marginal fit[/]"
    )


def write_plots(result: dict, folder: str | Path) -> list[Path]:
    """``calibration.png`` and, with groups, ``gain_by_<column>.png`` in ``folder``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--plot needs matplotlib: pip install 'p2l-cli[plot]' (or pip install matplotlib)"
        ) from None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_calibration(result, out / "calibration.png", plt)]
    groups = result.get("groups")
    if groups and any("gain" in row for row in groups["rows"]):
        written.append(plot_gains(groups, out / f"gain_by_{_slug(groups['by'])}.png", plt))
    return written


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


def plot_calibration(result: dict, path: Path, plt: Any) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, rows in result["calibration"].items():
        if rows:
            xs = [row["predicted"] for row in rows]
            ys = [row["observed"] for row in rows]
            ece = result.get(name, {}).get("ece")
            label = f"{'P2L' if name == 'p2l' else 'marginal'} (ECE {_fmt(ece, 3)})"
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("predicted probability (lower-indexed model preferred)")
    ax.set_ylabel("observed rate (ties count half)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Calibration on held-out votes")
    ax.legend(loc="lower right")
    return _save(fig, path, plt)


def plot_gains(groups: dict, path: Path, plt: Any) -> Path:
    rows = [row for row in groups["rows"] if "gain" in row]
    names = [str(row["group"]) for row in rows]
    gains = np.array([row["gain"]["nll"] for row in rows], dtype=float)
    low = np.array([_or_nan(row["gain"].get("low")) for row in rows], dtype=float)
    high = np.array([_or_nan(row["gain"].get("high")) for row in rows], dtype=float)
    errors = np.nan_to_num(np.stack([gains - low, high - gains]), nan=0.0)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows) + 2), 4))
    colours = ["tab:green" if g > 0 else "tab:red" for g in gains]
    ax.bar(range(len(rows)), gains, yerr=errors, color=colours, capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax.set_ylabel("NLL gain vs marginal (nats/vote)")
    ax.set_title(f"P2L gain over the marginal leaderboard by {groups['by']}")
    return _save(fig, path, plt)


def _or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    from p2l_cli.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
