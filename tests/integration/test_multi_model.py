"""N-model routing (issue 16): the heads fitted (sklearn) with masked outcomes, and an N-model artifact
trained on real data (routerbench-subset), and served. The masking rule, the policy and the frontier
on hand-made numbers are tests/unit/test_multi_model.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.multi.heads import fit_heads

from .conftest import MULTI_MODELS

# ------------------------------------------------------------------ masking, fitted


def test_missing_outcome_is_masked_not_a_fail() -> None:
    rng = np.random.default_rng(0)
    n = 400
    X = rng.normal(size=(n, 5)).astype(np.float32)
    passed = np.column_stack([(X[:, 0] > 0).astype(float), np.ones(n)])
    passed[: n // 2, 1] = np.nan  # model b has outcomes on half the rows only, and passes all of them
    rows = np.arange(n)
    heads = fit_heads(X, passed, ("a", "b"), train_rows=rows[:300], val_rows=rows[300:], c_values=(0.3,), say=lambda _: None)
    assert heads.validation["pass:b"]["n_train"] == 100  # train rows 200..299: the masked ones were not used
    # Counted as fails, the missing rows would pull P(b passes) to ~0.5; masked, it stays ~1.
    assert heads.p_pass(X)[:, 1].mean() > 0.95
    # The informative model's head learned its feature.
    p_a = heads.p_pass(X)[:, 0]
    assert p_a[X[:, 0] > 1].mean() > 0.8 and p_a[X[:, 0] < -1].mean() < 0.2


# ------------------------------------------------------------------ an N-model artifact, trained and served

MODELS = MULTI_MODELS


def test_multi_artifact_is_format_2_and_routes_among_n(multi_trained) -> None:
    from router_model.errors import InvalidRequestError
    from router_model.router import Router

    raw = json.loads((multi_trained.model_dir / "metadata.json").read_text())
    assert raw["format_version"] == 2 and sorted(raw["multi"]["models"]) == sorted(MODELS)
    # ~24 validation rows certify nothing at the default risk: every request to the reference, said so
    assert raw["goal"]["risk"] == 0.05 and raw["goal"]["method"].startswith("ltt-fixed-sequence")
    assert raw["goal"]["certified"] is False and raw["multi"]["policy"] == "single"
    assert raw["multi"]["models"][int(raw["multi"]["value"])] == raw["multi"]["best_single"]
    router = Router.load(multi_trained.model_dir)
    assert router.multi is not None and set(router.models) == set(MODELS)
    prompt = "Which gas do plants absorb from the air?\nA) oxygen\nB) carbon dioxide\nC) helium\nD) argon\nAnswer:"
    d = router.predict(prompt)
    assert d.model in MODELS and d.reason == "classifier"
    assert d.p_pass is not None and set(d.p_pass) == set(MODELS) and all(0.0 <= p <= 1.0 for p in d.p_pass.values())
    assert d.expected_cost_usd is not None and d.expected_cost_usd > 0
    # the same decision in a batch, and restricted to candidates
    batched = router.predict_batch([prompt, "Write a python function that reverses a list."])[0]
    assert batched.model == d.model and batched.p_pass is not None  # padding moves probabilities by ~1e-4 only
    assert max(abs(batched.p_pass[m] - d.p_pass[m]) for m in MODELS) < 5e-3
    two = MODELS[:2]
    assert router.predict(prompt, candidates=two).model in two
    with pytest.raises(InvalidRequestError, match="unknown candidate"):
        router.predict(prompt, candidates=["no-such-model"])
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    assert router.predict(image).model == router.multi.best_single  # rules go to the best single model
    # what was measured is what is served: the report and the evaluation exist, plots were tracked
    ev = multi_trained.evaluation
    assert ev["n"] > 0 and set(ev["ece_per_model"]) == set(MODELS) and "aiq" in ev["best_two_model_mix"]
    assert {p.name for p in multi_trained.plots} == {"cost_quality_frontier.png", "reliability_per_model.png"}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{multi_trained.model_dir.parent / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(multi_trained.run_id, "plots")}
    assert names == {"plots/cost_quality_frontier.png", "plots/reliability_per_model.png"}


def test_multi_artifact_served_by_scorer_grpc_and_gateway(multi_trained, tmp_path) -> None:
    import httpx
    from gateway_upstream import FakeUpstream
    from service_helpers import channel, router_stub, serve

    from router_model.gateway.app import create_app
    from router_model.gateway.config import GatewayConfig, Upstream
    from router_model.gateway.server import ServerThread
    from router_model.router import Router
    from router_model.score import score_file
    from router_model.service.config import ServerConfig
    from router_model.service.gen.router.v1 import router_pb2

    model_dir = multi_trained.model_dir
    router = Router.load(model_dir)
    prompts = ["Is the sky blue? Answer yes or no.", "Write a python function that returns the n-th prime number."]
    # batch scorer
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    score_file(router, src, out, show_progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["model"] for r in rows] == [router.predict(p).model for p in prompts]
    assert all(set(r["p_pass"]) == set(MODELS) and r["expected_cost_usd"] > 0 for r in rows)
    # gRPC
    with serve(ServerConfig(model_dir=model_dir, port=0)) as running, channel(running) as ch:
        stub = router_stub(ch)
        resp = stub.Route(router_pb2.RouteRequest(prompt=prompts[0]))
        assert resp.model == rows[0]["model"] and set(resp.p_pass) == set(MODELS) and resp.HasField("expected_cost_usd")
        info = stub.GetModelInfo(router_pb2.GetModelInfoRequest())
        assert list(info.models) == list(router.models) and info.policy == router.multi.rule
    # gateway: a routable name maps to a set of candidates
    fake = FakeUpstream()
    up = ServerThread(fake.app()).start()
    cands = list(MODELS[:2])
    gw = ServerThread(create_app(GatewayConfig(upstream=Upstream(up.url + "/v1"), mode="route",
                                               routes={"auto-cheap": cands}), router=router)).start()
    try:
        for p in prompts:
            r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                           json={"model": "auto-cheap", "messages": [{"role": "user", "content": p}]})
            assert r.status_code == 200, r.text
            assert r.headers["x-router-model"] in cands and r.json()["model"].startswith(r.headers["x-router-model"])
        r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                       json={"model": "auto", "messages": [{"role": "user", "content": prompts[1]}]})
        assert r.status_code == 200 and r.headers["x-router-model"] == router.predict(prompts[1]).model
    finally:
        gw.stop()
        up.stop()


def test_savings_report_handles_n_models(multi_trained, capsys) -> None:
    from router_model.offline.savings_cli import main

    test_log = multi_trained.model_dir.parent / "router-report" / "test.jsonl"
    assert main(["--model-dir", str(multi_trained.model_dir), "--log", str(test_log), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["rows"] > 0 and set(rep["share_by_model"]) == set(MODELS)
    assert abs(sum(rep["share_by_model"].values()) - 1.0) < 1e-6
    assert rep["routed"]["cost_per_request"] > 0


def test_pair_artifact_of_todays_code_keeps_format_1_and_loads(model_dir, tmp_path) -> None:
    import shutil

    from router_model.artifact import read_metadata
    from router_model.errors import ArtifactError
    from router_model.router import Router

    raw = json.loads((model_dir / "metadata.json").read_text())
    assert raw["format_version"] == 1 and "multi" not in raw
    router = Router.load(model_dir)
    assert router.multi is None and router.models == (router.cheap_model, router.strong_model)
    assert router.predict("What is 2+2?").model in (router.cheap_model, router.strong_model)
    # a version-2 directory without its multi section, or a newer format, is refused by name
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "metadata.json").write_text(json.dumps({**raw, "format_version": 2}))
    with pytest.raises(ArtifactError, match="needs a multi section"):
        read_metadata(bad)
    (bad / "metadata.json").write_text(json.dumps({**raw, "format_version": 3}))
    with pytest.raises(ArtifactError, match="needs escalation.on"):  # 3: a pair that escalates
        read_metadata(bad)
    (bad / "metadata.json").write_text(json.dumps({**raw, "format_version": 4}))
    with pytest.raises(ArtifactError, match="newer router-model"):
        read_metadata(bad)
