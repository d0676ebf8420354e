"""The service's Prometheus metrics and the HTTP endpoint that serves them.

Each `Metrics` owns its own CollectorRegistry rather than prometheus_client's global one, so
several servers in one process (the tests start many) never collide or share counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router_model.observe.drift import RollingDrift, gauge_values

# Round-trip latency buckets in seconds: sub-millisecond to a slow batch.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
# What generate_latest writes: the classic text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ModelCollector(Collector):
    """router_model_loaded and router_model_info, read from one value so a scrape never sees
    the old version dropped before the new one is set."""

    def __init__(self) -> None:
        self.artifact_version: str | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        version = self.artifact_version
        yield GaugeMetricFamily("router_model_loaded", "1 when an artifact is loaded and serving.", value=int(version is not None))
        info = GaugeMetricFamily(
            "router_model_info", "The artifact version being served (value always 1).", labels=["artifact_version"]
        )
        if version is not None:
            info.add_metric([version], 1)
        yield info


class _DecisionLogCollector(Collector):
    """router_decision_log_errors_total, read from the writer's own count (it never raises, so
    this is the only sign that records are being lost)."""

    def __init__(self, errors: Callable[[], int]) -> None:
        self._errors = errors

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "router_decision_log_errors", "Decision-log records lost to a failed write.", value=self._errors()
        )


class _DriftCollector(Collector):
    """router_drift_*: the rolling window of the serving router's decisions against its training
    split (router_model/observe/drift.py), computed at scrape time."""

    def __init__(self, window: RollingDrift) -> None:
        self._window = window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, text, value in gauge_values(self._window.snapshot()):
            yield GaugeMetricFamily(f"router_drift_{name}", text, value=value)


class Metrics:
    """The service's series in a registry of their own; every method is thread-safe."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("router_requests_total", "RPCs finished, by method.", ["rpc"], registry=r)
        self._errors = Counter(
            "router_errors_total", "RPCs that ended with a non-OK status, by method and code.", ["rpc", "code"], registry=r
        )
        self._latency = Histogram(
            "router_request_duration_seconds", "Server-side time per RPC.", ["rpc"], buckets=sorted(buckets), registry=r
        )
        self._decisions = Counter(
            "router_decisions_total", "Routing decisions, by chosen model and reason.", ["model", "reason"], registry=r
        )
        self._reloads = Counter(
            "router_reloads_total", "Artifact loads (the one at start-up included), by result.", ["result"], registry=r
        )
        self._in_flight = Gauge("router_in_flight_requests", "RPCs being handled now.", registry=r)
        self._model = _ModelCollector()
        r.register(self._model)
        self.drift = RollingDrift()
        r.register(_DriftCollector(self.drift))

    def start_rpc(self) -> None:
        self._in_flight.inc()

    def finish_rpc(self, rpc: str, code: str, seconds: float) -> None:
        """Count one finished RPC with its status code name ("OK", "INVALID_ARGUMENT", ...)."""
        self._requests.labels(rpc=rpc).inc()
        if code != "OK":
            self._errors.labels(rpc=rpc, code=code).inc()
        self._latency.labels(rpc=rpc).observe(seconds)
        self._in_flight.dec()  # last: a scrape that sees the call done also sees it counted

    def count_decisions(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Count decisions given as (model, reason) pairs."""
        for model, reason in pairs:
            self._decisions.labels(model=model, reason=reason).inc()

    def observe_drift(self, router: Any, decisions: Iterable[Any]) -> None:
        """Add decisions of `router` (a Router) to the rolling drift window."""
        self.drift.observe(getattr(router, "drift_reference", None), getattr(router, "strong_model", ""), decisions)

    def model_loaded(self, artifact_version: str) -> None:
        self._model.artifact_version = artifact_version

    def count_reload(self, ok: bool) -> None:
        self._reloads.labels(result="ok" if ok else "failed").inc()

    def watch_decision_log(self, errors: Callable[[], int]) -> None:
        """Export the decision log's failed-write count (`errors` returns it)."""
        self.registry.register(_DecisionLogCollector(errors))

    def render(self) -> str:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry).decode()


def serve_metrics(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve GET /metrics on host:port from a daemon thread; port 0 picks a free one.

    Not prometheus_client's own server: that one answers every path, and only /metrics is ours.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="router-metrics", daemon=True).start()
    return httpd
