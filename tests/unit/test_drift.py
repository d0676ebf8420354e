"""Drift: PSI and its bands against hand-computed cases, `router-drift`'s usage errors and old
artifacts, and the rolling gauges on the service's and the gateway's /metrics (real servers, real
HTTP GETs), on a toy router whose artifact carries a drift reference (tests/toy_artifact.py; its
traffic is the reference's own prompts). The reference a router trained on MMLU records, and
`router-drift` on real MMLU and RouterBench traffic: tests/integration/test_drift.py."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from toy_artifact import REFERENCE_PROMPTS

from router_model.observe.decision_log import (
    DecisionLogWriter,
    decision_record,
    log_text,
    read_decision_log,
    record_problem,
)
from router_model.observe.drift import (
    DRIFT,
    MODERATE,
    NO_DATA,
    REFERENCE_FILE,
    STABLE,
    Binned,
    Categorical,
    DriftReference,
    DriftReferenceError,
    EmbeddingSummary,
    RollingDrift,
    compare,
    nearest_centroid_distance,
    psi,
    psi_band,
    quantile_edges,
    share_check,
)
from router_model.observe.drift_cli import EXIT_DRIFT, EXIT_OK, EXIT_USAGE, main, window_arg
from router_model.router import Router

# --- statistics, by hand --------------------------------------------------------------------


def test_psi_hand_computed() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-12)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert psi([2, 3, 5], [20, 30, 50]) == 0.0  # counts are shares once normalised
    # An empty live bin counts as 1e-4: 0.5 ln 2 + (1e-4 - 0.5) ln(1e-4 / 0.5)
    assert psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5), abs=1e-12)
    # Symmetric in the two shares (a, e swapped gives the same sum)
    assert psi([0.1, 0.9], [0.3, 0.7]) == pytest.approx(psi([0.3, 0.7], [0.1, 0.9]))
    with pytest.raises(ValueError, match="one length"):
        psi([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        psi([0.5, 0.5], [0.0, 0.0])


def test_bands() -> None:
    assert [psi_band(x) for x in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [STABLE, STABLE, MODERATE, MODERATE, DRIFT, DRIFT]
    assert psi_band(None) == psi_band(float("nan")) == NO_DATA


def test_binned_quantiles_and_ties() -> None:
    # np.quantile(1..10, [.2, .4, .6, .8]) = 2.8, 4.6, 6.4, 8.2: two values per bin
    ref = Binned.of(np.arange(1, 11), n_bins=5)
    assert ref.edges == pytest.approx((2.8, 4.6, 6.4, 8.2))
    assert ref.shares == pytest.approx((0.2,) * 5)
    assert ref.psi(np.arange(1, 11)) == 0.0
    assert ref.psi([]) is None
    # all live values in the first bin: 0.8 ln(0.8/0.2)... by the formula, bin by bin
    want = (1 - 0.2) * math.log(1 / 0.2) + 4 * (1e-4 - 0.2) * math.log(1e-4 / 0.2)
    assert ref.psi([1, 2, 1, 2]) == pytest.approx(want, abs=1e-12)
    assert [ref.bin_of(v) for v in (0, 2.8, 5, 100)] == [0, 0, 2, 4]  # right-closed: an edge value stays below
    # Ties: the quantiles at .25, .5 and .75 of eight 1s, a 2 and a 3 are all 1: one edge, bins {1} and {2, 3}
    tied = Binned.of([1] * 8 + [2, 3], n_bins=4)
    assert tied.edges == (1.0,) and tied.shares == pytest.approx((0.8, 0.2))
    assert quantile_edges([5] * 10) == ()  # one value: one bin, nothing to compare but itself


def test_categorical_rule_hits() -> None:
    ref = Categorical({"classifier": 1.0})
    # 5% long-context never seen in training: (0.95 - 1) ln 0.95 + (0.05 - 1e-4) ln(0.05 / 1e-4)
    want = (0.95 - 1) * math.log(0.95) + (0.05 - 1e-4) * math.log(0.05 / 1e-4)
    assert ref.psi({"classifier": 95, "long-context": 5}) == pytest.approx(want, abs=1e-12)
    assert psi_band(want) == DRIFT
    assert ref.psi({"classifier": 10}) == 0.0
    assert ref.psi({}) is None


def test_nearest_centroid_distance_by_hand() -> None:
    c = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = nearest_centroid_distance(np.array([[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]]), c)
    # [1,0] is a centroid; [.707,.707] is sqrt(2 - 2/sqrt 2) from both; [0,-1] is sqrt 2 from both
    assert d == pytest.approx([0.0, math.sqrt(2 - math.sqrt(2)), math.sqrt(2)], abs=1e-6)


def test_share_check_needs_tolerance_and_sigmas() -> None:
    # expected 0.5, n = 100: se = 0.05, 3 se = 0.15 > tolerance 0.1
    assert not share_check("strong_share", 0.5, 62, 100, 0.10).drifted  # 0.12 < 0.15
    assert share_check("strong_share", 0.5, 66, 100, 0.10).drifted  # 0.16 > 0.15
    assert share_check("strong_share", 0.5, 34, 100, 0.10).drifted  # both sides
    # n = 10_000: se = 0.005, the tolerance decides
    assert not share_check("strong_share", 0.5, 5_900, 10_000, 0.10).drifted
    assert share_check("strong_share", 0.5, 6_100, 10_000, 0.10).drifted
    # one-sided: fewer far prompts than in training is no drift
    assert not share_check("far_share", 0.01, 0, 1_000, 0.05, one_sided=True).drifted
    assert share_check("far_share", 0.01, 100, 1_000, 0.05, one_sided=True).drifted
    empty = share_check("far_share", 0.01, 0, 0, 0.05)
    assert empty.observed is None and not empty.drifted


def _reference(**kw) -> DriftReference:
    emb = EmbeddingSummary(np.eye(2, dtype=np.float32), Binned((0.5,), (0.5, 0.5)), 1.0, 0.01)
    base = dict(n=100, split="validation+test", threshold=0.5, strong_share=0.5, p_cheap_ok=Binned((0.5,), (0.5, 0.5)),
                prompt_tokens=Binned((100.0,), (0.5, 0.5)), reasons=Categorical({"classifier": 1.0}), embedding=emb)
    return DriftReference(**{**base, **kw})


def test_reference_round_trip_and_errors() -> None:
    ref = _reference()
    back = DriftReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back.to_dict() == ref.to_dict()
    bad = ref.to_dict()
    bad["p_cheap_ok"]["shares"] = [1.0]
    with pytest.raises(DriftReferenceError, match=r"drift_reference.json: malformed field p_cheap_ok: 1 edges need 2"):
        DriftReference.from_dict(bad)
    newer = {**ref.to_dict(), "format_version": 99}
    with pytest.raises(DriftReferenceError, match="format_version 99"):
        DriftReference.from_dict(newer)


def _record(p: float | None, model: str, tokens: int, dist: float | None, reason: str = "classifier") -> dict:
    r = {"ts": "2026-12-01T00:00:00Z", "prompt_tokens": tokens, "model": model, "cheap_model": "c",
         "strong_model": "s", "reason": reason, "p_cheap_ok": p}
    if dist is not None:
        r["centroid_distance"] = dist
    return r


def test_compare_by_hand() -> None:
    ref = _reference()
    # half of p below 0.5, half of tokens below 100, half the distances below 0.5, none far, half strong
    same = [_record(0.2, "s", 50, 0.2), _record(0.8, "c", 150, 0.8)] * 50
    rep = compare(ref, same)
    assert rep.status == STABLE and rep.n_records == 100
    assert [q.psi for q in rep.quantities] == [0.0, 0.0, 0.0, 0.0]
    assert [s.observed for s in rep.shares] == [0.5, 0.0]
    # all p and tokens in the upper bin, all strong, all far: every check fires
    moved = [_record(0.9, "s", 500, 1.5)] * 100
    rep = compare(ref, moved)
    want = psi([0.5, 0.5], [0.0, 1.0])
    assert rep.quantities[0].psi == pytest.approx(want) and rep.quantities[0].band == DRIFT
    assert [s.drifted for s in rep.shares] == [True, True]
    assert rep.status == DRIFT
    # an old log: no distances, no p for rule decisions -> `no data`, not drift
    old = [_record(None, "s", 50, None, reason="long-context"), _record(0.2, "s", 50, None)] * 50
    rep = compare(ref, old)
    dist = {q.name: q for q in rep.quantities}["centroid_distance"]
    assert dist.n == 0 and dist.band == NO_DATA and rep.shares[1].observed is None


def test_rolling_window_counts_evicts_and_resets() -> None:
    ref, other = _reference(), _reference()
    win = RollingDrift(size=4)
    assert math.isnan(win.snapshot().psi_p_cheap_ok)
    d = SimpleNamespace
    win.observe(ref, "s", [d(p_cheap_ok=0.2, model="s", centroid_distance=2.0)] * 3)
    win.observe(ref, "s", [d(p_cheap_ok=None, model="s", centroid_distance=None),
                           d(p_cheap_ok=0.9, model="c", centroid_distance=0.1)])
    snap = win.snapshot()  # window: 0.2 s far, 0.2 s far, None s, 0.9 c near (first one evicted)
    assert snap.decisions == 4
    assert snap.psi_p_cheap_ok == pytest.approx(psi([0.5, 0.5], [2, 1]))
    assert snap.strong_share == 0.75 and snap.expected_strong_share == 0.5
    assert snap.far_share == pytest.approx(2 / 3) and snap.expected_far_share == 0.01
    win.observe(other, "s", [d(p_cheap_ok=0.9, model="c", centroid_distance=None)])  # a reload: new window
    snap = win.snapshot()
    assert snap.decisions == 1 and snap.strong_share == 0.0 and math.isnan(snap.far_share)
    win.observe(None, "s", [d(p_cheap_ok=0.9, model="c", centroid_distance=None)])  # a model without reference
    assert win.snapshot().decisions == 0


def test_decision_log_distance_field_is_optional_and_checked() -> None:
    rec = _record(0.5, "c", 10, None)
    assert record_problem(rec) is None  # old logs: no distance
    assert record_problem({**rec, "centroid_distance": 0.7}) is None
    assert record_problem({**rec, "centroid_distance": None}) is None
    assert "centroid_distance" in (record_problem({**rec, "centroid_distance": -1}) or "")
    assert "centroid_distance" in (record_problem({**rec, "centroid_distance": "far"}) or "")


def test_window_argument() -> None:
    assert window_arg("7d").total_seconds() == 7 * 86_400
    assert window_arg("90m").total_seconds() == 5_400
    assert window_arg("all") is None
    for bad in ("7", "-1d", "0h", "week"):
        with pytest.raises(Exception, match="duration"):
            window_arg(bad)


# --- router-drift on a toy router ----------------------------------------------------------


@pytest.fixture(scope="module")
def toy_traffic(toy_model_dir: Path) -> tuple[Path, list[str]]:
    """The toy pair, and 120 in-distribution prompts: its drift reference's own, six times over."""
    return toy_model_dir, list(REFERENCE_PROMPTS) * 6


