"""The battles contract: one vote per row, ``model_a``, ``model_b`` and ``winner``.

``winner`` is one of the four Arena outcomes. Every reader (``prepare``, ``leaderboard``,
``evaluate``) accepts the same spellings of them, case-insensitively, and the name of the
winning model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from p2l_cli.errors import UserError
from p2l_cli.stats.families import BOTH_BAD_CODE, DECISIVE, TIE_CODE

BATTLE_COLUMNS = ("model_a", "model_b", "winner")
Outcome = Literal["model_a", "model_b", "tie", "tie (bothbad)"]
OUTCOMES: tuple[Outcome, ...] = ("model_a", "model_b", "tie", "tie (bothbad)")
WINNER_SPELLINGS: dict[str, Outcome] = {
    "model_a": "model_a",
    "a": "model_a",
    "model_b": "model_b",
    "b": "model_b",
    "tie": "tie",
    "draw": "tie",
    "tie (bothbad)": "tie (bothbad)",
    "tie(bothbad)": "tie (bothbad)",
    "tie (both bad)": "tie (bothbad)",
    "tie_bothbad": "tie (bothbad)",
    "both_bad": "tie (bothbad)",
    "bothbad": "tie (bothbad)",
    "both bad": "tie (bothbad)",
}
TIE_CODES: dict[Outcome, int] = {
    "model_a": DECISIVE, "model_b": DECISIVE, "tie": TIE_CODE, "tie (bothbad)": BOTH_BAD_CODE,
}
EXPECTED_WINNERS = ("model_a, model_b, tie or tie (bothbad) (also a, b, draw, both_bad, or "
                    "the winning model's name)")


def outcome_of(winner: object, model_a: str | None = None,
               model_b: str | None = None) -> Outcome | None:
    """The outcome a ``winner`` value spells, or ``None`` when it spells none."""
    if not isinstance(winner, str):
        return None
    text = winner.strip()
    found = WINNER_SPELLINGS.get(text.lower())
    if found:
        return found
    if text and text == model_a:
        return "model_a"
    if text and text == model_b:
        return "model_b"
    return None


def outcome_column(winner: pl.Series, model_a: pl.Series, model_b: pl.Series,
                   source: str) -> tuple[np.ndarray, np.ndarray]:
    """Per vote: whether model_b won, and its tie code (``stats.families``). The few distinct
    winner spellings are looked up once; only rows that spell none are compared with the
    model names. Raises :class:`UserError` naming the first row that is no outcome."""
    text = winner.cast(pl.String)
    lowered = text.str.strip_chars().str.to_lowercase()
    outcome = lowered.replace_strict(WINNER_SPELLINGS, default=None, return_dtype=pl.String)
    unknown = outcome.is_null()
    if unknown.any():
        stripped = text.str.strip_chars()
        outcome = (
            pl.select(
                pl.when(unknown.not_()).then(outcome)
                .when(stripped == model_a.cast(pl.String)).then(pl.lit("model_a"))
                .when(stripped == model_b.cast(pl.String)).then(pl.lit("model_b"))
            ).to_series()
        )
        missing = outcome.is_null()
        if missing.any():
            row = int(missing.arg_true()[0])
            value = text[row]
            what = "is empty" if value is None or not value.strip() else f"{value!r}"
            raise UserError(f"{source}: row {row + 1}: winner {what}; expected {EXPECTED_WINNERS}")
    b_won = (outcome == "model_b").to_numpy()
    tie_code = outcome.replace_strict(TIE_CODES, return_dtype=pl.Int64).to_numpy()
    return b_won, tie_code
