"""Every other method and path under /v1: forwarded to the default upstream byte for byte.

Embeddings, files (multipart uploads), audio (binary in and out), images, batches, stored
responses...: the request body is streamed to the upstream as it arrives and the upstream's
answer (status, headers, body: JSON, binary, SSE) streamed back as received, never buffered,
parsed or re-encoded. The header rules are the routed calls' (the caller's `Authorization` goes
through unless the upstream has its own key; hop-by-hop headers, `Host`, cookies and `x-router-*`
do not). Counted in the metrics by path family (the first segment after `/v1`).
"""

from __future__ import annotations

import logging
import time

import httpx
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from router_model.gateway.config import GatewayConfig
from router_model.gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.relay import RelayResponse, UsageScanner
from router_model.gateway.routed import error_response
from router_model.gateway.upstream import HOP_BY_HOP, UpstreamSender

log = logging.getLogger("router_model.gateway")

PREFIX = b"/v1"
# The metrics' endpoint label of a passed-through call: the first path segment after /v1 when it
# is one of the OpenAI API's families, else "other" (a client cannot grow the series).
FAMILIES = frozenset({
    "assistants", "audio", "batches", "chat", "completions", "containers", "conversations", "embeddings", "evals",
    "files", "fine_tuning", "images", "models", "moderations", "realtime", "responses", "threads", "uploads",
    "vector_stores", "videos",
})
_DROP_RESPONSE = HOP_BY_HOP | {"date", "server"}  # the server sets its own Date and Server
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # HEAD comes with GET


def path_family(path: str) -> str:
    """`/v1/audio/speech` -> "audio"; an unknown family -> "other"."""
    first = path.removeprefix("/v1").lstrip("/").split("/", 1)[0]
    return first if first in FAMILIES else "other"


class PassThrough:
    """Forwards what no routed endpoint serves, unchanged, to the default upstream."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, *, sender: UpstreamSender) -> None:
        self.config = config
        self.metrics = metrics
        self.sender = sender

    def _url(self, request: HTTPRequest) -> str:
        """The upstream URL: its base_url, the path after /v1 as the client encoded it, the query string."""
        raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
        tail = raw[len(PREFIX):] if raw.startswith(PREFIX) else raw
        query = request.scope.get("query_string") or b""
        url = self.config.upstream.base_url + tail.decode("latin-1")
        return f"{url}?{query.decode('latin-1')}" if query else url

    async def handle(self, request: HTTPRequest) -> Response:
        started = time.perf_counter()
        family = path_family(request.url.path)
        upstream = self.config.upstream
        headers = self.sender.out_headers(request.headers, upstream, raw=True)
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        client = self.sender.client
        out = client.build_request(request.method, self._url(request), headers=headers,
                                   content=request.stream() if has_body else None)
        try:
            resp = await client.send(out, stream=True)
        except httpx.HTTPError as exc:
            err: GatewayError
            if isinstance(exc, httpx.TimeoutException):
                self.metrics.upstream_errors.labels("timeout").inc()
                err = UpstreamTimeoutError("the upstream did not answer in time")
            else:
                self.metrics.upstream_errors.labels("connect").inc()
                err = UpstreamError(f"cannot reach the upstream ({exc.__class__.__name__})")
            self._count(family, err.status, False, started)
            return error_response(err)
        sse = resp.headers.get("content-type", "").startswith("text/event-stream")

        async def on_close(completed: bool, interrupted: bool, scanner: UsageScanner) -> None:
            if interrupted:
                self.metrics.upstream_errors.labels("stream_interrupted").inc()
            self._count(family, resp.status_code, sse, started)

        relay = RelayResponse(resp, on_close, {}, scanner=UsageScanner(None), raw=True)
        relay.raw_headers = [(k, v) for k, v in resp.headers.raw if k.decode("latin-1").lower() not in _DROP_RESPONSE]
        return relay

    def _count(self, family: str, status: int, stream: bool, started: float) -> None:
        self.metrics.requests.labels(family, str(status)).inc()
        self.metrics.duration.labels(family, str(stream).lower()).observe(time.perf_counter() - started)
