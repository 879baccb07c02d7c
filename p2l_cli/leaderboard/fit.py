"""Leaderboards as numbers: the marginal fit of battles, the aggregate of predictions, one
prompt's own, per group, and the views across groups. No printing: see
:mod:`p2l_cli.leaderboard.report`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np
import polars as pl

from p2l_cli.contracts.predictions import Predictions
from p2l_cli.errors import UserError
from p2l_cli.leaderboard.inputs import Battles
from p2l_cli.stats import families
from p2l_cli.stats.aggregate import aggregate_fit, bootstrap_aggregate, sandwich_aggregate
from p2l_cli.stats.marginal import (
    CI_METHODS,
    arena_scale,
    fit_grouped,
    group_votes,
    percentile_interval,
)
from p2l_cli.stats.pairfit import shift_invariant
from p2l_cli.stats.style import DEFAULT_STYLE_REG, fit_style
from p2l_cli.stats.winrates import win_rates_vs_others


@dataclass
class Leaderboard:
    table: pl.DataFrame
    family: str
    kind: str  # "marginal", "aggregate" or "prompt"
    ci: str
    n: int  # votes (marginal) or prompts (aggregate)
    eta: float | None = None
    group: str | None = None
    meta: dict = field(default_factory=dict)


def rank_with_ties(score: np.ndarray, lower: np.ndarray | None = None,
                   upper: np.ndarray | None = None) -> np.ndarray:
    """1 + the number of models clearly better: whose lower bound exceeds this model's upper
    bound, or without intervals, whose score is higher. An undefined bound (NaN) is taken
    as unbounded: such a model is never clearly better or worse on that side."""
    if lower is None or upper is None:
        lower = upper = np.asarray(score, dtype=np.float64)
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    lower = np.where(np.isnan(lower), -np.inf, lower)
    upper = np.where(np.isnan(upper), np.inf, upper)
    order = np.sort(lower)
    return 1 + len(order) - np.searchsorted(order, upper, side="right")


def build_table(models, theta, family, eta=None, lower=None, upper=None, votes=None):
    """The leaderboard table, best first (theta and its bounds on the raw scale)."""
    theta = np.asarray(theta, dtype=np.float64)
    columns = {
        "rank": rank_with_ties(theta, lower, upper),
        "model": list(models),
        "score": arena_scale(theta),
        "lower": arena_scale(lower) if lower is not None else np.full(len(theta), np.nan),
        "upper": arena_scale(upper) if upper is not None else np.full(len(theta), np.nan),
    }
    if votes is not None:
        columns["votes"] = np.asarray(votes, dtype=np.int64)
    columns["win_rate"] = win_rates_vs_others(theta, eta, family)
    columns["theta"] = theta
    table = pl.DataFrame(columns).with_columns(pl.col("lower", "upper").fill_nan(None))
    return table.sort(["score", "model"], descending=[True, False])


def marginal_leaderboard(
    battles: Battles, family: str = "bt-tie", ci: str = "sandwich", rounds: int = 100,
    seed: int = 0, reweight: bool = False, level: float = 0.95,
) -> Leaderboard:
    family = families.canonical_family(family)
    votes = group_votes(battles.winner, battles.loser, battles.tie_code, len(battles.models),
                        family, battles.weight, reweight)
    if votes.count.sum() == 0:
        raise UserError("no votes to fit" + (" (family bt drops ties)" if family == "bt" else ""))
    fit = fit_grouped(votes, family, ci, rounds, seed, level)
    support = vote_support(votes, family, len(battles.models))
    lower, upper = support.bounds(fit.lower, fit.upper)
    table = build_table(battles.models, fit.theta, family, fit.eta, lower, upper,
                        votes.model_votes)
    return Leaderboard(table, family, "marginal", ci, fit.n_votes, fit.eta,
                       meta={"reweight": reweight, "level": level, "nll": fit.nll,
                             "warnings": support.warnings(battles.models)})


def style_leaderboard(
    battles: Battles, family: str = "bt-tie", ci: str = "sandwich", rounds: int = 100,
    seed: int = 0, reweight: bool = False, level: float = 0.95,
    reg: float = DEFAULT_STYLE_REG,
) -> Leaderboard:
    """The style-controlled leaderboard (:mod:`p2l_cli.stats.style`): scores with the
    answers' style held fixed; ``meta["style"]`` holds one row per style feature."""
    family = families.canonical_family(family)
    if battles.style is None:
        raise UserError("--style-control: the battles carry no style features")
    m = len(battles.models)
    votes = group_votes(battles.winner, battles.loser, battles.tie_code, m, family,
                        battles.weight, reweight)
    if votes.count.sum() == 0:
        raise UserError("no votes to fit" + (" (family bt drops ties)" if family == "bt" else ""))
    try:
        fit = fit_style(battles.winner, battles.loser, battles.tie_code, battles.sign,
                        battles.style, m, family, battles.weight, reweight, reg, ci, rounds,
                        seed, level)
    except ValueError as exc:
        raise UserError(f"--style-control: {exc}") from None
    support = vote_support(votes, family, m)
    lower, upper = support.bounds(fit.lower, fit.upper)
    table = build_table(battles.models, fit.theta, family, fit.eta, lower, upper,
                        votes.model_votes)
    meta = {"reweight": reweight, "level": level, "nll": fit.nll, "style_reg": reg,
            "warnings": support.warnings(battles.models),
            "style": style_rows(battles.style_names, fit)}
    return Leaderboard(table, family, "marginal", ci, fit.n_votes, fit.eta, meta=meta)


