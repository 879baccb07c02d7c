"""The style columns of a battles file (optional): per-answer counts that style control
compares between the two answers of a vote.

Each style element has two columns, ``<element>_a`` and ``<element>_b``, one number per
answer, summed over the answer's turns (the names of the Arena's ``conv_metadata``):

- ``sum_assistant_tokens``: the answer's length in tokens,
- ``header_count``: Markdown headers,
- ``bold_count``: bold spans,
- ``list_count``: list items.

``p2l prepare`` writes them when its input carries ``conv_metadata`` or both answers; any
battles file may carry them. A style feature of a vote is the relative difference
``(a - b) / (a + b)`` (a total of 0 counts as 1), which lies in [-1, 1] and is positive when
model_a's answer has more of the element.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from p2l_cli.errors import UserError

STYLE_ELEMENTS = ("sum_assistant_tokens", "header_count", "bold_count", "list_count")
STYLE_LABELS = {
    "sum_assistant_tokens": "length",
    "header_count": "headers",
    "bold_count": "bold",
    "list_count": "lists",
}


def style_columns(element: str) -> tuple[str, str]:
    """The two columns of one style element: model_a's answer, model_b's answer."""
    return f"{element}_a", f"{element}_b"


STYLE_COLUMNS = tuple(column for element in STYLE_ELEMENTS for column in style_columns(element))


def present_elements(columns) -> list[str]:
    """The style elements whose two columns are both among ``columns``."""
    have = set(columns)
    return [e for e in STYLE_ELEMENTS if set(style_columns(e)) <= have]


def relative_difference(a, b) -> np.ndarray:
    """``(a - b) / (a + b)`` per vote, a zero total counted as 1 (the feature is then 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    total = a + b
    return (a - b) / np.where(total == 0, 1.0, total)


def first_is_model_a(model_a: list[str], first: np.ndarray, models: list[str]) -> np.ndarray:
    """Per vote, +1 where the first model of its labels (the winner, or a tie's first
    model; an index into ``models``) is its ``model_a``, -1 where it is model_b."""
    index = {name: i for i, name in enumerate(models)}
    return np.where(np.array([index.get(name, -1) for name in model_a]) == first, 1, -1)


def style_from_frame(df: pl.DataFrame, name: str) -> tuple[np.ndarray, list[str]]:
    """The relative style differences of every vote ``[votes, elements]`` from the style
    columns present, and the elements' short names. Raises :class:`UserError` when there is
    none, or naming the first row whose count is missing or negative."""
    elements = present_elements(df.columns)
    if not elements:
        raise UserError(
            f"{name} has no style columns, which style control needs (pairs such as "
            f"sum_assistant_tokens_a/_b, header_count_a/_b, bold_count_a/_b, "
            f"list_count_a/_b); `p2l prepare` writes them from conv_metadata or the answers"
        )
    features = []
    for element in elements:
        pair = []
        for column in style_columns(element):
            values = df.get_column(column).cast(pl.Float64, strict=False)
            bad = values.is_null() | values.is_nan() | (values < 0)
            if bad.any():
                row = int(bad.arg_true()[0]) + 1
                raise UserError(f"{name}: row {row}: {column} must be a count >= 0 (style "
                                "control needs every vote's style counts)")
            pair.append(values.to_numpy())
        features.append(relative_difference(*pair))
    return np.column_stack(features), [STYLE_LABELS[e] for e in elements]
