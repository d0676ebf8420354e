"""Dynamic batching (router_model/batching.py): a toy router (tests/toy_artifact.py), real ONNX runs,
real gRPC and HTTP servers.

Exact equality (1e-6) with `Router.predict` is checked on the fp32 graph. That a trained router's
int8 graph is batch invariant too is tests/integration/test_batching.py.

The ordering tests hold the batcher's one runner inside a graph run (a Router whose `decide`
waits for a gate before running the real graph), so which requests share a batch is decided
by the test, not by timing.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterable, Sequence

import grpc
import httpx
import pytest
from gateway_upstream import FakeUpstream
from service_helpers import channel, router_stub, serve

from router_model.batching import Batcher, BatcherClosedError, BatchingConfig, DeadlineExpiredError
from router_model.errors import ConfigError, InvalidRequestError
from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream, load_config
from router_model.gateway.server import ServerThread
from router_model.router import Router
from router_model.service.cli import build_parser, config_from_args
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb

PROMPTS = [
    "What is 2 + 2?",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
    "Translate 'good morning' into French.",
    "Write a Python function that merges overlapping intervals and analyse its complexity.",
    "Summarise the causes of the French Revolution in three bullet points.",
    "Label the sentiment of: 'The battery lasts all day.'",
    "Derive the closed form of the sum of the first n squares and prove it by induction.",
    "Is this ticket about billing or shipping? 'I was charged twice.'",
]
CHAT = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Explain recursion to a child."}]
IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
]}]
TOL = 1e-6


class GatedRouter(Router):
    """The (toy) router; `decide` waits for `gate` first, so the test controls when a run ends."""

    gate: threading.Event
    entered: threading.Event

    def decide(self, prepared: Sequence, candidates: Iterable[str] | None = None) -> list:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().decide(prepared, candidates)


@pytest.fixture(scope="module")
def router(toy_model_dir) -> Router:
    return Router.load(toy_model_dir, graph="fp32")


@pytest.fixture()
def gated(toy_model_dir) -> GatedRouter:
    r = GatedRouter.load(toy_model_dir, graph="fp32")
    assert isinstance(r, GatedRouter)
    r.gate, r.entered = threading.Event(), threading.Event()
    return r


def _same(a, b) -> None:
    assert (a.model, a.reason, a.prompt_tokens, a.artifact_version) == (b.model, b.reason, b.prompt_tokens, b.artifact_version)
    if a.p_cheap_ok is None:
        assert b.p_cheap_ok is None
    else:
        assert abs(a.p_cheap_ok - b.p_cheap_ok) <= TOL
        assert abs(a.confidence - b.confidence) <= TOL


def _submit_in_thread(batcher: Batcher, router: Router, request) -> concurrent.futures.Future:
    """Submit from another thread: a lone request runs in its caller's thread (here: held at the gate)."""
    out: concurrent.futures.Future = concurrent.futures.Future()
    threading.Thread(target=lambda: out.set_result(batcher.submit(router, request)), daemon=True).start()
    return out


def _wait_queued(batcher: Batcher, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(batcher._queue) < n:
        assert time.monotonic() < deadline, f"{len(batcher._queue)} of {n} requests queued"
        time.sleep(0.005)


# ---------------------------------------------------------------- the Router's batch path


def test_predict_batch_equals_predict(router):
    requests = [*PROMPTS, CHAT, IMAGE, "x " * 900]  # the long one is truncated head+tail; the image goes by rule
    singles = [router.predict(r) for r in requests]
    batched = router.predict_batch(requests)
    for s, b in zip(singles, batched):
        _same(s, b)
    assert batched[len(PROMPTS) + 1].reason == "vision"
    # the split path the batcher uses gives the same, in any grouping
    prepared = [router.prepare(r) for r in requests]
    for s, d in zip(singles, router.decide(prepared[::-1])[::-1]):
        _same(s, d)


# ---------------------------------------------------------------- the batcher


def test_concurrent_callers_get_their_own_answers(router):
    """16 threads through one batcher: each answer equals that caller's single predict."""
    batcher = Batcher(BatchingConfig(max_delay_ms=2, max_size=32, runners=2))
    try:
        requests = [PROMPTS[i % len(PROMPTS)] + f" (variant {i})" for i in range(64)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda r: batcher.predict(router, r, timeout=30), requests))
        for req, d in zip(requests, got):
            _same(router.predict(req), d)
        stats = batcher.stats()
        assert stats.items == len(requests) and stats.expired == 0
    finally:
        batcher.close()


def test_a_lone_request_runs_at_once_without_waiting_for_the_window(router):
    """With nothing else in flight, a request runs immediately even with a 1-second window."""
    batcher = Batcher(BatchingConfig(max_delay_ms=1000, runners=2))
    try:
        for prompt in PROMPTS[:3]:
            _same(router.predict(prompt), batcher.predict(router, prompt, timeout=30))
        future = batcher.submit(router, PROMPTS[3])
        assert future.done()  # run in the caller's thread before submit returned: no window, no hand-over
        stats = batcher.stats()
        assert (stats.batches, stats.immediate, stats.waited) == (4, 4, 0)
    finally:
        batcher.close()


