"""How many prompts an aggregated leaderboard needs: the aggregate of random subsets of the
validation prompts against the aggregate of all of them, per subset size."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from p2l_cli.stats.rankings import leaderboard_agreement

DEFAULT_SUBSET_REPEATS = 20
TOP_KS = (1, 3, 5, 10)


def parse_sizes(text: str | None) -> tuple[int, ...]:
    """``"10,30,100"`` -> ``(10, 30, 100)``; raises ``ValueError`` on anything else."""
    if text is None or not text.strip():
        return ()
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"{part!r} is not a positive whole number of prompts")
        sizes.append(int(part))
    return tuple(sorted(set(sizes)))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _std(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite)) if len(finite) > 1 else math.nan


def subset_curve(
    coefs: np.ndarray,
    eta: np.ndarray | None,
    family: str,
    sizes: tuple[int, ...],
    repeats: int = DEFAULT_SUBSET_REPEATS,
    seed: int = 0,
    full: tuple[np.ndarray, Any] | None = None,
) -> dict:
    """Per size: ``repeats`` random subsets of that many prompts (drawn without replacement
    from the rows of ``coefs [P, M]``, one row per prompt), each aggregated and compared with
    the aggregate of all ``P`` prompts (``full``, computed when not given); the means of
    :func:`~p2l_cli.stats.rankings.leaderboard_agreement` over the repeats. Sizes above ``P``
    are listed under ``skipped_sizes``."""
    from p2l_cli.evaluate.scoring import aggregate_rows

    prompts = coefs.shape[0]
    theta_full, eta_full = full if full is not None else aggregate_rows(coefs, eta, family)
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        if size > prompts:
            continue
        runs = []
        for _ in range(repeats):
            chosen = np.sort(rng.choice(prompts, size=size, replace=False))
            theta, eta_sub = aggregate_rows(
                coefs[chosen], None if eta is None else eta[chosen], family
            )
            runs.append(
                leaderboard_agreement(theta_full, theta, family, eta_full, eta_sub, TOP_KS)
            )
        spearmans = [r["spearman"] for r in runs]
        rows.append(
            {
                "size": size,
                "repeats": repeats,
                "spearman": _mean(spearmans),
                "spearman_std": _std(spearmans),
                "kendall_tau": _mean([r["kendall_tau"] for r in runs]),
                "top_k_fraction": {
                    k: _mean([r["top_k_fraction"][k] for r in runs])
                    for k in runs[0]["top_k_fraction"]
                },
                "top_k_displacement": {
                    k: _mean([r["top_k_displacement"][k] for r in runs])
                    for k in runs[0]["top_k_displacement"]
                },
                "win_prob_l1": _mean([r["win_prob_l1"] for r in runs]),
            }
        )
    return {
        "against": "the aggregated P2L leaderboard of all validation prompts",
        "prompts": prompts,
        "seed": seed,
        "rows": rows,
        "skipped_sizes": [size for size in sizes if size > prompts],
    }
