"""Graph smoothing of prompt embeddings before the linear head.

A linear head on raw sentence embeddings has to find the few directions that matter for the
leaderboard among hundreds that describe how a prompt is worded; with a few thousand votes
the ridge penalty that keeps it stable also shrinks the signal away. Smoothing replaces each
prompt's embedding by an average over similar training prompts, repeated ``steps`` times: a
random walk of ``steps`` hops on the graph that links every training prompt (an *anchor*) to
its ``k`` nearest anchors by cosine similarity, itself included. Variation within a group
of similar prompts fades, differences between groups stay, so the head sees few, strong
directions and needs a far weaker penalty.

    values = P^(steps-1) anchors        (P: row-normalised k-nearest-neighbour graph)
    smooth(z) = mean of values over the k anchors nearest to z

A training prompt's nearest anchor is itself, so ``smooth`` of a training prompt is
``P^steps`` of its embedding; a new prompt takes the same average over its own
neighbourhood.

Which prompts count as similar can also read their words (``lexical``, a weight): the search
then runs on the sentence embedding joined by the prompt's mean input token embedding
(centred on the anchors' mean, unit length, times ``lexical``), and only the sentence
embedding is averaged. The mean token embedding is a bag of words: it keeps what a prompt
names (a language, a library, a kind of task) that the sentence embedding blends with how it
is phrased, so neighbourhoods follow the topic more closely. Anchors and values are stored
with the model (``smoothing.anchors``, ``smoothing.values``, with ``lexical`` also
``smoothing.centre``), so a model folder predicts alone. At most ``MAX_ANCHORS`` training
prompts become anchors (a random subset beyond that): the graph costs O(anchors^2) once at
training, a prediction one similarity search.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from p2l_cli.model.neighbours import nearest_votes

MAX_ANCHORS = 20_000
CHUNK = 1024
# Candidate (k, steps), each scored by the cross-validation of the ridge head: a long walk
# over wide neighbourhoods (few, broad directions: prompts whose kinds show in a few words),
# and short walks for prompts whose kind must be read from varied wording, where a long walk
# blurs groups together.
CANDIDATES = ((60, 32), (60, 4), (20, 4))
# The weight of the words in the neighbour search of models built today (see above).
LEXICAL_WEIGHT = 0.7


def neighbourhood_size(k: int, anchors: int) -> int:
    """``k``, at most an eighth of the anchors (small training sets)."""
    return max(1, min(k, anchors // 8))


def candidates_for(anchors: int) -> list[tuple[int, int]]:
    """``CANDIDATES`` for this many anchors: each ``k`` capped by :func:`neighbourhood_size`,
    those that then coincide once."""
    return list(dict.fromkeys((neighbourhood_size(k, anchors), steps) for k, steps in CANDIDATES))


def _averaged(values: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
    """Row i: the mean of ``values`` over the indices ``near[i]``."""
    out = values.new_empty((near.shape[0], values.shape[1]))
    for start in range(0, near.shape[0], CHUNK):
        out[start : start + CHUNK] = values[near[start : start + CHUNK]].mean(dim=1)
    return out


def diffuse(anchors: torch.Tensor, graph: torch.Tensor, steps: int) -> torch.Tensor:
    """``P^(steps-1) anchors``, ``P`` averaging over ``graph[i]`` (each anchor's nearest
    anchors, see :meth:`Smoothing.fill`)."""
    values = anchors.float()
    for _ in range(steps - 1):
        values = _averaged(values, graph)
    return values


def choose_anchors(embeddings: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Row indices of ``embeddings`` to use as anchors: one per prompt (``groups``), at most
    ``MAX_ANCHORS`` of them."""
    _, first = np.unique(groups, return_index=True)
    if len(first) > MAX_ANCHORS:
        first = np.random.default_rng(seed).choice(first, MAX_ANCHORS, replace=False)
    return np.sort(first)


class Smoothing(nn.Module):
    """Stored anchors (where similar prompts are searched: normalised embeddings of training
    prompts, with ``lexical`` also their words) and their smoothed values."""

    def __init__(
        self,
        anchors: int,
        width: int,
        k: int,
        steps: int,
        lexical: float = 0.0,
        words_width: int | None = None,  # the width of the words' rows; default ``width``
    ):
        super().__init__()
        self.k, self.steps, self.lexical = k, steps, float(lexical)
        words_width = (words_width or width) if self.lexical else 0
        search = width + words_width
        self.register_buffer("anchors", torch.zeros(anchors, search, dtype=torch.float16))
        self.register_buffer("values", torch.zeros(anchors, width, dtype=torch.float16))
        if self.lexical:
            self.register_buffer("centre", torch.zeros(words_width))

    def search_space(self, embedding: torch.Tensor, words: torch.Tensor | None) -> torch.Tensor:
        """Unit rows in which the nearest anchors are searched."""
        unit = nn.functional.normalize(embedding.float(), dim=-1)
        if not self.lexical:
            return unit
        if words is None:
            raise ValueError("this smoothing searches with the prompts' words: pass them")
        words = nn.functional.normalize(words.float() - self.centre.to(words.device), dim=-1)
        return nn.functional.normalize(torch.cat([unit, self.lexical * words], -1), dim=-1)

    @torch.no_grad()
    def fill(
        self,
        anchors: torch.Tensor,
        words: torch.Tensor | None = None,
        graph: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Store the search rows of ``anchors`` (embeddings, normalised here, and their
        ``words``: mean token embeddings) and the embeddings' values after ``steps - 1``
        hops; returns the graph (each anchor's ``k`` nearest anchors), which a smoothing
        with the same anchors, words and ``k`` may be given instead of searching it."""
        if self.lexical:
            self.centre.copy_(words.float().mean(0))
        self.anchors.copy_(self.search_space(anchors, words).half())
        if graph is None:
            graph = nearest_votes(self.anchors.float(), self.anchors, self.k)
        unit = nn.functional.normalize(anchors.float(), dim=-1).half()  # as stored without words
        self.values.copy_(diffuse(unit.float(), graph, self.steps).half())
        return graph

    @torch.no_grad()
    def nearest(self, embedding: torch.Tensor, words: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, k]`` indices of the anchors nearest to each embedding (and its words)."""
        queries = self.search_space(embedding.to(self.anchors.device),
                                    None if words is None else words.to(self.anchors.device))
        return nearest_votes(queries, self.anchors, self.k)

    @torch.no_grad()
    def average(self, near: torch.Tensor) -> torch.Tensor:
        """Row i: the mean of the values over the anchors ``near[i]``."""
        return _averaged(self.values.float(), near)

    def forward(self, embedding: torch.Tensor, words: torch.Tensor | None = None) -> torch.Tensor:
        smoothed = self.average(self.nearest(embedding, words))
        return smoothed.to(embedding.device, embedding.dtype)
