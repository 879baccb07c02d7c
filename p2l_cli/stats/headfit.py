"""A linear P2L head fitted exactly on frozen prompt features, its penalty chosen by
cross-validation over the training votes.

    theta(z) = b + W^T x(z)        (and eta(z) = c + w^T x(z) for rk / grk)

``x`` is standardised; the loss is the family's mean vote NLL plus ``penalty * (|W|^2 +
|w|^2)`` (biases free), minimised by L-BFGS to convergence. Each candidate penalty is scored
by its NLL on held-out folds of the training votes, folds split by prompt so that a
repeated prompt never sits on both sides; the fitted head is the refit on every vote at the
best penalty. A head that does not beat the marginal leaderboard on the held-out folds by
a clear margin is replaced by the marginal leaderboard itself (``W = 0``), so that a model
trained on votes whose outcomes do not depend on the prompt is no worse than the baseline.

This replaces early stopping on a small development split (a few hundred votes cannot
choose between models reliably) by a choice made on every training vote.

The ridge penalty treats the models' columns of ``W`` as unrelated, but per-prompt
deviations move models together: specialists of one kind gain on the same prompts, strong
models gain on hard ones. Given a first fit (``directions``), a second fit penalises
``tr(W Sigma^-1 W^T)`` instead (the model-covariance prior), ``Sigma`` across models read off
the first fit's weights (``model_covariance_map``): a feature may move models along the
directions the first fit found at little cost, along others at more. Each fold's second fit
takes ``Sigma`` from that fold's first fit, so the held-out votes stay unseen by both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from p2l_cli.stats.families import (
    has_eta,
    is_grounded,
    pairs_nll,
    pairs_vote_nll,
    vote_mask,
)

DEFAULT_PENALTIES = tuple(float(10.0**e) for e in np.arange(1.0, -5.01, -0.25))
DEFAULT_FOLDS = 5
# The held-out gain over the marginal leaderboard must exceed this many standard errors.
MIN_GAIN_SE = 2.0
# L-BFGS stops once no gradient entry of the mean penalised NLL exceeds GRAD_TOLERANCE or a
# step moves the loss by less than CHANGE_TOLERANCE. Tighter (1e-9, 1e-12) took 2-3x as many
# steps to move coefficients by under 1e-4 and cross-validated NLLs by about 1e-6.
GRAD_TOLERANCE = 1e-7
CHANGE_TOLERANCE = 1e-11
# The model-covariance prior's Sigma: this share of the identity, the rest from the first
# fit. 0.2 and 0.05 did alike on development worlds; a share of 0 would forbid directions
# the first fit did not find.
COVARIANCE_IDENTITY_SHARE = 0.2
# A fit told where its penalty should land (``near``: e.g. the penalty of a first fit of the
# same features, or one chosen on a subsample, scaled to these votes) starts the penalty path
# this factor above it instead of at the path's top: the fits far above the best penalty are
# skipped, and they are the ones the cross-validation never picks.
NEAR_MARGIN = 30.0
# A product over one block of rows costs a fixed time (calls, bookkeeping), here about
# 23 us: about 17,000 multiplications of a row entry (2-core x86_64, one thread). Per pair
# of models instead of per model (see _linear_differences) saves N d multiplications and
# adds a block per pair, so it breaks even at about 20,000 row entries (N d) per pair; a
# pair gets its own block from twice that (where it was 1.4x faster), to leave room for
# machines whose memory is faster against their calls.
PAIR_BLOCK_COST = 40_000


@dataclass
class LinearHead:
    """Weights on the original (unstandardised) features: ``theta = x @ weight.T + bias``."""

    weight: np.ndarray  # [M, d]
    bias: np.ndarray  # [M]
    eta_weight: np.ndarray | None = None  # [d]
    eta_bias: float | None = None


@dataclass
class HeadFitReport:
    penalty: float | None  # None: the marginal leaderboard won
    cv_nll: dict[float, float]  # penalty -> held-out NLL per vote
    cv_nll_marginal: float
    gain: float  # held-out NLL gain of the chosen penalty over the marginal, per vote
    gain_se: float
    folds: int
    votes: int
    features: int
    fell_back: bool = False
    # per vote: the coefficients of the fold fit that did not see it (chosen penalty)
    held_out_coefs: np.ndarray | None = field(default=None, repr=False)
    folds_of_votes: np.ndarray | None = field(default=None, repr=False)
    # the penalised weights [d, M] on the standardised features of each fold's fit, then of
    # the refit (chosen penalty; None after a fall-back): a second fit's directions
    chain_weights: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def best_cv_nll(self) -> float:
        return self.cv_nll_marginal if self.penalty is None else self.cv_nll[self.penalty]

    def to_dict(self) -> dict:
        return {
            "method": "ridge-cv",
            "penalty": self.penalty,
            "cv_nll": {f"{k:.3g}": v for k, v in self.cv_nll.items()},
            "cv_nll_marginal": self.cv_nll_marginal,
            "cv_gain": self.gain,
            "cv_gain_se": self.gain_se,
            "folds": self.folds,
            "votes": self.votes,
            "features": self.features,
            "fell_back_to_marginal": self.fell_back,
        }


def prompt_groups(prompts: list[list[str]]) -> np.ndarray:
    """One integer key per vote: the votes on one prompt (the same turns) share it."""
    texts = np.array(["\x1e".join(turns) for turns in prompts], dtype=object)
    return np.unique(texts, return_inverse=True)[1].reshape(-1)


def prompt_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per vote; all votes of a group (prompt) share a fold."""
    unique, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    fold_of_group = rng.permutation(len(unique)) % folds
    return fold_of_group[inverse.reshape(-1)]


