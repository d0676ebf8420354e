"""Fixtures of the unit tier: toy model directories (tests/toy_artifact.py), no trained model.

Each directory is written once per session in a few milliseconds and is a complete, verified
artifact (`Router.load` checks it like a trained one). Tests must not modify them: copy one to
`tmp_path` first (`shutil.copytree`) to tamper with it.

The gateway tests share `cheap_prompt` and a route-mode `route_gw` (tests/route_gateway.py).
It also starts the observe-mode gRPC server that the test_service*.py files share for their
read-only tests (`server`, `ch`, `stub`, `decision_log_path`: one per test module, settings in
tests/service_observe.py).

tests/unit is a package (it has an __init__.py) so that this file is imported as
`unit.conftest`, not as a second top-level `conftest` module: without it, pytest would replace
`sys.modules["conftest"]` (tests/conftest.py) with this file during collection, and a test in
tests/ that runs `from conftest import ...` inside a test function would import the wrong one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # unit tests import helpers from tests/ like the other tests do
    sys.path.insert(0, str(TESTS))

from gateway_upstream import serve_fake_upstream  # noqa: E402
from toy_artifact import write_toy_multi, write_toy_pair, write_toy_policy  # noqa: E402

from router_model.router import Router  # noqa: E402

SLOW_WORK, HEAVY_WORK = 8, 40  # busy-work layers of `toy_slow_model_dir`, `toy_heavy_model_dir` (toy_graphs.router_graph)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite MLflow store's database, copied by registry_helpers.new_store."""
    mlflow = pytest.importorskip("mlflow")
    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    return template


@pytest.fixture
def mlflow_store(mlflow_template: Path):
    """`mlflow_store(base) -> uri`: a fresh sqlite store under `base` (registry_helpers.new_store)."""
    from registry_helpers import new_store

    return lambda base: new_store(mlflow_template, base)


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cheap/strong pair (format 1): gpt-4o-mini / gpt-4o, threshold 0.5, with a drift reference."""
    return write_toy_pair(tmp_path_factory.mktemp("toy-pair") / "router")


@pytest.fixture(scope="session")
def toy_second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another valid version of the same pair (seed 1): same routing, another artifact_version and hashes."""
    return write_toy_pair(tmp_path_factory.mktemp("toy-pair-2") / "router", seed=1)


@pytest.fixture(scope="session")
def toy_slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pair of `toy_model_dir` (same decisions) whose graph also does busy work over every token
    (`write_toy_pair(work=8)`: about 50 ms for 32 prompts of 64 tokens here, 20 us a token), and reads
    up to 4096 tokens, so one long prompt takes a while too: for the deadline, drain and overload
    tests, which need a run that keeps a worker busy, as a real embedder's does."""
    return write_toy_pair(tmp_path_factory.mktemp("toy-slow") / "router", work=SLOW_WORK, max_length=4096)


@pytest.fixture(scope="session")
def toy_heavy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same pair again with five times the busy work (`write_toy_pair(work=40)`: roughly 0.3 s for
    32 prompts of 64 tokens here, a real MiniLM's order): for the tests where a call must wait behind
    one batch chunk for longer than its deadline."""
    return write_toy_pair(tmp_path_factory.mktemp("toy-heavy") / "router", work=HEAVY_WORK)


@pytest.fixture(scope="session")
def toy_multi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An N-model artifact (format 2): gpt-4o-mini, gpt-4o, o1 (cheapest first), policy cheapest_ok at 0.5."""
    return write_toy_multi(tmp_path_factory.mktemp("toy-multi") / "router")


@pytest.fixture(scope="session")
def toy_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A day-0 policy artifact: routes translation, extraction (cheap), maths, code (strong)."""
    return write_toy_policy(tmp_path_factory.mktemp("toy-policy") / "router")


@pytest.fixture(scope="session")
def toy_router(toy_model_dir: Path) -> Router:
    return Router.load(toy_model_dir)


@pytest.fixture(scope="session")
def toy_multi_router(toy_multi_dir: Path) -> Router:
    return Router.load(toy_multi_dir)


@pytest.fixture(scope="session")
def toy_policy_router(toy_policy_dir: Path) -> Router:
    return Router.load(toy_policy_dir)


@pytest.fixture(scope="module")
def upstream():
    """A local OpenAI/Anthropic-compatible upstream (tests/gateway_upstream.py), one per test module."""
    with serve_fake_upstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def router(toy_model_dir) -> Router:
    """The toy pair, loaded afresh for each test module (tests may swap or compare it by identity)."""
    return Router.load(toy_model_dir)


@pytest.fixture(scope="module")
def cheap_prompt(router) -> str:
    """A prompt the toy pair routes cheap (tests/route_gateway.py)."""
    from route_gateway import pick_cheap_prompt

    return pick_cheap_prompt(router)


@pytest.fixture(scope="module")
def route_gw(upstream, router, tmp_path_factory):
    """A route-mode gateway over the module's `upstream` and `router` (tests/route_gateway.py); the
    gateway test files with their own upstreams or routers define their own `route_gw`."""
    from route_gateway import route_gateway

    yield from route_gateway(upstream, router, tmp_path_factory)


@pytest.fixture(scope="module")
def decision_log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decision log of the module's observe-mode gRPC `server`."""
    return tmp_path_factory.mktemp("observe") / "decisions.jsonl"


@pytest.fixture(scope="module")
def server(toy_model_dir: Path, decision_log_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """One observe-mode gRPC server with metrics for the read-only tests of a test_service*.py module
    (limits and prompt-hash key: tests/service_observe.py)."""
    from service_helpers import serve
    from service_observe import MAX_PROMPT_CHARS, PROMPT_HASH_KEY

    from router_model.service.config import ServerConfig

    config = ServerConfig(
        model_dir=toy_model_dir,
        host="127.0.0.1",
        port=0,
        workers=4,
        max_prompt_chars=MAX_PROMPT_CHARS,
        observe=True,
        decision_log=decision_log_path,
        metrics_port=0,
        prompt_hash_key=PROMPT_HASH_KEY,
        allow_reload=True,  # Reload is opt-in; every test directory is under the base temp dir
        model_root=tmp_path_factory.getbasetemp(),
    )
    with serve(config) as running:
        assert running.wait_until_ready(30)
        yield running


@pytest.fixture(scope="module")
def ch(server):
    """A gRPC channel to the module's `server`."""
    from service_helpers import channel

    with channel(server) as c:
        yield c


@pytest.fixture(scope="module")
def stub(ch):
    """A router.v1.Router client stub of the module's `server`."""
    from service_helpers import router_stub

    return router_stub(ch)
