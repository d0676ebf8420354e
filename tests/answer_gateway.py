"""A gateway over the toy pair with the toy answer score, for the answer-score tests.

tests/unit/test_answer_escalation.py (non-streamed answers) and tests/unit/test_stream_buffering.py
(--buffer-streams) start their own local upstream (each speaks what its tests need) and a `Gw`
over it: real servers on loopback, real HTTP. The toy prompt routes cheap; the toy answer score
is 0.88 for an answer that states no final answer (NO_FINAL) and 0.12 for one that does (WITH_FINAL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from gateway_upstream import wait_for
from route_gateway import metric_at

from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.server import ServerThread
from router_model.router import Router

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
CHEAP_PROMPT = "Translate this sentence into French."
STRONG_ANSWER = "The answer is (A), says the strong model."
NO_FINAL = "Bonjour, here is my attempt"  # states no final answer: score 0.88
WITH_FINAL = "The answer is (B)."  # states one: score 0.12
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class Gw:
    """A running gateway: requests with the test's headers, its decision-log lines, its metrics."""

    def __init__(self, config: GatewayConfig, router: Router) -> None:
        self.server = ServerThread(create_app(config, router=router)).start()
        self.url = self.server.url
        self.log = config.decision_log

    def headers(self, tid: str, text: str | None = None, fault: str | None = None) -> dict[str, str]:
        """Every API's auth headers, the test id, and what the local upstream's cheap model answers."""
        hdrs = {"content-type": "application/json", "authorization": "Bearer sk-x", "x-api-key": "sk-x",
                "anthropic-version": "2023-06-01", "x-test-id": tid, "x-request-id": tid}
        if text is not None:
            hdrs["x-fake-answer"] = text
        if fault is not None:
            hdrs["x-fake-fault"] = fault
        return hdrs

    def post(self, path: str, body: dict[str, Any], tid: str, **headers: str) -> httpx.Response:
        hdrs = self.headers(tid)
        hdrs.update(headers)
        return httpx.post(f"{self.url}{path}", content=json.dumps(body).encode(), headers=hdrs, timeout=30)

    def stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[httpx.Response, bytes, bool]:
        """POST a streamed request: the response, the bytes received, and whether the stream broke off."""
        got: list[bytes] = []
        with httpx.stream("POST", f"{self.url}{path}", content=json.dumps(body).encode(), headers=headers,
                          timeout=30) as resp:
            try:
                for chunk in resp.iter_bytes():
                    got.append(chunk)
            except httpx.RemoteProtocolError:
                return resp, b"".join(got), True
        return resp, b"".join(got), False

    def record(self, tid: str) -> dict[str, Any]:
        """The request's decision-log line (a stream's is written once its last byte is relayed: waited for)."""
        log = self.log
        assert log is not None

        def mine() -> list[dict[str, Any]]:
            lines = log.read_text().splitlines() if log.exists() else []
            return [r for r in (json.loads(line) for line in lines if line.strip()) if r["request_id"] == tid]

        assert wait_for(lambda: mine(), timeout=10)
        found = mine()
        assert len(found) == 1, found
        return found[0]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0.0 when absent)."""
        return metric_at(self.url, name, **labels)


def gateway(upstream_url: str, router: Router, log: Path, **config: Any) -> Iterator[Gw]:
    """A route-mode gateway to `upstream_url` (OpenAI and Anthropic APIs alike), stopped after use."""
    gw = Gw(GatewayConfig(upstream=Upstream(upstream_url), anthropic=Upstream(upstream_url), mode="route",
                          decision_log=log, **config), router)
    try:
        yield gw
    finally:
        gw.server.stop()