def prompt_subsample(groups: np.ndarray, votes: int, seed: int) -> np.ndarray:
    """Sorted row indices of whole groups (prompts), drawn at random until they hold at
    least ``votes`` rows (all rows when there are fewer)."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(counts))
    taken = np.searchsorted(np.cumsum(counts[order]), votes) + 1
    keep = np.zeros(len(counts), dtype=bool)
    keep[order[:taken]] = True
    return np.flatnonzero(keep[inverse.reshape(-1)])


def clustered_gain(
    base: torch.Tensor, new: torch.Tensor, counted: torch.Tensor, groups: np.ndarray
) -> tuple[float, float]:
    """The weighted mean of ``base - new`` per vote and its standard error from per-group
    (per-prompt) sums: the votes of a prompt are not independent."""
    diff = ((base - new) * counted).numpy()
    weight = counted.numpy()
    total = float(weight.sum())
    gain = float(diff.sum() / total)
    _, inverse = np.unique(groups, return_inverse=True)
    per_group = np.bincount(inverse.reshape(-1), weights=diff)
    per_group_w = np.bincount(inverse.reshape(-1), weights=weight)
    g = len(per_group)
    resid = per_group - gain * per_group_w
    return gain, float(math.sqrt(g / max(g - 1, 1) * np.sum(resid**2)) / total)


def penalties_near(near: float, penalties: tuple[float, ...] = DEFAULT_PENALTIES
                   ) -> tuple[float, ...]:  # fmt: skip
    """The tail of the (strongest-first) ``penalties`` that starts at most ``NEAR_MARGIN``
    times above ``near``."""
    top = near * NEAR_MARGIN * (1 + 1e-9)
    return tuple(p for p in penalties if p <= top) or penalties[-1:]


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=0)
    sd = x.std(dim=0)
    sd = torch.where(sd > 1e-8 * (1 + mean.abs()), sd, torch.ones_like(sd))
    return mean, sd


@dataclass
class _Problem:
    """What a cross-validated fit varies: how parameters map rows of ``x`` to coefficients
    (and eta), which parameters the ridge penalty shrinks (and ``penalty=None`` zeroes), and
    an optional prior on the others. ``pairs_of`` (optional) computes only the two
    coefficients each vote needs; without it they are picked from ``coefs_of``."""

    coefs_of: Callable[[torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]]
    penalised: tuple[int, ...]
    prior: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    pairs_of: Callable[[torch.Tensor, torch.Tensor, int], Callable] | None = None

    def vote_pairs(self, x: torch.Tensor, labels: torch.Tensor, models: int) -> Callable:
        """For these rows and votes: parameters -> (``[N, 2]`` coefficients of each vote's
        first and second model, eta or None)."""
        if self.pairs_of is not None:
            return self.pairs_of(x, labels, models)
        index = labels[:, :2].long()

        def pairs(params):
            coefs, eta = self.coefs_of(x, params)
            return coefs.gather(-1, index), eta

        return pairs


def _linear_coefs(x: torch.Tensor, params: list[torch.Tensor]):
    coefs = x @ params[0] + params[1]
    eta = x @ params[2] + params[3] if len(params) > 2 else None
    return coefs, eta


class _BlockProducts(torch.autograd.Function):
    """``cat([block @ v for block, v in zip(blocks, vectors)])`` for consecutive row blocks
    of a constant matrix and ``vectors [K, d]``, as one step of the autograd graph instead of
    one per block: a fit with thousands of blocks (pairs of models) would spend more time
    walking the graph than multiplying."""

    @staticmethod
    def forward(ctx, vectors: torch.Tensor, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ctx.blocks = blocks
        return torch.cat([block @ v for block, v in zip(blocks, vectors, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pieces = grad.split([len(block) for block in ctx.blocks])
        return torch.stack([block.T @ g for block, g in zip(ctx.blocks, pieces, strict=True)]), None


def _model_products(x: torch.Tensor, votes: torch.Tensor, first: torch.Tensor,
                    second: torch.Tensor, models: int) -> Callable:
    """For the votes ``votes`` (indices into ``x``, ``first`` and ``second``): ``(weight,
    bias)`` -> ``[len(votes), 2]``, each vote's first and second model's coefficient. Every
    vote's row is laid out twice (for its first and its second model) in blocks by model,
    so model k's coefficient is one matrix-vector product over the rows of its votes."""
    k = len(votes)
    slots = torch.cat([first[votes], second[votes]])
    order = torch.argsort(slots, stable=True)
    rows, model = x[votes[order % k]], slots[order]
    blocks = tuple(rows.split(torch.bincount(slots, minlength=models).tolist()))
    place = torch.empty_like(order)
    place[order] = torch.arange(2 * k, device=order.device)

    def products(weight, bias):
        by_model = _BlockProducts.apply(weight.T, blocks)
        return (by_model + bias[model])[place].view(2, k).T

    return products


