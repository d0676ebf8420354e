"""The Node `openai` SDK through the gateway (tests/node/openai_client.js): chat completions and the
Responses API, plain and streamed, and a Responses tool loop, with the toy router in route mode.

Needs `node` (>= 18) and `npm ci --prefix tests/node` (scripts/setup_env.sh runs it when npm is
present); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from gateway_harness import running_gateway
from gateway_upstream import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, serve_fake_upstream, wait_for

from router_model import Router
from router_model.gateway.affinity import REASON_TOOL_LOOP
from router_model.gateway.config import GatewayConfig, Upstream

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
EASY = "Translate this sentence into French."


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; install Node.js >= 18 to run the Node openai SDK test")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        pytest.skip("the Node openai package is not installed; run `npm ci --prefix tests/node` first")
    return node


def test_node_openai_sdk_chat_and_responses_through_the_gateway(toy_model_dir, tmp_path) -> None:
    node = _node()
    router = Router.load(toy_model_dir)
    cheap = router.cheap_model
    with serve_fake_upstream() as fake:
        config = GatewayConfig(upstream=Upstream(fake.url), mode="route", decision_log=tmp_path / "decisions.jsonl")
        with running_gateway(config, router) as gw:
            proc = subprocess.run([node, str(NODE_DIR / "openai_client.js"), gw.url + "/v1", EASY],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout)
            assert wait_for(lambda: len(gw.records()) == 6), gw.records()
            records = gw.records()
    assert out["chat"] == {"text": f"answer from {cheap}", "model": cheap, "reason": "classifier"}
    stream = out["chat_stream"]
    assert stream["text"] == "part0 part1 part2 " and stream["model"] == cheap
    assert stream["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert out["responses"]["text"] == f"answer from {cheap}" and out["responses"]["model"] == cheap
    events = out["responses_stream"]
    assert events["types"][0] == "response.created" and events["types"][-1] == "response.completed"
    assert events["text"] == "part0 part1 part2 " and events["model"] == cheap
    assert events["usage"] == {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
                               "output_tokens": COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                               "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
    first, second = out["tool_loop"]
    assert first["model"] == second["model"] == cheap and second["reason"] == REASON_TOOL_LOOP
    assert [r.body["model"] for r in fake.for_test("node-sdk")] == [cheap] * 6
    assert {r["endpoint"] for r in records} == {"chat_completions", "responses"} and len(records) == 6
