"""Scoring per-prompt P2L predictions against held-out votes, next to the marginal leaderboard.

The question ``p2l evaluate`` answers: does the per-prompt leaderboard predict held-out votes
better than the one leaderboard fitted on all training votes, and where? Both are scored with
the same likelihood family (the P2L model's loss): mean negative log-likelihood per vote,
accuracy, Brier score and a calibration table. The gain (marginal NLL minus P2L NLL, in nats
per vote) comes with a paired bootstrap interval that resamples prompts, so votes on one
prompt move together.

With the simulator's truth (``p2l simulate`` writes the coefficients each vote was drawn
from) it adds the oracle: the NLL of the true coefficients, the fraction of the achievable
gain that P2L captures, the NLL of leaderboards fitted per true category, and how well the
aggregated per-category P2L leaderboards recover the true ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.stats import kendalltau

from p2l_cli.contracts.battles import outcome_column
from p2l_cli.contracts.predictions import Predictions, predictions_from_frame, read_predictions
from p2l_cli.errors import UserError
from p2l_cli.io import read_json, read_table, read_table_meta
from p2l_cli.stats.families import (
    canonical_family,
    half_tie_nll,
    has_eta,
    vote_mask,
    vote_nll,
    win_matrix,
)
from p2l_cli.stats.metrics import calibration_table, expected_calibration_error, vote_metrics

DEFAULT_BOOTSTRAP = 1000
DEFAULT_BINS = 10
DEFAULT_LEVEL = 0.95
TURNS = "turns"


# ------------------------------------------------------------------------------ inputs


@dataclass
class Votes:
    """Validation votes in the predictions' model indices, with what the metrics need."""

    frame: pl.DataFrame  # the kept rows of the battles file
    labels: np.ndarray  # [N, 3] winner, loser, tie code
    weights: np.ndarray  # [N]
    clusters: np.ndarray  # [N] prompt index: the bootstrap resamples these
    dropped: int  # votes on models the predictions do not cover


def read_battles(path: str | Path, what: str) -> pl.DataFrame:
    frame = read_table(path)
    if frame.height == 0:
        raise UserError(f"{path}: no votes ({what})")
    return frame


def default_train_path(val_path: str | Path) -> Path | None:
    """``DATA/train.parquet`` when the validation file lies in a `p2l prepare` folder."""
    path = Path(str(val_path))
    candidate = path.parent / "train.parquet"
    if str(val_path) == "-" or not candidate.is_file() or candidate.resolve() == path.resolve():
        return None
    return candidate


def data_model_list(path: str | Path) -> list[str] | None:
    """``models.json`` beside a battles file (a `p2l prepare` folder), if there is one."""
    if str(path) == "-":
        return None
    candidate = Path(path).parent / "models.json"
    return list(read_json(candidate)) if candidate.is_file() else None


def _index_of(names: pl.Series, models: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(models)}
    return np.array([lookup.get(name, -1) for name in names.to_list()], dtype=np.int64)


def vote_labels(
    frame: pl.DataFrame, models: list[str], source: str, data_models: list[str] | None = None
) -> np.ndarray:
    """``[N, 3]`` labels in the index space of ``models``, matched by model name; -1 marks a
    model ``models`` lacks. Uses ``model_a``/``model_b``/``winner`` when present, else the
    ``labels`` column with the data's own model list."""
    if {"model_a", "model_b", "winner"} <= set(frame.columns):
        a = _index_of(frame["model_a"].cast(pl.String), models)
        b = _index_of(frame["model_b"].cast(pl.String), models)
        b_won, codes = outcome_column(frame["winner"], frame["model_a"], frame["model_b"], source)
        first, second = np.where(b_won, b, a), np.where(b_won, a, b)
        return np.stack([first, second, codes], axis=1)
    if "labels" in frame.columns and data_models is not None:
        raw = frame["labels"].list.to_array(3).to_numpy().astype(np.int64)
        mapping = np.array([models.index(m) if m in models else -1 for m in data_models])
        if raw[:, :2].max(initial=0) >= len(data_models) or raw[:, :2].min(initial=0) < 0:
            raise UserError(f"{source}: labels index past the {len(data_models)} models")
        return np.stack([mapping[raw[:, 0]], mapping[raw[:, 1]], raw[:, 2]], axis=1)
    raise UserError(
        f"{source}: expected the battles columns model_a, model_b and winner (or labels with "
        "models.json beside the file)"
    )


