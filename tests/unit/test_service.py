"""The gRPC service end to end: a real server on a free loopback port, a real client, no mocks.

The router is a toy (tests/toy_artifact.py): "Translate ..." routes cheap, "Prove the theorem."
strong. The deadline and drain tests serve `toy_heavy_model_dir`, whose runs take time per token as a
real embedder's do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from service_helpers import (
    NOT_SERVING,
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

from router_model.observe.decision_log import read_decision_log, record_problem
from router_model.router import Router
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb
from router_model.service.server import SERVICE_NAME
from router_model.service.status import FIELD_METADATA_KEY

ROOT = Path(__file__).resolve().parents[2]
MAX_PROMPT_CHARS = 20_000
PROMPT_HASH_KEY = b"test-prompt-hash-key-0123456789"
PROMPTS = [
    "What is 2 + 2?",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
    "Translate 'good morning' into French.",
    "Write a Python function that merges overlapping intervals and analyse its complexity.",
    "Prove the theorem.",  # strong on the toy router
]


def batch_lasting(stub, seconds: float) -> list[pb.RouteRequest]:
    """A batch that keeps one server worker busy for about `seconds`, whatever the model's speed.

    A chunk's time is the least of three runs: the first run of a shape can be slow (allocation),
    and a too-long measurement would make a batch that ends too soon."""
    chunk = min(stub.RouteBatch(
        pb.RouteBatchRequest(requests=[pb.RouteRequest(prompt=p) for p in long_prompts(32)]), timeout=30
    ).latency_us / 1e6 for _ in range(3))
    n = 32 * max(2, round(seconds / chunk))
    return [pb.RouteRequest(prompt=p) for p in long_prompts(n)]


@pytest.fixture(scope="module")
def router(toy_model_dir: Path) -> Router:
    return Router.load(toy_model_dir)


@pytest.fixture(scope="module")
def decision_log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("observe") / "decisions.jsonl"


@pytest.fixture(scope="module")
def server(toy_model_dir: Path, decision_log_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """One observe-mode server with metrics for the read-only tests of this module."""
    config = ServerConfig(
        model_dir=toy_model_dir,
        host="127.0.0.1",
        port=0,
        workers=4,
        max_prompt_chars=MAX_PROMPT_CHARS,
        observe=True,
        decision_log=decision_log_path,
        metrics_port=0,
        prompt_hash_key=PROMPT_HASH_KEY,
        allow_reload=True,  # Reload is opt-in; every test directory is under the base temp dir
        model_root=tmp_path_factory.getbasetemp(),
    )
    with serve(config) as running:
        assert running.wait_until_ready(30)
        yield running


@pytest.fixture(scope="module")
def ch(server):
    with channel(server) as c:
        yield c


@pytest.fixture(scope="module")
def stub(ch):
    return router_stub(ch)


# --- the RPCs ------------------------------------------------------------------------------


def test_route_prompt_matches_in_process_router(stub, router: Router) -> None:
    for prompt in PROMPTS:
        resp = stub.Route(pb.RouteRequest(prompt=prompt, request_id="req-1"), timeout=10)
        want = router.predict(prompt)
        assert resp.model == want.model
        assert resp.HasField("p_cheap_ok")
        assert resp.p_cheap_ok == pytest.approx(want.p_cheap_ok, abs=1e-6)
        assert resp.confidence == pytest.approx(want.confidence, abs=1e-6)
        assert resp.reason == want.reason == "classifier"
        assert resp.threshold == pytest.approx(router.threshold)
        assert resp.artifact_version == router.version
        assert resp.prompt_tokens == want.prompt_tokens
        assert resp.request_id == "req-1"
        assert resp.observe_only is True
        assert 0 < resp.latency_us < 10_000_000


def test_route_messages_with_image_and_tags(stub, router: Router) -> None:
    image = pb.RouteRequest(
        messages=[
            pb.ChatMessage(role="system", content="You are helpful."),
            pb.ChatMessage(
                role="user",
                parts=[
                    pb.ContentPart(type="text", text="What is in this picture?"),
                    pb.ContentPart(type="image_url", image_url=pb.ImageUrl(url="https://example.com/cat.png")),
                ],
            ),
        ]
    )
    resp = stub.Route(image, timeout=10)
    assert resp.reason == "vision"
    assert resp.model == router.strong_model
    assert not resp.HasField("p_cheap_ok")
    assert resp.request_id  # the server made one

    tagged = stub.Route(pb.RouteRequest(prompt="Say hi.", tags=["High-Accuracy"]), timeout=10)
    assert (tagged.reason, tagged.model) == ("tag:high-accuracy", router.strong_model)

    chat = [{"role": "user", "content": "Rewrite your previous answer more formally."}]
    resp = stub.Route(pb.RouteRequest(messages=[pb.ChatMessage(**chat[0])]), timeout=10)
    assert resp.p_cheap_ok == pytest.approx(router.predict(chat).p_cheap_ok, abs=1e-6)


def test_route_batch_keeps_order_across_chunks(stub, router: Router) -> None:
    prompts = long_prompts(40) + PROMPTS  # more than one 32-item chunk
    items = [pb.RouteRequest(prompt=p, request_id=f"b{i}") for i, p in enumerate(prompts)]
    items.append(pb.RouteRequest(prompt="Hello", tags=["vision"]))
    resp = stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=30)
    assert len(resp.responses) == len(items)
    # The server routes a batch in chunks of 32; the int8 graph's dynamic quantisation scales
    # activations per batch, so scores are compared with the same chunking in process.
    want = router.predict_batch(prompts[:32]) + router.predict_batch(prompts[32:])
    for i, (got, w) in enumerate(zip(resp.responses, want)):
        assert got.request_id == f"b{i}"
        assert got.model == w.model
        assert got.p_cheap_ok == pytest.approx(w.p_cheap_ok, abs=1e-6)
        assert got.latency_us == resp.latency_us > 0
    assert resp.responses[-1].reason == "tag:vision"
    assert stub.RouteBatch(pb.RouteBatchRequest(), timeout=10).responses == []


def test_get_model_info(stub, router: Router, toy_model_dir: Path) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.artifact_version == router.version
    assert (info.cheap_model, info.strong_model) == (router.cheap_model, router.strong_model)
    assert info.threshold == pytest.approx(router.threshold)
    assert info.model_dir == str(toy_model_dir)
    assert info.observe_only is True
    assert info.metadata["artifact_version"] == router.version
    leaves: dict[str, float] = {}

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            leaves[path] = value

    walk(router.metadata["metrics"], "")
    assert leaves, "the artifact's metadata should carry held-out metrics"
    assert dict(info.metrics) == pytest.approx(leaves)
    assert info.loaded_at.seconds > 0


# --- errors --------------------------------------------------------------------------------

INVALID = [
    ("empty prompt", pb.RouteRequest(prompt=""), "prompt"),
    ("blank prompt", pb.RouteRequest(prompt="  \n "), "prompt"),
    ("no text", pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="")]), "messages"),
    ("bad role", pb.RouteRequest(messages=[pb.ChatMessage(role="wizard", content="hi")]), "messages[0].role"),
    (
        "bad part type",
        pb.RouteRequest(messages=[pb.ChatMessage(role="user", parts=[pb.ContentPart(type="audio")])]),
        "messages[0].parts[0].type",
    ),
    ("prompt and messages", pb.RouteRequest(prompt="a", messages=[pb.ChatMessage(role="user", content="b")]), "prompt"),
    ("oversize prompt", pb.RouteRequest(prompt="x" * (MAX_PROMPT_CHARS + 1)), "prompt"),
    (
        "oversize messages",
        pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="y" * MAX_PROMPT_CHARS)] * 2),
        "messages",
    ),
]


@pytest.mark.parametrize("request_, field", [(r, f) for _, r, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_request_names_the_field(stub, request_: pb.RouteRequest, field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Route(request_, timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}: ")
    assert (FIELD_METADATA_KEY, field) in tuple(err.trailing_metadata())


def test_invalid_batch_item_is_named_with_its_index(stub) -> None:
    items = [pb.RouteRequest(prompt=p) for p in long_prompts(35)]
    items.append(pb.RouteRequest(messages=[pb.ChatMessage(role="robot", content="hi")]))
    with pytest.raises(grpc.RpcError) as info:
        stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("requests[35].messages[0].role: ")
    with pytest.raises(grpc.RpcError) as info:
        stub.RouteBatch(pb.RouteBatchRequest(requests=[pb.RouteRequest(prompt="ok"), pb.RouteRequest()]), timeout=10)
    assert info.value.details().startswith("requests[1].prompt: ")


def test_message_over_max_bytes_is_resource_exhausted(toy_model_dir: Path) -> None:
    with serve(ServerConfig(model_dir=toy_model_dir, port=0, max_message_bytes=2048)) as running, channel(running) as ch:
        stub = router_stub(ch)
        assert stub.Route(pb.RouteRequest(prompt="small enough"), timeout=10).model
        with pytest.raises(grpc.RpcError) as info:
            stub.Route(pb.RouteRequest(prompt="z" * 4096), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unexpected_error_is_internal_and_generic(toy_model_dir: Path, tmp_path: Path) -> None:
    # A real artifact the server cannot represent: metadata holding an integer beyond a double.
    odd = clone_artifact(toy_model_dir, tmp_path / "odd", metadata_update={"quantization": {"rows": 10**400}})
    with serve(ServerConfig(model_dir=odd, port=0)) as running, channel(running) as ch:
        stub = router_stub(ch)
        assert stub.Route(pb.RouteRequest(prompt="hi"), timeout=10).model  # serving fine
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details().startswith("internal error (ref ")
    assert "Overflow" not in info.value.details() and "float" not in info.value.details()


# --- health and reflection -----------------------------------------------------------------


def test_health_and_reflection(ch) -> None:
    assert health_status(ch, "") == SERVING
    assert health_status(ch, SERVICE_NAME) == SERVING
    services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {"router.v1.Router", "grpc.health.v1.Health"} <= services


def test_not_serving_until_a_model_is_loaded(toy_model_dir: Path, tmp_path: Path) -> None:
    config = ServerConfig(port=0, metrics_port=0, allow_reload=True, model_root=toy_model_dir.parent)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        assert health_status(ch, "") == NOT_SERVING
        assert health_status(ch, SERVICE_NAME) == NOT_SERVING
        for call in (lambda: stub.Route(pb.RouteRequest(prompt="hi"), timeout=5),
                     lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as info:  # nothing configured to re-read
            stub.Reload(pb.ReloadRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert metric(scrape(running), "router_model_loaded") == 0

        resp = stub.Reload(pb.ReloadRequest(model_dir=str(toy_model_dir)), timeout=60)
        assert resp.previous_version == "" and resp.artifact_version
        assert health_status(ch, "") == SERVING
        assert health_status(ch, SERVICE_NAME) == SERVING
        assert stub.Route(pb.RouteRequest(prompt="hi"), timeout=5).artifact_version == resp.artifact_version
        text = scrape(running)
        assert metric(text, "router_model_loaded") == 1
        assert metric(text, "router_model_info", artifact_version=resp.artifact_version) == 1


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt"])
def test_bad_model_dir_starts_not_serving(kind: str, toy_model_dir: Path, tmp_path: Path) -> None:
    if kind == "missing":
        bad = tmp_path / "nope"
    elif kind == "empty":
        bad = tmp_path / "empty"
        bad.mkdir()
    else:
        bad = clone_artifact(toy_model_dir, tmp_path / "corrupt", copy=(default_graph_file(toy_model_dir),))
        with open(bad / default_graph_file(toy_model_dir), "r+b") as f:
            f.seek(1000)
            f.write(b"\xff\x00\xff\x00")
    with serve(ServerConfig(model_dir=bad, port=0)) as running, channel(running) as ch:
        assert not running.wait_until_ready(0)
        assert health_status(ch) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            router_stub(ch).Route(pb.RouteRequest(prompt="hi"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


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


# --- observation mode and metrics ----------------------------------------------------------


def test_observe_mode_writes_one_line_per_decision(stub, decision_log_path: Path, router: Router) -> None:
    before = len(list(read_decision_log(decision_log_path))) if decision_log_path.exists() else 0
    prompts = ["Summarise the plot of Hamlet.", "What is the capital of Peru?"]
    singles = [stub.Route(pb.RouteRequest(prompt=p, request_id=f"obs-{i}"), timeout=10) for i, p in enumerate(prompts)]
    messages = [pb.ChatMessage(role="user", content="Plan a three-day trip to Kyoto.")]
    chat = stub.Route(pb.RouteRequest(messages=messages, request_id="obs-chat"), timeout=10)
    batch = stub.RouteBatch(
        pb.RouteBatchRequest(requests=[pb.RouteRequest(prompt=p, request_id=f"obs-b{i}") for i, p in enumerate(prompts)]),
        timeout=10,
    )
    assert all(r.observe_only for r in [*singles, chat, *batch.responses])
    records = list(read_decision_log(decision_log_path))
    new = records[before:]
    assert len(new) == 5
    by_id = {r["request_id"]: r for r in new}
    assert set(by_id) == {"obs-0", "obs-1", "obs-chat", "obs-b0", "obs-b1"}
    for r in new:
        assert record_problem(r) is None
        assert "prompt" not in r
        assert (r["cheap_model"], r["strong_model"]) == (router.cheap_model, router.strong_model)
        assert r["artifact_version"] == router.version
    for i, (p, resp) in enumerate(zip(prompts, singles)):
        rec = by_id[f"obs-{i}"]
        assert "prompt_sha256" not in rec  # keyed hash only: an unsalted one can be reversed by guessing
        assert rec["prompt_hmac"] == hmac.new(PROMPT_HASH_KEY, p.encode(), hashlib.sha256).hexdigest()
        assert (rec["model"], rec["reason"]) == (resp.model, resp.reason)
        assert rec["p_cheap_ok"] == pytest.approx(resp.p_cheap_ok)
    chat_json = json.dumps([{"content": messages[0].content, "role": "user"}], separators=(",", ":"))
    assert by_id["obs-chat"]["prompt_hmac"] == hmac.new(PROMPT_HASH_KEY, chat_json.encode(), hashlib.sha256).hexdigest()


def test_log_prompts_stores_the_prompt_text(toy_model_dir: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "with-prompts.jsonl"
    config = ServerConfig(model_dir=toy_model_dir, port=0, decision_log=log_path, log_prompts=True)
    with serve(config) as running, channel(running) as ch:
        resp = router_stub(ch).Route(
            pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="Name three rivers.")]), timeout=10
        )
        assert resp.observe_only is False  # logging decisions does not by itself mean observation mode
    (record,) = list(read_decision_log(log_path))
    assert json.loads(record["prompt"]) == [{"role": "user", "content": "Name three rivers."}]
    assert "prompt_sha256" not in record and "prompt_hmac" not in record  # no key: no prompt hash
    assert record["request_id"] == resp.request_id


def test_metrics_endpoint_counts(server, stub) -> None:
    before = scrape(server)
    for p in PROMPTS:
        stub.Route(pb.RouteRequest(prompt=p), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Route(pb.RouteRequest(prompt=""), timeout=10)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("router_requests_total", rpc="Route") == len(PROMPTS) + 1
    assert delta("router_errors_total", rpc="Route", code="INVALID_ARGUMENT") == 1
    assert delta("router_request_duration_seconds_count", rpc="Route") == len(PROMPTS) + 1
    assert delta("router_request_duration_seconds_bucket", rpc="Route", le="+Inf") == len(PROMPTS) + 1
    router_ = server.router
    assert sum(delta("router_decisions_total", model=m, reason="classifier")
               for m in (router_.cheap_model, router_.strong_model)) == len(PROMPTS)
    assert metric(after, "router_model_info", artifact_version=router_.version) == 1
    assert "# TYPE router_request_duration_seconds histogram" in after
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/other", timeout=5)
    assert info.value.code == 404


# --- the command and the generated code ----------------------------------------------------


def test_router_serve_command_env_sighup_and_sigterm(toy_model_dir: Path, tmp_path: Path) -> None:
    decisions = tmp_path / "decisions.jsonl"
    env = {**os.environ, "ROUTER_MODEL_DIR": str(toy_model_dir), "ROUTER_PORT": "0", "ROUTER_HOST": "127.0.0.1",
           "ROUTER_WORKERS": "2", "ROUTER_LOG_LEVEL": "INFO", "ROUTER_DECISION_LOG": str(decisions)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from router_model.service.cli import main; sys.exit(main())"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("router-serve listening on 127.0.0.1:"), line + proc.stderr.read()
        address = line.split()[-1]
        with grpc.insecure_channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            assert wait_for(lambda: health_status(ch) == SERVING, timeout=60)
            stub = router_stub(ch)
            assert stub.Route(pb.RouteRequest(prompt="hi"), timeout=10).model
            loaded_at = loaded_at_ns(stub)
            os.rename(decisions, tmp_path / "decisions.jsonl.1")  # logrotate, then its postrotate SIGHUP
            proc.send_signal(signal.SIGHUP)  # no admin token needed: signals are the operator's
            assert wait_for(lambda: loaded_at_ns(stub) != loaded_at, timeout=60)
            assert decisions.exists()  # reopened by the SIGHUP, before any new decision
            assert stub.Route(pb.RouteRequest(prompt="after reload", request_id="r2"), timeout=10).model
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "SIGHUP reload" in err and "shutting down" in err
        assert [r["request_id"] for r in read_decision_log(decisions)] == ["r2"]
        assert len(list(read_decision_log(tmp_path / "decisions.jsonl.1"))) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def loaded_at_ns(stub) -> int:
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).loaded_at.ToNanoseconds()


def test_router_serve_rejects_bad_env() -> None:
    env = {**os.environ, "ROUTER_PORT": "not-a-port"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from router_model.service.cli import main; sys.exit(main(['--help']))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "ROUTER_PORT" in proc.stderr


def test_router_serve_defaults_to_loopback_and_refuses_renamed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from router_model.errors import ConfigError
    from router_model.service.cli import build_parser

    for name in ("ROUTER_HOST", "ROUTER_GRAPH", "ROUTER_THREADS", "ROUTER_MODEL_GRAPH", "ROUTER_MODEL_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert build_parser().parse_args([]).host == ServerConfig().host == "127.0.0.1"
    monkeypatch.setenv("ROUTER_MODEL_GRAPH", "fp32")
    monkeypatch.setenv("ROUTER_MODEL_THREADS", "2")
    args = build_parser().parse_args([])
    assert (args.graph, args.threads) == ("fp32", 2)
    monkeypatch.setenv("ROUTER_GRAPH", "fp32")
    with pytest.raises(ConfigError, match="ROUTER_GRAPH was renamed ROUTER_MODEL_GRAPH"):
        build_parser()


def test_generated_code_is_current() -> None:
    proc = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_generated_code_check_catches_a_stale_file(tmp_path: Path) -> None:
    for rel in ("scripts/gen_proto.py", "router_model/service/proto", "router_model/service/gen"):
        src, dst = ROOT / rel, tmp_path / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True)
            shutil.copyfile(src, dst)
    proto = tmp_path / "router_model/service/proto/router/v1/router.proto"
    proto.write_text(proto.read_text().replace("  string detail = 2;\n", "  string detail = 2;\n  string alt = 3;\n"))
    proc = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "router_model/service/gen/router/v1/router_pb2.py" in proc.stderr and "gen_proto.py" in proc.stderr