def test_queued_requests_share_one_run_and_buckets_split_by_length(gated, router):
    batcher = Batcher(BatchingConfig(max_delay_ms=0, runners=1, buckets=(64, 512)))
    try:
        first = _submit_in_thread(batcher, gated, PROMPTS[0])
        assert gated.entered.wait(10)  # the lone first request is inside its run, in its caller's thread
        short = [batcher.submit(gated, p) for p in PROMPTS[1:6]]
        long_prompt = "Explain this code line by line: " + "for i in range(10): total += i * i\n" * 40
        long = batcher.submit(gated, long_prompt)
        _wait_queued(batcher, 6)
        gated.gate.set()
        _same(router.predict(PROMPTS[0]), first.result(30).result(30))
        for p, f in zip(PROMPTS[1:6], short):
            _same(router.predict(p), f.result(30))
        _same(router.predict(long_prompt), long.result(30))
        stats = batcher.stats()
        # the first alone; the five short ones in one run; the long one in its own bucket (alone,
        # with nothing else running: immediate too)
        assert (stats.batches, stats.items, stats.largest, stats.immediate, stats.waited) == (3, 7, 5, 2, 0)
    finally:
        gated.gate.set()
        batcher.close()


def test_an_expired_caller_is_dropped_before_the_run(gated, router):
    batcher = Batcher(BatchingConfig(max_delay_ms=0, runners=1, buckets=(512,)))
    try:
        first = _submit_in_thread(batcher, gated, PROMPTS[0])
        assert gated.entered.wait(10)
        expired = batcher.submit(gated, PROMPTS[1], deadline=time.monotonic() + 0.05)
        cancelled = batcher.submit(gated, PROMPTS[2])
        assert cancelled.cancel()
        left = batcher.submit(gated, PROMPTS[3], alive=lambda: False)
        kept = batcher.submit(gated, PROMPTS[4], deadline=time.monotonic() + 60)
        time.sleep(0.1)  # `expired`'s deadline passes while it waits behind the running batch
        gated.gate.set()
        first.result(30).result(30)
        with pytest.raises(DeadlineExpiredError, match="deadline passed before the batch ran"):
            expired.result(30)
        with pytest.raises(DeadlineExpiredError, match="caller left"):
            left.result(30)
        _same(router.predict(PROMPTS[4]), kept.result(30))
        stats = batcher.stats()
        assert (stats.expired, stats.cancelled) == (1, 2)
        assert stats.items == 2  # only `first` and `kept` reached the graph
    finally:
        gated.gate.set()
        batcher.close()


def test_predict_gives_up_at_its_timeout(gated):
    batcher = Batcher(BatchingConfig(max_delay_ms=0, runners=1))
    try:
        _submit_in_thread(batcher, gated, PROMPTS[0])
        assert gated.entered.wait(10)
        with pytest.raises(DeadlineExpiredError, match="waited for its batch"):
            batcher.predict(gated, PROMPTS[1], timeout=0.05)
        gated.gate.set()
        deadline = time.monotonic() + 10
        while batcher.stats().cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (batcher.stats().cancelled, batcher.stats().items) == (1, 1)  # the abandoned request never ran
    finally:
        gated.gate.set()
        batcher.close()


def test_bad_requests_fail_alone_and_rules_skip_the_queue(router):
    batcher = Batcher(BatchingConfig())
    try:
        with pytest.raises(InvalidRequestError) as err:
            batcher.submit(router, [{"role": "user", "content": 42}])
        assert err.value.field and err.value.field.startswith("messages[0]")
        assert batcher.submit(router, IMAGE).result(5).reason == "vision"
        assert batcher.submit(router, "Summarise this.", tags=["High-Accuracy"]).result(5).reason == "tag:high-accuracy"
        stats = batcher.stats()
        assert (stats.rules, stats.batches) == (2, 0)
    finally:
        batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.submit(router, PROMPTS[0])


def test_batching_config_is_checked():
    for bad in (dict(max_delay_ms=-1), dict(max_size=0), dict(runners=0), dict(buckets=(64, 32))):
        with pytest.raises(ConfigError):
            BatchingConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- router-serve


def test_cli_flags_build_the_batching_config(monkeypatch):
    args = build_parser().parse_args(["--batching", "--batch-max-delay-ms", "1.5", "--batch-max-size", "8", "--batch-runners", "3"])
    assert config_from_args(args).batching == BatchingConfig(max_delay_ms=1.5, max_size=8, runners=3)
    assert config_from_args(build_parser().parse_args([])).batching is None
    monkeypatch.setenv("ROUTER_BATCHING", "1")
    assert config_from_args(build_parser().parse_args([])).batching == BatchingConfig()


