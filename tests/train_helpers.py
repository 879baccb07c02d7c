"""Small hand-made training data for model/train tests: battles with a planted signal.

Prompts about code favour model ``coder``, prompts about writing favour ``writer``; other
pairs are coin flips. The files follow the battles contract (``p2l prepare``'s output).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

MODELS = ["coder", "generalist", "writer"]
CODE = [
    "write a python function that sorts a list of numbers",
    "write a sql query that joins orders and customers by id",
    "explain recursion in javascript with an example",
]
WRITING = [
    "compose a short poem about the autumn sea and the moon",
    "tell me a story about a dragon who learns to cook",
]
OTHER = [
    "hello how are you doing today my friend",
    "translate this sentence into french please: the cat sleeps",
    "what is the derivative of sine of x times cosine of x",
]


def planted_battles(n: int, seed: int, strength: float = 0.9, ties: bool = True) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = rng.choice(["code", "writing", "other"])
        pool = {"code": CODE, "writing": WRITING, "other": OTHER}[kind]
        prompt = [str(rng.choice(pool))]
        a, b = rng.choice(len(MODELS), size=2, replace=False)
        favourite = {"code": 0, "writing": 2}.get(kind)
        if ties and rng.random() < 0.1:
            winner = "tie"
        elif favourite is not None and favourite in (a, b):
            p_a = strength if a == favourite else 1 - strength
            winner = "model_a" if rng.random() < p_a else "model_b"
        else:
            winner = "model_a" if rng.random() < 0.5 else "model_b"
        if winner == "model_b":
            labels = [int(b), int(a), 0]
        else:
            labels = [int(a), int(b), 0 if winner == "model_a" else 1]
        rows.append({
            "id": f"b{seed}-{i}", "prompt": prompt, "model_a": MODELS[a], "model_b": MODELS[b],
            "winner": winner, "labels": labels, "tstamp": float(1_700_000_000 + i),
        })  # fmt: skip
    return pl.DataFrame(rows)


def write_data_dir(folder: str | Path, n_train: int = 96, n_val: int = 48, seed: int = 0,
                   **kwargs) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planted_battles(n_train, seed, **kwargs).write_parquet(folder / "train.parquet")
    planted_battles(n_val, seed + 1000, **kwargs).write_parquet(folder / "val.parquet")
    (folder / "models.json").write_text(json.dumps(MODELS))
    return folder
