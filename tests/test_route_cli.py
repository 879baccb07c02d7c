"""`p2l route` end to end, as a real subprocess on predictions files written here."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest
from conftest import run_cli, run_p2l
from scipy.special import expit

from p2l_cli import io as p2l_io

MODELS = ["alpaca-7b", "claude-big", "gpt-mid", "llama-small", "mistral-tiny"]
COSTS = {"alpaca-7b": 0.0003, "claude-big": 0.012, "gpt-mid": 0.004, "llama-small": 0.001,
         "mistral-tiny": 0.0002}  # fmt: skip
N = 300


def arena_coefs(n: int = N, seed: int = 0) -> np.ndarray:
    """Per-prompt coefficients: dear models are better on average, and every prompt category
    has its own specialists."""
    rng = np.random.default_rng(seed)
    base = np.log(np.array([COSTS[m] for m in MODELS]) * 1e4) / 2
    specialty = rng.normal(0, 1.0, (3, len(MODELS)))
    return base + specialty[rng.integers(0, 3, n)] + rng.normal(0, 0.3, (n, len(MODELS)))


def expected_win_rates(coefs: np.ndarray) -> np.ndarray:
    """Against a uniform opponent, written out directly (bt)."""
    return expit(coefs[:, :, None] - coefs[:, None, :]).mean(axis=2)


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    folder = tmp_path_factory.mktemp("route")
    coefs = arena_coefs()
    df = pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(N)],
            "prompt": [[f"prompt number {i}"] for i in range(N)],
            "coefs": pl.Series(coefs.astype(np.float32).tolist(), dtype=pl.List(pl.Float32)),
        }
    )
    meta = {"models": MODELS, "head": "bt", "loss": "bt"}
    p2l_io.write_table(df, folder / "pred.parquet", meta=meta)
    p2l_io.write_table(df, folder / "pred.jsonl", meta=meta)
    (folder / "costs.yaml").write_text(
        "".join(f"{m}: {c}\n" for m, c in COSTS.items() if m != "gpt-mid")
        + "gpt-mid:\n  price_per_million_output_tokens: 10\n  mean_output_tokens: 400\n"
    )
    stored = coefs.astype(np.float32).astype(np.float64)
    return folder, stored


def read_jsonl(data: bytes) -> tuple[dict | None, pl.DataFrame]:
    lines = data.decode().splitlines()
    first = json.loads(lines[0])
    meta = first.get("p2l") if set(first) == {"p2l"} else None
    body = "\n".join(lines[1:] if meta is not None else lines)
    return meta, pl.read_ndjson(io.StringIO(body))


def check_routes(routes: pl.DataFrame, coefs: np.ndarray) -> np.ndarray:
    """Strategies are distributions over known models, the chosen model is in the strategy,
    and win_rate/cost are the strategy's expectations; returns the costs per row."""
    values = expected_win_rates(coefs)
    index = {m: i for i, m in enumerate(MODELS)}
    for row, (model, strategy, rate, cost) in enumerate(
        routes.select("model", "strategy", "win_rate", "cost").iter_rows()
    ):
        probs = {entry["model"]: entry["prob"] for entry in strategy}
        assert sum(probs.values()) == pytest.approx(1.0)
        assert model in probs and probs[model] > 0
        assert rate == pytest.approx(sum(p * values[row, index[m]] for m, p in probs.items()),
                                     abs=1e-6)  # fmt: skip
        assert cost == pytest.approx(sum(p * COSTS[m] for m, p in probs.items()))
    return routes["cost"].to_numpy()


