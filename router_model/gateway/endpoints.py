"""GET /v1/models (the upstream's list plus the aliases), /healthz, /readyz and /metrics."""

from __future__ import annotations

import json

import anyio
import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.errors import (
    GatewayError,
    RouterNotReadyError,
    UpstreamError,
    UpstreamFailedError,
    UpstreamInvalidError,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
)
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.routed import error_response
from router_model.gateway.upstream import UpstreamSender, client_error, read_capped, response_headers
from router_model.serving.holder import ModelHolder


class InfoEndpoints:
    """The endpoints that describe the gateway rather than forward a call."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, *, holder: ModelHolder, sender: UpstreamSender) -> None:
        self.config = config
        self.metrics = metrics
        self.holder = holder
        self.sender = sender

    async def models(self, request: HTTPRequest) -> Response:
        upstream = self.config.upstream
        status = 502
        try:
            resp, content = await self._get_models(request, upstream)
            status = resp.status_code
            if status >= 500:
                status = 502
                raise UpstreamFailedError(f"the upstream answered {resp.status_code}")
            if status >= 400:
                return client_error(resp, content)
            try:
                data = json.loads(content)
            except (ValueError, RecursionError):
                status = 502
                raise UpstreamInvalidError("the upstream's model list is not JSON") from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                have = {m.get("id") for m in data["data"] if isinstance(m, dict)}
                for alias in sorted(self.config.aliases):
                    if alias not in have:
                        data["data"].append({"id": alias, "object": "model", "created": 0, "owned_by": "router-gateway"})
            return JSONResponse(data, headers=response_headers(resp.headers) | {"content-type": "application/json"})
        except GatewayError as err:
            status = err.status
            return error_response(err)
        finally:
            self.metrics.requests.labels("models", str(status)).inc()

    async def _get_models(self, request: HTTPRequest, upstream: Upstream) -> tuple[httpx.Response, bytes]:
        """The upstream's GET /models and its body: at most `max_response_bytes`, within `timeouts.total`."""
        client = self.sender.client
        limit = self.config.max_response_bytes
        try:
            with anyio.fail_after(self.config.timeouts.total):
                resp = await client.send(client.build_request(
                    "GET", f"{upstream.base_url}/models", headers=self.sender.out_headers(request.headers, upstream),
                ), stream=True)
                try:
                    content, over = await read_capped(resp, limit)
                finally:
                    with anyio.CancelScope(shield=True):
                        await resp.aclose()
        except (httpx.TimeoutException, TimeoutError):
            raise UpstreamTimeoutError("the upstream did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach the upstream ({exc.__class__.__name__})") from None
        if over and resp.status_code < 400:
            raise UpstreamTooLargeError(f"the upstream's model list is larger than max_response_bytes ({limit} bytes)")
        return resp, content

    async def healthz(self, request: HTTPRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: HTTPRequest) -> Response:
        router = self.holder.router
        if router is None:
            detail = f": {self.holder.error}" if self.holder.error else " yet"
            return error_response(RouterNotReadyError(f"no router is loaded{detail}"))
        upstream = self.config.upstream
        client = self.sender.client
        try:
            with anyio.fail_after(self.config.timeouts.readiness):  # the probe as a whole; its body is not read
                resp = await client.send(client.build_request(
                    "GET", f"{upstream.base_url}/models", headers=self.sender.out_headers(request.headers, upstream),
                    timeout=self.config.timeouts.readiness,
                ), stream=True)
                with anyio.CancelScope(shield=True):
                    await resp.aclose()
        except TimeoutError:
            return error_response(UpstreamError("the upstream does not answer (ReadTimeout)"))
        except httpx.HTTPError as exc:
            return error_response(UpstreamError(f"the upstream does not answer ({exc.__class__.__name__})"))
        if resp.status_code >= 500:
            return error_response(UpstreamFailedError(f"the upstream answers {resp.status_code}"))
        return JSONResponse(
            {"status": "ready", "artifact_version": router.version, "cheap_model": router.cheap_model,
             "strong_model": router.strong_model, "mode": self.config.mode, "upstream_status": resp.status_code}
        )

    async def metrics_endpoint(self, request: HTTPRequest) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)
