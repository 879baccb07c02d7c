"""`p2l predict`: coefficients checked against a hand-written forward pass, batching and
order invariance, every input shape and format, streaming through real pipes, bad input."""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, run_cli, run_p2l
from safetensors.torch import load_file
from tiny import CORPUS, make_backbone
from transformers import AutoConfig, AutoModel, AutoTokenizer

from p2l_cli.errors import UserError
from p2l_cli.io import read_table_meta
from p2l_cli.model import build_p2l, save_p2l
from p2l_cli.predict import (
    PredictOptions,
    Workers,
    encode,
    find_prompt_column,
    load_for_inference,
    merge_parts,
    part_path,
    plan_batches,
    predict_chunks,
    predict_file,
    predict_frame,
    predict_prompts,
    read_chunks,
    resolve_device,
    resolve_dtype,
)

MODELS = ["claude-3", "gpt-4o", "llama-3-8b", "mistral-7b", "qwen-2"]
TOL = 1e-5
MAX_LENGTH = 160


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Saved P2L models: a Qwen2 decoder with a bt head, a Llama decoder with an rk head, a
    BERT encoder with an rk head (grk loss)."""
    root = tmp_path_factory.mktemp("predict")
    specs = {"qwen2": ("qwen2", "bt", "bt"), "llama": ("llama", "rk", "rk"),
             "bert": ("bert", "rk", "grk")}  # fmt: skip
    out = {}
    for name, (kind, head, loss) in specs.items():
        backbone = make_backbone(kind, root / f"backbone-{name}", seed=len(name))
        model, tokenizer = build_p2l(
            str(backbone), MODELS, head_type=head, loss_type=loss, max_length=MAX_LENGTH
        )
        torch.manual_seed(7)
        model.head.initialise("normal", std=0.5)  # visible, prompt-dependent coefficients
        out[name] = save_p2l(model, tokenizer, root / f"p2l-{name}")
    return out


@pytest.fixture(scope="module")
def loaded(folders):
    return {name: load_for_inference(folder, "cpu", "float32") for name, folder in folders.items()}


def skewed_prompts(n: int, seed: int = 0) -> list[list[str]]:
    """Mostly short prompts, a few long ones, some with several turns."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        words = rng.choice([1, 2, 3]) if rng.random() < 0.8 else rng.choice([8, 15])
        turns = [" ".join(rng.choice(CORPUS) for _ in range(words))]
        if rng.random() < 0.25:
            turns.append(rng.choice(CORPUS))
        prompts.append(turns)
    return prompts


# ----------------------------------------------------------------------- the forward pass


def hand_forward(folder: Path, prompts: list[list[str]], max_length: int = MAX_LENGTH):
    """The P2L forward pass written out: weights from the safetensors file, the prompt cut
    from the left to ``max_length`` tokens, one unpadded sequence at a time, the hidden state
    at the cls token (decoders) or the first token (encoders), then ``W h + b`` by hand."""
    tensors = load_file(str(folder / "model.safetensors"))
    config = AutoConfig.from_pretrained(str(folder))
    backbone = AutoModel.from_config(config)
    own = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = backbone.load_state_dict(own, strict=False)
    assert not unexpected and all("rotary" in k or "position_ids" in k for k in missing)
    backbone.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoder = config.model_type == "bert"
    weight, bias = tensors["head.head.weight"].double(), tensors["head.head.bias"].double()
    eta_head = tensors.get("head.eta_head.weight")
    coefs, etas = [], []
    for turns in prompts:
        if encoder:
            body = tokenizer("\n\n".join(turns), add_special_tokens=False)["input_ids"]
            ids = [
                tokenizer.cls_token_id,
                *body[max(0, len(body) - (max_length - 2)) :],
                tokenizer.sep_token_id,
            ]
        else:
            text = "".join(f"<|im_start|>user\n{turn}<|im_end|>\n" for turn in turns)
            body = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = [
                *body[max(0, len(body) - (max_length - 1)) :],
                tokenizer.convert_tokens_to_ids("<|cls|>"),
            ]
        with torch.no_grad():
            hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]
        pooled = (hidden[0] if encoder else hidden[-1]).double()
        coefs.append((weight @ pooled + bias).numpy())
        if eta_head is not None:
            etas.append(float(eta_head.double()[0] @ pooled + tensors["head.eta_head.bias"][0]))
    return np.array(coefs), (np.array(etas) if eta_head is not None else None)


