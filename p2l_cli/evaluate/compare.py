"""P2L against the baselines on held-out votes: the evaluation's result, as a plain dict
(what ``--json`` writes), overall, per group and, with the truth, against the oracle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from p2l_cli.contracts.predictions import Predictions
from p2l_cli.errors import UserError
from p2l_cli.evaluate.inputs import Votes, align_predictions, make_votes, subset_votes
from p2l_cli.evaluate.scoring import (
    DEFAULT_BINS,
    DEFAULT_BOOTSTRAP,
    DEFAULT_LEVEL,
    aggregate_rows,
    bootstrap_gain,
    calibration,
    first_per_cluster,
    fit_leaderboard,
    half_tie_losses,
    recovery,
    score,
    vote_losses,
)
from p2l_cli.evaluate.subsets import DEFAULT_SUBSET_REPEATS, TOP_KS, subset_curve
from p2l_cli.evaluate.truth import Truth, TruthTable, align_truth, votes_category
from p2l_cli.stats.families import (
    has_eta,
    vote_mask,
)
from p2l_cli.stats.rankings import coef_spread_stats, leaderboard_agreement, tie_accuracy

TURNS = "turns"


@dataclass
class Settings:
    by: str | None = None
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    bins: int = DEFAULT_BINS
    level: float = DEFAULT_LEVEL
    subset_sizes: tuple[int, ...] = ()
    subset_repeats: int = DEFAULT_SUBSET_REPEATS


# What each predictor is called in the result and on the terminal, in display order.
PREDICTORS = {
    "p2l": "P2L",
    "marginal": "marginal",
    "category_fit": "category fits",
    "oracle": "oracle",
}
PREDICTOR_NOTES = {
    "p2l": "P2L: the per-prompt coefficients",
    "marginal": "marginal: one leaderboard fitted on all training votes",
    "category_fit": "category fits: one leaderboard per true category, on its training votes",
    "oracle": "oracle: the true coefficients each vote was drawn from",
}


def scored_weights(votes: Votes, family: str) -> np.ndarray:
    """Vote weights times the family's mask: what each vote counts in every mean."""
    return votes.weights * vote_mask(torch.as_tensor(votes.labels[:, 2]), family).double().numpy()


