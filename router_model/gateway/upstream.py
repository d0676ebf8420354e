"""Talking to the upstream: headers, URLs, one send, and the fallback to the strong model.

The caller's `Authorization` goes through unless the upstream has its own key; hop-by-hop
headers, cookies and `x-router-*` never do. A failed cheap-model call (5xx, timeout, refused
connection) is retried once on the strong model when routing chose the cheap one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

import anyio
import httpx
from starlette.responses import JSONResponse, Response

from router_model.gateway.call import Attempt, Call
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamFailedError,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
    error_body,
)
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.tracing import inject_trace, traced_upstream

log = logging.getLogger("router_model.gateway")

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade"}
)
_DROP_REQUEST_HEADERS = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "cookie"}
_DROP_RAW_REQUEST_HEADERS = HOP_BY_HOP | {"host", "cookie"}  # pass-through: the body's length and encoding as sent
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})  # the caller's, replaced by an upstream's own key
_DROP_RESPONSE_HEADERS = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}


# An upstream's error text quoted in one of the gateway's own error messages is cut to this many characters.
QUOTE_LIMIT = 500


def upstream_message(content: bytes) -> str | None:
    """The `error.message` of an upstream's JSON error body, if it has one (cut to QUOTE_LIMIT characters)."""
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        return None
    err = data.get("error") if isinstance(data, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    return msg[:QUOTE_LIMIT] if isinstance(msg, str) else None


async def read_capped(resp: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of an unread (streamed) response's body, and whether it holds more.

    Stops reading at the limit: the rest is never buffered (the caller closes the response).
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        size += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks), False


def declared_length(resp: httpx.Response) -> int | None:
    """The response's Content-Length, when it states one."""
    text = resp.headers.get("content-length", "")
    return int(text) if text.isdigit() else None


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    """The upstream's response headers that may be passed to the client."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS}


def client_error(resp: httpx.Response, content: bytes) -> Response:
    """An upstream 4xx (429 included) passed through: its status, its error body, its retry-after."""
    headers = response_headers(resp.headers)
    try:
        data = json.loads(content)
        ok = isinstance(data, dict) and isinstance(data.get("error"), dict)
    except (ValueError, RecursionError):
        ok = False
    if ok:
        headers["content-type"] = "application/json"
        return Response(content, status_code=resp.status_code, headers=headers)
    text = content.decode("utf-8", "replace")[:QUOTE_LIMIT] or resp.reason_phrase
    body = error_body(f"upstream answered {resp.status_code}: {text}", "upstream_error", f"upstream_{resp.status_code}")
    headers.pop("content-type", None)
    return JSONResponse(body, status_code=resp.status_code, headers=headers)


class UpstreamSender:
    """Sends calls to the configured upstreams through one pooled client."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, *, client: Callable[[], httpx.AsyncClient],
                 label: Callable[[str], str]) -> None:
        self.config = config
        self.metrics = metrics
        self._client = client
        self._label = label
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client()

    def out_headers(self, headers: Mapping[str, str], upstream: Upstream, *, raw: bool = False,
                    key_header: str = "authorization") -> dict[str, str]:
        """The headers sent upstream. `raw` (pass-through): the client's Content-Length,
        Accept-Encoding and Content-Type go as sent and nothing is added but the upstream's key.
        The upstream's own key replaces the caller's credentials, sent as `key_header` (`x-api-key`: Anthropic's, bare)."""
        key = upstream.api_key()
        drop = _DROP_RAW_REQUEST_HEADERS if raw else _DROP_REQUEST_HEADERS
        out: dict[str, str] = {}
        has_type = False
        for k, v in headers.items():
            low = k.lower()
            if low in drop or low.startswith("x-router-") or (key and low in _CREDENTIAL_HEADERS):
                continue
            has_type = has_type or low == "content-type"
            out[k] = v
        if key:
            out[key_header] = f"Bearer {key}" if key_header == "authorization" else key
        if raw:
            return out
        out["accept-encoding"] = "identity"
        if not has_type:
            out["content-type"] = "application/json"
        return out

    def url(self, upstream: Upstream, path: str) -> httpx.URL:
        """`{base_url}{path}` (e.g. `/chat/completions`), parsed once per upstream and path."""
        url = self._urls.get((upstream.base_url, path))
        if url is None:
            url = self._urls[(upstream.base_url, path)] = httpx.URL(f"{upstream.base_url}{path}")
        return url

    def chat_url(self, upstream: Upstream) -> httpx.URL:
        """`{base_url}/chat/completions` (shadow grading's calls)."""
        return self.url(upstream, "/chat/completions")

    async def open(self, call: Call, model: str) -> httpx.Response:
        """Send the call to `model`'s upstream and return once its headers are in: the body is unread
        (the caller reads it and closes the response). Failures become UpstreamError/UpstreamTimeoutError."""
        anthropic = call.protocol.provider == "anthropic"
        upstream = self.config.anthropic_upstream_for(model) if anthropic else self.config.upstream_for(model)
        headers = self.out_headers(call.in_headers, upstream, key_header="x-api-key" if anthropic else "authorization")
        inject_trace(headers)  # traces: the upstream span's traceparent in place of the caller's
        client = self.client
        request = client.build_request("POST", self.url(upstream, call.protocol.path), content=call.payload(model), headers=headers)
        try:
            with self.metrics.upstream_latency.labels(self._label(model)).time():  # to the headers
                return await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._failed(call, model, exc) from None

    def _failed(self, call: Call, model: str, exc: httpx.HTTPError | None) -> GatewayError:
        """Count a failed upstream call (None: the total deadline passed) and the error it becomes."""
        m = self.metrics
        if exc is None or isinstance(exc, httpx.TimeoutException):
            m.upstream_errors.labels("timeout").inc()
            m.upstream_requests.labels(self._label(model), "timeout").inc()
            call.attempts.append(Attempt(model, 504))
            return UpstreamTimeoutError(f"the upstream did not answer in time for model {model!r}")
        m.upstream_errors.labels("connect").inc()
        m.upstream_requests.labels(self._label(model), "unreachable").inc()
        call.attempts.append(Attempt(model, 502))
        return UpstreamError(f"cannot reach the upstream for model {model!r} ({exc.__class__.__name__})")

    def _answered(self, model: str, resp: httpx.Response) -> None:
        m = self.metrics
        m.upstream_requests.labels(self._label(model), str(resp.status_code)).inc()
        if resp.status_code >= 500:
            m.upstream_errors.labels("status_5xx").inc()

    @traced_upstream  # traces: one span per upstream call (fallback and escalation included)
    async def send(self, call: Call, model: str, *, stream: bool) -> tuple[httpx.Response, bytes | None]:
        """Send the call to `model`'s upstream: the response and its body, read and closed (at most
        `max_response_bytes`, within the call's `timeouts.total`), except a 200 stream, which is left
        open and unread (body None). An error status's body is read (capped) and the response closed."""
        if stream:
            resp = await self.open(call, model)
            self._answered(model, resp)
            if resp.status_code == 200:
                return resp, None
            try:
                content, _ = await read_capped(resp, self.config.max_response_bytes)
            except httpx.HTTPError:
                content = b""
            finally:
                await resp.aclose()
            return resp, content
        left = call.remaining(self.config.timeouts.total)
        try:
            with anyio.fail_after(max(left, 0.0)):
                return await self._fetch(call, model)
        except TimeoutError:
            raise self._failed(call, model, None) from None

    async def _fetch(self, call: Call, model: str) -> tuple[httpx.Response, bytes]:
        resp = await self.open(call, model)
        try:
            limit = self.config.max_response_bytes
            length = declared_length(resp)
            if resp.status_code < 400 and length is not None and length > limit:
                content, over = b"", True
            else:
                content, over = await read_capped(resp, limit)
        except httpx.HTTPError as exc:
            raise self._failed(call, model, exc) from None
        finally:
            with anyio.CancelScope(shield=True):  # also when the deadline cancelled the read
                await resp.aclose()
        self._answered(model, resp)
        if over and resp.status_code < 400:
            self.metrics.upstream_errors.labels("response_too_large").inc()
            call.attempts.append(Attempt(model, 502))
            raise UpstreamTooLargeError(
                f"the upstream's answer for model {model!r} is larger than max_response_bytes ({limit} bytes)"
            )
        return resp, content

    def _can_fall_back(self, call: Call, model: str) -> bool:
        router = call.router
        return (
            self.config.fallback_to_strong and call.routing and router is not None
            and model == router.cheap_model and model != router.strong_model
        )

    async def send_with_fallback(self, call: Call, *, stream: bool) -> tuple[httpx.Response, bytes | None, str]:
        """Send to the target; on a cheap-model 5xx/timeout/connect failure retry once on the strong model.

        Returns the response, its body (None for a 200 stream, which is left open) and the model
        that answered. A 5xx that is not retried becomes UpstreamFailedError (502). A non-streamed
        call whose `timeouts.total` has passed is not retried.
        """
        model = call.target
        while True:
            fall_back = self._can_fall_back(call, model)
            try:
                resp, content = await self.send(call, model, stream=stream)
            except (UpstreamError, UpstreamTimeoutError) as exc:
                if not fall_back or isinstance(exc, UpstreamTooLargeError) or (
                    not stream and call.remaining(self.config.timeouts.total) <= 0
                ):
                    raise
                cause = exc.code
            else:
                if resp.status_code < 500:
                    return resp, content, model
                call.attempts.append(Attempt(model, resp.status_code))
                if not fall_back:
                    detail = upstream_message(content or b"")
                    raise UpstreamFailedError(
                        f"the upstream answered {resp.status_code} for model {model!r}" + (f": {detail}" if detail else "")
                    )
                cause = f"status_{resp.status_code}"
            assert call.router is not None
            call.fallback = cause
            self.metrics.fallbacks.labels(cause).inc()
            log.info("request %s: %s failed (%s); falling back to %s", call.request_id, model, cause, call.router.strong_model)
            model = call.router.strong_model
