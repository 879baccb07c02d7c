"""Prompt descriptors read off the token ids: length, turns, and the share of digits, code
symbols, math symbols, CJK, other non-Latin script and tokens unknown to the vocabulary;
optionally, length steps: whether the prompt is longer than each of a few token counts.

Mean-pooled sentence embeddings say what a prompt is about, but hardly how long it is, how
many turns it has or whether it is mostly code: exactly the prompt properties behind the
Arena's own category views (long queries, multi-turn, code, math, languages). A P2L model
with ``prompt_features`` appends these descriptors to the pooled state before the head.

A linear head reads the log length as one straight line, but a prompt's length acts in
steps: a pasted document or a long query changes which models win, a few more words do not.
Step descriptors at doubling token counts (``length_steps``) let a linear head fit a level
per band of lengths, in any order.

The backbone reads at most ``max_length`` tokens, but the descriptors of a model built today
read the whole prompt (``P2LInfo.untruncated_features``), so its steps run from 8 to 2,048
tokens (``LENGTH_STEPS``): a 3,000-token document is not a 256-token question. The log
length alone stops at ``max_length`` (``length_cap``): past it the steps tell the length,
and a linear term cannot extrapolate from 256 tokens to 30,000. Models saved before counted
after truncation, with steps below their ``max_length``; they keep both.

A prompt in a language the backbone's vocabulary was not built for falls apart into word
pieces: MiniLM's English vocabulary reads "Wie schreibe ich" as "wi ##e sc ##hre ##ibe ich",
an English prompt rarely splits a word. The share of tokens that continue a word
(``word_pieces``; also high for long identifiers and rare terms) lets a linear head tell the
two apart. Models built today carry it, between the eight descriptors and the steps, with a
table of which vocabulary entries continue a word (``features.continues_word``). Byte-level
BPE and SentencePiece vocabularies mark word starts, not continuations: a piece without the
mark continues a word only where the token before it ends in a letter, so the first word of
a text or of a chat turn (after a newline or a special token) does not count (tables of
models saved before count it unconditionally; they keep doing so).

Each vocabulary entry gets one class, computed once from the tokenizer and saved with the
weights (``features.token_class``), so a model folder computes the same descriptors
anywhere. A turn is marked by the encoder's separator token (turns are joined by it) or by
the token that opens each user message in a decoder's chat template.
"""

from __future__ import annotations

import re

import torch
from torch import nn

OTHER, SPECIAL, TURN, DIGIT, CODE, MATH, CJK, NON_LATIN, UNKNOWN = range(9)
SHARE_CLASSES = (DIGIT, CODE, MATH, CJK, NON_LATIN, UNKNOWN)
NAMES = ("log_tokens", "log_turns", "digits", "code_symbols", "math_symbols", "cjk", "non_latin",
         "unknown")  # fmt: skip
SIZE = len(NAMES)
# bits of the continues_word table: a continuation wherever it stands (WordPiece's ``##``),
# a continuation after a token that ends in a letter (BPE pieces without a start mark), and
# "this token ends in a letter"
GLUED, GLUED_AFTER_LETTER, ENDS_IN_LETTER = 1, 2, 4
LENGTH_STEPS = tuple(8 * 2**i for i in range(9))  # 8, 16, ..., 2048 tokens


def feature_names(steps: list[int] | tuple[int, ...] = (), word_pieces: bool = False) -> list[str]:
    """The descriptors' names, in the order they are appended to the pooled state."""
    return [*NAMES, *(["word_pieces"] if word_pieces else []),
            *(f"over_{count}_tokens" for count in steps)]  # fmt: skip


CODE_CHARS = set("{}[]();<>_|&\\`#@")
MATH_CHARS = set("+-*/^=%∑∫√π≤≥≠±×÷∞")
_WORD_MARKS = ("##", "Ġ", "▁", "Ċ")


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (
        0x2E80 <= code <= 0x9FFF  # CJK radicals, kana, unified ideographs
        or 0xAC00 <= code <= 0xD7AF  # Hangul syllables
        or 0xF900 <= code <= 0xFAFF
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
    )


