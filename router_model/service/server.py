"""The gRPC server: Router service, standard health checking, reflection, metrics, hot reload.

`create_server(ServerConfig(...))` starts listening at once and loads the artifact on a
background thread; health reports NOT_SERVING (and Route answers UNAVAILABLE) until a model is
loaded and warmed up. The loaded router sits behind one reference that a reload replaces in a
single assignment, so every call runs start to finish on the router it started with.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router_model.artifact import METADATA_FILE
from router_model.decision import RoutingDecision, RoutingRules
from router_model.decision_log import DecisionLogWriter, decision_record, utc_timestamp
from router_model.errors import ArtifactError, ConfigError, InvalidRequestError
from router_model.request import TEXT_PART_TYPES, Request
from router_model.router import Router
from router_model.service.gen.router.v1 import router_pb2, router_pb2_grpc
from router_model.service.metrics import Metrics, serve_metrics

log = logging.getLogger("router_model.service")

SERVICE_NAME: str = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
GRAPHS = ("int8", "fp32")
# Trailing metadata key that names the offending request field on INVALID_ARGUMENT.
FIELD_METADATA_KEY = "router-invalid-field"
INTERNAL_MESSAGE = "internal error"


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_server` needs; `router-serve` builds one from flags and env vars.

    `workers` is the gRPC handler thread count and `threads` onnxruntime's intra-op thread count
    per session (None = Router.load's default); see docs/service.md for the choice on 2 cores.
    `model_dir` may be None: the server then starts NOT_SERVING until a Reload names one.
    `watch_interval` (seconds) polls the model directory's metadata.json and reloads on change.
    """

    model_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 4
    threads: int | None = 1
    max_message_bytes: int = 4 * 1024 * 1024
    max_prompt_chars: int = 1_000_000
    observe: bool = False
    decision_log: Path | None = None
    log_prompts: bool = False
    metrics_port: int | None = None
    graph: str | None = None
    rules: RoutingRules | None = None
    grace_seconds: float = 10.0
    batch_chunk: int = 32
    watch_interval: float | None = None

    def __post_init__(self) -> None:
        if self.model_dir is not None:
            object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.decision_log is not None:
            object.__setattr__(self, "decision_log", Path(self.decision_log))
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be in 0..65535, got {value}")
        for name in ("workers", "max_message_bytes", "max_prompt_chars", "batch_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 or None, got {self.threads}")
        if self.watch_interval is not None and self.watch_interval <= 0:
            raise ConfigError(f"watch_interval must be positive or None, got {self.watch_interval}")
        if self.grace_seconds < 0:
            raise ConfigError(f"grace_seconds must not be negative, got {self.grace_seconds}")
        if self.graph is not None and self.graph not in GRAPHS:
            raise ConfigError(f"graph must be one of {GRAPHS}, got {self.graph!r}")
        if self.observe and self.decision_log is None:
            raise ConfigError("observation mode needs a decision log path (--decision-log)")
        if self.log_prompts and self.decision_log is None:
            raise ConfigError("--log-prompts needs a decision log path (--decision-log)")


@dataclass(frozen=True)
class _Loaded:
    router: Router
    model_dir: Path
    loaded_at: float


@dataclass(frozen=True)
class ReloadResult:
    previous_version: str | None
    artifact_version: str
    model_dir: Path
    load_ms: int


