"""The gateway and the calls that the tests of issue 25's gateway defects share:
tests/unit/test_gateway_defects.py (request handling, tags, logging) and
tests/unit/test_gateway_upstream_faults.py (upstreams that break, stall or answer too much).

`Gw` runs a gateway app under uvicorn on a loopback port; `post` sends a chat completion to it
with httpx and `metric` reads one sample of its /metrics. MESSAGES holds a prompt the toy pair
routes cheap.
"""

from __future__ import annotations

import json

import httpx
import openai
from route_gateway import metric_at

from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig
from router_model.gateway.server import ServerThread
from router_model.router import Router

CHEAP_PROMPT = "Translate this sentence into French."
MESSAGES = [{"role": "user", "content": CHEAP_PROMPT}]


def metric(url: str, name: str, **labels: str) -> float:
    return metric_at(url, name, **labels)


def post(url: str, body: dict | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", "authorization": "Bearer sk-caller"}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=hdrs, timeout=20)


class Gw:
    def __init__(self, config: GatewayConfig, router: Router | None) -> None:
        self.config = config
        self.server = ServerThread(create_app(config, router=router)).start()
        self.url = self.server.url
        self.gateway = self.server.server.config.app.state.gateway

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0, timeout=20)

    def stop(self) -> None:
        self.server.stop()