def evaluate_predictions(
    preds: Predictions,
    val: pl.DataFrame,
    val_source: str,
    train: pl.DataFrame | None = None,
    train_source: str = "train",
    truth: TruthTable | None = None,
    data_models: list[str] | None = None,
    settings: Settings | None = None,
) -> dict:
    """The whole evaluation as a JSON-ready dict (``render`` shows it on the terminal).

    Predictors scored on the same validation votes: ``p2l``; ``marginal`` (needs ``train``);
    with ``truth``: ``oracle`` and, with ``train`` too, ``category_fit``. Each gets NLL,
    accuracy, Brier, ECE and, next to the marginal leaderboard, its ``gain``.
    """
    s = settings or Settings()
    family, models = preds.family, preds.models
    votes = make_votes(val, models, val_source, data_models)
    votes, coefs, eta, key = align_predictions(votes, preds, val_source)
    weights = scored_weights(votes, family)
    if weights.sum() <= 0:
        raise UserError(f"{val_source}: no vote that the {family!r} family scores (all ties?)")
    result: dict[str, Any] = {
        "predictions": preds.source,
        "val": val_source,
        "train": train_source if train is not None else None,
        "truth": truth.source if truth is not None else None,
        "family": family,
        "models": models,
        "joined_on": key,
        "votes": len(votes.labels),
        "prompts": int(votes.clusters.max() + 1),
        "dropped_votes": votes.dropped,
        "settings": asdict(s),
    }
    predictors: dict[str, tuple[np.ndarray, Any]] = {"p2l": (coefs, eta)}
    train_votes = None
    if train is not None:
        train_votes = make_votes(train, models, train_source, data_models)
        predictors["marginal"] = fit_leaderboard(train_votes, len(models), family)
        result["train_votes"] = len(train_votes.labels)
    val_truth = None
    categories = None
    oracle_family = family
    if truth is not None:
        val_truth = align_truth(vote_ids(votes), truth, models)
        oracle_family = truth.family or family
        reason = oracle_unavailable(val_truth, oracle_family)
        if reason:
            result["oracle"] = {"available": False, "reason": reason}
        else:
            predictors["oracle"] = (val_truth.coefs, val_truth.eta)
        categories = votes_category(votes, val_truth)
    fits = None
    if train_votes is not None and categories is not None:
        train_truth = align_truth(vote_ids(train_votes), truth, models) if truth else None
        train_categories = votes_category(train_votes, train_truth)
        if train_categories is not None:
            fits = category_fits(train_votes, train_categories, len(models), family)
            predictors["category_fit"] = per_vote_fits(fits, categories, predictors["marginal"])
            result["train_votes_per_category"] = {
                c: int((train_categories == c).sum()) for c in sorted(fits)
            }

    losses, half = {}, {}
    for name, (c, e) in predictors.items():
        own = oracle_family if name == "oracle" else family
        result[name] = {"available": True, **score(c, votes.labels, e, own, votes.weights)}
        if own != family:
            result[name]["family"] = own
        ties = tie_accuracy(c, votes.labels, e, own, votes.weights)
        if ties is not None:
            result[name]["tie_accuracy"] = ties
        losses[name] = vote_losses(c, votes.labels, e, own)[0]
        half[name] = half_tie_losses(c, votes.labels, e, own)
    if "marginal" in losses:
        for name in predictors:
            if name == "marginal":
                continue
            reps = s.bootstrap if name == "p2l" else 0
            result[name]["gain"] = gain_block(
                losses["marginal"], losses[name], weights, votes.clusters, s, reps
            )
            result[name]["gain_half"] = gain_block(
                half["marginal"], half[name], votes.weights, votes.clusters, s, reps
            )
        result["gain"] = result["p2l"]["gain"]
        result["gain_half"] = result["p2l"]["gain_half"]
        for name in ("oracle", "category_fit"):
            if name in predictors:
                comparable = result[name].get("family", family) == family
                result[name]["fraction_captured"] = fraction(
                    result["p2l"]["gain"]["nll"], result[name]["gain"]["nll"]
                ) if comparable else None
                result[name]["fraction_captured_half"] = fraction(
                    result["p2l"]["gain_half"]["nll"], result[name]["gain_half"]["nll"]
                )
    else:
        result["marginal"] = {
            "available": False,
            "reason": "no training votes: give --train (the marginal leaderboard is fitted on them)",
        }
    result["calibration"] = {
        name: calibration(c, votes.labels, e, family, votes.weights, s.bins)
        for name, (c, e) in predictors.items()
        if name in ("p2l", "marginal")
    }
    if val_truth is not None and categories is not None and "oracle" in predictors:
        result["recovery"] = recovery_rows(votes, categories, predictors, fits, val_truth, family)
    firsts = first_per_cluster(votes.clusters)
    p2l_prompts = (coefs[firsts], _take(eta, firsts))
    p2l_aggregate = aggregate_rows(*p2l_prompts, family)
    result["leaderboards"] = leaderboard_block(votes, predictors, p2l_aggregate, family)
    if s.subset_sizes:
        result["subset_curve"] = subset_curve(
            *p2l_prompts, family, s.subset_sizes, s.subset_repeats, s.seed, p2l_aggregate
        )
    if s.by:
        groups = group_values(votes, s.by, categories)
        result["groups"] = {
            "by": s.by,
            "rows": group_rows(groups, votes, predictors, family, s),
        }
    return result


def leaderboard_block(
    votes: Votes, predictors: dict, p2l_aggregate: tuple, family: str
) -> dict:
    """The reference's leaderboard comparisons: the aggregated P2L leaderboard (each
    validation prompt once) and the marginal leaderboard of the training votes, each against
    the marginal leaderboard fitted on the validation votes themselves (the reference), with
    the spread of every leaderboard's coefficients and, for rk and grk, the tie accuracy of
    each leaderboard on the validation votes."""
    reference = fit_leaderboard(votes, predictors["p2l"][0].shape[-1], family)
    boards = {"reference": reference, "p2l": p2l_aggregate}
    if "marginal" in predictors:
        boards["marginal"] = predictors["marginal"]
    eta_of = {name: (e if has_eta(family) else None) for name, (_, e) in boards.items()}
    block: dict[str, Any] = {
        "reference": "the marginal leaderboard fitted on the validation votes",
        "top_k": [k for k in TOP_KS if k <= len(reference[0])],
        "spread": {name: coef_spread_stats(theta) for name, (theta, _) in boards.items()},
        "agreement": {
            name: leaderboard_agreement(
                reference[0], theta, family, eta_of["reference"], eta_of[name], TOP_KS
            )
            for name, (theta, _) in boards.items()
            if name != "reference"
        },
    }
    ties = {
        name: tie_accuracy(theta, votes.labels, eta_of[name], family, votes.weights)
        for name, (theta, _) in boards.items()
    }
    if any(value is not None for value in ties.values()):
        block["tie_accuracy"] = ties
    return block


def vote_ids(votes: Votes) -> pl.Series:
    if "id" not in votes.frame.columns:
        raise UserError("--truth: the battles have no 'id' column to match the truth file")
    return votes.frame["id"]


def oracle_unavailable(truth: Truth, family: str) -> str | None:
    if not truth.found.all():
        return f"{int((~truth.found).sum())} validation votes have no id in the truth file"
    if has_eta(family) and truth.eta is None:
        return f"the truth file has no true_eta, which family {family!r} needs"
    return None


