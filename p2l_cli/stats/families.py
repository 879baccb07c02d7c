"""The likelihood families of P2L, in log space, in torch (differentiable, any dtype).

One implementation serves the training loss, evaluation metrics, marginal fits, aggregation
and routing. Conventions:

- ``theta`` are Bradley-Terry coefficients; model ``i`` beats ``j`` with probability
  ``sigmoid(theta_i - theta_j)`` in ``bt``.
- ``eta`` is the raw output of a tie head (one number per prompt). Each family maps it to its
  tie parameter with the link used by the published P2L checkpoints, so their heads load
  unchanged: ``rk`` uses the tie width ``max(softplus(eta - 22.5, beta=0.1), 0.02)``;
  ``grk`` uses ``t = exp(eta) + 1.000001`` in ``p_win = e^a / (e^a + t e^b + 1)``.
- Outcomes are indexed ``WIN = 0`` (first model wins), ``LOSS = 1``, ``TIE = 2``,
  ``TIE_BOTH_BAD = 3``. Vote labels are ``[winner_idx, loser_idx, tie_code]`` with
  ``tie_code`` 0 (decisive), 1 (tie) or 2 (tie, both bad); for a tie the order is a then b.
- ``bt`` drops ties (they carry no weight); ``bt-tie`` counts a tie as half a win and half a
  loss; ``rk`` treats both kinds of tie alike; ``grk`` has the fourth outcome "both bad",
  a tie against a fixed reference of strength 0.
- ``rk-reparam`` (the reference implementation's Rao-Kupper reparameterisation) has grk's
  win and loss, ``p_win = e^a / (e^a + t e^b + 1)`` with ``t = exp(eta) + 1.000001``, and
  puts all the remaining mass on one tie outcome (both kinds of tie alike).
- ``ba`` is grk with a learned reference strength ``gamma`` (one per prompt, from the head)
  and ``t = exp(eta) + 1.02``. Its outcome probabilities depend on the coefficients only
  through ``theta - gamma``, so p2l's ``ba`` coefficients are those differences
  (:func:`ba_coefficients`; the ``ba`` head returns them): with them, ``ba`` is grk with
  its own ``t`` offset, and it flows through every function here unchanged.
- ``tie-rk``, ``tie-grk`` and ``tie-bb-grk`` are tie-only likelihoods, for evaluating tie
  prediction: they read an rk or grk model's outputs and score only whether a vote was a
  tie (``tie-rk``, ``tie-grk``: either kind) or a tie with both bad (``tie-bb-grk``). They
  do not identify a ranking (``tie-rk`` depends on ``|theta_a - theta_b|`` only), so
  :func:`canonical_family` refuses them unless asked (``tie_only=True``); the vote
  likelihoods (:func:`vote_nll`, :func:`labels_nll`) accept them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FAMILIES = ("bt", "bt-tie", "rk", "grk", "rk-reparam", "ba")
FAMILIES_WITH_ETA = ("rk", "grk", "rk-reparam", "ba")
# families whose coefficients are measured against a fixed reference of strength 0
# (adding a constant to every coefficient changes the probabilities)
GROUNDED_FAMILIES = ("grk", "rk-reparam", "ba")
FAMILIES_WITH_BOTH_BAD = ("grk", "ba")
# tie-only likelihoods and the family whose outputs they read
TIE_ONLY_FAMILIES = {"tie-rk": "rk", "tie-grk": "grk", "tie-bb-grk": "grk"}
ALIASES = {
    "bag": "grk", "tie-bt": "bt-tie", "bt_tie": "bt-tie", "rao-kupper": "rk",
    "rk_reparam": "rk-reparam", "tie-bag": "tie-grk", "tie-bb-bag": "tie-bb-grk",
}  # fmt: skip

WIN, LOSS, TIE, TIE_BOTH_BAD = 0, 1, 2, 3
DECISIVE, TIE_CODE, BOTH_BAD_CODE = 0, 1, 2

RK_ETA_SHIFT = 22.5
RK_ETA_BETA = 0.1
RK_MIN_WIDTH = 0.02
GRK_EPS = 1e-6
BA_EPS = 0.02  # ba's tie multiplier is t = exp(eta) + 1.02
_LOG_GRK_EPS = math.log(GRK_EPS)


def canonical_family(name: str, tie_only: bool = False) -> str:
    """``'bag'`` -> ``'grk'`` and so on; raises ``ValueError`` for an unknown family, and for
    a tie-only likelihood unless ``tie_only`` (they evaluate tie prediction, nothing else)."""
    family = ALIASES.get(str(name).lower(), str(name).lower())
    if family in TIE_ONLY_FAMILIES:
        if tie_only:
            return family
        raise ValueError(
            f"{name!r} is a tie-only likelihood, for evaluating tie prediction, not for "
            f"training or ranking; use {TIE_ONLY_FAMILIES[family]!r} here"
        )
    if family not in FAMILIES:
        known = FAMILIES + tuple(TIE_ONLY_FAMILIES) if tie_only else FAMILIES
        raise ValueError(f"unknown likelihood family {name!r}; expected one of {known}")
    return family


def base_family(family: str) -> str:
    """The family whose outputs a likelihood reads: ``rk`` for ``tie-rk`` and so on."""
    family = canonical_family(family, tie_only=True)
    return TIE_ONLY_FAMILIES.get(family, family)


def has_eta(family: str) -> bool:
    return base_family(family) in FAMILIES_WITH_ETA


def is_grounded(family: str) -> bool:
    """Whether the family's coefficients are measured against a reference of strength 0."""
    return base_family(family) in GROUNDED_FAMILIES


