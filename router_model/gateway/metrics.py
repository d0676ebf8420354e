"""Prometheus metrics of one gateway app, in its own CollectorRegistry."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router_model.serving.metrics import GATEWAY_NAMES, ServingMetrics

PREFIX = GATEWAY_NAMES.prefix
ANSWER_SCORE_BUCKETS = tuple(round(0.05 + 0.1 * i, 2) for i in range(10))  # 0.05, 0.15, ..., 0.95


class GatewayMetrics:
    """The series the gateway exports (docs/gateway.md lists them): its HTTP calls here, the data
    plane's (decisions, loads, drift, decision-log losses) in `serving`."""

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
        self.upstream_requests = Counter(
            f"{PREFIX}_upstream_requests", "Requests sent upstream, by model and HTTP status (or error kind)",
            ["model", "status"], registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors",
            "Upstream failures: connect, timeout, status_5xx, invalid_response, response_too_large, stream_interrupted",
            ["kind"], registry=r,
        )
        self.upstream_latency = Histogram(
            f"{PREFIX}_upstream_latency_seconds",
            "Time from sending a request upstream to its response headers (a failed attempt: to the failure), by model",
            ["model"], registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.escalations = Counter(f"{PREFIX}_escalations", "Cheap answers retried on the strong model, by failed check", ["check"], registry=r)
        self.answer_score = Histogram(
            f"{PREFIX}_answer_score",
            "Answer-quality scores of cheap answers, non-streamed or buffered streams (P(the cheap answer fails where the strong one passes)), by mode",
            ["mode"], registry=r, buckets=ANSWER_SCORE_BUCKETS,
        )
        self.answers_unscored = Counter(
            f"{PREFIX}_answers_unscored",
            "Cheap answers the answer score could not read, by reason (no_logprobs: the score reads token "
            "log-probabilities and the answer came without them)", ["reason"], registry=r,
        )
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
        # Shadow grading (router_model.labelling.shadow; docs/labelling.md)
        self.shadow_sampled = Counter(f"{PREFIX}_shadow_sampled", "Routed requests queued for shadow grading", registry=r)
        self.shadow_dropped = Counter(
            f"{PREFIX}_shadow_dropped", "Requests not shadow-graded: queue_full, or tag (a configured drop tag)", ["reason"], registry=r
        )
        self.shadow_rows = Counter(f"{PREFIX}_shadow_rows", "Shadow-graded requests: labelled, ungraded, failed", ["result"], registry=r)
        self.shadow_cost = Counter(f"{PREFIX}_shadow_cost_usd", "Dollars shadow grading spent (the other answer, the judge calls)", registry=r)
        self.shadow_queue = Gauge(f"{PREFIX}_shadow_queue_depth", "Jobs waiting for a shadow-grading worker", registry=r)
        # Conversations keep their model (router_model/gateway/affinity.py): kind is tool-loop or session.
        self.affinity_hits = Counter(f"{PREFIX}_affinity_hits", "Affinity look-ups that found a model", ["kind"], registry=r)
        self.affinity_misses = Counter(f"{PREFIX}_affinity_misses", "Affinity look-ups that found none", ["kind"], registry=r)
        self.affinity_evictions = Counter(
            f"{PREFIX}_affinity_evictions", "Affinity entries dropped: capacity (LRU) or expired (TTL)", ["reason"], registry=r
        )
        self.serving = ServingMetrics(r, GATEWAY_NAMES)
        self._saved = {"route": 0.0, "observe": 0.0}
        self._lock = threading.Lock()
        for mode in self._saved:
            self.saved.labels(mode).set(0.0)

    def add_saving(self, mode: str, amount: float) -> None:
        with self._lock:
            self._saved[mode] += amount
            self.saved.labels(mode).set(self._saved[mode])

    def render(self) -> bytes:
        return generate_latest(self.registry)
