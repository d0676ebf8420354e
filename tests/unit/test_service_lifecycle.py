"""The gRPC service's lifecycle end to end: deadlines, hot reload (the Reload RPC and the watched
model directory) and graceful shutdown. Real servers on free loopback ports, real clients, no mocks.

The router is a toy (tests/toy_artifact.py). The deadline and drain tests serve
`toy_heavy_model_dir`, whose runs take time per token as a real embedder's do; the refused Reload
uses the module's observe-mode server (`stub` in tests/unit/conftest.py). The RPCs themselves:
test_service.py.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from service_helpers import (
    SERVING,
    channel,
    clone_artifact,
    default_graph_file,
    health_status,
    long_prompts,
    metric,
    router_stub,
    scrape,
    serve,
    wait_for,
)
from service_observe import PROMPTS

from router_model.router import Router
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb


def batch_lasting(stub, seconds: float) -> list[pb.RouteRequest]:
    """A batch that keeps one server worker busy for about `seconds`, whatever the model's speed.

    A chunk's time is the least of three runs: the first run of a shape can be slow (allocation),
    and a too-long measurement would make a batch that ends too soon."""
    chunk = min(stub.RouteBatch(
        pb.RouteBatchRequest(requests=[pb.RouteRequest(prompt=p) for p in long_prompts(32)]), timeout=30
    ).latency_us / 1e6 for _ in range(3))
    n = 32 * max(2, round(seconds / chunk))
    return [pb.RouteRequest(prompt=p) for p in long_prompts(n)]


# --- deadlines -----------------------------------------------------------------------------


def test_expired_deadline_is_not_computed(toy_heavy_model_dir: Path) -> None:
    """With the only worker busy, a queued Route whose deadline passes is refused, not computed."""
    # The batch in one chunk: a batch takes turns chunk by chunk, so with 32-prompt chunks a Route that
    # arrives near a chunk's end is computed within its 50 ms (seen once in CI); in one chunk it waits
    # for the whole batch.
    config = ServerConfig(model_dir=toy_heavy_model_dir, port=0, workers=1, metrics_port=0, batch_chunk=1 << 20)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        items = batch_lasting(stub, 1.0)
        before = scrape(running)
        busy = threading.Thread(target=lambda: stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=60))
        busy.start()
        assert wait_for(lambda: metric(scrape(running), "router_in_flight_requests") == 1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Route(pb.RouteRequest(prompt="queued behind the batch"), timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        busy.join()
        # Either gRPC dropped the expired call before our handler ran, or the handler refused it:
        # in both cases it was answered DEADLINE_EXCEEDED and never computed.
        assert wait_for(lambda: metric(scrape(running), "router_in_flight_requests") == 0)
        text = scrape(running)
        routes = metric(text, "router_requests_total", rpc="Route")
        assert routes == metric(text, "router_errors_total", rpc="Route", code="DEADLINE_EXCEEDED") <= 1
        decisions = sum(
            metric(t, "router_decisions_total", model=m, reason="classifier") * sign
            for t, sign in ((text, 1), (before, -1))
            for m in (running.router.cheap_model, running.router.strong_model)
        )
        assert decisions == len(items)  # the batch's decisions only


def test_batch_stops_between_chunks_when_the_deadline_passes(toy_heavy_model_dir: Path) -> None:
    config = ServerConfig(model_dir=toy_heavy_model_dir, port=0, workers=2, metrics_port=0, max_message_bytes=64 << 20)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        full = 3.0
        items = batch_lasting(stub, full)
        before = metric(scrape(running), "router_request_duration_seconds_sum", rpc="RouteBatch")
        with pytest.raises(grpc.RpcError) as info:
            stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=full / 10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_for(lambda: metric(scrape(running), "router_in_flight_requests") == 0, timeout=full + 10)
        text = scrape(running)
        assert metric(text, "router_errors_total", rpc="RouteBatch", code="DEADLINE_EXCEEDED") == 1
        spent = metric(text, "router_request_duration_seconds_sum", rpc="RouteBatch") - before
        assert spent < full / 2, f"the server spent {spent:.2f}s on a ~{full:.0f}s batch whose deadline was {full / 10:.2f}s"


# --- hot reload ----------------------------------------------------------------------------


def test_hot_reload_under_concurrent_calls(toy_model_dir: Path, toy_second_model_dir: Path) -> None:
    first, second = Router.load(toy_model_dir).version, Router.load(toy_second_model_dir).version
    assert first != second
    config = ServerConfig(model_dir=toy_model_dir, port=0, workers=4, allow_reload=True, model_root=toy_second_model_dir.parent.parent)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        stop = threading.Event()
        seen: list[list[str]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def hammer(k: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    resp = stub.Route(pb.RouteRequest(prompt=PROMPTS[i % len(PROMPTS)]), timeout=10)
                    seen[k].append(resp.artifact_version)
                except BaseException as e:  # noqa: BLE001 - every failure is a test failure
                    errors.append(e)
                i += 1

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        assert wait_for(lambda: all(len(s) >= 5 for s in seen))
        resp = stub.Reload(pb.ReloadRequest(model_dir=str(toy_second_model_dir)), timeout=60)
        assert (resp.previous_version, resp.artifact_version) == (first, second)
        assert wait_for(lambda: all(s.count(second) >= 5 for s in seen))
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        for versions in seen:
            switch = versions.index(second)
            assert set(versions[:switch]) == {first} and set(versions[switch:]) == {second}
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert (info.artifact_version, info.model_dir) == (second, str(toy_second_model_dir))


def test_reload_refuses_a_corrupt_artifact_and_keeps_serving(stub, toy_model_dir: Path, tmp_path: Path, router) -> None:
    graph = default_graph_file(toy_model_dir)
    bad = clone_artifact(toy_model_dir, tmp_path / "bad", copy=(graph,))
    data = bytearray((bad / graph).read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    (bad / graph).write_bytes(bytes(data))
    with pytest.raises(grpc.RpcError) as info:
        stub.Reload(pb.ReloadRequest(model_dir=str(bad)), timeout=60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert graph in info.value.details() and "sha256" in info.value.details()
    resp = stub.Route(pb.RouteRequest(prompt="still there?"), timeout=10)
    assert resp.artifact_version == router.version
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).model_dir == str(toy_model_dir)


def test_watch_reloads_when_the_model_directory_changes(toy_model_dir: Path, toy_second_model_dir: Path, tmp_path: Path) -> None:
    def point(link: Path, target: Path) -> None:  # swap a symlink atomically, as a deploy would
        tmp = link.with_name("next")
        tmp.symlink_to(target)
        os.replace(tmp, link)

    graph = default_graph_file(toy_model_dir)
    bad = clone_artifact(toy_model_dir, tmp_path / "bad", copy=(graph,))
    with open(bad / graph, "r+b") as f:
        f.seek(2000)
        f.write(b"\x00" * 16)
    link = tmp_path / "current"
    link.symlink_to(toy_model_dir)
    config = ServerConfig(model_dir=link, port=0, metrics_port=0, watch_interval=0.05)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)

        def version() -> str:
            return stub.Route(pb.RouteRequest(prompt="which version?"), timeout=10).artifact_version

        first = version()
        point(link, toy_second_model_dir)
        assert wait_for(lambda: version() != first, timeout=60)
        second = version()
        point(link, bad)
        assert wait_for(lambda: metric(scrape(running), "router_reloads_total", result="failed") == 1, timeout=60)
        time.sleep(0.3)  # a refused artifact is not retried until it changes again
        assert metric(scrape(running), "router_reloads_total", result="failed") == 1
        assert version() == second and health_status(ch) == SERVING


# --- shutdown ------------------------------------------------------------------------------


def test_graceful_shutdown_drains_in_flight_and_refuses_new_calls(toy_heavy_model_dir: Path) -> None:
    config = ServerConfig(model_dir=toy_heavy_model_dir, port=0, workers=2, metrics_port=0, grace_seconds=30)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        result: dict[str, object] = {}
        items = batch_lasting(stub, 2.0)

        def in_flight() -> None:
            try:
                result["resp"] = stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=60)
            except grpc.RpcError as e:
                result["error"] = e

        t = threading.Thread(target=in_flight)
        t.start()
        assert wait_for(lambda: metric(scrape(running), "router_in_flight_requests") == 1)
        stopper = threading.Thread(target=running.stop)
        stopper.start()

        def refused() -> bool:
            try:
                stub.Route(pb.RouteRequest(prompt="too late"), timeout=5)
                return False  # the stop has not taken effect yet
            except grpc.RpcError as e:
                # UNAVAILABLE once the server refuses connections; a call that races the stop
                # itself (received, not yet started) is CANCELLED by gRPC.
                assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                return True

        assert wait_for(refused, timeout=10)
        assert t.is_alive(), "new calls should be refused while the in-flight one is still draining"
        t.join()
        stopper.join()
        assert "error" not in result, result.get("error")
        assert len(result["resp"].responses) == len(items)
        assert running.wait_for_termination(0)