def classify_piece(piece: str) -> int:
    """The class of one vocabulary entry's text (word-piece markers removed)."""
    for mark in _WORD_MARKS:
        piece = piece.replace(mark, "")
    if not piece:
        return OTHER
    if piece.isdigit() and piece.isascii():
        return DIGIT
    if any(_is_cjk(ch) for ch in piece):
        return CJK
    if any(ch in CODE_CHARS for ch in piece):
        return CODE
    if any(ch in MATH_CHARS for ch in piece):
        return MATH
    if any(ord(ch) > 0x24F and ch.isalpha() for ch in piece):
        return NON_LATIN
    return OTHER


def turn_marker_id(tokenizer, encoder: bool) -> int | None:
    """The token that marks each user turn: an encoder's separator (turns are joined by
    it), or the special token a decoder's chat template adds once per user message."""
    if encoder:
        return tokenizer.sep_token_id
    try:
        one = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=True, add_generation_prompt=False
        )
        two = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}] * 2, tokenize=True, add_generation_prompt=False
        )
    except Exception:  # noqa: BLE001 (templates raise many kinds of errors)
        return None
    one, two = _as_ids(one), _as_ids(two)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    for token in dict.fromkeys(two):
        if token in special and two.count(token) == one.count(token) + 1:
            return int(token)
    return None


def _as_ids(value) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "input_ids"):
        value = value["input_ids"]
    return [int(v) for v in value]


def _vocabulary_pieces(tokenizer, vocab_size: int) -> list[str]:
    """The text of every vocabulary entry below ``vocab_size`` (embedding rows past the
    tokenizer's vocabulary have none)."""
    ids = list(range(min(vocab_size, len(tokenizer))))
    return [piece or "" for piece in tokenizer.convert_ids_to_tokens(ids)]