class _Status(Exception):
    """Ends an RPC with a given status code; raised inside handlers, mapped by `_rpc`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ModelHolder:
    """Owns the current router and swaps it atomically on reload."""

    def __init__(self, config: ServerConfig, metrics: Metrics, health_servicer: health.HealthServicer) -> None:
        self._config = config
        self._metrics = metrics
        self._health = health_servicer
        self._model_dir = config.model_dir
        self._current: _Loaded | None = None
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # metadata.json of the last load attempt
        self.ready = threading.Event()

    @property
    def current(self) -> _Loaded | None:
        return self._current

    def require(self) -> _Loaded:
        loaded = self._current
        if loaded is None:
            raise _Status(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet")
        return loaded

    def reload(self, model_dir: Path | str | None = None) -> ReloadResult:
        """Load and verify an artifact beside the serving one, then swap; raise if it fails.

        Raises ArtifactError (bad artifact) or ConfigError (no directory given or configured);
        the serving router is untouched on any failure.
        """
        with self._lock:
            target = Path(model_dir) if model_dir else self._model_dir
            if target is None:
                raise ConfigError("no model directory configured; name one in the Reload request")
            started = time.perf_counter()
            self._seen = _signature(target)
            try:
                router = Router.load(
                    target, graph=self._config.graph, rules=self._config.rules, threads=self._config.threads
                )
            except BaseException:
                self._metrics.count_reload(False)
                raise
            load_ms = round((time.perf_counter() - started) * 1000)
            previous = self._current
            self._current = _Loaded(router, target, time.time())
            self._model_dir = target
            self._metrics.count_reload(True)
            self._metrics.model_loaded(router.version)
            self._health.set("", health_pb2.HealthCheckResponse.SERVING)
            self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            self.ready.set()
        log.info("serving artifact %s from %s (loaded in %d ms)", router.version, target, load_ms)
        return ReloadResult(previous.router.version if previous else None, router.version, target, load_ms)

    def reload_if_changed(self) -> None:
        """Reload when the model directory's metadata.json changed since the last attempt.

        metadata.json is written last (and a retrained directory is swapped in whole), so a new
        one means a complete new artifact. A failed attempt is not retried until it changes again.
        """
        target = self._model_dir
        if target is None or _signature(target) in (None, self._seen):
            return
        try:
            result = self.reload()
            log.info("model directory changed: %s -> %s", result.previous_version, result.artifact_version)
        except (ArtifactError, ConfigError) as e:
            log.error("model directory changed but the new artifact is refused, still serving the previous one: %s", e)


def _signature(model_dir: Path) -> tuple[int, int, int] | None:
    try:
        st = (model_dir / METADATA_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _check_deadline(context: grpc.ServicerContext) -> None:
    """Refuse to start work the caller no longer waits for."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise _Status(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was routed")
    if not context.is_active():
        raise _Status(grpc.StatusCode.CANCELLED, "the call was cancelled")


def _part_dict(part: router_pb2.ContentPart) -> dict[str, Any]:
    out: dict[str, Any] = {"type": part.type}
    if part.type in TEXT_PART_TYPES or part.text:
        out["text"] = part.text
    if part.HasField("image_url"):
        out["image_url"] = {"url": part.image_url.url}
    return out


def to_router_request(req: router_pb2.RouteRequest, max_chars: int) -> Request:
    """Turn the proto request into the router's prompt or chat messages, checking its size."""
    if req.messages:
        if req.prompt:
            raise InvalidRequestError("set either prompt or messages, not both", field="prompt")
        messages: list[dict[str, Any]] = []
        chars = 0
        for i, m in enumerate(req.messages):
            if m.parts:
                if m.content:
                    raise InvalidRequestError("set either content or parts, not both", field=f"messages[{i}].content")
                content: Any = [_part_dict(p) for p in m.parts]
                chars += sum(len(p.text) for p in m.parts)
            else:
                content = m.content
                chars += len(content)
            messages.append({"role": m.role, "content": content})
        if chars > max_chars:
            raise InvalidRequestError(
                f"the messages hold {chars} characters of text, over the limit of {max_chars}", field="messages"
            )
        return messages
    if len(req.prompt) > max_chars:
        raise InvalidRequestError(
            f"the prompt has {len(req.prompt)} characters, over the limit of {max_chars}", field="prompt"
        )
    return req.prompt


def _proto_field(field: str | None) -> str | None:
    # The router reports OpenAI-shaped paths (messages[0].content[1]); the proto calls them parts.
    return field.replace(".content[", ".parts[") if field else field


def _response(
    d: RoutingDecision, request_id: str, latency_us: int, observe: bool
) -> router_pb2.RouteResponse:
    resp = router_pb2.RouteResponse(
        model=d.model,
        confidence=d.confidence,
        reason=d.reason,
        threshold=d.threshold,
        artifact_version=d.artifact_version,
        latency_us=latency_us,
        prompt_tokens=d.prompt_tokens,
        request_id=request_id,
        observe_only=observe,
    )
    if d.p_cheap_ok is not None:
        resp.p_cheap_ok = d.p_cheap_ok
    return resp