def has_both_bad(family: str) -> bool:
    return base_family(family) in FAMILIES_WITH_BOTH_BAD


def ba_coefficients(coefs: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``ba``'s coefficients as p2l keeps them: ``theta - gamma`` (``gamma [...]`` or
    ``[..., 1]`` the learned reference strength, broadcast over the models)."""
    gamma = torch.as_tensor(gamma, dtype=coefs.dtype, device=coefs.device)
    if gamma.dim() == coefs.dim() - 1:
        gamma = gamma.unsqueeze(-1)
    return coefs - gamma


def _t_eps(family: str) -> float:
    return BA_EPS if family == "ba" else GRK_EPS


# ------------------------------------------------------------------------- tie parameters


def exact_softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` to full precision everywhere (``F.softplus`` turns into the identity
    above a threshold, an error of ``e^-threshold`` there)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def rk_tie_width(eta: torch.Tensor) -> torch.Tensor:
    """Rao-Kupper tie width (in logit units, >= 0.02) from the raw head output:
    ``softplus(eta - 22.5)`` with ``beta = 0.1``, i.e. ``log(1 + e^(0.1 x)) / 0.1``."""
    scaled = RK_ETA_BETA * (eta - RK_ETA_SHIFT)
    return (exact_softplus(scaled) / RK_ETA_BETA).clamp_min(RK_MIN_WIDTH)


def rk_raw_eta(width: float) -> float:
    """Inverse of :func:`rk_tie_width` for a width above the clamp (for initialisation)."""
    width = max(float(width), RK_MIN_WIDTH + 1e-9)
    return RK_ETA_SHIFT + math.log(math.expm1(RK_ETA_BETA * width)) / RK_ETA_BETA


def grk_log_t_minus_one(eta: torch.Tensor, eps: float = GRK_EPS) -> torch.Tensor:
    """``log(t - 1)`` for the grounded RK tie multiplier ``t = exp(eta) + 1 + eps`` (``eps``
    1e-6 for grk and rk-reparam, 0.02 for ba)."""
    log_eps = _LOG_GRK_EPS if eps == GRK_EPS else math.log(eps)
    return torch.logaddexp(eta, torch.full_like(eta, log_eps))


# ------------------------------------------------------------------ outcome probabilities


def _rk_log_probs(diff: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    log_win = F.logsigmoid(diff - width)
    log_loss = F.logsigmoid(-diff - width)
    # 1 - s(d - w) - s(-d - w) = s(w - d) s(w + d) (1 - exp(-2w)), without cancellation
    log_tie = (
        F.logsigmoid(width - diff)
        + F.logsigmoid(width + diff)
        + torch.log(-torch.expm1(-2.0 * width))
    )
    return torch.stack([log_win, log_loss, log_tie, torch.full_like(diff, -math.inf)], dim=-1)


def _grk_log_probs(
    theta_i: torch.Tensor, theta_j: torch.Tensor, eta: torch.Tensor, eps: float = GRK_EPS
) -> torch.Tensor:
    zero = torch.zeros_like(theta_i)
    log_tm1 = grk_log_t_minus_one(eta, eps)
    log_t = exact_softplus(log_tm1)
    norm_win = torch.logsumexp(torch.stack([theta_i, log_t + theta_j, zero]), dim=0)
    norm_loss = torch.logsumexp(torch.stack([theta_j, log_t + theta_i, zero]), dim=0)
    norm_all = torch.logsumexp(torch.stack([theta_i, theta_j, zero]), dim=0)
    log_win = theta_i - norm_win
    log_loss = theta_j - norm_loss
    log_both_bad = -norm_all
    # 1 - p_win - p_loss - p_bb = (t-1) e^(a+b) / S * (1/N_win + 1/N_loss), S = e^a + e^b + 1
    log_tie = log_tm1 + theta_i + theta_j - norm_all + torch.logaddexp(-norm_win, -norm_loss)
    return torch.stack([log_win, log_loss, log_tie, log_both_bad], dim=-1)


def outcome_log_probs(
    theta_i: torch.Tensor,
    theta_j: torch.Tensor,
    eta: torch.Tensor | None = None,
    family: str = "bt",
) -> torch.Tensor:
    """Log-probabilities of (i wins, j wins, tie, tie both bad), stacked on the last axis.

    ``bt`` and ``bt-tie`` put no mass on ties (``-inf``), ``rk`` and ``rk-reparam`` none on
    "both bad". ``eta`` broadcasts against ``theta_i``; it is required for the families with
    a tie parameter. A tie-only likelihood gives the probabilities of the family it reads.
    """
    family = base_family(family)
    theta_i, theta_j = torch.broadcast_tensors(theta_i, theta_j)
    if family in ("bt", "bt-tie"):
        diff = theta_i - theta_j
        minus_inf = torch.full_like(diff, -math.inf)
        return torch.stack([F.logsigmoid(diff), F.logsigmoid(-diff), minus_inf, minus_inf], -1)
    if eta is None:
        raise ValueError(f"family {family!r} needs eta")
    eta = torch.as_tensor(eta, dtype=theta_i.dtype, device=theta_i.device).expand_as(theta_i)
    if family == "rk":
        return _rk_log_probs(theta_i - theta_j, rk_tie_width(eta))
    log_p = _grk_log_probs(theta_i, theta_j, eta, _t_eps(family))
    if family == "rk-reparam":  # one tie outcome: grk's two kinds of tie together
        tie = torch.logaddexp(log_p[..., TIE], log_p[..., TIE_BOTH_BAD])
        return torch.stack([log_p[..., WIN], log_p[..., LOSS], tie,
                            torch.full_like(tie, -math.inf)], dim=-1)
    return log_p


def outcome_probs(theta_i, theta_j, eta=None, family: str = "bt") -> torch.Tensor:
    return outcome_log_probs(theta_i, theta_j, eta, family).exp()


def win_probability(theta_i, theta_j, eta=None, family: str = "bt") -> torch.Tensor:
    """P(i is preferred to j), a tie counting half: the quantity routing maximises."""
    probs = outcome_probs(theta_i, theta_j, eta, family)
    return probs[..., WIN] + 0.5 * (probs[..., TIE] + probs[..., TIE_BOTH_BAD])


def win_matrix(coefs: torch.Tensor, eta: torch.Tensor | None = None, family: str = "bt"):
    """``W[..., i, j]`` = P(model i preferred to model j) for coefficients ``[..., M]``."""
    if eta is not None:
        eta = torch.as_tensor(eta, dtype=coefs.dtype, device=coefs.device)
        eta = eta.reshape(eta.shape + (1, 1)) if eta.dim() == coefs.dim() - 1 else eta
    return win_probability(coefs.unsqueeze(-1), coefs.unsqueeze(-2), eta, family)


# ------------------------------------------------------------------------- vote likelihood


def vote_nll(
    theta_a: torch.Tensor,
    theta_b: torch.Tensor,
    tie_code: torch.Tensor,
    eta: torch.Tensor | None = None,
    family: str = "bt",
) -> torch.Tensor:
    """Negative log-likelihood of each vote, for ``theta_a`` the winner's coefficient (the
    first model for ties) and ``theta_b`` the loser's. Votes a family ignores (ties in
    ``bt``) get 0; use :func:`vote_mask` to exclude them from means. A tie-only likelihood
    scores the binary event it predicts: tie or not (``tie-rk``, ``tie-grk``), tie with both
    bad or not (``tie-bb-grk``)."""
    family = canonical_family(family, tie_only=True)
    log_p = outcome_log_probs(theta_a, theta_b, eta, family)
    tie_code = torch.as_tensor(tie_code, device=log_p.device).long().expand(log_p.shape[:-1])
    decisive = tie_code == DECISIVE
    if family in TIE_ONLY_FAMILIES:
        return -_tie_only_log_likelihood(log_p, tie_code, family)
    if family == "bt":
        return torch.where(decisive, -log_p[..., WIN], torch.zeros_like(log_p[..., WIN]))
    if family == "bt-tie":
        half = -0.5 * (log_p[..., WIN] + log_p[..., LOSS])
        return torch.where(decisive, -log_p[..., WIN], half)
    if family in ("rk", "rk-reparam"):
        return torch.where(decisive, -log_p[..., WIN], -log_p[..., TIE])
    outcome = torch.where(decisive, WIN, torch.where(tie_code == TIE_CODE, TIE, TIE_BOTH_BAD))
    return -log_p.gather(-1, outcome.unsqueeze(-1)).squeeze(-1)


def tie_event_nll(
    theta_a: torch.Tensor,
    theta_b: torch.Tensor,
    tie_code: torch.Tensor,
    eta: torch.Tensor | None,
    family: str,
    both_bad: bool = False,
) -> torch.Tensor:
    """Each vote's NLL of the tie event alone under any family with ties: tie (either kind)
    or not, or with ``both_bad`` "tie, both bad" or not. For ``rk`` this is ``tie-rk``, for
    ``grk`` ``tie-grk`` (``tie-bb-grk`` with ``both_bad``)."""
    family = canonical_family(family)
    if not has_eta(family) or (both_bad and not has_both_bad(family)):
        raise ValueError(f"family {family!r} predicts no {'both-bad ' if both_bad else ''}ties")
    log_p = outcome_log_probs(theta_a, theta_b, eta, family)
    tie_code = torch.as_tensor(tie_code, device=log_p.device).long().expand(log_p.shape[:-1])
    return -_tie_only_log_likelihood(log_p, tie_code, "tie-bb-grk" if both_bad else "tie-rk")


def _tie_only_log_likelihood(log_p: torch.Tensor, tie_code: torch.Tensor, family: str):
    decisive = log_p[..., WIN].logaddexp(log_p[..., LOSS])
    if family == "tie-bb-grk":
        not_both_bad = decisive.logaddexp(log_p[..., TIE])
        return torch.where(tie_code == BOTH_BAD_CODE, log_p[..., TIE_BOTH_BAD], not_both_bad)
    tie = log_p[..., TIE].logaddexp(log_p[..., TIE_BOTH_BAD])
    return torch.where(tie_code == DECISIVE, decisive, tie)


def half_tie_nll(
    theta_a: torch.Tensor,
    theta_b: torch.Tensor,
    tie_code: torch.Tensor,
    eta: torch.Tensor | None = None,
    family: str = "bt",
) -> torch.Tensor:
    """Each vote's cross-entropy under the Arena's convention, for every family alike: the
    observed preference is 1 for a decisive vote (``theta_a`` the winner's) and 1/2 for a
    tie of either kind, the predicted one :func:`win_probability` (a predicted tie counting
    half). It scores models of different families on one footing; for ``bt-tie`` it is
    :func:`vote_nll`."""
    p_a = win_probability(theta_a, theta_b, eta, family)
    p_b = win_probability(theta_b, theta_a, eta, family)
    decisive = torch.as_tensor(tie_code, device=p_a.device).expand(p_a.shape) == DECISIVE
    return torch.where(decisive, -torch.log(p_a), -0.5 * (torch.log(p_a) + torch.log(p_b)))


def vote_mask(tie_code: torch.Tensor, family: str = "bt") -> torch.Tensor:
    """1.0 for votes the family scores, 0.0 for those it drops (ties in ``bt``)."""
    tie_code = torch.as_tensor(tie_code)
    if canonical_family(family, tie_only=True) == "bt":
        return (tie_code == DECISIVE).to(torch.get_default_dtype())
    return torch.ones(tie_code.shape, dtype=torch.get_default_dtype(), device=tie_code.device)


def labels_vote_nll(
    coefs: torch.Tensor,
    labels: torch.Tensor,
    eta: torch.Tensor | None = None,
    family: str = "bt",
) -> torch.Tensor:
    """Each vote's NLL (:func:`vote_nll`) for labels ``[B, 3]`` under per-vote coefficients
    ``coefs [B, M]`` (and ``eta [B]`` or ``[B, 1]``)."""
    labels = labels.long()
    return pairs_vote_nll(coefs.gather(-1, labels[:, :2]), labels, eta, family)


def pairs_vote_nll(
    pairs: torch.Tensor,
    labels: torch.Tensor,
    eta: torch.Tensor | None = None,
    family: str = "bt",
) -> torch.Tensor:
    """:func:`labels_vote_nll` from each vote's two coefficients ``pairs [B, 2]`` (its first
    and second model's), for callers that compute only those."""
    eta = None if eta is None else eta.reshape(-1)
    return vote_nll(pairs[:, 0], pairs[:, 1], labels[:, 2], eta, family)


def with_style_offset(coefs: torch.Tensor, labels: torch.Tensor,
                      offset: torch.Tensor | None) -> torch.Tensor:
    """Per-vote coefficients ``[B, M]`` with each vote's style offset split between its two
    models: + offset/2 to the winner's (a tie's first model's), - offset/2 to the loser's, as
    in :mod:`p2l_cli.stats.style`. ``None`` returns ``coefs`` unchanged."""
    if offset is None:
        return coefs
    half = (offset.to(coefs.dtype) / 2).unsqueeze(-1)
    labels = labels.long()
    shift = torch.zeros_like(coefs)
    shift.scatter_add_(-1, labels[:, :1], half)
    shift.scatter_add_(-1, labels[:, 1:2], -half)
    return coefs + shift


def labels_nll(
    coefs: torch.Tensor,
    labels: torch.Tensor,
    eta: torch.Tensor | None = None,
    family: str = "bt",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean NLL of votes ``labels [B, 3]`` under per-vote coefficients ``coefs [B, M]``
    (and ``eta [B]`` or ``[B, 1]``): the P2L training loss. Dropped votes do not count."""
    labels = labels.long()
    return pairs_nll(coefs.gather(-1, labels[:, :2]), labels, eta, family, weights)


def pairs_nll(
    pairs: torch.Tensor,
    labels: torch.Tensor,
    eta: torch.Tensor | None = None,
    family: str = "bt",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`labels_nll` from each vote's two coefficients ``pairs [B, 2]``."""
    nll = pairs_vote_nll(pairs, labels, eta, family)
    mask = vote_mask(labels[:, 2], family).to(nll.dtype)
    if weights is not None:
        mask = mask * weights.to(nll.dtype)
    return (nll * mask).sum() / mask.sum().clamp_min(torch.finfo(nll.dtype).tiny)


# --------------------------------------------------------- bulk probabilities (additive)
#
# The same probabilities as outcome_probs, computed in probability space with a few
# elementwise operations: for bulk sums over many prompts (aggregation, through the
# factored forms below, which fall back on these), where an absolute rounding error is
# harmless. Not for likelihoods: tiny probabilities lose their relative
# precision (a tie is one minus the other outcomes).


def _grk_t(eta: torch.Tensor, eps: float = GRK_EPS) -> torch.Tensor:
    log_t = exact_softplus(grk_log_t_minus_one(eta, eps))
    return torch.exp(log_t).clamp_max(torch.finfo(eta.dtype).max)


def direct_win_probability(theta_i, theta_j, eta=None, family: str = "bt") -> torch.Tensor:
    """P(i wins outright against j), computed directly (see the note above)."""
    family = base_family(family)
    if family in ("bt", "bt-tie"):
        return torch.sigmoid(theta_i - theta_j)
    if eta is None:
        raise ValueError(f"family {family!r} needs eta")
    eta = torch.as_tensor(eta, dtype=theta_i.dtype, device=theta_i.device)
    if family == "rk":
        return torch.sigmoid(theta_i - theta_j - rk_tie_width(eta))
    # e^a / (e^a + t e^b + 1) = 1 / (1 + t e^(b-a) + e^-a): an overflow to inf in the
    # denominator gives the right limit 0, and no inf/inf or 0*inf can arise
    t = _grk_t(eta, _t_eps(family))
    return 1.0 / (1.0 + t * torch.exp(theta_j - theta_i) + torch.exp(-theta_i))


def direct_both_bad_probability(theta_i, theta_j) -> torch.Tensor:
    """grk's (and ba's) P(tie, both bad) = 1 / (1 + e^a + e^b), computed directly."""
    return 1.0 / (1.0 + torch.exp(theta_i) + torch.exp(theta_j))


# ------------------------------------------------ pair matrices for bulk sums (factored)
#
# Aggregation sums the pair probabilities of many prompts: [n, M, M] entries per block. Each
# probability factors into per-model terms computed once per prompt (O(n M), in float64):
#
#     P(i wins outright against j) = 1 / (1 + u_i v_j)     (every family)
#     grk's P(tie, both bad)        = 1 / (x_i + y_j)
#
# so an entry costs a multiplication (or addition), an addition and a reciprocal instead of
# an exponential. The factors of bt and rk are taken relative to the prompt's midpoint
# coefficient (the shift cancels). Entries are as exact as the direct forms above (a few
# units in the last place of the block's dtype). Blocks with a coefficient more than
# FACTORED_RANGE from that midpoint (from 0 for grk), where u could underflow to 0 while v
# overflows, use the direct forms instead.

FACTORED_RANGE = 80.0


def _shifted(coefs: torch.Tensor, family: str) -> torch.Tensor:
    """Coefficients in float64 relative to each prompt's midpoint (bt, rk) or as they are
    (grk, which is not shift-invariant)."""
    coefs = coefs.to(torch.float64)
    if family in GROUNDED_FAMILIES:
        return coefs
    return coefs - 0.5 * (coefs.amax(-1, keepdim=True) + coefs.amin(-1, keepdim=True))


def _win_factors(shifted: torch.Tensor, eta: torch.Tensor | None, family: str):
    """``(u, v)``, ``[n, M]`` float64, with P(i wins outright vs j) = 1 / (1 + u_i v_j); with
    c the prompt's midpoint: bt: u = e^-(a-c), v = e^(b-c); rk: v times e^width; grk:
    u = e^-a, v = 1 + t e^b."""
    u = torch.exp(-shifted)
    if family in ("bt", "bt-tie"):
        return u, torch.exp(shifted)
    if eta is None:
        raise ValueError(f"family {family!r} needs eta")
    eta = torch.as_tensor(eta, dtype=torch.float64).reshape(-1, 1)
    if family == "rk":
        return u, torch.exp(shifted + rk_tie_width(eta))
    return u, 1.0 + _grk_t(eta, _t_eps(family)) * torch.exp(shifted)


def _factored_is_safe(shifted: torch.Tensor) -> bool:
    return shifted.numel() == 0 or bool(shifted.abs().max() <= FACTORED_RANGE)


def outright_win_matrices(coefs: torch.Tensor, eta: torch.Tensor | None, family: str,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """``W[z, i, j]`` = P(model i wins outright against j) for prompts ``coefs [n, M]`` (and
    ``eta [n]``), in coefs' dtype; written into ``out`` when given."""
    family = base_family(family)
    shifted = _shifted(coefs, family)
    if not _factored_is_safe(shifted):
        eta_b = None if eta is None else torch.as_tensor(eta, dtype=coefs.dtype)[:, None, None]
        direct = direct_win_probability(coefs[:, :, None], coefs[:, None, :], eta_b, family)
        return direct if out is None else out.copy_(direct)
    u, v = (f.to(coefs.dtype) for f in _win_factors(shifted, eta, family))
    matrices = torch.mul(u[:, :, None], v[:, None, :], out=out)
    return matrices.add_(1.0).reciprocal_()


def both_bad_matrices(coefs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``B[z, i, j]`` = grk's P(tie, both bad) = 1 / (x_i + y_j) with x = e^a, y = 1 + e^b,
    for prompts ``coefs [n, M]``, in coefs' dtype."""
    if not _factored_is_safe(coefs):
        direct = direct_both_bad_probability(coefs[:, :, None], coefs[:, None, :])
        return direct if out is None else out.copy_(direct)
    x = torch.exp(coefs.to(torch.float64))
    y = (1.0 + x).to(coefs.dtype)
    return torch.add(x.to(coefs.dtype)[:, :, None], y[:, None, :], out=out).reciprocal_()
