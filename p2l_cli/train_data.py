"""Training data: the prepared data folder, tokenised prompts, and the order of batches.

``DATA_DIR`` is ``p2l prepare``'s output: ``train.parquet``, ``val.parquet`` and
``models.json``. Labels index into ``models.json``; rows that also name their models
(``model_a``/``model_b``) are checked against it, so train and val prepared with different
model lists are caught before training.

Batches are laid out by optimizer step: step ``s`` of an epoch uses the examples
``order[s*G:(s+1)*G]`` with ``G = batch_size * processes * grad_accum``; micro-step ``k`` on
process ``r`` takes its own slice of those. The layout depends only on the seed, the epoch
and ``G``, so a resumed run sees the same batches as an uninterrupted one, and a run on two
processes sees the same global batches as a run on one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from p2l_cli.contracts.style import first_is_model_a, style_from_frame
from p2l_cli.errors import UserError
from p2l_cli.io import read_table
from p2l_cli.reporting import SILENT, Reporter
from p2l_cli.stats.families import vote_mask

CONTRACT = ("train.parquet", "val.parquet", "models.json")
MEGABATCH = 50  # global batches sorted together when grouping by length


@dataclass
class VoteSet:
    """One split: prompts (user turns), labels ``[N, 3]`` and optional weights/timestamps."""

    source: str
    prompts: list[list[str]]
    labels: np.ndarray
    weights: np.ndarray | None = None
    tstamp: np.ndarray | None = None
    # style control: relative style differences [N, F] (model_a over model_b), their names,
    # and +1 where the labels' first model is model_a, -1 where it is model_b
    style: np.ndarray | None = None
    style_names: list[str] | None = None
    sign: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class DataDir:
    models: list[str]
    train: VoteSet
    val: VoteSet


def load_data_dir(data_dir: str | Path, weighted: bool = False, style: bool = False) -> DataDir:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{data_dir}: not a folder (expected p2l prepare's output folder)")
    for name in CONTRACT:
        if not (root / name).is_file():
            raise UserError(
                f"{root / name}: missing; a training data folder holds {', '.join(CONTRACT)} "
                "(make one with p2l prepare)"
            )
    models = read_models(root / "models.json")
    train = load_votes(root / "train.parquet", models, weighted, style)
    val = load_votes(root / "val.parquet", models, weighted, style)
    if len(train) == 0:
        raise UserError(f"{root / 'train.parquet'}: no votes")
    return DataDir(models=models, train=train, val=val)


def read_models(path: Path) -> list[str]:
    try:
        models = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise UserError(f"{path}: expected a JSON list of model names")
    if len(models) < 2:
        raise UserError(f"{path}: needs at least two models")
    if models != sorted(models) or len(set(models)) != len(models):
        raise UserError(f"{path}: the model list must be sorted and without duplicates")
    return models


def load_votes(path: Path, models: list[str], weighted: bool, style: bool = False) -> VoteSet:
    df = read_table(path)
    for column in ("prompt", "labels"):
        if column not in df.columns:
            raise UserError(f"{path}: no {column!r} column (is this p2l prepare's output?)")
    prompts = [_turns(p, path, i) for i, p in enumerate(df["prompt"].to_list())]
    labels = _labels(df, path, len(models))
    if {"model_a", "model_b"} <= set(df.columns):
        _check_model_names(df, labels, models, path)
    weights = None
    if weighted:
        if "weight" not in df.columns:
            raise UserError(f"{path}: --weighted needs a 'weight' column")
        weights = df["weight"].cast(pl.Float64).fill_null(1.0).to_numpy().astype(np.float32)
        if (weights < 0).any() or not np.isfinite(weights).all():
            row = int(np.flatnonzero((weights < 0) | ~np.isfinite(weights))[0])
            raise UserError(f"{path}: row {row}: weight must be a finite number >= 0")
    tstamp = None
    if "tstamp" in df.columns and df["tstamp"].null_count() == 0:
        column = df["tstamp"]
        if column.dtype.is_temporal():
            column = column.dt.epoch("us")
        if column.dtype.is_numeric():
            tstamp = column.cast(pl.Float64).to_numpy()
    votes = VoteSet(str(path), prompts, labels, weights, tstamp)
    if style and len(votes):
        votes.style, votes.style_names = style_from_frame(df, str(path))
        votes.sign = _first_is_model_a(df, labels, models, path)
    return votes


def _first_is_model_a(df: pl.DataFrame, labels: np.ndarray, models: list[str],
                      path: Path) -> np.ndarray:
    """+1 where a vote's first label is model_a, -1 where it is model_b."""
    if "model_a" not in df.columns:
        raise UserError(f"{path}: --style-control needs the model_a column (p2l prepare's "
                        "output has it)")
    return first_is_model_a(df["model_a"].cast(pl.String).to_list(), labels[:, 0], models)


def _turns(prompt, path: Path, row: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, str) for t in prompt):
        return prompt
    raise UserError(f"{path}: row {row}: prompt must be a non-empty list of strings")


