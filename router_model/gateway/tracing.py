"""OpenTelemetry traces of the routed endpoints: everything the gateway knows about OpenTelemetry lives here.

Optional: `pip install 'router-model[otel]'` and the standard `OTEL_*` variables (docs/operations.md,
"Traces"). Off, the app has no tracing middleware and each hook costs one context-variable read.

On, `TracingMiddleware` opens one SERVER span per routed request, continuing the caller's W3C
`traceparent`, and keeps it current (a context variable) until the response's last byte and its
background tasks: the decision (`traced_decision`), every upstream call (`traced_upstream`:
fallback and escalation included, each sent with our `traceparent`) and the shadow-grading hand-off
(`shadow_trace`) open children of it. The request span's attributes are read from the `Call` the
endpoint binds (`bind_call`) once the response is over. No prompt, answer, key or header value
other than `traceparent`/`tracestate` is ever put in a span.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from router_model.errors import ConfigError

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from router_model.gateway.call import Call

log = logging.getLogger("router_model.gateway")

SERVICE_NAME = "router-gateway"
INSTRUMENTATION = "router_model.gateway"
EXPORTERS = ("otlp", "console", "none")
_CARRIED = (b"traceparent", b"tracestate")  # the only request headers tracing reads


@dataclass
class _Scope:
    """The traced work now running (a request or a shadow grading): its tracer, and for a request its span and call."""

    tracer: Tracer
    span: Span | None = None
    call: Call | None = None


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("router_gateway_trace", default=None)


# ---------------------------------------------------------------- setup


def _env_off() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def configured_exporters() -> list[str]:
    """The exporters the environment asks for: `OTEL_TRACES_EXPORTER`, else `otlp` when an OTLP
    endpoint is set, else none (traces stay off unless asked for, unlike the SDK's default)."""
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        names = ["otlp"]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: expected a list of {', '.join(EXPORTERS)}, got {unknown[0]!r}")
    if _env_off() or "none" in names:
        return []
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in names and protocol and protocol.strip() != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: router-gateway exports OTLP over http/protobuf only, got {protocol!r}")
    return names


def provider_from_env() -> SdkTracerProvider | None:
    """router-gateway's tracer provider from the standard `OTEL_*` variables; None when traces are
    off (not asked for, `none`, `OTEL_SDK_DISABLED=true`, or the `otel` extra is not installed).

    The SDK reads the rest itself: the endpoint, headers and timeout of the exporter, the batch
    processor's `OTEL_BSP_*`, the sampler, `OTEL_RESOURCE_ATTRIBUTES`."""
    names = configured_exporters()
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("OTEL_* asks for traces but opentelemetry-sdk is not installed (pip install 'router-model[otel]'): "
                    "traces are off")
        return None
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": SERVICE_NAME}))
    exporting = False
    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http "
                            "(pip install 'router-model[otel]'): not exporting over OTLP")
                continue
            exporter = OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        exporting = True
        log.info("traces: exporting spans (%s)", name)
    return provider if exporting else None


