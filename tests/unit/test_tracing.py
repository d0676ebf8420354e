"""OpenTelemetry traces of the gateway (router_model/gateway/tracing.py): a toy router, real uvicorn
servers, the local upstream (tests/gateway_upstream.py), the SDK's in-memory exporter, and a real
OTLP/HTTP receiver on loopback for the environment-driven setup router-gateway runs.

Each test sends its own `traceparent` and reads only the spans of that trace.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_upstream import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, wait_for

from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.errors import ConfigError
from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.server import ServerThread
from router_model.gateway.tracing import TracingMiddleware, provider_from_env, shutdown
from router_model.labelling.config import GradingSpec, ShadowConfig
from router_model.router import Router

CHEAP_PROMPT = "Classify the sentiment of this review as positive, negative or neutral: 'The battery lasts all day.'"
CALLER_KEY = "sk-caller-secret-do-not-trace"
OTEL_VARS = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
             "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME",
             "OTEL_RESOURCE_ATTRIBUTES")


def _otel() -> Any:
    return pytest.importorskip("opentelemetry.sdk.trace", reason="traces need the otel extra (opentelemetry-sdk)")


class _Traced:
    """A gateway on a loopback port whose spans go to an in-memory exporter."""

    def __init__(self, config: GatewayConfig, router: Router) -> None:
        _otel()
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.server = ServerThread(create_app(config, router=router, tracer_provider=provider)).start()
        self.url = self.server.url

    def post(self, body: dict[str, Any], trace_id: str, **headers: str) -> httpx.Response:
        """POST a chat completion as a caller in trace `trace_id` (its parent span: `parent_of(trace_id)`)."""
        hdrs = {"authorization": f"Bearer {CALLER_KEY}", "x-test-id": trace_id,
                "traceparent": f"00-{trace_id}-{parent_of(trace_id)}-01"}
        hdrs.update(headers)
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=hdrs, timeout=10)

    def spans(self, trace_id: str, *, until: str = "POST /v1/chat/completions", count: int = 1) -> list[Any]:
        """The finished spans of one trace, once `count` spans named `until` are among them."""
        def of_trace() -> list[Any]:
            return [s for s in self.exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]

        assert wait_for(lambda: sum(s.name == until for s in of_trace()) >= count, timeout=10), [s.name for s in of_trace()]
        return of_trace()


def parent_of(trace_id: str) -> str:
    return trace_id[:16]


def _new_trace() -> str:
    return secrets.token_hex(16)


def _one(spans: list[Any], name: str) -> Any:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _traceparent(got: dict[str, str]) -> tuple[str, str]:
    """(trace id, parent span id) of a `traceparent` the upstream received."""
    _, trace_id, span_id, _ = got["traceparent"].split("-")
    return trace_id, span_id


def _no_secrets(spans: list[Any], *texts: str) -> None:
    for span in spans:
        for key, value in span.attributes.items():
            for text in (*texts, "authorization", "Bearer"):
                assert text not in str(value) and text not in key, (span.name, key, value)


@pytest.fixture(scope="module")
def traced(upstream, router) -> Iterator[_Traced]:
    assert router.predict([{"role": "user", "content": CHEAP_PROMPT}]).model == router.cheap_model
    gw = _Traced(GatewayConfig(upstream=Upstream(upstream.url), mode="route"), router)
    yield gw
    gw.server.stop()


def _chat(router: Router, **extra: Any) -> dict[str, Any]:
    return {"model": router.strong_model, "messages": [{"role": "user", "content": CHEAP_PROMPT}], **extra}


# ---------------------------------------------------------------- the span tree


def test_a_routed_request_is_one_server_span_with_decision_and_upstream_children(traced, upstream, router):
    trace_id = _new_trace()
    assert traced.post(_chat(router), trace_id).status_code == 200
    spans = traced.spans(trace_id)
    assert sorted(s.name for s in spans) == sorted(["POST /v1/chat/completions", "router.decide", f"upstream {router.cheap_model}"])

    from opentelemetry.trace import SpanKind, StatusCode

    request = _one(spans, "POST /v1/chat/completions")
    assert request.kind == SpanKind.SERVER and request.parent.is_remote  # the caller's trace, continued
    assert f"{request.parent.span_id:016x}" == parent_of(trace_id)
    decide, call = _one(spans, "router.decide"), _one(spans, f"upstream {router.cheap_model}")
    assert decide.parent.span_id == request.context.span_id == call.parent.span_id
    assert call.kind == SpanKind.CLIENT and call.status.status_code == StatusCode.UNSET
    assert call.attributes["gen_ai.request.model"] == router.cheap_model
    assert call.attributes["http.response.status_code"] == 200 and call.attributes["router.upstream.role"] == "primary"
    assert decide.attributes["router.decision"] == router.cheap_model and 0 <= decide.attributes["router.p_cheap_ok"] <= 1

    a = request.attributes
    assert a["http.request.method"] == "POST" and a["http.route"] == "/v1/chat/completions"
    assert a["http.response.status_code"] == 200
    assert a["router.mode"] == "route" and a["router.requested_model"] == router.strong_model
    assert a["router.model"] == a["router.served_model"] == router.cheap_model
    assert a["router.reason"] == decide.attributes["router.reason"] and a["router.p_cheap_ok"] == decide.attributes["router.p_cheap_ok"]
    assert a["router.escalated"] is False and a["router.fallback"] is False
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    cost = usage_cost(PriceTable.load(), router.cheap_model, Usage(PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS))
    assert a["router.cost_usd"] == pytest.approx(cost)
    _no_secrets(spans, CALLER_KEY, CHEAP_PROMPT, "battery")

    # The upstream got our trace: the caller's trace id, its parent the upstream call's span.
    (got,) = upstream.for_test(trace_id)
    assert _traceparent(got.headers) == (trace_id, f"{call.context.span_id:016x}")


def test_a_fallback_is_two_upstream_spans(traced, upstream, router):
    trace_id = _new_trace()
    resp = traced.post(_chat(router), trace_id, **{"x-fake-fault": f"{router.cheap_model}=500"})
    assert resp.status_code == 200 and resp.headers["x-router-fallback"] == "status_500"
    spans = traced.spans(trace_id)

    from opentelemetry.trace import StatusCode

    failed, answered = _one(spans, f"upstream {router.cheap_model}"), _one(spans, f"upstream {router.strong_model}")
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["http.response.status_code"] == 500
    assert failed.attributes["error.type"] == "500" and failed.attributes["router.upstream.role"] == "primary"
    assert answered.attributes["router.upstream.role"] == "fallback" and answered.attributes["http.response.status_code"] == 200
    assert failed.end_time <= answered.start_time
    request = _one(spans, "POST /v1/chat/completions")
    assert request.attributes["router.fallback"] is True and request.attributes["router.fallback_cause"] == "status_500"
    assert request.attributes["router.served_model"] == router.strong_model
    assert request.status.status_code == StatusCode.UNSET  # the client got its answer
    sent = [_traceparent(r.headers) for r in upstream.for_test(trace_id)]
    assert sent == [(trace_id, f"{s.context.span_id:016x}") for s in (failed, answered)]


def test_an_unreachable_upstream_is_an_error_span_and_a_502(upstream, router):
    down = Upstream("http://127.0.0.1:9/v1")  # discard port: nothing listens
    gw = _Traced(GatewayConfig(upstream=down, mode="route", fallback_to_strong=False), router)
    try:
        trace_id = _new_trace()
        assert gw.post(_chat(router), trace_id).status_code == 502
        spans = gw.spans(trace_id)
    finally:
        gw.server.stop()
    from opentelemetry.trace import StatusCode

    call = _one(spans, f"upstream {router.cheap_model}")
    assert call.status.status_code == StatusCode.ERROR and call.attributes["error.type"] == "upstream_unavailable"
    request = _one(spans, "POST /v1/chat/completions")
    assert request.status.status_code == StatusCode.ERROR and request.attributes["http.response.status_code"] == 502


def test_an_escalation_is_its_own_upstream_span(traced, upstream, router):
    trace_id = _new_trace()
    resp = traced.post(_chat(router), trace_id, **{"x-fake-fault": f"{router.cheap_model}=refusal"})
    assert resp.headers["x-router-escalated"] == "refusal"
    spans = traced.spans(trace_id)
    cheap, strong = _one(spans, f"upstream {router.cheap_model}"), _one(spans, f"upstream {router.strong_model}")
    assert cheap.attributes["router.upstream.role"] == "primary" and strong.attributes["router.upstream.role"] == "escalation"
    a = _one(spans, "POST /v1/chat/completions").attributes
    assert a["router.escalated"] is True and a["router.escalation_check"] == "refusal"
    prices, usage = PriceTable.load(), Usage(PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS)
    both = usage_cost(prices, router.cheap_model, usage) + usage_cost(prices, router.strong_model, usage)
    assert a["router.cost_usd"] == pytest.approx(both)  # an escalated request pays both calls


def test_a_stream_span_ends_with_the_stream_and_observe_mode_decides_beside_it(traced, upstream, router):
    trace_id = _new_trace()
    body = _chat(router, stream=True, stream_options={"include_usage": True})
    resp = traced.post(body, trace_id, **{"x-router-mode": "observe", "x-fake-chunks": "4", "x-fake-chunk-delay": "0.05"})
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    spans = traced.spans(trace_id)
    request, decide = _one(spans, "POST /v1/chat/completions"), _one(spans, "router.decide")
    call = _one(spans, f"upstream {router.strong_model}")  # observe mode: the model asked for
    assert decide.parent.span_id == call.parent.span_id == request.context.span_id
    assert request.end_time - request.start_time >= 4 * 0.05 * 1e9  # the relay, not only the headers
    a = request.attributes
    assert a["router.mode"] == "observe" and a["router.stream"] is True and a["router.decision"] == router.cheap_model
    assert a["router.model"] == router.strong_model and a["gen_ai.usage.output_tokens"] == COMPLETION_TOKENS


def test_passthrough_and_a_traced_gateway_without_a_caller_trace(traced, upstream, router):
    """A request without `traceparent` starts a trace; an unrouted model is traced too (one upstream span)."""
    test_id = uuid.uuid4().hex
    resp = httpx.post(f"{traced.url}/v1/chat/completions", json={"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]},
                      headers={"x-test-id": test_id}, timeout=10)
    assert resp.status_code == 200
    (got,) = upstream.for_test(test_id)
    trace_id, _ = _traceparent(got.headers)
    spans = traced.spans(trace_id)
    request = _one(spans, "POST /v1/chat/completions")
    assert request.parent is None and request.attributes["router.reason"] == "passthrough"
    assert [s.name for s in spans if s.name.startswith("upstream")] == ["upstream gpt-3.5-turbo"]


def test_shadow_grading_is_a_child_span_and_its_calls_carry_it(upstream, router, tmp_path):
    shadow = ShadowConfig(out=tmp_path / "labels.jsonl", grading=GradingSpec(judge=router.strong_model))
    gw = _Traced(GatewayConfig(upstream=Upstream(upstream.url), shadow=shadow), router)
    try:
        trace_id = _new_trace()
        assert gw.post(_chat(router), trace_id).status_code == 200
        spans = gw.spans(trace_id, until="router.shadow_grade")
    finally:
        gw.server.stop()
    request, grading = _one(spans, "POST /v1/chat/completions"), _one(spans, "router.shadow_grade")
    assert grading.parent.span_id == request.context.span_id
    assert grading.attributes["router.served_model"] == router.strong_model
    received = upstream.for_test(trace_id)
    assert len(received) >= 3  # the answer, the other model's answer, the judge
    graded = [r for r in received if _traceparent(r.headers)[1] == f"{grading.context.span_id:016x}"]
    assert len(graded) == len(received) - 1 and all(_traceparent(r.headers)[0] == trace_id for r in graded)
    _no_secrets(spans, CALLER_KEY, CHEAP_PROMPT)


# ---------------------------------------------------------------- on and off from the environment


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_traces_are_off_unless_the_environment_asks(otel_env, upstream, router):
    assert provider_from_env() is None  # nothing configured
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert provider_from_env() is None
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert provider_from_env() is None
    otel_env.delenv("OTEL_SDK_DISABLED")
    otel_env.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        provider_from_env()
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="http/protobuf"):
        provider_from_env()

    # Off: no middleware, and the caller's traceparent reaches the upstream as sent.
    app = create_app(GatewayConfig(upstream=Upstream(upstream.url), mode="route"), router=router)
    assert not [m for m in app.user_middleware if m.cls is TracingMiddleware]
    test_id, sent = uuid.uuid4().hex, f"00-{_new_trace()}-{secrets.token_hex(8)}-01"
    with ServerThread(app) as server:
        resp = httpx.post(f"{server.url}/v1/chat/completions", json=_chat(router),
                          headers={"x-test-id": test_id, "traceparent": sent}, timeout=10)
    assert resp.status_code == 200
    (got,) = upstream.for_test(test_id)
    assert got.headers["traceparent"] == sent


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: POST /v1/traces with an ExportTraceServiceRequest (protobuf)."""

    got: list[Any]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            self.got.append(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any]]]:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra's OTLP/HTTP exporter")
    got: list[Any] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Receiver", (_Receiver,), {"got": got}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()
    server.server_close()


