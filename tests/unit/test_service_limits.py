"""The service under abuse and overload: malformed bytes, hostile Reload paths, batch and
concurrency caps, health under load, deadlines, admin access. Real servers on 127.0.0.1.

The router is a toy (tests/toy_artifact.py); the overload and deadline tests serve
`toy_slow_model_dir`, whose runs take time per token as a real embedder's do."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import (
    SERVING,
    channel,
    clone_artifact,
    default_graph_file,
    long_prompts,
    metric,
    router_stub,
    scrape,
    serve,
    wait_for,
)
from toy_artifact import write_toy_pair

from router_model.observe.decision_log import read_decision_log
from router_model.service.admin import ADMIN_TOKEN_HEADER
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb

TOKEN = b"admin-token-for-tests-0123456789"


def raw_route(ch: grpc.Channel, method: str = "Route") -> grpc.UnaryUnaryMultiCallable:
    """A Router method that sends bytes as they are, as a buggy or hostile client might."""
    return ch.unary_unary(f"/router.v1.Router/{method}", request_serializer=None, response_deserializer=None)


def errors(running, rpc: str, code: str) -> float:
    return metric(scrape(running), "router_errors_total", rpc=rpc, code=code)


# --- 5: undecodable and oversize messages ---------------------------------------------------


def test_invalid_utf8_is_invalid_argument_and_counted(toy_model_dir: Path) -> None:
    good = pb.RouteRequest(prompt="café au lait").SerializeToString()
    bad = good.replace("é".encode(), b"\xff\xfe")
    with serve(ServerConfig(model_dir=toy_model_dir, port=0, metrics_port=0)) as running, channel(running) as ch:
        assert pb.RouteResponse.FromString(raw_route(ch)(good, timeout=10)).model
        with pytest.raises(grpc.RpcError) as info:
            raw_route(ch)(bad, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            raw_route(ch, "RouteBatch")(b"\xff\xff\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert errors(running, "Route", "INVALID_ARGUMENT") == 1
        assert errors(running, "RouteBatch", "INVALID_ARGUMENT") == 1
        assert errors(running, "Route", "INTERNAL") == 0


def test_oversize_message_is_resource_exhausted_and_counted(toy_model_dir: Path) -> None:
    config = ServerConfig(model_dir=toy_model_dir, port=0, metrics_port=0, max_message_bytes=2048)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Route(pb.RouteRequest(prompt="z" * 3000), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert errors(running, "Route", "RESOURCE_EXHAUSTED") == 1
        assert stub.Route(pb.RouteRequest(prompt="small enough"), timeout=10).model


# --- 6 and 13: Reload is an admin call, its path is checked ---------------------------------


@pytest.fixture(scope="module")
def admin_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy pair of this module's own: the Reload tests below put directories and links beside it."""
    return write_toy_pair(tmp_path_factory.mktemp("admin") / "router")


@pytest.fixture(scope="module")
def admin_server(admin_model_dir: Path):
    config = ServerConfig(model_dir=admin_model_dir, port=0, metrics_port=0, admin_token=TOKEN)
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def admin_stub(admin_server):
    with channel(admin_server) as ch:
        yield router_stub(ch)


def reload(stub, path: str = "", token: bytes | None = TOKEN):
    metadata = ((ADMIN_TOKEN_HEADER, token.decode()),) if token is not None else None
    return stub.Reload(pb.ReloadRequest(model_dir=path), timeout=60, metadata=metadata)


def reload_error(stub, path: str = "", token: bytes | None = TOKEN) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        reload(stub, path, token)
    return info.value


def test_reload_needs_the_admin_token(admin_stub) -> None:
    for token in (None, b"wrong-token-wrong-token-wrong-tok", TOKEN[:-1]):
        err = reload_error(admin_stub, token=token)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reload(admin_stub).artifact_version


def test_reload_is_off_without_a_token_or_allow_reload(toy_model_dir: Path) -> None:
    with serve(ServerConfig(model_dir=toy_model_dir, port=0)) as running, channel(running) as ch:
        err = reload_error(router_stub(ch), token=None)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--admin-token-file" in err.details()
    assert TOKEN.decode() not in repr(ServerConfig(admin_token=TOKEN))  # secrets stay out of logs