@pytest.mark.parametrize("name", ["qwen2", "llama", "bert"])
def test_coefficients_equal_a_hand_written_forward_pass(folders, loaded, name):
    prompts = skewed_prompts(12, seed=1)
    expected_coefs, expected_eta = hand_forward(folders[name], prompts)
    model, tokenizer = loaded[name]
    frame = predict_frame(model, tokenizer, pl.DataFrame({"prompt": prompts}), batch_tokens=200)
    coefs = np.array(frame["coefs"].to_list())
    assert coefs.shape == (12, len(MODELS))
    lengths = [len(ids) for ids in encode(model, tokenizer, prompts)]
    assert max(lengths) == MAX_LENGTH and min(lengths) < MAX_LENGTH / 2  # some cut, some not
    assert np.abs(coefs - expected_coefs).max() <= TOL
    assert np.abs(coefs).max() > 0.05  # the head is not trivially zero
    if expected_eta is None:
        assert "eta" not in frame.columns
    else:
        assert np.abs(frame["eta"].to_numpy() - expected_eta).max() <= TOL


@pytest.mark.parametrize("name", ["qwen2", "bert"])
def test_coefficients_do_not_depend_on_batching_or_order(loaded, name):
    model, tokenizer = loaded[name]
    prompts = skewed_prompts(40, seed=2)
    alone, alone_eta = predict_prompts(model, tokenizer, prompts, batch_tokens=1)
    for budget, max_batch in ((10**6, 256), (300, 7), (64, 3)):
        coefs, eta = predict_prompts(
            model, tokenizer, prompts, batch_tokens=budget, max_batch_size=max_batch
        )
        assert np.abs(coefs - alone).max() <= TOL
        if eta is not None:
            assert np.abs(eta - alone_eta).max() <= TOL
    order = np.random.default_rng(0).permutation(len(prompts))
    shuffled, shuffled_eta = predict_prompts(
        model, tokenizer, [prompts[i] for i in order], batch_tokens=500
    )
    assert np.abs(shuffled - alone[order]).max() <= TOL
    if alone_eta is not None:
        assert np.abs(shuffled_eta - alone_eta[order]).max() <= TOL


def test_batches_follow_the_token_budget():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 120, size=300)
    lengths[[5, 77]] = [900, 400]  # longer than the budget: alone
    batches = plan_batches(lengths, batch_tokens=512, max_batch_size=16)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(300))
    for batch in batches:
        padded = len(batch) * lengths[batch].max()
        assert len(batch) <= 16
        assert padded <= 512 or len(batch) == 1
        assert lengths[batch].sum() >= 0.75 * padded or len(batch) == 1
    # longest first, so each batch is padded only to its own longest row
    assert [lengths[b].max() for b in batches] == sorted(
        (lengths[b].max() for b in batches), reverse=True
    )
    assert plan_batches([], 512, 16) == []
    # two long prompts do not pad the short ones; the budget splits the short ones
    plan = plan_batches([10, 100, 10, 10, 100, 10, 10], batch_tokens=40, max_batch_size=8)
    assert [b.tolist() for b in plan] == [[1], [4], [0, 2, 3, 5], [6]]
    plan = plan_batches([10, 100, 10, 10, 100, 10, 10], batch_tokens=1000, max_batch_size=8)
    assert [b.tolist() for b in plan] == [[1, 4], [0, 2, 3, 5, 6]]


def test_bfloat16_stays_close_to_float32(folders, loaded):
    prompts = skewed_prompts(6, seed=4)
    model, tokenizer = loaded["qwen2"]
    exact, _ = predict_prompts(model, tokenizer, prompts)
    half_model, half_tokenizer = load_for_inference(folders["qwen2"], "cpu", "bfloat16")
    assert half_model.model.dtype == torch.bfloat16
    assert half_model.head.output_layer.weight.dtype == torch.float32
    coarse, _ = predict_prompts(half_model, half_tokenizer, prompts)
    assert coarse.dtype == np.float32
    assert np.abs(coarse - exact).max() < 0.1