def _linear_pairs(x: torch.Tensor, labels: torch.Tensor, models: int) -> Callable:
    """:func:`_linear_coefs` for each vote's two models only (:func:`_model_products`):
    2 N d multiplications instead of N d M for all M models (6x fewer with 12 models, 65x
    with 130)."""
    labels = labels.long()
    products = _model_products(x, torch.arange(len(x), device=x.device), labels[:, 0],
                               labels[:, 1], models)  # fmt: skip

    def pairs(params):
        eta = x @ params[2] + params[3] if len(params) > 2 else None
        return products(params[0], params[1]), eta

    return pairs


def _linear_differences(x: torch.Tensor, labels: torch.Tensor, models: int) -> Callable:
    """:func:`_linear_pairs` for a family that reads only each vote's difference
    ``theta_first - theta_second`` (every family but the grounded ones): it returns
    ``(difference, 0)``, the same loss. The votes of each pair of models with many votes are
    laid out once, in a block of their own, so the pair's differences are one
    matrix-vector product with ``W[:, i] - W[:, j]``: N d multiplications instead of 2 N d,
    and one copy of those rows instead of two. A pair with few votes costs more as a block
    than it saves (``PAIR_BLOCK_COST``): those votes keep the per-model layout
    (:func:`_model_products`), so an arena with a long tail of rare pairs gains on its heavy
    pairs; with no heavy pair at all this is :func:`_linear_pairs`."""
    n, d = x.shape
    first, second = labels[:, 0].long(), labels[:, 1].long()
    low, high = torch.minimum(first, second), torch.maximum(first, second)
    keys, pair_of_vote, counts = torch.unique(low * models + high, return_inverse=True,
                                              return_counts=True)  # fmt: skip
    heavy_pairs = counts * d >= PAIR_BLOCK_COST
    if not heavy_pairs.any():  # also where there are no votes at all
        return _linear_pairs(x, labels, models)
    heavy = heavy_pairs[pair_of_vote]
    ordered = torch.argsort(torch.where(heavy, pair_of_vote, len(keys)), stable=True)
    blocked = int(heavy.sum())
    in_blocks, light = ordered[:blocked], ordered[blocked:]
    keys, counts = keys[heavy_pairs], counts[heavy_pairs]
    blocks = tuple(x[in_blocks].split(counts.tolist()))
    low_of, high_of = keys // models, keys % models
    pair_of_row = torch.repeat_interleave(torch.arange(len(keys), device=counts.device), counts)
    sign = (first[in_blocks] == low[in_blocks]).to(x.dtype) * 2 - 1
    tail = _model_products(x, light, first, second, models) if len(light) else None
    place = torch.empty_like(ordered)
    place[ordered] = torch.arange(n, device=ordered.device)

    def pairs(params):
        weight, bias = params[0], params[1]
        by_pair = _BlockProducts.apply((weight[:, low_of] - weight[:, high_of]).T, blocks)
        parts = [(by_pair + (bias[low_of] - bias[high_of])[pair_of_row]) * sign]
        if tail is not None:
            values = tail(weight, bias)
            parts.append(values[:, 0] - values[:, 1])
        difference = torch.cat(parts)[place]
        eta = x @ params[2] + params[3] if len(params) > 2 else None
        return torch.stack([difference, torch.zeros_like(difference)], dim=1), eta

    return pairs