class Tracing:
    """One app's traces: a tracer from `provider` (None: off), the middleware, the flush at shutdown."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = None if provider is None or _env_off() else provider
        self.tracer: Tracer | None = None
        if self.provider is not None:
            from router_model import __version__

            self.tracer = self.provider.get_tracer(INSTRUMENTATION, __version__)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def flush(self, timeout_s: float = 5.0) -> None:
        """Export the spans still buffered (the lifespan's end; the owner shuts the provider down)."""
        force_flush = getattr(self.provider, "force_flush", None)
        if force_flush is not None:
            force_flush(int(timeout_s * 1000))


def shutdown(provider: TracerProvider | None) -> None:
    """Flush and stop a provider built by `provider_from_env` (router-gateway's exit)."""
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()


# ---------------------------------------------------------------- the request span


class TracingMiddleware:
    """ASGI middleware: one SERVER span for each request to `paths`, current while the app answers it."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing, paths: frozenset[str]) -> None:
        assert tracing.tracer is not None
        self.app = app
        self.tracer = tracing.tracer
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        from opentelemetry import context, trace

        method, route = scope["method"], scope["path"]
        span = self.tracer.start_span(
            f"{method} {route}", context=_extract(scope["headers"]), kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        )
        state = _Scope(self.tracer, span)
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        otel_token = context.attach(trace.set_span_in_context(span))
        token = _current.set(state)
        try:
            await self.app(scope, receive, send_traced)
        except Exception as exc:
            status = status or 500
            span.set_attribute("error.type", type(exc).__qualname__)
            raise
        finally:
            _current.reset(token)
            context.detach(otel_token)
            _end_request(span, state.call, status)


def _extract(headers: list[tuple[bytes, bytes]]) -> Any:
    """The caller's trace context from `traceparent` / `tracestate` (None: the request starts a trace)."""
    carrier: dict[str, str] = {}
    for key, value in headers:
        if key in _CARRIED:
            name = key.decode("latin-1")
            text = value.decode("latin-1")
            carrier[name] = f"{carrier[name]},{text}" if name in carrier else text
    if not carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def _end_request(span: Span, call: Call | None, status: int) -> None:
    """The request's outcome on its span, then end it (after the stream's last byte)."""
    from opentelemetry.trace import StatusCode

    if status:
        span.set_attribute("http.response.status_code", status)
    if status >= 500 or not status:
        span.set_status(StatusCode.ERROR, f"HTTP {status}" if status else "no response")
        if status:
            span.set_attribute("error.type", str(status))
    if call is not None:
        span.set_attributes(call_attributes(call))
    span.end()


def call_attributes(call: Call) -> dict[str, Any]:
    """What the gateway did with a call, as span attributes: models, reason, tokens, dollars. No content."""
    out: dict[str, Any] = {
        "router.request_id": call.request_id, "router.endpoint": call.protocol.endpoint, "router.mode": call.mode,
        "router.requested_model": call.requested, "router.model": call.target, "router.served_model": call.served,
        "router.reason": call.reason, "router.stream": call.stream,
        "router.escalated": call.escalated is not None, "router.fallback": call.fallback is not None,
        "router.upstream_attempts": len(call.attempts),
    }
    decision = call.decision
    if decision is not None:
        out["router.decision"] = decision.model
        out["router.artifact_version"] = decision.artifact_version
        if decision.p_cheap_ok is not None:
            out["router.p_cheap_ok"] = decision.p_cheap_ok
    if call.answer_score is not None:
        out["router.answer_score"] = call.answer_score
    if call.escalated:
        out["router.escalation_check"] = call.escalated
    if call.fallback:
        out["router.fallback_cause"] = call.fallback
    final = call.final
    if final is not None and final.usage is not None:
        out["gen_ai.usage.input_tokens"] = final.usage.prompt_tokens
        out["gen_ai.usage.output_tokens"] = final.usage.completion_tokens
        out["gen_ai.usage.cache_read.input_tokens"] = final.usage.cached_tokens
    if final is not None and final.response_model:
        out["gen_ai.response.model"] = final.response_model
    costs = [a.cost for a in call.attempts if a.cost is not None]
    if costs:
        out["router.cost_usd"] = sum(costs)  # every upstream call of the request (an escalation pays both)
    return out


def bind_call(call: Call) -> None:
    """Give the request span its call (read when the response is over); a no-op untraced."""
    state = _current.get()
    if state is not None and state.span is not None:
        state.call = call


# ---------------------------------------------------------------- child spans


_Headers = TypeVar("_Headers", bound=MutableMapping[str, str])


def inject_trace(headers: _Headers) -> _Headers:
    """Set `traceparent` (and `tracestate`) of the current span on outgoing headers, replacing the
    caller's; untraced, the headers are left as they are (the caller's pass through)."""
    if _current.get() is not None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        TraceContextTextMapPropagator().inject(headers)
    return headers


_Send = TypeVar("_Send", bound=Callable[..., Awaitable["tuple[httpx.Response, bytes | None]"]])
_Decide = TypeVar("_Decide", bound=Callable[..., Awaitable[None]])


def traced_upstream(send: _Send) -> _Send:
    """`UpstreamSender.send` in an "upstream <model>" CLIENT span: its role (primary, fallback,
    escalation), its status, or the gateway's error code when it failed."""

    @functools.wraps(send)
    async def wrapper(self: Any, call: Call, model: str, *, stream: bool) -> tuple[httpx.Response, bytes | None]:
        state = _current.get()
        if state is None:
            return await send(self, call, model, stream=stream)
        from opentelemetry.trace import SpanKind, StatusCode

        role = "escalation" if call.escalated else "fallback" if call.fallback else "primary"
        attributes: dict[str, Any] = {"gen_ai.request.model": model, "router.upstream.role": role, "router.stream": stream,
                      "http.request.method": "POST"}
        with state.tracer.start_as_current_span(f"upstream {model}", kind=SpanKind.CLIENT, attributes=attributes,
                                                record_exception=False, set_status_on_exception=False) as span:
            try:
                resp, content = await send(self, call, model, stream=stream)
            except Exception as exc:
                code = getattr(exc, "code", None) or type(exc).__qualname__
                span.set_attribute("error.type", code)
                span.set_status(StatusCode.ERROR, code)
                raise
            span.set_attribute("http.response.status_code", resp.status_code)
            if resp.status_code >= 400:
                span.set_attribute("error.type", str(resp.status_code))
                span.set_status(StatusCode.ERROR, f"HTTP {resp.status_code}")
            return resp, content

    return wrapper  # type: ignore[return-value]


def traced_decision(decide: _Decide) -> _Decide:
    """`Decider.decide` in a "router.decide" span: the decided model, reason and probability."""

    @functools.wraps(decide)
    async def wrapper(self: Any, call: Call, *args: Any, **kwargs: Any) -> None:
        state = _current.get()
        if state is None:
            await decide(self, call, *args, **kwargs)
            return
        with state.tracer.start_as_current_span("router.decide", attributes={"router.mode": call.mode}) as span:
            await decide(self, call, *args, **kwargs)
            span.set_attributes({"router.reason": call.reason, "router.model": call.target})
            decision = call.decision
            if decision is not None:
                span.set_attributes({"router.decision": decision.model, "router.artifact_version": decision.artifact_version})
                if decision.p_cheap_ok is not None:
                    span.set_attribute("router.p_cheap_ok", decision.p_cheap_ok)

    return wrapper  # type: ignore[return-value]


def shadow_trace(call: Call) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """At offer time: what opens the "router.shadow_grade" span later in the worker, a child of this
    request's span (captured now: the worker runs after the response); None untraced."""
    state = _current.get()
    if state is None or state.span is None:
        return None
    tracer, parent = state.tracer, state.span
    attributes: dict[str, Any] = {"router.request_id": call.request_id, "router.served_model": call.served, "router.mode": call.mode}

    @contextlib.contextmanager
    def open_span() -> Iterator[Any]:
        from opentelemetry import trace

        with tracer.start_as_current_span("router.shadow_grade", context=trace.set_span_in_context(parent),
                                          attributes=attributes) as span:
            token = _current.set(_Scope(tracer))  # its calls to the other model and the judge carry this span
            try:
                yield span
            finally:
                _current.reset(token)

    return open_span
