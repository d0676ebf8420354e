"""Responses API conversations keep their model (router_model/gateway/responses.py + affinity.py),
through the gateway with the official `openai` SDK, streamed and not.

- A turn whose input ends in `function_call_output` items goes to the model that made the
  `function_call`, found from the conversation the input carries (no header).
- A request with `previous_response_id` finds the model that gave that response: always for a turn
  of function results (`affinity:tool-loop`), for a new user turn in "session" mode
  (`affinity:session`); in the default mode a new user turn is decided afresh.

As in test_gateway_affinity.py, the first turn's cheap call fails (the upstream's per-model 500
fault) so the strong model answers it, and the next turns, which a fresh decision sends to the
cheap model ("Translate ..."), must stay on the strong one.
"""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest
from gateway_harness import running_gateway
from gateway_upstream import wait_for

from router_model.gateway.affinity import REASON_SESSION, REASON_TOOL_LOOP, conversation_key
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.responses import ResponsesStreamAnswer, response_key, responses_messages, responses_turn

EASY = "Translate this sentence into French."
TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "description": "Weather",
                     "parameters": {"type": "object", "properties": {}}}]


def _tid() -> str:
    return uuid.uuid4().hex[:12]


def _gateway(upstream, router, tmp_path_factory, **kw):
    log = tmp_path_factory.mktemp("responses-affinity") / "decisions.jsonl"
    config = GatewayConfig(upstream=Upstream(upstream.url), decision_log=log, **{"mode": "route", **kw})
    return running_gateway(config, router)


@pytest.fixture(scope="module")
def gw(upstream, router, tmp_path_factory):
    with _gateway(upstream, router, tmp_path_factory) as running:
        yield running


def _record(gw, request_id: str) -> dict:
    assert wait_for(lambda: gw.records(request_id)), "no decision-log record"
    return gw.records(request_id)[0]


def _create(gw, tid: str, request_id: str, *, stream: bool, fault: str | None = None, **kw: Any) -> Any:
    """One `responses.create` through the gateway; the finished response (a stream's from `response.completed`)."""
    headers = {"x-test-id": tid, "x-request-id": request_id, **({"x-fake-fault": fault} if fault else {})}
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-caller", max_retries=0, default_headers=headers)
    if not stream:
        return client.responses.create(model="auto", **kw)
    with client.responses.create(model="auto", stream=True, **kw) as events:
        done = [e.response for e in events if e.type == "response.completed"]
    assert len(done) == 1
    return done[0]


def _call(response: Any) -> Any:
    (call,) = [item for item in response.output if item.type == "function_call"]
    return call


def _output(call: Any, text: str) -> dict:
    return {"type": "function_call_output", "call_id": call.call_id, "output": text}


def _remembered(gw, before: int) -> None:
    """The gateway records an answer once it (or its stream) has ended: wait for it."""
    store = gw.gateway.affinity.store
    assert wait_for(lambda: len(store) > before)


# ---------------------------------------------------------------- the pieces


def test_the_stream_reader_rebuilds_what_the_json_answer_gives() -> None:
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "w", "arguments": "{}", "status": "completed"}
    text = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]}
    whole = {"id": "resp_1", "output": [text, call]}
    reader = ResponsesStreamAnswer()
    for event in ({"type": "response.created", "response": {"id": "resp_1", "output": []}},
                  {"type": "response.output_item.done", "output_index": 0, "item": text},
                  {"type": "response.output_item.done", "output_index": 1, "item": call}):
        reader.feed(event)
    rebuilt = reader.answer()  # no response.completed: the finished items
    assert rebuilt is not None and response_key(rebuilt) == response_key(whole) == "response:resp_1"
    assert conversation_key(responses_turn(rebuilt) or []) == conversation_key(responses_turn(whole) or [])
    # the answer's items, sent back as the next input, hash as the turn the gateway remembered
    ask = {"role": "user", "content": "Weather?"}
    sent_back = responses_messages({"input": [ask, {**text, "content": [{"type": "output_text", "text": "Let me look."}]},
                                              {k: v for k, v in call.items() if k != "status"}]})
    assert conversation_key(sent_back) == conversation_key([*responses_messages({"input": [ask]}), *(responses_turn(whole) or [])])
    assert responses_turn({"id": "resp_2", "output": [text]}) is None