def prompt_keys(frame: pl.DataFrame) -> pl.Series:
    """One key per prompt (its user turns, however the file spells them), for joining
    predictions to votes and for the bootstrap's clusters."""
    prompt = frame["prompt"]
    if prompt.dtype != pl.List(pl.String):
        from p2l_cli.contracts.prompts import BadPrompt, prompt_turns

        try:
            turns = [prompt_turns(value) for value in prompt.to_list()]
        except BadPrompt as exc:
            raise UserError(f"a 'prompt' value cannot be read: {exc}") from None
        prompt = pl.Series(turns, dtype=pl.List(pl.String))
    return prompt.hash().alias("_prompt_key")


def cluster_ids(frame: pl.DataFrame) -> np.ndarray:
    if "prompt" not in frame.columns:
        return np.arange(frame.height)
    return np.unique(prompt_keys(frame).to_numpy(), return_inverse=True)[1].reshape(-1)


def make_votes(
    frame: pl.DataFrame, models: list[str], source: str, data_models: list[str] | None = None
) -> Votes:
    labels = vote_labels(frame, models, source, data_models)
    keep = (labels[:, :2] >= 0).all(axis=1)
    bad_codes = ~np.isin(labels[:, 2], (0, 1, 2))
    if bad_codes.any():
        row = int(np.flatnonzero(bad_codes)[0])
        raise UserError(f"{source}: row {row + 1}: tie code {labels[row, 2]}; expected 0, 1 or 2")
    kept = frame.filter(pl.Series(keep))
    if kept.height == 0:
        raise UserError(f"{source}: no vote is between models of the predictions' model list")
    weights = (
        np.array(kept["weight"].cast(pl.Float64).fill_null(1.0).to_numpy())
        if "weight" in kept.columns
        else np.ones(kept.height)
    )
    return Votes(kept, labels[keep], weights, cluster_ids(kept), int((~keep).sum()))


def join_key(votes: pl.DataFrame, preds: pl.DataFrame) -> str:
    """``id`` when both tables have unique-enough ids in common, else the prompt."""
    if "id" in votes.columns and "id" in preds.columns:
        ids = preds["id"].cast(pl.String)
        if (
            ids.n_unique() == preds.height
            and votes["id"].cast(pl.String).is_in(ids.implode()).any()
        ):
            return "id"
    if "prompt" in votes.columns and "prompt" in preds.columns:
        return "prompt"
    raise UserError("cannot match predictions to votes: they share neither 'id' nor 'prompt'")


def align_predictions(
    votes: Votes, preds: Predictions, val_source: str
) -> tuple[Votes, np.ndarray, np.ndarray | None, str]:
    """Coefficients (and eta) per vote, joined on ``id`` or on the prompt; votes without a
    prediction are dropped (a warning says how many)."""
    key = join_key(votes.frame, preds.frame)
    columns = ["coefs"] + (["eta"] if "eta" in preds.frame.columns else [])
    if key == "id":
        left = votes.frame.select(pl.col("id").cast(pl.String).alias("_key"))
        right = preds.frame.select(pl.col("id").cast(pl.String).alias("_key"), *columns)
    else:
        left = pl.DataFrame({"_key": prompt_keys(votes.frame)})
        right = preds.frame.select(*columns).with_columns(prompt_keys(preds.frame).alias("_key"))
        right = right.unique("_key", keep="first", maintain_order=True)
    joined = left.with_row_index("_row").join(right, on="_key", how="left").sort("_row")
    found = joined["coefs"].is_not_null().to_numpy()
    if not found.any():
        raise UserError(
            f"{preds.source}: no prediction matches a vote of {val_source} (joined on {key})"
        )
    joined = joined.filter(pl.Series(found))
    votes = subset_votes(votes, found)
    coefs = joined["coefs"].list.to_array(len(preds.models)).to_numpy().astype(np.float64)
    eta = None
    if has_eta(preds.family):
        eta = np.array(joined["eta"].cast(pl.Float64).to_numpy(), dtype=np.float64)
    return votes, coefs, eta, key


def subset_votes(votes: Votes, keep: np.ndarray) -> Votes:
    if keep.all():
        return votes
    frame = votes.frame.filter(pl.Series(keep))
    clusters = np.unique(votes.clusters[keep], return_inverse=True)[1].reshape(-1)
    return Votes(frame, votes.labels[keep], votes.weights[keep], clusters, votes.dropped)