def _vocabulary_table(values: list[int], vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` int8 holding ``values`` (one per vocabulary entry), 0 past them."""
    table = torch.zeros(vocab_size, dtype=torch.int8)
    table[: len(values)] = torch.tensor(values, dtype=torch.int8)
    return table


def _byte_chars() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (``Ġ`` for a space, ``Ċ`` for a
    newline) -> the byte: printable Latin-1 bytes stand for themselves, the other bytes
    take the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    chars = {chr(b): b for b in printable}
    chars.update({chr(0x100 + i): b for i, b in enumerate(others)})
    return chars


_BYTE_CHARS = _byte_chars()
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _piece_text(piece: str, byte_level: bool) -> str:
    """The text a BPE or SentencePiece vocabulary entry stands for (a leading space marks a
    word start); bytes that are part of a longer character read as U+FFFD."""
    if byte_level and piece and all(ch in _BYTE_CHARS for ch in piece):
        return bytes(_BYTE_CHARS[ch] for ch in piece).decode("utf-8", errors="replace")
    byte = _BYTE_PIECE.fullmatch(piece)  # SentencePiece's byte fallback
    return chr(int(byte.group(1), 16)) if byte else piece.replace("▁", " ")


def _special_ids(tokenizer, vocab_size: int) -> list[int]:
    return [i for i in tokenizer.all_special_ids if 0 <= i < vocab_size]


def token_classes(tokenizer, encoder: bool, vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` int8: the class of every token id."""
    pieces = _vocabulary_pieces(tokenizer, vocab_size)
    classes = _vocabulary_table([classify_piece(piece) for piece in pieces], vocab_size)
    classes[_special_ids(tokenizer, vocab_size)] = SPECIAL
    # a vocabulary without a script (MiniLM reads most Chinese as [UNK]) still shows it
    unknown = tokenizer.unk_token_id
    if unknown is not None and 0 <= unknown < vocab_size:
        classes[unknown] = UNKNOWN
    marker = turn_marker_id(tokenizer, encoder)
    if marker is not None and 0 <= marker < vocab_size:
        classes[marker] = TURN
    return classes


def continues_word(tokenizer, vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` int8 of ``GLUED`` / ``GLUED_AFTER_LETTER`` / ``ENDS_IN_LETTER`` bits.
    WordPiece marks the continuations (``##``): those are ``GLUED``. Byte-level BPE and
    SentencePiece mark the word starts (a leading space, ``Ġ`` / ``▁``): a piece with letters
    that does not start with a space continues a word when the token before it ends in a
    letter."""
    pieces = _vocabulary_pieces(tokenizer, vocab_size)
    if any(piece.startswith("##") for piece in pieces):
        bits = [GLUED * (p.startswith("##") and any(ch.isalpha() for ch in p[2:])) for p in pieces]
    else:
        byte_level = any(p.startswith("Ġ") for p in pieces) and not any(
            p.startswith("▁") for p in pieces
        )
        bits = []
        for text in (_piece_text(piece, byte_level) for piece in pieces):
            glued = bool(text) and not text[0].isspace() and any(ch.isalpha() for ch in text)
            bits.append(GLUED_AFTER_LETTER * glued + ENDS_IN_LETTER * text[-1:].isalpha())
    table = _vocabulary_table(bits, vocab_size)
    table[_special_ids(tokenizer, vocab_size)] = 0
    return table


class PromptFeatures(nn.Module):
    """``[B, 8 (+1) + len(steps)]`` descriptors of a batch of token ids (see
    ``feature_names``); ``word_pieces`` adds the share of tokens that continue a word."""

    def __init__(
        self,
        vocab_size: int,
        classes: torch.Tensor | None = None,
        steps: list[int] | tuple[int, ...] = (),
        length_cap: int | None = None,
        word_pieces: bool = False,
        continuations: torch.Tensor | None = None,
    ):
        super().__init__()
        table = classes if classes is not None else torch.zeros(vocab_size, dtype=torch.int8)
        self.register_buffer("token_class", table.to(torch.int8))
        self.word_pieces = word_pieces
        if word_pieces:
            glued = continuations if continuations is not None else torch.zeros_like(table)
            self.register_buffer("continues_word", glued.to(torch.int8))
        self.steps = tuple(int(count) for count in steps)
        self.length_cap = length_cap

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = input_ids.clamp(0, self.token_class.shape[0] - 1)
        cls = self.token_class.long()[ids]
        mask = attention_mask.to(torch.float32)
        counts = torch.stack(
            [((cls == c).float() * mask).sum(dim=1) for c in range(UNKNOWN + 1)], dim=1
        )
        text = counts.sum(dim=1) - counts[:, SPECIAL] - counts[:, TURN]
        turns = counts[:, TURN].clamp_min(1.0)
        shares = counts[:, list(SHARE_CLASSES)] / text.clamp_min(1.0).unsqueeze(1)
        pieces = []
        if self.word_pieces:
            glued = (self._continuations(ids).float() * mask).sum(dim=1)
            pieces = [(glued / text.clamp_min(1.0)).unsqueeze(1)]
        over = [(text > count).to(torch.float32).unsqueeze(1) for count in self.steps]
        length = text if self.length_cap is None else text.clamp_max(float(self.length_cap))
        return torch.cat(
            [torch.log1p(length).unsqueeze(1), torch.log(turns).unsqueeze(1), shares, *pieces,
             *over], 1,
        )  # fmt: skip

    def mean_text_embedding(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, table: torch.Tensor
    ) -> torch.Tensor:
        """``[B, width]``: the mean of ``table``'s rows (the backbone's input embeddings) over
        each prompt's text tokens (not special tokens or turn markers); zero for a prompt
        without text."""
        ids = input_ids.clamp(0, self.token_class.shape[0] - 1)
        cls = self.token_class.long()[ids]
        text = attention_mask.to(torch.float32) * ((cls != SPECIAL) & (cls != TURN)).float()
        total = nn.functional.embedding_bag(ids.to(table.device), table.float(), mode="sum",
                                            per_sample_weights=text.to(table.device))  # fmt: skip
        return total / text.sum(dim=1, keepdim=True).clamp_min(1.0).to(total.device)

    def _continuations(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` bool: the tokens that continue a word (see ``continues_word``)."""
        bits = self.continues_word.long()[ids]
        before = torch.zeros_like(bits)
        before[:, 1:] = bits[:, :-1]
        after_letter = (before & ENDS_IN_LETTER) > 0
        return ((bits & GLUED) > 0) | (((bits & GLUED_AFTER_LETTER) > 0) & after_letter)
