"""The gateway's app factory: shared services built once, small endpoint objects, one lifespan.

`Gateway` owns the config, the metrics, the data plane (router, reloads, decisions, decision
log), the price table, the pooled `httpx.AsyncClient` and shadow grading; the endpoints are
thin objects it wires together. `create_app` wraps it in a Starlette app whose lifespan opens
the client and starts loading the router in the background.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router_model.batching import Batcher
from router_model.cli_args import quiet_http_client_logs
from router_model.cost import PriceTable
from router_model.gateway.accounting import Accounting
from router_model.gateway.affinity import Affinity
from router_model.gateway.anthropic import Messages
from router_model.gateway.call import request_tags  # noqa: F401 - re-exported: the gateway's tag rule
from router_model.gateway.chat import ChatCompletions
from router_model.gateway.config import GatewayConfig
from router_model.gateway.deciding import Decider
from router_model.gateway.endpoints import InfoEndpoints
from router_model.gateway.errors import error_body
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.passthrough import METHODS as PASSTHROUGH_METHODS
from router_model.gateway.passthrough import PassThrough
from router_model.gateway.responses import Responses
from router_model.gateway.tracing import Tracing, TracingMiddleware, inject_trace
from router_model.gateway.upstream import UpstreamSender
from router_model.labelling.shadow import ShadowGrader
from router_model.labelling.upstream import ChatCaller, RetryPolicy
from router_model.router import Router
from router_model.serving.holder import ModelHolder
from router_model.serving.plane import DataPlane

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("router_model.gateway")


class Gateway:
    """The shared services of one gateway app and its lifecycle."""

    def __init__(self, config: GatewayConfig, *, router: Router | None = None, prices: PriceTable | None = None,
                 tracer_provider: TracerProvider | None = None) -> None:
        self.config = config
        self.tracing = Tracing(tracer_provider)  # off without a provider (router_model/gateway/tracing.py)
        self.metrics = GatewayMetrics()
        self.plane = DataPlane(config, self.metrics.serving, router=router)
        self.prices = prices or PriceTable.load(config.prices)
        self._client: httpx.AsyncClient | None = None
        self.accounting = Accounting(config, self.metrics, self.plane, self.prices)
        self.sender = UpstreamSender(config, self.metrics, client=lambda: self.client, label=self.accounting.label)
        self.shadow = self._make_shadow() if config.shadow is not None else None
        self.affinity = Affinity(config, self.metrics)  # conversations keep their model (every routed protocol)
        self.decider = Decider(config, self.plane, label=self.accounting.label, affinity=self.affinity)
        self.chat = ChatCompletions(config, self.metrics, decider=self.decider, sender=self.sender,
                                    accounting=self.accounting, shadow=self.shadow)
        self.responses = Responses(config, self.metrics, decider=self.decider, sender=self.sender,
                                   accounting=self.accounting, shadow=self.shadow)
        self.passthrough = PassThrough(config, self.metrics, sender=self.sender)
        self.messages = Messages(config, self.metrics, decider=self.decider, sender=self.sender,
                                 accounting=self.accounting, shadow=self.shadow)
        self.info = InfoEndpoints(config, self.metrics, holder=self.plane.holder, sender=self.sender)

    @property
    def holder(self) -> ModelHolder:
        return self.plane.holder

    @property
    def batcher(self) -> Batcher | None:
        """The dynamic batcher while the app runs with `batching` (its stats are the proof of use)."""
        return self.plane.batcher

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the gateway's HTTP client is not open (the app's lifespan has not started)")
        return self._client

    def _make_shadow(self) -> ShadowGrader:
        shadow = self.config.shadow
        assert shadow is not None
        retry = RetryPolicy(retries=shadow.retries)
        sender, config = self.sender, self.config

        def make_caller(in_headers: Mapping[str, str]) -> ChatCaller:
            return ChatCaller(
                lambda: self.client, url_for=lambda m: str(sender.chat_url(config.upstream_for(m))),
                headers_for=lambda m: inject_trace(sender.out_headers(in_headers, config.upstream_for(m))),
                prices=self.prices, retry=retry,
            )

        return ShadowGrader(shadow, make_caller=make_caller, metrics=self.metrics)

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
            self.plane.start(background=True)
            async with anyio.create_task_group() as tg:
                if self.shadow is not None:
                    tg.start_soon(self.shadow.run)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        self._client = None
        self.plane.close()
        if self.tracing.enabled:  # the spans still buffered, before the process exits
            await anyio.to_thread.run_sync(self.tracing.flush)

    def request_reload(self) -> None:
        """Reload in a background thread (safe from a signal handler)."""
        threading.Thread(target=self.holder.reload_logged, name="gateway-reload", daemon=True).start()


async def _http_error(request: HTTPRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: ("not_found", "invalid_request_error"), 405: ("method_not_allowed", "invalid_request_error")}
    code, type_ = codes.get(exc.status_code, (f"http_{exc.status_code}", "invalid_request_error"))
    return JSONResponse(error_body(str(exc.detail), type_, code), status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: HTTPRequest, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal gateway error", "server_error", "internal_error"), status_code=500)


def create_app(config: GatewayConfig, *, router: Router | None = None, prices: PriceTable | None = None,
               tracer_provider: TracerProvider | None = None) -> Starlette:
    """The gateway as an ASGI app; `app.state.gateway` is its `Gateway`. Pass `router` to skip loading,
    `tracer_provider` for OpenTelemetry traces of the routed endpoints (docs/operations.md)."""
    quiet_http_client_logs()  # no httpx line per upstream call (docs/gateway.md: nothing per request on success)
    gw = Gateway(config, router=router, prices=prices, tracer_provider=tracer_provider)
    routes = [
        Route("/v1/chat/completions", gw.chat.handle, methods=["POST"]),
        Route("/chat/completions", gw.chat.handle, methods=["POST"]),
        Route("/v1/models", gw.info.models, methods=["GET"]),
        Route("/v1/messages", gw.messages.handle, methods=["POST"]),  # Anthropic Messages API
        Route("/healthz", gw.info.healthz, methods=["GET"]),
        Route("/readyz", gw.info.readyz, methods=["GET"]),
        Route("/metrics", gw.info.metrics_endpoint, methods=["GET"]),
        Route("/v1/responses", gw.responses.handle, methods=["POST"]),
        Route("/responses", gw.responses.handle, methods=["POST"]),
    ]
    # Last, so that every route above wins: any other method and path under /v1 passes through.
    routes.append(Route("/v1/{path:path}", gw.passthrough.handle, methods=PASSTHROUGH_METHODS))
    app = Starlette(
        routes=routes,
        lifespan=gw.lifespan,
        middleware=_tracing_middleware(gw.tracing, routes),
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.gateway = gw
    return app


def _tracing_middleware(tracing: Tracing, routes: list[Route]) -> list[Middleware]:
    """The request spans' middleware over the routed endpoints (none when traces are off: no cost)."""
    if not tracing.enabled:
        return []
    routed = frozenset(r.path for r in routes if "{" not in r.path and r.methods == {"POST"})
    return [Middleware(TracingMiddleware, tracing=tracing, paths=routed)]
