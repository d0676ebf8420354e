"""The gateway's Starlette app: decide, forward, check, account, log.

One `Gateway` owns the config, the router (hot-reloadable), one pooled `httpx.AsyncClient`,
the price table, the metrics registry and the decision log. `create_app` wraps it in a
Starlette app whose lifespan opens the client and loads the router in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from router_model.batching import Batcher
from router_model.cost import PriceTable
from router_model.decision import RoutingDecision
from router_model.errors import ArtifactError, ConfigError, InvalidRequestError
from router_model.gateway.checks import failed_check
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.costing import Usage, usage_cost
from router_model.gateway.errors import (
    BadRequestError,
    BodyTooLargeError,
    GatewayError,
    InvalidJSONError,
    RouterNotReadyError,
    UpstreamError,
    UpstreamFailedError,
    UpstreamInvalidError,
    UpstreamTimeoutError,
    error_body,
)
from router_model.gateway.metrics import GatewayMetrics
from router_model.observe.decision_log import DecisionLogWriter, decision_record
from router_model.router import Router

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade"}
)
_DROP_REQUEST_HEADERS = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "cookie"}
_DROP_RESPONSE_HEADERS = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}
REASON_PASSTHROUGH = "passthrough"
REASON_UNROUTABLE = "unroutable"
REASON_NO_ROUTER = "no-router"
CHAT_ENDPOINT = "chat_completions"


# ---------------------------------------------------------------- the router, hot-reloadable


class RouterHolder:
    """The loaded router; `reload` verifies a new one beside it and swaps, keeping the old on failure."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, router: Router | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self.error: str | None = None
        self.current: Router | None = router
        if router is not None:
            self._seen = _signature(router.path)
            metrics.model_loaded(router.version)
            metrics.reloads.labels("ok").inc()

    @property
    def model_dir(self) -> Path | None:
        if self._config.model_dir is not None:
            return self._config.model_dir
        return self.current.path if self.current is not None else None

    def reload(self) -> Router:
        """Load the configured directory; raise ArtifactError/ConfigError, the serving router untouched."""
        with self._lock:
            target = self.model_dir
            if target is None:
                raise ConfigError("no model directory configured (--model-dir)")
            self._seen = _signature(target)
            try:
                router = Router.load(target, graph=self._config.graph, threads=self._config.threads)
            except (ArtifactError, ConfigError, OSError) as exc:
                self._metrics.reloads.labels("failed").inc()
                self.error = str(exc)
                raise
            previous = self.current
            self.current = router
            self.error = None
            self._metrics.reloads.labels("ok").inc()
            self._metrics.model_loaded(router.version)
        log.info("router %s loaded from %s (previous: %s)", router.version, target, previous.version if previous else None)
        return router

    def reload_logged(self) -> bool:
        """`reload`, logging instead of raising (SIGHUP, the watcher, the start-up load)."""
        try:
            self.reload()
            return True
        except (ArtifactError, ConfigError, OSError) as exc:
            kept = f"still serving {self.current.version}" if self.current else "no router loaded"
            log.error("router load failed (%s): %s", kept, exc)
            return False

    def reload_if_changed(self) -> bool:
        """Reload when metadata.json changed since the last attempt (a failed attempt waits for the next change)."""
        target = self.model_dir
        if target is None:
            return False
        sig = _signature(target)
        if sig is None or sig == self._seen:
            return False
        return self.reload_logged()


def _signature(model_dir: Path) -> tuple[int, int, int] | None:
    try:
        st = (Path(model_dir) / "metadata.json").stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------- one call


@dataclass
class _Attempt:
    model: str
    status: int
    usage: Usage | None = None
    cost: float | None = None
    response_model: str | None = None


