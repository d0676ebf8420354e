"""`RouteRequest.candidates` (gRPC) and the gateway's `routes` through the dynamic batcher.

Real parts, toy models: a 4-model toy artifact over routerbench's model names (tests/toy_artifact.py
`write_toy_multi`: "Translate ..." goes to the cheapest model, neutral text to the second, "Prove
the theorem." to the priciest), the toy cheap/strong pair, real gRPC and HTTP servers, the real
Batcher. A trained N-model artifact served: tests/integration/test_multi_model.py.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc
import httpx
import pytest
from gateway_upstream import FakeUpstream
from service_helpers import channel, router_stub, serve
from toy_artifact import write_toy_multi

from router_model.batching import Batcher, BatchingConfig
from router_model.errors import InvalidRequestError
from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.server import ServerThread
from router_model.router import Router
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb
from router_model.service.status import FIELD_METADATA_KEY

# Cheapest first (four of routerbench's models, as the trained N-model artifact of the integration tier).
MODELS = ("mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview")
TWO = MODELS[:2]  # the two cheapest: neither is the best single model the artifact sends everything to
PROMPTS = [  # on the toy: the cheapest model, the second, the priciest
    "Translate this sentence into French.",
    "Write a python function that returns the n-th prime number.",
    "Prove the theorem.",
]
IMAGE = pb.RouteRequest(messages=[pb.ChatMessage(role="user", parts=[
    pb.ContentPart(type="text", text="what is this?"),
    pb.ContentPart(type="image_url", image_url=pb.ImageUrl(url="https://example.com/a.png")),
])])


@pytest.fixture(scope="module")
def multi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy N-model artifact over MODELS (policy cheapest_ok at 0.5, best single model MODELS[-1])."""
    return write_toy_multi(tmp_path_factory.mktemp("toy-multi-4") / "router", MODELS)


@pytest.fixture(scope="module")
def multi(multi_dir) -> Router:
    router = Router.load(multi_dir)
    assert router.multi is not None and set(router.models) == set(MODELS)
    return router


