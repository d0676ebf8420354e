"""Prometheus text-format metrics with the standard library only.

Kept dependency-free on purpose: the inference image stays small, and the handful of series the
service exports (counters, one histogram, two gauges) need nothing more than a lock and dicts.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Round-trip latency buckets in seconds: sub-millisecond to a slow batch.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """Thread-safe counters for the service; `render()` gives the exposition text."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._buckets = tuple(sorted(buckets))
        self._requests: dict[str, int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)
        self._latency_counts: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = defaultdict(float)
        self._decisions: dict[tuple[str, str], int] = defaultdict(int)
        self._reloads: dict[str, int] = defaultdict(int)
        self._in_flight = 0
        self._artifact_version: str | None = None

    def start_rpc(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finish_rpc(self, rpc: str, code: str, seconds: float) -> None:
        """Count one finished RPC with its status code name ("OK", "INVALID_ARGUMENT", ...)."""
        slot = bisect.bisect_left(self._buckets, seconds)
        with self._lock:
            self._in_flight -= 1
            self._requests[rpc] += 1
            if code != "OK":
                self._errors[(rpc, code)] += 1
            counts = self._latency_counts.get(rpc)
            if counts is None:
                counts = self._latency_counts[rpc] = [0] * (len(self._buckets) + 1)
            counts[slot] += 1
            self._latency_sum[rpc] += seconds

    def count_decisions(self, pairs: list[tuple[str, str]]) -> None:
        """Count decisions given as (model, reason) pairs."""
        with self._lock:
            for pair in pairs:
                self._decisions[pair] += 1

    def model_loaded(self, artifact_version: str) -> None:
        with self._lock:
            self._artifact_version = artifact_version

    def count_reload(self, ok: bool) -> None:
        with self._lock:
            self._reloads["ok" if ok else "failed"] += 1

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every series."""
        with self._lock:
            out: list[str] = []

            def head(name: str, kind: str, text: str) -> None:
                out.append(f"# HELP {name} {text}")
                out.append(f"# TYPE {name} {kind}")

            head("router_requests_total", "counter", "RPCs finished, by method.")
            for rpc, n in sorted(self._requests.items()):
                out.append(f"router_requests_total{_labels(rpc=rpc)} {n}")
            head("router_errors_total", "counter", "RPCs that ended with a non-OK status, by method and code.")
            for (rpc, code), n in sorted(self._errors.items()):
                out.append(f"router_errors_total{_labels(rpc=rpc, code=code)} {n}")
            head("router_request_duration_seconds", "histogram", "Server-side time per RPC.")
            for rpc, counts in sorted(self._latency_counts.items()):
                running = 0
                for bound, n in zip((*self._buckets, float("inf")), counts):
                    running += n
                    le = "+Inf" if bound == float("inf") else _num(bound)
                    out.append(f"router_request_duration_seconds_bucket{_labels(rpc=rpc, le=le)} {running}")
                out.append(f"router_request_duration_seconds_sum{_labels(rpc=rpc)} {self._latency_sum[rpc]!r}")
                out.append(f"router_request_duration_seconds_count{_labels(rpc=rpc)} {running}")
            head("router_decisions_total", "counter", "Routing decisions, by chosen model and reason.")
            for (model, reason), n in sorted(self._decisions.items()):
                out.append(f"router_decisions_total{_labels(model=model, reason=reason)} {n}")
            head("router_reloads_total", "counter", "Artifact loads (the one at start-up included), by result.")
            for result, n in sorted(self._reloads.items()):
                out.append(f"router_reloads_total{_labels(result=result)} {n}")
            head("router_in_flight_requests", "gauge", "RPCs being handled now.")
            out.append(f"router_in_flight_requests {self._in_flight}")
            head("router_model_loaded", "gauge", "1 when an artifact is loaded and serving.")
            out.append(f"router_model_loaded {int(self._artifact_version is not None)}")
            head("router_model_info", "gauge", "The artifact version being served (value always 1).")
            if self._artifact_version is not None:
                out.append(f"router_model_info{_labels(artifact_version=self._artifact_version)} 1")
            return "\n".join(out) + "\n"


def serve_metrics(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve GET /metrics on host:port from a daemon thread; port 0 picks a free one."""

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
