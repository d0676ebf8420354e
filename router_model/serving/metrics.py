"""The series every front door exports about the data plane, owned once.

The gRPC service exports them as `router_*` and the gateway as `router_gateway_*` (names kept
from before they were shared, so dashboards do not break); `SeriesNames` is the only place the
two spellings differ. Each owner keeps its own CollectorRegistry, so several servers in one
process never collide. Every method is thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router_model.decision import RoutingDecision
from router_model.observe.drift import RollingDrift, gauge_values
from router_model.router import Router

DECISION_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


@dataclass(frozen=True)
class SeriesNames:
    """How one front door spells the shared series."""

    prefix: str  # router / router_gateway
    loaded: str  # 1 while a model serves
    info: str  # the served artifact version (value 1)
    by_mode: bool  # decisions also labelled by mode (the gateway's observe / route)


GRPC_NAMES = SeriesNames("router", "router_model_loaded", "router_model_info", by_mode=False)
GATEWAY_NAMES = SeriesNames("router_gateway", "router_gateway_router_loaded", "router_gateway_router_info", by_mode=True)


class _ModelCollector(Collector):
    """The loaded flag and the version's info series, read from one value so a scrape never sees
    the old version dropped before the new one is set."""

    def __init__(self, names: SeriesNames) -> None:
        self._names = names
        self.artifact_version: str | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        version = self.artifact_version
        yield GaugeMetricFamily(self._names.loaded, "1 when an artifact is loaded and serving.", value=int(version is not None))
        info = GaugeMetricFamily(self._names.info, "The artifact version being served (value always 1).", labels=["artifact_version"])
        if version is not None:
            info.add_metric([version], 1)
        yield info


class _DecisionLogCollector(Collector):
    """<prefix>_decision_log_errors_total, read from the writer's own count (it never raises, so
    this is the only sign that records are being lost)."""

    def __init__(self, name: str, errors: Callable[[], int]) -> None:
        self._name = name
        self._errors = errors

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, "Decision-log records lost to a failed write.", value=self._errors())


class _DriftCollector(Collector):
    """<prefix>_drift_*: the rolling window of the serving router's decisions against its training
    split (router_model/observe/drift.py), computed at scrape time."""

    def __init__(self, prefix: str, window: RollingDrift) -> None:
        self._prefix = prefix
        self._window = window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, text, value in gauge_values(self._window.snapshot()):
            yield GaugeMetricFamily(f"{self._prefix}_drift_{name}", text, value=value)


class ServingMetrics:
    """Decisions, decision time, loads, the served version, drift and decision-log losses."""

    def __init__(self, registry: CollectorRegistry, names: SeriesNames) -> None:
        self.registry = registry
        self.names = names
        p = names.prefix
        labels = ["model", "reason", "mode"] if names.by_mode else ["model", "reason"]
        self.decisions = Counter(f"{p}_decisions", "Routing decisions, by chosen model and reason.", labels, registry=registry)
        self.decision_seconds = Histogram(
            f"{p}_decision_seconds", "Time to decide one request (tokenise, graph run, head).",
            buckets=DECISION_SECONDS_BUCKETS, registry=registry,
        )
        self.reloads = Counter(f"{p}_reloads", "Artifact loads (the one at start-up included), by result.", ["result"],
                               registry=registry)
        self._model = _ModelCollector(names)
        registry.register(self._model)
        self.drift = RollingDrift()
        registry.register(_DriftCollector(p, self.drift))

    def count_decisions(self, decisions: Iterable[RoutingDecision], mode: str | None = None) -> None:
        for d in decisions:
            if self.names.by_mode:
                self.decisions.labels(d.model, d.reason, mode or "route").inc()
            else:
                self.decisions.labels(d.model, d.reason).inc()

    def count_unrouted(self, model: str, reason: str, mode: str) -> None:
        """A request the router could not read, forwarded as asked (the gateway fails open)."""
        self.decisions.labels(model, reason, mode).inc()

    def observe_drift(self, router: Router, decisions: Iterable[RoutingDecision]) -> None:
        """Add decisions of `router` to the rolling drift window."""
        self.drift.observe(router.drift_reference, router.strong_model, decisions)

    def model_loaded(self, artifact_version: str) -> None:
        self._model.artifact_version = artifact_version

    def count_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()

    def watch_decision_log(self, errors: Callable[[], int]) -> None:
        """Export the decision log's failed-write count (`errors` returns it)."""
        self.registry.register(_DecisionLogCollector(f"{self.names.prefix}_decision_log_errors", errors))