def category_fits(
    train_votes: Votes, categories: np.ndarray, num_models: int, family: str
) -> dict[str, tuple[np.ndarray, Any]]:
    """A leaderboard per category, each fitted on that category's training votes alone."""
    return {
        category: fit_leaderboard(
            subset_votes(train_votes, categories == category), num_models, family
        )
        for category in sorted(set(categories.tolist()))
    }


def per_vote_fits(
    fits: dict, categories: np.ndarray, fallback: tuple[np.ndarray, Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each vote scored with its category's leaderboard (the marginal one for a category
    without training votes)."""
    chosen = [fits.get(category, fallback) for category in categories]
    theta = np.stack([fit[0] for fit in chosen])
    eta = None
    if fallback[1] is not None:
        eta = np.array([float(fit[1]) for fit in chosen])
    return theta, eta


def gain_block(
    base: np.ndarray,
    new: np.ndarray,
    weights: np.ndarray,
    clusters: np.ndarray,
    s: Settings,
    reps: int,
) -> dict:
    gain, low, high = bootstrap_gain(base, new, weights, clusters, reps, s.seed, s.level)
    block: dict[str, Any] = {"nll": gain}
    if reps > 0:
        block.update(
            {"low": low, "high": high, "level": s.level, "bootstrap": reps, "resampled": "prompts"}
        )
    return block


def fraction(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return numerator / denominator


def recovery_rows(
    votes: Votes,
    categories: np.ndarray,
    predictors: dict,
    fits: dict | None,
    truth: Truth,
    family: str,
) -> list[dict]:
    """Per category (and over all validation prompts): the aggregated P2L leaderboard, the
    category's own fit and the marginal leaderboard against the aggregate of the true
    coefficients, each prompt counted once."""
    coefs, eta = predictors["p2l"]
    groups = [(c, categories == c) for c in sorted(set(categories.tolist()))]
    groups.append(("(all)", np.ones(len(categories), dtype=bool)))
    rows = []
    for category, chosen in groups:
        firsts = np.flatnonzero(chosen)[first_per_cluster(votes.clusters[chosen])]
        p2l = aggregate_rows(coefs[firsts], _take(eta, firsts), family)
        true = aggregate_rows(truth.coefs[firsts], _take(truth.eta, firsts), family)
        row: dict[str, Any] = {
            "category": category,
            "val_prompts": len(firsts),
            "p2l": recovery(*p2l, *true, family),
        }
        fit = (fits or {}).get(category) if category != "(all)" else None
        if fit is not None:
            row["category_fit"] = recovery(*fit, *true, family)
        if "marginal" in predictors:
            row["marginal"] = recovery(*predictors["marginal"], *true, family)
        rows.append(row)
    return rows


def _take(values: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[index]


def group_values(votes: Votes, by: str, categories: np.ndarray | None) -> np.ndarray:
    if by == TURNS and TURNS not in votes.frame.columns:
        if "prompt" not in votes.frame.columns:
            raise UserError("--by turns: the validation votes have no 'prompt' column")
        prompt = votes.frame["prompt"]
        if prompt.dtype == pl.String:
            return np.full(votes.frame.height, "1")
        return prompt.list.len().cast(pl.String).to_numpy()
    if by in votes.frame.columns:
        return votes.frame[by].cast(pl.String).fill_null("(none)").to_numpy()
    if by == "category" and categories is not None:
        return categories
    raise UserError(
        f"--by {by}: the validation votes have no column {by!r} "
        f"(columns: {', '.join(votes.frame.columns)}; 'turns' is derived from the prompt)"
    )


def group_rows(
    groups: np.ndarray, votes: Votes, predictors: dict, family: str, s: Settings
) -> list[dict]:
    """The headline figures per group of validation votes (``--by``)."""
    rows = []
    for value in sorted(set(groups.tolist()), key=_natural):
        chosen = groups == value
        sub = subset_votes(votes, chosen)
        weights = scored_weights(sub, family)
        if weights.sum() <= 0:
            continue
        row: dict[str, Any] = {"group": value, "votes": int(chosen.sum())}
        losses = {}
        for name, (c, e) in predictors.items():
            c = c[chosen] if c.ndim == 2 else c
            e = e[chosen] if isinstance(e, np.ndarray) else e
            row[name] = score(c, sub.labels, e, family, sub.weights)
            losses[name] = vote_losses(c, sub.labels, e, family)[0]
        if "marginal" in losses:
            row["gain"] = gain_block(
                losses["marginal"], losses["p2l"], weights, sub.clusters, s, s.bootstrap
            )
        rows.append(row)
    return rows


def _natural(value: str) -> tuple:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)
