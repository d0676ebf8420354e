"""The service's Prometheus metrics and the HTTP endpoint that serves them.

Each `Metrics` owns its own CollectorRegistry rather than prometheus_client's global one, so
several servers in one process (the tests start many) never collide or share counts.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router_model.serving.metrics import GRPC_NAMES, ServingMetrics

# Round-trip latency buckets in seconds: sub-millisecond to a slow batch.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
# What generate_latest writes: the classic text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The service's series in a registry of their own: its RPCs here, the data plane's in `serving`."""

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
        self._in_flight = Gauge("router_in_flight_requests", "RPCs being handled now.", registry=r)
        self.serving = ServingMetrics(r, GRPC_NAMES)

    def start_rpc(self) -> None:
        self._in_flight.inc()

    def finish_rpc(self, rpc: str, code: str, seconds: float) -> None:
        """Count one finished RPC with its status code name ("OK", "INVALID_ARGUMENT", ...)."""
        self._requests.labels(rpc=rpc).inc()
        if code != "OK":
            self._errors.labels(rpc=rpc, code=code).inc()
        self._latency.labels(rpc=rpc).observe(seconds)
        self._in_flight.dec()  # last: a scrape that sees the call done also sees it counted

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