def test_device_and_dtype_options():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(UserError, match="--device cuda"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="--device"):
        resolve_device("tpu:0")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserError, match="--dtype"):
        resolve_dtype("int8", torch.device("cpu"))


# ----------------------------------------------------------------------- prompt shapes


def test_prompt_column_is_found_or_named():
    assert find_prompt_column(["id", "prompt", "text"], "f") == "prompt"
    assert find_prompt_column(["id", "conversation_a", "model_a"], "f") == "conversation_a"
    assert find_prompt_column(["Question", "id"], "f") == "Question"
    assert find_prompt_column(["id", "body"], "f", "body") == "body"
    with pytest.raises(UserError, match=r"^in.jsonl: no prompt column .*columns: id, body"):
        find_prompt_column(["id", "body"], "in.jsonl")
    with pytest.raises(UserError, match=r"in.csv: no column 'x' \(--prompt-column\)"):
        find_prompt_column(["id", "body"], "in.csv", "x")


def test_three_prompt_shapes_give_the_same_coefficients(loaded):
    model, tokenizer = loaded["llama"]
    turns = ["write a python function", "now in rust"]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": "def f(): ..."},
        {"role": "user", "content": turns[1]},
    ]
    expected, _ = predict_prompts(model, tokenizer, [turns, turns[:1]])
    frames = {
        "text": pl.DataFrame({"text": [turns[0]] * 2}),
        "turns": pl.DataFrame({"prompt": [turns, turns[:1]]}),
        "messages": pl.DataFrame({"messages": [messages, messages[:2]]}),
    }
    for shape, frame in frames.items():
        coefs = np.array(predict_frame(model, tokenizer, frame)["coefs"].to_list())
        if shape == "text":
            assert np.abs(coefs - expected[1]).max() <= TOL, shape
        else:
            assert np.abs(coefs - expected).max() <= TOL, shape
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # the second turn is read


# ----------------------------------------------------------------------- files


def prompts_frame(n: int = 30, seed: int = 5) -> pl.DataFrame:
    prompts = skewed_prompts(n, seed)
    return pl.DataFrame(
        {
            "id": [f"q{i:03d}" for i in range(n)],
            "prompt": prompts,
            "score": [None if i % 4 == 0 else i * 0.5 for i in range(n)],
            "tags": [{"lang": "en", "n": i} for i in range(n)],
        }
    )


def expected_coefs(loaded, name, prompts) -> np.ndarray:
    model, tokenizer = loaded[name]
    return predict_prompts(model, tokenizer, prompts, batch_tokens=1)[0]


@pytest.mark.parametrize("in_fmt", ["jsonl", "parquet", "csv"])
@pytest.mark.parametrize("out_fmt", ["parquet", "jsonl"])
def test_files_keep_columns_order_and_metadata(loaded, tmp_path, in_fmt, out_fmt):
    df = prompts_frame()
    source = tmp_path / f"prompts.{in_fmt}"
    if in_fmt == "parquet":
        df.write_parquet(source, row_group_size=8)
    elif in_fmt == "jsonl":
        df.write_ndjson(source)
    else:
        df.drop("tags").with_columns(
            pl.col("prompt").map_elements(lambda v: json.dumps(v.to_list()), return_dtype=pl.String)
        ).write_csv(source)
    dest = tmp_path / f"preds.{out_fmt}"
    summary = predict_file(
        loaded["bert"], source, dest, options=PredictOptions(chunk_rows=7, batch_tokens=120)
    )
    assert summary.rows == df.height and summary.skipped == 0
    out, meta = read_table_meta(dest)
    assert meta == {"models": MODELS, "head": "rk", "loss": "grk"}
    assert out.columns == [c for c in df.columns if in_fmt != "csv" or c != "tags"] + [
        "coefs",
        "eta",
    ]
    assert out["id"].to_list() == df["id"].to_list()
    assert out["score"].to_list() == df["score"].to_list()
    if in_fmt != "csv":
        assert out["prompt"].to_list() == df["prompt"].to_list()
        assert out["tags"].to_list() == df["tags"].to_list()
    if out_fmt == "parquet":
        assert pq.read_schema(dest).field("coefs").type.value_type.bit_width == 32
    coefs = np.array(out["coefs"].to_list())
    assert np.abs(coefs - expected_coefs(loaded, "bert", df["prompt"].to_list())).max() <= TOL


