"""Counting the style of an answer: its length, headers, bold spans and list items, the
numbers behind the style columns of a battles file (see :mod:`p2l_cli.contracts.style`).

The rules, for one answer text:

- **code**: fenced code blocks, from a ```` ``` ```` to the next one (or to the end of the
  answer when the fence is never closed), are removed before headers, bold and lists are
  counted, so a ``# comment`` or a ``- item`` inside code counts for nothing;
- **headers**: lines that start with 1 to 6 ``#`` followed by a space or a tab;
- **list items**: lines that start, after optional indentation, with ``-``, ``*`` or ``+``,
  or with a number followed by ``.`` or ``)``, and then a space or a tab;
- **bold spans**: ``**text**`` or ``__text__`` within one line (text not empty, without
  ``*`` or ``_`` respectively);
- **tokens**: no tokenizer: the number of words and punctuation marks (the regular
  expression ``\\w+|[^\\w\\s]``) over the whole answer, code included.

An answer of several turns counts the sum over its turns. The Arena's own
``conv_metadata`` counts tokens with a real tokenizer, so lengths counted here differ from
those by a roughly constant factor, which the style feature, the relative difference
``(a - b) / (a + b)`` of the two answers, mostly cancels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

StyleCounts = tuple[int, int, int, int]  # tokens, headers, bold spans, list items

_CODE_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_HEADER = re.compile(r"^#{1,6}[ \t]", re.MULTILINE)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def without_code(text: str) -> str:
    """The text with its fenced code blocks removed."""
    return _CODE_FENCE.sub("", text)


def count_tokens(text: str) -> int:
    """Words and punctuation marks, a tokenizer-free length."""
    return sum(1 for _ in _TOKEN.finditer(text))


def answer_style(text: str) -> StyleCounts:
    """(tokens, headers, bold spans, list items) of one answer text."""
    prose = without_code(text)
    return (
        count_tokens(text),
        len(_HEADER.findall(prose)),
        len(_BOLD.findall(prose)),
        len(_LIST_ITEM.findall(prose)),
    )


def turns_style(texts: Iterable[str]) -> StyleCounts:
    """:func:`answer_style` summed over the turns of an answer."""
    totals = [0, 0, 0, 0]
    for text in texts:
        for i, count in enumerate(answer_style(text)):
            totals[i] += count
    return totals[0], totals[1], totals[2], totals[3]
