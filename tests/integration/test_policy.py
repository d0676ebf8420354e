"""The day-0 policy built for real: the shipped default policy.yaml built once (real embedder export,
int8 quantisation, checks; `policy_dir` in tests/integration/conftest.py) and routed by Router.
policy.yaml validation, the rules, and a policy artifact served by router-serve and the gateway
(on a toy policy artifact): tests/unit/test_policy.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_model.artifact import read_metadata
from router_model.router import Router
from training.policy.builder import POLICY_FILE
from training.policy.schema import DEFAULT_POLICY, load_policy

# Neither is an example of the default policy (tests/unit/test_policy.py checks that).
EXTRACTION = "Extract the sender's name, the shipment ID and the pickup address from this message: 'Hi, Dana here, shipment SHP-20931 is ready at 14 Quay Street.'"
PROOF = "Prove that a continuous function on a closed bounded interval attains its maximum, stating each theorem you use."


def test_default_policy_builds_a_verified_artifact(policy_dir: Path) -> None:
    meta = read_metadata(policy_dir)
    policy = load_policy(DEFAULT_POLICY)
    assert meta.policy is not None and meta.policy.name == "default"
    assert list(meta.classes) == [r.name for r in policy.ordered_routes]
    assert set(meta.cheap_ok_classes) == {r.name for r in policy.routes if r.tier == "cheap"}
    assert meta.features == () and meta.target == "policy" and meta.data is None
    assert (policy_dir / POLICY_FILE).read_text() == DEFAULT_POLICY.read_text()
    assert POLICY_FILE in meta.files and set(meta.graphs.values()) <= set(meta.files)
    checks = meta.metrics["policy_parity"]
    assert checks["fp32_graph_vs_reference_max_abs"] < 1e-4 and checks["head_vs_reference_max_abs"] < 1e-4
    assert meta.default_graph == ("int8" if checks["int8_decision_agreement"] >= 0.99 else "fp32")


@pytest.mark.parametrize("graph", ["fp32", "int8"])
def test_router_routes_extraction_cheap_and_proof_strong(policy_dir: Path, graph: str) -> None:
    router = Router.load(policy_dir, graph=graph)
    cheap, strong = router.predict_batch([EXTRACTION, PROOF])
    assert (cheap.model, cheap.reason) == ("gpt-4o-mini", "policy:extraction")
    assert (strong.model, strong.reason) == ("gpt-4o", "policy:proofs-and-math")
    assert cheap.p_cheap_ok is not None and cheap.p_cheap_ok >= router.threshold > strong.p_cheap_ok  # type: ignore[operator]
    alone = router.predict(PROOF)  # one at a time as in a batch (padding moves the score by ~1e-4)
    assert (alone.model, alone.reason) == (strong.model, strong.reason)
    assert alone.p_cheap_ok == pytest.approx(strong.p_cheap_ok, abs=1e-3)
