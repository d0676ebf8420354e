"""router.v1.Router: the gRPC adapter over the data plane (router_model/serving/plane.py).

Kept thin on purpose: validation and routing are the Router's, deciding and recording are the
DataPlane's, status codes are `status.rpc`'s, who may Reload is `admin`'s. The servicer owns
the order of a call: refuse what is too big or malformed before any work (a batch is validated
whole first), wait for a compute slot, decide, and record a decision only when the caller is
still there to receive it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from router_model.batching import Batcher, BatcherClosedError, DeadlineExpiredError
from router_model.decision import RoutingDecision
from router_model.errors import ArtifactError, ConfigError, InvalidRequestError
from router_model.request import TEXT_PART_TYPES, Request, parse_request
from router_model.service.admin import check_admin, reload_target
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2, router_pb2_grpc
from router_model.service.limits import CallLimits, FairSlots
from router_model.service.metrics import Metrics
from router_model.service.status import RpcStatusError, check_deadline, rpc
from router_model.serving.holder import Loaded
from router_model.serving.plane import Candidates, DataPlane

log = logging.getLogger("router_model.service")


def _part_dict(part: router_pb2.ContentPart) -> dict[str, Any]:
    out: dict[str, Any] = {"type": part.type}
    if part.type in TEXT_PART_TYPES or part.text:
        out["text"] = part.text
    if part.HasField("image_url"):
        out["image_url"] = {"url": part.image_url.url}
    return out


def to_router_request(req: router_pb2.RouteRequest, max_chars: int) -> Request:
    """Turn the proto request into the router's prompt or chat messages, checking its size."""
    if req.messages:
        if req.prompt:
            raise InvalidRequestError("set either prompt or messages, not both", field="prompt")
        messages: list[dict[str, Any]] = []
        chars = 0
        for i, m in enumerate(req.messages):
            if m.parts:
                if m.content:
                    raise InvalidRequestError("set either content or parts, not both", field=f"messages[{i}].content")
                content: Any = [_part_dict(p) for p in m.parts]
                chars += sum(len(p.text) for p in m.parts)
            else:
                content = m.content
                chars += len(content)
            messages.append({"role": m.role, "content": content})
        if chars > max_chars:
            raise InvalidRequestError(
                f"the messages hold {chars} characters of text, over the limit of {max_chars}", field="messages"
            )
        return messages
    if len(req.prompt) > max_chars:
        raise InvalidRequestError(
            f"the prompt has {len(req.prompt)} characters, over the limit of {max_chars}", field="prompt"
        )
    return req.prompt


def _response(d: RoutingDecision, request_id: str, latency_us: int, observe: bool) -> router_pb2.RouteResponse:
    resp = router_pb2.RouteResponse(
        model=d.model,
        confidence=d.confidence,
        reason=d.reason,
        threshold=d.threshold,
        artifact_version=d.artifact_version,
        latency_us=latency_us,
        prompt_tokens=d.prompt_tokens,
        request_id=request_id,
        observe_only=observe,
    )
    if d.p_cheap_ok is not None:
        resp.p_cheap_ok = d.p_cheap_ok
    if d.p_pass is not None:  # an N-model router
        resp.p_pass.update(d.p_pass)
    if d.expected_cost_usd is not None:
        resp.expected_cost_usd = d.expected_cost_usd
    return resp


def _goal_info(meta: Any) -> dict[str, Any]:
    """ModelInfo's goal fields: the goal, its risk, the method and the certified floor (docs/guarantee.md)."""
    g = meta.goal
    out: dict[str, Any] = {"goal": g.kind, "goal_value": g.value, "method": g.method,
                           "certified": bool(g.certified), "n_labelled": int(g.n_labelled or 0)}
    if g.risk is not None:
        out["risk"] = g.risk
    if g.certified_floor is not None:
        out["certified_floor"] = g.certified_floor
    return out


def _multi_info(meta: Any) -> dict[str, Any]:
    """ModelInfo's N-model fields (none for a cheap/strong pair)."""
    m = meta.multi
    if m is None:
        return {}
    return {"models": list(m.models), "policy": m.rule, "policy_value": m.value, "best_single_model": m.best_single}


