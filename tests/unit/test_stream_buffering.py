"""--buffer-streams: a streamed cheap answer is read ahead, scored and replayed or escalated (issue 26).

The router is the toy pair with the toy answer score (tests/toy_artifact.py `write_toy_pair(answer_threshold=0.5)`):
"Translate this sentence into French." routes cheap (p_cheap_ok 0.80); the score is 0.88 for an answer that
states no final answer and 0.12 for one that does ("The answer is (B)."), so at 0.5 the first is escalated
and the second kept. The local upstream (below) streams server-sent events for chat completions, the
Responses API and Anthropic Messages: the cheap model answers the text of the request's `x-fake-answer`
header, the strong model STRONG_ANSWER; `x-fake-fault` makes the strong model answer 500 (`strong500`), the
cheap stream break off mid-way (`cut`: the connection closed without the chunked body's end, no [DONE]) or
the cheap answer a tool call (`tools`). Real gateway and upstream servers, real HTTP, nothing mocked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from answer_gateway import CHEAP, CHEAP_PROMPT, NO_FINAL, STRONG, STRONG_ANSWER, USAGE, WITH_FINAL, Gw, gateway
from gateway_upstream import serve_upstream, wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from toy_artifact import toy_answer_score, write_toy_pair

from router_model.gateway import routed
from router_model.gateway.cli import build_parser
from router_model.gateway.config import GatewayConfig, Upstream, load_config
from router_model.gateway.routed import CHECK_ANSWER_SCORE
from router_model.router import Router

# ---------------------------------------------------------------- the local upstream


class CutError(Exception):
    """Raised inside a streamed body: uvicorn closes the connection without the chunked body's end."""


def _data(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj).encode() + b"\n\n"