# ----------------------------------------------------------------------------- scoring


def _tensor(values: Any) -> torch.Tensor | None:
    return None if values is None else torch.tensor(np.asarray(values, dtype=np.float64))


def _pair_coefs(coefs: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    coefs = np.broadcast_to(coefs, (labels.shape[0], coefs.shape[-1]))
    rows = np.arange(labels.shape[0])
    return _tensor(coefs[rows, labels[:, 0]]), _tensor(coefs[rows, labels[:, 1]])


def vote_losses(
    coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-vote NLL and the family's mask (0 for votes it drops, ties in ``bt``)."""
    theta_w, theta_l = _pair_coefs(coefs, labels)
    nll = vote_nll(theta_w, theta_l, torch.as_tensor(labels[:, 2]), _tensor(eta), family)
    mask = vote_mask(torch.as_tensor(labels[:, 2]), family)
    return nll.numpy(), mask.double().numpy()


def half_tie_losses(coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str) -> np.ndarray:
    """Per-vote NLL with ties as half (:func:`families.half_tie_nll`), every vote counted."""
    theta_w, theta_l = _pair_coefs(coefs, labels)
    eta_ = _tensor(eta) if _uses_eta(family, eta) else None
    return half_tie_nll(theta_w, theta_l, torch.as_tensor(labels[:, 2]), eta_, family).numpy()


def score(
    coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str, weights: np.ndarray
) -> dict:
    """NLL, accuracy, Brier score and ``n`` (:func:`stats.metrics.vote_metrics`) and the
    expected calibration error."""
    metrics = vote_metrics(coefs, labels, eta=eta, family=family, weights=weights)
    out = {key: _number(metrics[key]) for key in ("nll", "nll_half", "accuracy", "brier", "n")}
    table = calibration_table(coefs, labels, eta, family, DEFAULT_BINS, weights)
    out["ece"] = expected_calibration_error(table) if table.height else None
    return out


def calibration(
    coefs: np.ndarray, labels: np.ndarray, eta: Any, family: str, weights: np.ndarray, bins: int
) -> list[dict]:
    """The reliability table of :func:`stats.metrics.calibration_table` as records (votes
    oriented from the lower-indexed model; empty bins left out)."""
    return calibration_table(coefs, labels, eta, family, bins, weights).to_dicts()


def _number(value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, (np.integer, int)):
        return int(value)
    return float(value)


def bootstrap_gain(
    loss_base: np.ndarray,
    loss_new: np.ndarray,
    weights: np.ndarray,
    clusters: np.ndarray,
    reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float, float]:
    """Weighted mean of ``loss_base - loss_new`` and its percentile interval from a paired
    bootstrap that resamples clusters (prompts) with replacement."""
    diff_sums = np.bincount(clusters, weights=weights * (loss_base - loss_new))
    weight_sums = np.bincount(clusters, weights=weights)
    total = weight_sums.sum()
    if total <= 0:
        return math.nan, math.nan, math.nan
    gain = float(diff_sums.sum() / total)
    if reps <= 0 or len(diff_sums) < 2:
        return gain, math.nan, math.nan
    rng = np.random.default_rng(seed)
    count = len(diff_sums)
    stats = []
    for start in range(0, reps, 200):
        draws = rng.multinomial(count, np.full(count, 1.0 / count), size=min(200, reps - start))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append((draws @ diff_sums) / (draws @ weight_sums))
    values = np.concatenate(stats)
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return gain, float(low), float(high)


# -------------------------------------------------------------------------- baselines


def fit_leaderboard(votes: Votes, num_models: int, family: str) -> tuple[np.ndarray, Any]:
    """The marginal leaderboard (MLE of the family) of a set of votes."""
    from p2l_cli.stats.marginal import fit_marginal

    fit = fit_marginal(
        votes.labels[:, 0],
        votes.labels[:, 1],
        votes.labels[:, 2],
        num_models,
        family=family,
        weights=votes.weights,
    )
    return np.asarray(fit.theta, dtype=np.float64), fit.eta


# ------------------------------------------------------------------------------ truth


@dataclass
class TruthTable:
    """``truth.parquet`` of `p2l simulate`: per battle ``id``, ``category``, ``true_coefs``
    (in ``models`` order) and ``true_eta`` for rk/grk."""

    frame: pl.DataFrame
    models: list[str]
    source: str
    family: str | None = None  # the family the votes were drawn from, when known


@dataclass
class Truth:
    """The truth of each vote, in the predictions' model order."""

    coefs: np.ndarray  # [N, M]
    eta: np.ndarray | None  # [N]
    category: np.ndarray  # [N] str ("" when unknown)
    found: np.ndarray  # [N] bool: the vote's id is in the truth file


def truth_model_list(meta: dict | None, source: str, width: int, candidates: list) -> list[str]:
    if meta and isinstance(meta.get("models"), list):
        return list(meta["models"])
    for models in candidates:
        if models is not None and len(models) == width:
            return list(models)
    raise UserError(
        f"{source}: cannot tell which model each of the {width} true coefficients belongs to "
        "(no model list in its metadata and no models.json of that length beside it or VAL)"
    )


def read_truth(path: str | Path, candidate_models: list | None = None) -> TruthTable:
    """Read a truth file; its model list comes from its metadata, else from a ``models.json``
    beside it, else from the first of ``candidate_models`` with the right length."""
    frame, meta = read_table_meta(path)
    missing = {"id", "true_coefs"} - set(frame.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    width = int(frame["true_coefs"].list.len().max() or 0)
    candidates = [data_model_list(path), *(candidate_models or [])]
    family = (meta or {}).get("family") or (meta or {}).get("loss")
    try:
        family = canonical_family(family) if family else None
    except ValueError:
        family = None
    models = truth_model_list(meta, str(path), width, candidates)
    return TruthTable(frame, models, str(path), family)


def align_truth(ids: pl.Series, truth: TruthTable, models: list[str]) -> Truth:
    missing = [m for m in models if m not in truth.models]
    if missing:
        raise UserError(f"{truth.source}: no true coefficients for {', '.join(missing[:5])}")
    order = np.array([truth.models.index(m) for m in models])
    extra = [c for c in ("category", "true_eta") if c in truth.frame.columns]
    right = truth.frame.select(pl.col("id").cast(pl.String).alias("_key"), "true_coefs", *extra)
    right = right.unique("_key", keep="first")
    left = pl.DataFrame({"_key": ids.cast(pl.String)}).with_row_index("_row")
    joined = left.join(right, on="_key", how="left").sort("_row")
    found = joined["true_coefs"].is_not_null().to_numpy()
    coefs = np.zeros((joined.height, len(models)))
    if found.any():
        rows = joined.filter(pl.Series(found))["true_coefs"].list.to_array(len(truth.models))
        coefs[found] = rows.to_numpy().astype(np.float64)[:, order]
    eta = None
    if "true_eta" in joined.columns:
        eta = np.array(joined["true_eta"].cast(pl.Float64).fill_null(0.0).to_numpy())
    category = np.full(joined.height, "", dtype=object)
    if "category" in joined.columns:
        category = joined["category"].cast(pl.String).fill_null("").to_numpy().astype(object)
    return Truth(coefs, eta, category, found)


def votes_category(votes: Votes, truth: Truth | None) -> np.ndarray | None:
    """The true category of each vote (from the truth file), else the battles' own column."""
    if truth is not None and truth.found.all() and (truth.category != "").all():
        return truth.category
    if "category" in votes.frame.columns:
        return votes.frame["category"].cast(pl.String).fill_null("").to_numpy().astype(object)
    return None


# ---------------------------------------------------------------- leaderboard recovery


def pairwise_gap(
    theta: np.ndarray, eta: Any, theta_true: np.ndarray, eta_true: Any, family: str
) -> float:
    """Mean absolute difference of the pairwise win probabilities (over ordered pairs i != j)."""
    est = win_matrix(_tensor(theta), _tensor(eta) if _uses_eta(family, eta) else None, family)
    true = win_matrix(
        _tensor(theta_true), _tensor(eta_true) if _uses_eta(family, eta_true) else None, family
    )
    off = ~np.eye(len(theta), dtype=bool)
    return float(np.abs(est.numpy() - true.numpy())[off].mean())


def _uses_eta(family: str, eta: Any) -> bool:
    return has_eta(family) and eta is not None


def rank_agreement(theta: np.ndarray, theta_true: np.ndarray) -> float:
    tau = kendalltau(theta, theta_true).statistic
    return float(tau) if tau is not None else math.nan


def recovery(
    theta: np.ndarray, eta: Any, theta_true: np.ndarray, eta_true: Any, family: str
) -> dict:
    return {
        "kendall_tau": rank_agreement(theta, theta_true),
        "win_prob_gap": pairwise_gap(theta, eta, theta_true, eta_true, family),
    }


def first_per_cluster(clusters: np.ndarray) -> np.ndarray:
    """Indices of the first vote of each prompt, so a prompt counts once in an aggregate."""
    return np.unique(clusters, return_index=True)[1]


def aggregate_rows(coefs: np.ndarray, eta: np.ndarray | None, family: str) -> tuple:
    from p2l_cli.stats.aggregate import aggregate

    etas = None if eta is None or not has_eta(family) else eta
    return aggregate(coefs, etas, family=family)


# -------------------------------------------------------------------------------- report


@dataclass
class Settings:
    by: str | None = None
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    bins: int = DEFAULT_BINS
    level: float = DEFAULT_LEVEL


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
    if s.by:
        groups = group_values(votes, s.by, categories)
        result["groups"] = {
            "by": s.by,
            "rows": group_rows(groups, votes, predictors, family, s),
        }
    return result


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


# ----------------------------------------------------------------------------------- run


def is_model_source(source: str | Path) -> bool:
    """A model folder (or a Hub id of one) rather than a predictions file."""
    path = Path(str(source))
    if path.is_dir():
        return True
    text = str(source)
    return not path.exists() and text.count("/") == 1 and not path.suffix


def predictions_from_model(
    source: str | Path, val: pl.DataFrame, batch_size: int | None, device: str | None
) -> Predictions:
    """Predict the validation prompts (each distinct prompt once) with a P2L model."""
    from p2l_cli.predict import (
        DEFAULT_MAX_BATCH_SIZE,
        load_for_inference,
        predict_frame,
        predictions_metadata,
    )

    if "prompt" not in val.columns:
        raise UserError("VAL_BATTLES: no 'prompt' column to predict from")
    prompts = (
        val.select("prompt")
        .with_columns(prompt_keys(val))
        .unique("_prompt_key", keep="first", maintain_order=True)
        .drop("_prompt_key")
    )
    model, tokenizer = load_for_inference(source, device or "auto")
    frame = predict_frame(
        model,
        tokenizer,
        prompts,
        prompt_column="prompt",
        max_batch_size=batch_size or DEFAULT_MAX_BATCH_SIZE,
        name="VAL_BATTLES",
    )
    return predictions_from_frame(frame, predictions_metadata(model, source), str(source))


def run_evaluation(
    source: str | Path,
    val_path: str | Path,
    train_path: str | Path | None = None,
    truth_path: str | Path | None = None,
    settings: Settings | None = None,
    json_out: str | Path | None = None,
    plot_dir: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> dict:
    """What ``p2l evaluate`` does: read, predict if given a model, score, show, write."""
    from p2l_cli.io import write_text
    from p2l_cli.ui import console, info, warn

    s = settings or Settings()
    if str(val_path) != "-" and Path(val_path).is_dir():  # a `p2l prepare` folder
        val_path = Path(val_path) / "val.parquet"
    val = read_battles(val_path, "validation votes")
    data_models = data_model_list(val_path)
    if train_path is None:
        train_path = default_train_path(val_path)
        if train_path is not None:
            info(f"baseline: the marginal leaderboard fitted on {train_path} (--train overrides)")
    train = read_battles(train_path, "training votes") if train_path is not None else None
    if is_model_source(source):
        info(f"predicting the validation prompts with {source}")
        preds = predictions_from_model(source, val, batch_size, device)
    else:
        preds = read_predictions(source)
    truth = None
    if truth_path is not None:
        truth = read_truth(truth_path, [data_models, preds.models])
    if plot_dir is not None and s.by is None and _has_categories(val, truth):
        s = replace(s, by="category")
    result = evaluate_predictions(
        preds, val, str(val_path), train, str(train_path), truth, data_models, s
    )
    result["leakage"] = seen_votes(preds.model_dir, val)
    for message in result["leakage"]:
        warn(message)
    render(result, console)
    if json_out is not None:
        write_text(json_out, to_json(result))
    if plot_dir is not None:
        for path in write_plots(result, plot_dir):
            info(f"wrote {path}")
    return result


def seen_votes(model_dir: str | None, votes: pl.DataFrame) -> list[str]:
    """Warnings when the votes being scored were seen by the model: its training votes, or
    the validation votes that chose its weights (early stopping). Found through the model
    folder's ``training_config.json`` (its data folder) and ``metrics.json``."""
    if not model_dir or "id" not in votes.columns:
        return []
    folder = Path(model_dir)
    try:
        data = Path(read_json(folder / "training_config.json").get("data") or "")
        selected_on = str(read_json(folder / "metrics.json").get("selected_on") or "val")
    except (OSError, ValueError, AttributeError, UserError):
        return []
    scored = set(votes["id"].cast(pl.String).to_list())
    splits = [("train.parquet", "trained on")]
    if selected_on.startswith("val"):
        splits.append(("val.parquet", "used for early stopping (choosing the weights) by"))
    warnings = []
    for name, how in splits:
        path = data / name
        if not path.is_file():
            continue
        try:
            ids = pl.scan_parquet(path).select(pl.col("id").cast(pl.String)).collect()["id"]
        except Exception:  # noqa: BLE001, S112 (an unreadable data folder: nothing to compare)
            continue
        overlap = len(scored.intersection(ids.to_list()))
        if overlap:
            warnings.append(
                f"{overlap:,} of the {len(scored):,} scored votes were {how} the model "
                f"({path}): its scores are optimistic; score votes no stage saw"
            )
    return warnings


def _has_categories(val: pl.DataFrame, truth: TruthTable | None) -> bool:
    return "category" in val.columns or (truth is not None and "category" in truth.frame.columns)


# ------------------------------------------------------------------------------- output


def clean_json(value: Any) -> Any:
    """NaN and infinities become null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(result: dict) -> str:
    return json.dumps(clean_json(result), indent=2, ensure_ascii=False) + "\n"


def _fmt(value: Any, digits: int = 4, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pct(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"


def _gain_text(gain: dict | None) -> str:
    if not gain:
        return "—"
    text = _fmt(gain.get("nll"), signed=True)
    if gain.get("low") is not None and math.isfinite(gain.get("low", math.nan)):
        text += f" [{_fmt(gain['low'], signed=True)}, {_fmt(gain['high'], signed=True)}]"
    return text


def render(result: dict, console: Any) -> None:
    """The evaluation as rich tables (on stderr through ``console``)."""
    from rich.table import Table

    console.print(
        f"[bold]{result['predictions']}[/] on [bold]{result['val']}[/]: {result['votes']} votes "
        f"on {result['prompts']} prompts, {len(result['models'])} models, family "
        f"{result['family']} (joined on {result['joined_on']})"
    )
    if result["dropped_votes"]:
        console.print(
            f"[yellow]skipped {result['dropped_votes']} votes on models outside the "
            "predictions' model list[/]"
        )
    table = Table(title="Held-out votes", title_justify="left")
    columns = ("predictor", "NLL", "NLL, ties ½", "gain, ties ½", "accuracy", "Brier", "ECE")
    for column in columns:
        table.add_column(column, justify="left" if column == "predictor" else "right")
    for name, label in PREDICTORS.items():
        block = result.get(name)
        if not block or not block.get("available", True):
            continue
        own = f" ({block['family']})" if block.get("family") else ""
        table.add_row(
            label,
            _fmt(block["nll"]) + own,
            _fmt(block.get("nll_half")),
            _gain_text(block.get("gain_half")),
            _pct(block["accuracy"]),
            _fmt(block["brier"]),
            _fmt(block["ece"], 3),
        )
    _print_table(console, table)
    shown = [n for n in PREDICTORS if result.get(n, {}).get("available", False)]
    console.print(
        "[dim]" + "; ".join(PREDICTOR_NOTES[n] for n in shown) + ". NLL: the family's own; "
        "ties ½: every vote, a tie counting as half a win (one footing for all families)[/]"
    )
    for line in summary_lines(result):
        console.print(line)
    render_calibration(result, console, Table)
    render_groups(result, console, Table)
    render_recovery(result, console, Table)


def summary_lines(result: dict) -> list[str]:
    lines = []
    marginal = result.get("marginal", {})
    if not marginal.get("available", False):
        lines.append(f"[yellow]baseline unavailable:[/] {marginal.get('reason', '')}")
        return lines
    gain = result["gain"]
    relative = gain["nll"] / marginal["nll"] if marginal["nll"] else math.nan
    low, high = gain.get("low"), gain.get("high")
    if low is None or high is None or not math.isfinite(low):
        verdict = "P2L vs the marginal leaderboard"
        interval = "no bootstrap interval"
    else:
        interval = (
            f"{100 * gain['level']:.0f}% interval {_fmt(low, signed=True)} to "
            f"{_fmt(high, signed=True)}; paired bootstrap over prompts, "
            f"{gain['bootstrap']} resamples"
        )
        if low > 0:
            verdict = "[green]P2L beats the marginal leaderboard[/]"
        elif high < 0:
            verdict = "[red]P2L is worse than the marginal leaderboard[/]"
        else:
            verdict = "[yellow]P2L is not distinguishable from the marginal leaderboard[/]"
    lines.append(
        f"{verdict}: NLL gain {_fmt(gain['nll'], signed=True)} nats/vote "
        f"({_pct(relative, signed=True)}; {interval})"
    )
    half = result.get("gain_half")
    if half:
        lines.append(
            f"ties counted as half (every family alike): NLL {_fmt(result['p2l']['nll_half'])} "
            f"vs marginal {_fmt(marginal['nll_half'])}, gain {_fmt(half['nll'], signed=True)}"
        )
    oracle = result.get("oracle", {})
    if oracle.get("available"):
        lines.append(
            f"fraction of the achievable gain captured (oracle): "
            f"{_pct(oracle.get('fraction_captured'))}; ties as half: "
            f"{_pct(oracle.get('fraction_captured_half'))}"
        )
    elif oracle:
        lines.append(f"[yellow]oracle unavailable:[/] {oracle.get('reason', '')}")
    if "category_fit" in result:
        lines.append(
            f"P2L's gain as a share of the per-category leaderboards' gain: "
            f"{_pct(result['category_fit'].get('fraction_captured'))}"
        )
    return lines


def render_calibration(result: dict, console: Any, table_class: Any) -> None:
    tables = result["calibration"]
    names = list(tables)
    table = table_class(
        title="Calibration: predicted P(lower-indexed model preferred) vs how often it was "
        "(ties half)",
        title_justify="left",
    )
    table.add_column("bin")
    for name in names:
        label = "P2L" if name == "p2l" else "marg."
        for column in ("n", "pred.", "obs."):
            table.add_column(f"{label} {column}", justify="right")
    by_bin = {name: {row["bin"]: row for row in tables[name]} for name in names}
    edges = {row["bin"]: (row["lower"], row["upper"]) for n in names for row in tables[n]}
    for b in sorted(edges):
        cells = [f"{edges[b][0]:.2g}-{edges[b][1]:.2g}"]
        for name in names:
            row = by_bin[name].get(b)
            if row is None:
                cells += ["0", "—", "—"]
            else:
                cells += [str(row["votes"]), _fmt(row["predicted"], 3), _fmt(row["observed"], 3)]
        table.add_row(*cells)
    _print_table(console, table)


def _interval(gain: dict | None) -> str:
    if not gain or gain.get("low") is None or not math.isfinite(gain["low"]):
        return "—"
    return f"{gain['low']:+.3f}..{gain['high']:+.3f}"


def _add_columns(table: Any, columns: list[str]) -> None:
    table.add_column(columns[0], no_wrap=True)
    for column in columns[1:]:
        table.add_column(column, justify="right", no_wrap=True)


def _wide_table(table_class: Any, title: str) -> Any:
    return table_class(title=title, title_justify="left")


def _print_table(console: Any, table: Any) -> None:
    """Print a table whole: wider than the terminal rather than with its numbers cut."""
    from rich.console import Console
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(max_width=1000), table).maximum
    if console.quiet or needed <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=min(needed, 200),
        force_terminal=console.is_terminal,
        color_system=console.color_system,
        highlight=False,
    )
    wide.print(table)


def render_groups(result: dict, console: Any, table_class: Any) -> None:
    groups = result.get("groups")
    if not groups or not groups["rows"]:
        return
    has_marginal = any("marginal" in row for row in groups["rows"])
    has_oracle = any("oracle" in row for row in groups["rows"])
    table = _wide_table(table_class, f"By {groups['by']} (NLL per vote)")
    columns = [groups["by"], "votes", "P2L"]
    columns += ["marginal", "gain", "interval"] if has_marginal else []
    columns += ["oracle"] if has_oracle else []
    columns += ["acc. P2L"]
    _add_columns(table, columns)
    for row in groups["rows"]:
        cells = [str(row["group"]), str(row["votes"]), _fmt(row["p2l"]["nll"], 3)]
        if has_marginal:
            gain = row.get("gain")
            cells += [
                _fmt(row["marginal"]["nll"], 3),
                _fmt((gain or {}).get("nll"), 3, signed=True),
                _interval(gain),
            ]
        if has_oracle:
            cells += [_fmt(row.get("oracle", {}).get("nll"), 3)]
        cells += [_pct(row["p2l"]["accuracy"])]
        table.add_row(*cells)
    _print_table(console, table)


def render_recovery(result: dict, console: Any, table_class: Any) -> None:
    rows = result.get("recovery")
    if not rows:
        return
    table = _wide_table(
        table_class,
        "Leaderboard recovery: Kendall tau to the true leaderboard (higher is better), "
        "mean |difference| of pairwise win probabilities (lower is better)",
    )
    columns = [
        "category",
        "val",
        "train",
        "τ P2L",
        "τ own",
        "τ marg.",
        "|ΔW| P2L",
        "|ΔW| own",
        "|ΔW| marg.",
    ]
    _add_columns(table, columns)
    counts = result.get("train_votes_per_category", {})
    for row in rows:
        everything = row["category"] == "(all)"
        train_votes = result.get("train_votes") if everything else counts.get(row["category"])
        cells = [
            row["category"],
            str(row["val_prompts"]),
            "—" if train_votes is None else str(train_votes),
        ]
        for key in ("kendall_tau", "win_prob_gap"):
            for name in ("p2l", "category_fit", "marginal"):
                cells.append(_fmt(row.get(name, {}).get(key), 3))
        table.add_row(*cells)
    _print_table(console, table)
    console.print(
        "[dim]val: validation prompts aggregated; train: training votes; own: a leaderboard "
        "fitted on the category's training votes alone; marg.: the marginal leaderboard[/]"
    )


# ---------------------------------------------------------------------------------- plots


def write_plots(result: dict, folder: str | Path) -> list[Path]:
    """``calibration.png`` and, with groups, ``gain_by_<column>.png`` in ``folder``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--plot needs matplotlib: pip install 'p2l-cli[plot]' (or pip install matplotlib)"
        ) from None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_calibration(result, out / "calibration.png", plt)]
    groups = result.get("groups")
    if groups and any("gain" in row for row in groups["rows"]):
        written.append(plot_gains(groups, out / f"gain_by_{_slug(groups['by'])}.png", plt))
    return written


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


def plot_calibration(result: dict, path: Path, plt: Any) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, rows in result["calibration"].items():
        if rows:
            xs = [row["predicted"] for row in rows]
            ys = [row["observed"] for row in rows]
            ece = result.get(name, {}).get("ece")
            label = f"{'P2L' if name == 'p2l' else 'marginal'} (ECE {_fmt(ece, 3)})"
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("predicted probability (lower-indexed model preferred)")
    ax.set_ylabel("observed rate (ties count half)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Calibration on held-out votes")
    ax.legend(loc="lower right")
    return _save(fig, path, plt)


def plot_gains(groups: dict, path: Path, plt: Any) -> Path:
    rows = [row for row in groups["rows"] if "gain" in row]
    names = [str(row["group"]) for row in rows]
    gains = np.array([row["gain"]["nll"] for row in rows], dtype=float)
    low = np.array([_or_nan(row["gain"].get("low")) for row in rows], dtype=float)
    high = np.array([_or_nan(row["gain"].get("high")) for row in rows], dtype=float)
    errors = np.nan_to_num(np.stack([gains - low, high - gains]), nan=0.0)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows) + 2), 4))
    colours = ["tab:green" if g > 0 else "tab:red" for g in gains]
    ax.bar(range(len(rows)), gains, yerr=errors, color=colours, capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax.set_ylabel("NLL gain vs marginal (nats/vote)")
    ax.set_title(f"P2L gain over the marginal leaderboard by {groups['by']}")
    return _save(fig, path, plt)


def _or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    from p2l_cli.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