def model_covariance_map(weight: torch.Tensor, identity_share: float = COVARIANCE_IDENTITY_SHARE
                          ) -> torch.Tensor:  # fmt: skip
    """The symmetric ``A`` ``[M, M]`` with ``A A = Sigma = (1 - s) S + s I``, where
    ``S = weight^T weight`` scaled to trace ``M``: how a fit of ``W = V A`` with the ridge
    penalty on ``V`` spreads a feature's weight across the models."""
    gram = weight.T @ weight
    m = gram.shape[0]
    trace = float(gram.trace())
    scaled = gram * (m / trace) if trace > 0 else torch.eye(m, dtype=gram.dtype)
    sigma = (1 - identity_share) * scaled + identity_share * torch.eye(m, dtype=gram.dtype)
    values, vectors = torch.linalg.eigh(sigma)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _mapped(problem: _Problem, a: torch.Tensor) -> _Problem:
    """``problem`` with its first parameter (the penalised weights ``V``) read as ``V @ a``."""

    def coefs_of(x, params):
        return problem.coefs_of(x, [params[0] @ a, *params[1:]])

    def pairs_of(x, labels, models):
        pairs = problem.pairs_of(x, labels, models)
        return lambda params: pairs([params[0] @ a, *params[1:]])

    return _Problem(coefs_of, problem.penalised, problem.prior,
                    None if problem.pairs_of is None else pairs_of)  # fmt: skip