def _escalation_info(meta: Any) -> dict[str, Any]:
    """ModelInfo's answer-score escalation fields (none when the artifact records no escalation)."""
    esc = meta.escalation
    if esc is None:
        return {}
    on = bool(esc.on and esc.answer_threshold is not None)
    return {"escalation_on": on, "answer_threshold": float(esc.answer_threshold) if on else 0.0,
            "escalation_family": esc.family}


def _numeric_metrics(value: Any, prefix: str = "") -> dict[str, float]:
    """Flatten nested metrics into "a.b" keys, keeping numbers only."""
    out: dict[str, float] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(_numeric_metrics(v, f"{prefix}{k}."))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and prefix:
        out[prefix[:-1]] = float(value)
    return out


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Implements router.v1.Router on top of the holder's current `Router` (method names are the proto's)."""

    def __init__(self, config: ServerConfig, plane: DataPlane, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics  # read by status.rpc
        self.limits = CallLimits(config.max_concurrent_rpcs, config.max_message_bytes)  # read by status.rpc
        self._slots = FairSlots(config.workers)
        # Batch chunks may hold all but one slot: a single Route never waits for a batch chunk.
        self._batch_slots = FairSlots(max(1, config.workers - 1))
        self._plane = plane
        self._warned_escalation: str | None = None  # the artifact version the escalation warning was given for

    @property
    def batcher(self) -> Batcher | None:
        """The plane's batcher (concurrent Route calls share graph runs; its runners bound their compute)."""
        return self._plane.batcher

    def _slot(self, context: grpc.ServicerContext) -> FairSlots:
        """Wait (within the deadline) until a compute slot is free; the caller then holds it."""
        if not self._slots.acquire(context.time_remaining()):
            raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while waiting for a free worker")
        return self._slots

    def _loaded(self) -> Loaded:
        loaded = self._plane.loaded
        if loaded is None:
            raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet")
        router = loaded.router
        if router.answer_score is not None and self._warned_escalation != router.version:
            self._warned_escalation = router.version
            log.warning("artifact %s escalates on its answer score (threshold %.4f): router.v1 returns decisions only, "
                        "so its certified floor holds only if the caller escalates the cheap answers the score flags "
                        "(the gateway does; docs/service.md)", router.version, router.answer_score.threshold)
        return loaded

    @rpc("Route", router_pb2.RouteRequest)
    def Route(self, request: router_pb2.RouteRequest, context: grpc.ServicerContext) -> router_pb2.RouteResponse:  # noqa: N802
        started = time.perf_counter()
        loaded = self._loaded()
        routed = to_router_request(request, self.config.max_prompt_chars)
        tags = list(request.tags) or None
        cands = self._plane.candidates(loaded.router, list(request.candidates))
        request_id = request.request_id or uuid.uuid4().hex
        check_deadline(context)
        if self._plane.batcher is not None:
            try:
                decision = self._plane.decide(
                    loaded.router, routed, tags=tags, candidates=cands, timeout=context.time_remaining(), alive=context.is_active,
                )
            except DeadlineExpiredError as e:
                raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from None
            except BatcherClosedError as e:
                raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        else:
            slots = self._slot(context)
            try:
                decision = self._plane.decide(loaded.router, routed, tags=tags, candidates=cands)
            finally:
                slots.release()
        check_deadline(context, "while the request was routed")  # nobody would receive it
        self._plane.record(loaded.router, [(routed, request_id, decision)])
        latency_us = round((time.perf_counter() - started) * 1e6)
        return _response(decision, request_id, latency_us, self.config.observe)

    @rpc("RouteBatch", router_pb2.RouteBatchRequest)
    def RouteBatch(  # noqa: N802
        self, request: router_pb2.RouteBatchRequest, context: grpc.ServicerContext
    ) -> router_pb2.RouteBatchResponse:
        started = time.perf_counter()
        loaded = self._loaded()
        if len(request.requests) > self.config.max_batch:
            raise InvalidRequestError(
                f"{len(request.requests)} requests, over the limit of {self.config.max_batch}; split the batch",
                field="requests",
            )
        routed: list[Request] = []
        cands: list[Candidates | None] = []
        for i, item in enumerate(request.requests):  # every item, before routing any
            try:
                converted = to_router_request(item, self.config.max_prompt_chars)
                parse_request(converted)
                cands.append(self._plane.candidates(loaded.router, list(item.candidates)))
            except InvalidRequestError as e:
                raise InvalidRequestError(e.reason, field=e.field, index=i) from None
            routed.append(converted)
        tags = [list(item.tags) or None for item in request.requests]
        ids = [item.request_id or uuid.uuid4().hex for item in request.requests]
        decisions: list[RoutingDecision] = []
        step = self.config.batch_chunk
        for lo in range(0, len(routed), step):
            check_deadline(context)
            # One chunk per turn, and never in the last slot: single calls are not starved.
            if not self._batch_slots.acquire(context.time_remaining()):
                raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while waiting for a free worker")
            try:
                slots = self._slot(context)
                try:
                    chunk = slice(lo, lo + step)
                    decisions.extend(self._plane.decide_batch(loaded.router, routed[chunk], tags=tags[chunk],
                                                              candidates=cands[chunk]))
                except InvalidRequestError as e:  # re-base the item's index from the chunk onto the batch
                    if e.index is None:
                        raise
                    raise InvalidRequestError(e.reason, field=e.field, index=lo + e.index) from None
                finally:
                    slots.release()
            finally:
                self._batch_slots.release()
        check_deadline(context, "while the batch was routed")
        self._plane.record(loaded.router, list(zip(routed, ids, decisions)))
        latency_us = round((time.perf_counter() - started) * 1e6)
        observe = self.config.observe
        return router_pb2.RouteBatchResponse(
            responses=[_response(d, rid, latency_us, observe) for d, rid in zip(decisions, ids)],
            latency_us=latency_us,
        )

    @rpc("GetModelInfo", router_pb2.GetModelInfoRequest)
    def GetModelInfo(self, request: router_pb2.GetModelInfoRequest, context: grpc.ServicerContext) -> router_pb2.ModelInfo:  # noqa: N802
        loaded = self._loaded()
        router = loaded.router
        meta = router.meta
        metadata = struct_pb2.Struct()
        metadata.update(meta.to_dict())
        loaded_at = timestamp_pb2.Timestamp()
        loaded_at.FromNanoseconds(int(loaded.loaded_at * 1e9))
        return router_pb2.ModelInfo(
            artifact_version=meta.artifact_version,
            cheap_model=meta.cheap_model,
            strong_model=meta.strong_model,
            threshold=meta.threshold,
            metrics=_numeric_metrics(meta.metrics),
            metadata=metadata,
            model_dir=str(loaded.model_dir),
            loaded_at=loaded_at,
            observe_only=self.config.observe,
            **_goal_info(meta),
            **_multi_info(meta),
            **_escalation_info(meta),
            model_uri=self.config.model_uri or "",
            registry_version=loaded.registry.version if loaded.registry else "",
            registry_alias=(loaded.registry.alias or "") if loaded.registry else "",
        )

    @rpc("Reload", router_pb2.ReloadRequest)
    def Reload(self, request: router_pb2.ReloadRequest, context: grpc.ServicerContext) -> router_pb2.ReloadResponse:  # noqa: N802
        check_admin(self.config, context)
        target = reload_target(request.model_dir, self.config.reload_root) if request.model_dir else None
        try:
            result = self._plane.holder.reload(target)  # on the holder's loader thread, not this worker
        except (ArtifactError, ConfigError) as e:
            log.warning("reload refused, still serving the previous artifact: %s", e)
            raise RpcStatusError(grpc.StatusCode.FAILED_PRECONDITION, f"reload refused: {e}") from None
        return router_pb2.ReloadResponse(
            previous_version=result.previous_version or "",
            artifact_version=result.artifact_version,
            model_dir=str(result.model_dir),
            load_ms=result.load_ms,
        )
