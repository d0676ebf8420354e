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

`POST /v1/messages` speaks Anthropic's Messages API (tests/upstream_anthropic.py): JSON or SSE
events; with `tools` a `tool_use` block whose id names the turn; usage with cache reads and writes.

Beyond chat completions (the same faults where they apply: 500, 429, refusal, empty, length):

- `POST /v1/responses`: the Responses API (tests/upstream_responses.py), JSON or typed SSE events;
  with function `tools` a `function_call` item whose `call_id` names the turn;
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
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# benchmarks/gateway_overhead.py loads this file by its path, without tests/ on sys.path: the
# modules beside it must import all the same.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream_anthropic import (  # noqa: E402
    ANTHROPIC_CACHE_READ,
    ANTHROPIC_CACHE_WRITE,
    ANTHROPIC_INPUT_TOKENS,
    ANTHROPIC_OUTPUT_TOKENS,
    AnthropicMessages,
)
from upstream_common import (  # noqa: E402
    CACHED_TOKENS,
    COMPLETION_TOKENS,
    HARD_WORDS,
    PROMPT_TOKENS,
    SNAPSHOT_SUFFIX,
    WEAK_MODELS,
    Received,
    fault_for,
    last_user_text,
)
from upstream_responses import ResponsesAPI, responses_usage  # noqa: E402

__all__ = [  # the tests import these from here (some are defined in the upstream_* modules beside it)
    "ANTHROPIC_CACHE_READ",
    "ANTHROPIC_CACHE_WRITE",
    "ANTHROPIC_INPUT_TOKENS",
    "ANTHROPIC_OUTPUT_TOKENS",
    "AUDIO_BYTES",
    "BAD_VERDICTS",
    "CACHED_TOKENS",
    "COMPLETION_TOKENS",
    "HARD_WORDS",
    "JUDGE_ANSWER",
    "PROMPT_TOKENS",
    "SNAPSHOT_SUFFIX",
    "WEAK_MODELS",
    "FakeUpstream",
    "Received",
    "judge_verdict",
    "responses_usage",
    "serve_fake_upstream",
    "serve_upstream",
    "wait_for",
]


@dataclass
class FakeUpstream(AnthropicMessages, ResponsesAPI):
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
        fault = fault_for(headers.get("x-fake-fault"), model)
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
        flaky = re.search(r"fake-flaky:(\d+)", last_user_text(body))
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


    # --- the passed-through endpoints (the Responses API and Anthropic's Messages API are mixed in) ----
    async def _record(self, request: Request, parse: bool = True) -> Received:
        raw = await request.body()
        body = json.loads(raw) if parse and raw else {}
        got = Received(raw, body, {k.lower(): v for k, v in request.headers.items()}, request.url.path)
        with self.lock:
            self.received.append(got)
        return got

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


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


JUDGE_ANSWER = re.compile(r"\[The Start of the Assistant's Answer\]\n(.*?)\n\[The End of the Assistant's Answer\]", re.DOTALL)
BAD_VERDICTS = {
    "garbage": "I would give this answer a solid 8 out of 10.",
    "out-of-range": json.dumps({"score": 11, "reason": "beyond perfect"}),
    "string": json.dumps({"score": "8", "reason": "a string score"}),
    "extra-key": json.dumps({"score": 8, "reason": "fine", "confidence": 0.9}),
    "fenced": "```json\n" + json.dumps({"score": 8, "reason": "fenced"}) + "\n```",
}


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
    text = last_user_text(body)
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


# Deterministic "audio": every byte value, NULs and invalid UTF-8 included.
AUDIO_BYTES = bytes(range(256)) * 256 + b"\x00\xff\xfe"
