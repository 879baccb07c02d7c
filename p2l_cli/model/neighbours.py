"""Neighbourhood leaderboards: the head's coefficients refined by the votes on similar
training prompts.

For a prompt z with head coefficients theta0(z), the ``k`` training votes whose prompts are
nearest to z (cosine similarity of the normalised embeddings) refine them by local maximum
likelihood, shrunk towards theta0(z):

    theta(z) = argmin_theta  sum_{v in N_k(z)} NLL_v(theta) + penalty * |theta - theta0(z)|^2

A linear head shares what it learns across all prompts; neighbourhoods capture structure a
linear map of the embedding cannot (prompts that cluster by topic or template). The votes
are stored with the model (``neighbours.anchors``, ``neighbours.labels``), so a model folder
predicts alone. ``bt`` and ``bt-tie`` only: the fit is a few Newton steps in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from p2l_cli.stats.families import labels_vote_nll, vote_mask
from p2l_cli.stats.headfit import clustered_gain

FAMILIES = ("bt", "bt-tie")
MAX_VOTES = 50_000  # stored votes at most (about 37 MiB of float16 MiniLM embeddings)
# The cross-validation's local fits cost about votes x models^2 (each neighbourhood's design
# and Hessian): at most what MAX_VOTES votes among 12 models cost. 30,000 votes among 30
# models (3.75x that) took 10 of the 22 minutes of `p2l train` on 2 CPU cores.
MAX_WORK = MAX_VOTES * 12**2
NEWTON_STEPS = 6
QUERY_CHUNK = 256


def nearest_votes(queries: torch.Tensor, anchors: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]`` indices of the anchors with the largest cosine similarity (both sides
    unit-normalised), most similar first."""
    k = min(k, anchors.shape[0])
    out = []
    for start in range(0, queries.shape[0], QUERY_CHUNK):
        sims = queries[start : start + QUERY_CHUNK].float() @ anchors.float().T
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


def local_fit(
    theta0: torch.Tensor, labels: torch.Tensor, penalty: float, family: str
) -> torch.Tensor:
    """``theta0 [B, M]`` refined by the votes ``labels [B, K, 3]`` (winner, loser, tie code)
    of each prompt's neighbourhood: Newton's method on the penalised NLL (strictly convex)."""
    theta0 = theta0.double()
    m = theta0.shape[1]
    winner = nn.functional.one_hot(labels[..., 0].long(), m)
    loser = nn.functional.one_hot(labels[..., 1].long(), m)
    design = (winner - loser).double()  # [B, K, M]: theta_w - theta_l = design @ theta
    tie = labels[..., 2] != 0
    target = torch.where(tie, 0.5, 1.0).double()
    counted = torch.ones_like(target) if family == "bt-tie" else (~tie).double()
    eye = torch.eye(m, dtype=torch.float64, device=theta0.device)
    theta = theta0.clone()
    for _ in range(NEWTON_STEPS):
        diff = torch.einsum("bkm,bm->bk", design, theta)
        p = torch.sigmoid(diff)
        grad = torch.einsum("bkm,bk->bm", design, counted * (p - target))
        grad = grad + 2 * penalty * (theta - theta0)
        curvature = counted * p * (1 - p)
        hess = torch.einsum("bkm,bk,bkn->bmn", design, curvature, design) + 2 * penalty * eye
        theta = theta - torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
    return theta


def refine(
    theta0: torch.Tensor,
    queries: torch.Tensor,
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    k: int,
    penalty: float,
    family: str,
) -> torch.Tensor:
    """theta0 refined by each query's ``k`` nearest training votes (see the module doc)."""
    out = torch.empty(theta0.shape, dtype=torch.float64, device=theta0.device)
    for start in range(0, queries.shape[0], QUERY_CHUNK):
        stop = start + QUERY_CHUNK
        near = nearest_votes(queries[start:stop], anchors, k)
        out[start:stop] = local_fit(theta0[start:stop], anchor_labels[near], penalty, family)
    return out


