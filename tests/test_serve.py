"""`p2l serve`: the real server in a subprocess, a tiny P2L model, the official `openai`
client, and fake upstreams on 127.0.0.1 that record what they receive."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, run_cli

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MODELS = ["alpha", "beta", "delta", "gamma"]  # delta is never configured
COSTS = {"alpha": 0.001, "beta": 0.002, "gamma": 0.004}
KEYS = {"KEY_A": "secret-a-123", "KEY_B": "secret-b-456"}
ROUTER_KEY = "router-key-789"
PROMPTS = [
    "write a python function that sorts a list of numbers",
    "compose a short poem about the autumn sea and the moon",
    "solve the equation x squared plus two x minus three equals zero",
    "translate this sentence into french please: the cat sleeps",
]


# ----------------------------------------------------------------------- fake upstreams


class FakeUpstream:
    """An OpenAI-compatible chat endpoint that records requests; ``mode`` is 'ok', 'fail'
    (HTTP 500), 'slow' (answers after 3 s) or 'break' (a stream cut off after one chunk)."""

    def __init__(self, name: str):
        self.name, self.mode, self.received = name, "ok", []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                upstream.received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "body": body})  # fmt: skip
                if upstream.mode == "fail":
                    return self._send(500, {"error": {"message": "boom"}})
                if upstream.mode == "slow":
                    time.sleep(3)
                if upstream.mode == "break":  # promises a long body, breaks off after a chunk
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("content-length", "100000")
                    self.end_headers()
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1,
                             "model": body["model"], "choices": [
                                 {"index": 0, "delta": {"content": "hel"}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    self.close_connection = True
                    return
                text = f"hello from {upstream.name}"
                if not body.get("stream"):
                    return self._send(200, {
                        "id": "x", "object": "chat.completion", "created": 1,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                    })  # fmt: skip
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for piece, finish in ((text[:5], None), (text[5:], None), ("", "stop")):
                    delta = {"content": piece} if piece else {}
                    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1,
                             "model": body["model"],
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# ----------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p2l_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KEYS and k != "ROUTER_KEY"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)  # fmt: skip
    return env


class Server:
    def __init__(self, folder: Path, config: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2l_cli", "serve", str(folder), "--config", str(config),
             "--port", str(self.port), *args],
            env=p2l_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read().decode()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.proc.kill()
        raise AssertionError("server did not start")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.proc.stdout.read().decode(errors="replace")


def write_config(path: Path, upstreams: dict, **settings) -> Path:
    models = {
        "alpha": {"cost": COSTS["alpha"], "base_url": upstreams["alpha"].url,
                  "api_key_env": "KEY_A"},
        "beta": {"price_per_million_output_tokens": 4.0, "mean_output_tokens": 500,
                 "base_url": upstreams["beta"].url, "upstream_model": "beta-upstream",
                 "api_key_env": "KEY_B"},
        "gamma": {"cost": COSTS["gamma"], "base_url": upstreams["gamma"].url},
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"budget": 0.004, "models": models, **settings}))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    import torch
    from tiny import make_backbone

    from p2l_cli.model import build_p2l, save_p2l

    root = tmp_path_factory.mktemp("serve")
    backbone = make_backbone("qwen2", root / "backbone", seed=3)
    model, tokenizer = build_p2l(str(backbone), MODELS, max_length=64)
    torch.manual_seed(11)
    model.head.initialise("normal", std=1.0)
    return save_p2l(model, tokenizer, root / "p2l")


@pytest.fixture(scope="module")
def upstreams():
    fakes = {name: FakeUpstream(name) for name in COSTS}
    yield fakes
    for fake in fakes.values():
        fake.server.shutdown()


@pytest.fixture(scope="module")
def server(folder, upstreams, tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("cfg") / "router.yaml", upstreams,
                          timeout=1.0, fallbacks=2, max_body_bytes=20000)  # fmt: skip
    srv = Server(folder, config, "--api-key-env", "ROUTER_KEY",
                 env={**KEYS, "ROUTER_KEY": ROUTER_KEY})  # fmt: skip
    yield srv
    code, log = srv.stop()
    assert code == 0, log
    for key in (*KEYS.values(), ROUTER_KEY):
        assert key not in log  # keys are never logged


def reset(upstreams):
    for fake in upstreams.values():
        fake.mode, fake.received = "ok", []


@pytest.fixture(autouse=True)
def _reset(upstreams):
    reset(upstreams)


def client(server, key=ROUTER_KEY):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0,
                         http_client=httpx.Client(trust_env=False, timeout=30))  # fmt: skip


def expected_routes(folder, prompts, budget):
    """The route `p2l route` takes: the same library calls on the model's coefficients."""
    from p2l_cli import route
    from p2l_cli.predict import load_for_inference, predict_prompts

    model, tokenizer = load_for_inference(folder, "cpu", "float32")
    coefs, _ = predict_prompts(model, tokenizer, [[p] for p in prompts])
    names = sorted(COSTS)
    choosable = [MODELS.index(n) for n in names]
    costs = route.cost_vector(COSTS, MODELS, choosable, "costs")
    problem = route.build_problem(MODELS, "bt", coefs, None, "uniform", choosable, costs)
    routing = route.solve_routing(problem.values, costs, budget, "prompt")
    return [names[i] for i in route.choose(routing.strategy, costs, None)], problem.values