class StreamUpstream:
    """Chat completions, Responses and Messages, streamed; records the models asked per x-test-id."""

    def __init__(self) -> None:
        self.asked: dict[str, list[str]] = {}

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
        ])

    async def _read(self, request: Request) -> tuple[dict[str, Any], str, str, Response | None]:
        body = json.loads(await request.body())
        model = body["model"]
        self.asked.setdefault(request.headers.get("x-test-id", ""), []).append(model)
        fault = request.headers.get("x-fake-fault", "")
        text = STRONG_ANSWER if model == STRONG else request.headers.get("x-fake-answer", NO_FINAL)
        failed = None
        if model == STRONG and fault == "strong500":
            failed = JSONResponse({"error": {"message": "the strong model is down", "type": "server_error"}},
                                  status_code=500)
        return body, text, fault if model == CHEAP else "", failed

    async def chat(self, request: Request) -> Response:
        body, text, fault, failed = await self._read(request)
        if failed is not None:
            return failed
        assert body.get("stream")
        return StreamingResponse(self._chat_events(body["model"], text, fault), media_type="text/event-stream",
                                 headers={"x-upstream": body["model"]})

    async def _chat_events(self, model: str, text: str, fault: str) -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": model}
        if fault == "tools":
            call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            yield _data({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]})
            yield _data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
            yield b"data: [DONE]\n\n"
            return
        for piece in (text[:5], text[5:]):
            yield _data({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
            if fault == "cut":
                raise CutError("the upstream breaks the stream off")
        yield _data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield _data({**base, "choices": [], "usage": USAGE})
        yield b"data: [DONE]\n\n"

    async def responses(self, request: Request) -> Response:
        body, text, fault, failed = await self._read(request)
        if failed is not None:
            return failed
        return StreamingResponse(self._response_events(body["model"], text), media_type="text/event-stream")

    async def _response_events(self, model: str, text: str) -> AsyncIterator[bytes]:
        rid = f"resp_{uuid.uuid4().hex[:8]}"
        response = {"id": rid, "object": "response", "model": model, "status": "in_progress", "output": []}
        yield _data({"type": "response.created", "response": response}, "response.created")
        for piece in (text[:5], text[5:]):
            yield _data({"type": "response.output_text.delta", "item_id": "msg_x", "output_index": 0,
                         "content_index": 0, "delta": piece}, "response.output_text.delta")
        item = {"type": "message", "id": "msg_x", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        done = {**response, "status": "completed", "output": [item],
                "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}}
        yield _data({"type": "response.completed", "response": done}, "response.completed")

    async def messages(self, request: Request) -> Response:
        body, text, fault, failed = await self._read(request)
        if failed is not None:
            return failed
        return StreamingResponse(self._message_events(body["model"], text), media_type="text/event-stream")

    async def _message_events(self, model: str, text: str) -> AsyncIterator[bytes]:
        message = {"id": "msg_x", "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
        yield _data({"type": "message_start", "message": message}, "message_start")
        yield _data({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                    "content_block_start")
        for piece in (text[:5], text[5:]):
            yield _data({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                        "content_block_delta")
        yield _data({"type": "content_block_stop", "index": 0}, "content_block_stop")
        yield _data({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}},
                    "message_delta")
        yield _data({"type": "message_stop"}, "message_stop")


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamUpstream]:
    with serve_upstream(StreamUpstream(), log_level="critical") as fake:
        yield fake


# ---------------------------------------------------------------- the artifact and the gateways


@pytest.fixture(scope="module")
def score_router(tmp_path_factory: pytest.TempPathFactory) -> Router:
    return Router.load(write_toy_pair(tmp_path_factory.mktemp("toy-score") / "router", answer_threshold=0.5))


@pytest.fixture(scope="module")
def buffer_gw(upstream, score_router, tmp_path_factory) -> Iterator[Gw]:
    yield from gateway(upstream.url, score_router, tmp_path_factory.mktemp("gw-buffer") / "d.jsonl", buffer_streams=True)


@pytest.fixture(scope="module")
def plain_gw(upstream, score_router, tmp_path_factory) -> Iterator[Gw]:
    yield from gateway(upstream.url, score_router, tmp_path_factory.mktemp("gw-plain") / "d.jsonl")


CHAT_BODY: dict[str, Any] = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": CHEAP_PROMPT}]}


def _chat_text(raw: bytes) -> str:
    """The content of a chat completion's SSE chunks."""
    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices") or ():
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


def _escalations(gw: Gw) -> float:
    return gw.metric("router_gateway_escalations_total", check=CHECK_ANSWER_SCORE)


def _scored(gw: Gw) -> float:
    return gw.metric("router_gateway_answer_score_count", mode="route")


# ---------------------------------------------------------------- (a) off by default


def test_off_by_default_a_stream_is_relayed_unscored(plain_gw: Gw, upstream: StreamUpstream) -> None:
    assert GatewayConfig(upstream=Upstream("http://up/v1")).buffer_streams is False
    tid = uuid.uuid4().hex
    scored = _scored(plain_gw)
    resp, raw, broken = plain_gw.stream("/v1/chat/completions", CHAT_BODY, plain_gw.headers(tid, NO_FINAL))
    assert resp.status_code == 200 and not broken
    assert _chat_text(raw) == NO_FINAL and "x-router-escalated" not in resp.headers
    assert upstream.asked[tid] == [CHEAP]
    rec = plain_gw.record(tid)
    assert rec["stream"] is True and rec["escalated"] is None and "answer_score" not in rec
    assert _scored(plain_gw) == scored


# ---------------------------------------------------------------- (b) kept: replayed unchanged


def test_a_kept_cheap_stream_reaches_the_openai_sdk_unchanged(buffer_gw: Gw, upstream: StreamUpstream) -> None:
    tid = uuid.uuid4().hex
    before, scored = _escalations(buffer_gw), _scored(buffer_gw)
    client = openai.OpenAI(base_url=buffer_gw.url + "/v1", api_key="sk-x", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": CHEAP_PROMPT}], stream=True,
        extra_headers={"x-test-id": tid, "x-request-id": tid, "x-fake-answer": WITH_FINAL})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == WITH_FINAL
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.model == CHEAP for c in chunks)
    assert upstream.asked[tid] == [CHEAP]
    rec = buffer_gw.record(tid)
    assert rec["answer_score"] == pytest.approx(toy_answer_score(True), abs=1e-4) == pytest.approx(0.12, abs=0.01)
    assert rec["escalated"] is None and rec["served_model"] == CHEAP and rec["completed"] is True
    assert rec["usage"]["prompt_tokens"] == 10 and rec["usage"]["completion_tokens"] == 5
    assert _escalations(buffer_gw) == before
    assert _scored(buffer_gw) == scored + 1


def test_a_kept_stream_is_byte_for_byte_the_cheap_one(buffer_gw: Gw, plain_gw: Gw) -> None:
    tid = uuid.uuid4().hex
    resp, raw, broken = buffer_gw.stream("/v1/chat/completions", CHAT_BODY, buffer_gw.headers(tid, WITH_FINAL))
    _, direct, _ = plain_gw.stream("/v1/chat/completions", CHAT_BODY, plain_gw.headers(uuid.uuid4().hex, WITH_FINAL))
    assert resp.status_code == 200 and not broken
    assert raw == direct and b"data: [DONE]" in raw
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-upstream"] == CHEAP  # the upstream's own headers, as relayed
    assert resp.headers["x-router-model"] == CHEAP and resp.headers["x-router-mode"] == "route"
    assert "x-router-p-cheap-ok" in resp.headers and "x-router-escalated" not in resp.headers


# ---------------------------------------------------------------- (c) escalated: the strong stream


def test_a_failed_cheap_stream_is_escalated_to_the_strong_stream(buffer_gw: Gw, upstream: StreamUpstream) -> None:
    tid = uuid.uuid4().hex
    before, scored = _escalations(buffer_gw), _scored(buffer_gw)
    resp, raw, broken = buffer_gw.stream("/v1/chat/completions", CHAT_BODY, buffer_gw.headers(tid, NO_FINAL))
    assert resp.status_code == 200 and not broken
    assert _chat_text(raw) == STRONG_ANSWER and b"Bonjo" not in raw
    assert resp.headers["x-router-escalated"] == CHECK_ANSWER_SCORE
    assert resp.headers["x-router-model"] == STRONG and resp.headers["x-upstream"] == STRONG
    assert upstream.asked[tid] == [CHEAP, STRONG]
    rec = buffer_gw.record(tid)
    assert rec["escalated"] == CHECK_ANSWER_SCORE and rec["served_model"] == STRONG and rec["completed"] is True
    assert rec["answer_score"] == round(toy_answer_score(False), 4) == 0.8808
    assert [(a["model"], a["status"]) for a in rec["attempts"]] == [(CHEAP, 200), (STRONG, 200)]
    assert _escalations(buffer_gw) == before + 1
    assert _scored(buffer_gw) == scored + 1
    # both answers paid: the cheap one's tokens are counted too
    assert buffer_gw.metric("router_gateway_tokens_total", model=CHEAP, kind="completion") >= 5


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/responses", {"model": "auto", "stream": True, "input": CHEAP_PROMPT}),
    ("/v1/messages", {"model": "auto", "stream": True, "max_tokens": 100,
                      "messages": [{"role": "user", "content": CHEAP_PROMPT}]}),
], ids=["responses", "messages"])
def test_responses_and_messages_streams_are_buffered_too(buffer_gw: Gw, upstream: StreamUpstream, path: str,
                                                         body: dict[str, Any]) -> None:
    for text, escalated in ((NO_FINAL, True), (WITH_FINAL, False)):
        tid = uuid.uuid4().hex
        resp, raw, broken = buffer_gw.stream(path, body, buffer_gw.headers(tid, text))
        assert resp.status_code == 200 and not broken, raw
        assert resp.headers.get("x-router-escalated") == (CHECK_ANSWER_SCORE if escalated else None)
        assert upstream.asked[tid] == ([CHEAP, STRONG] if escalated else [CHEAP])
        seen = raw.decode()
        assert ("says the strong model" in seen) is escalated and (text[5:] in seen) is not escalated
        rec = buffer_gw.record(tid)
        assert rec["answer_score"] == round(toy_answer_score(not escalated), 4)
        assert rec["completed"] is True and rec["usage"]["completion_tokens"] == 5


# ---------------------------------------------------------------- (d) the strong call fails


def test_a_failed_escalation_replays_the_cheap_stream(buffer_gw: Gw, upstream: StreamUpstream) -> None:
    tid = uuid.uuid4().hex
    before = _escalations(buffer_gw)
    resp, raw, broken = buffer_gw.stream("/v1/chat/completions", CHAT_BODY, buffer_gw.headers(tid, NO_FINAL, "strong500"))
    assert resp.status_code == 200 and not broken
    assert _chat_text(raw) == NO_FINAL and b"data: [DONE]" in raw
    assert resp.headers["x-router-escalated"] == f"{CHECK_ANSWER_SCORE}:failed"
    assert resp.headers["x-router-model"] == CHEAP
    assert upstream.asked[tid] == [CHEAP, STRONG]
    rec = buffer_gw.record(tid)
    assert rec["escalated"] == f"{CHECK_ANSWER_SCORE}:failed" and rec["served_model"] == CHEAP
    assert rec["answer_score"] == 0.8808 and rec["completed"] is True
    assert [(a["model"], a["status"]) for a in rec["attempts"]] == [(CHEAP, 200), (STRONG, 500)]
    assert _escalations(buffer_gw) == before + 1


# ---------------------------------------------------------------- (e) the cheap stream breaks off


def test_a_cut_cheap_stream_is_relayed_broken_and_not_scored(buffer_gw: Gw, plain_gw: Gw, upstream: StreamUpstream) -> None:
    results = []
    for gw in (plain_gw, buffer_gw):  # today's relay, then the buffered one: the same
        tid = uuid.uuid4().hex
        interrupted, scored = gw.metric("router_gateway_upstream_errors_total", kind="stream_interrupted"), _scored(gw)
        resp, raw, broken = gw.stream("/v1/chat/completions", CHAT_BODY, gw.headers(tid, NO_FINAL, "cut"))
        assert resp.status_code == 200
        assert broken  # never passed off as complete: the connection closes without the chunked body's end
        assert _chat_text(raw) == NO_FINAL[:5] and b"[DONE]" not in raw
        assert upstream.asked[tid] == [CHEAP]  # not escalated
        rec = gw.record(tid)
        assert rec["completed"] is False and rec["escalated"] is None and "answer_score" not in rec
        assert wait_for(lambda gw=gw, was=interrupted: gw.metric(
            "router_gateway_upstream_errors_total", kind="stream_interrupted") == was + 1)
        assert _scored(gw) == scored
        results.append(raw)
    assert results[0] == results[1]


def test_the_openai_sdk_sees_a_cut_buffered_stream_as_broken(buffer_gw: Gw) -> None:
    client = openai.OpenAI(base_url=buffer_gw.url + "/v1", api_key="sk-x", max_retries=0, timeout=30)
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": CHEAP_PROMPT}], stream=True,
            extra_headers={"x-fake-answer": NO_FINAL, "x-fake-fault": "cut"}))


