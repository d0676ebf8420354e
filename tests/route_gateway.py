"""The gateway the test_gateway*.py files share, and their ways of calling it and reading it.

tests/unit/test_gateway.py (routing, forwarding, streaming), test_gateway_failures.py (escalation,
upstream failures, bad requests) and test_gateway_operations.py (cost, health, metrics, config,
reload, the CLI) each run a route-mode gateway over the toy pair and the local upstream
(`route_gateway`, through the module-scoped `route_gw` fixture of tests/unit/conftest.py) and call it as a caller
would: `post` with httpx, `Gw.sdk` with the official `openai` SDK. Real servers, nothing mocked.
`metric_at` is the one /metrics scrape every gateway test helper uses.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router_model import Router
from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Timeouts, Upstream
from router_model.gateway.server import ServerThread
from router_model.observe.decision_log import read_decision_log

CHEAP_KEY_ENV = "ROUTER_GATEWAY_TEST_CHEAP_KEY"
CANDIDATE_CHEAP_PROMPTS = (
    "Classify the sentiment of this review as positive, negative or neutral: 'The battery lasts all day.'",
    "Is this support ticket about billing, shipping or a technical problem? Ticket: 'I was charged twice.'",
    "Label the language of each line: 'Bonjour tout le monde' / 'Guten Morgen' / 'Buenos dias'.",
    "What is 2+2?",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tid() -> str:
    return uuid.uuid4().hex[:12]


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def metric_at(url: str, name: str, **labels: str) -> float:
    """One sample of a server's /metrics (0.0 when absent): the one scrape the gateway test helpers share."""
    return metric(metrics(url), name, **labels)


def log_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return list(read_decision_log(path))  # passes over a line the gateway is still appending


def pick_cheap_prompt(router: Router) -> str:
    """The first candidate prompt the router sends to the cheap model (a module's `cheap_prompt`)."""
    for prompt in CANDIDATE_CHEAP_PROMPTS:
        if router.predict([{"role": "user", "content": prompt}]).model == router.cheap_model:
            return prompt
    pytest.fail("the toy router sends none of the candidate prompts to the cheap model")


class Gw:
    def __init__(self, server: ServerThread, log: Path | None) -> None:
        self.server = server
        self.url = server.url
        self.log = log
        self.gateway = server.server.config.app.state.gateway

    def sdk(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0, **kw)

    def records(self, request_id: str) -> list[dict]:
        assert self.log is not None
        return [r for r in log_records(self.log) if r["request_id"] == request_id]


def start(config: GatewayConfig, router: Router | None) -> Gw:
    return Gw(ServerThread(create_app(config, router=router)).start(), config.decision_log)


def route_gateway(upstream, router, tmp_path_factory) -> Iterator[Gw]:
    """A route-mode gateway (a module's `route_gw`): the cheap model's upstream has its own key (from
    the environment), "down-model" an upstream nobody listens on, reads time out after 2 s."""
    os.environ[CHEAP_KEY_ENV] = "sk-cheap-from-env"
    down = f"http://127.0.0.1:{free_port()}/v1"
    config = GatewayConfig(
        upstream=Upstream(upstream.url),
        models={"gpt-4o-mini": Upstream(upstream.url, api_key_env=CHEAP_KEY_ENV), "down-model": Upstream(down)},
        mode="route",
        timeouts=Timeouts(read=2.0),  # the upstream's `slow` fault takes 3 s
        decision_log=tmp_path_factory.mktemp("gw-route") / "decisions.jsonl",
    )
    gw = start(config, router)
    yield gw
    gw.server.stop()


def post(gw: Gw, body: dict | bytes, tid: str, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", "authorization": "Bearer sk-caller", "x-test-id": tid, "x-request-id": tid}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return httpx.post(f"{gw.url}/v1/chat/completions", content=content, headers=hdrs, timeout=10)
