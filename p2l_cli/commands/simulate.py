"""`p2l simulate`: a synthetic arena with a known, prompt-dependent truth."""

from __future__ import annotations

from typing import Annotated

import typer

from p2l_cli.ui import QuietOption, console, set_quiet

# likelihood families the simulator has no world for (its votes fit them all the same)
SIMULATED_ELSEWHERE = ("rk-reparam", "rk_reparam", "ba")

SIZE, TRUTH, PROMPTS = "Size", "Truth", "Prompts"


def simulate(
    out_dir: Annotated[
        str | None,
        typer.Argument(
            help="Output folder: battles.parquet, truth.parquet, prompts.jsonl, "
            "costs.yaml, simulation.json.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="The output folder, as an option (like the other "
                     "commands' -o).", show_default=False),
    ] = None,
    battles: Annotated[int, typer.Option(help="Number of battles.", rich_help_panel=SIZE)] = 6000,
    models: Annotated[int, typer.Option(help="Number of models.", rich_help_panel=SIZE)] = 10,
    prompts: Annotated[
        int,
        typer.Option(
            help="Fresh prompts (in no battle) with their truth, for predict and route.",
            rich_help_panel=SIZE,
        ),
    ] = 300,
    days: Annotated[
        float, typer.Option(help="Time span of the battles in days.", rich_help_panel=SIZE)
    ] = 60.0,
    family: Annotated[
        str,
        typer.Option(
            help="Vote family: bt (decisive votes only), bt-tie (same votes as bt), "
            "rk (with ties) or grk (with ties and both-bad ties).",
            rich_help_panel=TRUTH,
        ),
    ] = "rk",
    world: Annotated[
        str,
        typer.Option(
            help="What the truth depends on: mixed (categories, difficulty, turns, length, "
            "language), structure (mostly turns, length and language) or flat (nothing: "
            "one leaderboard for every prompt).",
            rich_help_panel=TRUTH,
        ),
    ] = "mixed",
    categories: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated prompt categories (default: all): code, math, "
            "creative_writing, translation, casual_chat, sql, science, "
            "business_writing.",
            rich_help_panel=TRUTH,
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Random seed; same seed, same files.", rich_help_panel=TRUTH)
    ] = 0,
    prompts_from: Annotated[
        str | None,
        typer.Option(
            "--prompts-from",
            help="Your own prompts instead of the built-in ones (jsonl, json, csv or "
            "parquet; the prompt column found as `p2l predict` finds it), with their "
            "category and language when the file has `category` and `language` columns. "
            "The truth is planted on the categories, turns, length (2,000 characters and "
            "more is long) and language; --prompts of them are held out as fresh prompts "
            "(at most a fifth).",
            rich_help_panel=PROMPTS,
            show_default=False,
        ),
    ] = None,
    prompt_column: Annotated[
        str | None,
        typer.Option(
            "--prompt-column",
            help="The column of --prompts-from's file that holds the prompts.",
            rich_help_panel=PROMPTS,
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the files of a non-empty output folder."),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Simulate an arena whose per-prompt leaderboards are known: battles in the Arena
    conversation schema (ready for `p2l prepare`), the true coefficients of every battle,
    fresh prompts with their truth, and the models' costs.

    Examples:

      p2l simulate arena/ && p2l prepare arena/battles.parquet -o data/

      p2l simulate arena/ --battles 20000 --models 12 --family grk --seed 3

      p2l simulate arena/ --categories code,math,casual_chat

      p2l simulate arena/ --world structure --family bt

      p2l simulate arena/ --prompts-from my_prompts.jsonl --world structure
    """
    set_quiet(quiet)
    out_dir = _one_out_dir(out_dir, out)
    from p2l_cli.io import check_output_folder

    check_output_folder(out_dir, "-o" if out else "OUT_DIR", overwrite)
    from p2l_cli.data.simulate import read_prompt_pool, simulate_arena, write_arena

    if family.lower() in SIMULATED_ELSEWHERE:
        from p2l_cli.errors import UserError

        raise UserError(f"--family {family}: the simulator draws bt, bt-tie, rk or grk votes "
                        "(fit rk-reparam or ba to them with p2l train / leaderboard)")
    chosen = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    if prompt_column and not prompts_from:
        from p2l_cli.errors import UserError

        raise UserError("--prompt-column: names a column of --prompts-from's file; give that file")
    pool = read_prompt_pool(prompts_from, prompt_column) if prompts_from else None
    arena = simulate_arena(
        num_battles=battles,
        num_models=models,
        family=family,
        seed=seed,
        categories=chosen,
        num_prompts=prompts,
        days=days,
        world=world,
        pool=pool,
    )
    paths = write_arena(arena, out_dir)
    console.print(summary_table(arena))
    if pool is not None:
        console.print(f"prompts from {pool.source}: {arena.config['battle_prompts']:,} distinct "
                      f"in the battles, {arena.prompts.height:,} held out as fresh prompts")  # fmt: skip
    console.print(f"wrote {', '.join(str(p) for p in paths)}")


def _one_out_dir(positional: str | None, option: str | None) -> str:
    from p2l_cli.errors import UserError

    if positional and option and positional != option:
        raise UserError(f"two output folders given ({positional} and -o {option}); give one")
    if not (positional or option):
        raise UserError("no output folder: p2l simulate DIR (or -o DIR)")
    return positional or option


def summary_table(arena):
    """The simulated arena's models as a rich table."""
    from rich.table import Table

    from p2l_cli.data.simulate import model_summary

    title = f"simulated arena: {arena.battles.height} battles, family {arena.family}"
    table = Table(title=title)
    table.add_column("model")
    table.add_column("battles", justify="right")
    table.add_column("won", justify="right")
    table.add_column("$/answer", justify="right")
    table.add_column("best categories")
    for row in model_summary(arena):
        won = "-" if row["won"] is None else f"{row['won']:.0%}"
        table.add_row(row["model"], str(row["battles"]), won, f"{row['cost']:.5f}",
                      ", ".join(row["best_categories"]))
    return table
