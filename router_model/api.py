"""The process-wide router behind `predict_model()`.

The model directory comes from `configure(model_dir=...)` or, on first use, from the
ROUTER_MODEL_DIR environment variable (ROUTER_MODEL_GRAPH picks `int8` or `fp32`,
ROUTER_MODEL_THREADS the onnxruntime threads; names in router_model.settings, shared with
router-serve). Loading happens once, under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from router_model.decision import RoutingDecision, RoutingRules
from router_model.errors import ConfigError
from router_model.request import Request
from router_model.router import Router
from router_model.settings import ENV_GRAPH, ENV_MODEL_DIR, ENV_THREADS, env

_lock = threading.Lock()
_router: Router | None = None


def configure(
    model_dir: str | Path | None = None,
    *,
    graph: str | None = None,
    rules: RoutingRules | None = None,
    threads: int | None = None,
) -> Router:
    """Load (or replace) the process-wide router; returns it."""
    global _router
    model_dir = model_dir or env(ENV_MODEL_DIR, str, None)
    if not model_dir:
        raise ConfigError(f"no model directory: call router_model.configure(model_dir=...) or set {ENV_MODEL_DIR}")
    graph = graph or env(ENV_GRAPH, str, None) or None
    if threads is None:
        threads = env(ENV_THREADS, _optional_int, None)
    router = Router.load(model_dir, graph=graph, rules=rules, threads=threads)
    with _lock:
        _router = router
    return router


_load_lock = threading.Lock()


def _optional_int(text: str) -> int | None:
    return int(text) if text else None  # set but empty: as if unset


def get_router() -> Router:
    """The process-wide router, loaded on first use from the environment."""
    router = _router
    if router is None:
        with _load_lock:
            router = _router if _router is not None else configure()
    return router


def predict_model(request: Request, *, tags: Sequence[str] | None = None) -> RoutingDecision:
    """Route one request with the process-wide router: which model, and how sure."""
    return get_router().predict(request, tags=tags)
