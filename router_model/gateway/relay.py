"""Relaying an upstream's body (server-sent events, or any bytes) to the client as it comes, reading usage on the way."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from router_model.dollars import Usage
from router_model.gateway.call import chat_stream_usage

log = logging.getLogger("router_model.gateway")


# One SSE event's JSON -> (its usage, its model), either None (a protocol's `stream_usage`).
EventReader = Callable[[Mapping[str, Any]], tuple[Usage | None, str | None]]


class UsageScanner:
    """Finds `usage` (and the answer's `model`) in SSE bytes as they pass, without changing them.

    `read` takes them out of one event: a chat chunk's own (default), or e.g. the Responses API's
    `response.completed` event's `response.usage`; None scans nothing.
    """

    def __init__(self, read: EventReader | None = chat_stream_usage, *,
                 on_event: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        self._buf = b""
        self._read = read
        self._on_event = on_event  # sees every event's JSON (affinity's StreamAnswer); None: only usage is parsed
        self.usage: Usage | None = None
        self.model: str | None = None

    def feed(self, chunk: bytes) -> None:
        if self._read is None:
            return
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if self._on_event is not None or (self.model is None and b'"model"' in data) or b'"usage"' in data:
                try:
                    obj = json.loads(data)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    if self._on_event is not None:
                        self._on_event(obj)
                    usage, model = self._read(obj)
                    if self.model is None and model is not None:
                        self.model = model
                    if usage is not None:
                        if self.usage is not None and not usage.prompt_tokens and self.usage.prompt_tokens:
                            # a later event with output tokens only (Anthropic's message_delta): keep the input's
                            usage = dataclasses.replace(self.usage, completion_tokens=usage.completion_tokens)
                        self.usage = usage


# Called once when a relay ends: (completed, interrupted, what the scanner found).
OnClose = Callable[[bool, bool, UsageScanner], Awaitable[None]]


@dataclasses.dataclass
class Buffered:
    """A stream read ahead before anything is relayed (`--buffer-streams`): its chunks as received,
    the scanner that has read them, and how the read ended: `rest`, the unread rest of a stream
    longer than the limit (relayed after the chunks), or `broken`, the upstream broke it off."""

    chunks: list[bytes]
    scanner: UsageScanner
    rest: AsyncIterator[bytes] | None = None
    broken: bool = False

    @property
    def whole(self) -> bool:
        """The stream was read to its end, unbroken."""
        return self.rest is None and not self.broken


async def read_ahead(upstream: httpx.Response, scanner: UsageScanner, limit: int) -> Buffered:
    """Read an upstream stream into memory through `scanner`, sending nothing: to its end, or until
    it has passed `limit` bytes (the rest is left unread, never dropped), or until it breaks off."""
    chunks: list[bytes] = []
    size = 0
    reader = upstream.aiter_bytes()
    try:
        async for chunk in reader:
            scanner.feed(chunk)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return Buffered(chunks, scanner, rest=reader)
    except httpx.HTTPError as exc:
        log.warning("upstream stream broke off while buffered (%s)", exc.__class__.__name__)
        return Buffered(chunks, scanner, broken=True)
    return Buffered(chunks, scanner)


class RelayResponse(StreamingResponse):
    """Starlette's StreamingResponse over the upstream's SSE bytes; always closes the upstream and
    accounts the call when it ends, whether the stream completed, broke, or the client left.

    A stream the upstream breaks off (its connection cut, a read past `timeouts.read`) is not
    ended cleanly: the gateway returns without the response's last message, so the server closes
    the connection without the end of the chunked body and the client sees a broken stream (the
    `openai` SDK raises APIConnectionError), as it would talking to the upstream directly.
    """

    def __init__(self, upstream: httpx.Response, on_close: OnClose, headers: Mapping[str, str], *,
                 scanner: UsageScanner | None = None, raw: bool = False, buffered: Buffered | None = None) -> None:
        self._upstream = upstream
        self._on_close = on_close
        self._buffered = buffered  # read ahead (`read_ahead`): its chunks go first, then the rest if any
        self._scanner = buffered.scanner if buffered is not None else scanner if scanner is not None else UsageScanner()
        self._raw = raw  # the bytes as received, content-encoding and all (pass-through)
        self._completed = False
        self._interrupted = False
        super().__init__(self._relay(), status_code=upstream.status_code, headers=headers)

    async def _relay(self) -> AsyncIterator[bytes]:
        buffered = self._buffered
        if buffered is not None:  # already scanned: replayed as received
            for chunk in buffered.chunks:
                yield chunk
            if buffered.broken:  # as a relayed stream the upstream breaks off: no clean end
                self._interrupted = True
                return
            if buffered.rest is None:
                self._completed = True
                return
        try:
            if buffered is not None and buffered.rest is not None:
                chunks = buffered.rest
            else:
                chunks = self._upstream.aiter_raw() if self._raw else self._upstream.aiter_bytes()
            async for chunk in chunks:
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