def test_csv_and_json_outputs(loaded, tmp_path):
    df = prompts_frame(9)
    source = tmp_path / "prompts.parquet"
    df.write_parquet(source)
    for fmt in ("csv", "json"):
        dest = tmp_path / f"preds.{fmt}"
        predict_file(loaded["qwen2"], source, dest, options=PredictOptions(chunk_rows=4))
        out, meta = read_table_meta(dest)
        assert out["id"].to_list() == df["id"].to_list()
        coefs = [json.loads(c) if isinstance(c, str) else c for c in out["coefs"].to_list()]
        expected = expected_coefs(loaded, "qwen2", df["prompt"].to_list())
        assert np.abs(np.array(coefs) - expected).max() <= TOL
        assert meta == (None if fmt == "csv" else {"models": MODELS, "head": "bt", "loss": "bt"})


def test_columns_that_change_type_between_chunks_are_unified(loaded, tmp_path):
    rows = [
        {"id": i, "prompt": f"hello number {i}", "note": None if i < 6 else f"n{i}"}
        for i in range(10)
    ]
    rows[8]["extra"] = 1.5
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "preds.parquet"
    predict_file(loaded["qwen2"], source, dest, options=PredictOptions(chunk_rows=3))
    out = pl.read_parquet(dest)
    assert out.columns == ["id", "prompt", "note", "extra", "coefs"]
    assert out["note"].to_list() == [r["note"] for r in rows]
    assert out["extra"].to_list() == [r.get("extra") for r in rows]


def test_processes_split_the_chunks_and_the_merge_restores_order(loaded, tmp_path):
    """The split used under torchrun/accelerate, run here as two workers in turn."""
    df = prompts_frame(23)
    source = tmp_path / "prompts.parquet"
    df.write_parquet(source)
    folder = tmp_path / "parts"
    folder.mkdir()
    model, tokenizer = loaded["bert"]
    options = PredictOptions(chunk_rows=4)
    done = []
    for rank in (0, 1):
        workers = Workers(rank=rank, world=2)
        table = read_chunks(source, options.chunk_rows)
        predict_chunks(
            model,
            tokenizer,
            table,
            lambda i, part: (part.write_parquet(part_path(folder, i)), done.append(i)),
            options,
            workers,
        )
    assert sorted(done) == list(range(6)) and done[:3] == [0, 2, 4]
    merge_parts(folder, tmp_path / "preds.parquet", "parquet", model.info.metadata())
    out = pl.read_parquet(tmp_path / "preds.parquet")
    assert out["id"].to_list() == df["id"].to_list()
    coefs = np.array(out["coefs"].to_list())
    assert np.abs(coefs - expected_coefs(loaded, "bert", df["prompt"].to_list())).max() <= TOL


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_stdin_in_every_format(folders, loaded, tmp_path, fmt):
    df = prompts_frame(8).drop("tags")
    path = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        df.write_ndjson(path)
    elif fmt == "parquet":
        df.write_parquet(path)
    else:
        df.with_columns(
            pl.col("prompt").map_elements(lambda v: json.dumps(v.to_list()), return_dtype=pl.String)
        ).write_csv(path)
    dest = tmp_path / "preds.parquet"
    result = run_cli("predict", folders["qwen2"], "-", "-o", dest, input=path.read_bytes())
    assert result.exit_code == 0, result.output
    out = pl.read_parquet(dest)
    assert out["id"].to_list() == df["id"].to_list()
    coefs = np.array(out["coefs"].to_list())
    assert np.abs(coefs - expected_coefs(loaded, "qwen2", df["prompt"].to_list())).max() <= TOL