@dataclass
class _Call:
    request_id: str
    body: dict[str, Any]
    raw: bytes
    requested: str
    stream: bool
    mode: str
    in_headers: Mapping[str, str]
    started: float
    router: Router | None = None
    decision: RoutingDecision | None = None
    reason: str = REASON_PASSTHROUGH
    target: str = ""
    attempts: list[_Attempt] = field(default_factory=list)
    escalated: str | None = None
    fallback: str | None = None
    final: _Attempt | None = None
    finished: bool = False
    pending: asyncio.Task[None] | None = None  # observe mode: the decision, computed while the upstream answers

    def payload(self, model: str) -> bytes:
        """The body for `model`: the client's bytes when unchanged, else the same JSON with `model` replaced."""
        if model == self.requested:
            return self.raw
        body = dict(self.body)
        body["model"] = model
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @property
    def routing(self) -> bool:
        """Route mode with a decision: the target may differ from what the client asked."""
        return self.mode == "route" and self.decision is not None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSONError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJSONError(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequestError("'model' must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array", param="messages")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise BadRequestError("'stream' must be a boolean", param="stream")
    return body


def request_tags(headers: Mapping[str, str], body: Mapping[str, Any]) -> list[str] | None:
    """Routing tags: the `x-router-tags: a,b` header, else `metadata.router_tags` ("a,b") in the body."""
    text = headers.get("x-router-tags")
    if text is None:
        metadata = body.get("metadata")
        value = metadata.get("router_tags") if isinstance(metadata, Mapping) else None
        text = value if isinstance(value, str) else None
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def log_text(messages: Any) -> str:
    """What the decision log hashes: the messages as compact key-sorted JSON (as router-serve does)."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _error_response(err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers or None)


def _upstream_message(content: bytes) -> str | None:
    try:
        data = json.loads(content)
    except ValueError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    return msg if isinstance(msg, str) else None


def _response_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS}


def _client_error(resp: httpx.Response, content: bytes) -> Response:
    """An upstream 4xx (429 included) passed through: its status, its error body, its retry-after."""
    headers = _response_headers(resp.headers)
    try:
        data = json.loads(content)
        ok = isinstance(data, dict) and isinstance(data.get("error"), dict)
    except ValueError:
        ok = False
    if ok:
        headers["content-type"] = "application/json"
        return Response(content, status_code=resp.status_code, headers=headers)
    text = content.decode("utf-8", "replace")[:500] or resp.reason_phrase
    body = error_body(f"upstream answered {resp.status_code}: {text}", "upstream_error", f"upstream_{resp.status_code}")
    headers.pop("content-type", None)
    return JSONResponse(body, status_code=resp.status_code, headers=headers)


# ---------------------------------------------------------------- streaming


class _UsageScanner:
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


class _RelayResponse(StreamingResponse):
    """Starlette's StreamingResponse over the upstream's SSE bytes; always closes the upstream and
    accounts the call when it ends, whether the stream completed, broke, or the client left."""

    def __init__(
        self,
        upstream: httpx.Response,
        on_close: Callable[[bool, bool, _UsageScanner], Awaitable[None]],
        headers: Mapping[str, str],
    ) -> None:
        self._upstream = upstream
        self._on_close = on_close
        self._scanner = _UsageScanner()
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
            log.warning("upstream stream broke off: %s", exc.__class__.__name__)
            return
        self._completed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()
                await self._on_close(self._completed, self._interrupted, self._scanner)


# ---------------------------------------------------------------- the gateway


class Gateway:
    """Config, router, HTTP client, prices, metrics and decision log of one gateway app."""

    def __init__(self, config: GatewayConfig, *, router: Router | None = None, prices: PriceTable | None = None) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.holder = RouterHolder(config, self.metrics, router)
        self.prices = prices or PriceTable.load(config.prices)
        self.decision_log = (
            DecisionLogWriter(config.decision_log, include_prompt=config.log_prompts, prompt_hash_key=config.prompt_hash_key)
            if config.decision_log
            else None
        )
        self._client: httpx.AsyncClient | None = None
        self._aliases = frozenset(a.lower() for a in config.aliases)
        self._routes = {k.lower(): v for k, v in config.routes.items()}  # routable name -> candidates (N-model)
        # Router.predict is CPU-bound: more threads than cores only adds switching (created lazily:
        # a limiter belongs to the event loop that first uses it).
        self._predict_slots = max(1, os.cpu_count() or 1)
        self._limiter: anyio.CapacityLimiter | None = None
        self._chat_urls: dict[str, httpx.URL] = {}
        self._batcher: Batcher | None = None  # with config.batching: started and closed by the lifespan
        self.shadow = self._make_shadow() if config.shadow is not None else None

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def batcher(self) -> Batcher | None:
        """The dynamic batcher while the app runs with `batching` (its stats are the proof of use)."""
        return self._batcher

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the gateway's HTTP client is not open (the app's lifespan has not started)")
        return self._client

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        t = self.config.timeouts
        limits = httpx.Limits(max_connections=self.config.max_connections, max_keepalive_connections=self.config.max_connections)
        timeout = httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool)
        # One client is shared by every caller: it must never store an upstream's Set-Cookie and
        # replay it on someone else's request.
        no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, cookies=no_cookies) as client:
            self._client = client
            if self.config.batching is not None:
                self._batcher = Batcher(self.config.batching)
            async with anyio.create_task_group() as tg:
                if self.holder.current is None:
                    tg.start_soon(self._initial_load)
                if self.config.watch_interval is not None:
                    tg.start_soon(self._watch, self.config.watch_interval)
                if self.shadow is not None:
                    tg.start_soon(self.shadow.run)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        self._client = None
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        if self.decision_log is not None:
            self.decision_log.close()

    async def _initial_load(self) -> None:
        await anyio.to_thread.run_sync(self.holder.reload_logged, abandon_on_cancel=True)

    async def _watch(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            await anyio.to_thread.run_sync(self.holder.reload_if_changed, abandon_on_cancel=True)

    def request_reload(self) -> None:
        """Reload in a background thread (safe from a signal handler)."""
        threading.Thread(target=self.holder.reload_logged, name="gateway-reload", daemon=True).start()

    # --- shadow grading (router_model/labelling, docs/labelling.md) ------------------------
    def _make_shadow(self) -> Any:
        from router_model.labelling.shadow import ShadowGrader
        from router_model.labelling.upstream import ChatCaller, RetryPolicy

        assert self.config.shadow is not None
        retry = RetryPolicy(retries=self.config.shadow.retries)

        def make_caller(in_headers: Mapping[str, str]) -> ChatCaller:
            return ChatCaller(
                lambda: self.client, url_for=lambda m: str(self._chat_url(self.config.upstream_for(m))),
                headers_for=lambda m: self._out_headers(in_headers, self.config.upstream_for(m)),
                prices=self.prices, retry=retry,
            )

        return ShadowGrader(self.config.shadow, make_caller=make_caller, metrics=self.metrics)

    def _offer_shadow(self, call: _Call, content: bytes | None) -> None:
        """After a routed answer is complete: hand it to shadow grading (never waits; see ShadowGrader.offer)."""
        router, final = call.router, call.final
        if self.shadow is None or router is None or call.decision is None or final is None:
            return
        if final.model not in (router.cheap_model, router.strong_model) or router.cheap_model == router.strong_model:
            return
        from router_model.labelling.shadow import ShadowJob

        self.shadow.offer(ShadowJob(
            body=call.body, tags=tuple(request_tags(call.in_headers, call.body) or ()), headers=dict(call.in_headers),
            served_model=final.model, served_content=content, cheap_model=router.cheap_model,
            strong_model=router.strong_model, artifact_version=router.version, mode=call.mode, request_id=call.request_id,
        ))

    # --- helpers -------------------------------------------------------------------------
    def _out_headers(self, headers: Mapping[str, str], upstream: Upstream) -> dict[str, str]:
        key = upstream.api_key()
        out: dict[str, str] = {}
        has_type = False
        for k, v in headers.items():
            low = k.lower()
            if low in _DROP_REQUEST_HEADERS or low.startswith("x-router-") or (key and low == "authorization"):
                continue
            has_type = has_type or low == "content-type"
            out[k] = v
        if key:
            out["authorization"] = f"Bearer {key}"
        out["accept-encoding"] = "identity"
        if not has_type:
            out["content-type"] = "application/json"
        return out

    def _chat_url(self, upstream: Upstream) -> httpx.URL:
        """`{base_url}/chat/completions`, parsed once per upstream (not for every request)."""
        url = self._chat_urls.get(upstream.base_url)
        if url is None:
            url = self._chat_urls[upstream.base_url] = httpx.URL(f"{upstream.base_url}/chat/completions")
        return url

    def label(self, model: str) -> str:
        """`model` as a metric label: known names only (priced, configured, the router's pair), else "other"."""
        router = self.holder.current
        if model in self.prices or model in self.config.models or (router is not None and model in (router.cheap_model, router.strong_model)) \
                or (router is not None and model in getattr(router, "models", ())):
            return model
        return "other"

    def _price(self, model: str, usage: Usage | None) -> float | None:
        return usage_cost(self.prices, model, usage) if usage is not None else None

    def _record_usage(self, attempt: _Attempt) -> None:
        usage = attempt.usage
        if usage is None:
            return
        m = self.metrics
        label = self.label(attempt.model)
        m.tokens.labels(label, "prompt").inc(usage.prompt_tokens)
        m.tokens.labels(label, "completion").inc(usage.completion_tokens)
        m.tokens.labels(label, "cached").inc(usage.cached_tokens)
        attempt.cost = self._price(attempt.model, usage)
        if attempt.cost is not None:
            m.cost.labels(label).inc(attempt.cost)

    def _router_headers(self, call: _Call) -> dict[str, str]:
        served = call.final.model if call.final else call.target
        h = {"x-router-model": served, "x-router-reason": call.reason, "x-router-mode": call.mode,
             "x-router-request-id": call.request_id}
        d = call.decision
        if d is not None:
            h["x-router-decision"] = d.model
            h["x-router-artifact"] = d.artifact_version
            if d.p_cheap_ok is not None:
                h["x-router-p-cheap-ok"] = f"{d.p_cheap_ok:.6f}"
        if call.escalated:
            h["x-router-escalated"] = call.escalated
        if call.fallback:
            h["x-router-fallback"] = call.fallback
        return h

    # --- deciding ------------------------------------------------------------------------
    def _routed_model(self, requested: str, router: Router | None) -> bool:
        name = requested.strip().lower()
        if name in self._aliases or name in self._routes:
            return True
        return router is not None and name == router.strong_model.lower()

    def _resolve(self, call: _Call) -> Router | None:
        """Set the model the call goes to without a decision; the router when one is needed.

        Models the router does not own pass through; an alias or the router's strong model needs
        a decision (in observe mode only for the log: the app's model is forwarded either way).
        """
        router = self.holder.current
        name = call.requested.strip().lower()
        is_alias = name in self._aliases or name in self._routes
        if not is_alias and (router is None or name != router.strong_model.lower()):
            call.target = call.requested
            call.reason = REASON_PASSTHROUGH if router is not None else REASON_NO_ROUTER
            return None
        if router is None:
            detail = f": {self.holder.error}" if self.holder.error else " yet"
            raise RouterNotReadyError(f"model {call.requested!r} needs the router, which is not loaded{detail}")
        call.router = router
        call.target = router.strong_model if is_alias else call.requested  # what the app gets without routing
        cands = self._routes.get(name)
        if cands and call.target not in cands:  # a route's own candidates only: the priciest-ranked one
            models = getattr(router, "models", ())
            call.target = max(cands, key=lambda m: models.index(m) if m in models else -1)
        return router

    async def _decided(self, call: _Call) -> None:
        """Wait for an observe-mode decision started beside the upstream call (no-op otherwise)."""
        task, call.pending = call.pending, None
        if task is not None:
            await task

    async def _decide(self, call: _Call, router: Router) -> None:
        """Set the call's decision, and in route mode its target."""
        unrouted = call.target
        tags = request_tags(call.in_headers, call.body)
        started = time.perf_counter()
        try:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self._predict_slots)
            batcher = self._batcher
            # A route's candidates restrict an N-model router's choice; a pair router ignores routes.
            cands = self._routes.get(call.requested.strip().lower()) if hasattr(router, "allowed") else None
            if batcher is not None:  # tokenise in a thread, then share a graph run with concurrent calls
                future = await anyio.to_thread.run_sync(
                    lambda: batcher.submit(router, call.body["messages"], tags=tags, candidates=cands),
                    limiter=self._limiter,
                )
                decision = await asyncio.wrap_future(future)
            elif cands is not None:  # an N-model router choosing among this route's candidates
                decision = await anyio.to_thread.run_sync(
                    lambda: router.predict(call.body["messages"], tags=tags, candidates=cands),  # type: ignore[call-arg]
                    limiter=self._limiter
                )
            else:
                decision = await anyio.to_thread.run_sync(
                    lambda: router.predict(call.body["messages"], tags=tags), limiter=self._limiter
                )
        except InvalidRequestError as exc:
            # The router cannot read this request (e.g. a part type it does not know): fail open.
            log.info("request %s not routable (%s); forwarding to %s", call.request_id, exc, unrouted)
            call.reason = REASON_UNROUTABLE
            call.target = unrouted
            self.metrics.decisions.labels(self.label(unrouted), REASON_UNROUTABLE, call.mode).inc()
            return
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        call.decision = decision
        call.reason = decision.reason
        self.metrics.decisions.labels(decision.model, decision.reason, call.mode).inc()
        self.metrics.observe_drift(router, decision)
        call.target = decision.model if call.mode == "route" else unrouted

    def _can_fall_back(self, call: _Call, model: str) -> bool:
        return (
            self.config.fallback_to_strong and call.routing and call.router is not None
            and model == call.router.cheap_model and model != call.router.strong_model
        )

    # --- upstream ------------------------------------------------------------------------
    async def _send(self, call: _Call, model: str, *, stream: bool) -> httpx.Response:
        """Send the call to `model`'s upstream; the response is unread when `stream`."""
        upstream = self.config.upstream_for(model)
        request = self.client.build_request(
            "POST", self._chat_url(upstream), content=call.payload(model),
            headers=self._out_headers(call.in_headers, upstream),
        )
        try:
            resp = await self.client.send(request, stream=stream)
        except httpx.TimeoutException:
            self.metrics.upstream_errors.labels("timeout").inc()
            self.metrics.upstream_requests.labels(self.label(model), "timeout").inc()
            call.attempts.append(_Attempt(model, 504))
            raise UpstreamTimeoutError(f"the upstream did not answer in time for model {model!r}") from None
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels("connect").inc()
            self.metrics.upstream_requests.labels(self.label(model), "unreachable").inc()
            call.attempts.append(_Attempt(model, 502))
            raise UpstreamError(f"cannot reach the upstream for model {model!r} ({exc.__class__.__name__})") from None
        self.metrics.upstream_requests.labels(self.label(model), str(resp.status_code)).inc()
        if resp.status_code >= 500:
            self.metrics.upstream_errors.labels("status_5xx").inc()
        return resp

    async def _send_with_fallback(self, call: _Call, *, stream: bool) -> tuple[httpx.Response, bytes | None, str]:
        """Send to the target; on a cheap-model 5xx/timeout/connect failure retry once on the strong model.

        Returns the response, its body (None for a 200 stream, which is left open) and the model
        that answered. A 5xx that is not retried becomes UpstreamFailedError (502).
        """
        model = call.target
        while True:
            fall_back = self._can_fall_back(call, model)
            try:
                resp = await self._send(call, model, stream=stream)
            except (UpstreamError, UpstreamTimeoutError) as exc:
                if not fall_back:
                    raise
                cause = exc.code
            else:
                content: bytes | None = None
                if not stream:
                    content = resp.content
                elif resp.status_code != 200:
                    try:
                        content = await resp.aread()
                    except httpx.HTTPError:
                        content = b""
                    finally:
                        await resp.aclose()
                if resp.status_code < 500:
                    return resp, content, model
                call.attempts.append(_Attempt(model, resp.status_code))
                if not fall_back:
                    detail = _upstream_message(content or b"")
                    raise UpstreamFailedError(
                        f"the upstream answered {resp.status_code} for model {model!r}" + (f": {detail}" if detail else "")
                    )
                cause = f"status_{resp.status_code}"
            assert call.router is not None
            call.fallback = cause
            self.metrics.fallbacks.labels(cause).inc()
            log.info("request %s: %s failed (%s); falling back to %s", call.request_id, model, cause, call.router.strong_model)
            model = call.router.strong_model

    # --- accounting ----------------------------------------------------------------------
    def _finish(self, call: _Call, status: int, *, completed: bool = True) -> None:
        if call.finished:
            return
        call.finished = True
        m = self.metrics
        m.requests.labels(CHAT_ENDPOINT, str(status)).inc()
        m.duration.labels(CHAT_ENDPOINT, str(call.stream).lower()).observe(time.perf_counter() - call.started)
        d, router = call.decision, call.router
        if d is None or router is None:
            return
        final = call.final
        spent = sum(a.cost or 0.0 for a in call.attempts)
        priced = bool(call.attempts) and all(a.cost is not None or a.usage is None for a in call.attempts)
        usage = final.usage if final is not None else None
        baseline = self._price(router.strong_model, usage)
        cost: float | None = spent if priced and usage is not None else None
        saved: float | None = None
        if baseline is not None and cost is not None:
            if call.mode == "route":
                saved = baseline - cost
            else:  # what routing would have saved on the same tokens
                routed = self._price(d.model, usage)
                saved = baseline - routed if routed is not None else None
        if cost is not None and baseline is not None and saved is not None:
            m.routed_cost.labels(call.mode).inc(cost)
            m.baseline_cost.labels(call.mode).inc(baseline)
            m.add_saving(call.mode, saved)
        if self.decision_log is None:
            return
        record = decision_record(
            d, request_id=call.request_id, prompt=log_text(call.body.get("messages")),
            cheap_model=router.cheap_model, strong_model=router.strong_model,
        )
        record.update(
            source="gateway",
            mode=call.mode,
            requested_model=call.requested,
            served_model=final.model if final else call.target,
            upstream_model=final.response_model if final else None,
            stream=call.stream,
            status=status,
            completed=completed,
            escalated=call.escalated,
            fallback=call.fallback,
            attempts=[{"model": a.model, "status": a.status, "cost_usd": a.cost} for a in call.attempts],
            usage=usage.to_dict() if usage else None,
            cost_usd=cost,
            baseline_cost_usd=baseline,
            saved_usd=saved,
            saved_is_estimate=call.mode != "route",
        )
        self.decision_log.write(record)
        m.log_errors.set(self.decision_log.errors)

    # --- endpoints -----------------------------------------------------------------------
    async def _read_body(self, request: HTTPRequest) -> bytes:
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise BodyTooLargeError(f"the request body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError(f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def chat_completions(self, request: HTTPRequest) -> Response:
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        call: _Call | None = None
        try:
            raw = await self._read_body(request)
            body = _parse_body(raw)
            mode = self.config.mode
            forced = request.headers.get("x-router-mode")
            if forced is not None:
                forced = forced.strip().lower()
                if forced not in ("observe", "route"):
                    raise BadRequestError(f"x-router-mode must be 'observe' or 'route', got {forced!r}", param="x-router-mode")
                if forced == "observe":
                    mode = "observe"
            call = _Call(
                request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
                body=body, raw=raw, requested=body["model"], stream=bool(body.get("stream")), mode=mode,
                in_headers=request.headers, started=started,
            )
            router = self._resolve(call)
            if router is not None:
                if call.mode == "observe":
                    # The forwarded model does not depend on the decision: decide while the upstream answers.
                    call.pending = asyncio.ensure_future(self._decide(call, router))
                else:
                    await self._decide(call, router)
            if call.stream:
                return await self._stream(call)
            return await self._complete(call)
        except GatewayError as err:
            out = _error_response(err)
            if call is not None:
                await self._decided(call)
                self._finish(call, err.status, completed=False)
                if call.target:
                    out.headers.update(self._router_headers(call))
            else:
                self.metrics.requests.labels(CHAT_ENDPOINT, str(err.status)).inc()
            return out
        finally:
            self.metrics.in_flight.dec()

    async def _complete(self, call: _Call) -> Response:
        resp, content, model = await self._send_with_fallback(call, stream=False)
        assert content is not None
        await self._decided(call)
        if resp.status_code >= 400:
            return self._client_error(call, model, resp, content)
        data = self._accept(call, model, resp, content)
        router = call.router
        if (
            call.routing and router is not None and model == router.cheap_model != router.strong_model
            and self.config.checks.any
        ):
            check = failed_check(call.body, data, self.config.checks)
            if check is not None:
                resp, content = await self._escalate(call, router, check, resp, content)
        headers = _response_headers(resp.headers)
        headers.update(self._router_headers(call))
        self._finish(call, 200)
        # Shadow grading is offered only once the answer has been sent (a background task).
        after = BackgroundTask(self._offer_shadow, call, content) if self.shadow is not None else None
        return Response(content, status_code=200, headers=headers, background=after)

    async def _escalate(
        self, call: _Call, router: Router, check: str, resp: httpx.Response, content: bytes
    ) -> tuple[httpx.Response, bytes]:
        """Ask the strong model once; its answer if it is good, else (with a warning) the cheap one."""
        call.escalated = check
        self.metrics.escalations.labels(check).inc()
        strong = router.strong_model
        log.info("request %s: the cheap answer failed the %s check; asking %s", call.request_id, check, strong)
        try:
            answer = await self._send(call, strong, stream=False)
            if answer.status_code != 200:
                call.attempts.append(_Attempt(strong, answer.status_code))
                raise UpstreamFailedError(f"the strong model answered {answer.status_code}")
            self._accept(call, strong, answer, answer.content)
            return answer, answer.content
        except GatewayError as exc:  # the cheap answer is better than none
            log.warning("request %s: escalation failed (%s); returning the cheap answer", call.request_id, exc)
            call.escalated = f"{check}:failed"
            return resp, content

    def _client_error(self, call: _Call, model: str, resp: httpx.Response, content: bytes) -> Response:
        attempt = _Attempt(model, resp.status_code)
        call.attempts.append(attempt)
        call.final = attempt
        out = _client_error(resp, content)
        out.headers.update(self._router_headers(call))
        self._finish(call, resp.status_code, completed=False)
        return out

    def _accept(self, call: _Call, model: str, resp: httpx.Response, content: bytes) -> dict[str, Any]:
        """Parse a 200 answer, record its usage and cost as an attempt; 502 when it is not a JSON object."""
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.metrics.upstream_errors.labels("invalid_response").inc()
            call.attempts.append(_Attempt(model, 502))
            raise UpstreamInvalidError(f"the upstream's answer for model {model!r} is not a JSON object")
        attempt = _Attempt(model, resp.status_code, Usage.from_response(data.get("usage")))
        attempt.response_model = data.get("model") if isinstance(data.get("model"), str) else None
        self._record_usage(attempt)
        call.attempts.append(attempt)
        call.final = attempt
        return data

    async def _stream(self, call: _Call) -> Response:
        resp, content, model = await self._send_with_fallback(call, stream=True)
        await self._decided(call)
        if resp.status_code != 200:
            return self._client_error(call, model, resp, content or b"")
        attempt = _Attempt(model, 200)
        call.attempts.append(attempt)
        call.final = attempt

        async def on_close(completed: bool, interrupted: bool, scanner: _UsageScanner) -> None:
            attempt.usage = scanner.usage
            attempt.response_model = scanner.model
            self._record_usage(attempt)
            if interrupted:
                self.metrics.upstream_errors.labels("stream_interrupted").inc()
            elif not completed:
                self.metrics.disconnects.inc()
                log.info("request %s: the client left the stream; upstream request closed", call.request_id)
            self._finish(call, 200, completed=completed)
            if completed and not interrupted:
                self._offer_shadow(call, None)

        headers = _response_headers(resp.headers)
        headers.update(self._router_headers(call))
        return _RelayResponse(resp, on_close, headers)

    async def models(self, request: HTTPRequest) -> Response:
        upstream = self.config.upstream
        status = 502
        try:
            try:
                resp = await self.client.get(f"{upstream.base_url}/models", headers=self._out_headers(request.headers, upstream))
            except httpx.TimeoutException:
                raise UpstreamTimeoutError("the upstream did not answer in time") from None
            except httpx.HTTPError as exc:
                raise UpstreamError(f"cannot reach the upstream ({exc.__class__.__name__})") from None
            status = resp.status_code
            if status >= 500:
                status = 502
                raise UpstreamFailedError(f"the upstream answered {resp.status_code}")
            if status >= 400:
                return _client_error(resp, resp.content)
            try:
                data = resp.json()
            except ValueError:
                status = 502
                raise UpstreamInvalidError("the upstream's model list is not JSON") from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                have = {m.get("id") for m in data["data"] if isinstance(m, dict)}
                for alias in sorted(self.config.aliases):
                    if alias not in have:
                        data["data"].append({"id": alias, "object": "model", "created": 0, "owned_by": "router-gateway"})
            return JSONResponse(data, headers=_response_headers(resp.headers) | {"content-type": "application/json"})
        except GatewayError as err:
            status = err.status
            return _error_response(err)
        finally:
            self.metrics.requests.labels("models", str(status)).inc()

    async def healthz(self, request: HTTPRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: HTTPRequest) -> Response:
        router = self.holder.current
        if router is None:
            detail = f": {self.holder.error}" if self.holder.error else " yet"
            return _error_response(RouterNotReadyError(f"no router is loaded{detail}"))
        upstream = self.config.upstream
        try:
            resp = await self.client.get(
                f"{upstream.base_url}/models", headers=self._out_headers(request.headers, upstream),
                timeout=self.config.timeouts.readiness,
            )
        except httpx.HTTPError as exc:
            return _error_response(UpstreamError(f"the upstream does not answer ({exc.__class__.__name__})"))
        if resp.status_code >= 500:
            return _error_response(UpstreamFailedError(f"the upstream answers {resp.status_code}"))
        return JSONResponse(
            {"status": "ready", "artifact_version": router.version, "cheap_model": router.cheap_model,
             "strong_model": router.strong_model, "mode": self.config.mode, "upstream_status": resp.status_code}
        )

    async def metrics_endpoint(self, request: HTTPRequest) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        if self.decision_log is not None:
            self.metrics.log_errors.set(self.decision_log.errors)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------- the app


async def _http_error(request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: ("not_found", "invalid_request_error"), 405: ("method_not_allowed", "invalid_request_error")}
    code, type_ = codes.get(exc.status_code, (f"http_{exc.status_code}", "invalid_request_error"))
    return JSONResponse(error_body(str(exc.detail), type_, code), status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: HTTPRequest, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal gateway error", "server_error", "internal_error"), status_code=500)


def create_app(config: GatewayConfig, *, router: Router | None = None, prices: PriceTable | None = None) -> Starlette:
    """The gateway as an ASGI app; `app.state.gateway` is its `Gateway`. Pass `router` to skip loading."""
    gw = Gateway(config, router=router, prices=prices)
    routes = [
        Route("/v1/chat/completions", gw.chat_completions, methods=["POST"]),
        Route("/chat/completions", gw.chat_completions, methods=["POST"]),
        Route("/v1/models", gw.models, methods=["GET"]),
        Route("/healthz", gw.healthz, methods=["GET"]),
        Route("/readyz", gw.readyz, methods=["GET"]),
        Route("/metrics", gw.metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=gw.lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.gateway = gw
    return app