# ---------------------------------------------------------------- not scored: tool calls, too long, observe


def test_a_tool_call_stream_is_replayed_unscored(buffer_gw: Gw, upstream: StreamUpstream) -> None:
    tid = uuid.uuid4().hex
    resp, raw, broken = buffer_gw.stream("/v1/chat/completions", CHAT_BODY, buffer_gw.headers(tid, NO_FINAL, "tools"))
    assert resp.status_code == 200 and not broken and b"call_1" in raw
    assert upstream.asked[tid] == [CHEAP]
    rec = buffer_gw.record(tid)
    assert "answer_score" not in rec and rec["escalated"] is None


def test_a_stream_longer_than_the_buffer_is_relayed_whole_and_unscored(
        buffer_gw: Gw, upstream: StreamUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routed, "STREAM_BUFFER_BYTES", 64)  # one chunk passes it
    tid = uuid.uuid4().hex
    resp, raw, broken = buffer_gw.stream("/v1/chat/completions", CHAT_BODY, buffer_gw.headers(tid, NO_FINAL))
    assert resp.status_code == 200 and not broken
    assert _chat_text(raw) == NO_FINAL and b"data: [DONE]" in raw  # nothing dropped
    assert upstream.asked[tid] == [CHEAP]
    rec = buffer_gw.record(tid)
    assert "answer_score" not in rec and rec["escalated"] is None and rec["completed"] is True
    assert rec["usage"]["completion_tokens"] == 5


