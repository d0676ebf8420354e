"""The Responses API through the gateway, end to end: the toy router, real uvicorn servers, the `openai` SDK.

The upstream (tests/gateway_upstream.py) speaks the Responses API: JSON answers and typed SSE
events (`response.created`, `response.output_text.delta`, `response.completed` with `usage`).
The toy router (tests/toy_artifact.py) sends "Translate ..." to the cheap model and "Prove the
theorem." to the strong one. Nothing is mocked.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from gateway_upstream import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, SNAPSHOT_SUFFIX, wait_for

from router_model.answer_checks import Checks, failed_response_check
from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.relay import UsageScanner
from router_model.gateway.responses import responses_messages, responses_stream_usage
from router_model.gateway.server import ServerThread

CHEAP = "Translate this sentence into French."
STRONG = "Prove the theorem."
USAGE = Usage(PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS)
PRICES = PriceTable.load()


def _tid() -> str:
    return uuid.uuid4().hex[:12]


class _Gw:
    def __init__(self, config: GatewayConfig, router) -> None:
        self.server = ServerThread(create_app(config, router=router)).start()
        self.url = self.server.url
        self.log = config.decision_log

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0)

    def record(self, request_id: str) -> dict:
        assert self.log is not None
        found: list[dict] = []

        def seen() -> bool:
            lines = Path(self.log).read_text().splitlines() if Path(self.log).exists() else []
            found[:] = [r for r in map(json.loads, lines) if r["request_id"] == request_id]
            return bool(found)

        assert wait_for(seen, timeout=5), f"no decision-log record for {request_id}"
        (rec,) = found
        return rec


def _gateway(upstream, router, tmp_path_factory, mode: str):
    config = GatewayConfig(upstream=Upstream(upstream.url), mode=mode,
                           decision_log=tmp_path_factory.mktemp(f"resp-{mode}") / "decisions.jsonl")
    gw = _Gw(config, router)
    yield gw
    gw.server.stop()


@pytest.fixture(scope="module")
def route_gw(upstream, toy_router, tmp_path_factory):
    yield from _gateway(upstream, toy_router, tmp_path_factory, "route")


@pytest.fixture(scope="module")
def observe_gw(upstream, toy_router, tmp_path_factory):
    yield from _gateway(upstream, toy_router, tmp_path_factory, "observe")


def _headers(tid: str, **extra: str) -> dict[str, str]:
    return {"x-test-id": tid, "x-request-id": tid, **{k.replace("_", "-"): v for k, v in extra.items()}}


def _cost(model: str) -> float:
    cost = usage_cost(PRICES, model, USAGE)
    assert cost is not None
    return cost


# ---------------------------------------------------------------- routed, not streamed


def test_a_cheap_request_is_routed_with_only_model_replaced(route_gw, upstream, toy_router):
    tid = _tid()
    raw = route_gw.sdk().responses.with_raw_response.create(
        model=toy_router.strong_model, input=CHEAP, instructions="Be brief.", temperature=0.25,
        metadata={"team": "search"}, extra_headers=_headers(tid), extra_body={"vendor_field": {"x": [1, None]}},
    )
    response = raw.parse()
    (got,) = upstream.for_test(tid)
    assert got.path == "/v1/responses"
    sent = {"model": toy_router.strong_model, "input": CHEAP, "instructions": "Be brief.", "temperature": 0.25,
            "metadata": {"team": "search"}, "vendor_field": {"x": [1, None]}}
    assert got.body == {**sent, "model": toy_router.cheap_model}
    assert got.headers["authorization"] == "Bearer sk-caller"
    assert not any(k.startswith("x-router-") for k in got.headers)
    assert response.output_text == f"answer from {toy_router.cheap_model}"
    assert response.model == toy_router.cheap_model + SNAPSHOT_SUFFIX
    assert raw.headers["x-router-model"] == toy_router.cheap_model
    assert raw.headers["x-router-decision"] == toy_router.cheap_model
    assert raw.headers["x-router-reason"] == "classifier"
    assert raw.headers["x-request-id"] == "upstream-resp-1"  # the upstream's headers come back

    rec = route_gw.record(tid)
    assert rec["endpoint"] == "responses" and rec["mode"] == "route" and rec["source"] == "gateway"
    assert rec["model"] == rec["served_model"] == toy_router.cheap_model
    assert rec["requested_model"] == toy_router.strong_model
    assert rec["upstream_model"] == toy_router.cheap_model + SNAPSHOT_SUFFIX
    assert rec["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "cached_tokens": CACHED_TOKENS}
    assert rec["cost_usd"] == pytest.approx(_cost(toy_router.cheap_model))
    assert rec["baseline_cost_usd"] == pytest.approx(_cost(toy_router.strong_model))
    assert rec["saved_usd"] == pytest.approx(_cost(toy_router.strong_model) - _cost(toy_router.cheap_model))
    assert rec["stream"] is False and rec["status"] == 200


def test_message_items_are_decided_on_the_latest_user_text(route_gw, upstream, toy_router):
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": CHEAP}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Voila."}]},
        {"role": "user", "content": [{"type": "input_text", "text": STRONG}]},
    ]
    decision = toy_router.predict(responses_messages({"input": items}))
    assert decision.model == toy_router.strong_model  # the last user turn decides, as for chat
    tid = _tid()
    raw = route_gw.sdk().responses.with_raw_response.create(model="auto", input=items, extra_headers=_headers(tid))
    (got,) = upstream.for_test(tid)
    assert got.body["model"] == toy_router.strong_model and got.body["input"] == items
    assert raw.headers["x-router-model"] == toy_router.strong_model
    assert route_gw.record(tid)["endpoint"] == "responses"


def test_the_strong_model_asked_and_decided_gets_the_clients_bytes(route_gw, upstream, toy_router):
    body = b'{"model": "gpt-4o",   "input": "Prove the theorem.", "store": false}'
    tid = _tid()
    resp = httpx.post(f"{route_gw.url}/responses", content=body, headers={"content-type": "application/json", **_headers(tid)})
    assert resp.status_code == 200, resp.text
    (got,) = upstream.for_test(tid)
    assert got.raw == body
    assert resp.headers["x-router-model"] == toy_router.strong_model


def test_tags_and_unroutable_and_passthrough_models(route_gw, upstream, toy_router):
    client = route_gw.sdk()
    tid = _tid()
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=CHEAP, extra_headers=_headers(tid, x_router_tags="high-accuracy"))
    assert raw.headers["x-router-model"] == toy_router.strong_model and raw.headers["x-router-reason"] == "tag:high-accuracy"
    tid = _tid()
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=CHEAP, metadata={"router_tags": "high-accuracy"},
                                                    extra_headers=_headers(tid))
    assert raw.headers["x-router-reason"] == "tag:high-accuracy"
    tid = _tid()  # nothing the router can read: forwarded unrouted
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=[{"type": "item_reference", "id": "msg_1"}],
                                                    extra_headers=_headers(tid))
    assert raw.headers["x-router-reason"] == "unroutable" and raw.headers["x-router-model"] == "gpt-4o"
    tid = _tid()
    raw = client.responses.with_raw_response.create(model="gpt-4.1-nano", input=CHEAP, extra_headers=_headers(tid))
    assert raw.headers["x-router-reason"] == "passthrough"
    assert upstream.for_test(tid)[0].body["model"] == "gpt-4.1-nano"


def test_bad_bodies_get_400(route_gw):
    for body, param in (({"input": "x"}, "model"), ({"model": "gpt-4o", "input": 3}, "input"),
                        ({"model": "gpt-4o", "input": "x", "instructions": ["a"]}, "instructions"),
                        ({"model": "gpt-4o", "input": "x", "stream": "yes"}, "stream")):
        resp = httpx.post(f"{route_gw.url}/v1/responses", json=body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param


@pytest.mark.parametrize("fault", ["length", "refusal", "empty"])
def test_a_failed_cheap_answer_is_escalated(route_gw, upstream, toy_router, fault):
    tid = _tid()
    raw = route_gw.sdk().responses.with_raw_response.create(
        model="gpt-4o", input=CHEAP, extra_headers=_headers(tid, x_fake_fault=f"{toy_router.cheap_model}={fault}"),
    )
    assert raw.headers["x-router-escalated"] == fault
    assert raw.headers["x-router-model"] == toy_router.strong_model
    assert raw.parse().output_text == f"answer from {toy_router.strong_model}"
    assert [r.body["model"] for r in upstream.for_test(tid)] == [toy_router.cheap_model, toy_router.strong_model]
    rec = route_gw.record(tid)
    assert rec["escalated"] == fault and len(rec["attempts"]) == 2
    assert rec["cost_usd"] == pytest.approx(_cost(toy_router.cheap_model) + _cost(toy_router.strong_model))


def test_a_failing_cheap_model_falls_back_to_the_strong_one(route_gw, upstream, toy_router):
    tid = _tid()
    raw = route_gw.sdk().responses.with_raw_response.create(
        model="gpt-4o", input=CHEAP, extra_headers=_headers(tid, x_fake_fault=f"{toy_router.cheap_model}=500"),
    )
    assert raw.headers["x-router-fallback"] == "status_500" and raw.headers["x-router-model"] == toy_router.strong_model


def test_an_upstream_429_passes_through(route_gw):
    with pytest.raises(openai.RateLimitError):
        route_gw.sdk().responses.create(model="gpt-4o", input=STRONG, extra_headers=_headers(_tid(), x_fake_fault="429"))


# ---------------------------------------------------------------- streamed


def test_a_stream_relays_the_typed_events_and_is_costed_from_response_completed(route_gw, upstream, toy_router):
    tid = _tid()
    stream = route_gw.sdk().responses.create(model="gpt-4o", input=CHEAP, stream=True, extra_headers=_headers(tid, x_fake_chunks="4"))
    events = list(stream)
    assert [e.type for e in events] == ["response.created"] + ["response.output_text.delta"] * 4 + ["response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "part0 part1 part2 part3 "
    assert events[-1].response.usage.input_tokens == PROMPT_TOKENS
    (got,) = upstream.for_test(tid)
    assert got.body["model"] == toy_router.cheap_model and got.body["stream"] is True
    rec = route_gw.record(tid)
    assert rec["stream"] is True and rec["completed"] is True and rec["endpoint"] == "responses"
    assert rec["served_model"] == toy_router.cheap_model
    assert rec["upstream_model"] == toy_router.cheap_model + SNAPSHOT_SUFFIX
    assert rec["usage"]["cached_tokens"] == CACHED_TOKENS
    assert rec["cost_usd"] == pytest.approx(_cost(toy_router.cheap_model))


def test_stream_bytes_are_the_upstreams(route_gw, upstream):
    body = {"model": "gpt-4.1-nano", "input": "hi", "stream": True}
    via = httpx.post(f"{route_gw.url}/v1/responses", json=body, headers=_headers(_tid()))
    direct = httpx.post(f"{upstream.url}/responses", json=body, headers=_headers(_tid()))
    strip = [line for line in via.content.split(b"\n") if b"created_at" not in line]
    assert strip == [line for line in direct.content.split(b"\n") if b"created_at" not in line]
    assert via.headers["content-type"].startswith("text/event-stream")


# ---------------------------------------------------------------- observe mode, metrics


def test_observe_mode_forwards_what_was_asked_and_logs_the_decision(observe_gw, upstream, toy_router):
    client = observe_gw.sdk()
    tid = _tid()
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=CHEAP, extra_headers=_headers(tid))
    assert upstream.for_test(tid)[0].body["model"] == toy_router.strong_model
    assert raw.headers["x-router-model"] == toy_router.strong_model
    assert raw.headers["x-router-decision"] == toy_router.cheap_model
    rec = observe_gw.record(tid)
    assert rec["mode"] == "observe" and rec["saved_is_estimate"] is True and rec["model"] == toy_router.cheap_model
    assert rec["saved_usd"] == pytest.approx(_cost(toy_router.strong_model) - _cost(toy_router.cheap_model))
    tid = _tid()
    events = list(client.responses.create(model="auto", input=CHEAP, stream=True, extra_headers=_headers(tid)))
    assert events[-1].type == "response.completed"
    rec = observe_gw.record(tid)
    assert rec["stream"] is True and rec["served_model"] == toy_router.strong_model
    assert rec["cost_usd"] == pytest.approx(_cost(toy_router.strong_model))
    metrics = httpx.get(f"{observe_gw.url}/metrics").text
    assert 'router_gateway_requests_total{endpoint="responses",status="200"} 2.0' in metrics
    assert 'router_gateway_request_duration_seconds_count{endpoint="responses",stream="true"} 1.0' in metrics


# ---------------------------------------------------------------- the pieces


def test_responses_messages_reads_every_input_shape():
    assert responses_messages({"input": "hi", "instructions": "Be brief."}) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    items = [
        {"type": "message", "role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "input_text", "text": "Look:"}, {"type": "input_image", "image_url": "https://x/y.png"},
                                     {"type": "input_file", "file_id": "file-1"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    assert responses_messages({"input": items}) == [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "input_image"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert responses_messages({}) == []


def test_usage_from_the_responses_shape_and_the_stream_scanner():
    usage = {"input_tokens": 100, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 40}}
    assert Usage.from_responses_usage(usage) == Usage(100, 7, 40)
    assert Usage.from_responses_usage({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 9}}) == Usage(5, 0, 5)
    assert Usage.from_responses_usage(None) is None
    scanner = UsageScanner(responses_stream_usage)
    created = {"type": "response.created", "response": {"model": "m-1", "usage": None}}
    done = {"type": "response.completed", "response": {"model": "m-1", "usage": usage}}
    stream = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in (created, done))
    for i in range(0, len(stream), 7):  # split anywhere
        scanner.feed(stream[i:i + 7])
    assert scanner.model == "m-1" and scanner.usage == Usage(100, 7, 40)


def test_the_responses_answer_checks():
    checks = Checks()

    def answer(*content: dict, status: str = "completed", **extra) -> dict:
        return {"status": status, "output": [{"type": "message", "role": "assistant", "content": list(content)}], **extra}

    ok = {"type": "output_text", "text": "Fine."}
    assert failed_response_check({}, answer(ok), checks) is None
    assert failed_response_check({}, answer(ok, status="incomplete", incomplete_details={"reason": "max_output_tokens"}), checks) == "length"
    assert failed_response_check({}, answer({"type": "refusal", "refusal": "No."}), checks) == "refusal"
    assert failed_response_check({}, answer({"type": "output_text", "text": "I'm sorry, but I can't do that."}), checks) == "refusal"
    assert failed_response_check({}, answer({"type": "output_text", "text": " "}), checks) == "empty"
    assert failed_response_check({}, {"status": "completed", "output": []}, checks) == "empty"
    call = {"status": "completed", "output": [{"type": "function_call", "name": "f", "arguments": '{"a": '}]}
    assert failed_response_check({}, call, checks) == "tool_arguments"
    assert failed_response_check({}, {"status": "completed", "output": [{"type": "web_search_call", "id": "ws"}]}, checks) is None
    schema = {"text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object", "required": ["a"]}}}}
    assert failed_response_check(schema, answer({"type": "output_text", "text": "{oops"}), checks) == "json"
    assert failed_response_check(schema, answer({"type": "output_text", "text": "{}"}), checks) == "json_schema"
    assert failed_response_check(schema, answer({"type": "output_text", "text": '{"a": 1}'}), checks) is None
    assert failed_response_check({}, answer({"type": "output_text", "text": ""}), Checks(empty=False)) is None
