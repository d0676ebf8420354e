"""Every other method and path under /v1 passes through the gateway byte for byte.

A real local upstream (tests/gateway_upstream.py: embeddings, multipart file uploads, binary
audio, SSE, and an echo route for any method) behind a real gateway, called with the `openai`
SDK and with httpx (to compare the bytes). Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from gateway_upstream import AUDIO_BYTES

from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.passthrough import path_family
from router_model.gateway.server import ServerThread

KEY_ENV = "ROUTER_GATEWAY_TEST_PASSTHROUGH_KEY"


def _tid() -> str:
    return uuid.uuid4().hex[:12]


def _serve(config: GatewayConfig, router):
    server = ServerThread(create_app(config, router=router)).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def gw(upstream, toy_router):
    # a small max_body_bytes: pass-through bodies are streamed, not buffered, so it does not apply to them
    yield from _serve(GatewayConfig(upstream=Upstream(upstream.url), mode="route", max_body_bytes=4096), toy_router)


@pytest.fixture(scope="module")
def keyed_gw(upstream, toy_router):
    os.environ[KEY_ENV] = "sk-gateway-own"
    yield from _serve(GatewayConfig(upstream=Upstream(upstream.url, api_key_env=KEY_ENV), mode="observe"), toy_router)


def _sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-caller", max_retries=0)


def _requests(url: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("router_gateway_requests_total{"):
            labels, value = line[len("router_gateway_requests_total{"):].split("} ")
            parts = dict(item.split("=", 1) for item in labels.split(","))
            out[(parts["endpoint"].strip('"'), parts["status"].strip('"'))] = float(value)
    return out


def test_embeddings_pass_through_unchanged(gw, upstream):
    tid = _tid()
    raw = _sdk(gw).embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"],
                                                       extra_headers={"x-test-id": tid})
    result = raw.parse()
    assert [d.embedding for d in result.data] == [[0.25, -0.5, 0.0], [0.25, -0.5, 1.0]]
    (got,) = upstream.for_test(tid)
    assert got.path == "/v1/embeddings" and got.body["model"] == "text-embedding-3-small"
    assert got.headers["authorization"] == "Bearer sk-caller"
    assert "x-router-model" not in raw.headers  # not routed
    # the same bytes as straight from the upstream, both ways
    body = b'{"model":"text-embedding-3-small",  "input":"caf\xc3\xa9"}'
    via = httpx.post(f"{gw}/v1/embeddings", content=body, headers={"content-type": "application/json", "x-test-id": (tid := _tid())})
    direct = httpx.post(f"{upstream.url}/embeddings", content=body, headers={"content-type": "application/json"})
    assert via.status_code == 200 and via.content == direct.content
    assert upstream.for_test(tid)[0].raw == body


def test_a_multipart_upload_arrives_byte_for_byte(gw, upstream):
    data = b'{"custom_id": "1"}\n' + bytes(range(256)) * 40  # binary, larger than max_body_bytes
    tid = _tid()
    created = _sdk(gw).files.create(file=("batch.jsonl", data), purpose="batch", extra_headers={"x-test-id": tid})
    (got,) = upstream.for_test(tid)
    assert created.filename == "batch.jsonl" and created.purpose == "batch" and created.bytes == len(got.raw)
    assert data in got.raw and got.headers["content-type"].startswith("multipart/form-data; boundary=")
    with httpx.Client() as client:  # the exact bytes sent are the exact bytes received
        request = client.build_request("POST", f"{gw}/v1/files", files={"file": ("a.bin", data)}, data={"purpose": "batch"},
                                       headers={"x-test-id": (tid := _tid())})
        sent = request.read()
        resp = client.send(request)
    assert resp.status_code == 200
    assert resp.headers["x-fake-sha256"] == hashlib.sha256(sent).hexdigest()
    assert upstream.for_test(tid)[0].headers["content-length"] == str(len(sent))


def test_binary_audio_both_ways(gw, upstream):
    speech = _sdk(gw).audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    assert speech.content == AUDIO_BYTES
    resp = httpx.post(f"{gw}/v1/echo/audio/transcriptions?language=en&x=%2F", content=AUDIO_BYTES,
                      headers={"content-type": "audio/wav"})
    assert resp.status_code == 200 and resp.content == AUDIO_BYTES
    assert resp.headers["x-fake-path"] == "/v1/echo/audio/transcriptions"
    assert resp.headers["x-fake-query"] == "language=en&x=%2F"
    assert resp.headers["content-type"] == "audio/wav"


def test_streamed_bodies_both_ways(gw):
    def chunks():
        for i in range(5):
            yield bytes([i]) * 3000

    resp = httpx.put(f"{gw}/v1/echo/chunked", content=chunks())  # chunked request, no content-length
    assert resp.status_code == 200 and resp.content == b"".join(chunks())
    with httpx.stream("GET", f"{gw}/v1/events?n=3&pause=0.05") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        pieces = list(resp.iter_raw())
    assert b"".join(pieces) == b"".join(f'event: tick\ndata: {{"i": {i}}}\n\n'.encode() for i in range(3))
    assert len(pieces) >= 2  # relayed as they came, not gathered


def test_every_method_and_status_passes(gw, upstream):
    for method in ("GET", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        resp = httpx.request(method, f"{gw}/v1/echo/x/y")
        assert resp.status_code == 200 and resp.headers["x-fake-method"] == method
    resp = httpx.post(f"{gw}/v1/echo/missing?status=404", content=b"not here")
    assert resp.status_code == 404 and resp.content == b"not here"
    # a routed path with another method is the upstream's to answer (e.g. GET /v1/chat/completions lists stored ones)
    assert httpx.get(f"{gw}/v1/chat/completions").status_code == 405
    assert httpx.get(f"{gw}/nothing").json()["error"]["code"] == "not_found"  # outside /v1: the gateway's own 404


def test_header_rules(gw, keyed_gw, upstream):
    headers = {"x-test-id": (tid := _tid()), "authorization": "Bearer sk-caller", "x-router-tags": "pii",
               "cookie": "session=1", "proxy-authorization": "Basic x", "openai-organization": "org-1"}
    resp = httpx.post(f"{gw}/v1/echo/h", content=b"x", headers=headers)
    assert resp.status_code == 200
    (got,) = upstream.for_test(tid)
    assert got.headers["authorization"] == "Bearer sk-caller" and got.headers["openai-organization"] == "org-1"
    assert not {"x-router-tags", "cookie", "proxy-authorization"} & set(got.headers)
    assert got.headers["host"] != httpx.URL(gw).netloc.decode()
    httpx.post(f"{keyed_gw}/v1/echo/h", content=b"x", headers={**headers, "x-test-id": (tid := _tid())})
    assert upstream.for_test(tid)[0].headers["authorization"] == "Bearer sk-gateway-own"


def test_models_keep_the_aliases_and_the_metrics_count_families(gw):
    ids = [m.id for m in _sdk(gw).models.list()]
    assert "gpt-4o" in ids and "auto" in ids
    counts = _requests(gw)
    assert counts[("embeddings", "200")] >= 2 and counts[("files", "200")] >= 2 and counts[("audio", "200")] >= 1
    assert counts[("other", "200")] >= 1 and counts[("other", "404")] >= 1 and counts[("models", "200")] >= 1
    assert path_family("/v1/audio/speech") == "audio" and path_family("/v1/fine_tuning/jobs") == "fine_tuning"
    assert path_family("/v1/whatever") == "other" and path_family("/v1") == "other"


def test_an_unreachable_upstream_is_a_502(toy_router):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in _serve(GatewayConfig(upstream=Upstream(f"http://127.0.0.1:{port}/v1")), toy_router):
        resp = httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": "x"})
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_unavailable"
        assert _requests(url)[("embeddings", "502")] == 1


def _docs_example(heading: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("heading", ["The Responses API", "Every other endpoint (pass-through)"])
def test_the_docs_examples_run_as_written(gw, tmp_path, monkeypatch, capsys, heading):
    code = _docs_example(heading)
    assert "ROUTER_GATEWAY_URL" in code  # every docs example reads the gateway's address (tests/unit/test_docs_examples.py)
    monkeypatch.setenv("ROUTER_GATEWAY_URL", gw)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "batch.jsonl").write_text('{"custom_id": "1"}\n')
    exec(compile(code, heading, "exec"), {})  # noqa: S102
    if heading == "The Responses API":
        assert "answer from gpt-4o-mini" in capsys.readouterr().out
