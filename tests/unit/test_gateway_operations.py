"""Operating the OpenAI-compatible gateway, end to end: cost metrics, health and readiness, config
files, the core package's imports, reload of a watched model directory, and the `router_model.gateway`
command run as a process (curl through it, SIGHUP reload, graceful SIGTERM).

The router is a real model directory with a toy graph (tests/toy_artifact.py: "Classify ..." and
"Translate ..." route cheap, "Prove the theorem." strong). The upstream is a local
OpenAI-compatible server (tests/gateway_upstream.py); the route-mode gateway `route_gw` and the
helpers that call it are in tests/route_gateway.py. Nothing is mocked.

Routing and streaming: test_gateway.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gateway_upstream import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS
from gateway_upstream import wait_for as _wait_for
from route_gateway import free_port as _free_port
from route_gateway import log_records as _log_records
from route_gateway import metric as _metric
from route_gateway import metrics as _metrics
from route_gateway import post as _post
from route_gateway import start as _start
from route_gateway import tid as _tid

from router_model import Router
from router_model.gateway.config import GatewayConfig, Upstream, load_config
from router_model.gateway.errors import GatewayConfigError

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fixtures


# ---------------------------------------------------------------- cost, health, metrics


def test_cost_metrics_match_the_usage_arithmetic(route_gw, router, cheap_prompt):
    before = _metrics(route_gw.url)
    resp = _post(route_gw, {"model": router.strong_model, "messages": [{"role": "user", "content": cheap_prompt}]}, _tid())
    assert resp.headers["x-router-model"] == router.cheap_model
    after = _metrics(route_gw.url)
    p, c, k = PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS
    cheap = ((p - k) * 0.15 + k * 0.075 + c * 0.60) / 1e6
    strong = ((p - k) * 2.50 + k * 1.25 + c * 10.00) / 1e6

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("router_gateway_cost_usd_total", model="gpt-4o-mini") == pytest.approx(cheap, rel=1e-9)
    assert delta("router_gateway_routed_cost_usd_total", mode="route") == pytest.approx(cheap, rel=1e-9)
    assert delta("router_gateway_baseline_cost_usd_total", mode="route") == pytest.approx(strong, rel=1e-9)
    assert delta("router_gateway_saved_usd", mode="route") == pytest.approx(strong - cheap, rel=1e-6)
    assert delta("router_gateway_tokens_total", model="gpt-4o-mini", kind="cached") == k
    assert delta("router_gateway_requests_total", endpoint="chat_completions", status="200") == 1
    assert delta("router_gateway_decisions_total", model="gpt-4o-mini", reason="classifier", mode="route") == 1


def test_health_ready_models(route_gw, router):
    assert httpx.get(f"{route_gw.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{route_gw.url}/readyz").json()
    assert ready["status"] == "ready" and ready["artifact_version"] == router.version
    ids = [m.id for m in route_gw.sdk().models.list()]
    assert {"gpt-4o", "gpt-4o-mini", "auto"} <= set(ids)
    m = _metrics(route_gw.url)
    assert _metric(m, "router_gateway_router_loaded") == 1
    assert _metric(m, "router_gateway_router_info", artifact_version=router.version) == 1


def test_config_files(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TEST_KEY", "k")
    toml = tmp_path / "gw.toml"
    toml.write_text(
        'mode = "route"\naliases = ["auto", "router"]\n[upstream]\nbase_url = "http://127.0.0.1:1/v1/"\n'
        '[models."gpt-4o-mini"]\nbase_url = "https://cheap.example/v1"\napi_key_env = "GW_TEST_KEY"\n'
        "[timeouts]\nread = 3\n[checks]\nrefusal = false\n"
    )
    config = load_config(toml, port=9999)
    assert config.mode == "route" and config.port == 9999 and config.timeouts.read == 3.0
    assert config.upstream.base_url == "http://127.0.0.1:1/v1"
    assert config.upstream_for("gpt-4o-mini").api_key() == "k" and config.upstream_for("other") == config.upstream
    assert config.checks.refusal is False and config.aliases == frozenset({"auto", "router"})
    assert load_config(toml, upstream_url="http://u:2/v1", mode="observe").upstream.base_url == "http://u:2/v1"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"upstream": {"base_url": "http://x/v1"}, "timeouts": {"read": -1}}))
    with pytest.raises(GatewayConfigError, match="timeouts.read"):
        load_config(bad)
    bad.write_text(json.dumps({"upstream": {"base_url": "http://x/v1"}, "api_key": "sk-secret"}))
    with pytest.raises(GatewayConfigError, match="api_key"):
        load_config(bad)
    bad.write_text(json.dumps({"upstream": {"base_url": "http://x/v1", "api_key_env": "GW_TEST_UNSET_VAR"}}))
    with pytest.raises(GatewayConfigError, match="GW_TEST_UNSET_VAR"):
        load_config(bad)
    with pytest.raises(GatewayConfigError, match="upstream"):
        load_config(None)


def test_core_package_does_not_import_the_gateway_deps():
    code = (
        "import sys, router_model, router_model.router, router_model.gateway\n"
        "heavy = [m for m in ('starlette', 'httpx', 'uvicorn', 'prometheus_client', 'torch', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------- reload, CLI, curl


def test_watch_reload_keeps_the_last_good_router(upstream, toy_model_dir, tmp_path):
    copy = tmp_path / "router"
    shutil.copytree(toy_model_dir, copy)
    router = Router.load(copy)
    config = GatewayConfig(upstream=Upstream(upstream.url), model_dir=copy, watch_interval=0.1)
    gw = _start(config, router)
    try:
        meta = (copy / "metadata.json").read_text()

        def replace_metadata(text: str) -> None:  # atomically, as a deploy would
            (copy / "metadata.tmp").write_text(text)
            os.replace(copy / "metadata.tmp", copy / "metadata.json")

        replace_metadata("{ truncated")
        assert _wait_for(lambda: _metric(_metrics(gw.url), "router_gateway_reloads_total", result="failed") >= 1)
        assert gw.gateway.holder.router is router
        assert httpx.get(f"{gw.url}/readyz").status_code == 200
        replace_metadata(meta)
        assert _wait_for(lambda: _metric(_metrics(gw.url), "router_gateway_reloads_total", result="ok") == 2)
        assert gw.gateway.holder.router is not router and gw.gateway.holder.router.version == router.version
    finally:
        gw.server.stop()


@pytest.fixture(scope="module")
def cli_gw(upstream, toy_model_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("gw-cli") / "decisions.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_model.gateway", "--model-dir", str(toy_model_dir), "--upstream", upstream.url,
         "--port", str(port), "--mode", "route", "--decision-log", str(log), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert _wait_for(ready, timeout=60), "the gateway CLI did not become ready"
    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    yield proc, url, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_curl_stream_and_non_stream(cli_gw, router, cheap_prompt):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed on this machine; the SDK and httpx tests cover the same endpoints")
    _, url, log = cli_gw
    body = json.dumps({"model": router.strong_model, "messages": [{"role": "user", "content": cheap_prompt}]})
    out = subprocess.run(
        [curl, "-sS", "-i", f"{url}/v1/chat/completions", "-H", "content-type: application/json", "-H", "authorization: Bearer sk-x",
         "-d", body], capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    head, _, payload = out.partition("\n\n")  # text mode turned \r\n into \n
    assert head.startswith("HTTP/1.1 200") and f"x-router-model: {router.cheap_model}" in head
    assert json.loads(payload)["choices"][0]["message"]["content"] == f"answer from {router.cheap_model}"
    stream_body = json.dumps({**json.loads(body), "stream": True})
    out = subprocess.run(
        [curl, "-sS", "-N", f"{url}/v1/chat/completions", "-H", "content-type: application/json", "-d", stream_body],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    events = [line for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) == 6
    assert _wait_for(lambda: len(_log_records(log)) >= 2)


def test_cli_sighup_reload_and_graceful_stop(cli_gw):
    proc, url, _ = cli_gw
    assert _metric(_metrics(url), "router_gateway_reloads_total", result="ok") == 1
    proc.send_signal(signal.SIGHUP)
    assert _wait_for(lambda: _metric(_metrics(url), "router_gateway_reloads_total", result="ok") == 2, timeout=30)
    # a stream in flight when SIGTERM arrives still runs to its end
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10,
                      headers={"x-fake-chunks": "5", "x-fake-chunk-delay": "0.1"}) as resp:
        proc.send_signal(signal.SIGTERM)
        data = resp.read()
    assert data.rstrip().endswith(b"data: [DONE]")
    assert proc.wait(timeout=20) == 0
