"""Conversations keep their model (router_model/gateway/affinity.py): the store, the keys, and tool
loops of several turns through the gateway with the official `openai` and `anthropic` SDKs.

The case the issue demands: a tool-result turn whose fresh decision would pick the other model
still goes to the model that made the tool call. The toy routers send "Translate ..." to the
cheap model; the first turn's cheap call is made to fail (the upstream's per-model 500 fault), so
the strong model answers it with the tool call, and the next turn (no fault), which a fresh
decision sends cheap, must go to the strong model.
"""

from __future__ import annotations

import uuid

import anthropic
import openai
import pytest
from gateway_harness import running_gateway
from gateway_upstream import wait_for
from toy_artifact import write_toy_pair

from router_model import Router
from router_model.gateway.affinity import (
    REASON_SESSION,
    REASON_TOOL_LOOP,
    Affinity,
    AffinityStore,
    conversation_key,
    tool_call_prefix,
)
from router_model.gateway.anthropic import MessagesStreamAnswer, messages_turn
from router_model.gateway.call import ChatStreamAnswer, chat_turn
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.errors import GatewayConfigError
from router_model.gateway.metrics import GatewayMetrics

EASY, HARD = "Translate this sentence into French.", "Prove the theorem."
CLAUDE_CHEAP, CLAUDE_STRONG = "claude-haiku-4-5", "claude-sonnet-4-5"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]


def _tid() -> str:
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- the store and the keys


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_store_expires_after_the_ttl_and_counts_it() -> None:
    metrics, clock = GatewayMetrics(), Clock()
    store = AffinityStore(ttl=10, max_entries=5, metrics=metrics, clock=clock)
    store.put("a", "m1")
    clock.now = 9.9
    assert store.get("a") == "m1"
    clock.now = 10.0
    assert store.get("a") is None and len(store) == 0
    assert _sample(metrics, "router_gateway_affinity_hits_total", kind="tool-loop") == 1
    assert _sample(metrics, "router_gateway_affinity_misses_total", kind="tool-loop") == 1
    assert _sample(metrics, "router_gateway_affinity_evictions_total", reason="expired") == 1


def test_store_evicts_the_least_recently_used_at_the_cap() -> None:
    metrics = GatewayMetrics()
    store = AffinityStore(ttl=60, max_entries=2, metrics=metrics)
    store.put("a", "m1")
    store.put("b", "m2")
    assert store.get("a", kind="session") == "m1"  # "a" is now the most recently used
    store.put("c", "m3")
    assert store.get("b") is None and store.get("a") == "m1" and store.get("c") == "m3" and len(store) == 2
    assert _sample(metrics, "router_gateway_affinity_evictions_total", reason="capacity") == 1
    assert _sample(metrics, "router_gateway_affinity_hits_total", kind="session") == 1


def test_conversation_key_survives_an_sdk_round_trip() -> None:
    ask = {"role": "user", "content": "Weather?"}
    answered = {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}
    sent_back = {"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function",
                                                     "function": {"name": "w", "arguments": "{}"}}]}
    assert conversation_key([ask, answered]) == conversation_key([ask, sent_back])
    other = {**sent_back, "tool_calls": [{"id": "call_10", "function": {"name": "w", "arguments": "{}"}}]}
    assert conversation_key([ask, other]) != conversation_key([ask, sent_back])
    result = {"role": "tool", "tool_call_id": "call_9", "content": "18 C"}
    assert tool_call_prefix([ask, sent_back, result, result]) == [ask, sent_back]
    assert tool_call_prefix([ask, sent_back]) is None


