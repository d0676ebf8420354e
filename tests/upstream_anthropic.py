"""Anthropic's Messages API of the local upstream (tests/gateway_upstream.py), mixed into FakeUpstream.

`POST /v1/messages` speaks Anthropic's Messages API (JSON, or the SSE events `message_start`,
`content_block_*`, `message_delta` with usage, `message_stop`); with `tools` it answers a
`tool_use` block whose id names the turn; usage has cache reads and writes (ANTHROPIC_*).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from upstream_common import Received, fault_for, sse_event

# Anthropic Messages usage of every fake answer: fresh input, cache reads, cache writes, output.
ANTHROPIC_INPUT_TOKENS, ANTHROPIC_CACHE_READ, ANTHROPIC_CACHE_WRITE, ANTHROPIC_OUTPUT_TOKENS = 100, 1000, 200, 30


class AnthropicMessages:
    """The `/v1/messages` endpoint; the upstream it is mixed into records requests and streams."""

    lock: threading.Lock
    received: list[Received]
    streams_completed: list[str]
    streams_cut: list[str]

    async def anthropic_messages(self, request: Request) -> Response:
        """`POST /v1/messages`: an Anthropic message (JSON or SSE events); with `tools`, a `tool_use` block
        whose id is unique to the turn; faults 500 and 429 as for chat."""
        got = await self._record_anthropic(request)
        body, headers = got.body, got.headers
        fault = fault_for(headers.get("x-fake-fault"), body["model"])
        if fault == "500":
            return JSONResponse({"type": "error", "error": {"type": "api_error", "message": "fake upstream failure"}}, status_code=500)
        if fault == "429":
            return JSONResponse({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}},
                                status_code=429, headers={"retry-after": "7"})
        message = _anthropic_message(body)
        if body.get("stream"):
            return StreamingResponse(self._anthropic_events(message, headers), media_type="text/event-stream")
        return JSONResponse(message, headers={"request-id": "req_fake_1"})

    async def _record_anthropic(self, request: Request) -> Received:
        raw = await request.body()
        got = Received(raw, json.loads(raw), {k.lower(): v for k, v in request.headers.items()})
        got.path = request.url.path
        with self.lock:
            self.received.append(got)
        return got

    async def _anthropic_events(self, message: dict[str, Any], headers: dict[str, str]) -> AsyncIterator[bytes]:
        test_id = headers.get("x-test-id", "")
        finished = False
        try:
            start = {**message, "content": [], "stop_reason": None,
                     "usage": {**message["usage"], "output_tokens": 1}}
            yield sse_event("message_start", {"type": "message_start", "message": start})
            yield sse_event("ping", {"type": "ping"})
            for i, block in enumerate(message["content"]):
                if block["type"] == "text":
                    yield sse_event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {"type": "text", "text": ""}})
                    for piece in block["text"].split(" "):
                        delta = {"type": "text_delta", "text": piece + " " if piece != block["text"].split(" ")[-1] else piece}
                        yield sse_event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                else:
                    yield sse_event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {**block, "input": {}}})
                    delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                    yield sse_event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                yield sse_event("content_block_stop", {"type": "content_block_stop", "index": i})
            yield sse_event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                              "usage": {"output_tokens": message["usage"]["output_tokens"]}})
            yield sse_event("message_stop", {"type": "message_stop"})
            finished = True
        finally:
            with self.lock:
                (self.streams_completed if finished else self.streams_cut).append(test_id)


def _anthropic_message(body: dict[str, Any]) -> dict[str, Any]:
    model = body["model"]
    assistant_turns = sum(1 for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "assistant")
    content: list[dict[str, Any]] = [{"type": "text", "text": f"answer from {model}"}]
    stop = "end_turn"
    if body.get("tools"):
        name = body["tools"][0]["name"]
        content.append({"type": "tool_use", "id": f"toolu_fake_{assistant_turns}", "name": name, "input": {"city": "Paris"}})
        stop = "tool_use"
    usage = {"input_tokens": ANTHROPIC_INPUT_TOKENS, "output_tokens": ANTHROPIC_OUTPUT_TOKENS,
             "cache_read_input_tokens": ANTHROPIC_CACHE_READ, "cache_creation_input_tokens": ANTHROPIC_CACHE_WRITE}
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": usage}