class Neighbours(nn.Module):
    """The stored training votes: their prompts' normalised embeddings and their labels."""

    def __init__(self, anchors: int, width: int, k: int, penalty: float, family: str):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"neighbourhood leaderboards need family bt or bt-tie, not {family}")
        self.k, self.penalty, self.family = k, penalty, family
        self.register_buffer("anchors", torch.zeros(anchors, width, dtype=torch.float16))
        self.register_buffer("labels", torch.zeros(anchors, 3, dtype=torch.int32))

    def forward(self, embedding: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        device = self.anchors.device
        queries = nn.functional.normalize(embedding.float(), dim=-1).to(device)
        refined = refine(
            coefs.detach().to(device), queries, self.anchors, self.labels.long(), self.k,
            self.penalty, self.family,
        )  # fmt: skip
        return refined.to(coefs.device, coefs.dtype)


# ------------------------------------------------------------------- choosing k and penalty

COUNTS = (100, 200, 400, 800)
PENALTIES = (0.3, 1.0, 3.0, 10.0)


@dataclass
class NeighbourChoice:
    k: int | None  # None: neighbourhoods do not help; the head alone
    penalty: float | None
    cv_nll: dict[str, float]  # "k/penalty" -> held-out NLL per vote
    cv_nll_head: float
    gain: float
    gain_se: float

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "penalty": self.penalty,
            "cv_nll": self.cv_nll,
            "cv_nll_head": self.cv_nll_head,
            "cv_gain": self.gain,
            "cv_gain_se": self.gain_se,
        }


def cross_validate(
    embeddings: np.ndarray,
    labels: np.ndarray,
    head_coefs: np.ndarray,
    folds: np.ndarray,
    groups: np.ndarray,
    family: str,
    counts: tuple[int, ...] = COUNTS,
    penalties: tuple[float, ...] = PENALTIES,
    min_gain_se: float = 2.0,
) -> NeighbourChoice:
    """Held-out NLL of every ``(k, penalty)`` on the training votes: each fold's votes are
    refined by the votes of the other folds, starting from ``head_coefs`` (the head fitted
    without that fold). Neighbourhoods are kept only when the best setting beats the head
    alone by ``min_gain_se`` standard errors (per-prompt clustered)."""
    emb = nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=-1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    theta0 = torch.as_tensor(np.asarray(head_coefs), dtype=torch.float64)
    folds = np.asarray(folds)
    counted = vote_mask(y[:, 2], family).to(torch.float64)
    head = labels_vote_nll(theta0, y, None, family)
    held_out: dict[tuple[int, float], torch.Tensor] = {}
    for f in np.unique(folds):
        test = torch.as_tensor(folds == f)
        train = ~test
        anchors, anchor_labels = emb[train], y[train]
        usable = [k for k in counts if k <= len(anchors)]
        if not usable:
            continue
        near = nearest_votes(emb[test], anchors, max(usable))
        for k in usable:
            votes = anchor_labels[near[:, :k]]
            for penalty in penalties:
                theta = torch.cat([
                    local_fit(theta0[test][i : i + QUERY_CHUNK], votes[i : i + QUERY_CHUNK],
                              penalty, family)
                    for i in range(0, int(test.sum()), QUERY_CHUNK)
                ])  # fmt: skip
                losses = held_out.setdefault((k, penalty), head.clone())
                losses[test] = labels_vote_nll(theta, y[test], None, family)
    total = counted.sum()
    cv = {key: float((loss * counted).sum() / total) for key, loss in held_out.items()}
    cv_head = float((head * counted).sum() / total)
    if not cv:
        return NeighbourChoice(None, None, {}, cv_head, 0.0, 0.0)
    best = min(cv, key=cv.get)
    gain, se = clustered_gain(head, held_out[best], counted, groups)
    keep = gain > min_gain_se * se
    return NeighbourChoice(
        k=best[0] if keep else None,
        penalty=best[1] if keep else None,
        cv_nll={f"{k}/{p:g}": v for (k, p), v in cv.items()},
        cv_nll_head=cv_head,
        gain=gain,
        gain_se=se,
    )