def test_grpc_concurrent_clients_with_batching(toy_model_dir, router):
    config = ServerConfig(model_dir=toy_model_dir, host="127.0.0.1", port=0, graph="fp32", batching=BatchingConfig(max_delay_ms=2))
    requests = [(f"req-{i}", PROMPTS[i % len(PROMPTS)] + ("?" * (i % 3))) for i in range(96)]
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)

        def call(item: tuple[str, str]) -> tuple[str, str, pb.RouteResponse]:
            rid, prompt = item
            return rid, prompt, stub.Route(pb.RouteRequest(prompt=prompt, request_id=rid), timeout=30)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, requests))
        for rid, prompt, resp in answers:
            want = router.predict(prompt)
            assert resp.request_id == rid
            assert resp.model == want.model and resp.reason == want.reason
            assert abs(resp.p_cheap_ok - want.p_cheap_ok) <= TOL
        # an image goes by rule, a malformed request fails alone, with its field
        assert stub.Route(pb.RouteRequest(messages=[pb.ChatMessage(role="user", parts=[
            pb.ContentPart(type="image_url", image_url=pb.ImageUrl(url="https://example.com/a.png"))])]), timeout=10).reason == "vision"
        with pytest.raises(grpc.RpcError) as err:
            stub.Route(pb.RouteRequest(messages=[pb.ChatMessage(role="wizard", content="hi")]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert running.servicer is not None and running.servicer.batcher is not None
        stats = running.servicer.batcher.stats()
        assert stats.items == len(requests) and stats.expired == 0
        assert stats.mean_size > 1.0, stats  # 16 concurrent clients did share runs
    assert running.servicer.batcher.stats() == stats  # closed with the server, nothing ran after


def test_grpc_caller_whose_deadline_passes_in_the_queue_is_never_computed(toy_slow_model_dir):
    """One runner busy with long prompts: a short call with a 100 ms deadline waits behind them,
    gets DEADLINE_EXCEEDED, and the graph never sees it (dropped by the batcher, or refused on
    arrival if the deadline had already passed). The toy that takes time per token stands in for
    a real embedder here."""
    config = ServerConfig(model_dir=toy_slow_model_dir, host="127.0.0.1", port=0, batching=BatchingConfig(runners=1))
    long_prompt = "Explain this code line by line: " + "for i in range(10): total += i * i\n" * 240  # ~2,900 tokens
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        assert running.servicer is not None and running.servicer.batcher is not None
        batcher = running.servicer.batcher
        longs = [stub.Route.future(pb.RouteRequest(prompt=long_prompt, request_id=f"long-{i}"), timeout=60) for i in range(8)]
        _wait_queued(batcher, 7)  # one long runs in its handler's thread, seven wait for the runner
        with pytest.raises(grpc.RpcError) as err:
            stub.Route(pb.RouteRequest(prompt="What is 2 + 2?", request_id="late"), timeout=0.1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [f.result().request_id for f in longs] == [f"long-{i}" for i in range(8)]
        stats = batcher.stats()
        assert stats.items == 8 and stats.expired + stats.cancelled <= 1, stats


# ---------------------------------------------------------------- the gateway


def test_gateway_decides_concurrent_calls_through_the_batcher(router, tmp_path):
    fake = FakeUpstream()
    up = ServerThread(fake.app()).start()
    try:
        log = tmp_path / "decisions.jsonl"
        config = GatewayConfig(upstream=Upstream(up.url + "/v1"), mode="route", decision_log=log, graph="fp32",
                               batching=BatchingConfig(max_delay_ms=2))
        with ServerThread(create_app(config, router=router)) as gw:
            def call(i: int) -> tuple[str, str, httpx.Response]:
                prompt = PROMPTS[i % len(PROMPTS)] + f" #{i}"
                body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
                rid = f"gw-{i}"
                return rid, prompt, httpx.post(f"{gw.url}/v1/chat/completions", json=body,
                                               headers={"x-request-id": rid, "authorization": "Bearer sk-x"}, timeout=30)

            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(call, range(36)))
            batcher = gw.server.config.app.state.gateway.batcher
            assert batcher is not None and batcher.stats().items == 36
        for _, prompt, resp in answers:
            assert resp.status_code == 200, resp.text
            want = router.predict([{"role": "user", "content": prompt}])
            assert resp.headers["x-router-model"] == want.model
        records = {r["request_id"]: r for r in map(json.loads, log.read_text().splitlines())}
        for rid, prompt, _ in answers:
            want = router.predict([{"role": "user", "content": prompt}])
            assert records[rid]["model"] == want.model
            assert abs(records[rid]["p_cheap_ok"] - want.p_cheap_ok) <= TOL
    finally:
        up.stop()


def test_gateway_config_file_batching(tmp_path):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps({"upstream": {"base_url": "http://127.0.0.1:9/v1"}, "batching": {"max_delay_ms": 1, "runners": 1}}))
    assert load_config(path).batching == BatchingConfig(max_delay_ms=1, runners=1)
    path.write_text(json.dumps({"upstream": {"base_url": "http://127.0.0.1:9/v1"}, "batching": {"max_size": 0}}))
    with pytest.raises(ConfigError, match="batching.max_size"):
        load_config(path)
