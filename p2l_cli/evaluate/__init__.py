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

The package: :mod:`~p2l_cli.evaluate.inputs` (votes, joins, predictions from a model),
:mod:`~p2l_cli.evaluate.truth` (the simulator's truth), :mod:`~p2l_cli.evaluate.scoring`
(losses, metrics, bootstrap, recovery), :mod:`~p2l_cli.evaluate.compare` (the result) and
:mod:`~p2l_cli.evaluate.report` (tables, JSON, plots); the command joins them.
"""

from p2l_cli.contracts.predictions import Predictions, read_predictions
from p2l_cli.evaluate.checkpoints import Checkpoint, list_checkpoints, model_folder_of
from p2l_cli.evaluate.compare import Settings, evaluate_predictions
from p2l_cli.evaluate.inputs import Votes, make_votes, vote_labels
from p2l_cli.evaluate.scoring import bootstrap_gain, vote_losses
from p2l_cli.evaluate.subsets import subset_curve
from p2l_cli.evaluate.truth import TruthTable, read_truth
from p2l_cli.stats.rankings import (
    coef_iqr,
    coef_spread,
    coef_spread_stats,
    coef_std,
    leaderboard_agreement,
    spearman,
    tie_accuracy,
    top_k_displacement,
    top_k_fraction,
    win_prob_l1,
)

__all__ = [
    "Checkpoint",
    "Predictions",
    "Settings",
    "TruthTable",
    "Votes",
    "bootstrap_gain",
    "coef_iqr",
    "coef_spread",
    "coef_spread_stats",
    "coef_std",
    "evaluate_predictions",
    "leaderboard_agreement",
    "list_checkpoints",
    "make_votes",
    "model_folder_of",
    "read_predictions",
    "read_truth",
    "spearman",
    "subset_curve",
    "tie_accuracy",
    "top_k_displacement",
    "top_k_fraction",
    "vote_labels",
    "vote_losses",
    "win_prob_l1",
]