def style_rows(names: list[str], fit) -> list[dict]:
    """One row per style feature: its coefficient (log-odds per standard deviation of the
    relative difference), the same in Arena rating points, its interval, and the feature's
    mean and standard deviation over the votes."""
    from p2l_cli.stats.marginal import ARENA_SCALE

    rows = []
    for i, name in enumerate(names):
        bounds = (None, None) if fit.beta_lower is None else (
            float(fit.beta_lower[i]), float(fit.beta_upper[i]))
        rows.append({
            "feature": name,
            "coefficient": float(fit.beta[i]),
            "lower": bounds[0],
            "upper": bounds[1],
            "points_per_sd": float(fit.beta[i]) * ARENA_SCALE,
            "mean": float(fit.feature_mean[i]),
            "sd": float(fit.feature_std[i]),
        })
    return rows


@dataclass
class VoteSupport:
    """Where the votes cannot place a model (its maximum-likelihood score does not exist):
    it never won (the score runs to -infinity), never lost (+infinity), or has no kept vote;
    or the models split into groups that never meet (their relative scores are unknown)."""

    no_wins: np.ndarray  # bool [M]
    no_losses: np.ndarray  # bool [M]
    no_votes: np.ndarray  # bool [M]
    components: list[np.ndarray]  # indices per connected group of models, largest first

    def bounds(self, lower: np.ndarray | None, upper: np.ndarray | None):
        """The intervals with what the votes do not support replaced: -inf below a model
        that never won, +inf above one that never lost, undefined (NaN) on the other side
        (a Wald or bootstrap bound at a boundary means nothing), and undefined for models
        outside the largest connected group."""
        if lower is None or upper is None:
            return lower, upper
        lower, upper = np.array(lower, np.float64), np.array(upper, np.float64)
        lower[self.no_losses] = np.nan
        upper[self.no_wins] = np.nan
        lower[self.no_wins] = -np.inf
        upper[self.no_losses] = np.inf
        unplaced = self.no_votes.copy()
        for component in self.components[1:]:
            unplaced[component] = True
        lower[unplaced] = upper[unplaced] = np.nan
        return lower, upper

    def warnings(self, models: list[str]) -> list[str]:
        out = []
        never_won = self.no_wins & ~self.no_losses & ~self.no_votes
        never_lost = self.no_losses & ~self.no_wins & ~self.no_votes
        if never_won.any():
            out.append(f"{_names(models, never_won)} never won a vote: the maximum-likelihood "
                       "score is -infinity, the interval is unbounded below and the score "
                       "shown only reflects the fit's small ridge penalty")
        if never_lost.any():
            out.append(f"{_names(models, never_lost)} never lost a vote: the maximum-likelihood "
                       "score is +infinity, the interval is unbounded above and the score "
                       "shown only reflects the fit's small ridge penalty")
        if self.no_votes.any():
            out.append(f"{_names(models, self.no_votes)}: no vote that the fit kept (this "
                       "family drops ties): score and interval undefined")
        if len(self.components) > 1:
            groups = " | ".join(
                ", ".join(models[i] for i in c[:6]) + (", ..." if len(c) > 6 else "")
                for c in self.components[:4]
            ) + (" | ..." if len(self.components) > 4 else "")
            out.append(f"the models form {len(self.components)} groups that never meet in a "
                       f"vote ({groups}): scores are not comparable across groups; intervals "
                       "outside the largest group are undefined")
        return out


def _names(models: list[str], mask: np.ndarray, limit: int = 8) -> str:
    names = [models[i] for i in np.flatnonzero(mask)]
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)"
                                        if len(names) > limit else "")
    return f"{len(names)} model{'s' if len(names) > 1 else ''} ({shown})"