@pytest.mark.slow
def test_batch_budget_to_parquet_with_summary(arena):
    folder, coefs = arena
    out, summary = folder / "routes.parquet", folder / "summary.json"
    proc = run_p2l("route", folder / "pred.parquet", "--costs", folder / "costs.yaml",
                   "--budget", "0.003", "-o", out, "--summary", summary, check=True)  # fmt: skip
    assert proc.stdout == b""
    assert b"router" in proc.stderr
    routes, meta = p2l_io.read_table_meta(out)
    assert meta["models"] == MODELS
    assert routes["id"].to_list() == [f"p{i}" for i in range(N)] and "coefs" in routes.columns
    costs = check_routes(routes, coefs)
    assert costs.mean() == pytest.approx(0.003)
    assert ((routes["strategy"].list.len() == 2).sum()) <= 1  # one prompt mixes at most
    report = json.loads(summary.read_text())
    assert report["router"]["mean_cost"] == pytest.approx(0.003)
    assert report["router"]["mean_win_rate"] == pytest.approx(routes["win_rate"].mean())
    assert report["price"] > 0
    fitting = [r for r in report["models"] if r["fits_budget"]]
    assert {r["model"] for r in fitting} == {m for m, c in COSTS.items() if c <= 0.003}
    assert report["router"]["mean_win_rate"] > max(r["mean_win_rate"] for r in fitting)
    assert report["router"]["score"] > max(r["score"] for r in fitting)
    # the router's score: a fixed strength with the router's mean win rate, pooled over
    # prompts and opponents, on prompts centred on the opponents' mean
    centred = coefs - coefs.mean(axis=1, keepdims=True)
    pooled = expit(report["router"]["theta"] - centred).mean()
    assert pooled == pytest.approx(report["router"]["mean_win_rate"], abs=1e-6)
    assert report["router"]["score"] == pytest.approx(
        1000 + 400 / np.log(10) * report["router"]["theta"]
    )


@pytest.mark.slow
def test_stdin_per_prompt_budget_to_stdout(arena):
    folder, coefs = arena
    proc = run_p2l("route", "-", "--costs", folder / "costs.yaml", "--budget", "0.003",
                   "--budget-scope", "prompt", "-o", "-", "--quiet",
                   input=(folder / "pred.jsonl").read_bytes(), check=True)  # fmt: skip
    assert proc.stderr == b""
    meta, routes = read_jsonl(proc.stdout)
    assert meta["models"] == MODELS
    costs = check_routes(routes, coefs)
    assert (costs <= 0.003 + 1e-12).all()
    assert (routes["strategy"].list.len() <= 2).all()


@pytest.mark.slow
def test_price_and_no_budget_and_csv(arena):
    folder, coefs = arena
    out = folder / "priced.csv"
    run_p2l("route", folder / "pred.parquet", "--costs", folder / "costs.yaml", "--price",
            "20", "--drop-coefs", "-o", out, "-q", check=True)  # fmt: skip
    routes = pl.read_csv(out)
    assert "coefs" not in routes.columns
    values = expected_win_rates(coefs) - 20 * np.array([COSTS[m] for m in MODELS])
    assert routes["model"].to_list() == [MODELS[i] for i in values.argmax(axis=1)]
    proc = run_p2l("route", folder / "pred.parquet", "--models", "gpt-mid,llama-small",
                   "-o", "-", "-q", check=True)  # fmt: skip
    _, routes = read_jsonl(proc.stdout)
    top = np.where(coefs[:, 2] >= coefs[:, 3], "gpt-mid", "llama-small")
    assert routes["model"].to_list() == top.tolist()
    assert "cost" not in routes.columns


@pytest.mark.slow
def test_sweep_writes_a_curve_and_a_plot(arena):
    folder, _ = arena
    pytest.importorskip("matplotlib")
    curve, plot = folder / "curve.csv", folder / "curve.png"
    proc = run_p2l("route", folder / "pred.parquet", "--costs", folder / "costs.yaml",
                   "--sweep", "0.0005,0.002,0.005,0.02", "-o", curve, "--plot", plot,
                   check=True)  # fmt: skip
    assert b"cost-quality curve" in proc.stderr
    rows = pl.read_csv(curve)
    assert rows["budget"].to_list() == [0.0005, 0.002, 0.005, 0.02]
    assert (np.diff(rows["mean_win_rate"].to_numpy()) > 0).all()
    assert (rows["mean_cost"].to_numpy() <= rows["budget"].to_numpy() + 1e-12).all()
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_sampling_is_seeded_and_deterministic_takes_the_mode(arena):
    folder, _ = arena
    args = ["route", folder / "pred.parquet", "--costs", folder / "costs.yaml", "--budget",
            "0.003", "--budget-scope", "prompt", "-o", "-", "-q", "--drop-coefs"]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda extra: run_p2l(*args, *extra, check=True),
                             [["--seed", "1"], ["--deterministic"]]))  # fmt: skip
    sampled, mode = (read_jsonl(r.stdout)[1] for r in runs)
    again = run_cli(*args, "--seed", "1")
    assert again.exit_code == 0
    assert read_jsonl(again.stdout_bytes)[1]["model"].to_list() == sampled["model"].to_list()
    likeliest = [max(s, key=lambda e: (e["prob"], -COSTS[e["model"]]))["model"]
                 for s in mode["strategy"].to_list()]  # fmt: skip
    assert mode["model"].to_list() == likeliest
    mixed = sampled.filter(pl.col("strategy").list.len() == 2)
    assert mixed.height > 10  # per-prompt budgets mix two models on many prompts
    assert mixed["model"].n_unique() > 1


