"""The shape of a training run: `Trainer.setup()` in steps, then `train()`, then `cleanup()`;
library code reports through a reporter (never prints) and the command renders it; model
folders record the versions they were trained with."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from tiny import make_backbone
from train_helpers import write_data_dir

from p2l_cli.environment import versions
from p2l_cli.model import load_p2l
from p2l_cli.reporting import INFO, WARNING, Recorder
from p2l_cli.train import RunOptions, Trainer, make_accelerator, train_p2l
from p2l_cli.train_config import resolve_config


@pytest.fixture(autouse=True)
def _feature_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("P2L_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_backbone("bert", tmp_path_factory.mktemp("backbones") / "bert")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data_dir(tmp_path_factory.mktemp("data") / "votes", n_train=120, n_val=40)


def _ridge_settings(bert) -> dict:
    return {"backbone": str(bert), "freeze_backbone": True, "head_solver": "ridge-cv",
            "max_length": 32, "cv_folds": 3}  # fmt: skip


def test_setup_builds_the_run_that_train_then_runs(bert, data, tmp_path):
    settings = {"backbone": str(bert), "freeze_backbone": True, "max_length": 32,
                "batch_size": 16, "epochs": 2, "eval_every": 4}  # fmt: skip
    config, _, _ = resolve_config(None, settings)
    out = tmp_path / "model"
    out.mkdir()
    trainer = Trainer(config, data, out, make_accelerator(config), RunOptions())
    trainer.setup()
    assert trainer.family == "bt-tie"  # loss auto, and the votes hold ties
    assert trainer.features["train"].shape == (120, trainer.model.pooled_size)
    assert trainer.steps_per_epoch == 120 // 16 and trainer.total_steps == 2 * (120 // 16)
    assert trainer.state.step == 0 and trainer.state.data_fingerprint
    # the head starts at the marginal leaderboard (zeros init plus the marginal bias)
    with torch.inference_mode():
        start, _ = trainer.model.head(trainer.features["val"][:3])
    np.testing.assert_allclose(start.detach().numpy(), np.tile(trainer.marginal.theta, (3, 1)),
                               rtol=0, atol=1e-5)  # fmt: skip
    try:
        result = trainer.train()
    finally:
        trainer.cleanup()
    assert result.status == "finished" and result.state.step == trainer.total_steps
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()


def test_training_prints_nothing_and_reports_its_events(bert, data, tmp_path, capfd):
    recorder = Recorder()
    settings = {**_ridge_settings(bert), "lr": 0.5}  # --lr does nothing with ridge-cv
    train_p2l(data, tmp_path / "model", None, settings, RunOptions(reporter=recorder))
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""
    (warning,) = recorder.messages(WARNING)
    assert warning.startswith("--lr: no effect in this run")
    info = recorder.messages(INFO)
    assert info[0] == "loss: bt-tie (auto: the training votes hold ties)"
    assert any(m.startswith("fitting a linear head: 3-fold cross-validation") for m in info)
    assert info[-1].startswith("done: 1 steps; best step 1: val NLL ")


@pytest.mark.slow
def test_the_command_renders_the_events_on_stderr(bert, data, tmp_path):
    result = run_cli("train", data, "-o", tmp_path / "model", "--backbone", bert,
                     "--freeze-backbone", "--head-solver", "ridge-cv", "--max-length", "32",
                     "--cv-folds", "3", "--lr", "0.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert "loss: bt-tie (auto: the training votes hold ties)" in lines
    assert any(line.startswith("warning: --lr: no effect in this run") for line in lines)
    assert any(line.startswith("done: 1 steps; best step 1: ") for line in lines)
    quiet = run_cli("train", data, "-o", tmp_path / "quiet", "--backbone", bert,
                    "--freeze-backbone", "--head-solver", "ridge-cv", "--max-length", "32",
                    "--quiet")  # fmt: skip
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_the_model_folder_records_the_versions_it_was_trained_with(bert, data, tmp_path):
    out = tmp_path / "model"
    train_p2l(data, out, None, _ridge_settings(bert), RunOptions())
    saved = json.loads((out / "training_config.json").read_text())
    assert saved["versions"] == versions()
    assert saved["versions"]["torch"] == torch.__version__
    model, _ = load_p2l(out)
    with_versions = model.info.model_list

    del saved["versions"]  # a folder written before versions were recorded still loads
    (out / "training_config.json").write_text(json.dumps(saved))
    model, _ = load_p2l(out)
    assert model.info.model_list == with_versions and "versions" not in model.info.extra
