"""Statistics: likelihood families, marginal fits with intervals, aggregation, metrics."""

from __future__ import annotations

from p2l_cli.stats.aggregate import aggregate
from p2l_cli.stats.marginal import ARENA_BASE, ARENA_SCALE, MarginalFit, arena_scale, fit_marginal
from p2l_cli.stats.metrics import calibration_table, vote_metrics

__all__ = [
    "ARENA_BASE",
    "ARENA_SCALE",
    "MarginalFit",
    "aggregate",
    "arena_scale",
    "calibration_table",
    "fit_marginal",
    "vote_metrics",
]
