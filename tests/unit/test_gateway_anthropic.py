"""POST /v1/messages: Anthropic's Messages API routed, through the official `anthropic` SDK.

A toy pair of Anthropic model names (tests/toy_artifact.py: "Translate ..." routes cheap, "Prove
the theorem." strong) and a real local upstream that speaks Messages, JSON and SSE
(tests/gateway_upstream.py). Nothing is mocked.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import anthropic
import pytest
from gateway_harness import running_gateway
from gateway_upstream import (
    ANTHROPIC_CACHE_READ,
    ANTHROPIC_CACHE_WRITE,
    ANTHROPIC_INPUT_TOKENS,
    ANTHROPIC_OUTPUT_TOKENS,
    wait_for,
)
from toy_artifact import write_toy_pair

from router_model import Router
from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.gateway.config import GatewayConfig, Upstream, load_config

CHEAP, STRONG = "claude-haiku-4-5", "claude-sonnet-4-5"
EASY, HARD = "Translate this sentence into French.", "Prove the theorem."
KEY_ENV = "ROUTER_GATEWAY_TEST_ANTHROPIC_KEY"
USAGE = Usage(ANTHROPIC_INPUT_TOKENS + ANTHROPIC_CACHE_READ + ANTHROPIC_CACHE_WRITE, ANTHROPIC_OUTPUT_TOKENS,
              ANTHROPIC_CACHE_READ, ANTHROPIC_CACHE_WRITE)


@pytest.fixture(scope="module")
def claude_router(tmp_path_factory) -> Router:
    return Router.load(write_toy_pair(tmp_path_factory.mktemp("claude-pair") / "router", cheap=CHEAP, strong=STRONG))


def _config(upstream, tmp_path_factory, mode: str, **kw) -> GatewayConfig:
    return GatewayConfig(upstream=Upstream("http://127.0.0.1:9/v1"), anthropic=Upstream(upstream.url), mode=mode,
                         decision_log=tmp_path_factory.mktemp(f"anthropic-{mode}") / "decisions.jsonl", **kw)


@pytest.fixture(scope="module")
def route_gw(upstream, claude_router, tmp_path_factory):
    os.environ[KEY_ENV] = "sk-ant-from-env"
    # the strong model has its own upstream entry with its own key; the cheap one uses `anthropic`
    models = {STRONG: Upstream(upstream.url, api_key_env=KEY_ENV)}
    with running_gateway(_config(upstream, tmp_path_factory, "route", models=models), claude_router) as gw:
        yield gw


@pytest.fixture(scope="module")
def observe_gw(upstream, claude_router, tmp_path_factory):
    with running_gateway(_config(upstream, tmp_path_factory, "observe"), claude_router) as gw:
        yield gw


def _client(gw, test_id: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-caller", max_retries=0,
                               default_headers={"x-test-id": test_id, **headers})


def _tid() -> str:
    return uuid.uuid4().hex[:12]


def _record(gw, request_id: str) -> dict:
    assert wait_for(lambda: gw.records(request_id)), "no decision-log record"
    (rec,) = gw.records(request_id)
    return rec


def test_prices_have_the_claude_pair_with_cache_writes() -> None:
    prices = PriceTable.load()
    cost = usage_cost(prices, CHEAP, USAGE)
    assert cost == pytest.approx((100 * 1.00 + 1000 * 0.10 + 200 * 1.25 + 30 * 5.00) / 1e6)
    assert usage_cost(prices, STRONG, USAGE) == pytest.approx((100 * 3 + 1000 * 0.3 + 200 * 3.75 + 30 * 15) / 1e6)


def test_usage_from_anthropic_counts_cache_reads_and_writes_as_input() -> None:
    got = Usage.from_anthropic({"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 11,
                                "cache_creation_input_tokens": 13})
    assert got == Usage(29, 7, 11, 13)
    assert got.to_dict()["cache_write_tokens"] == 13
    assert Usage.from_anthropic(None) is None


def test_route_mode_plain_easy_prompt_goes_to_the_cheap_model(route_gw, upstream) -> None:
    tid = _tid()
    raw = _client(route_gw, tid, **{"anthropic-beta": "prompt-caching-2024-07-31"}).messages.with_raw_response.create(
        model=STRONG, max_tokens=64, system="You are a translator.", messages=[{"role": "user", "content": EASY}])
    msg = raw.parse()
    assert msg.content[0].text == f"answer from {CHEAP}"
    assert msg.usage.cache_read_input_tokens == ANTHROPIC_CACHE_READ
    assert raw.headers["x-router-model"] == CHEAP and raw.headers["x-router-mode"] == "route"
    (sent,) = upstream.for_test(tid)
    assert sent.path == "/v1/messages" and sent.body["model"] == CHEAP and sent.body["system"] == "You are a translator."
    # the caller's Anthropic headers go through; the cheap model has no key of its own
    # (this SDK sends its key as `authorization: Bearer`; older ones as `x-api-key`)
    credential = sent.headers.get("x-api-key") or sent.headers.get("authorization", "").removeprefix("Bearer ")
    assert credential == "sk-ant-caller" and sent.headers["anthropic-version"]
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    rec = _record(route_gw, raw.headers["x-router-request-id"])
    assert rec["endpoint"] == "messages" and rec["served_model"] == CHEAP and rec["model"] == CHEAP
    assert rec["usage"] == USAGE.to_dict()
    prices = PriceTable.load()
    assert rec["cost_usd"] == pytest.approx(usage_cost(prices, CHEAP, USAGE))
    assert rec["baseline_cost_usd"] == pytest.approx(usage_cost(prices, STRONG, USAGE))
    assert rec["saved_usd"] > 0


def test_route_mode_hard_prompt_goes_strong_with_the_upstream_key(route_gw, upstream) -> None:
    tid = _tid()
    client = _client(route_gw, tid, **{"x-api-key": "sk-ant-caller"})
    msg = client.messages.create(model="auto", max_tokens=64, messages=[{"role": "user", "content": HARD}])
    assert msg.content[0].text == f"answer from {STRONG}"
    (sent,) = upstream.for_test(tid)
    assert sent.body["model"] == STRONG and sent.headers["x-api-key"] == "sk-ant-from-env"
    assert "authorization" not in sent.headers


def test_route_mode_stream_relays_the_events_and_prices_the_usage(route_gw, upstream) -> None:
    tid = _tid()
    client = _client(route_gw, tid)
    with client.messages.stream(model=STRONG, max_tokens=64, messages=[{"role": "user", "content": EASY}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert "".join(b.text for b in final.content if b.type == "text") == f"answer from {CHEAP}"
    assert final.usage.output_tokens == ANTHROPIC_OUTPUT_TOKENS
    assert wait_for(lambda: tid in upstream.streams_completed)
    (sent,) = upstream.for_test(tid)
    assert sent.body["model"] == CHEAP and sent.body["stream"] is True
    assert wait_for(lambda: any(r["stream"] and r["usage"] == USAGE.to_dict() for r in route_gw.records()))
    streamed = [r for r in route_gw.records() if r["stream"] and r["served_model"] == CHEAP]
    assert streamed[-1]["cost_usd"] == pytest.approx(usage_cost(PriceTable.load(), CHEAP, USAGE))


def test_create_stream_true_with_tools(route_gw, upstream) -> None:
    tid = _tid()
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    events = list(_client(route_gw, tid).messages.create(
        model=STRONG, max_tokens=64, tools=tools, messages=[{"role": "user", "content": EASY}], stream=True))
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [b.type for b in starts] == ["text", "tool_use"]
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason == "tool_use"


def test_observe_mode_forwards_the_asked_model_and_logs_the_decision(observe_gw, upstream) -> None:
    tid = _tid()
    raw = _client(observe_gw, tid).messages.with_raw_response.create(
        model=STRONG, max_tokens=64, messages=[{"role": "user", "content": [{"type": "text", "text": EASY}]}])
    assert raw.parse().content[0].text == f"answer from {STRONG}"
    assert raw.headers["x-router-model"] == STRONG and raw.headers["x-router-decision"] == CHEAP
    (sent,) = upstream.for_test(tid)
    assert sent.body["model"] == STRONG
    rec = _record(observe_gw, raw.headers["x-router-request-id"])
    assert rec["mode"] == "observe" and rec["model"] == CHEAP and rec["saved_is_estimate"] is True
    assert rec["saved_usd"] == pytest.approx(usage_cost(PriceTable.load(), STRONG, USAGE)
                                             - usage_cost(PriceTable.load(), CHEAP, USAGE))


def test_an_unknown_model_passes_through_and_upstream_errors_keep_their_status(route_gw, upstream) -> None:
    tid = _tid()
    msg = _client(route_gw, tid).messages.create(model="claude-opus-4-1", max_tokens=8,
                                                  messages=[{"role": "user", "content": HARD}])
    assert msg.content[0].text == "answer from claude-opus-4-1"
    with pytest.raises(anthropic.RateLimitError):
        _client(route_gw, _tid(), **{"x-fake-fault": "429"}).messages.create(
            model=STRONG, max_tokens=8, messages=[{"role": "user", "content": HARD}])
    with pytest.raises(anthropic.BadRequestError):
        _client(route_gw, _tid()).messages.create(model=STRONG, max_tokens=8, messages=[])


def test_metrics_count_the_messages_endpoint(route_gw) -> None:
    _client(route_gw, _tid()).messages.create(model=STRONG, max_tokens=8, messages=[{"role": "user", "content": EASY}])
    assert route_gw.metric("router_gateway_requests_total", endpoint="messages", status="200") >= 1


def test_config_file_anthropic_upstream_and_affinity_keys(tmp_path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('affinity = "session"\naffinity_ttl_seconds = 60\naffinity_max_entries = 10\n'
                    'affinity_session_field = "metadata.user_id"\n'
                    '[upstream]\nbase_url = "https://api.openai.com/v1"\n'
                    '[anthropic]\nbase_url = "https://api.anthropic.com/v1"\n')
    config = load_config(path)
    assert config.anthropic is not None and config.anthropic.base_url == "https://api.anthropic.com/v1"
    assert config.anthropic_upstream_for(CHEAP).base_url == "https://api.anthropic.com/v1"
    assert config.upstream_for(CHEAP).base_url == "https://api.openai.com/v1"
    assert config.affinity == "session" and config.affinity_ttl_seconds == 60 and config.affinity_max_entries == 10
    assert config.affinity_session_field == "metadata.user_id"


def _docs_section(heading: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text(encoding="utf-8")
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_docs_example_runs_as_written(route_gw, tmp_path, capsys, monkeypatch) -> None:
    section = _docs_section("The Anthropic Messages API")
    config = tmp_path / "gateway.toml"
    config.write_text(section.split("```toml\n", 1)[1].split("```", 1)[0])
    assert load_config(config).anthropic_upstream_for(CHEAP).base_url == "https://api.anthropic.com/v1"
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "ROUTER_GATEWAY_URL" in code  # the gateway's address (tests/unit/test_docs_examples.py sets it too)
    monkeypatch.setenv("ROUTER_GATEWAY_URL", route_gw.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-docs")
    exec(compile(code, "docs/gateway.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    assert f"answer from {CHEAP}" in out and f"answer from {STRONG}" in out


def test_observe_mode_stream_with_cached_system_blocks(observe_gw, upstream) -> None:
    tid = _tid()
    system = [{"type": "text", "text": "You are a careful mathematician.", "cache_control": {"type": "ephemeral"}}]
    with _client(observe_gw, tid, **{"x-request-id": tid}).messages.stream(
            model=STRONG, max_tokens=64, system=system, messages=[{"role": "user", "content": HARD}]) as stream:
        text = "".join(stream.text_stream)
    assert text == f"answer from {STRONG}"
    (sent,) = upstream.for_test(tid)
    assert sent.body["model"] == STRONG and sent.body["system"] == system  # forwarded as sent
    rec = _record(observe_gw, tid)
    assert rec["mode"] == "observe" and rec["model"] == STRONG and rec["stream"] is True
    assert rec["usage"] == USAGE.to_dict() and rec["saved_usd"] == 0
