"""A real local OpenAI-compatible upstream for the gateway tests and benchmark (Starlette + uvicorn).

Deterministic answers with `usage`, SSE streaming, and faults chosen per request by headers the
gateway passes through untouched:

- `x-fake-fault: F` (every model) or `x-fake-fault: gpt-4o-mini=F` (that model only), F one of
  500, 429, 400, slow, malformed, invalid_json, schema_mismatch, length, refusal, empty,
  bad_tool_args;
- `x-fake-delay: S` seconds before answering (default: the server's `delay`);
- `x-fake-chunks: N`, `x-fake-chunk-delay: S` for streams.

It also plays the two models being graded and the LLM judge, deterministically, driven by the
text of the request (so it works for `router-label`, which sends no custom headers):

- a weak model (name containing "mini" or "mixtral") answers a hard prompt (one containing a
  word of HARD_WORDS: proofs, derivations, algorithms, debugging, analysis, ...) with "... (unsure)";
- a judge prompt (the rubric's answer markers) gets `{"score": S, "reason": ...}`, S = 3 for an
  answer with "(unsure)", the N of a "fake-score:N" in the answer, else 9; a question holding
  "fake-verdict:garbage|out-of-range|string|extra-key|fenced" (or the fault `verdict_<kind>`)
  gets that kind of unusable verdict;
- a prompt containing "fake-flaky:N" is answered 429 (`retry-after: 1`) the first N times
  (per model and body).

Every chat request is recorded (raw bytes, parsed body, headers); streams record whether they
ran to the end or the client (the gateway) left early.

`POST /v1/messages` speaks Anthropic's Messages API (JSON, or the SSE events `message_start`,
`content_block_*`, `message_delta` with usage, `message_stop`); with `tools` it answers a
`tool_use` block whose id names the turn; usage has cache reads and writes (ANTHROPIC_*).

Beyond chat completions (the same faults where they apply: 500, 429, refusal, empty, length):

- `POST /v1/responses`: the Responses API, JSON or typed SSE events (`response.created`,
  `response.output_text.delta` x N, `response.completed` with `usage`); each answer has an id of
  its own, and with function `tools` a `function_call` item (after the text) whose `call_id`
  names the turn;
- `POST /v1/embeddings`, `POST /v1/files` (multipart, answered with the upload's size and
  sha256), `POST /v1/audio/speech` (binary audio, AUDIO_BYTES), `GET /v1/events` (SSE), and
  `/v1/echo/...` (any method: the request body back, with `x-fake-method`, `x-fake-path`,
  `x-fake-query`, `x-fake-sha256` headers); every one is recorded with its path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PROMPT_TOKENS = 120
COMPLETION_TOKENS = 30
CACHED_TOKENS = 20
SNAPSHOT_SUFFIX = "-2024-fake"


@dataclass
class Received:
    raw: bytes
    body: dict[str, Any]
    headers: dict[str, str]
    path: str = ""


@dataclass
class FakeUpstream:
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    streams_completed: list[str] = field(default_factory=list)
    streams_cut: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    flaky: dict[str, int] = field(default_factory=dict)
    retry_after: str = "1"

    # --- helpers for tests ---------------------------------------------------------------
    def for_test(self, test_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.headers.get("x-test-id") == test_id]

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/messages", self.anthropic_messages, methods=["POST"]),
                Route("/v1/responses", self.responses, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/files", self.files, methods=["POST"]),
                Route("/v1/audio/speech", self.speech, methods=["POST"]),
                Route("/v1/events", self.events, methods=["GET"]),
                Route("/v1/echo/{rest:path}", self.echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            ]
        )

    # --- endpoints -----------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in ("gpt-4o", "gpt-4o-mini")]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw)
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self.lock:
            self.received.append(Received(raw, body, headers))
        model = body["model"]
        fault = _fault(headers.get("x-fake-fault"), model)
        delay = float(headers.get("x-fake-delay", self.delay))
        if fault == "slow":
            delay = max(delay, 3.0)
        if delay:
            await asyncio.sleep(delay)
        if fault == "500":
            return JSONResponse({"error": {"message": "fake upstream failure", "type": "server_error", "code": None}}, status_code=500)
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                status_code=429, headers={"retry-after": "7", "x-ratelimit-remaining-requests": "0"},
            )
        if fault == "400":
            return JSONResponse(
                {"error": {"message": "bad parameter", "type": "invalid_request_error", "code": "invalid_value", "param": "temperature"}},
                status_code=400,
            )
        if fault == "cookie":  # an upstream (or a proxy in front of it) that sets a session cookie
            return JSONResponse(_completion(body, None), headers={"set-cookie": "session=caller-a-secret; Path=/"})
        if fault == "malformed":
            return Response(b'{"id": "chatcmpl-1", "choices": [', media_type="application/json")
        flaky = re.search(r"fake-flaky:(\d+)", _last_user_text(body))
        if flaky:
            with self.lock:
                seen = self.flaky[raw.decode()] = self.flaky.get(raw.decode(), 0) + 1
            if seen <= int(flaky.group(1)):
                return JSONResponse(
                    {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                    status_code=429, headers={"retry-after": self.retry_after},
                )
        if body.get("stream"):
            return StreamingResponse(self._stream(body, headers, fault), media_type="text/event-stream")
        return JSONResponse(_completion(body, fault), headers={"x-request-id": "upstream-req-1"})

    async def _stream(self, body: dict[str, Any], headers: dict[str, str], fault: str | None) -> AsyncIterator[bytes]:
        test_id = headers.get("x-test-id", "")
        n = int(headers.get("x-fake-chunks", "3"))
        pause = float(headers.get("x-fake-chunk-delay", "0"))
        model = body["model"] + SNAPSHOT_SUFFIX
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model}
        finished = False
        try:
            yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            for i in range(n):
                if pause:
                    await asyncio.sleep(pause)
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}]})
            reason = "length" if fault == "length" else "stop"
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _sse({**base, "choices": [], "usage": _usage()})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            with self.lock:
                (self.streams_completed if finished else self.streams_cut).append(test_id)


    # --- the Responses API and the passed-through endpoints --------------------------------------
    async def _record(self, request: Request, parse: bool = True) -> Received:
        raw = await request.body()
        body = json.loads(raw) if parse and raw else {}
        got = Received(raw, body, {k.lower(): v for k, v in request.headers.items()}, request.url.path)
        with self.lock:
            self.received.append(got)
        return got

    async def responses(self, request: Request) -> Response:
        got = await self._record(request)
        body, headers = got.body, got.headers
        fault = _fault(headers.get("x-fake-fault"), body["model"])
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
            yield _event("response.created", {"type": "response.created", "sequence_number": 0, "response": start})
            for i in range(n := int(headers.get("x-fake-chunks", "3"))):
                await asyncio.sleep(float(headers.get("x-fake-chunk-delay", "0")))
                yield _event("response.output_text.delta", {
                    "type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_fake",
                    "output_index": 0, "content_index": 0, "delta": f"part{i} ", "logprobs": [],
                })
            for index, item in enumerate(final["output"][1:], start=1):  # a function call, whole
                for kind in ("response.output_item.added", "response.output_item.done"):
                    n += 1
                    yield _event(kind, {"type": kind, "sequence_number": n, "output_index": index, "item": item})
            yield _event("response.completed", {"type": "response.completed", "sequence_number": n + 1, "response": final})
            finished = True
        finally:
            with self.lock:
                (self.streams_completed if finished else self.streams_cut).append(headers.get("x-test-id", ""))

    async def embeddings(self, request: Request) -> Response:
        got = await self._record(request)
        await asyncio.sleep(float(got.headers.get("x-fake-delay", self.delay)))
        inputs = got.body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(i)]} for i in range(len(items))]
        usage = {"prompt_tokens": 8 * len(items), "total_tokens": 8 * len(items)}
        return JSONResponse({"object": "list", "data": data, "model": got.body.get("model"), "usage": usage})

    async def files(self, request: Request) -> Response:
        got = await self._record(request, parse=False)
        name = re.search(rb'filename="([^"]*)"', got.raw)
        purpose = re.search(rb'name="purpose"\r\n\r\n([^\r]*)', got.raw)
        return JSONResponse({
            "id": "file-" + hashlib.sha256(got.raw).hexdigest()[:24], "object": "file", "bytes": len(got.raw),
            "created_at": 0, "filename": name.group(1).decode() if name else None,
            "purpose": purpose.group(1).decode() if purpose else None, "status": "processed",
        }, headers={"x-fake-sha256": hashlib.sha256(got.raw).hexdigest()})

    async def speech(self, request: Request) -> Response:
        await self._record(request)
        return Response(AUDIO_BYTES, media_type="audio/mpeg")

    async def events(self, request: Request) -> Response:
        await self._record(request, parse=False)

        async def gen() -> AsyncIterator[bytes]:
            for i in range(int(request.query_params.get("n", "3"))):
                yield f"event: tick\ndata: {{\"i\": {i}}}\n\n".encode()
                await asyncio.sleep(float(request.query_params.get("pause", "0")))

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def echo(self, request: Request) -> Response:
        got = await self._record(request, parse=False)
        headers = {"x-fake-method": request.method, "x-fake-path": request.scope["raw_path"].decode("latin-1"),
                   "x-fake-query": request.scope["query_string"].decode("latin-1"),
                   "x-fake-sha256": hashlib.sha256(got.raw).hexdigest()}
        return Response(got.raw, status_code=int(request.query_params.get("status", "200")), headers=headers,
                        media_type=request.headers.get("content-type", "application/octet-stream"))


    # --- Anthropic's Messages API ------------------------------------------------------------------
    async def anthropic_messages(self, request: Request) -> Response:
        """`POST /v1/messages`: an Anthropic message (JSON or SSE events); with `tools`, a `tool_use` block
        whose id is unique to the turn; faults 500 and 429 as for chat."""
        got = await self._record_anthropic(request)
        body, headers = got.body, got.headers
        fault = _fault(headers.get("x-fake-fault"), body["model"])
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
            yield _event("message_start", {"type": "message_start", "message": start})
            yield _event("ping", {"type": "ping"})
            for i, block in enumerate(message["content"]):
                if block["type"] == "text":
                    yield _event("content_block_start", {"type": "content_block_start", "index": i,
                                                         "content_block": {"type": "text", "text": ""}})
                    for piece in block["text"].split(" "):
                        delta = {"type": "text_delta", "text": piece + " " if piece != block["text"].split(" ")[-1] else piece}
                        yield _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                else:
                    yield _event("content_block_start", {"type": "content_block_start", "index": i,
                                                         "content_block": {**block, "input": {}}})
                    delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                    yield _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                yield _event("content_block_stop", {"type": "content_block_stop", "index": i})
            yield _event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                           "usage": {"output_tokens": message["usage"]["output_tokens"]}})
            yield _event("message_stop", {"type": "message_stop"})
            finished = True
        finally:
            with self.lock:
                (self.streams_completed if finished else self.streams_cut).append(test_id)


def _fault(spec: str | None, model: str) -> str | None:
    if not spec:
        return None
    for item in spec.split(","):
        name, sep, fault = item.strip().partition("=")
        if not sep:
            return name
        if name == model:
            return fault
    return None


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


WEAK_MODELS = ("mini", "mixtral")
HARD_WORDS = ("prove", "derive", "derivation", "implement", "debug", "optimize", "optimise", "algorithm", "analyse",
              "analyze", "design a", "calculate", "solve")
JUDGE_ANSWER = re.compile(r"\[The Start of the Assistant's Answer\]\n(.*?)\n\[The End of the Assistant's Answer\]", re.DOTALL)
BAD_VERDICTS = {
    "garbage": "I would give this answer a solid 8 out of 10.",
    "out-of-range": json.dumps({"score": 11, "reason": "beyond perfect"}),
    "string": json.dumps({"score": "8", "reason": "a string score"}),
    "extra-key": json.dumps({"score": 8, "reason": "fine", "confidence": 0.9}),
    "fenced": "```json\n" + json.dumps({"score": 8, "reason": "fenced"}) + "\n```",
}


def _last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def judge_verdict(prompt: str, fault: str | None) -> str | None:
    """The fake judge's verdict text for a rubric prompt (None: not a judge prompt)."""
    found = JUDGE_ANSWER.search(prompt)
    if found is None:
        return None
    kind = re.search(r"fake-verdict:([a-z-]+)", prompt)
    bad = kind.group(1) if kind else (fault[len("verdict_"):].replace("_", "-") if fault and fault.startswith("verdict_") else None)
    if bad in BAD_VERDICTS:
        return BAD_VERDICTS[bad]
    answer = found.group(1)
    forced = re.search(r"fake-score:(\d+)", answer)
    score = int(forced.group(1)) if forced else 3 if "(unsure)" in answer else 9
    return json.dumps({"score": score, "reason": f"fake judge: {'unsure answer' if score < 5 else 'fine answer'}"})


