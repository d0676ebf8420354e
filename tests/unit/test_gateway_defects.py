"""Defects of issue 25 in the gateway (and two neighbours), each with the test that showed it.

Real servers only: the gateway under uvicorn, the toy router (tests/toy_artifact.py: "Translate
..." routes cheap on the pair), the local fake upstream (tests/gateway_upstream.py) and, for the
faults a well-behaved HTTP server cannot produce (a chunked stream cut without its last chunk, a
stall, an answer trickled in pieces, huge bodies), a raw socket upstream written here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gateway_upstream import wait_for
from prometheus_client.parser import text_string_to_metric_families

from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Timeouts, Upstream, load_config
from router_model.gateway.server import ServerThread
from router_model.labelling.config import GradingSpec, ShadowConfig
from router_model.observe.decision_log import DecisionLogWriter, read_decision_log
from router_model.router import Router

CHEAP_PROMPT = "Translate this sentence into French."
MESSAGES = [{"role": "user", "content": CHEAP_PROMPT}]


# ---------------------------------------------------------------- helpers


def _tid() -> str:
    return uuid.uuid4().hex[:12]


def _metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def _post(url: str, body: dict | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", "authorization": "Bearer sk-caller"}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=hdrs, timeout=20)


def _records(path: Path, request_id: str) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in read_decision_log(path) if r.get("request_id") == request_id]


class _Gw:
    def __init__(self, config: GatewayConfig, router: Router | None) -> None:
        self.config = config
        self.server = ServerThread(create_app(config, router=router)).start()
        self.url = self.server.url
        self.gateway = self.server.server.config.app.state.gateway

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0, timeout=20)

    def stop(self) -> None:
        self.server.stop()


def _sse(i: int) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "raw-model",
             "choices": [{"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class RawUpstream:
    """An HTTP/1.1 upstream on a raw socket; `x-raw: <fault>` picks what it does (see `_answer`)."""

    def __init__(self) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return
            data += piece
        head, _, rest = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            piece = sock.recv(65536)
            if not piece:
                return
            rest += piece
        try:
            self._answer(sock, headers.get("x-raw", ""))
        except OSError:
            pass
        finally:
            sock.close()

    @staticmethod
    def _answer(sock: socket.socket, fault: str) -> None:
        if fault in ("cut", "stall"):  # a stream that never ends properly
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(2):
                sock.sendall(_chunk(_sse(i)))
            if fault == "stall":
                time.sleep(3.0)
            return  # closed without the terminating 0-length chunk
        if fault == "pieces":  # a complete JSON answer trickled out in pieces, each within the read timeout
            body = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "raw-model",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                            "finish_reason": "stop"}]}).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         + f"content-length: {len(body)}\r\n\r\n".encode())
            step = -(-len(body) // 8)
            for i in range(0, len(body), step):
                sock.sendall(body[i:i + step])
                time.sleep(0.3)
            return
        if fault in ("huge", "huge500", "hugestream"):
            size = 3 * 1024 * 1024
            if fault == "hugestream":
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                sent = 0
                while sent < size:
                    piece = b"".join(_sse(i) for i in range(200))
                    sock.sendall(_chunk(piece))
                    sent += len(piece)
                sock.sendall(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                return
            status = b"500 Internal Server Error" if fault == "huge500" else b"200 OK"
            body = json.dumps({"error": {"message": "x" * 200_000, "type": "server_error"}}).encode() if fault == "huge500" \
                else json.dumps({"id": "c", "object": "chat.completion", "model": "raw-model", "choices": [],
                                 "padding": "y" * size}).encode()
            sock.sendall(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                         + f"content-length: {len(body)}\r\n\r\n".encode() + body)
            return
        body = b'{"error": {"message": "unknown x-raw fault"}}'
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw() -> Iterator[RawUpstream]:
    server = RawUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def route_gw(upstream, toy_model_dir, tmp_path_factory) -> Iterator[_Gw]:
    config = GatewayConfig(upstream=Upstream(upstream.url), mode="route",
                           decision_log=tmp_path_factory.mktemp("defects") / "decisions.jsonl")
    gw = _Gw(config, Router.load(toy_model_dir))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def raw_gw(raw) -> Iterator[_Gw]:
    config = GatewayConfig(upstream=Upstream(raw.url), timeouts=Timeouts(read=0.5, total=1.0),
                           max_response_bytes=256 * 1024)
    gw = _Gw(config, None)
    yield gw
    gw.stop()


# ---------------------------------------------------------------- 1: a broken stream must not look complete


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_a_stream_the_upstream_breaks_raises_in_the_openai_sdk(raw, raw_gw, fault):
    def read(base_url: str) -> list[str]:
        # the client waits longer (2 s) than the gateway (timeouts.read = 0.5 s) for the stalled stream
        client = openai.OpenAI(base_url=base_url, api_key="sk-caller", max_retries=0, timeout=openai.Timeout(20, read=2.0))
        stream = client.chat.completions.create(model="raw-model", messages=MESSAGES, stream=True,
                                                extra_headers={"x-raw": fault})
        return [c.choices[0].delta.content or "" for c in stream if c.choices]

    with pytest.raises(openai.APIConnectionError):  # the SDK straight to the upstream
        read(raw.url)
    before = _metric(raw_gw.url, "router_gateway_upstream_errors_total", kind="stream_interrupted")
    with pytest.raises(openai.APIConnectionError):  # and through the gateway: the same signal
        read(raw_gw.url + "/v1")
    assert wait_for(lambda: _metric(raw_gw.url, "router_gateway_upstream_errors_total", kind="stream_interrupted")
                    == before + 1)


# ---------------------------------------------------------------- 2: drop_tags sees every tag


def test_a_body_tagged_drop_tag_is_not_shadow_graded_when_a_header_tag_is_present(upstream, toy_router, tmp_path):
    shadow = ShadowConfig(out=tmp_path / "labels.jsonl", grading=GradingSpec(judge="gpt-4o"), drop_tags=frozenset({"pii"}))
    gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url), shadow=shadow), toy_router)
    try:
        body = {"model": "auto", "messages": MESSAGES, "metadata": {"router_tags": "pii"}}
        resp = _post(gw.url, body, x_router_tags="team-a")
        assert resp.status_code == 200, resp.text
        assert wait_for(lambda: _metric(gw.url, "router_gateway_shadow_dropped_total", reason="tag") == 1)
        assert _metric(gw.url, "router_gateway_shadow_sampled_total") == 0
        time.sleep(0.2)
        assert not (tmp_path / "labels.jsonl").exists() or (tmp_path / "labels.jsonl").read_text() == ""
    finally:
        gw.stop()


def test_routing_tags_still_prefer_the_header_but_privacy_uses_the_union():
    from router_model.gateway.call import all_request_tags, request_tags

    body = {"metadata": {"router_tags": "pii, b"}}
    assert request_tags({"x-router-tags": "a"}, body) == ["a"]
    assert all_request_tags({"x-router-tags": "a"}, body) == ["a", "pii", "b"]
    assert all_request_tags({}, {}) == []


# ---------------------------------------------------------------- 3: deep JSON is a counted 400


def test_deeply_nested_json_is_a_counted_400(route_gw, caplog):
    before = _metric(route_gw.url, "router_gateway_requests_total", endpoint="chat_completions", status="400")
    deep = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x": ' \
        + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}"
    with caplog.at_level(logging.ERROR):
        resp = _post(route_gw.url, deep)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_json"
    assert "RecursionError" not in caplog.text
    assert _metric(route_gw.url, "router_gateway_requests_total", endpoint="chat_completions", status="400") == before + 1
    lists = b"[" * 10_000 + b"]" * 10_000
    assert _post(route_gw.url, lists).json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("where", ["field", "message"])
def test_json_that_parses_but_is_too_deep_to_forward_is_a_400(route_gw, where):
    # 970 levels parse, but re-serialising the body for the routed model (or logging it) went past
    # Python's recursion limit: a 500. The gateway caps nesting where it parses.
    inner = b'{"a":' * 970 + b"1" + b"}" * 970
    message = b'{"role": "user", "content": "' + CHEAP_PROMPT.encode() + b'"' + (b', "x": ' + inner if where == "message" else b"") + b"}"
    body = b'{"model": "auto", "messages": [' + message + b"]" + (b', "x": ' + inner if where == "field" else b"") + b"}"
    resp = _post(route_gw.url, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_json" and "nested" in resp.json()["error"]["message"]
    # a body nested as deep as real requests get is untouched
    schema: dict = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"a": schema}}
    ok = {"model": "auto", "messages": MESSAGES,
          "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}
    assert _post(route_gw.url, ok).status_code == 200


# ---------------------------------------------------------------- 4: a lone surrogate outside the routed text


def test_a_lone_surrogate_in_another_field_is_forwarded_in_route_mode(route_gw, upstream):
    tid = _tid()
    messages = json.dumps(MESSAGES)
    raw = ('{"model": "auto", "messages": ' + messages + ', "user": "abc\\ud800"}').encode()  # the JSON escape, as sent
    resp = _post(route_gw.url, raw, x_test_id=tid)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-router-model"] == "gpt-4o-mini"
    [got] = upstream.for_test(tid)
    assert got.body["model"] == "gpt-4o-mini" and got.body["user"] == "abc\ud800"
    # non-ASCII text is still forwarded as UTF-8, not escaped
    tid = _tid()
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES, "user": "café"}, x_test_id=tid)
    assert resp.status_code == 200 and "café".encode() in upstream.for_test(tid)[0].raw


def test_a_lone_surrogate_does_not_fail_shadow_grading(upstream, toy_router, tmp_path):
    shadow = ShadowConfig(out=tmp_path / "labels.jsonl", grading=GradingSpec(judge="gpt-4o"))
    gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url), shadow=shadow), toy_router)
    try:
        raw = ('{"model": "auto", "messages": ' + json.dumps(MESSAGES) + ', "user": "abc\\udc00"}').encode()
        assert _post(gw.url, raw).status_code == 200
        assert wait_for(lambda: _metric(gw.url, "router_gateway_shadow_rows_total", result="labelled") == 1)
        assert _metric(gw.url, "router_gateway_shadow_rows_total", result="failed") == 0
    finally:
        gw.stop()


# ---------------------------------------------------------------- 5: a total deadline for a non-streamed answer


def test_a_trickled_answer_is_cut_by_the_total_deadline(raw_gw):
    started = time.monotonic()
    resp = _post(raw_gw.url, {"model": "raw-model", "messages": MESSAGES}, x_raw="pieces")
    elapsed = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert elapsed < 2.0  # total = 1 s; the answer takes 2.4 s, each piece within read = 0.5 s


def test_timeouts_total_and_max_response_bytes_are_config_keys(tmp_path):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps({"upstream": {"base_url": "http://127.0.0.1:9/v1"},
                                "timeouts": {"total": 30}, "max_response_bytes": 1048576}))
    config = load_config(path)
    assert config.timeouts.total == 30.0 and config.max_response_bytes == 1048576
    defaults = GatewayConfig(upstream=Upstream("http://127.0.0.1:9/v1"))
    assert defaults.timeouts.total == 600.0 and defaults.max_response_bytes == 64 * 1024 * 1024
    docs = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    assert "total = 600" in docs and "max_response_bytes" in docs


# ---------------------------------------------------------------- 6: bounded upstream bodies


def test_a_huge_answer_is_refused_not_buffered(raw_gw):
    resp = _post(raw_gw.url, {"model": "raw-model", "messages": MESSAGES}, x_raw="huge")
    assert resp.status_code == 502, resp.text[:200]
    assert resp.json()["error"]["code"] == "upstream_response_too_large"
    assert _metric(raw_gw.url, "router_gateway_upstream_errors_total", kind="response_too_large") >= 1
    listing = httpx.get(f"{raw_gw.url}/v1/models", headers={"x-raw": "huge"}, timeout=20)  # the model list too
    assert listing.status_code == 502 and listing.json()["error"]["code"] == "upstream_response_too_large"


def test_a_huge_5xx_message_is_cut(raw_gw):  # 200,000 characters, under max_response_bytes: quoted, cut to 500
    resp = _post(raw_gw.url, {"model": "raw-model", "messages": MESSAGES}, x_raw="huge500")
    assert resp.status_code == 502
    message = resp.json()["error"]["message"]
    assert len(message) < 700 and "xxxx" in message


def test_a_streamed_answer_larger_than_the_cap_still_streams(raw_gw):
    resp = _post(raw_gw.url, {"model": "raw-model", "messages": MESSAGES, "stream": True}, x_raw="hugestream")
    assert resp.status_code == 200
    assert len(resp.content) > 3 * 1024 * 1024 and resp.content.endswith(b"data: [DONE]\n\n")


# ---------------------------------------------------------------- 7: no httpx line per upstream call


def test_the_gateway_does_not_log_a_line_per_upstream_call(upstream, caplog):
    logging.getLogger("httpx").setLevel(logging.NOTSET)
    with caplog.at_level(logging.INFO):
        gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url)), None)
        try:
            for _ in range(3):
                assert _post(gw.url, {"model": "gpt-4o", "messages": MESSAGES}).status_code == 200
        finally:
            gw.stop()
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("httpx", "httpcore"))] == []


# ---------------------------------------------------------------- 10: after a failed fallback, name the last model


def test_a_failed_fallback_names_the_strong_model(route_gw):
    tid = _tid()
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES}, x_fake_fault="500", x_request_id=tid)
    assert resp.status_code == 502
    assert resp.headers["x-router-fallback"] == "status_500"
    assert resp.headers["x-router-decision"] == "gpt-4o-mini"
    assert resp.headers["x-router-model"] == "gpt-4o"
    log = route_gw.config.decision_log
    assert log is not None
    assert wait_for(lambda: _records(log, tid))
    [record] = _records(log, tid)
    assert record["served_model"] == "gpt-4o"
    assert [a["model"] for a in record["attempts"]] == ["gpt-4o-mini", "gpt-4o"]


# ---------------------------------------------------------------- 11: the decision log is 0600


def test_the_decision_log_is_created_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "logs" / "decisions.jsonl"
        with DecisionLogWriter(path, include_prompt=True) as writer:
            writer.write({"request_id": "r", "prompt": "secret"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.rename(tmp_path / "logs" / "rotated.jsonl")  # a rotation: the writer creates the path again
        with DecisionLogWriter(path) as writer:
            path.unlink()
            writer.write({"request_id": "r2"})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert "0600" in (docs / "gateway.md").read_text().split("## Decision log", 1)[1].split("##", 1)[0]
    assert "0600" in (docs / "service.md").read_text()


# ---------------------------------------------------------------- the paths these fixes touched still work


def test_clean_streams_errors_and_escalations_are_unchanged(route_gw, upstream):
    sdk = route_gw.sdk()
    chunks = list(sdk.chat.completions.create(model="auto", messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "part0 part1 part2 "
    with pytest.raises(openai.RateLimitError):  # a 4xx passes through with its body
        sdk.chat.completions.create(model="auto", messages=MESSAGES, extra_headers={"x-fake-fault": "429"})
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES}, x_fake_fault="gpt-4o-mini=500")
    assert resp.status_code == 200 and resp.headers["x-router-model"] == "gpt-4o"  # a fallback that worked
    resp = _post(route_gw.url, {"model": "auto", "messages": MESSAGES, "response_format": {"type": "json_object"}},
                 x_fake_fault="gpt-4o-mini=invalid_json")
    assert resp.status_code == 200 and resp.headers["x-router-escalated"] == "json"
    assert resp.headers["x-router-model"] == "gpt-4o" and json.loads(resp.json()["choices"][0]["message"]["content"])
    listing = httpx.get(f"{route_gw.url}/v1/models").json()
    assert {m["id"] for m in listing["data"]} >= {"gpt-4o", "gpt-4o-mini", "auto"}
    assert httpx.get(f"{route_gw.url}/readyz").json()["status"] == "ready"


def test_a_client_leaving_a_stream_still_closes_the_upstream(route_gw, upstream):
    tid = _tid()
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    headers = {"x-test-id": tid, "x-fake-chunks": "100", "x-fake-chunk-delay": "0.05", "content-type": "application/json"}
    with httpx.stream("POST", f"{route_gw.url}/v1/chat/completions", json=body, headers=headers, timeout=20) as resp:
        for _ in resp.iter_raw():
            break
    assert wait_for(lambda: tid in upstream.streams_cut)