def _with_style_offset(pairs: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Each vote's style offset split between its two models (see
    :func:`p2l_cli.stats.families.with_style_offset`), on ``[N, 2]`` pairs: the training
    loss and the held-out losses alike."""
    if offset is None:
        return pairs
    half = offset.to(pairs.dtype)[:, None] / 2
    return pairs + torch.cat([half, -half], dim=1)


def _fit(
    x: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    family: str,
    penalty: float | None,
    start: list[torch.Tensor],
    problem: _Problem,
    max_iter: int = 500,
    offset: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Minimise the penalised NLL from ``start``; ``penalty=None`` keeps the penalised
    parameters at 0 (for the full head: the marginal leaderboard)."""
    params = [p.detach().clone().requires_grad_(True) for p in start]
    if penalty is None:
        for i in problem.penalised:
            params[i] = params[i].detach().zero_()
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.LBFGS(
        trainable, lr=1.0, max_iter=max_iter, tolerance_grad=GRAD_TOLERANCE,
        tolerance_change=CHANGE_TOLERANCE, history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip
    pairs_of = problem.vote_pairs(x, labels, models=start[1].numel())  # start[1]: the biases

    def closure():
        optimizer.zero_grad()
        pairs, eta = pairs_of(params)
        loss = pairs_nll(_with_style_offset(pairs, offset), labels, eta, family, weights)
        if penalty:
            loss = loss + penalty * sum(params[i].square().sum() for i in problem.penalised)
        if problem.prior is not None:
            loss = loss + problem.prior(params) / len(x)
        loss.backward()
        return loss

    optimizer.step(closure)
    return [p.detach() for p in params]


def _vote_losses(x, labels, family, params, problem: _Problem, offset=None) -> torch.Tensor:
    pairs, eta = problem.vote_pairs(x, labels, models=params[1].numel())(params)
    return pairs_vote_nll(_with_style_offset(pairs, offset), labels, eta, family)


def _cross_validated(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    family: str,
    start: list[torch.Tensor],
    problem: _Problem,
    groups: np.ndarray | None,
    penalties: tuple[float, ...],
    folds: int,
    seed: int,
    min_gain_se: float,
    width: int,
    offset: torch.Tensor | None = None,
    pool: Executor | None = None,
    output_maps: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], HeadFitReport]:
    """Choose the penalty by held-out NLL over folds split by ``groups``, fall back to the
    unpenalised-part-only fit without a clear gain, and refit on every vote. ``offset``
    (one style offset per vote, see :func:`_with_style_offset`) enters every likelihood.

    Each fold, and the refit on every vote, is a chain of fits down the penalty path, each
    starting from the one before. The chains are independent: given a ``pool`` of threads
    (which other fits may share), it runs each stage of them side by side, the refit's too
    (which then walks past the chosen penalty as far as the folds do); without one they run
    one after another and the refit comes last. The fits, and so the result, are the same.

    ``output_maps`` (one per fold, then the refit's) make each chain fit ``W = V A`` with the
    penalty on ``V`` (see :func:`model_covariance_map`); the result is ``W``."""
    n = len(y)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    folds = max(2, min(folds, len(np.unique(groups))))
    if output_maps is not None and len(output_maps) != folds + 1:
        raise ValueError(f"{len(output_maps)} output maps for {folds} folds and the refit")
    problems = [problem if output_maps is None else _mapped(problem, a) for a in
                (output_maps or [None] * (folds + 1))]  # fmt: skip
    fold = torch.as_tensor(prompt_folds(groups, folds, seed))
    counted = vote_mask(y[:, 2], family).to(torch.float64) * (w if w is not None else 1.0)
    refit_alongside = pool is not None
    run = map if pool is None else pool.map
    trains = [fold != k for k in range(folds)] + [slice(None)]  # the refit: every vote
    last = [start] * (folds + 1)
    refits: dict = {}  # penalty -> the refit's parameters

    def advance(chain: int, penalty: float | None) -> list[torch.Tensor]:
        train = trains[chain]
        return _fit(x[train], y[train], None if w is None else w[train], family, penalty,
                    last[chain], problems[chain], offset=None if offset is None else offset[train])

    def weights_of(chain: int, params: list[torch.Tensor]) -> torch.Tensor:
        return params[0] if output_maps is None else params[0] @ output_maps[chain]

    held_out: dict = {}
    oof: dict = {}
    fold_fits: dict = {}  # penalty -> the folds' parameters

    def stage(penalty: float | None, chains: list[int]) -> None:
        """Every chain in ``chains`` one fit further, at ``penalty`` (None: the
        penalised part held at 0, which is the marginal leaderboard for the full head)."""
        for chain, params in zip(chains, run(lambda c: advance(c, penalty), chains)):
            last[chain] = params
        if 0 in chains:
            fold_fits[penalty] = last[:folds]
        if folds in chains:
            refits[penalty] = last[folds]

    def score(penalty: float | None) -> None:
        """Each vote's loss and coefficients under the fold fit that did not see it."""
        held_out[penalty] = torch.zeros(n, dtype=torch.float64)
        for k in range(folds):
            test = fold == k
            held_out[penalty][test] = _vote_losses(
                x[test], y[test], family, last[k], problems[k],
                None if offset is None else offset[test],
            )
            test_coefs = problems[k].coefs_of(x[test], last[k])[0]
            if penalty not in oof:
                oof[penalty] = torch.zeros(n, test_coefs.shape[1], dtype=torch.float64)
            oof[penalty][test] = test_coefs

    chains = list(range(folds + 1 if refit_alongside else folds))
    stage(None, chains)
    score(None)
    total = counted.sum()

    def cv_nll(key) -> float:
        return float((held_out[key] * counted).sum() / total)

    tried = []
    worse_in_a_row = 0
    for penalty in penalties:  # strongest first
        stage(penalty, chains)
        score(penalty)
        tried.append(penalty)
        # weaker penalties only overfit more once the held-out NLL has turned upwards
        worse_in_a_row = worse_in_a_row + 1 if cv_nll(penalty) > min(map(cv_nll, tried)) else 0
        if worse_in_a_row >= 2:
            break
    cv = {p: cv_nll(p) for p in held_out}
    best = min(tried, key=lambda p: cv[p])
    gain, se = clustered_gain(held_out[None], held_out[best], counted, groups)
    fell_back = not gain > min_gain_se * se
    chosen = None if fell_back else best
    if not refit_alongside:
        path = [] if chosen is None else tried[: tried.index(chosen) + 1]
        for penalty in [None, *path]:
            stage(penalty, [folds])
    report = HeadFitReport(
        penalty=chosen,
        cv_nll={p: cv[p] for p in tried},
        cv_nll_marginal=cv[None],
        gain=gain,
        gain_se=se,
        folds=folds,
        votes=n,
        features=width,
        fell_back=fell_back,
        held_out_coefs=oof[chosen].numpy(),
        folds_of_votes=fold.numpy(),
    )
    if chosen is not None:
        report.chain_weights = [weights_of(k, params).numpy() for k, params in
                                enumerate([*fold_fits[chosen], refits[chosen]])]  # fmt: skip
    refit = refits[chosen]
    return [weights_of(folds, refit), *refit[1:]], report