def _completion(body: dict[str, Any], fault: str | None) -> dict[str, Any]:
    model = body["model"]
    text = _last_user_text(body)
    content = f"answer from {model}"
    if any(w in model.lower() for w in WEAK_MODELS) and any(w in text.lower() for w in HARD_WORDS):
        content += " (unsure)"
    verdict = judge_verdict(text, fault)
    message: dict[str, Any] = {"role": "assistant", "content": verdict if verdict is not None else content, "refusal": None}
    finish = "stop"
    fmt = (body.get("response_format") or {}).get("type")
    if verdict is not None:
        pass
    elif body.get("tools"):
        name = body["tools"][0]["function"]["name"]
        args = '{"city": ' if fault == "bad_tool_args" else '{"city": "Paris"}'
        message["content"] = None
        message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}]
        finish = "tool_calls"
    elif fmt in ("json_object", "json_schema"):
        if fault == "invalid_json":
            message["content"] = "Sure! Here is the JSON: {answer: ok"
        elif fault == "schema_mismatch":
            message["content"] = json.dumps({"wrong": 1})
        else:
            message["content"] = json.dumps({"answer": f"ok from {model}"})
    if fault == "refusal":
        message["content"] = "I'm sorry, but I can't help with that."
    elif fault == "empty":
        message["content"] = ""
    if fault == "length":
        finish = "length"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model + SNAPSHOT_SUFFIX,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(),
    }


