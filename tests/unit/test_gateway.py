"""The OpenAI-compatible gateway, end to end: a toy router, real uvicorn servers, real clients.

The router is a real model directory with a toy graph (tests/toy_artifact.py: "Classify ..." and
"Translate ..." route cheap, "Prove the theorem." strong). The upstream is a local
OpenAI-compatible server (tests/gateway_upstream.py); clients are the official `openai` SDK,
httpx and curl. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from gateway_upstream import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, SNAPSHOT_SUFFIX, wait_for
from prometheus_client.parser import text_string_to_metric_families

from router_model import Router
from router_model.answer_checks import failed_check
from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.gateway.app import create_app, request_tags
from router_model.gateway.config import Checks, GatewayConfig, Timeouts, Upstream, load_config
from router_model.gateway.errors import GatewayConfigError
from router_model.gateway.server import ServerThread
from router_model.observe.decision_log import read_decision_log

REPO = Path(__file__).resolve().parents[2]
CHEAP_KEY_ENV = "ROUTER_GATEWAY_TEST_CHEAP_KEY"
CANDIDATE_CHEAP_PROMPTS = (
    "Classify the sentiment of this review as positive, negative or neutral: 'The battery lasts all day.'",
    "Is this support ticket about billing, shipping or a technical problem? Ticket: 'I was charged twice.'",
    "Label the language of each line: 'Bonjour tout le monde' / 'Guten Morgen' / 'Buenos dias'.",
    "What is 2+2?",
)
IMAGE_MESSAGES = [
    {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tid() -> str:
    return uuid.uuid4().hex[:12]


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _metric(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def _log_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return list(read_decision_log(path))  # passes over a line the gateway is still appending


_wait_for = wait_for


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cheap_prompt(router) -> str:
    for prompt in CANDIDATE_CHEAP_PROMPTS:
        if router.predict([{"role": "user", "content": prompt}]).model == router.cheap_model:
            return prompt
    pytest.fail("the toy router sends none of the candidate prompts to the cheap model")


class _Gw:
    def __init__(self, server: ServerThread, log: Path | None) -> None:
        self.server = server
        self.url = server.url
        self.log = log
        self.gateway = server.server.config.app.state.gateway

    def sdk(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0, **kw)

    def records(self, request_id: str) -> list[dict]:
        assert self.log is not None
        return [r for r in _log_records(self.log) if r["request_id"] == request_id]


def _start(config: GatewayConfig, router: Router | None) -> _Gw:
    return _Gw(ServerThread(create_app(config, router=router)).start(), config.decision_log)


@pytest.fixture(scope="module")
def route_gw(upstream, router, tmp_path_factory):
    os.environ[CHEAP_KEY_ENV] = "sk-cheap-from-env"
    down = f"http://127.0.0.1:{_free_port()}/v1"
    config = GatewayConfig(
        upstream=Upstream(upstream.url),
        models={"gpt-4o-mini": Upstream(upstream.url, api_key_env=CHEAP_KEY_ENV), "down-model": Upstream(down)},
        mode="route",
        timeouts=Timeouts(read=2.0),  # the upstream's `slow` fault takes 3 s
        decision_log=tmp_path_factory.mktemp("gw-route") / "decisions.jsonl",
    )
    gw = _start(config, router)
    yield gw
    gw.server.stop()


@pytest.fixture(scope="module")
def observe_gw(upstream, router, tmp_path_factory):
    config = GatewayConfig(upstream=Upstream(upstream.url), decision_log=tmp_path_factory.mktemp("gw-observe") / "d.jsonl")
    gw = _start(config, router)
    yield gw
    gw.server.stop()


def _post(gw: _Gw, body: dict | bytes, tid: str, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", "authorization": "Bearer sk-caller", "x-test-id": tid, "x-request-id": tid}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return httpx.post(f"{gw.url}/v1/chat/completions", content=content, headers=hdrs, timeout=10)


# ---------------------------------------------------------------- routing and forwarding


def test_route_mode_forwards_body_unchanged_except_model(route_gw, upstream, router, cheap_prompt):
    body = {
        "model": router.strong_model,
        "messages": [{"role": "system", "content": "Be terse. Ünïcødé ✓"}, {"role": "user", "content": cheap_prompt}],
        "temperature": 0.123456789012345,
        "top_p": 1,
        "seed": 12345678901234567,
        "max_tokens": 64,
        "logit_bias": {"50256": -100},
        "user": "u-1",
        "metadata": {"team": "search"},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "none",
        "extra_vendor_field": {"nested": [1, 2.5, None, True, "x"]},
    }
    tid = _tid()
    resp = _post(route_gw, body, tid)
    assert resp.status_code == 200, resp.text
    (got,) = upstream.for_test(tid)
    assert got.body["model"] == router.cheap_model
    assert got.body == {**body, "model": router.cheap_model}
    assert resp.headers["x-router-model"] == router.cheap_model
    assert resp.headers["x-router-reason"] == "classifier"
    assert resp.headers["x-router-artifact"] == router.version
    assert 0.0 <= float(resp.headers["x-router-p-cheap-ok"]) <= 1.0
    assert resp.json()["model"] == router.cheap_model + SNAPSHOT_SUFFIX  # the upstream's own field
    # the caller's key goes to the default upstream; the cheap model's upstream has its own from the env
    assert got.headers["authorization"] == "Bearer sk-cheap-from-env"
    assert "x-router-tags" not in got.headers


def test_unrouted_model_passes_through_byte_for_byte(route_gw, upstream):
    raw = b'{"model": "gpt-3.5-turbo",  "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0}'
    tid = _tid()
    resp = _post(route_gw, raw, tid)
    assert resp.status_code == 200
    (got,) = upstream.for_test(tid)
    assert got.raw == raw
    assert got.headers["authorization"] == "Bearer sk-caller"
    assert resp.headers["x-router-reason"] == "passthrough"
    assert "x-router-decision" not in resp.headers


def test_an_upstream_cookie_is_never_replayed_on_another_callers_request(route_gw, upstream):
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
    first, second = _tid(), _tid()
    assert _post(route_gw, body, first, x_fake_fault="cookie").status_code == 200
    assert _post(route_gw, body, second).status_code == 200
    (got,) = upstream.for_test(second)
    assert "cookie" not in got.headers


def test_route_mode_classification_and_image_go_where_the_router_says(route_gw, upstream, router, cheap_prompt):
    client = route_gw.sdk()
    messages = [{"role": "user", "content": cheap_prompt}]
    expected = router.predict(messages)
    raw = client.chat.completions.with_raw_response.create(model=router.strong_model, messages=messages, extra_headers={"x-test-id": (tid := _tid())})
    completion = raw.parse()
    assert upstream.for_test(tid)[0].body["model"] == expected.model == raw.headers["x-router-model"]
    assert completion.model == expected.model + SNAPSHOT_SUFFIX

    raw = client.chat.completions.with_raw_response.create(model=router.strong_model, messages=IMAGE_MESSAGES, extra_headers={"x-test-id": (tid := _tid())})
    assert raw.headers["x-router-reason"] == "vision"
    assert "x-router-p-cheap-ok" not in raw.headers
    (got,) = upstream.for_test(tid)
    assert got.body["model"] == router.strong_model
    assert got.body["messages"] == IMAGE_MESSAGES


def test_tags_and_aliases(route_gw, observe_gw, upstream, router, cheap_prompt):
    messages = [{"role": "user", "content": cheap_prompt}]
    tid = _tid()
    resp = _post(route_gw, {"model": "auto", "messages": messages}, tid, x_router_tags="High-Accuracy, other")
    assert resp.headers["x-router-reason"] == "tag:high-accuracy"
    assert upstream.for_test(tid)[0].body["model"] == router.strong_model
    tid = _tid()
    resp = _post(route_gw, {"model": "auto", "messages": messages, "metadata": {"router_tags": "vision"}}, tid)
    assert resp.headers["x-router-reason"] == "tag:vision"
    tid = _tid()
    resp = _post(route_gw, {"model": "auto", "messages": messages}, tid)
    assert upstream.for_test(tid)[0].body["model"] == router.cheap_model
    # observe mode: an alias means the strong model, the decision is only logged
    tid = _tid()
    resp = _post(observe_gw, {"model": "auto", "messages": messages}, tid)
    assert upstream.for_test(tid)[0].body["model"] == router.strong_model
    assert resp.headers["x-router-decision"] == router.cheap_model
    assert request_tags({}, {"metadata": {"router_tags": " a, ,b "}}) == ["a", "b"]
    assert request_tags({"x-router-tags": ""}, {"metadata": {"router_tags": "a"}}) == []


def test_observe_mode_forwards_the_requested_model_and_logs(observe_gw, route_gw, upstream, router, cheap_prompt):
    body = {"model": router.strong_model, "messages": [{"role": "user", "content": cheap_prompt}]}
    raw = json.dumps(body).encode()
    tid = _tid()
    resp = _post(observe_gw, raw, tid)
    assert resp.status_code == 200
    (got,) = upstream.for_test(tid)
    assert got.raw == raw  # untouched
    assert resp.headers["x-router-model"] == router.strong_model
    assert resp.headers["x-router-decision"] == router.cheap_model
    assert resp.headers["x-router-mode"] == "observe"
    (rec,) = observe_gw.records(tid)
    assert rec["model"] == router.cheap_model and rec["served_model"] == router.strong_model
    assert rec["mode"] == "observe" and rec["saved_is_estimate"] is True
    # no prompt hash key configured: neither the prompt nor a guessable hash of it is logged
    assert "prompt" not in rec and "prompt_sha256" not in rec and "prompt_hmac" not in rec
    prices = PriceTable.load()
    usage = Usage(PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS)
    assert rec["saved_usd"] == pytest.approx(usage_cost(prices, "gpt-4o", usage) - usage_cost(prices, "gpt-4o-mini", usage))
    # a route-mode gateway is forced to observe by the header
    tid = _tid()
    resp = _post(route_gw, raw, tid, x_router_mode="observe")
    assert upstream.for_test(tid)[0].raw == raw
    assert route_gw.records(tid)[0]["mode"] == "observe"
    # the log is readable by the observation report
    from router_model.observe.decision_log import read_decision_log

    assert len(list(read_decision_log(observe_gw.log))) >= 1


# ---------------------------------------------------------------- streaming


def test_streaming_through_the_sdk(route_gw, upstream, router, cheap_prompt):
    client = route_gw.sdk()
    tid = _tid()
    stream = client.chat.completions.create(
        model=router.strong_model, messages=[{"role": "user", "content": cheap_prompt}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-test-id": tid, "x-request-id": tid},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "part0 part1 part2 "
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    assert upstream.for_test(tid)[0].body["model"] == router.cheap_model
    assert tid in upstream.streams_completed
    assert _wait_for(lambda: route_gw.records(tid))
    (rec,) = route_gw.records(tid)
    assert rec["stream"] is True and rec["completed"] is True
    assert rec["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "cached_tokens": CACHED_TOKENS}


def test_streams_are_not_escalated(route_gw, upstream, router, cheap_prompt):
    tid = _tid()
    body = {"model": router.strong_model, "messages": [{"role": "user", "content": cheap_prompt}], "stream": True}
    with httpx.stream("POST", f"{route_gw.url}/v1/chat/completions", json=body,
                      headers={"x-test-id": tid, "x-fake-fault": "length"}) as resp:
        data = resp.read()
    assert b'"finish_reason": "length"' in data and data.rstrip().endswith(b"data: [DONE]")
    assert [r.body["model"] for r in upstream.for_test(tid)] == [router.cheap_model]


def test_client_disconnect_cancels_the_upstream_stream(route_gw, upstream, router):
    tid = _tid()
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "count slowly"}], "stream": True}
    before = _metric(_metrics(route_gw.url), "router_gateway_client_disconnects_total")
    headers = {"x-test-id": tid, "x-fake-chunks": "100", "x-fake-chunk-delay": "0.1"}
    with httpx.Client(timeout=10) as client, client.stream("POST", f"{route_gw.url}/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        seen = b""
        for chunk in resp.iter_bytes():
            seen += chunk
            if seen.count(b"part") >= 2:
                break
    # leaving the `with` closed the connection mid-stream
    assert _wait_for(lambda: tid in upstream.streams_cut, timeout=5), "the upstream never saw the disconnect"
    assert tid not in upstream.streams_completed
    assert _wait_for(lambda: _metric(_metrics(route_gw.url), "router_gateway_client_disconnects_total") == before + 1)


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


# ---------------------------------------------------------------- cost, health, metrics


def test_cost_metrics_match_the_usage_arithmetic(route_gw, router, cheap_prompt):
    before = _metrics(route_gw.url)
    resp = _post(route_gw, {"model": router.strong_model, "messages": [{"role": "user", "content": cheap_prompt}]}, _tid())
    assert resp.headers["x-router-model"] == router.cheap_model
    after = _metrics(route_gw.url)
    p, c, k = PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS
    cheap = ((p - k) * 0.15 + k * 0.075 + c * 0.60) / 1e6
    strong = ((p - k) * 2.50 + k * 1.25 + c * 10.00) / 1e6

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("router_gateway_cost_usd_total", model="gpt-4o-mini") == pytest.approx(cheap, rel=1e-9)
    assert delta("router_gateway_routed_cost_usd_total", mode="route") == pytest.approx(cheap, rel=1e-9)
    assert delta("router_gateway_baseline_cost_usd_total", mode="route") == pytest.approx(strong, rel=1e-9)
    assert delta("router_gateway_saved_usd", mode="route") == pytest.approx(strong - cheap, rel=1e-6)
    assert delta("router_gateway_tokens_total", model="gpt-4o-mini", kind="cached") == k
    assert delta("router_gateway_requests_total", endpoint="chat_completions", status="200") == 1
    assert delta("router_gateway_decisions_total", model="gpt-4o-mini", reason="classifier", mode="route") == 1


def test_health_ready_models(route_gw, router):
    assert httpx.get(f"{route_gw.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{route_gw.url}/readyz").json()
    assert ready["status"] == "ready" and ready["artifact_version"] == router.version
    ids = [m.id for m in route_gw.sdk().models.list()]
    assert {"gpt-4o", "gpt-4o-mini", "auto"} <= set(ids)
    m = _metrics(route_gw.url)
    assert _metric(m, "router_gateway_router_loaded") == 1
    assert _metric(m, "router_gateway_router_info", artifact_version=router.version) == 1


def test_config_files(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TEST_KEY", "k")
    toml = tmp_path / "gw.toml"
    toml.write_text(
        'mode = "route"\naliases = ["auto", "router"]\n[upstream]\nbase_url = "http://127.0.0.1:1/v1/"\n'
        '[models."gpt-4o-mini"]\nbase_url = "https://cheap.example/v1"\napi_key_env = "GW_TEST_KEY"\n'
        "[timeouts]\nread = 3\n[checks]\nrefusal = false\n"
    )
    config = load_config(toml, port=9999)
    assert config.mode == "route" and config.port == 9999 and config.timeouts.read == 3.0
    assert config.upstream.base_url == "http://127.0.0.1:1/v1"
    assert config.upstream_for("gpt-4o-mini").api_key() == "k" and config.upstream_for("other") == config.upstream
    assert config.checks.refusal is False and config.aliases == frozenset({"auto", "router"})
    assert load_config(toml, upstream_url="http://u:2/v1", mode="observe").upstream.base_url == "http://u:2/v1"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"upstream": {"base_url": "http://x/v1"}, "timeouts": {"read": -1}}))
    with pytest.raises(GatewayConfigError, match="timeouts.read"):
        load_config(bad)
    bad.write_text(json.dumps({"upstream": {"base_url": "http://x/v1"}, "api_key": "sk-secret"}))
    with pytest.raises(GatewayConfigError, match="api_key"):
        load_config(bad)
    bad.write_text(json.dumps({"upstream": {"base_url": "http://x/v1", "api_key_env": "GW_TEST_UNSET_VAR"}}))
    with pytest.raises(GatewayConfigError, match="GW_TEST_UNSET_VAR"):
        load_config(bad)
    with pytest.raises(GatewayConfigError, match="upstream"):
        load_config(None)


def test_core_package_does_not_import_the_gateway_deps():
    code = (
        "import sys, router_model, router_model.router, router_model.gateway\n"
        "heavy = [m for m in ('starlette', 'httpx', 'uvicorn', 'prometheus_client', 'torch', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------- reload, CLI, curl


def test_watch_reload_keeps_the_last_good_router(upstream, toy_model_dir, tmp_path):
    copy = tmp_path / "router"
    shutil.copytree(toy_model_dir, copy)
    router = Router.load(copy)
    config = GatewayConfig(upstream=Upstream(upstream.url), model_dir=copy, watch_interval=0.1)
    gw = _start(config, router)
    try:
        meta = (copy / "metadata.json").read_text()

        def replace_metadata(text: str) -> None:  # atomically, as a deploy would
            (copy / "metadata.tmp").write_text(text)
            os.replace(copy / "metadata.tmp", copy / "metadata.json")

        replace_metadata("{ truncated")
        assert _wait_for(lambda: _metric(_metrics(gw.url), "router_gateway_reloads_total", result="failed") >= 1)
        assert gw.gateway.holder.router is router
        assert httpx.get(f"{gw.url}/readyz").status_code == 200
        replace_metadata(meta)
        assert _wait_for(lambda: _metric(_metrics(gw.url), "router_gateway_reloads_total", result="ok") == 2)
        assert gw.gateway.holder.router is not router and gw.gateway.holder.router.version == router.version
    finally:
        gw.server.stop()


@pytest.fixture(scope="module")
def cli_gw(upstream, toy_model_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("gw-cli") / "decisions.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_model.gateway", "--model-dir", str(toy_model_dir), "--upstream", upstream.url,
         "--port", str(port), "--mode", "route", "--decision-log", str(log), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert _wait_for(ready, timeout=60), "the gateway CLI did not become ready"
    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    yield proc, url, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_curl_stream_and_non_stream(cli_gw, router, cheap_prompt):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed on this machine; the SDK and httpx tests cover the same endpoints")
    _, url, log = cli_gw
    body = json.dumps({"model": router.strong_model, "messages": [{"role": "user", "content": cheap_prompt}]})
    out = subprocess.run(
        [curl, "-sS", "-i", f"{url}/v1/chat/completions", "-H", "content-type: application/json", "-H", "authorization: Bearer sk-x",
         "-d", body], capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    head, _, payload = out.partition("\n\n")  # text mode turned \r\n into \n
    assert head.startswith("HTTP/1.1 200") and f"x-router-model: {router.cheap_model}" in head
    assert json.loads(payload)["choices"][0]["message"]["content"] == f"answer from {router.cheap_model}"
    stream_body = json.dumps({**json.loads(body), "stream": True})
    out = subprocess.run(
        [curl, "-sS", "-N", f"{url}/v1/chat/completions", "-H", "content-type: application/json", "-d", stream_body],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    events = [line for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) == 6
    assert _wait_for(lambda: len(_log_records(log)) >= 2)


def test_cli_sighup_reload_and_graceful_stop(cli_gw):
    proc, url, _ = cli_gw
    assert _metric(_metrics(url), "router_gateway_reloads_total", result="ok") == 1
    proc.send_signal(signal.SIGHUP)
    assert _wait_for(lambda: _metric(_metrics(url), "router_gateway_reloads_total", result="ok") == 2, timeout=30)
    # a stream in flight when SIGTERM arrives still runs to its end
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10,
                      headers={"x-fake-chunks": "5", "x-fake-chunk-delay": "0.1"}) as resp:
        proc.send_signal(signal.SIGTERM)
        data = resp.read()
    assert data.rstrip().endswith(b"data: [DONE]")
    assert proc.wait(timeout=20) == 0
