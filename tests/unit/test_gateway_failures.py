"""The OpenAI-compatible gateway end to end when something fails: escalation of a failed cheap
answer to the strong model, upstream errors mapped to OpenAI errors, the fallback after a failed
cheap call, bad requests, and a gateway whose router is not loaded.

The router is a real model directory with a toy graph (tests/toy_artifact.py: "Classify ..." and
"Translate ..." route cheap, "Prove the theorem." strong). The upstream is a local
OpenAI-compatible server (tests/gateway_upstream.py); the route-mode gateway `route_gw` and the
helpers that call it are in tests/route_gateway.py. Nothing is mocked.

Routing and streaming: test_gateway.py.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from gateway_upstream import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, SNAPSHOT_SUFFIX
from gateway_upstream import wait_for as _wait_for
from route_gateway import metric as _metric
from route_gateway import metrics as _metrics
from route_gateway import post as _post
from route_gateway import start as _start
from route_gateway import tid as _tid

from router_model.answer_checks import failed_check
from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.gateway.config import Checks, GatewayConfig, Upstream

# ---------------------------------------------------------------- fixtures


# ---------------------------------------------------------------- escalation


@pytest.mark.parametrize(
    ("fault", "kwargs", "check"),
    [
        ("invalid_json", {"response_format": {"type": "json_object"}}, "json"),
        ("schema_mismatch", {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": {
            "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"], "additionalProperties": False}}}},
         "json_schema"),
        ("length", {}, "length"),
        ("refusal", {}, "refusal"),
        ("bad_tool_args", {"tools": [{"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]}, "tool_arguments"),
    ],
)
def test_escalation_retries_a_failed_cheap_answer_on_the_strong_model(route_gw, upstream, router, cheap_prompt, fault, kwargs, check):
    client = route_gw.sdk()
    tid = _tid()
    before = _metric(_metrics(route_gw.url), "router_gateway_escalations_total", check=check)
    raw = client.chat.completions.with_raw_response.create(
        model=router.strong_model, messages=[{"role": "user", "content": cheap_prompt}],
        extra_headers={"x-test-id": tid, "x-request-id": tid, "x-fake-fault": f"{router.cheap_model}={fault}"}, **kwargs,
    )
    completion = raw.parse()
    assert [r.body["model"] for r in upstream.for_test(tid)] == [router.cheap_model, router.strong_model]
    assert raw.headers["x-router-escalated"] == check
    assert raw.headers["x-router-model"] == router.strong_model
    assert completion.model == router.strong_model + SNAPSHOT_SUFFIX
    if "response_format" in kwargs:
        assert json.loads(completion.choices[0].message.content) == {"answer": f"ok from {router.strong_model}"}
    if "tools" in kwargs:
        assert json.loads(completion.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert _metric(_metrics(route_gw.url), "router_gateway_escalations_total", check=check) == before + 1
    (rec,) = route_gw.records(tid)
    prices = PriceTable.load()
    usage = Usage(PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS)
    both = usage_cost(prices, router.cheap_model, usage) + usage_cost(prices, router.strong_model, usage)
    assert rec["escalated"] == check and rec["cost_usd"] == pytest.approx(both)
    assert rec["saved_usd"] == pytest.approx(-usage_cost(prices, router.cheap_model, usage))


def test_good_cheap_answers_are_not_escalated(route_gw, upstream, router, cheap_prompt):
    client = route_gw.sdk()
    tid = _tid()
    raw = client.chat.completions.with_raw_response.create(
        model=router.strong_model, messages=[{"role": "user", "content": cheap_prompt}],
        response_format={"type": "json_object"}, extra_headers={"x-test-id": tid},
    )
    assert json.loads(raw.parse().choices[0].message.content) == {"answer": f"ok from {router.cheap_model}"}
    assert "x-router-escalated" not in raw.headers
    assert len(upstream.for_test(tid)) == 1


def test_checks_unit():
    checks = Checks()
    ok = {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}
    assert failed_check({}, ok, checks) is None
    assert failed_check({}, {"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}, checks) == "empty"
    assert failed_check({}, {"choices": [{"message": {"content": "x", "refusal": "no"}}]}, checks) == "refusal"
    assert failed_check({}, {"choices": [{"message": {"content": "I cannot help with that."}}]}, checks) == "refusal"
    assert failed_check({}, {"choices": [{"message": {"content": "I cannot help with that."}}]}, Checks(refusal=False)) is None
    bad_schema = {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}
    assert failed_check({"response_format": bad_schema}, {"choices": [{"message": {"content": "{}"}}]}, checks) is None
    assert failed_check({"response_format": {"type": "json_object"}}, {"choices": [{"message": {"content": "{"}}]}, Checks(json=False)) is None
    assert failed_check({}, {"choices": []}, checks) == "empty"


# ---------------------------------------------------------------- failures


def _error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"} and isinstance(err["message"], str) and "Traceback" not in resp.text
    if code is not None:
        assert err["code"] == code
    return err


def test_upstream_failures_map_to_openai_errors(route_gw, upstream):
    msgs = [{"role": "user", "content": "hi"}]
    body = {"model": "gpt-3.5-turbo", "messages": msgs}
    _error(_post(route_gw, body, _tid(), x_fake_fault="500"), 502, "upstream_failed")
    _error(_post(route_gw, body, _tid(), x_fake_fault="malformed"), 502, "upstream_invalid_response")
    _error(_post(route_gw, {"model": "down-model", "messages": msgs}, _tid()), 502, "upstream_unavailable")
    _error(_post(route_gw, body, _tid(), x_fake_fault="slow"), 504, "upstream_timeout")
    resp = _post(route_gw, body, _tid(), x_fake_fault="429")
    assert _error(resp, 429, "rate_limit_exceeded")["message"] == "Rate limit reached"
    assert resp.headers["retry-after"] == "7"
    assert _error(_post(route_gw, body, _tid(), x_fake_fault="400"), 400, "invalid_value")["param"] == "temperature"
    # streamed requests get the same statuses before any byte is sent
    _error(_post(route_gw, {**body, "stream": True}, _tid(), x_fake_fault="500"), 502, "upstream_failed")
    assert _post(route_gw, {**body, "stream": True}, _tid(), x_fake_fault="429").headers["retry-after"] == "7"
    # through the SDK
    with pytest.raises(openai.RateLimitError) as info:
        route_gw.sdk().chat.completions.create(model="gpt-3.5-turbo", messages=msgs, extra_headers={"x-fake-fault": "429"})
    assert info.value.status_code == 429
    m = _metrics(route_gw.url)
    assert _metric(m, "router_gateway_upstream_errors_total", kind="timeout") >= 1
    assert _metric(m, "router_gateway_upstream_errors_total", kind="connect") >= 1


def test_cheap_failure_falls_back_to_the_strong_model(route_gw, upstream, router, cheap_prompt):
    tid = _tid()
    body = {"model": router.strong_model, "messages": [{"role": "user", "content": cheap_prompt}]}
    resp = _post(route_gw, body, tid, x_fake_fault=f"{router.cheap_model}=500")
    assert resp.status_code == 200 and resp.headers["x-router-fallback"] == "status_500"
    assert [r.body["model"] for r in upstream.for_test(tid)] == [router.cheap_model, router.strong_model]
    tid = _tid()
    resp = _post(route_gw, {**body, "stream": True}, tid, x_fake_fault=f"{router.cheap_model}=slow")
    assert resp.status_code == 200 and resp.headers["x-router-fallback"] == "upstream_timeout"
    assert b"data: [DONE]" in resp.content


def test_bad_requests_get_400(route_gw):
    _error(_post(route_gw, b"{not json", _tid()), 400, "invalid_json")
    _error(_post(route_gw, b"[1, 2]", _tid()), 400, "invalid_json")
    _error(_post(route_gw, b'{"model": "gpt-4o", "messages": [], "temperature": NaN}', _tid()), 400, "invalid_json")
    assert _error(_post(route_gw, {"messages": [{"role": "user", "content": "x"}]}, _tid()), 400)["param"] == "model"
    assert _error(_post(route_gw, {"model": "gpt-4o"}, _tid()), 400)["param"] == "messages"
    assert _error(_post(route_gw, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, _tid()), 400)["param"] == "stream"
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    _error(_post(route_gw, body, _tid(), x_router_mode="sometimes"), 400)
    # (under /v1 every other method and path passes through: tests/unit/test_gateway_passthrough.py)
    _error(httpx.get(f"{route_gw.url}/nothing"), 404, "not_found")
    _error(httpx.get(f"{route_gw.url}/chat/completions"), 405, "method_not_allowed")


def test_router_not_loaded_gives_503(upstream, tmp_path):
    config = GatewayConfig(upstream=Upstream(upstream.url), model_dir=tmp_path / "missing", mode="route", max_body_bytes=4096)
    gw = _start(config, None)
    try:
        assert _wait_for(lambda: gw.gateway.holder.error is not None)
        msgs = [{"role": "user", "content": "hi"}]
        err = _error(_post(gw, {"model": "auto", "messages": msgs}, _tid()), 503, "router_not_ready")
        assert "missing" in err["message"]
        _error(httpx.get(f"{gw.url}/readyz"), 503, "router_not_ready")
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        resp = _post(gw, {"model": "gpt-4o", "messages": msgs}, _tid())  # a plain model name still passes
        assert resp.status_code == 200 and resp.headers["x-router-reason"] == "no-router"
        _error(_post(gw, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}, _tid()), 413, "request_too_large")
    finally:
        gw.server.stop()