@contextmanager
def serve_fake_upstream() -> Iterator[FakeUpstream]:
    """A FakeUpstream on a loopback port for the block; `.url` is its OpenAI base URL."""
    with serve_upstream(FakeUpstream()) as fake:
        yield fake


U = TypeVar("U")


@contextmanager
def serve_upstream(fake: U, **server: Any) -> Iterator[U]:
    """Any local upstream (an object with `.app()`) on a loopback port for the block; sets its `.url`
    to the OpenAI base URL (`.../v1`). `server` goes to ServerThread (e.g. log_level)."""
    from router_model.gateway.server import ServerThread

    thread = ServerThread(fake.app(), **server).start()  # type: ignore[attr-defined]
    fake.url = thread.url + "/v1"  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        thread.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; its last value decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


# Anthropic Messages usage of every fake answer: fresh input, cache reads, cache writes, output.
ANTHROPIC_INPUT_TOKENS, ANTHROPIC_CACHE_READ, ANTHROPIC_CACHE_WRITE, ANTHROPIC_OUTPUT_TOKENS = 100, 1000, 200, 30


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


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(obj).encode() + b"\n\n"


# Deterministic "audio": every byte value, NULs and invalid UTF-8 included.
AUDIO_BYTES = bytes(range(256)) * 256 + b"\x00\xff\xfe"


def _responses_user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    return items if isinstance(items, str) else _last_user_text({"messages": items if isinstance(items, list) else []})


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