# ---------------------------------------------------------------- through the gateway


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_function_call_output_goes_to_the_model_that_made_the_call(gw, router, upstream, stream: bool) -> None:
    cheap, strong = router.cheap_model, router.strong_model
    tid = _tid()
    items: list[Any] = [{"role": "user", "content": f"{EASY} {tid}"}]  # a conversation of its own
    records = []
    for turn in range(3):  # turn 0: the cheap call fails, the strong model makes the function call
        before = len(gw.gateway.affinity.store)
        response = _create(gw, tid, f"{tid}-{turn}", stream=stream, input=items, instructions="Use the tools.",
                           fault=f"{cheap}=500" if turn == 0 else None, **({"tools": TOOLS} if turn < 2 else {}))
        records.append(_record(gw, f"{tid}-{turn}"))
        if turn < 2:
            _remembered(gw, before)
            items += [item.model_dump(exclude_none=True) for item in response.output]
            items.append(_output(_call(response), f"{18 + turn} C"))
    assert response.output_text == f"answer from {strong}"
    # a fresh decision on the function-result turns picks the cheap model; they stay on the strong one
    assert router.predict(responses_messages({"input": items, "instructions": "Use the tools."})).model == cheap
    assert [r["served_model"] for r in records] == [strong] * 3
    assert records[0]["fallback"] == "status_500" and records[0]["reason"] != REASON_TOOL_LOOP
    assert [r["reason"] for r in records][1:] == [REASON_TOOL_LOOP] * 2
    assert [r["fresh_model"] for r in records][1:] == [cheap] * 2
    assert all(r["endpoint"] == "responses" and r["stream"] is stream for r in records)
    assert [r.body["model"] for r in upstream.for_test(tid)] == [cheap, strong, strong, strong]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_previous_response_id_finds_the_model_that_gave_it(gw, router, upstream, stream: bool) -> None:
    cheap, strong = router.cheap_model, router.strong_model
    tid = _tid()
    before = len(gw.gateway.affinity.store)
    first = _create(gw, tid, f"{tid}-0", stream=stream, input=f"{EASY} {tid}", tools=TOOLS, fault=f"{cheap}=500")
    _remembered(gw, before)
    assert first.model.startswith(strong)
    # only the function's result, the rest of the conversation kept upstream
    results = [_output(_call(first), "18 C")]
    assert router.predict(responses_messages({"input": results})).model == cheap  # what a fresh decision says
    second = _create(gw, tid, f"{tid}-1", stream=stream, input=results, previous_response_id=first.id)
    rec = _record(gw, f"{tid}-1")
    assert rec["reason"] == REASON_TOOL_LOOP and rec["served_model"] == strong and rec["model"] == strong
    assert second.output_text == f"answer from {strong}"
    # a new user turn is decided afresh in the default ("tool-loop") mode: the cheap model
    _create(gw, tid, f"{tid}-2", stream=stream, input=EASY, previous_response_id=second.id)
    rec = _record(gw, f"{tid}-2")
    assert rec["served_model"] == cheap and rec["reason"] not in (REASON_TOOL_LOOP, REASON_SESSION)
    assert [r.body["model"] for r in upstream.for_test(tid)] == [cheap, strong, strong, cheap]
    assert all(r.body.get("previous_response_id") for r in upstream.for_test(tid)[2:])  # forwarded untouched


def test_session_mode_keeps_a_previous_response_ids_model_for_new_user_turns(upstream, router, tmp_path_factory) -> None:
    cheap, strong = router.cheap_model, router.strong_model
    with _gateway(upstream, router, tmp_path_factory, affinity="session") as gw:
        tid = _tid()
        first = _create(gw, tid, f"{tid}-0", stream=False, input=EASY, fault=f"{cheap}=500")
        assert first.model.startswith(strong)
        assert wait_for(lambda: gw.gateway.affinity.lookup(f"response:{first.id}") == strong)
        second = _create(gw, tid, f"{tid}-1", stream=True, input=EASY, previous_response_id=first.id)
        rec = _record(gw, f"{tid}-1")
        assert rec["reason"] == REASON_SESSION and rec["served_model"] == strong and rec["fresh_model"] == cheap
        # the streamed answer's id (from its events) continues the chain
        assert wait_for(lambda: gw.gateway.affinity.lookup(f"response:{second.id}") == strong)
        _create(gw, tid, f"{tid}-2", stream=False, input=EASY, previous_response_id=second.id)
        assert _record(gw, f"{tid}-2")["reason"] == REASON_SESSION
        _create(gw, tid, f"{tid}-3", stream=False, input=EASY, previous_response_id="resp_unknown")
        assert _record(gw, f"{tid}-3")["served_model"] == cheap  # an id the gateway never saw: decided afresh
        assert gw.metric("router_gateway_affinity_hits_total", kind="session") >= 2


def test_observe_mode_logs_the_kept_model(upstream, router, tmp_path_factory) -> None:
    strong = router.strong_model
    with _gateway(upstream, router, tmp_path_factory, mode="observe") as gw:
        tid = _tid()
        before = len(gw.gateway.affinity.store)
        first = _create(gw, tid, f"{tid}-0", stream=True, input="Prove the theorem.", tools=TOOLS)
        _remembered(gw, before)
        assert _record(gw, f"{tid}-0")["model"] == strong
        items = [{"role": "user", "content": "Prove the theorem."},
                 *[item.model_dump(exclude_none=True) for item in first.output], _output(_call(first), "done")]
        _create(gw, tid, f"{tid}-1", stream=False, input=items)
        rec = _record(gw, f"{tid}-1")
        assert rec["mode"] == "observe" and rec["reason"] == REASON_TOOL_LOOP and rec["model"] == strong
        assert [r.body["model"] for r in upstream.for_test(tid)] == [strong, strong]  # observe: `auto` -> strong


def test_an_unreadable_function_result_still_goes_back_to_its_model(gw, router, upstream) -> None:
    """Only an empty function output: nothing the router can read (alone it would be `unroutable`),
    yet the turn goes to the model that made the call."""
    cheap, strong = router.cheap_model, router.strong_model
    tid = _tid()
    before = len(gw.gateway.affinity.store)
    first = _create(gw, tid, f"{tid}-0", stream=False, input=f"{EASY} {tid}", tools=TOOLS, fault=f"{cheap}=500")
    _remembered(gw, before)
    _create(gw, tid, f"{tid}-1", stream=False, input=[_output(_call(first), "")], previous_response_id=first.id)
    rec = _record(gw, f"{tid}-1")
    assert rec["reason"] == REASON_TOOL_LOOP and rec["served_model"] == strong and rec["p_cheap_ok"] is None
    _create(gw, tid, f"{tid}-2", stream=False, input=[_output(_call(first), "")])  # no previous_response_id
    assert gw.records(f"{tid}-2") == []  # unroutable: forwarded undecided, not logged
    assert [r.body["model"] for r in upstream.for_test(tid)] == [cheap, strong, strong, strong]