@pytest.fixture(scope="module")
def router(toy_model_dir: Path) -> Router:
    return Router.load(toy_model_dir)


def _write_log(router: Router, prompts: list[str], path: Path) -> Path:
    """Route the prompts and log the decisions as the service does (keyed hashes, no prompt text)."""
    with DecisionLogWriter(path, prompt_hash_key=b"drift-test-key-0123456789abcdef") as w:
        for i, d in enumerate(router.predict_batch(prompts)):
            w.write(decision_record(d, request_id=f"r{i}", prompt=log_text(prompts[i]),
                                    cheap_model=router.cheap_model, strong_model=router.strong_model))
    return path


def test_too_few_records_and_other_versions_are_usage_errors(toy_traffic, router: Router, tmp_path, capsys) -> None:
    model_dir, live = toy_traffic
    log = _write_log(router, live[:30], tmp_path / "few.jsonl")
    assert main(["--log", str(log), "--model-dir", str(model_dir)]) == EXIT_USAGE
    assert "30 decision(s)" in capsys.readouterr().err
    assert main(["--log", str(log), "--model-dir", str(model_dir), "--min-records", "20", "--window", "1h"]) in (EXIT_OK, EXIT_DRIFT)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "artifact_version": "v-other"}) + "\n" for r in read_decision_log(log)))
    assert main(["--log", str(other), "--model-dir", str(model_dir), "--min-records", "20"]) == EXIT_USAGE
    assert "30 of version v-other" in capsys.readouterr().err
    assert main(["--log", str(tmp_path / "absent.jsonl"), "--model-dir", str(model_dir)]) == EXIT_USAGE
    assert "cannot read the decision log" in capsys.readouterr().err