def _error_cases(folder):
    costs = folder / "costs.yaml"
    cases = {}
    cases["below cheapest"] = (
        [folder / "pred.parquet", "--costs", costs, "--budget", "0.0001"],
        ["smallest feasible budget is 0.0002"],
    )
    (folder / "missing.yaml").write_text("".join(f"{m}: 0.001\n" for m in MODELS[:-1]))
    cases["no cost"] = (
        [folder / "pred.parquet", "--costs", folder / "missing.yaml", "--budget", "0.01"],
        ["mistral-tiny", "missing.yaml"],
    )
    (folder / "unknown.yaml").write_text("".join(f"{m}: 0.001\n" for m in [*MODELS, "gpt-9"]))
    cases["unknown model"] = (
        [folder / "pred.parquet", "--costs", folder / "unknown.yaml"],
        ["gpt-9", "unknown.yaml"],
    )
    (folder / "negative.json").write_text(json.dumps({**COSTS, "gpt-mid": -1}))
    cases["negative"] = (
        [folder / "pred.parquet", "--costs", folder / "negative.json", "--budget", "0.01"],
        ["gpt-mid", "negative.json", "negative"],
    )
    (folder / "text.csv").write_text("model,cost\n" + "".join(
        f"{m},{'lots' if m == 'claude-big' else c}\n" for m, c in COSTS.items()))  # fmt: skip
    cases["non-numeric"] = (
        [folder / "pred.parquet", "--costs", folder / "text.csv", "--budget", "0.01"],
        ["claude-big", "text.csv", "row 3"],
    )
    empty = pl.DataFrame({"coefs": pl.Series([], dtype=pl.List(pl.Float32))})
    p2l_io.write_table(empty, folder / "empty.parquet", meta={"models": MODELS, "loss": "bt"})
    cases["empty"] = ([folder / "empty.parquet", "--costs", costs], ["empty.parquet", "no rows"])
    bare = pl.DataFrame({"coefs": [[0.0] * len(MODELS)]})
    p2l_io.write_table(bare, folder / "bare.parquet")
    cases["no metadata"] = ([folder / "bare.parquet"], ["bare.parquet", "metadata"])
    return cases


@pytest.mark.slow
def test_every_error_exits_2_with_one_line(arena):
    folder, _ = arena
    cases = _error_cases(folder)
    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(cases, pool.map(lambda c: run_p2l("route", *c[0]), cases.values())))
    for name, proc in procs.items():
        err = proc.stderr.decode()
        assert proc.returncode == 2, (name, err)
        assert proc.stdout == b"", name
        assert "Traceback" not in err and err.strip().count("\n") == 0, (name, err)
        for needle in cases[name][1]:
            assert needle in err, (name, needle, err)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--budget", "0.01", "--price", "3"], "--price"),
        (["--plot", "x.png"], "--sweep"),
        (["--sweep", "0.01,abc"], "--sweep"),
        (["--budget-scope", "week", "--budget", "0.01"], "--budget-scope"),
        (["--opponents", "leaderboard-top-0"], "between 1 and 5"),
        (["--models", "gpt-mid,nobody"], "'nobody'"),
    ],
)
def test_option_errors_exit_2(arena, extra, needle):
    folder, _ = arena
    result = run_cli("route", folder / "pred.parquet", "--costs", folder / "costs.yaml", *extra)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr


