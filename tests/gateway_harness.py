"""A gateway app on a loopback port for the protocol and affinity tests (create_app + ServerThread)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from router_model.gateway.app import Gateway, create_app
from router_model.gateway.config import GatewayConfig
from router_model.gateway.server import ServerThread
from router_model.observe.decision_log import read_decision_log
from router_model.router import Router


class RunningGateway:
    def __init__(self, server: ServerThread, config: GatewayConfig) -> None:
        self.server = server
        self.url = server.url
        self.config = config
        self.gateway: Gateway = server.server.config.app.state.gateway

    def records(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The decision log's records (of one request id)."""
        path = self.config.decision_log
        if path is None or not Path(path).exists():
            return []
        rows = read_decision_log(path)  # passes over a line the gateway is still appending
        return [r for r in rows if request_id is None or r["request_id"] == request_id]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        from route_gateway import metric_at

        return metric_at(self.url, name, **labels)


@contextmanager
def running_gateway(config: GatewayConfig, router: Router) -> Iterator[RunningGateway]:
    server = ServerThread(create_app(config, router=router)).start()
    try:
        yield RunningGateway(server, config)
    finally:
        server.stop()