def only(upstreams, name):
    """The one request ``name``'s upstream got; the others got none."""
    for other, fake in upstreams.items():
        if other != name:
            assert fake.received == [], other
    assert len(upstreams[name].received) == 1
    return upstreams[name].received[0]


# ----------------------------------------------------------------------- tests


@pytest.mark.slow
def test_routes_each_prompt_like_p2l_route_and_forwards_with_its_key(server, upstreams, folder):
    routes, values = expected_routes(folder, PROMPTS, 0.004)
    api = client(server)
    for prompt, expected, v in zip(PROMPTS, routes, values):
        reset(upstreams)
        raw = api.chat.completions.with_raw_response.create(
            model="p2l", messages=[{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": prompt}], temperature=0.3,
        )  # fmt: skip
        reply = raw.parse()
        assert raw.headers["x-p2l-model"] == expected
        assert reply.choices[0].message.content == f"hello from {expected}"
        rate = float(raw.headers["x-p2l-expected-win-rate"])
        assert rate == pytest.approx(v[sorted(COSTS).index(expected)], abs=1e-5)
        assert float(raw.headers["x-p2l-cost"]) == pytest.approx(COSTS[expected])
        got = only(upstreams, expected)
        assert got["path"] == "/v1/chat/completions"
        assert got["body"]["model"] == ("beta-upstream" if expected == "beta" else expected)
        assert got["body"]["messages"][1]["content"] == prompt
        assert got["body"]["temperature"] == 0.3
        auth = got["headers"].get("authorization")
        want = {"alpha": KEYS["KEY_A"], "beta": KEYS["KEY_B"]}.get(expected)
        assert auth == (f"Bearer {want}" if want else None)  # never the router's key
    assert len(set(routes)) > 1  # the prompts do not all go to one model


@pytest.mark.slow
def test_budget_in_the_model_name_and_pass_through(server, upstreams):
    api = client(server)
    raw = api.chat.completions.with_raw_response.create(
        model="p2l:budget=0.001", messages=[{"role": "user", "content": PROMPTS[0]}])
    assert raw.headers["x-p2l-model"] == "alpha"  # the only model within the budget
    assert only(upstreams, "alpha")["headers"]["authorization"] == f"Bearer {KEYS['KEY_A']}"
    reset(upstreams)
    raw = api.chat.completions.with_raw_response.create(
        model="beta", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-p2l-model"] == "beta"
    assert raw.parse().choices[0].message.content == "hello from beta"
    assert only(upstreams, "beta")["body"]["model"] == "beta-upstream"


@pytest.mark.slow
def test_streaming(server, upstreams, folder):
    (expected,), _ = expected_routes(folder, PROMPTS[1:2], 0.004)
    stream = client(server).chat.completions.create(
        model="p2l", messages=[{"role": "user", "content": PROMPTS[1]}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == f"hello from {expected}"
    assert only(upstreams, expected)["body"]["stream"] is True


@pytest.mark.slow
def test_fallback_to_the_next_best_model_then_502_and_504(server, upstreams, folder):
    (best,), values = expected_routes(folder, PROMPTS[2:3], 0.004)
    names = sorted(COSTS)
    runner_up = next(names[i] for i in np.argsort(-values[0], kind="stable") if names[i] != best)
    upstreams[best].mode = "fail"
    api = client(server)
    for stream in (False, True):
        raw = api.chat.completions.with_raw_response.create(
            model="p2l", messages=[{"role": "user", "content": PROMPTS[2]}], stream=stream)
        assert raw.headers["x-p2l-model"] == runner_up
        assert raw.headers["x-p2l-attempts"] == "2"
        assert float(raw.headers["x-p2l-cost"]) == pytest.approx(COSTS[runner_up])
        assert len(upstreams[runner_up].received) == 1
        upstreams[runner_up].received = []
    # within a budget of 0.001 only alpha fits: no fallback, so its failure is the client's
    upstreams["alpha"].mode = "fail"
    with pytest.raises(openai.APIStatusError) as failed:
        api.chat.completions.create(model="p2l:budget=0.001",
                                    messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "upstream_error"
    upstreams["alpha"].mode = "slow"
    start = time.time()
    with pytest.raises(openai.APIStatusError) as slow:
        api.chat.completions.create(model="p2l:budget=0.001",
                                    messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert slow.value.status_code == 504 and time.time() - start < 2.9  # timeout: 1 s
    # an upstream that breaks off mid-stream: the stream ends with an error event
    upstreams["alpha"].mode = "break"
    stream = api.chat.completions.create(model="p2l:budget=0.001", stream=True,
                                         messages=[{"role": "user", "content": "x"}])  # fmt: skip
    with pytest.raises(openai.APIError, match="broke off the stream"):
        for _ in stream:
            pass
    assert httpx.get(server.url + "/healthz", trust_env=False).status_code == 200


@pytest.mark.slow
def test_auth_and_bad_requests_answer_openai_errors(server, upstreams):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").chat.completions.create(
            model="p2l", messages=[{"role": "user", "content": "hi"}])
    headers = {"authorization": f"Bearer {ROUTER_KEY}", "content-type": "application/json"}
    url = server.url + "/v1/chat/completions"
    cases = [
        (b"{not json", 400),
        (json.dumps({"model": "p2l"}).encode(), 400),
        (json.dumps({"model": "p2l", "messages": [{"content": "no role"}]}).encode(), 400),
        (json.dumps({"model": "p2l", "messages": [{"role": "system", "content": "x"}]}).encode(),
         400),
        (json.dumps({"model": "p2l", "messages": [{"role": "user", "content": 5}]}).encode(), 400),
        (json.dumps({"model": "p2l", "stream": "yes", "messages": [{"role": "user",
                                                                    "content": "x"}]}).encode(),
         400),
        (json.dumps([1, 2]).encode(), 400),
        (json.dumps({"model": "p2l:budget=0.0001", "messages": [{"role": "user",
                                                                 "content": "x"}]}).encode(), 400),
        (json.dumps({"model": "p2l:colour=3", "messages": [{"role": "user",
                                                            "content": "x"}]}).encode(), 400),
        (json.dumps({"model": "delta", "messages": [{"role": "user", "content": "x"}]}).encode(),
         404),
        (json.dumps({"model": "p2l", "messages": [{"role": "user", "content": "x" * 30000}]}
                    ).encode(), 413),
    ]  # fmt: skip
    with httpx.Client(trust_env=False, timeout=30) as http:
        for body, status in cases:
            response = http.post(url, content=body, headers=headers)
            assert response.status_code == status, (body[:80], response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        chunked = http.post(url, content=iter([b"{" + b" " * 15000, b" " * 15000 + b"}"]),
                            headers=headers)  # fmt: skip
        assert chunked.status_code == 413
        assert http.get(server.url + "/healthz").json()["status"] == "ok"
    assert all(fake.received == [] for fake in upstreams.values())


@pytest.mark.slow
def test_models_leaderboard_and_metrics(server, upstreams, folder):
    api = client(server)
    assert [m.id for m in api.models.list()] == ["p2l", "alpha", "beta", "gamma"]
    api.chat.completions.create(model="p2l", messages=[{"role": "user", "content": "hi"}])
    with httpx.Client(trust_env=False, timeout=30,
                      headers={"authorization": f"Bearer {ROUTER_KEY}"}) as http:  # fmt: skip
        board = http.post(server.url + "/v1/leaderboard", json={"prompt": PROMPTS[3]}).json()
        metrics = http.get(server.url + "/metrics").text
        assert http.get(server.url + "/metrics", headers={"authorization": "x"}).status_code == 401
    assert sorted(row["model"] for row in board["leaderboard"]) == MODELS
    (expected,), _ = expected_routes(folder, PROMPTS[3:4], 0.004)
    assert board["route"]["model"] == expected
    for needle in ('p2l_requests_total{code="200",endpoint="/v1/chat/completions"}',
                   "p2l_route_choices_total{model=", "p2l_spend_total ",
                   "p2l_upstream_latency_seconds_bucket{", "p2l_upstream_errors_total{",
                   "p2l_batch_size_count "):  # fmt: skip
        assert needle in metrics, needle


@pytest.fixture(scope="module")
def dry_server(folder, upstreams, tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("dry") / "router.yaml", upstreams,
                          batch_wait_ms=20)  # fmt: skip
    srv = Server(folder, config, "--dry-run")  # no keys in its environment: not needed
    yield srv
    srv.stop()


@pytest.mark.slow
def test_dry_run_answers_with_the_decision_and_batches_concurrent_requests(dry_server,
                                                                          upstreams, folder):
    api = client(dry_server, key="anything")
    routes, _ = expected_routes(folder, PROMPTS, 0.004)

    def ask(prompt):
        return api.chat.completions.with_raw_response.create(
            model="p2l", messages=[{"role": "user", "content": prompt}])

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(ask, PROMPTS * 4))
    for raw, expected in zip(replies, routes * 4):
        decision = json.loads(raw.parse().choices[0].message.content)
        assert decision["model"] == raw.headers["x-p2l-model"] == expected
        assert set(decision["win_rates"]) == set(COSTS)
    stream = api.chat.completions.create(
        model="p2l:budget=0.001", messages=[{"role": "user", "content": "x"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert json.loads(text)["model"] == "alpha"
    raw = api.chat.completions.with_raw_response.create(
        model="gamma", messages=[{"role": "user", "content": "x"}])  # by name: no scoring
    assert raw.headers["x-p2l-model"] == "gamma" and raw.headers["x-p2l-expected-win-rate"] == ""
    assert json.loads(raw.parse().choices[0].message.content)["expected_win_rate"] is None
    assert all(fake.received == [] for fake in upstreams.values())
    metrics = httpx.get(dry_server.url + "/metrics", trust_env=False).text
    batches = float(metrics.split("\np2l_batch_size_count ")[1].split()[0])
    assert batches < 16  # 16 concurrent requests took fewer forward passes


@pytest.mark.slow
def test_sigterm_shuts_down_gracefully(dry_server):
    code, log = dry_server.stop()
    assert code == 0, log
    assert "Shutting down" in log or "Finished server process" in log


# ----------------------------------------------------------------------- start-up errors


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"models": {"omega": {"cost": 1, "base_url": "http://127.0.0.1:1/v1"}}},
         "'omega' is not in the P2L model's model list"),
        ({"budget": 0.0001}, "below the cost of the cheapest model"),
        ({"budget": 0.002, "price": 3}, "give 'budget' or 'price'"),
        ({"models": {"alpha": {"base_url": "http://127.0.0.1:1/v1"}}}, "expected 'cost'"),
        ({"models": {"alpha": {"cost": 1, "base_url": "ftp://x"}}}, "is not an http(s) URL"),
        ({"colour": 1}, "unknown key 'colour'"),
        ({"allowed": ["delta"]}, "'delta' is not a configured model"),
        ({"sampling": "often"}, "sampling 'often'"),
        ({"opponents": "leaderboard-top-9"}, "K must be between 1 and 4"),
        ({"opponents": {"zeta": 1}}, "'zeta' is not in the P2L model's model list"),
    ],
)  # fmt: skip
def test_config_errors_exit_2_with_one_line(folder, upstreams, tmp_path, settings, needle):
    config = write_config(tmp_path / "router.yaml", upstreams)
    data = {**yaml.safe_load(config.read_text()), **settings}
    config.write_text(yaml.safe_dump(data))
    result = run_cli("serve", folder, "--config", config, "--port", "1")
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_keys_extra_and_files_exit_2(folder, upstreams, tmp_path, monkeypatch):
    config = write_config(tmp_path / "router.yaml", upstreams)
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    checks = [
        (("serve", folder, "--config", config), "KEY_A (its API key) is not set"),
        (("serve", folder, "--config", tmp_path / "nope.yaml"), "no such file"),
        (("serve", tmp_path, "--config", config), "not a P2L model folder"),
        (("serve", folder, "--config", config, "--api-key-env", "NOPE_KEY"), "NOPE_KEY"),
    ]
    (tmp_path / "bad.yaml").write_text("models: [unclosed")
    checks.append((("serve", folder, "--config", tmp_path / "bad.yaml"), "not valid YAML"))
    for args, needle in checks:
        result = run_cli(*args)
        assert result.exit_code == 2 and needle in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # the serve extra is not installed
    result = run_cli("serve", folder, "--config", config, "--dry-run")
    assert result.exit_code == 2 and "pip install 'p2l-cli[serve]'" in result.stderr


# ----------------------------------------------------------------------- the router core


def core_for(**settings):
    from p2l_cli.serve.config import RouterConfig, Upstream
    from p2l_cli.serve.router import RouterCore

    names = [f"m{i}" for i in range(6)]
    costs = dict(zip(names, [0.0001, 0.0004, 0.0008, 0.0015, 0.003, 0.006]))
    config = RouterConfig({n: Upstream(n, c, "http://127.0.0.1:1/v1", n)
                           for n, c in costs.items()}, **settings)  # fmt: skip
    return RouterCore(names, "bt", config), np.array(list(costs.values()))


def arena_coefs(n, seed=0):
    rng = np.random.default_rng(seed)  # dearer models are better on average
    return np.linspace(-1, 1, 6)[None, :] + rng.normal(0, 0.8, (n, 6))


@pytest.mark.parametrize("sampling", ["balanced", "random", "mode"])
def test_core_routes_per_prompt_like_p2l_route(sampling):
    from p2l_cli import route
    from p2l_cli.stats.winrates import win_rates_vs_opponents

    core, costs = core_for(budget=0.001, sampling=sampling)
    coefs = arena_coefs(3000)
    values = win_rates_vs_opponents(coefs, np.full(6, 1 / 6))
    strategy = route.solve_routing(values, costs, 0.001, "prompt").strategy
    decisions = []
    for start in range(0, 3000, 37):  # micro-batches of any size route alike
        block = coefs[start : start + 37]
        decisions += core.route(block, None, [(0.001, None, False)] * len(block))
    for d, row in zip(decisions, strategy):
        assert {core.names.index(m): p for m, p in d.strategy.items()} == pytest.approx(
            {j: p for j, p in enumerate(row) if p > 1e-12})
        assert d.model in d.strategy and d.cost <= 0.006
        assert all(costs[core.names.index(f)] <= 0.001 for f in d.fallbacks)
    spent = np.mean([d.cost for d in decisions])
    expected = np.mean([d.expected_cost for d in decisions])
    assert expected <= 0.001 + 1e-12
    if sampling == "balanced":  # within one answer's cost over the stream
        assert abs(spent - expected) * 3000 <= 0.006 + 1e-12
    if sampling == "mode":
        assert [d.model for d in decisions] == [
            core.names[i] for i in route.choose(strategy, costs, None)]


def test_core_keeps_a_stream_budget_by_price():
    core, costs = core_for(budget=0.001, budget_scope="stream")
    coefs = arena_coefs(2000, seed=1)
    decisions = []
    for start in range(0, 2000, 16):
        block = coefs[start : start + 16]
        decisions += core.route(block, None, [(0.001, None, True)] * len(block))
    spent = np.mean([d.cost for d in decisions])
    best_spend = costs[np.argmax(coefs, axis=1)].mean()
    assert best_spend > 0.002  # the budget binds: routing must give up quality for it
    assert spent == pytest.approx(0.001, rel=0.02)
    assert len({d.model for d in decisions}) >= 3
    assert all(d.price is not None for d in decisions)


def test_core_top_k_opponents_are_each_prompts_own():
    from p2l_cli import route
    from p2l_cli.stats.winrates import win_rates_vs_opponents

    core, _ = core_for(opponents="leaderboard-top-2")
    coefs = arena_coefs(50, seed=2)
    decisions = core.route(coefs, None, [(None, None, False)] * 50)
    for row, d in zip(coefs, decisions):
        q = route.opponent_distribution("leaderboard-top-2", core.names, row[None], None, "bt")
        v = win_rates_vs_opponents(row[None], q)[0]
        assert d.model == core.names[int(np.argmax(v))]
        assert d.win_rate == pytest.approx(v.max())