def test_old_artifact_without_reference_loads_and_drift_says_so(toy_traffic, router: Router, tmp_path, capsys) -> None:
    model_dir, live = toy_traffic
    old = tmp_path / "old-router"
    shutil.copytree(model_dir, old)
    (old / REFERENCE_FILE).unlink()
    meta = json.loads((old / "metadata.json").read_text())
    del meta["files"][REFERENCE_FILE]
    (old / "metadata.json").write_text(json.dumps(meta))
    old_router = Router.load(old)
    assert old_router.drift_reference is None
    d = old_router.predict(live[0])
    assert d.centroid_distance is None and d.p_cheap_ok == pytest.approx(router.predict(live[0]).p_cheap_ok)
    log = _write_log(old_router, live[:120], tmp_path / "old.jsonl")
    assert all("centroid_distance" not in r for r in read_decision_log(log))
    assert main(["--log", str(log), "--model-dir", str(old)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "has no drift reference" in err and "Retrain" in err
    # ...and an old log read against a model with a reference: the distance has no data, the rest is judged
    assert main(["--log", str(log), "--model-dir", str(model_dir), "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert {q["name"]: q["band"] for q in out["quantities"]}["centroid_distance"] == NO_DATA


# --- the gauges on real servers --------------------------------------------------------------


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "drift" in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_service_exports_rolling_drift_gauges(toy_traffic, router: Router) -> None:
    from service_helpers import channel, router_stub, serve

    from router_model.service.config import ServerConfig
    from router_model.service.gen.router.v1 import router_pb2 as pb

    model_dir, live = toy_traffic
    prompts = live[:40]
    with serve(ServerConfig(model_dir=model_dir, port=0, metrics_port=0)) as running, channel(running) as ch:
        stub = router_stub(ch)
        before = _scrape(f"http://127.0.0.1:{running.metrics_port}/metrics")
        assert before["router_drift_decisions"] == 0 and math.isnan(before["router_drift_psi_p_cheap_ok"])
        answers = [stub.Route(pb.RouteRequest(prompt=p), timeout=30) for p in prompts]
        got = _scrape(f"http://127.0.0.1:{running.metrics_port}/metrics")
    ref = router.drift_reference
    assert ref is not None
    p = [a.p_cheap_ok for a in answers]
    assert got["router_drift_decisions"] == len(prompts)
    assert got["router_drift_psi_p_cheap_ok"] == pytest.approx(ref.p_cheap_ok.psi(p), rel=1e-6)
    assert got["router_drift_strong_share"] == pytest.approx(np.mean([a.model == router.strong_model for a in answers]))
    assert got["router_drift_expected_strong_share"] == pytest.approx(ref.strong_share)
    assert 0 <= got["router_drift_far_share"] <= 1
    assert got["router_drift_expected_far_share"] == pytest.approx(ref.embedding.far_share)


def test_gateway_exports_rolling_drift_gauges(toy_traffic, router: Router) -> None:
    import httpx
    from gateway_upstream import FakeUpstream

    from router_model.gateway.app import create_app
    from router_model.gateway.config import GatewayConfig, Upstream
    from router_model.gateway.server import ServerThread

    _, live = toy_traffic
    fake = FakeUpstream()
    upstream = ServerThread(fake.app()).start()
    gateway = ServerThread(create_app(GatewayConfig(upstream=Upstream(upstream.url + "/v1")), router=router)).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for prompt in live[:8]:
                resp = client.post("/v1/chat/completions", json={"model": router.strong_model, "messages": [{"role": "user", "content": prompt}]})
                assert resp.status_code == 200, resp.text
        got = _scrape(gateway.url + "/metrics")
    finally:
        gateway.stop()
        upstream.stop()
    assert got["router_gateway_drift_decisions"] == 8
    assert got["router_gateway_drift_psi_p_cheap_ok"] >= 0
    assert 0 <= got["router_gateway_drift_strong_share"] <= 1


def test_import_router_model_stays_light() -> None:
    code = "import router_model.observe.drift, router_model.router, sys; print(sorted(m for m in ('sklearn', 'scipy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
