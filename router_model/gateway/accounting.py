"""What a call cost, what it saved, and its record: metrics, response headers, the decision log.

Every dollar figure is `router_model.dollars.usage_cost` on the upstream's own `usage` block; a
saving in observe mode is what routing would have saved at the same tokens (an estimate).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.gateway.call import Attempt, Call
from router_model.gateway.config import GatewayConfig
from router_model.gateway.errors import UpstreamInvalidError
from router_model.gateway.metrics import GatewayMetrics
from router_model.serving.plane import DataPlane


class Accounting:
    """Prices, counts and records calls (one per gateway)."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, plane: DataPlane, prices: PriceTable) -> None:
        self.config = config
        self.metrics = metrics
        self.plane = plane
        self.prices = prices

    def label(self, model: str) -> str:
        """`model` as a metric label: known names only (priced, configured, the router's), else "other"."""
        router = self.plane.holder.router
        if model in self.prices or model in self.config.models or (router is not None and model in router.models) \
                or (router is not None and model in (router.cheap_model, router.strong_model)):
            return model
        return "other"

    def price(self, model: str, usage: Usage | None) -> float | None:
        return usage_cost(self.prices, model, usage) if usage is not None else None

    def record_usage(self, attempt: Attempt) -> None:
        usage = attempt.usage
        if usage is None:
            return
        m = self.metrics
        label = self.label(attempt.model)
        m.tokens.labels(label, "prompt").inc(usage.prompt_tokens)
        m.tokens.labels(label, "completion").inc(usage.completion_tokens)
        m.tokens.labels(label, "cached").inc(usage.cached_tokens)
        attempt.cost = self.price(attempt.model, usage)
        if attempt.cost is not None:
            m.cost.labels(label).inc(attempt.cost)

    def accept(self, call: Call, model: str, resp: httpx.Response, content: bytes) -> dict[str, Any]:
        """Parse a 200 answer, record its usage and cost as an attempt; 502 when it is not a JSON object."""
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.metrics.upstream_errors.labels("invalid_response").inc()
            call.attempts.append(Attempt(model, 502))
            raise UpstreamInvalidError(f"the upstream's answer for model {model!r} is not a JSON object")
        attempt = Attempt(model, resp.status_code, call.protocol.usage(data.get("usage")))
        attempt.response_model = data.get("model") if isinstance(data.get("model"), str) else None
        self.record_usage(attempt)
        call.attempts.append(attempt)
        call.final = attempt
        return data

    @staticmethod
    def router_headers(call: Call) -> dict[str, str]:
        h = {"x-router-model": call.served, "x-router-reason": call.reason, "x-router-mode": call.mode,
             "x-router-request-id": call.request_id}
        d = call.decision
        if d is not None:
            h["x-router-decision"] = d.model
            h["x-router-artifact"] = d.artifact_version
            if d.p_cheap_ok is not None:
                h["x-router-p-cheap-ok"] = f"{d.p_cheap_ok:.6f}"
        if call.escalated:
            h["x-router-escalated"] = call.escalated
        if call.fallback:
            h["x-router-fallback"] = call.fallback
        return h

    def finish(self, call: Call, status: int, *, completed: bool = True) -> None:
        """Count the finished call; for a decided one, its dollars, its saving and its log record."""
        if call.finished:
            return
        call.finished = True
        m = self.metrics
        endpoint = call.protocol.endpoint
        m.requests.labels(endpoint, str(status)).inc()
        m.duration.labels(endpoint, str(call.stream).lower()).observe(time.perf_counter() - call.started)
        d, router = call.decision, call.router
        if d is None or router is None:
            return
        final = call.final
        spent = sum(a.cost or 0.0 for a in call.attempts)
        priced = bool(call.attempts) and all(a.cost is not None or a.usage is None for a in call.attempts)
        usage = final.usage if final is not None else None
        baseline = self.price(router.strong_model, usage)
        cost: float | None = spent if priced and usage is not None else None
        saved: float | None = None
        if baseline is not None and cost is not None:
            if call.mode == "route":
                saved = baseline - cost
            else:  # what routing would have saved on the same tokens
                routed = self.price(d.model, usage)
                saved = baseline - routed if routed is not None else None
        if cost is not None and baseline is not None and saved is not None:
            m.routed_cost.labels(call.mode).inc(cost)
            m.baseline_cost.labels(call.mode).inc(baseline)
            m.add_saving(call.mode, saved)
        scored = {"answer_score": round(call.answer_score, 4)} if call.answer_score is not None else {}
        self.plane.log(router, d, request=call.messages, request_id=call.request_id, extra=dict(
            source="gateway",
            endpoint=endpoint,
            mode=call.mode,
            requested_model=call.requested,
            served_model=call.served,
            upstream_model=final.response_model if final else None,
            stream=call.stream,
            status=status,
            completed=completed,
            escalated=call.escalated,
            fallback=call.fallback,
            attempts=[{"model": a.model, "status": a.status, "cost_usd": a.cost} for a in call.attempts],
            usage=usage.to_dict() if usage else None,
            cost_usd=cost,
            baseline_cost_usd=baseline,
            saved_usd=saved,
            saved_is_estimate=call.mode != "route",
            fresh_model=call.fresh_model,  # affinity kept another model than a fresh decision's (reason affinity:*)
            **scored,  # the cheap answer's score, when it was scored (router_model/answer_score.py)
        ))