def test_stream_readers_rebuild_the_turn_the_json_answer_gives() -> None:
    chat = ChatStreamAnswer()
    for event in ({"choices": [{"delta": {"role": "assistant", "content": ""}}]},
                  {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "w"}}]}}]},
                  {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}, {}):
        chat.feed(event)
    json_answer = {"choices": [{"message": {"role": "assistant", "content": None,
                                            "tool_calls": [{"id": "call_1", "function": {"name": "w", "arguments": "{}"}}]}}]}
    rebuilt = chat.answer()
    assert rebuilt is not None
    assert conversation_key(chat_turn(rebuilt) or []) == conversation_key(chat_turn(json_answer) or [])

    claude = MessagesStreamAnswer()
    for event in ({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                  {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
                  {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}},
                  {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                                "name": "w", "input": {}}},
                  {"type": "message_stop"}):
        claude.feed(event)
    whole = {"content": [{"type": "text", "text": "Let me look.", "citations": None},
                         {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]}
    rebuilt = claude.answer()
    assert rebuilt is not None
    assert conversation_key(messages_turn(rebuilt) or []) == conversation_key(messages_turn(whole) or [])
    assert messages_turn({"content": [{"type": "text", "text": "no tools"}]}) is None


def test_session_key_header_then_body_fields() -> None:
    config = GatewayConfig(upstream=Upstream("http://127.0.0.1:9/v1"), affinity="session")
    aff = Affinity(config)
    assert aff.session_key({"x-router-session": "s1"}, {"user": "u1"}) == "session:s1"
    assert aff.session_key({}, {"user": "u1"}) == "session:u1"
    assert aff.session_key({}, {"metadata": {"user_id": "u2"}}) == "session:u2"
    assert aff.session_key({}, {"user": ""}) is None
    only_meta = Affinity(GatewayConfig(upstream=Upstream("http://127.0.0.1:9/v1"), affinity_session_field="metadata.user_id"))
    assert only_meta.session_key({}, {"user": "u1"}) is None


@pytest.mark.parametrize(("key", "value"), [("affinity", "sticky"), ("affinity_ttl_seconds", 0),
                                            ("affinity_max_entries", 0)])
def test_bad_affinity_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(GatewayConfigError) as exc:
        GatewayConfig(upstream=Upstream("http://127.0.0.1:9/v1"), **{key: value})
    assert exc.value.key == key


# ---------------------------------------------------------------- through the gateway


@pytest.fixture(scope="module")
def claude_router(tmp_path_factory) -> Router:
    path = tmp_path_factory.mktemp("claude-affinity") / "router"
    return Router.load(write_toy_pair(path, cheap=CLAUDE_CHEAP, strong=CLAUDE_STRONG))


def _gateway(upstream, router, tmp_path_factory, **kw):
    log = tmp_path_factory.mktemp("affinity") / "decisions.jsonl"
    config = GatewayConfig(upstream=Upstream(upstream.url), anthropic=Upstream(upstream.url), decision_log=log,
                           **{"mode": "route", **kw})
    return running_gateway(config, router)


@pytest.fixture(scope="module")
def chat_gw(upstream, router, tmp_path_factory):
    with _gateway(upstream, router, tmp_path_factory) as gw:
        yield gw


@pytest.fixture(scope="module")
def claude_gw(upstream, claude_router, tmp_path_factory):
    with _gateway(upstream, claude_router, tmp_path_factory) as gw:
        yield gw


def _openai(gw, test_id: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-caller", max_retries=0,
                         default_headers={"x-test-id": test_id, **headers})


def _anthropic(gw, test_id: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-caller", max_retries=0,
                               default_headers={"x-test-id": test_id, **headers})


def _chat_turn(gw, messages: list, tid: str, *, tools: bool = True, **headers: str):
    raw = _openai(gw, tid, **headers).chat.completions.with_raw_response.create(
        model="auto", messages=messages, **({"tools": TOOLS} if tools else {}))
    return raw.parse(), raw.headers


def _record(gw, request_id: str) -> dict:
    assert wait_for(lambda: gw.records(request_id)), "no decision-log record"
    return gw.records(request_id)[0]


def _tool_result(message, text: str) -> dict:
    return {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": text}


def test_chat_tool_loop_of_several_turns_stays_on_its_model(chat_gw, router, upstream) -> None:
    tid = _tid()
    messages: list = [{"role": "user", "content": EASY}]
    reasons, served = [], []
    for turn in range(3):
        answer, headers = _chat_turn(chat_gw, messages, tid)
        reasons.append(headers["x-router-reason"])
        served.append(headers["x-router-model"])
        message = answer.choices[0].message
        assert message.tool_calls, "the upstream answers a tool call while tools are offered"
        messages += [message, _tool_result(message, f"result {turn}")]
    final, headers = _chat_turn(chat_gw, messages, tid, tools=False)
    assert served == [router.cheap_model] * 3 and headers["x-router-model"] == router.cheap_model
    assert reasons[0] != REASON_TOOL_LOOP and reasons[1:] == [REASON_TOOL_LOOP] * 2
    assert headers["x-router-reason"] == REASON_TOOL_LOOP  # the last tool result's turn, answered in text
    assert final.choices[0].message.content == f"answer from {router.cheap_model}"
    assert [r.body["model"] for r in upstream.for_test(tid)] == [router.cheap_model] * 4


def test_chat_tool_result_goes_to_the_model_that_made_the_call_against_a_fresh_decision(chat_gw, router, upstream) -> None:
    cheap, strong = router.cheap_model, router.strong_model
    tid = _tid()
    messages: list = [{"role": "user", "content": EASY}]
    first, headers = _chat_turn(chat_gw, messages, tid, **{"x-fake-fault": f"{cheap}=500"})
    assert headers["x-router-model"] == strong and headers["x-router-fallback"] == "status_500"  # strong made the call
    messages += [first.choices[0].message.model_dump(exclude_none=True), _tool_result(first.choices[0].message, "18 C")]
    assert router.predict(messages).model == cheap  # what a fresh decision on this turn says
    second, headers = _chat_turn(chat_gw, messages, tid, tools=False)
    assert headers["x-router-model"] == strong and headers["x-router-reason"] == REASON_TOOL_LOOP
    assert headers["x-router-decision"] == strong
    assert second.choices[0].message.content == f"answer from {strong}"
    assert upstream.for_test(tid)[-1].body["model"] == strong
    rec = _record(chat_gw, headers["x-router-request-id"])
    assert rec["reason"] == REASON_TOOL_LOOP and rec["model"] == strong and rec["fresh_model"] == cheap
    assert chat_gw.metric("router_gateway_affinity_hits_total", kind="tool-loop") >= 1


def test_with_affinity_off_the_tool_result_is_decided_afresh(upstream, router, tmp_path_factory) -> None:
    with _gateway(upstream, router, tmp_path_factory, affinity="off") as gw:
        tid = _tid()
        messages: list = [{"role": "user", "content": EASY}]
        first, _ = _chat_turn(gw, messages, tid, **{"x-fake-fault": f"{router.cheap_model}=500"})
        messages += [first.choices[0].message, _tool_result(first.choices[0].message, "18 C")]
        _, headers = _chat_turn(gw, messages, tid, tools=False)
        assert headers["x-router-model"] == router.cheap_model and headers["x-router-reason"] != REASON_TOOL_LOOP


def test_session_mode_pins_a_session_to_its_first_turns_model(upstream, router, tmp_path_factory) -> None:
    with _gateway(upstream, router, tmp_path_factory, affinity="session") as gw:
        tid = _tid()
        _, first = _chat_turn(gw, [{"role": "user", "content": HARD}], tid, tools=False, **{"x-router-session": tid})
        _, second = _chat_turn(gw, [{"role": "user", "content": EASY}], tid, tools=False, **{"x-router-session": tid})
        assert first["x-router-model"] == second["x-router-model"] == router.strong_model
        assert first["x-router-reason"] != REASON_SESSION and second["x-router-reason"] == REASON_SESSION
        # the body's `user` field is a session key too; another session is decided afresh
        answer = _openai(gw, tid).chat.completions.with_raw_response.create(
            model="auto", user=f"{tid}-other", messages=[{"role": "user", "content": EASY}])
        assert answer.headers["x-router-model"] == router.cheap_model
        assert gw.metric("router_gateway_affinity_hits_total", kind="session") == 1


def test_observe_mode_records_the_kept_model_as_the_decision(upstream, router, tmp_path_factory) -> None:
    with _gateway(upstream, router, tmp_path_factory, mode="observe") as gw:
        tid = _tid()
        messages: list = [{"role": "user", "content": HARD}]
        first, headers = _chat_turn(gw, messages, tid)
        assert headers["x-router-decision"] == router.strong_model
        messages += [first.choices[0].message, _tool_result(first.choices[0].message, "done")]
        _, headers = _chat_turn(gw, messages, tid)
        assert headers["x-router-mode"] == "observe" and headers["x-router-reason"] == REASON_TOOL_LOOP
        rec = _record(gw, headers["x-router-request-id"])
        assert rec["reason"] == REASON_TOOL_LOOP and rec["model"] == router.strong_model


def _claude_result(message) -> dict:
    (use,) = [b for b in message.content if b.type == "tool_use"]
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                         "content": [{"type": "text", "text": "18 C"}]}]}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_tool_loop_keeps_the_tool_calling_model(claude_gw, claude_router, upstream, stream: bool) -> None:
    tid = _tid()
    messages: list = [{"role": "user", "content": f"{EASY} {tid}"}]  # a conversation of its own
    store = claude_gw.gateway.affinity.store
    records = []
    for turn in range(3):  # the first turn's cheap call fails: the strong model makes the tool call
        headers = {"x-request-id": f"{tid}-{turn}", **({"x-fake-fault": f"{CLAUDE_CHEAP}=500"} if turn == 0 else {})}
        client = _anthropic(claude_gw, tid, **headers)
        kw = {"model": "auto", "max_tokens": 64, "messages": messages, "system": "Use the tools.",
              **({"tools": CLAUDE_TOOLS} if turn < 2 else {})}
        remembered = len(store)
        if stream:
            with client.messages.stream(**kw) as events:
                message = events.get_final_message()
        else:
            message = client.messages.create(**kw)
        records.append(_record(claude_gw, f"{tid}-{turn}"))
        if turn < 2:  # the gateway remembers the tool call once the answer (or stream) has ended
            assert wait_for(lambda n=remembered: len(store) > n)
            blocks = [b.model_dump(exclude_none=True) for b in message.content]
            messages += [{"role": "assistant", "content": blocks}, _claude_result(message)]
    # a fresh decision on the tool-result turns picks the cheap model; they stay on the strong one
    assert claude_router.predict([{"role": "system", "content": "Use the tools."}, *messages]).model == CLAUDE_CHEAP
    assert [r["served_model"] for r in records] == [CLAUDE_STRONG] * 3
    assert [r["reason"] for r in records][1:] == [REASON_TOOL_LOOP] * 2
    assert records[0]["fallback"] == "status_500" and records[2]["fresh_model"] == CLAUDE_CHEAP
    assert [r.body["model"] for r in upstream.for_test(tid)] == [CLAUDE_CHEAP, CLAUDE_STRONG, CLAUDE_STRONG, CLAUDE_STRONG]
    assert all(r["stream"] is stream and r["endpoint"] == "messages" for r in records)
