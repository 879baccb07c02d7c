"""The router's configuration file (``router.yaml``): budget or price, the upstream of every
model that may be chosen, and the routing settings.

Every mistake is a :class:`~p2l_cli.errors.UserError` naming the file and the key, raised at
start-up before the P2L model is loaded. API keys are read from the environment only; the
configuration names the variables, never the keys.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from p2l_cli.errors import UserError

SAMPLING = ("balanced", "random", "mode")
SCOPES = ("prompt", "stream")
_TOP_K = re.compile(r"^leaderboard-top-(\d+)$")
TOP_KEYS = {
    "budget", "price", "models", "opponents", "allowed", "fallbacks", "timeout", "sampling",
    "seed", "batch_wait_ms", "max_batch", "max_body_bytes", "budget_scope", "stream_window",
}  # fmt: skip
MODEL_KEYS = {
    "cost", "price_per_million_output_tokens", "mean_output_tokens", "base_url",
    "upstream_model", "api_key_env",
}  # fmt: skip


@dataclass(frozen=True)
class Upstream:
    """One model the router may send a request to."""

    name: str  # the P2L model's name for it
    cost: float  # expected cost of one answer
    base_url: str  # an OpenAI-compatible API root, e.g. http://host:9001/v1
    upstream_model: str  # the `model` field sent upstream
    api_key_env: str | None = None  # the environment variable holding its key

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass
class RouterConfig:
    upstreams: dict[str, Upstream]  # configured models, in file order
    budget: float | None = None  # expected cost per request
    price: float | None = None  # or the dual price: argmax win rate - price x cost
    opponents: str | dict[str, float] = "uniform"
    allowed: list[str] | None = None  # the configured models routing may choose (None: all)
    fallbacks: int = 2  # further models tried when an upstream fails
    timeout: float = 60.0  # seconds per upstream attempt
    sampling: str = "balanced"
    budget_scope: str = "prompt"  # or "stream": the mean over the requests
    stream_window: float = 20.0  # how fast the stream budget's price reacts (requests)
    seed: int = 0
    batch_wait_ms: float = 5.0
    max_batch: int = 64
    max_body_bytes: int = 1 << 20
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def routable(self) -> list[str]:
        """The models routing may choose, in file order."""
        if self.allowed is None:
            return list(self.upstreams)
        return [name for name in self.upstreams if name in set(self.allowed)]


def model_list_of(model_source: str) -> list[str]:
    """The P2L model's model list, read without loading the network (a local folder's
    ``model_list.json``; a Hub id goes through the Hub cache)."""
    path = Path(model_source)
    if not path.is_dir():
        from p2l_cli.model.checkpoint import resolve_model_dir

        path = resolve_model_dir(model_source)
    listing = path / "model_list.json"
    if not listing.is_file():
        raise UserError(f"{model_source}: not a P2L model folder (no model_list.json)")
    try:
        models = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{listing}: cannot read the model list ({exc})") from None
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise UserError(f"{listing}: expected a JSON list of model names")
    return models


def _number(value, where: str, minimum: float = 0.0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise UserError(f"{where}: {value!r} must be a finite number >= {minimum:g}")
    if integer and int(value) != value:
        raise UserError(f"{where}: {value!r} must be a whole number")
    return int(value) if integer else float(value)


def _upstream(name: str, spec, where: str, known: set[str]) -> Upstream:
    from p2l_cli.contracts.costs import cost_of

    if name not in known:
        raise UserError(f"{where}: model {name!r} is not in the P2L model's model list")
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a mapping with 'cost' and 'base_url'")
    unknown = sorted(set(spec) - MODEL_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(sorted(MODEL_KEYS))})")
    cost = cost_of(spec, where)
    base_url = spec.get("base_url")
    if not isinstance(base_url, str) or urlparse(base_url).scheme not in ("http", "https") \
            or not urlparse(base_url).netloc:  # fmt: skip
        raise UserError(f"{where}: base_url {base_url!r} is not an http(s) URL")
    upstream_model = spec.get("upstream_model", name)
    if not isinstance(upstream_model, str) or not upstream_model:
        raise UserError(f"{where}: upstream_model must be a non-empty string")
    key_env = spec.get("api_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not key_env):
        raise UserError(f"{where}: api_key_env must name an environment variable")
    return Upstream(name, cost, base_url.rstrip("/"), upstream_model, key_env)


def _opponents(value, where: str, known: set[str]) -> str | dict[str, float]:
    if isinstance(value, str):
        top = _TOP_K.match(value)
        if top and not 1 <= int(top.group(1)) <= len(known):
            raise UserError(f"{where}: {value}: K must be between 1 and {len(known)}")
        if value == "uniform" or top:
            return value
        raise UserError(f"{where}: {value!r}: expected 'uniform', 'leaderboard-top-K' or a "
                        "mapping of model -> weight")  # fmt: skip
    if isinstance(value, dict) and value:
        weights = {}
        for name, weight in value.items():
            if name not in known:
                raise UserError(f"{where}: model {name!r} is not in the P2L model's model list")
            weights[str(name)] = _number(weight, f"{where}: {name}")
        if sum(weights.values()) <= 0:
            raise UserError(f"{where}: the opponent weights sum to 0")
        return weights
    raise UserError(f"{where}: expected 'uniform', 'leaderboard-top-K' or a mapping")


def read_config(path: str | Path, model_list: list[str], need_keys: bool = True) -> RouterConfig:
    """Read and check ``router.yaml`` against the P2L model's model list. With ``need_keys``
    every ``api_key_env`` must be set in the environment."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{path}: not valid YAML ({at}{getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with 'models' and 'budget' or 'price'")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (expected {', '.join(sorted(TOP_KEYS))})")
    known = set(model_list)
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise UserError(f"{path}: 'models' must map model names to their upstreams")
    upstreams = {
        str(name): _upstream(str(name), spec, f"{path}: models: {name}", known)
        for name, spec in models.items()
    }
    config = RouterConfig(upstreams, source=str(path))
    if "budget" in data and "price" in data:
        raise UserError(f"{path}: give 'budget' or 'price', not both")
    if data.get("budget") is not None:
        config.budget = _number(data["budget"], f"{path}: budget")
    if data.get("price") is not None:
        config.price = _number(data["price"], f"{path}: price")
    if "opponents" in data:
        config.opponents = _opponents(data["opponents"], f"{path}: opponents", known)
    if data.get("allowed") is not None:
        allowed = data["allowed"]
        if not isinstance(allowed, list) or not allowed:
            raise UserError(f"{path}: allowed: expected a list of configured model names")
        for name in allowed:
            if name not in upstreams:
                raise UserError(f"{path}: allowed: {name!r} is not a configured model")
        config.allowed = [str(a) for a in allowed]
    if "fallbacks" in data:
        config.fallbacks = _number(data["fallbacks"], f"{path}: fallbacks", integer=True)
    if "timeout" in data:
        config.timeout = _number(data["timeout"], f"{path}: timeout", minimum=1e-3)
    if "sampling" in data:
        if data["sampling"] not in SAMPLING:
            raise UserError(f"{path}: sampling {data['sampling']!r}: expected one of "
                            f"{', '.join(SAMPLING)}")  # fmt: skip
        config.sampling = data["sampling"]
    if "budget_scope" in data:
        if data["budget_scope"] not in SCOPES:
            raise UserError(f"{path}: budget_scope {data['budget_scope']!r}: expected one of "
                            f"{', '.join(SCOPES)}")  # fmt: skip
        config.budget_scope = data["budget_scope"]
    if "stream_window" in data:
        config.stream_window = _number(data["stream_window"], f"{path}: stream_window", 1)
    if "seed" in data:
        config.seed = _number(data["seed"], f"{path}: seed", integer=True)
    if "batch_wait_ms" in data:
        config.batch_wait_ms = _number(data["batch_wait_ms"], f"{path}: batch_wait_ms")
    if "max_batch" in data:
        config.max_batch = _number(data["max_batch"], f"{path}: max_batch", 1, integer=True)
    if "max_body_bytes" in data:
        config.max_body_bytes = _number(data["max_body_bytes"], f"{path}: max_body_bytes", 1,
                                        integer=True)  # fmt: skip
    if config.budget is not None:
        cheapest = min(config.routable, key=lambda n: upstreams[n].cost)
        if config.budget < upstreams[cheapest].cost:
            raise UserError(
                f"{path}: budget {config.budget:g} is below the cost of the cheapest model "
                f"({cheapest}: {upstreams[cheapest].cost:g})"
            )
    if need_keys:
        for upstream in upstreams.values():
            if upstream.api_key_env and not os.environ.get(upstream.api_key_env):
                raise UserError(
                    f"{path}: models: {upstream.name}: the environment variable "
                    f"{upstream.api_key_env} (its API key) is not set"
                )
    return config
