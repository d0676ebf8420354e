"""An OpenAI-compatible routing gateway in front of an OpenAI-compatible upstream.

`router-gateway --model-dir DIR --upstream URL` serves `POST /v1/chat/completions` and
`POST /v1/responses` (streamed or not, routed), `GET /v1/models`, `/healthz`, `/readyz` and
`/metrics`, and passes every other method and path under `/v1` through to the upstream unchanged. A request for the router's strong
model (or a configured alias such as `auto`) is decided by `Router.predict`; in observation mode
(the default) the decision is only logged, in route mode the body is forwarded with `model`
replaced. See docs/gateway.md.

Needs the `gateway` extra (starlette, uvicorn, httpx, prometheus_client, jsonschema). Nothing
in the core package imports this one, so `import router_model` stays light.
"""

from __future__ import annotations

from router_model.gateway.config import (
    Checks,
    GatewayConfig,
    Timeouts,
    Upstream,
    load_config,
)
from router_model.gateway.errors import GatewayError

__all__ = [
    "Checks",
    "GatewayConfig",
    "GatewayError",
    "Timeouts",
    "Upstream",
    "create_app",
    "load_config",
]


def __getattr__(name: str):  # create_app pulls in starlette/httpx; import it on first use
    if name == "create_app":
        from router_model.gateway.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
