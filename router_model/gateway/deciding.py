"""Which model a call goes to: pass it through, or decide it through the data plane.

Models the router does not own pass through. An alias (`auto`), a route (an N-model router's
candidate set) or the router's strong model needs a decision: in route mode the decision is
forwarded; in observe mode only logged, computed while the upstream answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from router_model.decision import RoutingDecision
from router_model.errors import InvalidRequestError
from router_model.gateway.affinity import Affinity
from router_model.gateway.call import REASON_NO_ROUTER, REASON_PASSTHROUGH, REASON_UNROUTABLE, Call, StreamAnswer, request_tags
from router_model.gateway.config import GatewayConfig
from router_model.gateway.errors import RouterNotReadyError
from router_model.gateway.tracing import traced_decision
from router_model.router import Router
from router_model.serving.plane import DataPlane

log = logging.getLogger("router_model.gateway")


class Decider:
    """Resolves a call's target and decides it through the plane, off the event loop."""

    def __init__(self, config: GatewayConfig, plane: DataPlane, *, label: Callable[[str], str],
                 affinity: Affinity | None = None) -> None:
        self.config = config
        self.plane = plane
        self.affinity = affinity if affinity is not None else Affinity(config)  # conversations keep their model
        self._label = label
        self._aliases = frozenset(a.lower() for a in config.aliases)
        self._routes = {k.lower(): v for k, v in config.routes.items()}  # routable name -> candidates (N-model)
        # Deciding is CPU-bound: more threads than cores only adds switching (created lazily: a
        # limiter belongs to the event loop that first uses it).
        self._slots = max(1, os.cpu_count() or 1)
        self._limiter: anyio.CapacityLimiter | None = None

    def resolve(self, call: Call) -> Router | None:
        """Set the model the call goes to without a decision; the router when one is needed."""
        router = self.plane.holder.router
        name = call.requested.strip().lower()
        is_alias = name in self._aliases or name in self._routes
        if not is_alias and (router is None or name != router.strong_model.lower()):
            call.target = call.requested
            call.reason = REASON_PASSTHROUGH if router is not None else REASON_NO_ROUTER
            return None
        if router is None:
            error = self.plane.holder.error
            detail = f": {error}" if error else " yet"
            raise RouterNotReadyError(f"model {call.requested!r} needs the router, which is not loaded{detail}")
        call.router = router
        call.target = router.strong_model if is_alias else call.requested  # what the app gets without routing
        cands = self._routes.get(name)
        if cands and call.target not in cands:  # a route's own candidates only: the priciest-ranked one
            models = router.models
            call.target = max(cands, key=lambda m: models.index(m) if m in models else -1)
        return router

    def start(self, call: Call, router: Router) -> None:
        """Observe mode: decide beside the upstream call (the forwarded model does not depend on it)."""
        call.pending = asyncio.ensure_future(self.decide(call, router))

    async def decided(self, call: Call) -> None:
        """Wait for an observe-mode decision started beside the upstream call (no-op otherwise)."""
        task, call.pending = call.pending, None
        if task is not None:
            await task

    @traced_decision  # traces: the decision's span
    async def decide(self, call: Call, router: Router) -> None:
        """Set the call's decision, and in route mode its target; fail open on an unreadable request."""
        unrouted = call.target
        tags = request_tags(call.in_headers, call.body)
        plane = self.plane
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._slots)
        try:
            messages = call.messages = call.protocol.messages(call.body)
            cands = plane.candidates(router, self._routes.get(call.requested.strip().lower()))
            if plane.batcher is not None:  # tokenise in a thread, then share a graph run with concurrent calls
                started = time.perf_counter()
                future = await anyio.to_thread.run_sync(
                    lambda: plane.submit(router, messages, tags=tags, candidates=cands), limiter=self._limiter,
                )
                decision = await asyncio.wrap_future(future)
                plane.metrics.decision_seconds.observe(time.perf_counter() - started)
            else:
                decision = await anyio.to_thread.run_sync(
                    lambda: plane.decide(router, messages, tags=tags, candidates=cands), limiter=self._limiter,
                )
        except InvalidRequestError as exc:
            # The router cannot read this request (e.g. a part type it does not know, a Responses turn of
            # only an empty function output): its conversation's model if affinity knows it, else fail open.
            found = self.affinity.kept(call, router, call.messages) if call.messages is not None else None
            if found is None:
                log.info("request %s not routable (%s); forwarding to %s", call.request_id, exc, unrouted)
                call.reason = REASON_UNROUTABLE
                call.target = unrouted
                plane.metrics.count_unrouted(self._label(unrouted), REASON_UNROUTABLE, call.mode)
                return
            decision = RoutingDecision(found[0], None, 1.0, router.threshold, found[1], router.version, 0)
        else:
            decision = self.affinity.apply(call, router, decision, messages)  # a tool loop / session keeps its model
        call.decision = decision
        call.reason = decision.reason
        plane.count(router, [decision], mode=call.mode)
        call.target = decision.model if call.mode == "route" else unrouted

    def _remembers(self, call: Call) -> bool:
        protocol = call.protocol
        return (self.affinity.enabled and (protocol.turn is not None or protocol.answer_key is not None)
                and call.decision is not None and call.messages is not None)

    def stream_reader(self, call: Call) -> StreamAnswer | None:
        """For a decided streamed call whose tool calls affinity remembers: the reader of its answer."""
        factory = call.protocol.stream_answer
        return factory() if factory is not None and self._remembers(call) else None

    def answered(self, call: Call, answer: Mapping[str, Any] | bytes | None) -> None:
        """A decided call's answer is complete: remember the model that made its tool calls, if any,
        and the model under the answer's own key (a Responses id), if any (`answer`: the JSON
        answer, its bytes, or a stream reader's rebuilt answer)."""
        turn, answer_key = call.protocol.turn, call.protocol.answer_key
        if answer is None or not self._remembers(call):
            return
        if isinstance(answer, bytes):
            try:
                answer = json.loads(answer)
            except (ValueError, RecursionError):
                return
            if not isinstance(answer, Mapping):
                return
        self.affinity.after_answer(call, turn(answer) if turn is not None else None, call.messages,
                                   answer_key(answer) if answer_key is not None else None)
