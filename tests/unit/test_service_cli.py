"""The gRPC service's outputs and packaging end to end: observation mode and its decision log, the
Prometheus metrics endpoint, the router-serve command (environment, SIGHUP reload, SIGTERM) and the
check that the generated gRPC code is current. Real servers and processes, no mocks.

The router is a toy (tests/toy_artifact.py); the observe and metrics tests use the module's
observe-mode server (`server`, `stub`, `decision_log_path` in tests/unit/conftest.py, its prompt-hash
key in tests/service_observe.py). The RPCs themselves: test_service.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from service_helpers import (
    SERVING,
    channel,
    health_status,
    metric,
    router_stub,
    scrape,
    serve,
    wait_for,
)
from service_observe import PROMPT_HASH_KEY, PROMPTS

from router_model.observe.decision_log import read_decision_log, record_problem
from router_model.router import Router
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


# --- observation mode and metrics ----------------------------------------------------------


def test_observe_mode_writes_one_line_per_decision(stub, decision_log_path: Path, router: Router) -> None:
    before = len(list(read_decision_log(decision_log_path))) if decision_log_path.exists() else 0
    prompts = ["Summarise the plot of Hamlet.", "What is the capital of Peru?"]
    singles = [stub.Route(pb.RouteRequest(prompt=p, request_id=f"obs-{i}"), timeout=10) for i, p in enumerate(prompts)]
    messages = [pb.ChatMessage(role="user", content="Plan a three-day trip to Kyoto.")]
    chat = stub.Route(pb.RouteRequest(messages=messages, request_id="obs-chat"), timeout=10)
    batch = stub.RouteBatch(
        pb.RouteBatchRequest(requests=[pb.RouteRequest(prompt=p, request_id=f"obs-b{i}") for i, p in enumerate(prompts)]),
        timeout=10,
    )
    assert all(r.observe_only for r in [*singles, chat, *batch.responses])
    records = list(read_decision_log(decision_log_path))
    new = records[before:]
    assert len(new) == 5
    by_id = {r["request_id"]: r for r in new}
    assert set(by_id) == {"obs-0", "obs-1", "obs-chat", "obs-b0", "obs-b1"}
    for r in new:
        assert record_problem(r) is None
        assert "prompt" not in r
        assert (r["cheap_model"], r["strong_model"]) == (router.cheap_model, router.strong_model)
        assert r["artifact_version"] == router.version
    for i, (p, resp) in enumerate(zip(prompts, singles)):
        rec = by_id[f"obs-{i}"]
        assert "prompt_sha256" not in rec  # keyed hash only: an unsalted one can be reversed by guessing
        assert rec["prompt_hmac"] == hmac.new(PROMPT_HASH_KEY, p.encode(), hashlib.sha256).hexdigest()
        assert (rec["model"], rec["reason"]) == (resp.model, resp.reason)
        assert rec["p_cheap_ok"] == pytest.approx(resp.p_cheap_ok)
    chat_json = json.dumps([{"content": messages[0].content, "role": "user"}], separators=(",", ":"))
    assert by_id["obs-chat"]["prompt_hmac"] == hmac.new(PROMPT_HASH_KEY, chat_json.encode(), hashlib.sha256).hexdigest()


def test_log_prompts_stores_the_prompt_text(toy_model_dir: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "with-prompts.jsonl"
    config = ServerConfig(model_dir=toy_model_dir, port=0, decision_log=log_path, log_prompts=True)
    with serve(config) as running, channel(running) as ch:
        resp = router_stub(ch).Route(
            pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="Name three rivers.")]), timeout=10
        )
        assert resp.observe_only is False  # logging decisions does not by itself mean observation mode
    (record,) = list(read_decision_log(log_path))
    assert json.loads(record["prompt"]) == [{"role": "user", "content": "Name three rivers."}]
    assert "prompt_sha256" not in record and "prompt_hmac" not in record  # no key: no prompt hash
    assert record["request_id"] == resp.request_id


def test_metrics_endpoint_counts(server, stub) -> None:
    before = scrape(server)
    for p in PROMPTS:
        stub.Route(pb.RouteRequest(prompt=p), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Route(pb.RouteRequest(prompt=""), timeout=10)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("router_requests_total", rpc="Route") == len(PROMPTS) + 1
    assert delta("router_errors_total", rpc="Route", code="INVALID_ARGUMENT") == 1
    assert delta("router_request_duration_seconds_count", rpc="Route") == len(PROMPTS) + 1
    assert delta("router_request_duration_seconds_bucket", rpc="Route", le="+Inf") == len(PROMPTS) + 1
    router_ = server.router
    assert sum(delta("router_decisions_total", model=m, reason="classifier")
               for m in (router_.cheap_model, router_.strong_model)) == len(PROMPTS)
    assert metric(after, "router_model_info", artifact_version=router_.version) == 1
    assert "# TYPE router_request_duration_seconds histogram" in after
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/other", timeout=5)
    assert info.value.code == 404


# --- the command and the generated code ----------------------------------------------------


def test_router_serve_command_env_sighup_and_sigterm(toy_model_dir: Path, tmp_path: Path) -> None:
    decisions = tmp_path / "decisions.jsonl"
    env = {**os.environ, "ROUTER_MODEL_DIR": str(toy_model_dir), "ROUTER_PORT": "0", "ROUTER_HOST": "127.0.0.1",
           "ROUTER_WORKERS": "2", "ROUTER_LOG_LEVEL": "INFO", "ROUTER_DECISION_LOG": str(decisions)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from router_model.service.cli import main; sys.exit(main())"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("router-serve listening on 127.0.0.1:"), line + proc.stderr.read()
        address = line.split()[-1]
        with grpc.insecure_channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            assert wait_for(lambda: health_status(ch) == SERVING, timeout=60)
            stub = router_stub(ch)
            assert stub.Route(pb.RouteRequest(prompt="hi"), timeout=10).model
            loaded_at = loaded_at_ns(stub)
            os.rename(decisions, tmp_path / "decisions.jsonl.1")  # logrotate, then its postrotate SIGHUP
            proc.send_signal(signal.SIGHUP)  # no admin token needed: signals are the operator's
            assert wait_for(lambda: loaded_at_ns(stub) != loaded_at, timeout=60)
            assert decisions.exists()  # reopened by the SIGHUP, before any new decision
            assert stub.Route(pb.RouteRequest(prompt="after reload", request_id="r2"), timeout=10).model
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "SIGHUP reload" in err and "shutting down" in err
        assert [r["request_id"] for r in read_decision_log(decisions)] == ["r2"]
        assert len(list(read_decision_log(tmp_path / "decisions.jsonl.1"))) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def loaded_at_ns(stub) -> int:
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).loaded_at.ToNanoseconds()


def test_router_serve_rejects_bad_env() -> None:
    env = {**os.environ, "ROUTER_PORT": "not-a-port"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from router_model.service.cli import main; sys.exit(main(['--help']))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "ROUTER_PORT" in proc.stderr


def test_router_serve_defaults_to_loopback_and_refuses_renamed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from router_model.errors import ConfigError
    from router_model.service.cli import build_parser

    for name in ("ROUTER_HOST", "ROUTER_GRAPH", "ROUTER_THREADS", "ROUTER_MODEL_GRAPH", "ROUTER_MODEL_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert build_parser().parse_args([]).host == ServerConfig().host == "127.0.0.1"
    monkeypatch.setenv("ROUTER_MODEL_GRAPH", "fp32")
    monkeypatch.setenv("ROUTER_MODEL_THREADS", "2")
    args = build_parser().parse_args([])
    assert (args.graph, args.threads) == ("fp32", 2)
    monkeypatch.setenv("ROUTER_GRAPH", "fp32")
    with pytest.raises(ConfigError, match="ROUTER_GRAPH was renamed ROUTER_MODEL_GRAPH"):
        build_parser()


def test_generated_code_is_current() -> None:
    proc = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_generated_code_check_catches_a_stale_file(tmp_path: Path) -> None:
    for rel in ("scripts/gen_proto.py", "router_model/service/proto", "router_model/service/gen"):
        src, dst = ROOT / rel, tmp_path / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True)
            shutil.copyfile(src, dst)
    proto = tmp_path / "router_model/service/proto/router/v1/router.proto"
    proto.write_text(proto.read_text().replace("  string detail = 2;\n", "  string detail = 2;\n  string alt = 3;\n"))
    proc = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "router_model/service/gen/router/v1/router_pb2.py" in proc.stderr and "gen_proto.py" in proc.stderr
