"""The ASGI application of ``p2l serve``: an OpenAI-compatible router in front of the
configured upstreams, plus the prompt's leaderboard, health and metrics endpoints.

Errors follow OpenAI's schema ``{"error": {"message", "type", "param", "code"}}``. Nothing a
client or an upstream sends is allowed to take the server down: every handler's failure is
answered (500 at worst), and upstream failures fall back to the next model.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from p2l_cli.serve.config import RouterConfig
from p2l_cli.serve.metrics import BATCH_BUCKETS, Metrics
from p2l_cli.serve.router import Decision, Job, MicroBatcher, RequestError, parse_route_model

ROUTE_PREFIX = "p2l"
RETRY_STATUS = {408, 409, 429}  # and every 5xx: the next model may answer


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type, code, param
        )

    def response(self, headers: dict | None = None) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.code, self.param,
                              headers)  # fmt: skip


def error_response(status, message, type="invalid_request_error", code=None, param=None,
                   headers=None) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class ServerState:
    """Everything the handlers share."""

    config: RouterConfig
    core: object  # RouterCore
    scorer: object  # callable on a list of Jobs (runs in the worker thread)
    info: object  # the P2L model's P2LInfo
    model_id: str  # how /healthz names the P2L model
    dry_run: bool = False
    api_key: str | None = None  # the router's own bearer key
    metrics: Metrics = field(default_factory=Metrics)
    batcher: MicroBatcher | None = None
    client: httpx.AsyncClient | None = None


class _CountRequests:
    """ASGI middleware: ``p2l_requests_total{endpoint, code}`` for every HTTP request."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = scope.get("path", "")
            known = path in ("/v1/chat/completions", "/v1/models", "/v1/leaderboard",
                             "/healthz", "/metrics")  # fmt: skip
            self.metrics.inc("p2l_requests_total", endpoint=path if known else "other",
                             code=str(status["code"]))  # fmt: skip


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object, at most ``limit`` bytes (413 beyond; 400 if not JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise APIError(413, f"request body of {declared} bytes exceeds the limit of "
                                    f"{limit} bytes", code="request_too_large")  # fmt: skip
        except ValueError:
            raise APIError(400, "invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes",
                           code="request_too_large")  # fmt: skip
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _turns(messages, param: str = "messages") -> list[str]:
    from p2l_cli.contracts.prompts import BadPrompt, prompt_turns

    try:
        return prompt_turns(messages)
    except BadPrompt as exc:
        raise APIError(400, f"{param}: {exc}", param=param) from None


def _check_messages(body: dict) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(400, f"messages[{i}]: expected an object with a 'role'",
                           param=f"messages[{i}]")  # fmt: skip
    return messages


def route_headers(decision: Decision, model: str, cost: float, attempts: int) -> dict[str, str]:
    """What the response says about the route: the model that answered (a fallback, maybe),
    its expected win rate on the prompt (empty when asked by name) and its cost."""
    rate = decision.win_rates.get(model)
    return {
        "x-p2l-model": model,
        "x-p2l-expected-win-rate": "" if rate is None else f"{rate:.6f}",
        "x-p2l-cost": f"{cost:.10g}",
        "x-p2l-attempts": str(attempts),
    }


def create_app(state: ServerState) -> FastAPI:
    config, metrics = state.config, state.metrics

    @asynccontextmanager
    async def lifespan(app):
        state.batcher = MicroBatcher(
            state.scorer, config.batch_wait_ms / 1000.0, config.max_batch, on_batch=_batch_seen
        )
        state.batcher.start()
        state.client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            trust_env=False,
        )
        try:
            yield
        finally:
            await state.client.aclose()
            await state.batcher.stop()

    def _batch_seen(size: int, seconds: float) -> None:
        metrics.observe("p2l_batch_size", size, buckets=BATCH_BUCKETS)
        metrics.observe("p2l_scoring_seconds", seconds)

    app = FastAPI(title="p2l serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return error_response(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    def check_auth(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), state.api_key.encode()
        ):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                           code="invalid_api_key")  # fmt: skip

    async def score(turns: list[str], spec, commit=True):
        budget, price, stream = spec
        try:
            state.core.check_budget(budget)
        except RequestError as exc:
            raise APIError(400, str(exc), param="model") from None
        return await state.batcher.submit(Job(turns, budget, price, stream, commit))

    def route_of(name: str) -> tuple[float | None, float | None, bool]:
        try:
            return parse_route_model(name, config)
        except RequestError as exc:
            raise APIError(400, str(exc), param="model") from None

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": state.model_id, "models": config.routable,
                "dry_run": state.dry_run}  # fmt: skip

    @app.get("/metrics")
    async def prometheus(request: Request):
        check_auth(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_auth(request)
        created = int(time.time())
        ids = [ROUTE_PREFIX, *config.upstreams]
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "p2l"}
            for name in ids
        ]}  # fmt: skip

    @app.post("/v1/leaderboard")
    async def leaderboard(request: Request):
        """The prompt's leaderboard over all the P2L model's models, and the route the
        router would take (not counted in the balanced sampler's credit)."""
        from p2l_cli.leaderboard import prompt_rows

        check_auth(request)
        body = await read_json(request, config.max_body_bytes)
        if "messages" in body:
            turns = _turns(_check_messages(body))
        elif "prompt" in body:
            turns = _turns(body["prompt"], "prompt")
        else:
            raise APIError(400, "give 'messages' (OpenAI chat) or 'prompt'", param="messages")
        name = body.get("model", ROUTE_PREFIX)
        if not isinstance(name, str) or not (name == ROUTE_PREFIX or name.startswith("p2l:")):
            raise APIError(400, "'model' must be 'p2l' or 'p2l:budget=X'", param="model")
        scored = await score(turns, route_of(name), commit=False)
        rows = prompt_rows(list(state.info.model_list), scored.coefs, scored.eta,
                           state.info.family)
        return {
            "family": state.info.family,
            "leaderboard": rows,
            "route": scored.decision.as_dict(),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request)
        body = await read_json(request, config.max_body_bytes)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError(400, "'model' must be a string", param="model")
        messages = _check_messages(body)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, "'stream' must be a boolean", param="stream")
        if name == ROUTE_PREFIX or name.startswith(ROUTE_PREFIX + ":"):
            scored = await score(_turns(messages), route_of(name))
            decision = scored.decision
        elif name in config.upstreams:
            up = config.upstreams[name]
            decision = Decision(name, None, up.cost, {name: 1.0}, up.cost, [])
        else:
            raise APIError(404, f"the model {name!r} does not exist; use 'p2l', "
                                "'p2l:budget=X' or one of /v1/models", param="model",
                           code="model_not_found")  # fmt: skip
        if state.dry_run:
            return _dry_run_reply(decision, stream)
        return await forward(body, decision, stream)

    def _dry_run_reply(decision: Decision, stream: bool):
        metrics.inc("p2l_route_choices_total", model=decision.model)
        metrics.inc("p2l_spend_total", decision.cost)
        headers = route_headers(decision, decision.model, decision.cost, 0)
        content = json.dumps(decision.as_dict())
        ident, created = f"p2l-dry-{uuid.uuid4().hex[:16]}", int(time.time())
        if not stream:
            return JSONResponse({
                "id": ident, "object": "chat.completion", "created": created,
                "model": decision.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "p2l": decision.as_dict(),
            }, headers=headers)  # fmt: skip

        def chunk(delta, finish):
            return "data: " + json.dumps({
                "id": ident, "object": "chat.completion.chunk", "created": created,
                "model": decision.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }) + "\n\n"  # fmt: skip

        async def events():
            yield chunk({"role": "assistant", "content": content}, None)
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def forward(body: dict, decision: Decision, stream: bool):
        candidates = [decision.model, *decision.fallbacks]
        failures = []
        timed_out = False
        for attempt, name in enumerate(candidates, start=1):
            up = config.upstreams[name]
            headers = {"content-type": "application/json",
                       "accept": "text/event-stream" if stream else "application/json"}
            key = up.api_key()
            if key:
                headers["authorization"] = f"Bearer {key}"
            payload = {**body, "model": up.upstream_model}
            metrics.inc("p2l_upstream_requests_total", model=name)
            start = time.perf_counter()
            response = None
            try:
                request = state.client.build_request(
                    "POST", f"{up.base_url}/chat/completions", json=payload, headers=headers
                )
                response = await asyncio.wait_for(
                    state.client.send(request, stream=True), config.timeout
                )
                retry = response.status_code >= 500 or response.status_code in RETRY_STATUS
                if retry:
                    await response.aclose()
                    kind = f"http_{response.status_code}"
                elif stream and response.status_code < 400:
                    metrics.observe("p2l_upstream_latency_seconds",
                                    time.perf_counter() - start, model=name)  # fmt: skip
                    _answered(name)
                    return StreamingResponse(
                        _relay(response, name), status_code=response.status_code,
                        media_type=response.headers.get("content-type", "text/event-stream"),
                        headers=route_headers(decision, name, up.cost, attempt),
                    )  # fmt: skip
                else:
                    remaining = max(config.timeout - (time.perf_counter() - start), 1e-3)
                    try:
                        content = await asyncio.wait_for(response.aread(), remaining)
                    finally:
                        await response.aclose()
                    metrics.observe("p2l_upstream_latency_seconds",
                                    time.perf_counter() - start, model=name)  # fmt: skip
                    if response.status_code < 400:
                        _answered(name)
                    else:  # the client's mistake (400, 404, ...): no point trying another model
                        metrics.inc("p2l_upstream_errors_total", model=name,
                                    kind=f"http_{response.status_code}")  # fmt: skip
                    return Response(
                        content, status_code=response.status_code,
                        media_type=response.headers.get("content-type", "application/json"),
                        headers=route_headers(decision, name, up.cost, attempt),
                    )  # fmt: skip
            except (asyncio.TimeoutError, httpx.TimeoutException):
                kind, timed_out = "timeout", True
                if response is not None:
                    await response.aclose()
            except httpx.HTTPError as exc:
                kind = "connect" if isinstance(exc, httpx.ConnectError) else "transport"
                if response is not None:
                    await response.aclose()
            metrics.inc("p2l_upstream_errors_total", model=name, kind=kind)
            failures.append(f"{name}: {kind}")
            if attempt < len(candidates):
                metrics.inc("p2l_fallbacks_total")
        status = 504 if timed_out and all("timeout" in f for f in failures) else 502
        raise APIError(
            status,
            "every upstream failed (" + "; ".join(failures) + ")",
            "upstream_error", code="upstream_timeout" if status == 504 else "upstream_error",
        )

    def _answered(name: str) -> None:
        metrics.inc("p2l_route_choices_total", model=name)
        metrics.inc("p2l_spend_total", config.upstreams[name].cost)

    async def _relay(response: httpx.Response, name: str):
        try:
            async for chunk in response.aiter_bytes():  # decoded, as the headers we send say
                yield chunk
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            metrics.inc("p2l_upstream_errors_total", model=name, kind="stream")
            error = {"error": {"message": f"upstream {name} broke off the stream "
                                          f"({type(exc).__name__})",
                               "type": "upstream_error", "param": None, "code": "upstream_error"}}
            yield ("data: " + json.dumps(error) + "\n\n").encode()
        finally:
            await response.aclose()

    app.add_middleware(_CountRequests, metrics=metrics)
    return app