def _standardised(features, feature_weights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    mean, sd = _standardise(x)
    if feature_weights is not None:
        sd = sd / torch.as_tensor(np.asarray(feature_weights), dtype=torch.float64)
    return (x - mean) / sd, mean, sd


def fit_linear_head(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    family: str,
    bias: np.ndarray,
    eta: float | None = None,
    weights: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    min_gain_se: float = MIN_GAIN_SE,
    feature_weights: np.ndarray | None = None,
    offset: np.ndarray | None = None,
    pool: Executor | None = None,
    directions: HeadFitReport | None = None,
    near: float | None = None,
) -> tuple[LinearHead, HeadFitReport]:
    """The cross-validated ridge head for per-vote ``features [N, d]`` and ``labels [N, 3]``
    (and, with style control, each vote's style ``offset``).

    ``bias`` (and ``eta``) start every fit, e.g. at the marginal leaderboard. ``groups``
    (one key per vote, e.g. a hash of its prompt) keeps a prompt's votes in one fold.
    ``feature_weights`` multiply the standardised features: the penalty on feature j is
    then ``penalty / weight_j^2`` (a block of few, strong features can be penalised less).
    Given a ``pool`` of threads (one core each), the folds are fitted side by side on it
    (the same head as without one). ``directions``, the report of a fit of these same
    features, votes and folds, turns on the model-covariance prior (see the module's notes),
    each fold's and the refit's from the matching fit of that one. ``near``, a penalty the
    best one is expected close to, shortens the path (see :func:`penalties_near`); should
    the cross-validation then prefer the shortened path's strongest penalty, the whole path
    is tried, so the head is the one the whole path would give.
    """
    z, mean, sd = _standardised(features, feature_weights)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n, d = z.shape
    if n != len(y):
        raise ValueError(f"{n} feature rows for {len(y)} votes")
    w = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    m = len(bias)
    start = [torch.zeros(d, m, dtype=torch.float64), torch.as_tensor(bias, dtype=torch.float64)]
    if has_eta(family):
        start += [
            torch.zeros(d, dtype=torch.float64),
            torch.tensor(float(eta or 0.0), dtype=torch.float64),
        ]
    problem = _Problem(_linear_coefs, penalised=(0, 2) if has_eta(family) else (0,),
                       pairs_of=_linear_pairs if is_grounded(family) else _linear_differences)  # fmt: skip
    o = None if offset is None else torch.as_tensor(np.asarray(offset), dtype=torch.float64)
    maps = None
    if directions is not None and directions.chain_weights is not None:
        maps = [model_covariance_map(torch.as_tensor(w)) for w in directions.chain_weights]
    path = penalties if near is None else penalties_near(near, penalties)
    while True:
        params, report = _cross_validated(
            z, y, w, family, start, problem, groups, path, folds, seed, min_gain_se, d, o, pool,
            maps,
        )
        best = min(report.cv_nll, key=report.cv_nll.get)
        if len(path) == len(penalties) or best != path[0]:
            return _unstandardise(params, mean, sd), report
        path = penalties


def fit_new_rows(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    family: str,
    fixed_coefs: np.ndarray,
    new: np.ndarray,
    eta: np.ndarray | None = None,
    prior_mean: float = 0.0,
    groups: np.ndarray | None = None,
    penalties: tuple[float, ...] = DEFAULT_PENALTIES,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    min_gain_se: float = MIN_GAIN_SE,
    style_offset: np.ndarray | None = None,
) -> tuple[LinearHead, HeadFitReport]:
    """New models' rows of a linear head, the other models held fixed (and, for a model
    trained with style control, each vote's ``style_offset``).

    Vote ``i`` is scored with ``fixed_coefs[i]`` ``[N, M]`` (the trained model's coefficients
    for its prompt, any value in the new columns) except that column ``new[j]`` becomes
    ``b_j + W_j . x_i``. The ridge penalty on ``W`` is chosen by cross-validation as in
    :func:`fit_linear_head`; without a clear held-out gain ``W = 0``: each new model gets one
    rating for every prompt, fitted against the fixed per-prompt coefficients. ``b`` has a
    weak normal prior (mean ``prior_mean``, sd 1) so that a model that won or lost every vote
    still gets a finite rating. ``eta`` ``[N]`` (rk, grk) is held fixed too.
    """
    z, mean, sd = _standardised(features, None)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n, d = z.shape
    offset = torch.as_tensor(np.asarray(fixed_coefs), dtype=torch.float64)
    if offset.shape[0] != n or len(y) != n:
        raise ValueError(f"{n} feature rows, {offset.shape[0]} coefficient rows, {len(y)} votes")
    columns = torch.as_tensor(np.asarray(new), dtype=torch.long)
    k = len(columns)
    with_eta = eta is not None
    packed = [z, offset] + (
        [torch.as_tensor(eta, dtype=torch.float64)[:, None]] if with_eta else []
    )
    x = torch.cat(packed, dim=1)

    def coefs_of(rows: torch.Tensor, params: list[torch.Tensor]):
        fitted = rows[:, :d] @ params[0] + params[1]
        coefs = rows[:, d : d + offset.shape[1]].index_copy(1, columns, fitted)
        return coefs, rows[:, -1] if with_eta else None

    def prior(params: list[torch.Tensor]) -> torch.Tensor:
        return 0.5 * (params[1] - prior_mean).square().sum()

    start = [
        torch.zeros(d, k, dtype=torch.float64),
        torch.full((k,), float(prior_mean), dtype=torch.float64),
    ]
    problem = _Problem(coefs_of, penalised=(0,), prior=prior)
    o = None if style_offset is None else torch.as_tensor(style_offset, dtype=torch.float64)
    params, report = _cross_validated(
        x, y, None, family, start, problem, groups, penalties, folds, seed, min_gain_se, d, o
    )
    return _unstandardise(params, mean, sd), report


def _unstandardise(params: list[torch.Tensor], mean: torch.Tensor, sd: torch.Tensor) -> LinearHead:
    scaled = params[0] / sd[:, None]
    head = LinearHead(
        weight=scaled.T.numpy().copy(),
        bias=(params[1] - mean @ scaled).numpy().copy(),
    )
    if len(params) > 2:
        eta_scaled = params[2] / sd
        head.eta_weight = eta_scaled.numpy().copy()
        head.eta_bias = float(params[3] - mean @ eta_scaled)
    return head
