"""Defects of issue 25 in the gateway's handling of requests (and two neighbours), each with the
test that showed it: tags and shadow grading, deep JSON, lone surrogates, httpx log lines, the model
named after a failed fallback, the decision log's file mode, and the paths those fixes touched.

Real servers only: the gateway under uvicorn, the toy router (tests/toy_artifact.py: "Translate
..." routes cheap on the pair) and the local fake upstream (tests/gateway_upstream.py); the shared
gateway and calls are in tests/defect_gateway.py. The defects that need an upstream misbehaving
(broken streams, the total deadline, huge bodies): test_gateway_upstream_faults.py.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from defect_gateway import CHEAP_PROMPT, MESSAGES
from defect_gateway import Gw as _Gw
from defect_gateway import metric as _metric
from defect_gateway import post as _post
from gateway_upstream import wait_for

from router_model.gateway.config import GatewayConfig, Upstream
from router_model.labelling.config import GradingSpec, ShadowConfig
from router_model.observe.decision_log import DecisionLogWriter, read_decision_log
from router_model.router import Router

# ---------------------------------------------------------------- helpers


def _tid() -> str:
    return uuid.uuid4().hex[:12]


def _records(path: Path, request_id: str) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in read_decision_log(path) if r.get("request_id") == request_id]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def route_gw(upstream, toy_model_dir, tmp_path_factory) -> Iterator[_Gw]:
    config = GatewayConfig(upstream=Upstream(upstream.url), mode="route",
                           decision_log=tmp_path_factory.mktemp("defects") / "decisions.jsonl")
    gw = _Gw(config, Router.load(toy_model_dir))
    yield gw
    gw.stop()


# ---------------------------------------------------------------- 2: drop_tags sees every tag


def test_a_body_tagged_drop_tag_is_not_shadow_graded_when_a_header_tag_is_present(upstream, toy_router, tmp_path):
    shadow = ShadowConfig(out=tmp_path / "labels.jsonl", grading=GradingSpec(judge="gpt-4o"), drop_tags=frozenset({"pii"}))
    gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url), shadow=shadow), toy_router)
    try:
        body = {"model": "auto", "messages": MESSAGES, "metadata": {"router_tags": "pii"}}
        resp = _post(gw.url, body, x_router_tags="team-a")
        assert resp.status_code == 200, resp.text
        assert wait_for(lambda: _metric(gw.url, "router_gateway_shadow_dropped_total", reason="tag") == 1)
        assert _metric(gw.url, "router_gateway_shadow_sampled_total") == 0
        time.sleep(0.2)
        assert not (tmp_path / "labels.jsonl").exists() or (tmp_path / "labels.jsonl").read_text() == ""
    finally:
        gw.stop()


def test_routing_tags_still_prefer_the_header_but_privacy_uses_the_union():
    from router_model.gateway.call import all_request_tags, request_tags

    body = {"metadata": {"router_tags": "pii, b"}}
    assert request_tags({"x-router-tags": "a"}, body) == ["a"]
    assert all_request_tags({"x-router-tags": "a"}, body) == ["a", "pii", "b"]
    assert all_request_tags({}, {}) == []


# ---------------------------------------------------------------- 3: deep JSON is a counted 400


def test_deeply_nested_json_is_a_counted_400(route_gw, caplog):
    before = _metric(route_gw.url, "router_gateway_requests_total", endpoint="chat_completions", status="400")
    deep = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x": ' \
        + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}"
    with caplog.at_level(logging.ERROR):
        resp = _post(route_gw.url, deep)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_json"
    assert "RecursionError" not in caplog.text
    assert _metric(route_gw.url, "router_gateway_requests_total", endpoint="chat_completions", status="400") == before + 1
    lists = b"[" * 10_000 + b"]" * 10_000
    assert _post(route_gw.url, lists).json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("where", ["field", "message"])
def test_json_that_parses_but_is_too_deep_to_forward_is_a_400(route_gw, where):
    # 970 levels parse, but re-serialising the body for the routed model (or logging it) went past
    # Python's recursion limit: a 500. The gateway caps nesting where it parses.
    inner = b'{"a":' * 970 + b"1" + b"}" * 970
    message = b'{"role": "user", "content": "' + CHEAP_PROMPT.encode() + b'"' + (b', "x": ' + inner if where == "message" else b"") + b"}"
    body = b'{"model": "auto", "messages": [' + message + b"]" + (b', "x": ' + inner if where == "field" else b"") + b"}"
    resp = _post(route_gw.url, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_json" and "nested" in resp.json()["error"]["message"]
    # a body nested as deep as real requests get is untouched
    schema: dict = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"a": schema}}
    ok = {"model": "auto", "messages": MESSAGES,
          "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}
    assert _post(route_gw.url, ok).status_code == 200


# ---------------------------------------------------------------- 4: a lone surrogate outside the routed text


def test_a_lone_surrogate_in_another_field_is_forwarded_in_route_mode(route_gw, upstream):
    tid = _tid()
    messages = json.dumps(MESSAGES)
    raw = ('{"model": "auto", "messages": ' + messages + ', "user": "abc\\ud800"}').encode()  # the JSON escape, as sent
    resp = _post(route_gw.url, raw, x_test_id=tid)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-router-model"] == "gpt-4o-mini"
    [got] = upstream.for_test(tid)
    assert got.body["model"] == "gpt-4o-mini" and got.body["user"] == "abc\ud800"
    # non-ASCII text is still forwarded as UTF-8, not escaped
    tid = _tid()
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES, "user": "café"}, x_test_id=tid)
    assert resp.status_code == 200 and "café".encode() in upstream.for_test(tid)[0].raw


def test_a_lone_surrogate_does_not_fail_shadow_grading(upstream, toy_router, tmp_path):
    shadow = ShadowConfig(out=tmp_path / "labels.jsonl", grading=GradingSpec(judge="gpt-4o"))
    gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url), shadow=shadow), toy_router)
    try:
        raw = ('{"model": "auto", "messages": ' + json.dumps(MESSAGES) + ', "user": "abc\\udc00"}').encode()
        assert _post(gw.url, raw).status_code == 200
        assert wait_for(lambda: _metric(gw.url, "router_gateway_shadow_rows_total", result="labelled") == 1)
        assert _metric(gw.url, "router_gateway_shadow_rows_total", result="failed") == 0
    finally:
        gw.stop()


# ---------------------------------------------------------------- 7: no httpx line per upstream call


def test_the_gateway_does_not_log_a_line_per_upstream_call(upstream, caplog):
    logging.getLogger("httpx").setLevel(logging.NOTSET)
    with caplog.at_level(logging.INFO):
        gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url)), None)
        try:
            for _ in range(3):
                assert _post(gw.url, {"model": "gpt-4o", "messages": MESSAGES}).status_code == 200
        finally:
            gw.stop()
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("httpx", "httpcore"))] == []


# ---------------------------------------------------------------- 10: after a failed fallback, name the last model


def test_a_failed_fallback_names_the_strong_model(route_gw):
    tid = _tid()
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES}, x_fake_fault="500", x_request_id=tid)
    assert resp.status_code == 502
    assert resp.headers["x-router-fallback"] == "status_500"
    assert resp.headers["x-router-decision"] == "gpt-4o-mini"
    assert resp.headers["x-router-model"] == "gpt-4o"
    log = route_gw.config.decision_log
    assert log is not None
    assert wait_for(lambda: _records(log, tid))
    [record] = _records(log, tid)
    assert record["served_model"] == "gpt-4o"
    assert [a["model"] for a in record["attempts"]] == ["gpt-4o-mini", "gpt-4o"]


# ---------------------------------------------------------------- 11: the decision log is 0600


def test_the_decision_log_is_created_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "logs" / "decisions.jsonl"
        with DecisionLogWriter(path, include_prompt=True) as writer:
            writer.write({"request_id": "r", "prompt": "secret"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.rename(tmp_path / "logs" / "rotated.jsonl")  # a rotation: the writer creates the path again
        with DecisionLogWriter(path) as writer:
            path.unlink()
            writer.write({"request_id": "r2"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert "0600" in (docs / "gateway.md").read_text().split("## Decision log", 1)[1].split("##", 1)[0]
    assert "0600" in (docs / "service.md").read_text()


# ---------------------------------------------------------------- the paths these fixes touched still work


def test_clean_streams_errors_and_escalations_are_unchanged(route_gw, upstream):
    sdk = route_gw.sdk()
    chunks = list(sdk.chat.completions.create(model="auto", messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "part0 part1 part2 "
    with pytest.raises(openai.RateLimitError):  # a 4xx passes through with its body
        sdk.chat.completions.create(model="auto", messages=MESSAGES, extra_headers={"x-fake-fault": "429"})
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES}, x_fake_fault="gpt-4o-mini=500")
    assert resp.status_code == 200 and resp.headers["x-router-model"] == "gpt-4o"  # a fallback that worked
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES, "response_format": {"type": "json_object"}},
                 x_fake_fault="gpt-4o-mini=invalid_json")
    assert resp.status_code == 200 and resp.headers["x-router-escalated"] == "json"
    assert resp.headers["x-router-model"] == "gpt-4o" and json.loads(resp.json()["choices"][0]["message"]["content"])
    listing = httpx.get(f"{route_gw.url}/v1/models").json()
    assert {m["id"] for m in listing["data"]} >= {"gpt-4o", "gpt-4o-mini", "auto"}
    assert httpx.get(f"{route_gw.url}/readyz").json()["status"] == "ready"


def test_a_client_leaving_a_stream_still_closes_the_upstream(route_gw, upstream):
    tid = _tid()
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    headers = {"x-test-id": tid, "x-fake-chunks": "100", "x-fake-chunk-delay": "0.05", "content-type": "application/json"}
    with httpx.stream("POST", f"{route_gw.url}/v1/chat/completions", json=body, headers=headers, timeout=20) as resp:
        for _ in resp.iter_raw():
            break
    assert wait_for(lambda: tid in upstream.streams_cut)
