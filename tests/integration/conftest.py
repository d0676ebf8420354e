"""Fixtures of the integration tier: real routers trained once per test session on real data.

Training is real (ONNX export of the bundled MiniLM, calibrated head, int8 quantisation); it
takes well under a minute per model on two cores. Every fixture that trains a router or embeds
real text is defined here and nowhere else, so only a test under tests/integration/ can use one;
every test collected under this folder is marked `integration` (`-m "not integration"` leaves
them out). Tests that need the public data in ../shared/data skip with a reason when it is absent.

tests/integration is a package (it has an __init__.py) for the reason tests/unit is: this file is
imported as `integration.conftest`, never as a second top-level `conftest` module. Test modules
here import its helpers relatively (`from .conftest import _train`).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
if str(TESTS) not in sys.path:  # integration tests import helpers from tests/ like the unit tests do
    sys.path.insert(0, str(TESTS))

from conftest import EXAMPLE_LOG, require_shared  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that lives under tests/integration/ (the hook sees the whole session's items)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


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
def exported(cache_dir: Path):
    """The bundled MiniLM exported to ONNX (what every trained artifact starts from), once per session."""
    from training.embedding.common import DEFAULT_EMBEDDER
    from training.embedding.export import export_embedder

    return export_embedder(DEFAULT_EMBEDDER, cache_dir)


@pytest.fixture(scope="session")
def static_embedder(cache_dir: Path) -> str:
    """The static (model2vec) embedder in the session cache; its name for TrainConfig.embedder.

    Distilled once into the user's cache (minutes, the first time on a machine), then copied into
    the session cache so a training run there finds it.
    """
    import shutil

    pytest.importorskip("model2vec", reason="model2vec is not installed: pip install 'router-model[train]'")
    from training.cache import default_cache_dir
    from training.embedding.export import export_embedder

    src = export_embedder("model2vec", default_cache_dir()).onnx_path.parent
    dst = cache_dir / "embedders" / src.name
    if not dst.exists():
        shutil.copytree(src, dst)
    return "model2vec"


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
# `--models all` is the same code path. Used by the N-model tests (test_multi_model.py).
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


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The shipped default policy, built once (real embedder export, int8 quantisation, checks)."""
    from training.policy.builder import BuildConfig, build_policy
    from training.policy.schema import DEFAULT_POLICY

    out = tmp_path_factory.mktemp("policy") / "router"
    return build_policy(BuildConfig(policy=DEFAULT_POLICY, out_dir=out, cache_dir=cache_dir)).model_dir


# One router on a fixed 3,000-row sample of RouteLLM MMLU (the public pair), shared by the int8
# parity tests (test_parity.py) and the drift tests (test_drift.py); test_promote.py splits the
# same sample, so a session embeds these prompts once.
MMLU = "routellm-evals/routellm-mmlu.normalized.jsonl"
PUBLIC_CHEAP = "mistralai/Mixtral-8x7B-Instruct-v0.1"
PUBLIC_STRONG = "gpt-4-1106-preview"
PUBLIC_SAMPLE_ROWS = 3000


def public_sample_rows(lines: list[str]) -> list[int]:
    """The sample's line numbers in the MMLU file (seeded, sorted)."""
    return sorted(random.Random(0).sample(range(len(lines)), PUBLIC_SAMPLE_ROWS))


@pytest.fixture(scope="session")
def mmlu_lines() -> list[str]:
    with require_shared(MMLU).open(encoding="utf-8") as f:
        return [ln for ln in f if ln.strip()]


@pytest.fixture(scope="session")
def public_router(tmp_path_factory, cache_dir: Path, mmlu_lines: list[str]):
    """(TrainResult, the sample's log file): the public-pair router trained on the 3,000-row sample."""
    from training.data.public import PUBLIC_PRICE_AS

    base = tmp_path_factory.mktemp("public")
    subset = base / "mmlu-3000.jsonl"
    subset.write_text("".join(mmlu_lines[i] for i in public_sample_rows(mmlu_lines)), encoding="utf-8")
    # threshold_rows "oof": its tests read the test split as rows the served head never saw (int8 agreement
    # at the threshold, drift on held rows); the default "all" is tested in test_escalation.py.
    result = _train(base / "router", cache_dir, seed=0, logs=(subset,), cheap_model=PUBLIC_CHEAP,
                    strong_model=PUBLIC_STRONG, heads=("logreg_c1",), price_as=tuple(PUBLIC_PRICE_AS.items()),
                    threshold_rows="oof")
    return result, subset