def test_reload_malformed_paths_are_invalid_argument(admin_stub, admin_model_dir: Path) -> None:
    for path in (str(admin_model_dir) + "\x00x", str(admin_model_dir.parent / ("a" * 5000))):
        err = reload_error(admin_stub, path)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert err.details().startswith("model_dir: ")
    # a name the file system refuses (one component over NAME_MAX) is the caller's fault too
    err = reload_error(admin_stub, str(admin_model_dir.parent / ("b" * 300)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()


def test_reload_outside_the_model_root_says_only_refused(admin_stub, admin_model_dir: Path, tmp_path: Path) -> None:
    escape = admin_model_dir.parent / "escape"
    if not escape.is_symlink():
        escape.symlink_to(tmp_path)
    for path in ("/etc", "/no/such/directory", str(admin_model_dir.parent.parent), "../..", str(escape)):
        err = reload_error(admin_stub, path)
        assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED, "refused"), path
    inside = reload_error(admin_stub, str(admin_model_dir.parent / "missing"))  # the root is the operator's
    assert inside.code() == grpc.StatusCode.FAILED_PRECONDITION and "does not exist" in inside.details()


def test_reload_refuses_an_oversize_file_before_hashing(admin_stub, admin_model_dir: Path, router_version) -> None:
    graph = default_graph_file(admin_model_dir)
    big = clone_artifact(admin_model_dir, admin_model_dir.parent / "big", copy=(graph,))
    with open(big / graph, "r+b") as f:
        f.truncate(2 * 1024**3 + 1)  # sparse: no disk used, but over the 2 GiB limit
    started = time.monotonic()
    err = reload_error(admin_stub, str(big))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and graph in err.details()
    assert time.monotonic() - started < 5, "a 2 GiB file should be refused by size, not hashed"
    assert admin_stub.Route(pb.RouteRequest(prompt="still serving?"), timeout=10).artifact_version == router_version


def test_reload_of_absurdly_nested_metadata_is_failed_precondition(admin_stub, admin_model_dir: Path) -> None:
    deep = admin_model_dir.parent / "deep"
    deep.mkdir()
    (deep / "metadata.json").write_text("[" * 200_000 + "]" * 200_000)
    err = reload_error(admin_stub, str(deep))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()


def test_router_serve_limit_and_admin_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from router_model.errors import ConfigError
    from router_model.service.cli import build_parser, config_from_args

    (tmp_path / "token").write_text(TOKEN.decode() + "\n")
    for name, value in {"ROUTER_MAX_BATCH": "64", "ROUTER_MAX_CONCURRENT_RPCS": "8", "ROUTER_MODEL_ROOT": "/models",
                        "ROUTER_ADMIN_TOKEN_FILE": str(tmp_path / "token"), "ROUTER_PROMPT_HASH_KEY": "k" * 20}.items():
        monkeypatch.setenv(name, value)
    config = config_from_args(build_parser().parse_args([]))
    assert (config.max_batch, config.max_concurrent_rpcs, config.model_root) == (64, 8, Path("/models"))
    assert (config.admin_token, config.prompt_hash_key, config.allow_reload) == (TOKEN, b"k" * 20, False)
    config = config_from_args(build_parser().parse_args(["--max-batch", "9", "--allow-reload"]))
    assert (config.max_batch, config.allow_reload) == (9, True)
    monkeypatch.setenv("ROUTER_PROMPT_HASH_KEY", "short")
    with pytest.raises(ConfigError, match="prompt_hash_key must be at least 16 bytes"):
        config_from_args(build_parser().parse_args([]))
    with pytest.raises(ConfigError, match="max_batch must be at least 1"):
        ServerConfig(max_batch=0)


@pytest.fixture(scope="module")
def router_version(admin_model_dir: Path) -> str:
    from router_model.router import Router

    return Router.load(admin_model_dir).version


# --- 12: one Reload, one load ---------------------------------------------------------------


def test_reload_with_the_watcher_on_loads_once(toy_model_dir: Path, toy_second_model_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(toy_model_dir)
    root = toy_second_model_dir.parent.parent
    config = ServerConfig(model_dir=link, port=0, metrics_port=0, watch_interval=0.02, allow_reload=True, model_root=root)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        resp = stub.Reload(pb.ReloadRequest(model_dir=str(toy_second_model_dir)), timeout=60)
        assert resp.model_dir == str(toy_second_model_dir)
        time.sleep(0.5)  # many watcher polls
        text = scrape(running)
        assert metric(text, "router_reloads_total", result="ok") == 2  # start-up + the Reload
        assert metric(text, "router_reloads_total", result="failed") == 0
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).model_dir == str(toy_second_model_dir)


# --- 8: overload and fairness ---------------------------------------------------------------


def health_latency(ch: grpc.Channel) -> float:
    stub = health_pb2_grpc.HealthStub(ch)
    started = time.perf_counter()
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
    return time.perf_counter() - started


MAX_BATCH = 500


def test_batch_over_the_cap_is_refused_up_front(toy_model_dir: Path) -> None:
    config = ServerConfig(model_dir=toy_model_dir, port=0, metrics_port=0, max_batch=MAX_BATCH)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        items = [pb.RouteRequest(prompt=p) for p in long_prompts(MAX_BATCH + 1)]
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=30)
        assert time.monotonic() - started < 1.0
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("requests: 501 requests, over the limit of 500")
        assert metric(scrape(running), "router_decisions_total", model=running.router.cheap_model, reason="classifier") == 0
    assert ServerConfig().max_batch == 1000


