"""router.v1.Router: proto requests in, Router decisions out, each decision counted and logged.

Kept thin on purpose: validation and routing are the Router's, status codes are
`status.rpc`'s, loading and swapping the model is the ModelHolder's, who may Reload is
`admin`'s. The servicer owns the order of a call: refuse what is too big or malformed before
any work (a batch is validated whole first), wait for a compute slot, route, and log and count
a decision only when the caller is still there to receive it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from router_model.batching import Batcher, BatcherClosedError, DeadlineExpiredError
from router_model.decision import RoutingDecision
from router_model.errors import ArtifactError, ConfigError, InvalidRequestError
from router_model.multi_router import MultiRouter
from router_model.observe.decision_log import DecisionLogWriter, decision_record, log_text, utc_timestamp
from router_model.request import TEXT_PART_TYPES, Request, parse_request
from router_model.router import Router
from router_model.service.admin import check_admin, reload_target
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2, router_pb2_grpc
from router_model.service.holder import Loaded, ModelHolder
from router_model.service.limits import CallLimits, FairSlots
from router_model.service.metrics import Metrics
from router_model.service.status import RpcStatusError, check_deadline, rpc

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


def request_candidates(router: Router, candidates: Sequence[str]) -> tuple[str, ...] | None:
    """The models a request may be routed to (None: the router's whole choice), checked up front.

    An N-model router restricts its choice to them (MultiRouter.predict's `candidates`); an
    unknown name is an InvalidRequestError naming it. A cheap/strong pair router has no
    candidate notion, so the only consistent non-empty set is its own two models (a no-op):
    anything else is refused rather than silently ignored.
    """
    names = list(candidates)
    if not names:
        return None
    if isinstance(router, MultiRouter):
        router.allowed(names)
        return tuple(names)
    pair = [router.cheap_model, router.strong_model]
    if set(names) != set(pair):
        unknown = [m for m in names if m not in pair]
        known = f"unknown candidate model(s) {unknown}; " if unknown else ""
        raise InvalidRequestError(
            f"{known}this cheap/strong router chooses between exactly {pair}: "
            "leave candidates empty or name both", field="candidates",
        )
    return None


def _predict_one(router: Router, request: Request, tags: list[str] | None, cands: tuple[str, ...] | None) -> RoutingDecision:
    """Router.predict, restricted to `cands` when request_candidates returned a set (N-model only)."""
    if cands is None:
        return router.predict(request, tags=tags)
    assert isinstance(router, MultiRouter)
    return router.predict(request, tags=tags, candidates=cands)


def _predict_chunk(
    router: Router, requests: Sequence[Request], tags: Sequence[list[str] | None], cands: Sequence[tuple[str, ...] | None]
) -> list[RoutingDecision]:
    """Decisions for one chunk, one predict_batch per distinct candidate set (errors keep the chunk index)."""
    groups: dict[tuple[str, ...] | None, list[int]] = {}
    for i, c in enumerate(cands):
        groups.setdefault(c, []).append(i)
    out: list[RoutingDecision | None] = [None] * len(requests)
    for c, idx in groups.items():
        sub, sub_tags = [requests[i] for i in idx], [tags[i] for i in idx]
        try:
            if c is None:
                got = router.predict_batch(sub, tags=sub_tags)
            else:
                assert isinstance(router, MultiRouter)  # request_candidates returns a set only for one
                got = router.predict_batch(sub, tags=sub_tags, candidates=c)
        except InvalidRequestError as e:
            if e.index is None:
                raise
            raise InvalidRequestError(e.reason, field=e.field, index=idx[e.index]) from None
        for i, d in zip(idx, got):
            out[i] = d
    return [d for d in out if d is not None]


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
    return {"models": list(m.models), "policy": m.policy, "policy_value": m.value, "best_single_model": m.best_single}


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

    def __init__(
        self, config: ServerConfig, holder: ModelHolder, metrics: Metrics, decision_log: DecisionLogWriter | None
    ) -> None:
        self.config = config
        self.metrics = metrics  # read by status.rpc
        self.limits = CallLimits(config.max_concurrent_rpcs, config.max_message_bytes)  # read by status.rpc
        self._slots = FairSlots(config.workers)
        # Batch chunks may hold all but one slot: a single Route never waits for a batch chunk.
        self._batch_slots = FairSlots(max(1, config.workers - 1))
        self._holder = holder
        self._decision_log = decision_log
        # Concurrent Route calls share graph runs; its runners, not the worker slots, bound their compute.
        self._batcher = Batcher(config.batching) if config.batching is not None else None

    def close(self) -> None:
        """Stop the batcher's runners (after the server has drained)."""
        if self._batcher is not None:
            self._batcher.close()

    @property
    def batcher(self) -> Batcher | None:
        return self._batcher

    def _slot(self, context: grpc.ServicerContext) -> FairSlots:
        """Wait (within the deadline) until a compute slot is free; the caller then holds it."""
        if not self._slots.acquire(context.time_remaining()):
            raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while waiting for a free worker")
        return self._slots

    def _loaded(self) -> Loaded:
        loaded = self._holder.current
        if loaded is None:
            raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet")
        return loaded

    def _log_decisions(self, items: Sequence[tuple[Request, str, RoutingDecision]], router: Router) -> None:
        self.metrics.count_decisions([(d.model, d.reason) for _, _, d in items])
        self.metrics.observe_drift(router, [d for _, _, d in items])
        if self._decision_log is None:
            return
        ts = utc_timestamp()
        for request, request_id, d in items:
            self._decision_log.write(
                decision_record(
                    d,
                    request_id=request_id,
                    prompt=log_text(request),
                    cheap_model=router.cheap_model,
                    strong_model=router.strong_model,
                    ts=ts,
                )
            )

    @rpc("Route", router_pb2.RouteRequest)
    def Route(self, request: router_pb2.RouteRequest, context: grpc.ServicerContext) -> router_pb2.RouteResponse:  # noqa: N802
        started = time.perf_counter()
        loaded = self._loaded()
        routed = to_router_request(request, self.config.max_prompt_chars)
        tags = list(request.tags) or None
        cands = request_candidates(loaded.router, request.candidates)
        request_id = request.request_id or uuid.uuid4().hex
        check_deadline(context)
        if self._batcher is not None:
            try:
                decision = self._batcher.predict(
                    loaded.router, routed, tags=tags, timeout=context.time_remaining(), alive=context.is_active,
                    candidates=cands,
                )
            except DeadlineExpiredError as e:
                raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from None
            except BatcherClosedError as e:
                raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        else:
            slots = self._slot(context)
            try:
                decision = _predict_one(loaded.router, routed, tags, cands)
            finally:
                slots.release()
        check_deadline(context, "while the request was routed")  # nobody would receive it
        self._log_decisions([(routed, request_id, decision)], loaded.router)
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
        cands: list[tuple[str, ...] | None] = []
        for i, item in enumerate(request.requests):  # every item, before routing any
            try:
                converted = to_router_request(item, self.config.max_prompt_chars)
                parse_request(converted)
                cands.append(request_candidates(loaded.router, item.candidates))
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
                    decisions.extend(_predict_chunk(loaded.router, routed[chunk], tags[chunk], cands[chunk]))
                except InvalidRequestError as e:  # re-base the item's index from the chunk onto the batch
                    if e.index is None:
                        raise
                    raise InvalidRequestError(e.reason, field=e.field, index=lo + e.index) from None
                finally:
                    slots.release()
            finally:
                self._batch_slots.release()
        check_deadline(context, "while the batch was routed")
        self._log_decisions(list(zip(routed, ids, decisions)), loaded.router)
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
            model_uri=self.config.model_uri or "",
            registry_version=loaded.registry.version if loaded.registry else "",
            registry_alias=(loaded.registry.alias or "") if loaded.registry else "",
        )

    @rpc("Reload", router_pb2.ReloadRequest)
    def Reload(self, request: router_pb2.ReloadRequest, context: grpc.ServicerContext) -> router_pb2.ReloadResponse:  # noqa: N802
        check_admin(self.config, context)
        target = reload_target(request.model_dir, self.config.reload_root) if request.model_dir else None
        try:
            result = self._holder.reload(target)  # on the holder's loader thread, not this worker
        except (ArtifactError, ConfigError) as e:
            log.warning("reload refused, still serving the previous artifact: %s", e)
            raise RpcStatusError(grpc.StatusCode.FAILED_PRECONDITION, f"reload refused: {e}") from None
        return router_pb2.ReloadResponse(
            previous_version=result.previous_version or "",
            artifact_version=result.artifact_version,
            model_dir=str(result.model_dir),
            load_ms=result.load_ms,
        )
