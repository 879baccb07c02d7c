"""`p2l train`: learning a planted signal, exact resume, signals, two processes, the frozen-
backbone feature cache, recipes, schedules and clear errors for bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import REPO, run_cli, run_p2l
from safetensors.torch import load_file
from tiny import make_backbone
from train_helpers import MODELS, planted_battles, write_data_dir
from transformers import AutoModel

import p2l_cli.train as train_module
from p2l_cli.model import P2LHead, collate, encode_prompts, load_p2l
from p2l_cli.stats.families import labels_nll
from p2l_cli.train import RunOptions, Trainer, TrainingInterrupted, lr_factor, train_p2l
from p2l_cli.train_config import resolve_config
from p2l_cli.train_data import Layout, epoch_order, step_weight


@pytest.fixture(autouse=True)
def _feature_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("P2L_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine spinning OpenMP
    threads slow them down tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {kind: make_backbone(kind, root / kind) for kind in ("qwen2", "llama", "bert")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data_dir(tmp_path_factory.mktemp("data") / "votes", n_train=256, n_val=128)


def _train(data, out, backbone, options=None, **settings):
    return train_p2l(data, out, None, {"backbone": str(backbone), **settings},
                     options or RunOptions())


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(folder / "model.safetensors"))
    return {k.removeprefix("module."): v for k, v in tensors.items()}


# ------------------------------------------------------------------------- learning


@pytest.mark.parametrize("kind", ["qwen2", "llama", "bert"])
def test_training_learns_a_planted_signal(backbones, data, tmp_path, kind):
    out = tmp_path / "model"
    # loss bt as given: the default (auto) would take bt-tie, as these votes hold ties
    result = _train(data, out, backbones[kind], epochs=3, batch_size=16, lr=2e-3,
                    head_lr=2e-2, eval_every=8, log_every=4, loss="bt")
    assert result.status == "finished" and result.state.step == 3 * (256 // 16)

    evals = [line for line in _log(out) if line["type"] == "eval"]
    marginal = evals[0]["val"]["marginal"]["nll"]
    # the head starts exactly at the marginal leaderboard (zeros init, bias = marginal fit)
    assert evals[0]["step"] == 0
    assert evals[0]["val"]["p2l"]["nll"] == pytest.approx(marginal, abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["p2l"]["nll"] < marginal - 0.03
    assert metrics["val"]["p2l"]["nll"] == min(e["val"]["p2l"]["nll"] for e in evals)
    assert metrics["steps"] == 48 and metrics["train_votes"] == 256
    assert "peak_gpu_memory_mib" not in metrics  # the CPU reports no GPU memory

    # the best weights are in the folder and favour the planted winners
    model, tokenizer = load_p2l(out)
    prompts = [["write a sql query that joins orders and customers by id"],
               ["tell me a story about a dragon who learns to cook"]]
    input_ids, mask = collate(encode_prompts(tokenizer, prompts, model.info),
                              tokenizer.pad_token_id)
    with torch.no_grad():
        coefs = model(input_ids, mask).coefs
    coder, writer = MODELS.index("coder"), MODELS.index("writer")
    assert coefs[0, coder] > coefs[0, writer] and coefs[1, writer] > coefs[1, coder]

    config = json.loads((out / "training_config.json").read_text())
    assert config["lr"] == 2e-3 and config["loss_type"] == "bt" and config["head_type"] == "bt"
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["model"] for r in board["rows"]) == MODELS
    assert [r["rank"] for r in board["rows"]] == [1, 2, 3]


def test_peak_gpu_memory_is_reported_in_mib_and_only_on_a_gpu(monkeypatch):
    asked = []

    def max_memory_allocated(device):
        asked.append(device)
        return 3 * 2**30 + 700 * 2**20 + 123  # 3 GiB and 700.0001 MiB

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", max_memory_allocated)
    trainer = Trainer.__new__(Trainer)  # only the device and the process count are read
    trainer.accelerator = type("OneProcess", (), {"num_processes": 1})()
    trainer.device = torch.device("cuda", 1)
    assert trainer._peak_gpu_memory() == {"peak_gpu_memory_mib": 3 * 1024 + 700}
    assert asked == [torch.device("cuda", 1)]
    trainer.device = torch.device("cpu")
    assert trainer._peak_gpu_memory() == {} and len(asked) == 1


def test_loss_share_gives_the_global_mean_gradient():
    """Micro-batch losses scaled by their share of the step's vote weight add up to the
    gradient of the mean NLL over the whole global batch (ties dropped in bt, weights)."""
    torch.manual_seed(0)
    head = P2LHead(8, 4)
    x = torch.randn(12, 8)
    labels = torch.tensor([[0, 1, 0], [1, 2, 1], [2, 3, 0], [3, 0, 0], [1, 0, 1], [2, 1, 0]] * 2)
    weights = torch.rand(12) + 0.5
    full = labels_nll(head(x)[0], labels, None, "bt", weights)
    expected = torch.autograd.grad(full, head.head.weight)[0]

    total = step_weight(labels.numpy(), weights.numpy(), "bt")
    grad = torch.zeros_like(expected)
    for part in (slice(0, 2), slice(2, 7), slice(7, 12)):
        local = step_weight(labels[part].numpy(), weights[part].numpy(), "bt")
        loss = labels_nll(head(x[part])[0], labels[part], None, "bt", weights[part])
        grad += torch.autograd.grad(loss * local / total, head.head.weight)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(backbones, data, tmp_path):
    # BERT has dropout, so the RNG state must come back too; accumulation, warmup, cosine
    # decay and length grouping make the position in the data and the schedule matter.
    settings = {"epochs": 2, "batch_size": 8, "grad_accum": 2, "lr": 1e-3, "warmup": 3,
                "scheduler": "cosine", "group_by_length": True, "eval_every": 5}
    straight = _train(data, tmp_path / "a", backbones["bert"], **settings)
    paused = _train(data, tmp_path / "b", backbones["bert"], RunOptions(stop_after=7),
                    **settings)
    assert paused.status == "paused" and paused.state.step == 7
    resumed = train_p2l(data, tmp_path / "b", None, {}, RunOptions(resume=True))
    assert resumed.state.step == straight.state.step == 32

    for name in ("checkpoints/last", "."):
        a, b = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    evals = [[(e["step"], e["val"]) for e in _log(tmp_path / d) if e["type"] == "eval"]
             for d in ("a", "b")]
    assert evals[0] == evals[1]
    assert straight.metrics["best_step"] == resumed.metrics["best_step"]


@pytest.mark.slow
def test_a_signal_mid_step_checkpoints_and_resumes_exactly(backbones, data, tmp_path,
                                                          monkeypatch):
    settings = {"epochs": 1, "batch_size": 8, "grad_accum": 2, "lr": 1e-3,
                "scheduler": "linear", "eval_every": 6}
    straight = _train(data, tmp_path / "a", backbones["bert"], **settings)

    calls = {"n": 0}
    real_nll = train_module.labels_nll

    def nll_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # first micro-step of optimizer step 5 (two micro-steps each)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_nll(*args, **kwargs)

    monkeypatch.setattr(train_module, "labels_nll", nll_then_signal)
    with pytest.raises(TrainingInterrupted) as stop:
        _train(data, tmp_path / "b", backbones["bert"], **settings)
    assert stop.value.result.signal == "SIGTERM" and stop.value.result.state.step == 4
    monkeypatch.setattr(train_module, "labels_nll", real_nll)
    state = json.loads((tmp_path / "b/checkpoints/last/trainer_state.json").read_text())
    assert state["step"] == 4

    train_p2l(data, tmp_path / "b", None, {}, RunOptions(resume=True))
    a, b = _weights(tmp_path / "a/checkpoints/last"), _weights(tmp_path / "b/checkpoints/last")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert straight.state.step == 16


@pytest.mark.slow
def test_sigterm_to_a_real_process_writes_a_checkpoint(backbones, data, tmp_path):
    out = tmp_path / "model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "P2L_QUIET": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "p2l_cli", "train", str(data), "-o", str(out), "--backbone",
           str(backbones["qwen2"]), "--max-steps", "100000", "--batch-size", "4",
           "--log-every", "1", "--eval-every", "100000", "--lr", "1e-4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        log = out / "metrics.jsonl"
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if log.is_file() and sum(1 for _ in log.open()) >= 4:  # step 0 eval + 3 steps
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr.decode()
    assert "continue with --resume" in stderr.decode()
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())
    assert state["step"] >= 3
    resumed = train_p2l(data, out, None, {}, RunOptions(resume=True,
                                                        stop_after=state["step"] + 2))
    assert resumed.status == "paused" and resumed.state.step == state["step"] + 2


# ---------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(backbones, data, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed")
    common = ["--backbone", str(backbones["qwen2"]), "--epochs", "1", "--grad-accum", "2",
              "--lr", "1e-3", "--eval-every", "5", "--scheduler", "linear"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "P2L_QUIET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "p2l_cli",
         "train", str(data), "-o", str(tmp_path / "two"), "--batch-size", "4", *common],
        check=False, env=env, capture_output=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    one = _train(data, tmp_path / "one", backbones["qwen2"], epochs=1, batch_size=8,
                 grad_accum=2, lr=1e-3, eval_every=5, scheduler="linear")
    state = json.loads((tmp_path / "two/checkpoints/last/trainer_state.json").read_text())
    assert state["processes"] == 2 and state["step"] == one.state.step == 16
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    two_metrics = json.loads((tmp_path / "two/metrics.json").read_text())
    assert two_metrics["best_step"] == one.metrics["best_step"]
    assert two_metrics["val"]["p2l"]["nll"] == pytest.approx(one.metrics["val"]["p2l"]["nll"],
                                                             abs=1e-5)


# -------------------------------------------------------------------- frozen backbone


@pytest.mark.slow
def test_freeze_backbone_trains_the_head_on_cached_features(backbones, data, tmp_path,
                                                           monkeypatch):
    bert = backbones["bert"]
    # a moderate learning rate: at 5e-2 Adam's steps on near-zero gradients turn float noise
    # (and the tiny tokenizer's tie-breaking, which varies by process) into chaotic curves
    settings = {"freeze_backbone": True, "epochs": 8, "batch_size": 16, "lr": 1e-2,
                "eval_every": 8, "head_rank": 4, "loss": "rk", "pooling": "mean"}
    first = _train(data, tmp_path / "a", bert, **settings)
    cached = list((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert len(cached) == 1
    features = load_file(str(cached[0]))

    # the cached features are BERT's mean token states, computed here prompt by prompt
    _, tokenizer = load_p2l(tmp_path / "a")
    backbone = AutoModel.from_pretrained(bert).eval()
    for row, prompt in enumerate(planted_battles(256, 0)["prompt"].to_list()[:4]):
        encoded = tokenizer("\n\n".join(prompt), return_tensors="pt")
        with torch.no_grad():
            hidden = backbone(**encoded).last_hidden_state[0].mean(dim=0)
        torch.testing.assert_close(features["train"][row], hidden, rtol=1e-4, atol=1e-5)

    # only the head was trained: the backbone's weights are saved unchanged
    original = load_file(str(bert / "model.safetensors"))
    saved = _weights(tmp_path / "a")
    for key, value in original.items():
        torch.testing.assert_close(saved[f"model.{key}"], value, rtol=0, atol=0)
    evals = [e["val"]["p2l"]["nll"] for e in _log(tmp_path / "a") if e["type"] == "eval"]
    assert first.metrics["val"]["p2l"]["nll"] == min(evals)
    assert first.metrics["val"]["p2l"]["nll"] < first.metrics["val"]["marginal"]["nll"] - 0.01

    def no_backbone(self):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(Trainer, "_compute_features", no_backbone)
    second = _train(data, tmp_path / "b", bert, **settings)
    assert second.metrics == first.metrics


# ----------------------------------------------------------------- recipes, schedules


def test_every_recipe_resolves_and_shows_its_launch_command():
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    names = {p.stem for p in recipes}
    assert {"minilm-cpu", "smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "qwen2.5-1.5b",
            "qwen2.5-3b", "qwen2.5-7b"} <= names
    for path in recipes:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and " train DATA_DIR -o MODEL_DIR" in first, path
        assert first.endswith(f"--recipe {path.stem}"), path
        config, explicit, warnings = resolve_config(str(path), {})
        assert "backbone" in explicit and not warnings
    config, _, _ = resolve_config("minilm-cpu", {"lr": 1e-4})
    assert config.backbone == "minilm" and config.lr == 1e-4 and config.pooling == "mean"
    paper, _, _ = resolve_config("qwen2.5-7b", {})
    assert (paper.family, paper.head_type, paper.lr, paper.chrono, paper.epochs) == (
        "grk", "rk", 8e-6, True, 1)
    assert paper.batch_size * 8 * paper.grad_accum == 512


@pytest.mark.slow
def test_a_paper_recipe_runs_from_any_directory(backbones, data, tmp_path):
    """`--recipe recipes/NAME.yaml` (the README's form) from a folder with no recipes/ in it:
    the recipes shipped with p2l are found, and a paper recipe trains a tiny Qwen2 end to end
    (rk head, grk loss, time order, gradient checkpointing)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "model"
    run_p2l("train", data, "-o", out, "--recipe", "recipes/qwen2.5-0.5b.yaml", "--backbone",
            backbones["qwen2"], "--max-steps", "2", "--grad-accum", "2", "--lr", "1e-3", "-q",
            cwd=elsewhere, check=True, env={"OMP_NUM_THREADS": "1",
                                            "P2L_CACHE_DIR": str(tmp_path / "cache")})
    saved = json.loads((out / "training_config.json").read_text())
    assert (saved["loss_type"], saved["head_type"], saved["chrono"]) == ("grk", "rk", True)
    assert saved["gradient_checkpointing"] and saved["adam_eps"] == 1e-8
    assert saved["max_length"] == 16384  # rotary positions: the recipe's length is kept
    assert saved["global_batch"] == 4 * 2 and saved["lr"] == 1e-3
    model, _ = load_p2l(out)
    assert model.head.eta_head is not None and model.info.family == "grk"


def test_gradient_checkpointing_changes_memory_not_results(backbones, data, tmp_path,
                                                          monkeypatch):
    enabled = []
    prepare = Trainer._prepare_backbone_for_training

    def spy(self):
        prepare(self)
        network = self.model.model
        flag = "is_activation_checkpointing"  # transformers >= 5; before: is_gradient_...
        if not hasattr(network, flag):
            flag = "is_gradient_checkpointing"
        enabled.append(getattr(network, flag))

    monkeypatch.setattr(Trainer, "_prepare_backbone_for_training", spy)
    settings = {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "eval_every": 100}
    plain = _train(data, tmp_path / "plain", backbones["llama"], **settings)
    recomputed = _train(data, tmp_path / "ckpt", backbones["llama"],
                        gradient_checkpointing=True, **settings)
    assert enabled == [False, True]
    assert plain.state.step == recomputed.state.step == 3
    original = load_file(str(backbones["llama"] / "model.safetensors"))
    a, b = (_weights(tmp_path / run / "checkpoints/last") for run in ("plain", "ckpt"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    name = "layers.0.mlp.up_proj.weight"
    assert not torch.equal(a["model." + name], original[name])  # the backbone did train


def test_the_deepspeed_example_is_a_valid_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "recipes/accelerate/deepspeed-zero1.yaml"))
    assert config.deepspeed_config["zero_stage"] == 1
    assert "gradient_accumulation_steps" not in config.deepspeed_config  # follows --grad-accum


def test_reference_style_config_keys_are_accepted(tmp_path):
    recipe = tmp_path / "ref.yaml"
    recipe.write_text("learning_rate: 8.0e-6\ngradient_accumulation_steps: 32\n"
                      "pretrain_model_name: Qwen/Qwen2.5-7B-Instruct\nloss_type: bag\n"
                      "head_type: rk\nproj_name: x\n")
    config, _, warnings = resolve_config(str(recipe), {})
    assert (config.lr, config.grad_accum, config.family, config.head_type) == (
        8e-6, 32, "grk", "rk")
    assert len(warnings) == 1 and "proj_name" in warnings[0]


def test_a_tie_family_without_its_ties_is_flagged():
    from p2l_cli.train import missing_ties_warning

    decisive, ties, bothbad = np.zeros(20, int), np.array([0] * 19 + [1]), np.array([0, 1, 2])
    assert "tie (bothbad)" in missing_ties_warning("grk", ties)
    assert missing_ties_warning("grk", bothbad) is None
    assert "no ties" in missing_ties_warning("rk", decisive)
    assert missing_ties_warning("rk", ties) is None
    assert missing_ties_warning("bt", decisive) is None and missing_ties_warning("bt-tie",
                                                                                decisive) is None


def test_learning_rate_schedules():
    assert [lr_factor(s, 4, 20, "constant") for s in (0, 1, 3, 4, 19)] == [
        0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor(12, 4, 20, "linear") == pytest.approx(1 - 8 / 16)
    assert lr_factor(20, 4, 20, "linear") == 0.0
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(4, 4, 20, "cosine") == pytest.approx(1.0)


def test_batch_layout_and_orders():
    layout = Layout(batch_size=3, processes=2, grad_accum=2)
    step = np.arange(100, 112)
    parts = [layout.micro_batch(step, m, r) for m in range(2) for r in range(2)]
    assert np.array_equal(np.sort(np.concatenate(parts)), step)  # a partition of the step
    assert layout.steps_per_epoch(50) == 4
    a, b = epoch_order(50, 0, 1), epoch_order(50, 1, 1)
    assert sorted(a) == list(range(50)) and not np.array_equal(a, b)
    assert np.array_equal(a, epoch_order(50, 0, 1))
    tstamp = np.random.default_rng(0).random(50)
    assert np.array_equal(epoch_order(50, 3, 1, chrono=True, tstamp=tstamp), np.argsort(tstamp))
    lengths = np.random.default_rng(1).integers(1, 100, 50)
    grouped = epoch_order(50, 0, 1, lengths=lengths, global_batch=5)
    assert sorted(grouped) == list(range(50))
    spread = [np.ptp(lengths[grouped[i:i + 5]]) for i in range(0, 50, 5)]
    shuffled = [np.ptp(lengths[a[i:i + 5]]) for i in range(0, 50, 5)]
    assert sum(spread) < sum(shuffled) / 2


# ---------------------------------------------------------------------- bad inputs


def _expect_error(args, message, **kwargs):
    result = run_cli("train", *args, **kwargs)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_bad_inputs_exit_2_with_a_clear_message(backbones, data, tmp_path):
    qwen = ["--backbone", str(backbones["qwen2"])]
    out = ["-o", str(tmp_path / "m")]
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "val.parquet").unlink()
    _expect_error([str(broken), *out, *qwen], "val.parquet: missing")
    _expect_error([str(tmp_path / "nowhere"), *out, *qwen], "not a folder")

    # val prepared against another model list: its labels name other models than its rows
    shutil.copy(data / "train.parquet", broken / "val.parquet")
    (broken / "models.json").write_text(json.dumps(["aardvark", "coder", "generalist"]))
    _expect_error([str(broken), *out, *qwen], "is not the list this split was prepared with")
    (broken / "models.json").write_text(json.dumps(["coder", "generalist"]))
    _expect_error([str(broken), *out, *qwen], "indexes past models.json")
    (broken / "models.json").write_text(json.dumps(["writer", "coder"]))
    _expect_error([str(broken), *out, *qwen], "must be sorted")
    bad_labels = planted_battles(10, 3).with_columns(pl.lit([1, 1, 0]).alias("labels"))
    bad_labels.write_parquet(broken / "val.parquet")
    (broken / "models.json").write_text(json.dumps(MODELS))
    _expect_error([str(broken), *out, *qwen], "val.parquet: row 0: labels [1, 1, 0]")

    _expect_error([str(data), *out, "--backbone", "no-such-org/no-such-model"],
                  "--backbone no-such-org/no-such-model: not in the Hugging Face cache")
    _expect_error([str(data), *out, *qwen, "--scheduler", "steep"], "--scheduler")
    _expect_error([str(data), *out, *qwen, "--batch-size", "300"], "larger than the 256")
    _expect_error([str(data), *out, *qwen, "--recipe", "no-such-recipe"],
                  "--recipe no-such-recipe: no such file")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("lerning_rate: 0.1\n")
    _expect_error([str(data), *out, "--recipe", str(recipe)], "unknown setting 'lerning_rate'")
    _expect_error([str(data), *out, *qwen, "--resume"], "no checkpoint to resume")

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("keep me")
    _expect_error([str(data), *out, *qwen], "folder is not empty; pass --overwrite")


def test_resume_refuses_changed_settings(backbones, data, tmp_path):
    _train(data, tmp_path / "m", backbones["llama"], RunOptions(stop_after=2), batch_size=32,
           lr=1e-3)
    _expect_error([str(data), "-o", str(tmp_path / "m"), "--resume", "--lr", "0.1"],
                  "lr 0.1 (checkpoint: 0.001)")
    result = run_cli("train", str(data), "-o", str(tmp_path / "m"), "--resume",
                     "--stop-after", "3", "--log-every", "1")
    assert result.exit_code == 0, result.output
    state = json.loads((tmp_path / "m/checkpoints/last/trainer_state.json").read_text())
    assert state["step"] == 3 and state["config"]["log_every"] == 1


# ------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_simulate_prepare_train_end_to_end(backbones, tmp_path):
    """The pipeline as a user runs it: three real processes, a tiny frozen backbone."""
    from conftest import run_p2l

    env = {"OMP_NUM_THREADS": "1", "P2L_CACHE_DIR": str(tmp_path / "cache")}
    run_p2l("simulate", tmp_path / "arena", "--battles", "400", "--models", "4", "-q",
            check=True, env=env)
    run_p2l("prepare", tmp_path / "arena" / "battles.parquet", "-o", tmp_path / "data",
            "--val-fraction", "0.25", "-q", check=True, env=env)
    proc = run_p2l("train", tmp_path / "data", "-o", tmp_path / "model", "--recipe",
                   "minilm-cpu", "--backbone", backbones["bert"], "--epochs", "3",
                   "--batch-size", "16", check=True, env=env)
    assert "marginal" in proc.stderr.decode()
    metrics = json.loads((tmp_path / "model/metrics.json").read_text())
    models = json.loads((tmp_path / "data/models.json").read_text())
    assert metrics["train_votes"] + metrics["val_votes"] == 400
    # 300 training votes on a random tiny backbone: whether the cross-validation finds a gain
    # clear enough to keep the head (or the neighbourhoods) is a close call that float
    # rounding can tip either way, and 100 validation votes may then disagree with it. What
    # holds either way is the rule: keep a part only when its held-out gain is clear.
    fit = metrics["head_fit"]
    assert metrics["selected_on"] == "train (cross-validation)"
    neighbours = fit["neighbours"]
    head_kept, neighbours_kept = not fit["fell_back_to_marginal"], neighbours["k"] is not None
    assert head_kept == (fit["cv_gain"] > 2.0 * fit["cv_gain_se"])
    assert neighbours_kept == (neighbours["cv_gain"] > 2.0 * neighbours["cv_gain_se"])
    if head_kept:
        assert min(fit["cv_nll"].values()) < fit["cv_nll_marginal"]
    else:
        assert fit["penalty"] is None
    if not head_kept and not neighbours_kept:  # the model is the marginal leaderboard
        assert metrics["val"]["p2l"]["nll"] == pytest.approx(metrics["val"]["marginal"]["nll"])
    model, _ = load_p2l(tmp_path / "model")
    # the recipe's full linear head
    assert model.info.model_list == models and model.info.head_rank is None
    assert model.info.head_hidden is None
    board = json.loads((tmp_path / "model/leaderboard.json").read_text())
    assert sorted(row["model"] for row in board["rows"]) == models


# ------------------------------------------------------------- a nonlinear planted signal

XOR_STRENGTH = 0.85


def _xor_votes(n: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """``coder`` vs ``writer`` only; ``coder`` is favoured (XOR_STRENGTH) when the prompt's
    two binary features agree, ``writer`` when they differ: an XOR of the features, which no
    affine function of them separates. Returns the votes and the features (+-1) per vote."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=(n, 2))
    rows = []
    for i, (x1, x2) in enumerate(x):
        favourite = "coder" if x1 * x2 > 0 else "writer"
        pair = ["coder", "writer"] if rng.random() < 0.5 else ["writer", "coder"]
        wins = rng.random() < XOR_STRENGTH
        winner = favourite if wins else ({"coder", "writer"} - {favourite}).pop()
        loser = ({"coder", "writer"} - {winner}).pop()
        words = f"{'red' if x1 > 0 else 'blue'} {'cat' if x2 > 0 else 'dog'} question"
        rows.append({
            "id": f"x{seed}-{i}", "prompt": [words],
            "model_a": pair[0], "model_b": pair[1],
            "winner": "model_a" if pair[0] == winner else "model_b",
            "labels": [MODELS.index(winner), MODELS.index(loser), 0],
            "tstamp": float(1_700_000_000 + i),
        })  # fmt: skip
    return pl.DataFrame(rows), x


def test_a_hidden_layer_head_learns_a_signal_a_linear_head_cannot(backbones, tmp_path,
                                                                   monkeypatch):
    """The frozen-backbone features are replaced by planted ones: the two binary features
    plus noise. The best affine map of balanced XOR features is a constant, so the linear
    head stays at the marginal leaderboard (closed form: ln 2 per vote for a fair coin),
    while a hidden-layer head approaches the truth's NLL, computed here from the planting
    rule and the validation votes."""
    data = tmp_path / "xor"
    data.mkdir()
    train, x_train = _xor_votes(1024, 0)
    val, x_val = _xor_votes(512, 1)
    train.write_parquet(data / "train.parquet")
    val.write_parquet(data / "val.parquet")
    (data / "models.json").write_text(json.dumps(MODELS))
    rng = np.random.default_rng(5)
    planted = {}
    for split, x in (("train", x_train), ("val", x_val)):
        features = 0.1 * rng.standard_normal((len(x), 32))
        features[:, :2] = x
        planted[split] = torch.tensor(features, dtype=torch.float32)

    def planted_features(self):
        for split, features in planted.items():
            assert len(self.token_ids[split]) == len(features)
        assert self.model.config.hidden_size == 32
        return planted

    monkeypatch.setattr(Trainer, "_compute_features", planted_features)
    settings = {"freeze_backbone": True, "pooling": "mean", "epochs": 12, "batch_size": 32,
                "head_lr": 1e-2, "lr": 1e-2, "eval_every": 16, "patience": 100}
    linear = _train(data, tmp_path / "linear", backbones["bert"], **settings)
    hidden = _train(data, tmp_path / "hidden", backbones["bert"], head_hidden=16, **settings)

    # the truth's NLL on these validation votes, and the fair coin's
    favourite_won = np.array([
        (MODELS[w] == "coder") == (x1 * x2 > 0)
        for (w, _, _), (x1, x2) in zip(val["labels"].to_list(), x_val, strict=True)
    ])  # fmt: skip
    truth = -np.where(favourite_won, np.log(XOR_STRENGTH), np.log(1 - XOR_STRENGTH)).mean()
    coin = math.log(2)
    assert truth < coin - 0.2  # the planted signal is strong
    marginal = linear.metrics["val"]["marginal"]["nll"]
    assert marginal == pytest.approx(coin, abs=0.01)
    assert linear.metrics["val"]["p2l"]["nll"] > coin - 0.02
    assert hidden.metrics["val"]["p2l"]["nll"] < truth + 0.04
    config = json.loads((tmp_path / "hidden" / "training_config.json").read_text())
    assert config["head_hidden"] == 16 and config["head_activation"] == "gelu"
    assert "head.head.3.weight" in _weights(tmp_path / "hidden")


# ------------------------------------------------------------- neighbourhoods at scale


def test_neighbourhoods_are_skipped_past_their_cost_cap(backbones, data, tmp_path, monkeypatch):
    """The neighbourhoods' cross-validation costs about votes x models^2: at the cap it runs,
    one past it the linear head is kept alone and the run says why."""
    from p2l_cli.reporting import Recorder

    votes = pl.read_parquet(data / "train.parquet").height
    work = votes * len(json.loads((data / "models.json").read_text())) ** 2
    settings = {"freeze_backbone": True, "head_solver": "ridge-cv", "neighbours": True,
                "cv_folds": 3}  # fmt: skip
    for cap, runs in ((work, True), (work - 1, False)):
        monkeypatch.setattr(train_module, "NEIGHBOUR_MAX_WORK", cap)
        recorder = Recorder()
        result = _train(data, tmp_path / f"model-{cap}", backbones["bert"],
                        RunOptions(reporter=recorder), **settings)  # fmt: skip
        assert ("neighbours" in result.metrics["head_fit"]) == runs
        skipped = [m for m in recorder.messages() if m.startswith("neighbourhoods: skipped")]
        assert bool(skipped) != runs
        if skipped:
            assert f"{votes:,} training votes among {len(MODELS)} models" in skipped[0]


# ------------------------------------------------------------- head fit threads


def test_ridge_fits_share_one_thread_per_core(backbones, data, tmp_path, monkeypatch):
    """`p2l train` runs its candidate head fits side by side on one shared pool of threads
    (one per core) for their folds; on one core there is no pool. The trained head is the
    same either way, and each candidate reports its result as it finishes."""
    from p2l_cli.reporting import Recorder

    settings = {"freeze_backbone": True, "head_solver": "ridge-cv", "cv_folds": 3,
                "prompt_features": True}  # fmt: skip
    fit = train_module.fit_linear_head
    pools = []

    def spy(*args, **kwargs):
        pools.append(kwargs["pool"])
        return fit(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit_linear_head", spy)
    heads = {}
    for cores in (6, 1):
        monkeypatch.setattr(train_module, "available_cores", lambda cores=cores: cores)
        pools.clear()
        recorder = Recorder()
        result = _train(data, tmp_path / f"cores-{cores}", backbones["bert"],
                        RunOptions(reporter=recorder), **settings)  # fmt: skip
        assert len(pools) == 3  # two descriptor weights, then the length steps left out
        # one progress line per candidate, with the held-out NLL metrics.json records
        lines = [m for m in recorder.messages() if m.startswith("  candidate ")]
        assert len(lines) == 3
        head_fit = result.metrics["head_fit"]
        for weight, nll in head_fit["cv_nll_by_descriptor_weight"].items():
            line = [m for m in lines if f"descriptor weight {weight}:" in m and "no length" not in m]
            assert len(line) == 1 and f"{nll:.4f}" in line[0]  # its best held-out NLL
        assert sum("no length steps" in m for m in lines) == 1
        if cores == 1:
            assert pools == [None, None, None]
        else:
            assert pools[0] is not None and all(pool is pools[0] for pool in pools)
            assert pools[0]._max_workers == 6
        heads[cores] = _weights(tmp_path / f"cores-{cores}")
    for name, value in heads[6].items():
        assert torch.equal(value, heads[1][name]), name
