"""The OpenAI-compatible gateway end to end, its routing: where each chat completion is forwarded
and how (route and observe modes, tags and aliases, images, the body kept unchanged) and streaming
through it. A toy router, real uvicorn servers, clients the official `openai` SDK and httpx.

The router is a real model directory with a toy graph (tests/toy_artifact.py: "Classify ..." and
"Translate ..." route cheap, "Prove the theorem." strong). The upstream is a local
OpenAI-compatible server (tests/gateway_upstream.py); the route-mode gateway `route_gw` and the
helpers that call it are in tests/route_gateway.py. Nothing is mocked.

Failed answers and calls: test_gateway_failures.py; cost, health, metrics, config, reload and the
CLI: test_gateway_operations.py.
"""

from __future__ import annotations

import json

import httpx
import pytest
from gateway_upstream import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, SNAPSHOT_SUFFIX
from gateway_upstream import wait_for as _wait_for
from route_gateway import metric as _metric
from route_gateway import metrics as _metrics
from route_gateway import post as _post
from route_gateway import start as _start
from route_gateway import tid as _tid

from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.gateway.app import request_tags
from router_model.gateway.config import GatewayConfig, Upstream

IMAGE_MESSAGES = [
    {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}
]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def observe_gw(upstream, router, tmp_path_factory):
    config = GatewayConfig(upstream=Upstream(upstream.url), decision_log=tmp_path_factory.mktemp("gw-observe") / "d.jsonl")
    gw = _start(config, router)
    yield gw
    gw.server.stop()


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