def _exported(got: list[Any]) -> list[tuple[str, dict[str, Any], Any]]:
    """(span name, its attributes, its resource) of everything the receiver got."""
    out = []
    for request in got:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {kv.key: _value(kv.value) for kv in span.attributes}
                    out.append((span.name, attrs, rs.resource))
    return out


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


def test_router_gateway_exports_over_otlp_http_from_the_environment(otel_env, receiver, upstream, router):
    url, got = receiver
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)  # no OTEL_TRACES_EXPORTER: an endpoint means otlp
    otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    provider = provider_from_env()  # what router-gateway's main runs
    assert provider is not None
    trace_id = _new_trace()
    try:
        app = create_app(GatewayConfig(upstream=Upstream(upstream.url), mode="route"), router=router, tracer_provider=provider)
        with ServerThread(app) as server:
            resp = httpx.post(f"{server.url}/v1/chat/completions", json=_chat(router), timeout=10,
                              headers={"traceparent": f"00-{trace_id}-{parent_of(trace_id)}-01", "x-test-id": trace_id})
            assert resp.status_code == 200
        # the app's shutdown flushed the batch: the receiver has the whole trace
        assert wait_for(lambda: len(_exported(got)) >= 3, timeout=5), _exported(got)
    finally:
        shutdown(provider)
    spans = {name: attrs for name, attrs, _ in _exported(got)}
    assert {"POST /v1/chat/completions", "router.decide", f"upstream {router.cheap_model}"} <= set(spans)
    assert spans["POST /v1/chat/completions"]["router.model"] == router.cheap_model
    assert spans["POST /v1/chat/completions"]["gen_ai.usage.input_tokens"] == PROMPT_TOKENS
    resource = {kv.key: _value(kv.value) for kv in _exported(got)[0][2].attributes}
    assert resource["service.name"] == "router-gateway"
    for request in got:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                assert all(span.trace_id.hex() == trace_id for span in ss.spans)


def test_console_exporter_and_service_name(otel_env):
    _otel()
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    otel_env.setenv("OTEL_SERVICE_NAME", "gw-eu-1")
    provider = provider_from_env()
    assert provider is not None and provider.resource.attributes["service.name"] == "gw-eu-1"
    shutdown(provider)


def test_the_sdk_disabled_switch_turns_an_injected_provider_off(otel_env, upstream, router):
    _otel()
    from opentelemetry.sdk.trace import TracerProvider

    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    app = create_app(GatewayConfig(upstream=Upstream(upstream.url)), router=router, tracer_provider=TracerProvider())
    assert not app.state.gateway.tracing.enabled
    assert not [m for m in app.user_middleware if m.cls is TracingMiddleware]


def test_docs_name_every_request_span_attribute():
    """docs/operations.md's table of span attributes lists what call_attributes sets."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for name in ("router.model", "router.reason", "router.p_cheap_ok", "router.escalated", "router.fallback",
                 "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "router.cost_usd", "router.shadow_grade"):
        assert f"`{name}`" in text, name
