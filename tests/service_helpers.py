"""Helpers for the gRPC service tests: real servers on free loopback ports, real clients."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2_grpc
from router_model.service.server import RunningServer, create_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextmanager
def serve(config: ServerConfig, *, wait_ready: bool = True) -> Iterator[RunningServer]:
    """A started server (model loaded when wait_ready), stopped at exit."""
    running = create_server(config, load_in_background=not wait_ready)
    try:
        yield running
    finally:
        running.stop(0)


@contextmanager
def channel(running: RunningServer) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch
    finally:
        ch.close()


def router_stub(ch: grpc.Channel) -> router_pb2_grpc.RouterStub:
    return router_pb2_grpc.RouterStub(ch)


def health_status(ch: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def scrape(running: RunningServer) -> str:
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in exposition text; 0 when absent (a counter never incremented)."""
    want = {k: str(v) for k, v in labels.items()}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == want:
            return float(m.group(3))
    return 0.0


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def clone_artifact(
    src: Path, dst: Path, *, copy: tuple[str, ...] = (), metadata_update: dict[str, Any] | None = None
) -> Path:
    """A model directory at dst whose files link to src's, except those in `copy` (real copies,
    free to damage) and metadata.json (always copied, optionally updated)."""
    dst.mkdir(parents=True)
    for f in Path(src).iterdir():
        if f.name == "metadata.json" or f.name in copy:
            shutil.copyfile(f, dst / f.name)
        elif f.is_file():
            os.symlink(f.resolve(), dst / f.name)
    if metadata_update:
        meta = json.loads((dst / "metadata.json").read_text())
        meta.update(metadata_update)
        (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


def default_graph_file(model_dir: Path) -> str:
    meta = json.loads((Path(model_dir) / "metadata.json").read_text())
    return meta["graphs"][meta["default_graph"]]


def long_prompts(n: int) -> list[str]:
    """n distinct prompts of roughly 64 tokens."""
    base = (
        "Question {i}: a train leaves the station at {h} o'clock travelling at {v} km/h while a second "
        "train leaves an hour later at {w} km/h on a parallel track. Explain step by step when and where "
        "the second train catches up, state every assumption you make, and check the answer."
    )
    return [base.format(i=i, h=i % 12 + 1, v=40 + i % 50, w=90 + i % 30) for i in range(n)]