def _numeric_metrics(value: Any, prefix: str = "") -> dict[str, float]:
    """Flatten nested metrics into "a.b" keys, keeping numbers only."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_numeric_metrics(v, f"{prefix}{k}."))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and prefix:
        out[prefix[:-1]] = float(value)
    return out


def log_text(request: Request) -> str:
    """The prompt as the decision log hashes (and, if asked, stores) it: the prompt itself, or
    the messages as compact key-sorted JSON."""
    if isinstance(request, str):
        return request
    return json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


Handler = Callable[[Any, Any, grpc.ServicerContext], Any]


def _rpc(name: str) -> Callable[[Handler], Handler]:
    """The one place that turns exceptions into status codes and records per-RPC metrics."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def handler(self: RouterServicer, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            self._metrics.start_rpc()
            code = grpc.StatusCode.OK
            details = ""
            try:
                return fn(self, request, context)
            except _Status as e:
                code, details = e.code, e.details
            except InvalidRequestError as e:
                field = _proto_field(e.field)
                code = grpc.StatusCode.INVALID_ARGUMENT
                details = f"{field}: {e.reason}" if field else e.reason
                if field:
                    context.set_trailing_metadata(((FIELD_METADATA_KEY, field),))
            except Exception:
                ref = uuid.uuid4().hex[:12]
                log.exception("unexpected error in %s (ref %s)", name, ref)
                code, details = grpc.StatusCode.INTERNAL, f"{INTERNAL_MESSAGE} (ref {ref})"
            finally:
                self._metrics.finish_rpc(name, code.name, time.perf_counter() - started)
            context.abort(code, details)

        return handler

    return wrap


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Implements router.v1.Router on top of the current `Router`."""

    def __init__(self, config: ServerConfig, holder: ModelHolder, metrics: Metrics, decision_log: DecisionLogWriter | None) -> None:
        self._config = config
        self._holder = holder
        self._metrics = metrics
        self._decision_log = decision_log

    def _log_decisions(self, items: Sequence[tuple[Request, str, RoutingDecision]], router: Router) -> None:
        self._metrics.count_decisions([(d.model, d.reason) for _, _, d in items])
        if self._decision_log is None:
            return
        ts = utc_timestamp()
        for request, request_id, d in items:
            self._decision_log.write(
                decision_record(
                    d,
                    request_id=request_id,
                    prompt=log_text(request),
                    cheap_model=router.cheap_model,
                    strong_model=router.strong_model,
                    ts=ts,
                )
            )

    @_rpc("Route")
    def Route(self, request: router_pb2.RouteRequest, context: grpc.ServicerContext) -> router_pb2.RouteResponse:
        started = time.perf_counter()
        loaded = self._holder.require()
        routed = to_router_request(request, self._config.max_prompt_chars)
        tags = list(request.tags) or None
        request_id = request.request_id or uuid.uuid4().hex
        _check_deadline(context)
        decision = loaded.router.predict(routed, tags=tags)
        self._log_decisions([(routed, request_id, decision)], loaded.router)
        latency_us = round((time.perf_counter() - started) * 1e6)
        return _response(decision, request_id, latency_us, self._config.observe)

    @_rpc("RouteBatch")
    def RouteBatch(
        self, request: router_pb2.RouteBatchRequest, context: grpc.ServicerContext
    ) -> router_pb2.RouteBatchResponse:
        started = time.perf_counter()
        loaded = self._holder.require()
        routed: list[Request] = []
        for i, item in enumerate(request.requests):
            try:
                routed.append(to_router_request(item, self._config.max_prompt_chars))
            except InvalidRequestError as e:
                raise InvalidRequestError(e.reason, field=f"requests[{i}].{e.field}") from None
        tags = [list(item.tags) or None for item in request.requests]
        ids = [item.request_id or uuid.uuid4().hex for item in request.requests]
        decisions: list[RoutingDecision] = []
        step = self._config.batch_chunk
        for lo in range(0, len(routed), step):
            _check_deadline(context)
            chunk = routed[lo : lo + step]
            try:
                decisions.extend(loaded.router.predict_batch(chunk, tags=tags[lo : lo + step]))
            except InvalidRequestError as e:
                raise InvalidRequestError(e.reason, field=_batch_field(e.field, lo, len(chunk))) from None
        self._log_decisions(list(zip(routed, ids, decisions)), loaded.router)
        latency_us = round((time.perf_counter() - started) * 1e6)
        observe = self._config.observe
        return router_pb2.RouteBatchResponse(
            responses=[_response(d, rid, latency_us, observe) for d, rid in zip(decisions, ids)],
            latency_us=latency_us,
        )

    @_rpc("GetModelInfo")
    def GetModelInfo(
        self, request: router_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> router_pb2.ModelInfo:
        loaded = self._holder.require()
        router = loaded.router
        metadata = struct_pb2.Struct()
        metadata.update(router.metadata)
        loaded_at = timestamp_pb2.Timestamp()
        loaded_at.FromNanoseconds(int(loaded.loaded_at * 1e9))
        return router_pb2.ModelInfo(
            artifact_version=router.version,
            cheap_model=router.cheap_model,
            strong_model=router.strong_model,
            threshold=router.threshold,
            metrics=_numeric_metrics(router.metadata.get("metrics", {})),
            metadata=metadata,
            model_dir=str(loaded.model_dir),
            loaded_at=loaded_at,
            observe_only=self._config.observe,
        )

    @_rpc("Reload")
    def Reload(self, request: router_pb2.ReloadRequest, context: grpc.ServicerContext) -> router_pb2.ReloadResponse:
        try:
            result = self._holder.reload(request.model_dir or None)
        except (ArtifactError, ConfigError) as e:
            log.warning("reload refused, still serving the previous artifact: %s", e)
            raise _Status(grpc.StatusCode.FAILED_PRECONDITION, f"reload refused: {e}") from None
        return router_pb2.ReloadResponse(
            previous_version=result.previous_version or "",
            artifact_version=result.artifact_version,
            model_dir=str(result.model_dir),
            load_ms=result.load_ms,
        )


def _batch_field(field: str | None, offset: int, size: int) -> str:
    """Re-base a predict_batch error field onto the whole batch.

    predict_batch names items "requests[i]...." within a chunk, except for a chunk of one item,
    where the field is the item's own ("prompt", "messages[0].role").
    """
    match = re.match(r"^requests\[(\d+)\](.*)$", field or "")
    if match:
        return f"requests[{int(match.group(1)) + offset}]{match.group(2)}"
    if size == 1:
        return f"requests[{offset}].{field}" if field else f"requests[{offset}]"
    return f"requests.{field}" if field else "requests"


class RunningServer:
    """A started server: its ports, its model holder, and how to stop it."""

    def __init__(
        self,
        config: ServerConfig,
        server: grpc.Server,
        port: int,
        holder: ModelHolder,
        health_servicer: health.HealthServicer,
        metrics: Metrics,
        metrics_httpd: ThreadingHTTPServer | None,
        decision_log: DecisionLogWriter | None,
    ) -> None:
        self.config = config
        self.port = port
        self.metrics = metrics
        self._server = server
        self._holder = holder
        self._health = health_servicer
        self._metrics_httpd = metrics_httpd
        self._decision_log = decision_log
        self._stopped = threading.Event()
        self._closing = threading.Event()
        self._stop_lock = threading.Lock()
        if config.watch_interval is not None:
            threading.Thread(target=self._watch, name="router-watch", daemon=True).start()

    def _watch(self) -> None:
        interval = self.config.watch_interval
        while not self._closing.wait(interval):
            try:
                self._holder.reload_if_changed()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("watching the model directory failed")

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_httpd.server_address[1] if self._metrics_httpd else None

    @property
    def router(self) -> Router | None:
        loaded = self._holder.current
        return loaded.router if loaded else None

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """True once a model is loaded and health says SERVING."""
        return self._holder.ready.wait(timeout)

    def reload(self, model_dir: Path | str | None = None) -> ReloadResult:
        """Same as the Reload RPC: raises ArtifactError/ConfigError and keeps the old model then."""
        return self._holder.reload(model_dir)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within `grace` seconds, then clean up."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._closing.set()
            self._health.enter_graceful_shutdown()
            self._server.stop(self.config.grace_seconds if grace is None else grace).wait()
            if self._metrics_httpd is not None:
                self._metrics_httpd.shutdown()
                self._metrics_httpd.server_close()
            if self._decision_log is not None:
                self._decision_log.close()
            self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until `stop` has finished; False on timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)


def create_server(config: ServerConfig, *, load_in_background: bool = True) -> RunningServer:
    """Start a server on config.host:config.port (0 = a free port) and begin loading the model.

    The port is bound before this returns; the model loads on a background thread unless
    `load_in_background` is False. A model that fails to load is logged and leaves the server
    NOT_SERVING, ready for a Reload.
    """
    metrics = Metrics()
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    holder = ModelHolder(config, metrics, health_servicer)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="router-rpc"),
        options=options,
    )
    host = f"[{config.host}]" if ":" in config.host else config.host
    try:
        port = server.add_insecure_port(f"{host}:{config.port}")
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on {host}:{config.port}: {e}") from None
    decision_log = (
        DecisionLogWriter(config.decision_log, include_prompt=config.log_prompts)
        if config.decision_log is not None
        else None
    )
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(config, holder, metrics, decision_log), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    metrics_httpd = serve_metrics(metrics, config.host, config.metrics_port) if config.metrics_port is not None else None
    server.start()
    running = RunningServer(config, server, port, holder, health_servicer, metrics, metrics_httpd, decision_log)
    log.info("router.v1 listening on %s (observe=%s)", running.address, config.observe)

    def initial_load() -> None:
        try:
            holder.reload()
        except (ArtifactError, ConfigError) as e:
            log.error("no model loaded, serving NOT_SERVING until a reload succeeds: %s", e)
        except Exception:
            log.exception("no model loaded, serving NOT_SERVING until a reload succeeds")

    if config.model_dir is not None:
        if load_in_background:
            threading.Thread(target=initial_load, name="router-initial-load", daemon=True).start()
        else:
            initial_load()
    return running
