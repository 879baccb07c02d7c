"""Counters and histograms for ``GET /metrics`` in the Prometheus text format (0.0.4),
written by hand: the router needs a dozen series, not a client library."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


HELP = {
    "p2l_requests_total": ("counter", "HTTP requests by endpoint and status code."),
    "p2l_route_choices_total": ("counter", "Requests routed (or passed through) per model."),
    "p2l_spend_total": ("counter", "Sum of the configured cost of every answered request."),
    "p2l_upstream_requests_total": ("counter", "Requests sent upstream per model."),
    "p2l_upstream_errors_total": ("counter", "Failed upstream attempts by model and kind."),
    "p2l_fallbacks_total": ("counter", "Fallback attempts: a failed upstream, then the next model."),
    "p2l_upstream_latency_seconds": ("histogram", "Upstream response time (to headers)."),
    "p2l_batch_size": ("histogram", "Prompts per P2L forward pass."),
    "p2l_scoring_seconds": ("histogram", "Time of one micro-batch: forward pass and routes."),
}


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + inner + "}"


class Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """Thread-safe; every series is created on first use."""


    def __init__(self):
        self.lock = threading.Lock()
        self.counters: dict[tuple, float] = defaultdict(float)
        self.histograms: dict[tuple, Histogram] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self.lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def observe(self, name: str, value: float, buckets=LATENCY_BUCKETS, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            if key not in self.histograms:
                self.histograms[key] = Histogram(buckets)
            self.histograms[key].observe(value)

    def value(self, name: str, **labels: str) -> float:
        with self.lock:
            return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        lines = []
        with self.lock:
            counters = dict(self.counters)
            histograms = {k: (h.buckets, list(h.counts), h.sum, h.count)
                          for k, h in self.histograms.items()}  # fmt: skip
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                series = sorted((k, v) for k, v in counters.items() if k[0] == name)
                if not series and name in ("p2l_spend_total", "p2l_fallbacks_total"):
                    lines.append(f"{name} 0")
                for (_, labels), value in series:
                    lines.append(f"{name}{_labels(labels)} {value:.10g}")
                continue
            for (hist_name, labels), (buckets, counts, total, count) in sorted(histograms.items()):
                if hist_name != name:
                    continue
                for bound, n in zip(buckets, counts):
                    lines.append(f"{name}_bucket{_labels(labels + (('le', f'{bound:g}'),))} {n}")
                lines.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {count}")
                lines.append(f"{name}_sum{_labels(labels)} {total:.10g}")
                lines.append(f"{name}_count{_labels(labels)} {count}")
        return "\n".join(lines) + "\n"