def _labels(df: pl.DataFrame, path: Path, num_models: int) -> np.ndarray:
    column = df["labels"]
    if not isinstance(column.dtype, (pl.List, pl.Array)):
        raise UserError(f"{path}: 'labels' must be a list [winner_idx, loser_idx, tie_code]")
    if len(column) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    lengths = column.list.len().fill_null(0).to_numpy()
    bad = np.flatnonzero(lengths != 3)
    if bad.size:
        raise UserError(f"{path}: row {int(bad[0])}: labels must hold 3 integers")
    try:
        labels = np.asarray(column.to_list(), dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: labels must be integers") from None
    out_of_range = (labels[:, :2] < 0) | (labels[:, :2] >= num_models)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range.any(axis=1))[0])
        raise UserError(
            f"{path}: row {row}: label {labels[row, :2].tolist()} indexes past models.json "
            f"({num_models} models); train and val must be prepared with this models.json"
        )
    bad = np.flatnonzero(~np.isin(labels[:, 2], (0, 1, 2)) | (labels[:, 0] == labels[:, 1]))
    if bad.size:
        raise UserError(
            f"{path}: row {int(bad[0])}: labels {labels[bad[0]].tolist()} are not "
            "[winner_idx, loser_idx, tie_code] with two models and tie_code 0, 1 or 2"
        )
    return labels


def _check_model_names(df: pl.DataFrame, labels: np.ndarray, models: list[str], path: Path):
    names = np.asarray(models, dtype=object)
    a = df["model_a"].to_numpy().astype(object)
    b = df["model_b"].to_numpy().astype(object)
    first, second = names[labels[:, 0]], names[labels[:, 1]]
    agree = ((first == a) & (second == b)) | ((first == b) & (second == a))
    if not agree.all():
        row = int(np.flatnonzero(~agree)[0])
        raise UserError(
            f"{path}: row {row}: labels point to {first[row]!r} vs {second[row]!r} but the "
            f"row compares {a[row]!r} vs {b[row]!r}: the models.json beside it is not the "
            "list this split was prepared with (prepare train and val together)"
        )


# ------------------------------------------------------------------------- tokenisation


def tokenize(
    tokenizer, votes: VoteSet, info, chunk: int = 2048, label: str = "",
    reporter: Reporter = SILENT,
) -> list[np.ndarray]:  # fmt: skip
    """Token ids per prompt (int32 arrays), in chunks with a progress bar."""
    from p2l_cli.model import encode_prompts

    ids: list[np.ndarray] = []
    with reporter.progress(f"tokenising {label}".strip(), total=len(votes)) as bar:
        for start in range(0, len(votes), chunk):
            batch = encode_prompts(tokenizer, votes.prompts[start : start + chunk], info)
            ids.extend(np.asarray(row, dtype=np.int32) for row in batch)
            bar.advance(len(batch))
    return ids


def fingerprint(token_ids: list[np.ndarray], labels: np.ndarray, weights=None) -> str:
    """A hash of what training reads from the data: token ids, labels and weights."""
    digest = hashlib.sha256()
    lengths = np.fromiter((len(r) for r in token_ids), dtype=np.int64, count=len(token_ids))
    digest.update(lengths.tobytes())
    for row in token_ids:
        digest.update(row.tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    if weights is not None:
        digest.update(np.ascontiguousarray(weights, dtype=np.float32).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------ batch layout


@dataclass(frozen=True)
class Layout:
    """How the examples of one optimizer step are split over micro-steps and processes."""

    batch_size: int  # per process and micro-step
    processes: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes * self.grad_accum

    def steps_per_epoch(self, n: int) -> int:
        return n // self.global_batch

    def micro_batch(self, step_examples: np.ndarray, micro: int, rank: int) -> np.ndarray:
        start = (micro * self.processes + rank) * self.batch_size
        return step_examples[start : start + self.batch_size]


def epoch_order(
    n: int,
    epoch: int,
    seed: int,
    chrono: bool = False,
    tstamp: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    global_batch: int = 1,
) -> np.ndarray:
    """The order of the examples in an epoch: a seeded shuffle, or time order for
    ``chrono``; with ``lengths``, examples of similar length share an optimizer step."""
    if chrono:
        order = np.argsort(tstamp, kind="stable") if tstamp is not None else np.arange(n)
    else:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    if lengths is None:
        return order
    if not chrono:
        order = _megabatches_by_length(order, lengths, global_batch, seed, epoch)
    return _sort_within_steps(order, lengths, global_batch)


def _megabatches_by_length(order, lengths, global_batch, seed, epoch) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch, 1])
    size = global_batch * MEGABATCH
    steps = []
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        steps.extend(chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch))
    full = [s for s in steps if len(s) == global_batch]
    tail = [s for s in steps if len(s) != global_batch]
    full = [full[i] for i in rng.permutation(len(full))]
    return np.concatenate(full + tail) if steps else order


def _sort_within_steps(order, lengths, global_batch) -> np.ndarray:
    out = order.copy()
    for start in range(0, len(order) - global_batch + 1, global_batch):
        chunk = out[start : start + global_batch]
        out[start : start + global_batch] = chunk[np.argsort(-lengths[chunk], kind="stable")]
    return out


def step_weight(labels: np.ndarray, weights: np.ndarray | None, family: str) -> float:
    """The total weight of the votes of one optimizer step that the loss counts: each
    process divides its summed loss by this, so the step's gradient is that of the mean
    over the global batch, however it is split."""
    mask = vote_mask(np.asarray(labels[:, 2]), family).numpy().astype(np.float64)
    if weights is not None:
        mask = mask * weights
    return float(mask.sum())
