"""`p2l train`'s flags and the training settings: every setting has a flag (or is recipe-only
for a stated reason), and every flag reaches the resolved configuration."""

from __future__ import annotations

import inspect
import typing

import pytest
from conftest import run_cli

import p2l_cli.train as train_module
from p2l_cli.commands.train import RUN_OPTIONS, config_overrides
from p2l_cli.commands.train import train as train_command
from p2l_cli.model.heads import HEAD_ACTIVATIONS
from p2l_cli.train_config import (
    FIELDS,
    HEAD_INITS,
    HEAD_SOLVERS,
    POOLINGS,
    PRECISIONS,
    RECIPE_ONLY,
    SCHEDULERS,
    TrainConfig,
    resolve_config,
)

CHOICES = {
    "backbone": ("some/backbone",),
    "loss": ("bt", "bt-tie", "rk", "grk"),
    "head": ("bt", "rk"),
    "head_activation": HEAD_ACTIVATIONS,
    "head_init": HEAD_INITS,
    "pooling": POOLINGS,
    "scheduler": SCHEDULERS,
    "precision": PRECISIONS,
    "head_solver": HEAD_SOLVERS,
}
# Flags that a value needs beside it to pass validation.
COMPANIONS = {
    "head_solver": ["--freeze-backbone"],
    "neighbours": ["--freeze-backbone", "--head-solver", "ridge-cv"],
    "smoothing": ["--freeze-backbone", "--head-solver", "ridge-cv"],
    "model_covariance": ["--freeze-backbone", "--head-solver", "ridge-cv"],
    "head_rank_bias": ["--head-rank", "2"],
    "head_eta_downsize": ["--head-rank", "2", "--loss", "rk"],
}
FLAG_SETTINGS = [name for name in FIELDS if name not in RECIPE_ONLY]


def _parameters() -> set[str]:
    return set(inspect.signature(train_command).parameters) - {"ctx"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _other_value(name: str, default):
    """A valid value of setting ``name`` that is not its default."""
    if name in CHOICES:
        return next(c for c in CHOICES[name] if c != default)
    kinds = typing.get_args(typing.get_type_hints(TrainConfig)[name]) or (
        typing.get_type_hints(TrainConfig)[name],
    )
    if bool in kinds:
        return not default
    if int in kinds:
        return (default or 1) + 2
    if float in kinds:
        return (default or 0.25) * 2
    raise AssertionError(f"no test value for setting {name!r}")


def _command_line(name: str, value) -> list[str]:
    if isinstance(value, bool):
        return [_flag(name) if value else "--no-" + _flag(name)[2:]]
    return [_flag(name), str(value)]


def test_every_setting_has_a_flag_or_is_recipe_only_for_a_reason():
    parameters = _parameters()
    assert set(FLAG_SETTINGS) <= parameters, set(FLAG_SETTINGS) - parameters
    assert parameters - set(FLAG_SETTINGS) == set(RUN_OPTIONS)
    for name, reason in RECIPE_ONLY.items():
        assert name in FIELDS and name not in parameters and reason.strip()


def test_a_parameter_that_is_no_setting_is_refused():
    with pytest.raises(RuntimeError, match="learning_rate"):
        config_overrides({"lr": 1e-3, "learning_rate": 1e-3})
    with pytest.raises(RuntimeError, match="chat_template"):
        config_overrides({"chat_template": "{{ x }}"})


@pytest.mark.parametrize("name", FLAG_SETTINGS)
def test_each_flag_reaches_the_configuration(name, tmp_path, monkeypatch):
    received = {}

    def capture(data_dir, out_dir, recipe=None, overrides=None, options=None, **kwargs):
        received.update(recipe=recipe, overrides=overrides)

    monkeypatch.setattr(train_module, "train_p2l", capture)
    empty_recipe = tmp_path / "empty.yaml"
    empty_recipe.write_text("")
    value = _other_value(name, getattr(TrainConfig(), name))
    args = ["train", tmp_path, "-o", tmp_path / "model", "--recipe", empty_recipe,
            *COMPANIONS.get(name, []), *_command_line(name, value)]  # fmt: skip
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    config, explicit, _ = resolve_config(received["recipe"], received["overrides"])
    assert getattr(config, name) == value
    assert name in explicit


def test_flags_override_the_recipe(tmp_path, monkeypatch):
    received = {}
    monkeypatch.setattr(train_module, "train_p2l",
                        lambda *args, **kwargs: received.update(args=args))  # fmt: skip
    result = run_cli("train", tmp_path, "-o", tmp_path / "m", "--recipe", "minilm-cpu",
                     "--cv-folds", "3", "--no-neighbours")  # fmt: skip
    assert result.exit_code == 0, result.output
    config, _, _ = resolve_config(*received["args"][2:4])
    assert (config.cv_folds, config.neighbours, config.head_solver) == (3, False, "ridge-cv")

