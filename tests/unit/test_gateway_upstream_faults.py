"""Defects of issue 25 in the gateway against an upstream that misbehaves, each with the test that
showed it: a stream the upstream breaks must not look complete, a non-streamed answer has a total
deadline, and upstream bodies are bounded.

These are faults a well-behaved HTTP server cannot produce (a chunked stream cut without its last
chunk, a stall, an answer trickled in pieces, huge bodies), so the upstream is a raw socket server
written here; the gateway runs under uvicorn (tests/defect_gateway.py). Nothing is mocked. The
other defects of issue 25: test_gateway_defects.py.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from defect_gateway import MESSAGES
from defect_gateway import Gw as _Gw
from defect_gateway import metric as _metric
from defect_gateway import post as _post
from gateway_upstream import wait_for

from router_model.gateway.config import GatewayConfig, Timeouts, Upstream, load_config

# ---------------------------------------------------------------- helpers


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

