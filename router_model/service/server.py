"""The server's lifecycle: start gRPC (Router, health, reflection), metrics, the watcher; stop.

`create_server(ServerConfig(...))` starts listening at once and loads the artifact on a
background thread; health reports NOT_SERVING (and Route answers UNAVAILABLE) until a model is
loaded and warmed up. What a call does is the servicer's; how the model is swapped, the holder's.

Threads: gRPC's pool has `max_concurrent_rpcs + SPARE_THREADS` threads. At most
`max_concurrent_rpcs` router.v1 calls are admitted (status.rpc refuses the rest at once), so
SPARE_THREADS are always free for health checks, reflection and those refusals: a probe never
queues behind routing work. The CPU-bound part is bounded separately by `workers` slots.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router_model.errors import ConfigError
from router_model.router import Router
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2
from router_model.service.metrics import Metrics, serve_metrics
from router_model.service.servicer import RouterServicer
from router_model.serving.holder import ReloadResult
from router_model.serving.plane import DataPlane

log = logging.getLogger("router_model.service")

SERVICE_NAME: str = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
# Threads beyond the admitted router calls: health checks and refusals always find one free.
SPARE_THREADS = 4
# gRPC itself refuses a message over this many times --max-message-bytes (uncounted: the handler
# never sees it); between 1x and this, the handler refuses it, counted as RESOURCE_EXHAUSTED.
RECEIVE_CEILING_FACTOR = 2
# gRPC's own bound on calls (queued + running), a last resort far above what is admitted.
GRPC_CONCURRENCY_FACTOR = 4


def router_handler(servicer: RouterServicer) -> grpc.GenericRpcHandler:
    """router.v1.Router with request bytes passed through undecoded: status.rpc decodes them,
    so a bad message is the caller's INVALID_ARGUMENT rather than gRPC's uncounted INTERNAL."""
    service = router_pb2.DESCRIPTOR.services_by_name["Router"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name), request_deserializer=None, response_serializer=_serialize
        )
        for m in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


class RunningServer:
    """A started server: its ports, its model holder, and how to stop it."""

    def __init__(
        self,
        config: ServerConfig,
        server: grpc.Server,
        port: int,
        plane: DataPlane,
        health_servicer: health.HealthServicer,
        metrics: Metrics,
        metrics_httpd: ThreadingHTTPServer | None,
        servicer: RouterServicer | None = None,
    ) -> None:
        self.config = config
        self.servicer = servicer
        self.port = port
        self.metrics = metrics
        self.plane = plane
        self._server = server
        self._health = health_servicer
        self._metrics_httpd = metrics_httpd
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_httpd.server_address[1] if self._metrics_httpd else None

    @property
    def router(self) -> Router | None:
        return self.plane.holder.router

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """True once a model is loaded and health says SERVING."""
        return self.plane.holder.ready.wait(timeout)

    def reload(self, model_dir: Path | str | None = None) -> ReloadResult:
        """Same as the Reload RPC: raises ArtifactError/ConfigError and keeps the old model then."""
        return self.plane.holder.reload(model_dir)

    def reopen_logs(self) -> None:
        """Reopen the decision log (after logrotate; router-serve calls this on SIGHUP)."""
        self.plane.reopen_log()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within `grace` seconds, then clean up."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.plane.source.stop()
            self._health.enter_graceful_shutdown()
            self._server.stop(self.config.grace_seconds if grace is None else grace).wait()
            self.plane.close()  # after the drain: the batcher's runners, the loader, the decision log
            if self._metrics_httpd is not None:
                self._metrics_httpd.shutdown()
                self._metrics_httpd.server_close()
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

    def serving() -> None:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    plane = DataPlane(config, metrics.serving, on_serving=serving)
    threads = config.max_concurrent_rpcs + SPARE_THREADS
    options = [
        ("grpc.max_receive_message_length", RECEIVE_CEILING_FACTOR * config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="router-rpc"),
        options=options,
        maximum_concurrent_rpcs=GRPC_CONCURRENCY_FACTOR * threads,
    )
    host = f"[{config.host}]" if ":" in config.host else config.host
    try:
        port = server.add_insecure_port(f"{host}:{config.port}")
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on {host}:{config.port}: {e}") from None
    servicer = RouterServicer(config, plane, metrics)
    server.add_generic_rpc_handlers((router_handler(servicer),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    metrics_httpd = serve_metrics(metrics, config.host, config.metrics_port) if config.metrics_port is not None else None
    server.start()
    running = RunningServer(config, server, port, plane, health_servicer, metrics, metrics_httpd, servicer=servicer)
    log.info("router.v1 listening on %s (observe=%s)", running.address, config.observe)
    plane.start(background=load_in_background)
    return running
