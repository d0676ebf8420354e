"""Prometheus metrics of one gateway app, in its own CollectorRegistry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router_model.observe.drift import RollingDrift, gauge_values

PREFIX = "router_gateway"


class _DriftCollector(Collector):
    """router_gateway_drift_*, computed from the rolling window at scrape time."""

    def __init__(self, window: RollingDrift) -> None:
        self._window = window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, text, value in gauge_values(self._window.snapshot()):
            yield GaugeMetricFamily(f"{PREFIX}_drift_{name}", text, value=value)


class GatewayMetrics:
    """The series the gateway exports (docs/gateway.md lists them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Finished HTTP requests", ["endpoint", "status"], registry=r)
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Time from request to the last byte of the answer",
            ["endpoint", "stream"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.in_flight = Gauge(f"{PREFIX}_in_flight_requests", "Chat completions in progress", registry=r)
        self.decisions = Counter(f"{PREFIX}_decisions", "Routing decisions", ["model", "reason", "mode"], registry=r)
        self.decision_seconds = Histogram(
            f"{PREFIX}_decision_seconds", "Router.predict time per request", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.upstream_requests = Counter(
            f"{PREFIX}_upstream_requests", "Requests sent upstream, by model and HTTP status (or error kind)",
            ["model", "status"], registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors", "Upstream failures: connect, timeout, status_5xx, invalid_response, stream_interrupted",
            ["kind"], registry=r,
        )
        self.escalations = Counter(f"{PREFIX}_escalations", "Cheap answers retried on the strong model, by failed check", ["check"], registry=r)
        self.fallbacks = Counter(f"{PREFIX}_fallbacks", "Cheap-model failures retried on the strong model", ["cause"], registry=r)
        self.disconnects = Counter(f"{PREFIX}_client_disconnects", "Streams the client left before the end", registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens from upstream usage", ["model", "kind"], registry=r)
        self.cost = Counter(f"{PREFIX}_cost_usd", "Dollars spent upstream (priced models only)", ["model"], registry=r)
        self.routed_cost = Counter(f"{PREFIX}_routed_cost_usd", "Dollars spent on requests the router decided", ["mode"], registry=r)
        self.baseline_cost = Counter(
            f"{PREFIX}_baseline_cost_usd", "What the same decided requests would cost always on the strong model", ["mode"], registry=r
        )
        self.saved = Gauge(
            f"{PREFIX}_saved_usd",
            "baseline - spent on decided requests (route); in observe mode what routing would have saved at the same tokens",
            ["mode"], registry=r,
        )
        self.log_errors = Gauge(f"{PREFIX}_decision_log_errors", "Decision-log writes that failed", registry=r)
        self.router_loaded = Gauge(f"{PREFIX}_router_loaded", "1 while a router is loaded", registry=r)
        self.router_info = Gauge(f"{PREFIX}_router_info", "Artifact version of the loaded router", ["artifact_version"], registry=r)
        self.reloads = Counter(f"{PREFIX}_reloads", "Router loads (start-up included)", ["result"], registry=r)
        # Shadow grading (router_model.labelling.shadow; docs/labelling.md)
        self.shadow_sampled = Counter(f"{PREFIX}_shadow_sampled", "Routed requests queued for shadow grading", registry=r)
        self.shadow_dropped = Counter(
            f"{PREFIX}_shadow_dropped", "Requests not shadow-graded: queue_full, or tag (a configured drop tag)", ["reason"], registry=r
        )
        self.shadow_rows = Counter(f"{PREFIX}_shadow_rows", "Shadow-graded requests: labelled, ungraded, failed", ["result"], registry=r)
        self.shadow_cost = Counter(f"{PREFIX}_shadow_cost_usd", "Dollars shadow grading spent (the other answer, the judge calls)", registry=r)
        self.shadow_queue = Gauge(f"{PREFIX}_shadow_queue_depth", "Jobs waiting for a shadow-grading worker", registry=r)
        # Drift: the rolling window of decisions against its training data (observe/drift.py)
        self.drift = RollingDrift()
        r.register(_DriftCollector(self.drift))
        self._saved = {"route": 0.0, "observe": 0.0}
        self._lock = threading.Lock()
        for mode in self._saved:
            self.saved.labels(mode).set(0.0)

    def add_saving(self, mode: str, amount: float) -> None:
        with self._lock:
            self._saved[mode] += amount
            self.saved.labels(mode).set(self._saved[mode])

    def observe_drift(self, router: Any, decision: Any) -> None:
        """Add one decision of `router` (a Router) to the rolling drift window."""
        self.drift.observe(getattr(router, "drift_reference", None), getattr(router, "strong_model", ""), [decision])

    def model_loaded(self, version: str) -> None:
        self.router_info.clear()
        self.router_info.labels(version).set(1)
        self.router_loaded.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