def test_health_and_route_stay_fast_while_four_maximum_batches_run(toy_slow_model_dir: Path) -> None:
    config = ServerConfig(model_dir=toy_slow_model_dir, port=0, metrics_port=0, max_batch=MAX_BATCH)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        items = [pb.RouteRequest(prompt=p) for p in long_prompts(MAX_BATCH)]
        done: list[object] = []

        def batch() -> None:
            try:
                done.append(stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=120))
            except grpc.RpcError as e:
                done.append(e)

        threads = [threading.Thread(target=batch) for _ in range(4)]
        for t in threads:
            t.start()
        assert wait_for(lambda: metric(scrape(running), "router_in_flight_requests") == 4)
        health: list[float] = []
        routes: list[float] = []
        while len(done) == 0 and len(routes) < 10:
            health.append(health_latency(ch))
            started = time.perf_counter()
            assert stub.Route(pb.RouteRequest(prompt="What is 2 + 2?"), timeout=5).model
            routes.append(time.perf_counter() - started)
            time.sleep(0.05)
        assert len(done) == 0, "the batches finished before the probes could overlap them"
        for t in threads:
            t.join()
        assert all(isinstance(d, pb.RouteBatchResponse) and len(d.responses) == MAX_BATCH for d in done)
    assert len(health) >= 5
    # Every health check but the slowest within 100 ms, and none near a probe's timeout: one probe
    # can still lose a scheduling slice on two cores shared with the four batches and the clients.
    assert sorted(health)[-2] < 0.1 and max(health) < 0.5, f"health checks took {health}"
    # batch chunks never take the last worker: a single Route does not wait for them
    assert statistics.median(routes) < 0.25 and max(routes) < 1.0, f"Route calls took {routes}"


def test_calls_over_the_concurrency_bound_are_refused_at_once(toy_slow_model_dir: Path) -> None:
    config = ServerConfig(model_dir=toy_slow_model_dir, port=0, metrics_port=0, workers=1, max_concurrent_rpcs=2)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        items = [pb.RouteRequest(prompt=p) for p in long_prompts(256)]
        futures = [stub.RouteBatch.future(pb.RouteBatchRequest(requests=items), timeout=120) for _ in range(2)]
        assert wait_for(lambda: metric(scrape(running), "router_in_flight_requests") == 2)
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            stub.Route(pb.RouteRequest(prompt="one too many"), timeout=10)
        assert time.perf_counter() - started < 0.5
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health_latency(ch) < 0.25  # health is not behind the bound (the 100 ms check is the test above)
        for f in futures:
            assert len(f.result().responses) == 256
        assert errors(running, "Route", "RESOURCE_EXHAUSTED") == 1
        assert stub.Route(pb.RouteRequest(prompt="room again"), timeout=10).model


