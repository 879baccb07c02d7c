"""The ridge head at scale: candidates compared on a subsample of whole prompts, and a
penalty path that starts near where the best penalty is expected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import make_backbone

from p2l_cli.reporting import Recorder
from p2l_cli.stats.headfit import (
    DEFAULT_PENALTIES,
    NEAR_MARGIN,
    fit_linear_head,
    penalties_near,
    prompt_subsample,
)
from p2l_cli.train import RunOptions, train_p2l
from tests.test_headfit_threads import planted_votes


def test_the_subsample_holds_whole_prompts_and_about_the_votes_asked_for() -> None:
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(np.arange(400), rng.integers(1, 9, 400)))
    counts = np.bincount(groups)
    for wanted in (1, 250, 900):
        rows = prompt_subsample(groups, wanted, seed=3)
        assert np.all(np.diff(rows) > 0)
        taken = np.unique(groups[rows])
        assert len(rows) == counts[taken].sum()  # every vote of a drawn prompt
        assert wanted <= len(rows) < wanted + counts.max()
        np.testing.assert_array_equal(rows, prompt_subsample(groups, wanted, seed=3))
    assert not np.array_equal(prompt_subsample(groups, 250, 3), prompt_subsample(groups, 250, 4))
    np.testing.assert_array_equal(prompt_subsample(groups, 10**6, 0), np.arange(len(groups)))


def test_a_path_near_a_penalty_starts_at_most_the_margin_above_it() -> None:
    for near in (1e-3, 0.0316, 0.05, 0.2):
        path = penalties_near(near)
        assert path[0] <= near * NEAR_MARGIN * (1 + 1e-9)
        assert path == DEFAULT_PENALTIES[-len(path):]
        before = DEFAULT_PENALTIES[len(DEFAULT_PENALTIES) - len(path) - 1]
        assert before > near * NEAR_MARGIN
    assert penalties_near(0.5) == penalties_near(100.0) == DEFAULT_PENALTIES
    assert penalties_near(1e-12) == DEFAULT_PENALTIES[-1:]


@pytest.mark.parametrize("factor", [1.0, 0.25, 1e-3, 1e-9])
def test_a_path_started_near_the_best_penalty_gives_the_whole_paths_head(factor) -> None:
    """Near the right penalty the shortened path finds the same penalty and head as the
    whole one, with fewer fits; told a penalty far too weak, the shortened path's strongest
    penalty wins, so the whole path is tried and the head is again the whole path's."""
    x, labels, groups = planted_votes(1500, 6, 4, seed=2, strength=0.3)
    whole, whole_report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups)
    assert whole_report.penalty is not None and whole_report.penalty < DEFAULT_PENALTIES[2]
    head, report = fit_linear_head(x, labels, "bt-tie", bias=np.zeros(4), groups=groups,
                                   near=whole_report.penalty * factor)  # fmt: skip
    assert report.penalty == whole_report.penalty
    np.testing.assert_allclose(head.weight, whole.weight, atol=2e-5)
    np.testing.assert_allclose(head.bias, whole.bias, atol=2e-5)
    for penalty, nll in report.cv_nll.items():
        assert nll == pytest.approx(whole_report.cv_nll[penalty], abs=1e-7)
    if factor * NEAR_MARGIN > 1:  # the fits far above the best penalty were skipped
        assert len(report.cv_nll) < len(whole_report.cv_nll)
        assert max(report.cv_nll) <= whole_report.penalty * factor * NEAR_MARGIN * (1 + 1e-9)
    else:
        assert report.cv_nll.keys() == whole_report.cv_nll.keys()


@pytest.mark.slow
def test_candidates_are_compared_on_a_subsample_and_the_winner_fitted_on_every_vote(tmp_path):
    """Above twice ``selection_votes`` training votes, every candidate's line reports a
    fit on the subsample, the winner is fitted once more on every vote (and refitted under
    the model-covariance prior, also on every vote), and metrics.json says where the
    candidates were compared; at or below that size nothing changes."""
    from tests.test_quality_defaults import _length_data_dir

    data = _length_data_dir(tmp_path / "data", 600, 100)
    settings = {"backbone": str(make_backbone("bert", tmp_path / "bert")), "freeze_backbone": True,
                "head_solver": "ridge-cv", "prompt_features": True, "cv_folds": 3,
                "model_covariance": True}  # fmt: skip
    runs = {}
    for wanted in (200, 300):
        recorder = Recorder()
        out = tmp_path / f"model-{wanted}"
        result = train_p2l(data, out, None, {**settings, "selection_votes": wanted},
                           RunOptions(reporter=recorder))  # fmt: skip
        runs[wanted] = result.metrics["head_fit"], recorder.messages(), out
    fit, messages, out = runs[200]
    lines = [m for m in messages if m.startswith("  candidate ")]
    compared = fit["candidates_compared_on"]
    assert 200 <= compared["votes"] < 260 and compared["prompts"] <= compared["votes"]
    assert any(f"comparing the candidates on {compared['votes']:,} of the 600" in m
               for m in messages)  # fmt: skip
    *subsample_lines, winner_line, prior_line = lines
    assert len(subsample_lines) >= 2
    assert all(line.split(":")[0].endswith("(the subsample)") for line in subsample_lines)
    assert winner_line.split(":")[0].endswith("(all 600 votes)")
    assert "model-covariance prior (all 600 votes)" in prior_line
    assert fit["votes"] == 600 and not fit["fell_back_to_marginal"]
    best = min(fit["cv_nll_by_candidate"], key=fit["cv_nll_by_candidate"].get)
    assert winner_line.startswith(f"  candidate {best}")
    saved = json.loads((out / "metrics.json").read_text())["head_fit"]
    assert saved["candidates_compared_on"] == compared
    # 600 votes are not more than twice 300: every candidate on every vote, as before
    fit_all, messages_all, _ = runs[300]
    assert "candidates_compared_on" not in fit_all
    assert not any("subsample" in m or "all 600 votes" in m for m in messages_all)


def test_the_selection_size_is_checked_and_named_when_it_cannot_act() -> None:
    from p2l_cli.errors import UserError
    from p2l_cli.train import ineffective_settings
    from p2l_cli.train_config import resolve_config

    assert resolve_config(None, {})[0].selection_votes == 25_000  # the default recipe's
    with pytest.raises(UserError, match="--selection-votes: must be at least 1"):
        resolve_config(None, {"selection_votes": 0})
    overrides = {"head_solver": "adamw", "selection_votes": 1000}
    config, _, _ = resolve_config(None, overrides)
    expected = ("--selection-votes: no effect in this run (it chooses among ridge-cv heads; "
                "this run trains with --head-solver adamw)")
    assert ineffective_settings(config, overrides) == [expected]
    ridge, _, _ = resolve_config(None, {"selection_votes": 1000})
    assert ineffective_settings(ridge, {"selection_votes": 1000}) == []
    # each flag that changes nothing is named, not only the first
    both = {**overrides, "lr": 0.5, "head_lr": 1e-3}
    config, _, _ = resolve_config(None, both)
    assert config.freeze_backbone
    warnings = ineffective_settings(config, both)
    assert warnings[0] == expected and len(warnings) == 2
    assert warnings[1].startswith("--lr: no effect in this run (--lr is the backbone's")
