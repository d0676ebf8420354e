"""The data plane: the served router, a decision (batched or direct), and its record.

Both front doors call it (as KServe's DataPlane serves its gRPC and REST adapters): the gRPC
servicer and the gateway's endpoints only convert their wire format and their errors. What a
decision is recorded as (counters, the drift window, the decision log) is decided here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from router_model.batching import Batcher
from router_model.decision import RoutingDecision
from router_model.errors import InvalidRequestError
from router_model.observe.decision_log import DecisionLogWriter, decision_record, log_text, utc_timestamp
from router_model.request import Request
from router_model.router import Router
from router_model.serving.config import ServingConfig
from router_model.serving.follow import ModelSource
from router_model.serving.holder import Loaded, ModelHolder
from router_model.serving.metrics import ServingMetrics

Candidates = tuple[str, ...]


class DataPlane:
    """The model holder, its source (directory, alias), the batcher and the decision record."""

    def __init__(
        self,
        config: ServingConfig,
        metrics: ServingMetrics,
        *,
        router: Router | None = None,
        on_serving: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.holder = ModelHolder(config, metrics, on_serving, router=router)
        self.source = ModelSource(config, self.holder)
        self.decision_log = (
            DecisionLogWriter(config.decision_log, include_prompt=config.log_prompts, prompt_hash_key=config.prompt_hash_key)
            if config.decision_log is not None
            else None
        )
        if self.decision_log is not None:
            writer = self.decision_log
            metrics.watch_decision_log(lambda: writer.errors)
        self.batcher: Batcher | None = None

    # --- lifecycle -----------------------------------------------------------------------
    def start(self, *, background: bool = True) -> None:
        """Start the batcher's runners and begin loading (then following or watching) the model."""
        if self.config.batching is not None and self.batcher is None:
            self.batcher = Batcher(self.config.batching)
        self.source.start(background=background)

    def close(self) -> None:
        """Stop following, the batcher and the loader; close the decision log (after the drain)."""
        self.source.stop()
        if self.batcher is not None:
            self.batcher.close()  # kept: its stats stay readable after shutdown
        self.holder.close()
        if self.decision_log is not None:
            self.decision_log.close()

    def reopen_log(self) -> None:
        """Reopen the decision log (after logrotate)."""
        if self.decision_log is not None:
            self.decision_log.reopen()

    @property
    def loaded(self) -> Loaded | None:
        return self.holder.current

    # --- deciding ------------------------------------------------------------------------
    @staticmethod
    def candidates(router: Router, names: Sequence[str] | None) -> Candidates | None:
        """The candidate set a request may be routed among (None: the router's whole choice),
        checked before any work: an unknown or unusable name is an InvalidRequestError."""
        if not names:
            return None
        if router.allowed(names) is None:  # a pair named its own two models: no restriction
            return None
        return tuple(names)

    def decide(
        self,
        router: Router,
        request: Request,
        *,
        tags: Sequence[str] | None = None,
        candidates: Candidates | None = None,
        timeout: float | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> RoutingDecision:
        """One decision: through the batcher when there is one (sharing a graph run), else direct.

        The batcher raises DeadlineExpiredError after `timeout` seconds and BatcherClosedError
        during shutdown; the caller maps them to its protocol's status.
        """
        started = time.perf_counter()
        if self.batcher is not None:
            decision = self.batcher.predict(router, request, tags=tags, timeout=timeout, alive=alive, candidates=candidates)
        else:
            decision = router.predict(request, tags=tags, candidates=candidates)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return decision

    def submit(
        self, router: Router, request: Request, *, tags: Sequence[str] | None = None, candidates: Candidates | None = None
    ) -> Future[RoutingDecision]:
        """Queue one decision on the batcher (an event loop awaits the future instead of a thread)."""
        assert self.batcher is not None, "submit needs batching"
        return self.batcher.submit(router, request, tags=tags, candidates=candidates)

    def decide_batch(
        self,
        router: Router,
        requests: Sequence[Request],
        *,
        tags: Sequence[Sequence[str] | None],
        candidates: Sequence[Candidates | None],
    ) -> list[RoutingDecision]:
        """Decisions for many requests, one predict_batch per distinct candidate set; an error about
        one request keeps its index in `requests`."""
        started = time.perf_counter()
        groups: dict[Candidates | None, list[int]] = {}
        for i, c in enumerate(candidates):
            groups.setdefault(c, []).append(i)
        out: list[RoutingDecision | None] = [None] * len(requests)
        for c, idx in groups.items():
            try:
                got = router.predict_batch([requests[i] for i in idx], tags=[tags[i] for i in idx], candidates=c)
            except InvalidRequestError as e:
                if e.index is None:
                    raise
                raise InvalidRequestError(e.reason, field=e.field, index=idx[e.index]) from None
            for i, d in zip(idx, got):
                out[i] = d
        if requests:
            self.metrics.decision_seconds.observe((time.perf_counter() - started) / len(requests))
        return [d for d in out if d is not None]

    # --- recording -----------------------------------------------------------------------
    def count(self, router: Router, decisions: Sequence[RoutingDecision], *, mode: str | None = None) -> None:
        """Count decisions and add them to the drift window."""
        self.metrics.count_decisions(decisions, mode)
        self.metrics.observe_drift(router, decisions)

    def log(
        self,
        router: Router,
        decision: RoutingDecision,
        *,
        request: Request,
        request_id: str,
        ts: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the decision's record (with a front door's `extra` fields) to the decision log, if any."""
        if self.decision_log is None:
            return
        record = decision_record(decision, request_id=request_id, prompt=log_text(request), cheap_model=router.cheap_model,
                                 strong_model=router.strong_model, ts=ts)
        if extra:
            record.update(extra)
        self.decision_log.write(record)

    def record(self, router: Router, items: Sequence[tuple[Request, str, RoutingDecision]]) -> None:
        """Count and log decisions made together: (request, request_id, decision) each."""
        self.count(router, [d for _, _, d in items])
        ts = utc_timestamp()
        for request, request_id, d in items:
            self.log(router, d, request=request, request_id=request_id, ts=ts)