# --- 9: a batch is validated whole before any work ------------------------------------------


def test_bad_last_batch_item_is_refused_before_routing_the_rest(toy_slow_model_dir: Path) -> None:
    with serve(ServerConfig(model_dir=toy_slow_model_dir, port=0)) as running, channel(running) as ch:
        stub = router_stub(ch)
        good = [pb.RouteRequest(prompt=p) for p in long_prompts(480)]
        started = time.perf_counter()
        assert len(stub.RouteBatch(pb.RouteBatchRequest(requests=good), timeout=60).responses) == len(good)
        full = time.perf_counter() - started
        bad = [*good, pb.RouteRequest(messages=[pb.ChatMessage(role="robot", content="hi")])]
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            stub.RouteBatch(pb.RouteBatchRequest(requests=bad), timeout=60)
        refused = time.perf_counter() - started
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"requests[{len(good)}].messages[0].role: ")
    assert refused < full / 4, f"refusing took {refused:.2f}s, routing the good items {full:.2f}s"


# --- 10: a decision made after the deadline is not sent, logged or counted OK ---------------


def test_expired_deadline_decisions_are_neither_logged_nor_counted_ok(toy_slow_model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    config = ServerConfig(model_dir=toy_slow_model_dir, port=0, metrics_port=0, decision_log=log)
    prompt = long_prompts(1)[0]
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        client_ok = 0
        for i in range(50):  # every other call has a deadline no routing can meet
            try:
                stub.Route(pb.RouteRequest(prompt=prompt), timeout=0.001 if i % 2 else 10)
                client_ok += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_for(lambda: metric(scrape(running), "router_in_flight_requests") == 0)
        text = scrape(running)
        server_ok = metric(text, "router_requests_total", rpc="Route") - sum(
            metric(text, "router_errors_total", rpc="Route", code=c) for c in ("DEADLINE_EXCEEDED", "CANCELLED")
        )
        decisions = sum(
            metric(text, "router_decisions_total", model=m, reason="classifier")
            for m in (running.router.cheap_model, running.router.strong_model)
        )
    logged = len(list(read_decision_log(log))) if log.exists() else 0
    assert logged == server_ok == decisions
    # the only slack: a response that left the server just before the client's clock ran out
    assert 25 <= client_ok <= logged <= client_ok + 2, f"client saw {client_ok} answers, the server logged {logged}"


# --- 11: decision-log failures are visible --------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_decision_log_failures_are_counted_in_metrics(toy_model_dir: Path) -> None:
    config = ServerConfig(model_dir=toy_model_dir, port=0, metrics_port=0, decision_log=Path("/dev/full"))
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        for _ in range(3):
            assert stub.Route(pb.RouteRequest(prompt="hi"), timeout=10).model  # the call still succeeds
        assert metric(scrape(running), "router_decision_log_errors_total") == 3


def test_decision_log_follows_a_rename_and_reopens_on_request(toy_model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    with serve(ServerConfig(model_dir=toy_model_dir, port=0, decision_log=log)) as running, channel(running) as ch:
        stub = router_stub(ch)
        stub.Route(pb.RouteRequest(prompt="before", request_id="r1"), timeout=10)
        os.rename(log, tmp_path / "decisions.jsonl.1")  # what logrotate does
        stub.Route(pb.RouteRequest(prompt="after", request_id="r2"), timeout=10)
        os.rename(log, tmp_path / "decisions.jsonl.2")
        running.reopen_logs()  # SIGHUP in router-serve
        assert log.exists()
    assert [r["request_id"] for r in read_decision_log(tmp_path / "decisions.jsonl.1")] == ["r1"]
    assert [r["request_id"] for r in read_decision_log(tmp_path / "decisions.jsonl.2")] == ["r2"]
