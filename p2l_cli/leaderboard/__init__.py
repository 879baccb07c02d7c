"""Leaderboards from battles (marginal fit) or from P2L predictions (aggregation).

A leaderboard is a table, best first, with the columns ``rank``, ``model``, ``score``
(Arena scale), ``lower``, ``upper`` (the interval, on the same scale), ``votes`` (battles
only: the votes the fit used that involve the model), ``win_rate`` (expected win rate
against a uniformly drawn other model, ties counting half) and ``theta`` (the raw
coefficient). Ranks tie when intervals overlap, as LMArena shows them: a model's rank is
1 + the number of models whose lower bound is above its upper bound.

Inputs are detected from their columns: ``coefs`` (+ p2l metadata) is a predictions file;
``model_a``, ``model_b`` and ``winner`` make a battles file (``p2l prepare`` output or a raw
Arena-schema file).

The package: :mod:`~p2l_cli.leaderboard.inputs` (battles and predictions files),
:mod:`~p2l_cli.leaderboard.fit` (the leaderboards as numbers) and
:mod:`~p2l_cli.leaderboard.report` (terminal, Markdown, files, plot); the command
(``p2l_cli.commands.leaderboard``) joins them.
"""

from p2l_cli.leaderboard.fit import (
    Leaderboard,
    aggregate_leaderboard,
    build_leaderboard,
    build_table,
    grouped_leaderboards,
    marginal_leaderboard,
    prompt_leaderboard,
    prompt_rows,
    prompt_table,
    rank_with_ties,
)
from p2l_cli.leaderboard.inputs import Battles, battles_from_frame, load_input

__all__ = [
    "Battles", "Leaderboard", "aggregate_leaderboard", "battles_from_frame",
    "build_leaderboard", "build_table", "grouped_leaderboards", "load_input",
    "marginal_leaderboard", "prompt_leaderboard", "prompt_rows", "prompt_table",
    "rank_with_ties",
]