# --------------------------------------------------------------- predict -> route, for real


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A simulated arena's fresh prompts and costs, and a tiny random P2L model (rk head) over
    its models."""
    import torch
    from tiny import make_backbone

    from p2l_cli.data.simulate import simulate_arena, write_arena
    from p2l_cli.model import build_p2l, save_p2l

    folder = tmp_path_factory.mktemp("simulated")
    arena = simulate_arena(num_battles=20, num_models=5, num_prompts=40, seed=3)
    write_arena(arena, folder / "arena")
    backbone = make_backbone("llama", folder / "backbone", seed=1)
    model, tokenizer = build_p2l(str(backbone), arena.models, head_type="rk", loss_type="rk",
                                 max_length=128)  # fmt: skip
    torch.manual_seed(5)
    model.head.initialise("normal", std=0.5)
    save_p2l(model, tokenizer, folder / "p2l")
    return folder, arena


@pytest.mark.slow
def test_predict_then_route_on_a_simulated_arena(simulated):
    import subprocess
    import sys

    from p2l_cli.predict import load_for_inference, predict_frame
    from p2l_cli.stats.families import win_matrix

    folder, arena = simulated
    prompts, costs = folder / "arena" / "prompts.jsonl", folder / "arena" / "costs.yaml"
    cheapest = min(s["price_per_million_output_tokens"] * s["mean_output_tokens"] / 1e6
                   for s in arena.costs.values())  # fmt: skip
    budget = str(cheapest * 3)
    route_args = ["--costs", costs, "--budget", budget, "--deterministic", "-o", "-", "-q"]
    # `p2l predict MODEL prompts -o - | p2l route -` through a real pipe, and `--model`,
    # side by side
    p2l = [sys.executable, "-m", "p2l_cli"]
    predict = subprocess.Popen([*p2l, "predict", folder / "p2l", prompts, "-o", "-", "-q"],
                               stdout=subprocess.PIPE)  # fmt: skip
    piped = subprocess.Popen([*p2l, "route", "-", *route_args], stdin=predict.stdout,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    predict.stdout.close()
    with ThreadPoolExecutor(1) as pool:
        direct = pool.submit(run_p2l, "route", prompts, "--model", folder / "p2l", *route_args)
        piped_out, piped_err = piped.communicate(timeout=600)
        direct = direct.result()
    assert predict.wait() == 0 and piped.returncode == 0, piped_err.decode()
    assert direct.returncode == 0, direct.stderr.decode()
    piped = subprocess.CompletedProcess(piped.args, 0, piped_out, piped_err)
    meta, piped_routes = read_jsonl(piped.stdout)
    _, direct_routes = read_jsonl(direct.stdout)
    model_dir = str((folder / "p2l").resolve())
    assert meta == {"models": arena.models, "head": "rk", "loss": "rk", "model": model_dir}
    assert piped_routes["model"].to_list() == direct_routes["model"].to_list()
    # the coefficients are the model's, and the win rates follow from them (rk, ties half)
    model, tokenizer = load_for_inference(folder / "p2l", "cpu", "float32")
    expected = predict_frame(model, tokenizer, pl.read_ndjson(prompts))
    coefs = np.array(expected["coefs"].to_list())
    np.testing.assert_allclose(np.array(direct_routes["coefs"].to_list()), coefs, atol=1e-5)
    import torch

    values = win_matrix(torch.tensor(coefs), torch.tensor(expected["eta"].to_numpy()), "rk")
    values = values.mean(dim=-1).numpy()
    index = {m: i for i, m in enumerate(arena.models)}
    for row, strategy in enumerate(direct_routes["strategy"].to_list()):
        rate = sum(e["prob"] * values[row, index[e["model"]]] for e in strategy)
        assert direct_routes["win_rate"][row] == pytest.approx(rate, abs=1e-5)
    assert direct_routes["cost"].mean() <= float(budget) * (1 + 1e-9)
