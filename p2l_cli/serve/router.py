"""The router's core: score prompts with the P2L model in micro-batches and choose a model
for each with the routing code of ``p2l route`` (:mod:`p2l_cli.route`).

A request's route is the per-prompt LP ``max pi . v  s.t.  pi . c <= budget``
(:func:`p2l_cli.route.solve_routing` with the ``prompt`` scope) or, with a price, ``argmax v - price
x c``; ``v`` are the expected win rates against the opponents
(:func:`p2l_cli.stats.winrates.win_rates_vs_opponents`). A budget that falls between two frontier models
gives a mixed strategy; the model is then drawn from it:

- ``balanced`` (default): a running credit of expected minus actual spend picks the dearer
  model of the mix only when the credit covers it, so that the actual mean spend over a
  stream stays within one answer's cost of the expected spend (low-discrepancy sampling);
- ``random``: an independent draw (seeded);
- ``mode``: the most likely model.

With ``budget_scope: stream`` the budget holds for the mean over the stream of requests
rather than for each: every request takes ``argmax v - price x c``
(:func:`p2l_cli.route.route_by_price`, the dual of the batch LP of ``p2l route``), the price
following the overspend so far (:meth:`RouterCore.stream_price`).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from p2l_cli.serve.config import RouterConfig

_TOP_K = re.compile(r"^leaderboard-top-(\d+)$")


class RequestError(ValueError):
    """A request that cannot be routed; the message is for the client (HTTP 400)."""


@dataclass
class Decision:
    """The route of one request."""

    model: str  # the chosen model
    win_rate: float | None  # its expected win rate against the opponents (None: by name)
    cost: float  # its cost
    strategy: dict[str, float]  # the mixed strategy it was drawn from
    expected_cost: float  # the strategy's expected cost
    fallbacks: list[str]  # models to try, in order, when the chosen one fails
    budget: float | None = None
    price: float | None = None
    win_rates: dict[str, float] = field(default_factory=dict)  # every routable model's

    def as_dict(self) -> dict:
        return {
            "model": self.model, "expected_win_rate": self.win_rate, "cost": self.cost,
            "strategy": self.strategy, "expected_cost": self.expected_cost,
            "fallbacks": self.fallbacks, "budget": self.budget, "price": self.price,
            "win_rates": self.win_rates,
        }  # fmt: skip


def parse_route_model(name: str, config: RouterConfig) -> tuple[float | None, float | None, bool]:
    """``(budget, price, stream)`` of a request's ``model``: ``p2l`` -> the configured budget
    or price (``stream``: the budget is kept over the stream of requests); ``p2l:budget=X`` or
    ``p2l:price=Y`` override them (a budget given in a request is that request's own).
    Raises :class:`RequestError` for anything else after ``p2l:``."""
    budget, price = config.budget, config.price
    stream = config.budget_scope == "stream" and budget is not None
    if name == "p2l":
        return budget, price, stream
    options = name.removeprefix("p2l:")
    for part in filter(None, options.split(",")):
        key, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise RequestError(f"model {name!r}: {part!r} is not KEY=NUMBER") from None
        if not np.isfinite(number) or number < 0:
            raise RequestError(f"model {name!r}: {key} must be a finite number >= 0")
        if key == "budget":
            budget, price, stream = number, None, False
        elif key == "price":
            budget, price, stream = None, number, False
        else:
            raise RequestError(f"model {name!r}: unknown option {key!r} (budget, price)")
    return budget, price, stream


class RouterCore:
    """Expected win rates and routes for the P2L model's coefficients."""

    def __init__(self, models: Sequence[str], family: str, config: RouterConfig):
        from p2l_cli.route import opponent_distribution

        self.models = list(models)
        self.family = family
        self.config = config
        self.names = config.routable
        self.choosable = [self.models.index(name) for name in self.names]
        self.costs = np.array([config.upstreams[n].cost for n in self.names], dtype=np.float64)
        opponents = config.opponents
        self.top_k = None
        self.q = None
        if isinstance(opponents, dict):
            q = np.array([opponents.get(name, 0.0) for name in self.models], dtype=np.float64)
            self.q = q / q.sum()
        elif _TOP_K.match(opponents):
            self.top_k = opponents
            k = int(_TOP_K.match(opponents).group(1))
            if not 1 <= k <= len(self.models):
                raise RequestError(f"opponents {opponents}: K must be between 1 and "
                                   f"{len(self.models)}")  # fmt: skip
        else:
            self.q = opponent_distribution("uniform", self.models, None, None, family)
        self.credit = 0.0
        self.overspend = 0.0  # the stream budget's virtual queue (cost units)
        spread = float(self.costs.max() - self.costs.min())
        self.spread = spread if spread > 0 else 1.0
        self.rng = np.random.default_rng(config.seed)
        self.lock = threading.Lock()

    def values(self, coefs: np.ndarray, eta: np.ndarray | None) -> np.ndarray:
        """Expected win rates ``[N, S]`` of the routable models."""
        from p2l_cli.route import opponent_distribution
        from p2l_cli.stats.winrates import win_rates_vs_opponents

        coefs = np.asarray(coefs, dtype=np.float64)
        eta = None if eta is None else np.asarray(eta, dtype=np.float64)
        if self.top_k is None:
            return win_rates_vs_opponents(coefs, self.q, eta, self.family)[:, self.choosable]
        rows = []  # each prompt's own top K: a route must not depend on its batch neighbours
        for i in range(len(coefs)):
            e = None if eta is None else eta[i : i + 1]
            q = opponent_distribution(self.top_k, self.models, coefs[i : i + 1], e, self.family)
            rows.append(win_rates_vs_opponents(coefs[i : i + 1], q, e, self.family)[0])
        return np.stack(rows)[:, self.choosable]

    def check_budget(self, budget: float | None) -> None:
        if budget is not None and budget < self.costs.min():
            s = int(np.argmin(self.costs))
            raise RequestError(
                f"budget {budget:g} is below the cost of the cheapest model "
                f"({self.names[s]}: {self.costs[s]:g})"
            )

    def route(
        self,
        coefs: np.ndarray,
        eta: np.ndarray | None,
        params: Sequence[tuple[float | None, float | None, bool]],
        commit: Sequence[bool] | None = None,
    ) -> list[Decision]:
        """One decision per prompt; ``params[i]`` is its ``(budget, price, stream)``;
        ``commit[i]`` False previews a route without changing the router's state (the
        balanced sampler's credit, the stream budget's overspend)."""
        from p2l_cli.route import route_by_price, solve_routing

        values = self.values(coefs, eta)
        commit = [True] * len(params) if commit is None else commit
        decisions: list[Decision | None] = [None] * len(params)
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(params):
            groups.setdefault(tuple(key), []).append(i)
        with self.lock:
            for (budget, price, stream), rows in groups.items():
                if stream:  # in arrival order: each route moves the price of the next
                    for row in rows:
                        price_now = self.stream_price(budget)
                        strategy = route_by_price(values[row : row + 1], self.costs,
                                                  price_now).strategy[0]  # fmt: skip
                        decision = self._decide(values[row], strategy, budget, price_now,
                                                commit[row], stream=True)  # fmt: skip
                        if commit[row]:
                            self.overspend = max(0.0, self.overspend + decision.cost - budget)
                        decisions[row] = decision
                    continue
                routing = solve_routing(values[rows], self.costs, budget, "prompt", price)
                for row, strategy in zip(rows, routing.strategy):
                    decisions[row] = self._decide(values[row], strategy, budget, price,
                                                  commit[row])  # fmt: skip
        return decisions

    def stream_price(self, budget: float) -> float:
        """The price of the stream budget: proportional to the overspend so far (a virtual
        queue ``Q <- max(0, Q + cost - budget)``; drift-plus-penalty). An overspend of
        ``stream_window`` budgets prices the whole cost spread at one unit of win rate."""
        return self.overspend / (self.config.stream_window * budget * self.spread)

    def _decide(self, v, strategy, budget, price, commit: bool, stream: bool = False
                ) -> Decision:  # fmt: skip
        costs = self.costs
        expected = float(strategy @ costs)
        support = np.flatnonzero(strategy > 1e-12)
        support = support[np.argsort(costs[support], kind="stable")]
        sampling = self.config.sampling
        if len(support) == 1 or sampling == "mode":
            s = int(support[np.argmax(strategy[support])])
        elif sampling == "random":
            p = strategy[support] / strategy[support].sum()
            s = int(self.rng.choice(support, p=p)) if commit else int(support[np.argmax(p)])
        else:  # balanced: the dearest model of the mix that the credit covers
            credit = self.credit + expected
            affordable = support[costs[support] <= credit + 1e-15]
            s = int(affordable[-1]) if len(affordable) else int(support[0])
            if commit:
                self.credit = credit - costs[s]
        score = v if not price else v - price * costs
        order = np.argsort(-score, kind="stable")
        fallbacks = [
            self.names[j]
            for j in order
            if j != s and (budget is None or costs[j] <= budget + 1e-15
                           or (stream and costs[j] <= costs[s]))
        ][: self.config.fallbacks]
        return Decision(
            model=self.names[s],
            win_rate=float(v[s]),
            cost=float(costs[s]),
            strategy={self.names[j]: float(strategy[j]) for j in support},
            expected_cost=expected,
            fallbacks=fallbacks,
            budget=budget,
            price=price,
            win_rates={name: float(x) for name, x in zip(self.names, v)},
        )


@dataclass
class Job:
    turns: list[str]
    budget: float | None = None
    price: float | None = None
    stream: bool = False
    commit: bool = True


@dataclass
class Scored:
    """What the worker thread returns for one job."""

    coefs: np.ndarray
    eta: float | None
    decision: Decision


class Scorer:
    """Runs the P2L model and the router on a batch of jobs (in the worker thread)."""

    def __init__(self, model, tokenizer, core: RouterCore):
        self.model, self.tokenizer, self.core = model, tokenizer, core

    def __call__(self, jobs: list[Job]) -> list[Scored]:
        from p2l_cli.predict import predict_prompts

        coefs, eta = predict_prompts(self.model, self.tokenizer, [job.turns for job in jobs])
        decisions = self.core.route(
            coefs, eta, [(j.budget, j.price, j.stream) for j in jobs], [j.commit for j in jobs]
        )
        return [
            Scored(coefs[i], None if eta is None else float(eta[i]), decisions[i])
            for i in range(len(jobs))
        ]


class MicroBatcher:
    """Collects concurrent jobs for up to ``wait_s`` (or ``max_batch`` of them) and runs
    each batch with one call of ``fn`` in a single worker thread; the event loop stays free
    meanwhile, so the next batch fills while one is scored. A job with no other in flight,
    after a batch of one, does not wait: a single client pays no batching delay."""

    def __init__(self, fn: Callable[[list], list], wait_s: float, max_batch: int,
                 on_batch: Callable[[int, float], None] | None = None):  # fmt: skip
        self.fn = fn
        self.wait_s = wait_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.pending = 0  # jobs submitted and not yet answered
        self.last_size = 0
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="p2l-score")

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, job):
        future = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            await self.queue.put((job, future))
            return await future
        finally:
            self.pending -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            # a lone client (nothing else in flight, last batch of one) does not wait
            alone = self.pending <= 1 and self.last_size <= 1
            if self.wait_s > 0 and not alone and self.queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.wait_s)
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [(job, fut) for job, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            self.last_size = len(batch)
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.fn,
                                                     [job for job, _ in batch])  # fmt: skip
            except Exception as exc:  # noqa: BLE001 (handed to every waiting request)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
