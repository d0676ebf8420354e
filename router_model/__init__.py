"""router-model: decide per LLM request whether the cheap model is good enough.

`predict_model(request)` routes with a process-wide router loaded lazily from the directory in
the ROUTER_MODEL_DIR environment variable. Heavy imports (onnxruntime) happen on first use, so
importing this package stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ConfigError",
    "InvalidRequestError",
    "Router",
    "RouterError",
    "RoutingDecision",
    "RoutingRules",
    "configure",
    "predict_model",
]

_LAZY = {
    "Router": "router_model.router",
    "RoutingDecision": "router_model.decision",
    "RoutingRules": "router_model.decision",
    "RouterError": "router_model.errors",
    "ArtifactError": "router_model.errors",
    "InvalidRequestError": "router_model.errors",
    "ConfigError": "router_model.errors",
    "predict_model": "router_model.api",
    "configure": "router_model.api",
}

if TYPE_CHECKING:  # pragma: no cover
    from router_model.api import configure, predict_model
    from router_model.decision import RoutingDecision, RoutingRules
    from router_model.errors import ArtifactError, ConfigError, InvalidRequestError, RouterError
    from router_model.router import Router


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'router_model' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
