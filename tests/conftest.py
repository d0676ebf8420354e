"""Shared fixtures: real routers trained once per test session on the example log.

Training is real (ONNX export of the bundled MiniLM, calibrated head, int8 quantisation); it
takes well under a minute per model on two cores. Tests that need the public data in
../shared/data skip with a reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_LOG = REPO / "data" / "example-log.jsonl"


# Fixtures that train a router or embed real text: every test using one (directly or through
# another fixture) is marked `slow`, so `scripts/test.sh -m "not slow"` is the fast tier.
SLOW_FIXTURES = frozenset({"trained", "second_trained", "second_model_dir", "exported", "public_router", "static_trained", "mmlu_router", "policy_dir", "promotion_store", "multi_trained", "multi_dir"})
SLOW_MODULES = frozenset({"test_training", "test_parity", "test_quantize", "test_notebooks", "test_install"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def shared_data_dir() -> Path:
    return Path(os.environ.get("ROUTER_SHARED_DATA", REPO.parent / "shared" / "data"))


def require_shared(relative: str) -> Path:
    """Path of a public data file, or skip the test with the reason."""
    path = shared_data_dir() / relative
    if not path.exists():
        pytest.skip(f"public data not available: {path} is absent (set ROUTER_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("router-cache")


def _train(out: Path, cache: Path, seed: int, logs: tuple[Path, ...] = (EXAMPLE_LOG,), **kw):
    from training.pipeline import TrainConfig, train

    config = TrainConfig(
        logs=logs,
        out_dir=out,
        cache_dir=cache,
        seed=seed,
        heads=kw.pop("heads", ("logreg_c1",)),
        track=kw.pop("track", False),
        progress=False,
        **kw,
    )
    return train(config)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cache_dir):
    """A TrainResult for a router trained on data/example-log.jsonl.

    40 rows certify no cheap routing at the default risk (that router sends everything strong:
    `second_trained` is one), so this one keeps the empirical threshold (`risk=None`) and the
    tests that need both decisions see both.
    """
    from training.threshold import Goal

    return _train(tmp_path_factory.mktemp("model-a") / "router", cache_dir, seed=0, goal=Goal.quality_floor(0.95, None))


@pytest.fixture(scope="session")
def model_dir(trained) -> Path:
    return trained.model_dir


@pytest.fixture(scope="session")
def second_trained(tmp_path_factory, cache_dir):
    """Another valid artifact (a different artifact_version, for hot-reload tests), trained with the
    default risk-controlled goal: on 40 rows nothing cheap is certified."""
    return _train(tmp_path_factory.mktemp("model-b") / "router", cache_dir, seed=1)


@pytest.fixture(scope="session")
def second_model_dir(second_trained) -> Path:
    return second_trained.model_dir


# A small N-model artifact (format 2): four of routerbench's eleven models keep it to 8 heads;
# `--models all` is the same code path. Shared by the N-model and candidates tests.
ROUTERBENCH = "routerbench-subset/routerbench-subset.normalized.jsonl"
MULTI_MODELS = ("mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview")
MULTI_ROWS = 160


@pytest.fixture(scope="session")
def multi_trained(tmp_path_factory, cache_dir):
    """A MultiTrainResult on an evenly spread MULTI_ROWS-row sample of routerbench-subset."""
    from training.multi.pipeline import train_multi
    from training.pipeline import TrainConfig

    src = require_shared(ROUTERBENCH)
    tmp = tmp_path_factory.mktemp("multi")
    log = tmp / "rb-sample.jsonl"
    with open(src, encoding="utf-8") as fh, open(log, "w", encoding="utf-8") as out:
        for i, line in enumerate(fh):
            if i % 20 == 0:  # a spread sample: the file is grouped by task
                out.write(line)
            if i >= 20 * MULTI_ROWS:
                break
    config = TrainConfig(logs=(log,), out_dir=tmp / "router", models=",".join(MULTI_MODELS), cache_dir=cache_dir,
                         tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", progress=False)
    return train_multi(config)
