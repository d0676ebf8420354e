"""The gRPC service end to end, its calls: the RPCs (Route, RouteBatch, GetModelInfo), their
errors, health and reflection, and a server started with no model or a bad one. A real server on a
free loopback port, a real client, no mocks.

The router is a toy (tests/toy_artifact.py): "Translate ..." routes cheap, "Prove the theorem."
strong. The read-only tests share one observe-mode server per module (`server`, `ch`, `stub` in
tests/unit/conftest.py). The rest of the service: its lifecycle (deadlines, hot reload, shutdown)
in test_service_lifecycle.py, observation mode, metrics, the router-serve command and the generated
code in test_service_cli.py, abuse and overload in test_service_limits.py.
"""

from __future__ import annotations

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
)
from service_observe import MAX_PROMPT_CHARS, PROMPTS

from router_model.router import Router
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb
from router_model.service.server import SERVICE_NAME
from router_model.service.status import FIELD_METADATA_KEY

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