def _invalid(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value


def _field(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get(FIELD_METADATA_KEY)


# ---------------------------------------------------------------- gRPC, N-model artifact


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batcher"])
def test_grpc_candidates_restrict_the_n_model_choice(multi, multi_dir, batching) -> None:
    best = multi.multi.best_single
    assert best not in TWO  # otherwise restricting to TWO would prove nothing
    config = ServerConfig(model_dir=multi_dir, port=0, batching=BatchingConfig() if batching else None)
    with serve(config) as running, channel(running) as ch:
        stub = router_stub(ch)
        for p in PROMPTS:
            free = stub.Route(pb.RouteRequest(prompt=p), timeout=30)
            assert free.model == multi.predict(p).model
            got = stub.Route(pb.RouteRequest(prompt=p, candidates=list(TWO)), timeout=30)
            assert got.model in TWO and got.model == multi.predict(p, candidates=TWO).model
            assert set(got.p_pass) == set(MODELS) and got.HasField("expected_cost_usd")
            only = stub.Route(pb.RouteRequest(prompt=p, candidates=[MODELS[2]]), timeout=30)
            assert only.model == MODELS[2]
        # a rule (an image) goes to the best allowed model, not the best single one
        assert stub.Route(IMAGE, timeout=30).model == best
        ruled = stub.Route(pb.RouteRequest(messages=IMAGE.messages, candidates=list(TWO)), timeout=30)
        assert ruled.reason == "vision" and ruled.model == TWO[-1]
        # an unknown candidate is the caller's error, naming it
        err = _invalid(stub.Route, pb.RouteRequest(prompt=PROMPTS[0], candidates=[TWO[0], "no-such-model"]))
        assert "no-such-model" in err.details() and "unknown candidate" in err.details()
        assert _field(err) == "candidates"
        if batching:
            assert running.servicer is not None and running.servicer.batcher is not None
            stats = running.servicer.batcher.stats()
            assert stats.items == 3 * len(PROMPTS) and stats.rules == 2, stats


def test_grpc_route_batch_has_candidates_per_item(multi, multi_dir) -> None:
    with serve(ServerConfig(model_dir=multi_dir, port=0)) as running, channel(running) as ch:
        stub = router_stub(ch)
        items = [pb.RouteRequest(prompt=PROMPTS[0], candidates=list(TWO)),
                 pb.RouteRequest(prompt=PROMPTS[1]),
                 pb.RouteRequest(prompt=PROMPTS[2], candidates=[MODELS[2]]),
                 pb.RouteRequest(prompt=PROMPTS[1], candidates=list(TWO))]
        resp = stub.RouteBatch(pb.RouteBatchRequest(requests=items), timeout=30)
        want = [multi.predict(it.prompt, candidates=list(it.candidates) or None).model for it in items]
        assert [r.model for r in resp.responses] == want
        assert resp.responses[0].model in TWO and resp.responses[2].model == MODELS[2]
        assert resp.responses[1].model == multi.predict(PROMPTS[1]).model
        # one unknown candidate fails the whole call, naming the item
        items.insert(2, pb.RouteRequest(prompt=PROMPTS[0], candidates=["gpt-9"]))
        err = _invalid(stub.RouteBatch, pb.RouteBatchRequest(requests=items))
        assert err.details().startswith("requests[2].candidates:") and "gpt-9" in err.details()
        assert _field(err) == "requests[2].candidates"


# ---------------------------------------------------------------- gRPC, pair artifact


def test_grpc_pair_accepts_no_candidates_or_exactly_its_two_models(toy_model_dir) -> None:
    pair = Router.load(toy_model_dir)
    both = [pair.strong_model, pair.cheap_model]
    with serve(ServerConfig(model_dir=toy_model_dir, port=0)) as running, channel(running) as ch:
        stub = router_stub(ch)
        for p in PROMPTS:
            plain = stub.Route(pb.RouteRequest(prompt=p), timeout=30)
            same = stub.Route(pb.RouteRequest(prompt=p, candidates=both), timeout=30)
            assert plain.model == same.model == pair.predict(p).model
            assert abs(plain.p_cheap_ok - same.p_cheap_ok) < 1e-9
        for cands in ([pair.strong_model], [pair.cheap_model], [*both, "gpt-9"]):
            err = _invalid(stub.Route, pb.RouteRequest(prompt=PROMPTS[0], candidates=cands))
            assert "chooses between exactly" in err.details() and _field(err) == "candidates"
        err = _invalid(stub.Route, pb.RouteRequest(prompt=PROMPTS[0], candidates=["gpt-9"]))
        assert "unknown candidate model(s) ['gpt-9']" in err.details()
        resp = stub.RouteBatch(pb.RouteBatchRequest(requests=[
            pb.RouteRequest(prompt=PROMPTS[0], candidates=both), pb.RouteRequest(prompt=PROMPTS[1])]), timeout=30)
        assert [r.model for r in resp.responses] == [pair.predict(PROMPTS[0]).model, pair.predict(PROMPTS[1]).model]
        err = _invalid(stub.RouteBatch, pb.RouteBatchRequest(requests=[
            pb.RouteRequest(prompt=PROMPTS[0]), pb.RouteRequest(prompt=PROMPTS[1], candidates=[pair.cheap_model])]))
        assert _field(err) == "requests[1].candidates"


# ---------------------------------------------------------------- the batcher


class GatedRouter(Router):
    """The (toy) router; a run (the choice among candidates included) waits for `gate`."""

    gate: threading.Event

    def _route(self, prepared: Sequence, candidates: Iterable[str] | None = None) -> list:
        assert self.gate.wait(30), "the test never opened the gate"
        return super()._route(prepared, candidates)


def test_batcher_runs_one_candidate_set_per_batch(multi, multi_dir, toy_model_dir) -> None:
    gated = GatedRouter.load(multi_dir)
    assert isinstance(gated, GatedRouter)
    gated.gate = threading.Event()
    batcher = Batcher(BatchingConfig(runners=1, max_delay_ms=0))
    try:
        prompt = PROMPTS[1]
        sets: list[tuple[str, ...] | None] = [TWO, TWO, (MODELS[2],), TWO, (MODELS[2],)]
        held = concurrent.futures.Future()  # the first runs inline in its thread: held at the gate
        threading.Thread(target=lambda: held.set_result(batcher.submit(gated, prompt, candidates=list(TWO))),
                         daemon=True).start()
        deadline = time.monotonic() + 10
        while batcher.stats().batches < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        queued = [batcher.submit(gated, prompt, candidates=list(c) if c else None) for c in sets]
        assert len(batcher._queue) == len(sets)
        gated.gate.set()
        first = held.result(10).result(30)
        assert first.model in TWO
        for c, fut in zip(sets, queued):
            d = fut.result(30)
            assert d.model == multi.predict(prompt, candidates=c).model and d.model in c
        stats = batcher.stats()
        # the inline run, then one batch per candidate set: the 3 TWO rows and the 2 others
        assert (stats.batches, stats.items, stats.largest) == (3, 6, 3), stats
        # an unknown candidate fails at submit, alone; a pair router has no candidates
        with pytest.raises(InvalidRequestError, match="unknown candidate"):
            batcher.submit(multi, prompt, candidates=["no-such-model"])
        with pytest.raises(InvalidRequestError, match="N-model router"):
            batcher.submit(Router.load(toy_model_dir), prompt, candidates=["gpt-4o"])
    finally:
        batcher.close()


# ---------------------------------------------------------------- the gateway


def test_gateway_routes_go_through_the_batcher(multi) -> None:
    fake = FakeUpstream()
    up = ServerThread(fake.app()).start()
    routes = {"auto-cheap": list(TWO), "auto-mid": [MODELS[2]]}
    config = GatewayConfig(upstream=Upstream(up.url + "/v1"), mode="route", routes=routes,
                           batching=BatchingConfig(max_delay_ms=2))
    app = create_app(config, router=multi)
    try:
        with ServerThread(app) as gw:
            def call(i: int) -> tuple[str, str, httpx.Response]:
                name = ("auto-cheap", "auto-mid", "auto")[i % 3]
                prompt = PROMPTS[i % len(PROMPTS)] + f" #{i}"
                body = {"model": name, "messages": [{"role": "user", "content": prompt}]}
                return name, prompt, httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=60)

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(call, range(12)))
            batcher = app.state.gateway.batcher
            assert batcher is not None
            stats = batcher.stats()
        for name, prompt, resp in answers:
            assert resp.status_code == 200, resp.text
            model = resp.headers["x-router-model"]
            messages = [{"role": "user", "content": prompt}]
            if name == "auto":
                assert model == multi.predict(messages).model
            else:
                assert model in routes[name] and model == multi.predict(messages, candidates=routes[name]).model
        assert stats.items == len(answers) and stats.rules == 0, stats  # every decision, routes included
    finally:
        up.stop()