def vote_support(votes, family: str, num_models: int) -> VoteSupport:
    """Which models the votes can place. A decisive vote is a win for one model and a loss
    for the other; a tie (in the families that keep ties) bounds both models from both
    sides; in grk a both-bad tie pushes both models down, like a loss."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = votes.rows
    kept = np.asarray(votes.weight) > 0
    winner, loser = rows.winner[kept], rows.loser[kept]
    code = rows.tie_code[kept]
    decisive = code == families.DECISIVE
    loss_for_both = (code == families.BOTH_BAD_CODE) & (family == "grk")
    both_ways = ~decisive & ~loss_for_both

    def count(index, mask):
        return np.bincount(index[mask], minlength=num_models)

    wins = count(winner, decisive) + count(winner, both_ways) + count(loser, both_ways)
    losses = (count(loser, decisive) + count(winner, both_ways) + count(loser, both_ways)
              + count(winner, loss_for_both) + count(loser, loss_for_both))
    voted = (wins + losses) > 0
    graph = coo_matrix((np.ones(len(winner)), (winner, loser)), shape=(num_models,) * 2)
    _, labels = connected_components(graph, directed=False)
    components = [np.flatnonzero(labels == label) for label in np.unique(labels[voted])]
    components.sort(key=lambda c: (-len(c), int(c[0])))
    return VoteSupport(no_wins=voted & (wins == 0), no_losses=voted & (losses == 0),
                       no_votes=~voted, components=components)


def _centre(theta: np.ndarray, family: str) -> np.ndarray:
    return theta - theta.mean() if shift_invariant(family) else theta


def aggregate_leaderboard(
    preds: Predictions, ci: str = "sandwich", rounds: int = 100, seed: int = 0,
    level: float = 0.95,
) -> Leaderboard:
    """The aggregate of the prompts' leaderboards; intervals over resampled prompts by the
    delta method (sandwich, the default: one more pass over the prompts) or by bootstrap."""
    lower = upper = None
    if ci == "sandwich" and len(preds.coefs) > 1:
        fit, cov = sandwich_aggregate(preds.coefs, preds.eta, preds.family, preds.weight)
        m = len(fit.theta)
        se = np.sqrt(np.clip(np.diag(cov)[:m], 0.0, None))
        z = NormalDist().inv_cdf(0.5 + level / 2)
        lower, upper = fit.theta - z * se, fit.theta + z * se
    else:
        fit = aggregate_fit(preds.coefs, preds.eta, preds.family, preds.weight)
    if ci == "bootstrap" and len(preds.coefs) > 1:
        boot = bootstrap_aggregate(preds.coefs, preds.eta, preds.family, preds.weight, rounds,
                                   seed)
        lower, upper = percentile_interval(boot, level)
    table = build_table(preds.models, fit.theta, preds.family, fit.eta, lower, upper)
    return Leaderboard(table, preds.family, "aggregate", ci if lower is not None else "none",
                       fit.n_prompts, fit.eta,
                       meta={"level": level, "cross_entropy": fit.cross_entropy})


def prompt_table(models: list[str], coefs: np.ndarray, eta: float | None,
                 family: str) -> pl.DataFrame:
    """One prompt's own leaderboard table: its coefficients, centred unless the family is
    ``grk`` (whose coefficients are absolute: a both-bad tie depends on their level)."""
    theta = _centre(np.asarray(coefs, dtype=np.float64), family)
    return build_table(models, theta, family, eta)


def prompt_leaderboard(preds: Predictions, index: int) -> Leaderboard:
    """The leaderboard of the prompt at ``index`` (negative counts from the end)."""
    n = len(preds.coefs)
    if not -n <= index < n:
        raise UserError(f"--prompt-index {index}: the input has {n} prompts (0 to {n - 1})")
    eta = None if preds.eta is None else float(preds.eta[index])
    table = prompt_table(preds.models, preds.coefs[index], eta, preds.family)
    return Leaderboard(table, preds.family, "prompt", "none", 1, eta,
                       meta={"prompt_index": index % n})


def prompt_rows(models: list[str], coefs: np.ndarray, eta: float | None,
                family: str) -> list[dict]:
    """:func:`prompt_table` as rows, best first, with each model's raw coefficient
    (``coef``) beside its score and win rate: what ``predict --prompt`` and ``serve`` show."""
    coef_of = dict(zip(models, np.asarray(coefs, dtype=np.float64).tolist()))
    return [
        {"rank": row["rank"], "model": row["model"], "coef": coef_of[row["model"]],
         "score": row["score"], "win_rate": row["win_rate"]}
        for row in prompt_table(models, coefs, eta, family).iter_rows(named=True)
    ]


def build_leaderboard(data: Battles | Predictions, *, family: str | None = None,
                      ci: str | None = None, rounds: int = 100, seed: int = 0,
                      reweight: bool = False, prompt_index: int | None = None,
                      level: float = 0.95, style_control: bool = False,
                      style_reg: float = DEFAULT_STYLE_REG) -> Leaderboard:
    """The leaderboard a file asks for: marginal for battles, aggregate for predictions
    (or one prompt's with ``prompt_index``, or when there is a single prompt)."""
    if ci is not None and ci not in CI_METHODS:
        raise UserError(f"--ci {ci}: expected one of {', '.join(CI_METHODS)}")
    if isinstance(data, Battles):
        if prompt_index is not None:
            raise UserError("--prompt-index needs a predictions file (with coefs), not battles")
        try:
            family = families.canonical_family(family or "bt-tie")
        except ValueError as exc:
            raise UserError(f"--family: {exc}") from None
        if style_control:
            return style_leaderboard(data, family, ci or "sandwich", rounds, seed, reweight,
                                     level, style_reg)
        return marginal_leaderboard(data, family, ci or "sandwich", rounds, seed, reweight, level)
    if reweight:
        raise UserError("--reweight applies to battles, not to predictions")
    if style_control:
        raise UserError("--style-control applies to battles, not to predictions")
    if prompt_index is not None or len(data.coefs) == 1:
        return prompt_leaderboard(data, prompt_index or 0)
    return aggregate_leaderboard(data, ci or "sandwich", rounds, seed, level)


# ----------------------------------------------------------------------- views of groups


def group_names(groups: np.ndarray) -> list[str]:
    return sorted(set(groups.tolist()))


def grouped_leaderboards(data: Battles | Predictions, **options) -> dict[str, Leaderboard]:
    """One leaderboard per value of the ``--by`` column (groups too small to fit skipped)."""
    out = {}
    for name in group_names(data.groups):
        part = data.subset(data.groups == name)
        if isinstance(part, Battles) and len(part.models) < 2:
            continue
        try:
            board = build_leaderboard(part, **options)
        except UserError as exc:
            if "no votes" in str(exc):
                continue
            raise
        out[name] = replace(board, group=name)
    return out


def long_table(boards: dict[str, Leaderboard], by: str) -> pl.DataFrame:
    """All groups' leaderboards stacked, with the group in the first column."""
    frames = [b.table.select(pl.lit(name).alias(by), pl.all()) for name, b in boards.items()]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def rank_matrix(boards: dict[str, Leaderboard], overall: Leaderboard | None = None,
                top: int | None = None) -> pl.DataFrame:
    """Models by groups, each cell the model's rank in that group (empty if absent)."""
    if overall is not None:
        order = overall.table.get_column("model").to_list()
        columns = {"model": order, "overall": overall.table.get_column("rank").to_list()}
    else:
        order = sorted({m for b in boards.values() for m in b.table.get_column("model")})
        columns = {"model": order}
    for name, board in boards.items():
        ranks = dict(zip(board.table.get_column("model"), board.table.get_column("rank")))
        columns[name] = [ranks.get(model) for model in order]
    matrix = pl.DataFrame(columns, schema_overrides={k: pl.Int64 for k in columns
                                                     if k != "model"})
    return matrix.head(top) if top else matrix


def model_view(boards: dict[str, Leaderboard], model: str, by: str) -> pl.DataFrame:
    """One model's row in every group, where it does best first."""
    rows = []
    for name, board in boards.items():
        row = board.table.filter(pl.col("model") == model)
        if row.height:
            rows.append(row.select(pl.lit(name).alias(by), pl.lit(board.table.height)
                                   .alias("models"), pl.all().exclude("model")))
    if not rows:
        known = sorted({m for b in boards.values() for m in b.table.get_column("model")})
        raise UserError(f"--model {model}: not in any group{_did_you_mean(model, known)}")
    table = pl.concat(rows, how="vertical_relaxed")
    return table.sort(["rank", "score"], descending=[False, True])


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def anchor_table(table: pl.DataFrame, model: str, value: float) -> pl.DataFrame:
    """Shift scores and bounds so that ``model`` scores ``value`` (theta stays centred)."""
    row = table.filter(pl.col("model") == model)
    if row.height == 0:
        known = table.get_column("model").to_list()
        raise UserError(f"--anchor {model}: no such model{_did_you_mean(model, known)}")
    shift = value - float(row.get_column("score")[0])
    return table.with_columns(pl.col("score", "lower", "upper") + shift)