def test_stdout_is_jsonl_with_a_metadata_line(folders, loaded, tmp_path):
    source = tmp_path / "prompts.jsonl"
    prompts_frame(5).write_ndjson(source)
    result = run_cli("predict", folders["llama"], source, "-o", "-", "--chunk-rows", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    model_dir = str(Path(folders["llama"]).resolve())  # for evaluate's leakage check
    assert json.loads(lines[0]) == {
        "p2l": {"models": MODELS, "head": "rk", "loss": "rk", "model": model_dir}
    }
    rows = [json.loads(line) for line in lines[1:]]
    assert [r["id"] for r in rows] == [f"q{i:03d}" for i in range(5)]
    assert all(len(r["coefs"]) == len(MODELS) and isinstance(r["eta"], float) for r in rows)


def _lines_of(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.mark.slow
def test_stdin_to_stdout_streams_through_real_pipes(folders, loaded, tmp_path):
    """p2l predict M - -o - | p2l predict M - -o out.parquet, with this test in the middle of
    the pipe: the first process answers the first chunk before its input is complete."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "p2l_cli", "predict", str(folders["qwen2"]), "-"]
    first = subprocess.Popen(
        [*command, "-o", "-", "--chunk-rows", "2", "-q"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    dest = tmp_path / "out.parquet"
    second = subprocess.Popen(
        [*command, "-o", str(dest), "--chunk-rows", "3"],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    df = prompts_frame(7).drop("tags")
    records = [json.dumps(r).encode() + b"\n" for r in df.to_dicts()]
    received: queue.Queue = queue.Queue()
    threading.Thread(target=_lines_of, args=(first.stdout, received), daemon=True).start()
    try:
        first.stdin.write(b"".join(records[:2]))
        first.stdin.flush()
        early = [received.get(timeout=90) for _ in range(3)]  # metadata + the first chunk
        assert json.loads(early[0])["p2l"]["models"] == MODELS
        assert [json.loads(line)["id"] for line in early[1:]] == ["q000", "q001"]
        first.stdin.write(b"".join(records[2:]))
        first.stdin.close()
        second.stdin.write(b"".join(early))
        while (line := received.get(timeout=90)) is not None:
            second.stdin.write(line)
        second.stdin.close()
        assert first.wait(timeout=90) == 0, first.stderr.read().decode()
        assert second.wait(timeout=90) == 0, second.stderr.read().decode()
    finally:
        for proc in (first, second):
            proc.kill() if proc.poll() is None else None
    out, meta = read_table_meta(dest)
    assert meta["models"] == MODELS
    assert out.columns == ["id", "prompt", "score", "coefs"]
    assert out["id"].to_list() == df["id"].to_list()
    coefs = np.array(out["coefs"].to_list())
    assert np.abs(coefs - expected_coefs(loaded, "qwen2", df["prompt"].to_list())).max() <= TOL


# ----------------------------------------------------------------------- one prompt


def test_single_prompt_prints_a_leaderboard(folders, loaded, tmp_path):
    text = "compose a short poem about the autumn sea"
    result = run_cli("predict", folders["bert"], "--prompt", text, "-o", tmp_path / "one.jsonl")
    assert result.exit_code == 0, result.output
    model, tokenizer = loaded["bert"]
    coefs, _ = predict_prompts(model, tokenizer, [[text]])
    best_first = [MODELS[i] for i in np.argsort(-coefs[0])]
    table = result.stderr
    assert "Leaderboard for: compose a short poem" in table and "win rate" in table
    positions = [table.index(f" {name} ") for name in best_first]
    assert positions == sorted(positions)
    assert f"{coefs[0].max():+.4f}" in table
    out, meta = read_table_meta(tmp_path / "one.jsonl")
    assert out["prompt"].to_list() == [text] and meta["head"] == "rk"


# ----------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_bad_json_line_exits_2_naming_the_line(folders, tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": oops}\n')
    proc = run_p2l("predict", folders["qwen2"], source, "-o", tmp_path / "out.parquet")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "bad.jsonl: line 3: not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "out.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.parquet")]


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": ""}\n', "jsonl", "in.jsonl: line 2: empty prompt"),
        ('{"prompt": "ok"}\n\n{"id": 3}\n', "jsonl", "in.jsonl: line 3: no 'prompt' value"),
        ('{"prompt": "ok"}\n[1, 2]\n', "jsonl", "in.jsonl: line 2: expected a JSON object"),
        ('{"body": "ok"}\n', "jsonl", "in.jsonl: no prompt column"),
        (None, "parquet", "in.parquet: row 3: no 'question' value"),
        ("id,text\n1,hello\n2,\n", "csv", "in.csv: row 2: no 'text' value"),
    ],
)
def test_bad_rows_exit_2_naming_the_row(folders, tmp_path, content, fmt, message):
    source = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pl.DataFrame({"question": ["a", "b", None, "d"]}).write_parquet(source)
    else:
        source.write_text(content)
    result = run_cli("predict", folders["qwen2"], source, "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 2
    assert message in result.stderr.replace("\n", "")
    assert not (tmp_path / "out.jsonl").exists()


def test_skip_bad_rows_drops_and_counts_them(folders, loaded, tmp_path):
    lines = [
        '{"id": 1, "prompt": "hello there"}',
        '{"id": 2, "prompt": ""}',
        "not json",
        '{"id": 4, "prompt": ["write a poem"]}',
        '{"id": 5}',
        '{"id": 6, "prompt": "bye"}',
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    dest = tmp_path / "out.parquet"
    result = run_cli(
        "predict", folders["qwen2"], source, "-o", dest, "--skip-bad-rows", "--chunk-rows", "4"
    )
    assert result.exit_code == 0, result.output
    assert "skipped 3 bad row(s)" in result.stderr and "line 2: empty prompt" in result.stderr
    out = pl.read_parquet(dest)
    assert out["id"].to_list() == [1, 4, 6]
    expected = expected_coefs(loaded, "qwen2", [["hello there"], ["write a poem"], ["bye"]])
    assert np.abs(np.array(out["coefs"].to_list()) - expected).max() <= TOL


def test_usage_errors(folders, tmp_path):
    cases = [
        (("predict", folders["qwen2"], "missing.jsonl", "-o", "x.jsonl"), "missing.jsonl"),
        (("predict", folders["qwen2"], "p.jsonl"), "--output"),
        (("predict", folders["qwen2"]), "PROMPTS"),
        (("predict", folders["qwen2"], "p.jsonl", "--prompt", "x"), "not both"),
        (("predict", tmp_path, "--prompt", "x"), "not a P2L model folder"),
        (("predict", "nobody/not-cached-p2l", "--prompt", "x"), "not in the Hugging Face cache"),
        (("predict", folders["qwen2"], "-", "-o", "-", "--batch-tokens", "0"), "--batch-tokens"),
    ]
    for args, message in cases:
        result = run_cli(*args, input=b"")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)


def test_empty_input_writes_an_empty_table_with_metadata(folders, tmp_path):
    dest = tmp_path / "out.parquet"
    result = run_cli("predict", folders["qwen2"], "-", "-o", dest, input=b"")
    assert result.exit_code == 0, result.output
    out, meta = read_table_meta(dest)
    assert out.height == 0 and meta["models"] == MODELS


# ----------------------------------------------------------------------- several processes


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
    reason="torchrun not installed",
)
@pytest.mark.slow
def test_torchrun_two_processes_match_one(folders, loaded, tmp_path):
    df = prompts_frame(21)
    source = tmp_path / "prompts.parquet"
    df.write_parquet(source)
    dest = tmp_path / "preds.parquet"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "p2l_cli",
            "predict",
            str(folders["llama"]),
            str(source),
            "-o",
            str(dest),
            "--chunk-rows",
            "4",
        ],
        env=env,
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out, meta = read_table_meta(dest)
    assert meta["head"] == "rk"
    assert out["id"].to_list() == df["id"].to_list()
    coefs = np.array(out["coefs"].to_list())
    assert np.abs(coefs - expected_coefs(loaded, "llama", df["prompt"].to_list())).max() <= TOL
    assert not [p for p in tmp_path.iterdir() if ".parts-" in p.name]


@pytest.mark.slow
def test_a_hub_id_in_the_cache_loads_offline(folders, loaded, tmp_path):
    """A Hub id resolves through the Hugging Face cache (its own on-disk layout, built here
    by hand) with HF_HUB_OFFLINE=1, in a real process."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--p2l-tiny"
    shutil.copytree(folders["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    df = prompts_frame(6)
    df.select("id", "prompt").write_ndjson(tmp_path / "p.jsonl")
    proc = run_p2l("predict", "acme/p2l-tiny", tmp_path / "p.jsonl", "-o", "-", "-q",
                   env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)},
                   check=True)
    lines = proc.stdout.decode().splitlines()
    assert json.loads(lines[0])["p2l"]["head"] == "rk"
    coefs = np.array([json.loads(line)["coefs"] for line in lines[1:]])
    assert np.abs(coefs - expected_coefs(loaded, "llama", df["prompt"].to_list())).max() <= TOL
