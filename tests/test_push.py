"""`p2l push`: the real huggingface_hub client against a fake Hub on 127.0.0.1 (tests/fake_hub.py).

What the Hub receives is checked from the server's side: the files and their bytes, the card's
metadata and tables, what was left out, the private flag, and the error paths (401, 403, 5xx,
connection refused, no token, offline mode).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from conftest import run_cli, run_p2l
from fake_hub import FakeHub
from markdown_it import MarkdownIt
from safetensors.torch import save_file

from p2l_cli import hub
from p2l_cli.errors import UserError
from p2l_cli.io import write_table

# huggingface_hub's own LFS upload passes data= to httpx2, which warns; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

MODELS = ["alpha-7b", "beta|chat", "gamma_v2*", "delta [x]"]
SECRET = "hf_" + "S3cr3t" * 6  # looks like a real token
METRICS = {
    "val": {"p2l": {"nll": 0.6123, "accuracy": 0.655, "brier": 0.2104, "n": 400},
            "marginal": {"nll": 0.6581, "accuracy": 0.6, "brier": 0.2302, "n": 400}},
    "best_step": 30, "steps": 50, "epochs": 2.0, "train_votes": 1600, "val_votes": 400,
}  # fmt: skip
LEADERBOARD = {"family": "bt", "rows": [
    {"rank": 1, "model": "beta|chat", "theta": 0.31, "score": 1053.8},
    {"rank": 2, "model": "alpha-7b", "theta": 0.02, "score": 1003.5},
    {"rank": 3, "model": "delta [x]", "theta": -0.1, "score": 982.6},
    {"rank": 4, "model": "gamma_v2*", "theta": -0.23, "score": 960.1},
]}  # fmt: skip
UPLOADED = {"README.md", "leaderboard.png", "config.json", "model.safetensors", "model_list.json",
            "training_config.json", "metrics.json", "leaderboard.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"}  # fmt: skip
TOKENIZER = {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"[UNK]": 0},
                                         "unk_token": "[UNK]"}}  # fmt: skip


def _weights(path: Path, num_models: int, rk: bool = False) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "model.embeddings.weight": torch.randn(16, 8, generator=generator),
        "head.head.weight": torch.randn(num_models, 8, generator=generator),
        "head.head.bias": torch.zeros(num_models),
    }
    if rk:
        tensors |= {"head.eta_head.weight": torch.zeros(1, 8), "head.eta_head.bias": torch.ones(1)}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A p2l train output folder plus what must never be uploaded."""
    folder = tmp_path / "model"
    folder.mkdir()
    _weights(folder / "model.safetensors", len(MODELS))
    _write_json(folder / "config.json", {"model_type": "bert", "architectures": ["P2LModel"],
                                         "hidden_size": 8})  # fmt: skip
    _write_json(folder / "model_list.json", MODELS)
    _write_json(folder / "tokenizer.json", TOKENIZER)
    _write_json(folder / "tokenizer_config.json", {"model_max_length": 64})
    _write_json(folder / "special_tokens_map.json", {"cls_token": "[CLS]"})
    _write_json(folder / "training_config.json", {
        "backbone": "minilm", "model_type": "bert", "head_type": "bt", "loss_type": "bt",
        "pooling": "first", "max_length": 64, "head_rank": 2, "learning_rate": 0.001,
        "batch_size": 16, "chat_template": None, "p2l_version": "0.1.0.dev0"})  # fmt: skip
    _write_json(folder / "metrics.json", METRICS)
    _write_json(folder / "leaderboard.json", LEADERBOARD)
    (folder / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    (folder / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.pt").write_bytes(b"checkpoint optimizer state")
    (folder / "checkpoints" / "rng_state.pth").write_bytes(b"rng")
    (folder / "checkpoints" / "last").mkdir()  # what Accelerate's save_state writes
    (folder / "checkpoints" / "last" / "model.safetensors").write_bytes(b"checkpoint weights")
    (folder / "checkpoints" / "last" / "trainer_state.json").write_text('{"step": 30}')
    (folder / "checkpoints" / "last" / "optimizer.bin").write_bytes(b"pickled optimizer")
    (folder / "checkpoints" / "last" / "random_states_0.pkl").write_bytes(b"pickled rng")
    (folder / "checkpoints" / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "hub.cpython-311.pyc").write_bytes(b"\0cache")
    (folder / "feature_cache").mkdir()
    (folder / "feature_cache" / "train.npy").write_bytes(b"\0features")
    (folder / "wandb_settings.json").write_text(json.dumps({"api": SECRET}))
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / "README.md").write_text("my own notes\n")
    return folder


@pytest.fixture
def fake_hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture
def in_process_hub(fake_hub, monkeypatch, tmp_path):
    """The in-process client: online, no Xet (so that LFS files take the basic LFS path), no
    saved login; the token goes in with --token."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return fake_hub


def _env(fake_hub: FakeHub, tmp_path: Path, token: str | None) -> dict:
    env = {"HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "HF_TOKEN_PATH": str(tmp_path / "hf-home" / "token"), "HF_TOKEN": token or "",
           "HUGGING_FACE_HUB_TOKEN": ""}  # fmt: skip
    return env


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _front_matter(card: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", card, re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def _check_tables_are_well_formed(body: str) -> int:
    """Every table row has as many cells as its header; returns the number of tables."""
    tables, header = 0, None
    for line in body.splitlines():
        if line.startswith("|"):
            if header is None:
                header, tables = _unescaped_pipes(line), tables + 1
            assert _unescaped_pipes(line) == header, line
        else:
            header = None
    return tables


def _tables(card: str) -> dict[str, list[list[str]]]:
    """The card's tables as parsed by a CommonMark + GFM-tables parser, keyed by their first
    header cell; cells are the rendered plain text."""
    tokens = MarkdownIt("commonmark").enable("table").parse(card)
    tables, rows, row = {}, None, None
    for token in tokens:
        if token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append("".join(child.content for child in token.children or []))
        elif token.type == "tr_close":
            rows.append(row)
            row = None
        elif token.type == "table_close":
            tables[rows[0][0]] = rows
    return tables


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------ file choice


def test_only_what_belongs_to_a_model_is_selected(model_dir):
    files, skipped = hub.select_model_files(model_dir)
    assert {f.path_in_repo for f in files} == UPLOADED - {"README.md", "leaderboard.png"}
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {".env", "optimizer.pt", "checkpoints/", "__pycache__/",
                            "feature_cache/", "wandb_settings.json", "pytorch_model.bin",
                            "README.md"}  # fmt: skip
    assert "secret" in reasons[".env"]
    assert "token" in reasons["wandb_settings.json"]
    assert "--include-checkpoints" in reasons["checkpoints/"]

    files, skipped = hub.select_model_files(model_dir, include_checkpoints=True)
    chosen = {f.path_in_repo for f in files}
    assert {"checkpoints/last/model.safetensors", "checkpoints/last/trainer_state.json"} <= chosen
    assert not {".env", "checkpoints/.env", "wandb_settings.json"} & chosen


def test_pickles_are_never_uploaded_even_with_checkpoints(model_dir):
    pickles = {"optimizer.pt", "pytorch_model.bin", "checkpoints/optimizer.pt",
               "checkpoints/rng_state.pth", "checkpoints/last/optimizer.bin",
               "checkpoints/last/random_states_0.pkl"}  # fmt: skip
    files, skipped = hub.select_model_files(model_dir, include_checkpoints=True)
    assert not pickles & {f.path_in_repo for f in files}
    reasons = {s.path: s.reason for s in skipped}
    assert all("pickle" in reasons[p] and "never" in reasons[p] for p in pickles), reasons
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--dry-run",
                     "--include-checkpoints")  # fmt: skip
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.stderr.splitlines() if "checkpoints/last/optimizer.bin" in x]
    assert "pickle file (never uploaded" in line


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "added_tokens.json",
                                  "special_tokens_map.json", "vocab.txt", "merges.txt"])
def test_tokenizer_files_are_not_mistaken_for_secrets(name):
    assert hub._file_skip_reason(Path(name), include_checkpoints=False) is None


@pytest.mark.parametrize("name", [".env", ".env.local", "prod.env", "token", "hf_token.txt",
                                  "api_key.json", "credentials.json", "secrets.yaml", "id_rsa"])
def test_secret_names_are_never_selected(name):
    for include in (False, True):
        reason = hub._file_skip_reason(Path(name), include_checkpoints=include)
        assert reason and "secret" in reason


def test_a_token_in_a_file_the_model_needs_stops_the_push(model_dir):
    config = json.loads((model_dir / "training_config.json").read_text())
    _write_json(model_dir / "training_config.json", {**config, "hub_token": SECRET})
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--dry-run")
    assert result.exit_code == 2
    assert "training_config.json" in result.stderr and "token" in result.stderr


# ---------------------------------------------------------------------------------- cards


def test_model_card_metadata_tables_and_numbers(model_dir):
    upload = hub.build_model_upload(model_dir, "alice/p2l-minilm", license="apache-2.0")
    meta, body = _front_matter(upload.card)
    assert meta["library_name"] == "p2l"
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"p2l", "prompt-to-leaderboard"} <= set(meta["tags"])
    assert _check_tables_are_well_formed(body) == 5

    tables = _tables(upload.card)
    board = tables["Rank"]
    assert [row[1] for row in board[1:]] == [r["model"] for r in LEADERBOARD["rows"]]
    assert [float(row[2]) for row in board[1:]] == [r["score"] for r in LEADERBOARD["rows"]]
    assert [row[1] for row in tables["Index"][1:]] == MODELS

    metrics = {row[0].split(" (")[0]: row[1:] for row in tables["Metric"][1:]}
    p2l, marginal = METRICS["val"]["p2l"], METRICS["val"]["marginal"]
    expected_gain = {"Negative log-likelihood": marginal["nll"] - p2l["nll"],
                     "Accuracy": p2l["accuracy"] - marginal["accuracy"],
                     "Brier score": marginal["brier"] - p2l["brier"]}  # fmt: skip
    for name, gain in expected_gain.items():
        assert float(metrics[name][2]) == pytest.approx(gain, abs=5e-5)
    assert float(metrics["Accuracy"][0]) == pytest.approx(p2l["accuracy"], abs=5e-5)

    config = {row[0]: row[1] for row in tables["Parameter"][1:]}
    assert config["learning_rate"] == "0.001" and config["loss_type"] == "bt"
    facts = {row[0]: row[1] for row in tables["Property"][1:]}
    assert facts["Max length"] == "64 tokens (truncated from the left)"
    assert "![The aggregated leaderboard](leaderboard.png)" in body
    assert "p2l predict alice/p2l-minilm" in body and "p2l route" in body
    png = next(f for f in upload.files if f.path_in_repo == "leaderboard.png")
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_card_says_when_the_descriptors_count_the_whole_prompt(model_dir):
    config = json.loads((model_dir / "training_config.json").read_text())
    _write_json(model_dir / "training_config.json", {**config, "prompt_features": True,
                                                     "untruncated_features": True})  # fmt: skip
    card = hub.build_model_upload(model_dir, "alice/p2l-minilm").card
    facts = {row[0]: row[1] for row in _tables(card)["Property"][1:]}
    assert facts["Max length"] == (
        "64 tokens (truncated from the left; the prompt descriptors count every token)"
    )


def test_card_for_a_published_p2l_checkpoint(tmp_path):
    """The lmarena-ai layout: training_config.json with model_type/head_type/loss_type and
    pretrain_model_name, no metrics or leaderboard; many models."""
    folder = tmp_path / "p2l-published"
    folder.mkdir()
    models = [f"model-{i:03d}" for i in range(25)] + ["odd`name|with*marks"]
    _weights(folder / "model.safetensors", len(models), rk=True)
    _write_json(folder / "config.json", {"model_type": "qwen2", "architectures": ["P2LModel"]})
    _write_json(folder / "model_list.json", models)
    _write_json(folder / "tokenizer.json", TOKENIZER)
    template = "{% for m in messages %}```{{ m['content'] }}```\n{% endfor %}"
    _write_json(folder / "training_config.json", {
        "proj_name": "Qwen2.5-1.5B-bag", "learning_rate": 8e-6, "batch_size": 4,
        "pretrain_model_name": "Qwen/Qwen2.5-1.5B-Instruct", "model_type": "qwen2",
        "head_type": "rk", "loss_type": "bag", "chat_template": template})  # fmt: skip
    upload = hub.build_model_upload(folder, "someone/p2l-qwen")
    meta, body = _front_matter(upload.card)
    assert meta["base_model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert meta["license"] == "unknown"
    assert "qwen2" in meta["tags"]
    assert "Validation metrics" not in body and "leaderboard.png" not in body
    assert _check_tables_are_well_formed(body) == 3
    tables = _tables(upload.card)
    assert [row[1] for row in tables["Index"][1:]] == models
    summary = {row[0]: row[1] for row in tables["Property"][1:]}
    assert summary["Loss"].startswith("bag: grounded Rao-Kupper")
    assert summary["Head"].startswith("rk:")
    fences = [t for t in MarkdownIt("commonmark").parse(upload.card) if t.type == "fence"]
    assert template in [t.content.rstrip("\n") for t in fences]
    assert "<details>" in body  # 26 models are folded away
    assert {f.path_in_repo for f in upload.files} == {"README.md", "config.json",
                                                      "model.safetensors", "model_list.json",
                                                      "tokenizer.json",
                                                      "training_config.json"}  # fmt: skip


@pytest.mark.parametrize("broken", ["no-model-list", "no-head", "a-file"])
def test_not_a_p2l_model_is_exit_2(model_dir, broken):
    target = model_dir
    if broken == "no-model-list":
        (model_dir / "model_list.json").unlink()
    elif broken == "no-head":
        save_file({"encoder.weight": torch.zeros(2, 2)}, str(model_dir / "model.safetensors"))
    else:
        target = model_dir / "config.json"
    result = run_cli("push", target, "--repo-id", "alice/p2l", "--dry-run")
    assert result.exit_code == 2, result.output
    assert "not a P2L model folder" in result.stderr


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_truncated_file_is_not_pushed(model_dir, name):
    path = model_dir / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--dry-run")
    assert result.exit_code == 2, result.output
    [line] = _error_lines(result.stderr)
    assert str(path) in line


def test_dry_run_lists_files_prints_the_card_and_sends_nothing(model_dir, in_process_hub):
    before = _tree(model_dir)
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--dry-run",
                     "--endpoint", in_process_hub.url)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("---\nlibrary_name: p2l\n")
    assert "model.safetensors" in result.stderr and "would upload" in result.stderr
    assert ".env" in result.stderr and "secret" in result.stderr
    assert in_process_hub.requests == []
    assert _tree(model_dir) == before


# ------------------------------------------------------------------------------- pushing


@pytest.mark.slow
def test_push_end_to_end(model_dir, fake_hub, tmp_path):
    before = _tree(model_dir)
    proc = run_p2l("push", model_dir, "--repo-id", "alice/p2l-minilm", "--private",
                   "--commit-message", "First release", "--license", "apache-2.0",
                   env=_env(fake_hub, tmp_path, fake_hub.token), timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    repo = fake_hub.repo("alice/p2l-minilm")
    assert repo.private is True
    assert len(repo.commits) == 1
    commit = repo.commits[0]
    assert commit.summary == "First release" and commit.revision == "main"
    assert set(commit.files) == UPLOADED
    for name in UPLOADED - {"README.md", "leaderboard.png"}:
        assert commit.files[name] == (model_dir / name).read_bytes(), name
    assert commit.files["leaderboard.png"].startswith(b"\x89PNG")
    assert len(fake_hub.called("lfs_upload")) == 2  # the weights and the plot went by LFS

    card = commit.files["README.md"].decode()
    meta, body = _front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "p2l"
    assert fake_hub.validated_yaml[0]["content"] == card
    assert _check_tables_are_well_formed(body) == 5
    create = json.loads(fake_hub.called("create_repo")[0].body)
    assert (create["organization"], create["name"], create["visibility"]) == (
        "alice", "p2l-minilm", "private")
    assert {r.authorization for r in fake_hub.requests if r.endpoint != "lfs_upload"} == {
        f"Bearer {fake_hub.token}"}
    assert not any(SECRET.encode() in r.body for r in fake_hub.requests)
    assert _tree(model_dir) == before  # nothing written locally, README.md untouched
    assert b"pushed 11 files" in proc.stderr


def test_push_without_a_token_is_exit_2_and_sends_nothing(model_dir, fake_hub, tmp_path):
    proc = run_p2l("push", model_dir, "--repo-id", "alice/p2l",
                   env=_env(fake_hub, tmp_path, None), timeout=120)  # fmt: skip
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "hf auth login" in stderr and "HF_TOKEN" in stderr
    assert fake_hub.requests == []


@pytest.mark.slow
def test_push_to_someone_elses_repo_is_exit_2(model_dir, fake_hub, tmp_path):
    """Uses the saved login (the token file), not HF_TOKEN."""
    fake_hub.add_repo("bob/p2l", owner="bob")
    env = _env(fake_hub, tmp_path, None)
    Path(env["HF_TOKEN_PATH"]).parent.mkdir(parents=True)
    Path(env["HF_TOKEN_PATH"]).write_text(fake_hub.token)
    proc = run_p2l("push", model_dir, "--repo-id", "bob/p2l", env=env, timeout=120)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    [line] = _error_lines(stderr)
    assert "no write access to bob/p2l" in line and "403" in line
    assert fake_hub.repo("bob/p2l").commits == []
    assert "Traceback" not in stderr


def test_rejected_token_is_exit_2(model_dir, in_process_hub):
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--token", "hf_wrong",
                     "--endpoint", in_process_hub.url)  # fmt: skip
    assert result.exit_code == 2, result.output
    [line] = _error_lines(result.stderr)
    assert "rejected the token" in line and "401" in line
    assert in_process_hub.repos == {}


def test_hub_server_error_is_one_line_and_exit_1(model_dir, in_process_hub):
    in_process_hub.fail("commit", 500, "Internal Error - the commit could not be stored")
    before = _tree(model_dir)
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--token",
                     in_process_hub.token, "--endpoint", in_process_hub.url)  # fmt: skip
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result.stderr)
    assert "HubError" in line and "500" in line
    assert "the commit could not be stored" in line
    assert in_process_hub.repo("alice/p2l").commits == []
    assert _tree(model_dir) == before


def test_unreachable_hub_is_exit_1(model_dir, in_process_hub):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--token",
                     in_process_hub.token, "--endpoint", f"http://127.0.0.1:{port}")  # fmt: skip
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result.stderr)
    assert "cannot reach the Hub" in line and str(port) in line


def test_offline_mode_is_refused(model_dir, in_process_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--token",
                     in_process_hub.token, "--endpoint", in_process_hub.url)  # fmt: skip
    assert result.exit_code == 2
    assert "HF_HUB_OFFLINE" in result.stderr
    assert in_process_hub.requests == []


def test_a_license_the_hub_rejects_is_exit_2(model_dir, in_process_hub):
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--license", "made-up",
                     "--token", in_process_hub.token, "--endpoint", in_process_hub.url)
    assert result.exit_code == 2, result.output
    assert "made-up" in result.stderr and "--license" in result.stderr
    assert in_process_hub.repo("alice/p2l").commits == []


def test_branch_and_checkpoints(model_dir, in_process_hub):
    result = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--revision", "dev",
                     "--include-checkpoints", "--token", in_process_hub.token,
                     "--endpoint", in_process_hub.url)  # fmt: skip
    assert result.exit_code == 0, result.output
    repo = in_process_hub.repo("alice/p2l")
    assert repo.private is False and "dev" in repo.branches
    [commit] = repo.commits
    assert commit.revision == "dev"
    assert commit.files["checkpoints/last/model.safetensors"] == b"checkpoint weights"
    assert not {"optimizer.pt", "checkpoints/optimizer.pt",
                "checkpoints/last/optimizer.bin"} & set(commit.files)  # pickles never
    assert not {".env", "checkpoints/.env", "wandb_settings.json"} & set(commit.files)

    # The repo exists now (the Hub answers 409 to its creation): a second push is a new commit.
    again = run_cli("push", model_dir, "--repo-id", "alice/p2l", "--token",
                    in_process_hub.token, "--endpoint", in_process_hub.url)  # fmt: skip
    assert again.exit_code == 0, again.output
    assert [c.revision for c in repo.commits] == ["dev", "main"]
    assert "checkpoints/last/model.safetensors" not in repo.commits[1].files


def test_push_predictions_as_a_dataset(tmp_path, in_process_hub):
    frame = pl.DataFrame({"id": ["a", "b", "c"], "prompt": [["hi"], ["sort a list"], ["x|y"]],
                          "coefs": [[0.1, 0.2, -0.3, 0.0]] * 3})  # fmt: skip
    path = tmp_path / "predictions.parquet"
    write_table(frame, path, meta={"models": MODELS, "head": "bt", "loss": "bt"})
    result = run_cli("push", path, "--repo-id", "alice/p2l-preds", "--repo-type", "dataset",
                     "--token", in_process_hub.token, "--endpoint", in_process_hub.url)
    assert result.exit_code == 0, result.output
    [commit] = in_process_hub.repo("alice/p2l-preds", "dataset").commits
    assert set(commit.files) == {"README.md", "data/predictions.parquet"}
    assert commit.files["data/predictions.parquet"] == path.read_bytes()
    meta, body = _front_matter(commit.files["README.md"].decode())
    assert meta["configs"][0]["data_files"] == [{"split": "train",
                                                 "path": "data/predictions.parquet"}]
    assert "predictions" in meta["tags"]
    _check_tables_are_well_formed(body)
    tables = _tables(commit.files["README.md"].decode())
    assert [row[1] for row in tables["Index"][1:]] == MODELS
    assert [row[0] for row in tables["Column"][1:]] == ["id", "prompt", "coefs"]


def test_battles_folder_as_a_dataset(tmp_path, in_process_hub):
    battles = pl.DataFrame({
        "id": ["1", "2", "3"], "prompt": [["a"], ["b"], ["c"]],
        "model_a": ["x", "y", "x"], "model_b": ["y", "z", "z"],
        "winner": ["model_a", "tie", "model_b"], "labels": [[0, 1, 0], [1, 2, 1], [2, 0, 0]]})
    data = tmp_path / "data"
    data.mkdir()
    write_table(battles, data / "train.parquet")
    write_table(battles.head(1), data / "val.parquet")
    _write_json(data / "models.json", ["x", "y", "z"])
    (data / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    result = run_cli("push", data, "--repo-id", "alice/battles", "--repo-type", "dataset",
                     "--token", in_process_hub.token, "--endpoint", in_process_hub.url)
    assert result.exit_code == 0, result.output
    [commit] = in_process_hub.repo("alice/battles", "dataset").commits
    assert set(commit.files) == {"README.md", "data/train.parquet", "data/val.parquet",
                                 "data/models.json"}  # fmt: skip
    meta, _ = _front_matter(commit.files["README.md"].decode())
    assert [f["split"] for f in meta["configs"][0]["data_files"]] == ["train", "validation"]
    assert [row[2] for row in _tables(commit.files["README.md"].decode())["Split"][1:]] == ["3", "1"]


def test_a_model_folder_is_not_a_dataset(model_dir):
    with pytest.raises(UserError, match="no Parquet file"):
        hub.build_dataset_upload(model_dir, "alice/x")


# ------------------------------------------------------------- a folder that p2l itself wrote


@pytest.fixture(scope="module")
def saved_low_rank_model(tmp_path_factory) -> Path:
    """A model folder written by p2l's own save_p2l: tiny BERT backbone, low-rank head (the
    minilm-cpu recipe's kind), so the weights hold head.head.0/1.* and no head.head.weight."""
    from tiny import make_backbone

    from p2l_cli.model import build_p2l, save_p2l

    folder = tmp_path_factory.mktemp("saved")
    backbone = make_backbone("bert", folder / "backbone", seed=2)
    model, tokenizer = build_p2l(str(backbone), MODELS, head_rank=2, max_length=64)
    save_p2l(model, tokenizer, folder / "model", training_config={"lr": 0.001})
    _write_json(folder / "model" / "metrics.json", METRICS)
    return folder / "model"


def test_a_low_rank_model_saved_by_p2l_is_pushed(saved_low_rank_model, in_process_hub):
    from safetensors import safe_open

    with safe_open(str(saved_low_rank_model / "model.safetensors"), "pt") as weights:
        head_keys = {k for k in weights.keys() if k.startswith("head.")}  # noqa: SIM118
    assert "head.head.weight" not in head_keys and "head.head.1.weight" in head_keys
    before = _tree(saved_low_rank_model)
    result = run_cli("push", saved_low_rank_model, "--repo-id", "alice/p2l-low-rank", "--token",
                     in_process_hub.token, "--endpoint", in_process_hub.url)  # fmt: skip
    assert result.exit_code == 0, result.output
    [commit] = in_process_hub.repo("alice/p2l-low-rank").commits
    assert commit.files["model.safetensors"] == (
        saved_low_rank_model / "model.safetensors").read_bytes()
    assert json.loads(commit.files["model_list.json"]) == sorted(MODELS)
    card = commit.files["README.md"].decode()
    meta, body = _front_matter(card)
    assert meta["library_name"] == "p2l" and "base_model" not in meta  # a local backbone
    summary = {row[0]: row[1] for row in _tables(card)["Property"][1:]}
    assert summary["Head"] == "bt: one coefficient per model, low rank 2"
    assert summary["Models"] == str(len(MODELS))
    _check_tables_are_well_formed(body)
    assert set(_tables(card)) == {"Property", "Metric", "Index", "Parameter"}  # no leaderboard
    assert _tree(saved_low_rank_model) == before


def test_a_head_that_disagrees_with_the_model_list_is_exit_2(saved_low_rank_model, tmp_path):
    import shutil

    folder = tmp_path / "inconsistent"
    shutil.copytree(saved_low_rank_model, folder)
    _write_json(folder / "model_list.json", [*MODELS, "one-too-many"])
    result = run_cli("push", folder, "--repo-id", "alice/p2l", "--dry-run")
    assert result.exit_code == 2, result.output
    [line] = _error_lines(result.stderr)
    assert "model_list.json names 5 models" in line and "head.head.1.weight has 4 outputs" in line


def test_the_cli_starts_without_hub_torch_scipy_or_polars():
    """Every command but push works offline, and `p2l --help` stays fast: importing the CLI
    loads neither the Hub client nor the heavy numeric libraries."""
    import subprocess
    import sys

    heavy = ("huggingface_hub", "torch", "scipy", "transformers", "polars", "pyarrow", "numpy")
    code = ("import sys, p2l_cli.cli; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert proc.stdout.decode().strip() == ""


def test_the_card_does_not_reveal_local_folders(model_dir):
    config = json.loads((model_dir / "training_config.json").read_text())
    config.update(data="/home/alice/secret-project/arena-data",
                  backbone="/home/alice/models/qwen-finetune", cache_dir="~/scratch/features")
    _write_json(model_dir / "training_config.json", config)
    card = hub.build_model_upload(model_dir, "alice/p2l-minilm").card
    table = {row[0]: row[1] for row in _tables(card)["Parameter"][1:]}
    assert table["data"] == "arena-data"
    assert table["backbone"] == "qwen-finetune"
    assert table["cache_dir"] == "features"
    assert "/home/alice" not in card and "scratch" not in card
    assert table["loss_type"] == "bt"  # other values as they are
