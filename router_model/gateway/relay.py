"""Relaying an upstream's server-sent events to the client, byte for byte, and reading usage on the way."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from router_model.cost import Usage

log = logging.getLogger("router_model.gateway")


class UsageScanner:
    """Finds `usage` (and the answer's `model`) in SSE bytes as they pass, without changing them."""

    def __init__(self) -> None:
        self._buf = b""
        self.usage: Usage | None = None
        self.model: str | None = None

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if (self.model is None and b'"model"' in data) or b'"usage"' in data:
                try:
                    obj = json.loads(data)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    if self.model is None and isinstance(obj.get("model"), str):
                        self.model = obj["model"]
                    usage = Usage.from_response(obj.get("usage"))
                    if usage is not None:
                        self.usage = usage


# Called once when a relay ends: (completed, interrupted, what the scanner found).
OnClose = Callable[[bool, bool, UsageScanner], Awaitable[None]]


class RelayResponse(StreamingResponse):
    """Starlette's StreamingResponse over the upstream's SSE bytes; always closes the upstream and
    accounts the call when it ends, whether the stream completed, broke, or the client left.

    A stream the upstream breaks off (its connection cut, a read past `timeouts.read`) is not
    ended cleanly: the gateway returns without the response's last message, so the server closes
    the connection without the end of the chunked body and the client sees a broken stream (the
    `openai` SDK raises APIConnectionError), as it would talking to the upstream directly.
    """

    def __init__(self, upstream: httpx.Response, on_close: OnClose, headers: Mapping[str, str]) -> None:
        self._upstream = upstream
        self._on_close = on_close
        self._scanner = UsageScanner()
        self._completed = False
        self._interrupted = False
        super().__init__(self._relay(), status_code=upstream.status_code, headers=headers)

    async def _relay(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._upstream.aiter_bytes():
                self._scanner.feed(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            self._interrupted = True
            log.warning("upstream stream broke off (%s); closing the client's stream unfinished", exc.__class__.__name__)
            return
        self._completed = True

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self._interrupted:
            return  # no final message: the connection is closed without the chunked body's end
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()
                await self._on_close(self._completed, self._interrupted, self._scanner)