def test_observe_mode_is_not_buffered(buffer_gw: Gw, upstream: StreamUpstream) -> None:
    tid = uuid.uuid4().hex
    headers = {**buffer_gw.headers(tid, NO_FINAL), "x-router-mode": "observe"}
    resp, raw, broken = buffer_gw.stream("/v1/chat/completions", CHAT_BODY, headers)
    assert resp.status_code == 200 and not broken and _chat_text(raw) == STRONG_ANSWER
    assert upstream.asked[tid] == [STRONG]
    assert "answer_score" not in buffer_gw.record(tid)


# ---------------------------------------------------------------- (f) the flag and the config key


def test_the_flag_and_the_config_key(tmp_path: Path) -> None:
    assert build_parser().parse_args([]).buffer_streams is None
    assert build_parser().parse_args(["--buffer-streams"]).buffer_streams is True
    assert load_config(upstream_url="http://up/v1").buffer_streams is False
    assert load_config(upstream_url="http://up/v1", buffer_streams=True).buffer_streams is True
    path = tmp_path / "gw.toml"
    path.write_text('[upstream]\nbase_url = "http://up/v1"\n\n[checks]\nbuffer_streams = true\nanswer_score = false\n')
    config = load_config(path)
    assert config.buffer_streams is True and config.answer_score is False
    path.write_text('[upstream]\nbase_url = "http://up/v1"\n\n[checks]\nbuffer_streams = "yes"\n')
    with pytest.raises(Exception, match="checks.buffer_streams"):
        load_config(path)
