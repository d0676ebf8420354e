"""The Responses API of the local upstream (tests/gateway_upstream.py), mixed into FakeUpstream.

`POST /v1/responses`: JSON or typed SSE events (`response.created`, `response.output_text.delta`
x N, `response.completed` with `usage`); each answer has an id of its own, and with function
`tools` a `function_call` item (after the text) whose `call_id` names the turn. Faults 500, 429,
refusal, empty and length, as for chat completions.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from upstream_common import (
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    HARD_WORDS,
    PROMPT_TOKENS,
    SNAPSHOT_SUFFIX,
    WEAK_MODELS,
    fault_for,
    last_user_text,
    sse_event,
)


class ResponsesAPI:
    """The `/v1/responses` endpoint; the upstream it is mixed into provides `delay`, the stream lists
    and `_record` (which records a request and parses its JSON body)."""

    delay: float
    lock: threading.Lock
    streams_completed: list[str]
    streams_cut: list[str]

    async def responses(self, request: Request) -> Response:
        got = await self._record(request)
        body, headers = got.body, got.headers
        fault = fault_for(headers.get("x-fake-fault"), body["model"])
        delay = float(headers.get("x-fake-delay", self.delay))
        if delay:
            await asyncio.sleep(delay)
        if fault in ("500", "429"):
            kind, message = ("server_error", "fake upstream failure") if fault == "500" else ("requests", "Rate limit reached")
            return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status_code=int(fault),
                                headers={"retry-after": "7"})
        if body.get("stream"):
            return StreamingResponse(self._response_events(body, headers, fault), media_type="text/event-stream")
        return JSONResponse(_response_object(body, fault), headers={"x-request-id": "upstream-resp-1"})

    async def _response_events(self, body: dict[str, Any], headers: dict[str, str], fault: str | None) -> AsyncIterator[bytes]:
        final = _response_object(body, fault)
        start = {**final, "status": "in_progress", "output": [], "usage": None}
        finished = False
        try:
            yield sse_event("response.created", {"type": "response.created", "sequence_number": 0, "response": start})
            for i in range(n := int(headers.get("x-fake-chunks", "3"))):
                await asyncio.sleep(float(headers.get("x-fake-chunk-delay", "0")))
                yield sse_event("response.output_text.delta", {
                    "type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_fake",
                    "output_index": 0, "content_index": 0, "delta": f"part{i} ", "logprobs": [],
                })
            for index, item in enumerate(final["output"][1:], start=1):  # a function call, whole
                for kind in ("response.output_item.added", "response.output_item.done"):
                    n += 1
                    yield sse_event(kind, {"type": kind, "sequence_number": n, "output_index": index, "item": item})
            yield sse_event("response.completed", {"type": "response.completed", "sequence_number": n + 1, "response": final})
            finished = True
        finally:
            with self.lock:
                (self.streams_completed if finished else self.streams_cut).append(headers.get("x-test-id", ""))


def _responses_user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    return items if isinstance(items, str) else last_user_text({"messages": items if isinstance(items, list) else []})


def responses_usage() -> dict[str, Any]:
    return {
        "input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
        "output_tokens": COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def _response_object(body: dict[str, Any], fault: str | None) -> dict[str, Any]:
    model = body["model"]
    text = f"answer from {model}"
    if any(w in model.lower() for w in WEAK_MODELS) and any(w in _responses_user_text(body).lower() for w in HARD_WORDS):
        text += " (unsure)"
    part: dict[str, Any] = {"type": "output_text", "text": "" if fault == "empty" else text, "annotations": []}
    if fault == "refusal":
        part = {"type": "refusal", "refusal": "I'm sorry, but I can't help with that."}
    message = {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant", "content": [part]}
    output: list[dict[str, Any]] = [message]
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    if tools:  # a function call whose call_id names the turn (the function results the input holds so far)
        turn = sum(1 for i in body.get("input") or () if isinstance(i, dict) and i.get("type") == "function_call_output")
        output.append({"type": "function_call", "id": f"fc_fake_{turn}", "call_id": f"call_fake_{turn}",
                       "name": tools[0]["name"], "arguments": '{"city": "Paris"}', "status": "completed"})
    cut = fault == "length"
    return {
        "id": "resp_" + uuid.uuid4().hex[:16], "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "error": None,
        "model": model + SNAPSHOT_SUFFIX, "output": output, "instructions": body.get("instructions"),
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": responses_usage(),
    }
