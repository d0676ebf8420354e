"""The day-0 policy: policy.yaml validation, and a policy artifact in Router, in a real router-serve and
in the gateway. The artifact is a toy policy (tests/toy_artifact.py `write_toy_policy`: routes
translation, extraction (cheap), maths, code (strong); "Extract ..." goes to extraction, "Prove ...
theorem" to maths). The shipped default policy built for real: tests/integration/test_policy.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from service_helpers import SERVING, clone_artifact, health_status, router_stub, wait_for

from router_model.errors import ArtifactError
from router_model.observe.decision_log import read_decision_log
from router_model.router import Router
from router_model.service.gen.router.v1 import router_pb2 as pb
from training.policy.builder import BuildConfig, build_policy
from training.policy.cli import main as policy_main
from training.policy.schema import DEFAULT_POLICY, PolicyError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
# Neither is an example of the default policy (checked below); on the toy policy: extraction, maths.
EXTRACTION = "Extract the sender's name, the shipment ID and the pickup address from this message: 'Hi, Dana here, shipment SHP-20931 is ready at 14 Quay Street.'"
PROOF = "Prove that a continuous function on a closed bounded interval attains its maximum, stating each theorem you use."


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


MINIMAL = """
cheap_model: small
strong_model: large
routes:
  - name: extraction
    tier: cheap
    examples: ["Extract the date from this text."]
  - name: proofs
    tier: strong
    examples: ["Prove that sqrt(2) is irrational."]
"""


# --- policy.yaml --------------------------------------------------------------------------


def test_default_policy_is_valid_and_says_it_is_a_starting_point() -> None:
    policy = load_policy(DEFAULT_POLICY)
    assert {r.tier for r in policy.routes} == {"cheap", "strong"}
    assert all(r.examples for r in policy.routes)
    assert "starting point" in DEFAULT_POLICY.read_text().splitlines()[0].lower()
    examples = {e for r in policy.routes for e in r.examples}
    assert EXTRACTION not in examples and PROOF not in examples
    assert policy.routing_rules().max_tokens == 16000


@pytest.mark.parametrize(("edit", "field", "words"), [
    (lambda t: t.replace("  - name: proofs\n    tier: strong\n    examples: [\"Prove that sqrt(2) is irrational.\"]\n", ""),
     "routes", "no route with tier 'strong'"),
    (lambda t: t.replace('examples: ["Prove that sqrt(2) is irrational."]', "examples: []"), "routes[1].examples", "empty"),
    (lambda t: t.replace("examples: [\"Extract", "exmples: [\"Extract"), "routes[0].exmples", "unknown key"),
    (lambda t: t + "thresold: 0.4\n", "thresold", "unknown key"),
    (lambda t: t.replace("cheap_model: small\n", ""), "cheap_model", "missing"),
    (lambda t: t.replace("tier: cheap", "tier: cheapish"), "routes[0].tier", "expected one of cheap, strong"),
    (lambda t: t.replace("name: proofs", "name: extraction"), "routes[1].name", "duplicate route name"),
    (lambda t: t + "rules: {max_tokens: -3}\n", "rules.max_tokens", "positive integer"),
    (lambda t: t + "scoring: {temperature: 0}\n", "scoring.temperature", "> 0"),
    (lambda t: t.replace("Extract the date from this text.", ""), "routes[0].examples[0]", "non-empty string"),
])
def test_bad_policy_names_the_field(tmp_path: Path, edit, field: str, words: str) -> None:
    path = _write(tmp_path, edit(MINIMAL))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.field == field
    assert words in str(info.value) and str(path) in str(info.value) and field in str(info.value)


def test_minimal_policy_parses_with_defaults() -> None:
    import yaml

    policy = parse_policy(yaml.safe_load(MINIMAL))
    assert [r.name for r in policy.ordered_routes] == ["extraction", "proofs"]
    assert policy.threshold == 0.5 and policy.rules == {}


def test_bad_yaml_and_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "routes: [\n")
    assert policy_main(["check", "--policy", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    no_strong = _write(tmp_path, MINIMAL.replace("tier: strong", "tier: cheap"))
    assert policy_main(["build", "--policy", str(no_strong), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "routes: no route with tier 'strong'" in err
    assert not (tmp_path / "out").exists()


def test_init_copies_the_default_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.yaml"
    assert policy_main(["init", "--out", str(out)]) == 0
    assert out.read_text() == DEFAULT_POLICY.read_text()
    out.write_text("my edits")
    assert policy_main(["init", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_text() == "my edits"


def test_build_never_replaces_a_user_directory(tmp_path: Path) -> None:
    user = tmp_path / "docs"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a router model directory"):
        build_policy(BuildConfig(policy=DEFAULT_POLICY, out_dir=user, cache_dir=tmp_path / "cache"))
    assert (user / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # refused before any work: no cache, no staging


# --- a policy artifact (toy) -----------------------------------------------------------------


def test_policy_rules_apply_before_the_examples(toy_policy_dir: Path, tmp_path: Path) -> None:
    policy_dir = toy_policy_dir
    router = Router.load(policy_dir)
    assert router.predict(EXTRACTION, tags=["high-accuracy"]).reason == "tag:high-accuracy"
    image = [{"role": "user", "content": [{"type": "text", "text": EXTRACTION},
                                          {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
    assert router.predict(image).reason == "vision"
    # The rules come from the policy (metadata.json records them): a team's own tag routes strong.
    meta = json.loads((policy_dir / "metadata.json").read_text())
    meta["policy"]["rules"] = {**meta["policy"]["rules"], "strong_tags": ["legal"], "max_tokens": 50}
    clone = clone_artifact(policy_dir, tmp_path / "clone", metadata_update={"policy": meta["policy"]})
    custom = Router.load(clone)
    assert custom.predict(EXTRACTION, tags=["legal"]).reason == "tag:legal"
    assert custom.predict(EXTRACTION, tags=["high-accuracy"]).reason == "policy:extraction"
    assert custom.predict(EXTRACTION + " " + "word " * 80).reason == "long-context"


def test_policy_record_must_match_the_classes(toy_policy_dir: Path, tmp_path: Path) -> None:
    policy_dir = toy_policy_dir
    meta = json.loads((policy_dir / "metadata.json").read_text())
    routes = dict(meta["policy"]["routes"])
    routes["extraction"] = "strong"
    bad = clone_artifact(policy_dir, tmp_path / "bad", metadata_update={"policy": {**meta["policy"], "routes": routes}})
    with pytest.raises(ArtifactError, match="cheap_ok_classes"):
        Router.load(bad)
    del meta["policy"]  # without the record it is an ordinary artifact, reason "classifier"
    plain = clone_artifact(policy_dir, tmp_path / "plain", metadata_update=None)
    (plain / "metadata.json").write_text(json.dumps(meta))
    assert Router.load(plain).predict(PROOF).reason == "classifier"


def test_router_serve_serves_the_policy(toy_policy_dir: Path, tmp_path: Path) -> None:
    policy_dir = toy_policy_dir
    """The real `router-serve` command on a loopback port, a real grpc client, the decision log."""
    decisions = tmp_path / "decisions.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from router_model.service.cli import main; sys.exit(main())",
         "--model-dir", str(policy_dir), "--host", "127.0.0.1", "--port", "0", "--workers", "2",
         "--observe", "--decision-log", str(decisions)],
        cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("router-serve listening on 127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
        with grpc.insecure_channel(line.split()[-1]) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            assert wait_for(lambda: health_status(ch) == SERVING, timeout=60)
            stub = router_stub(ch)
            cheap = stub.Route(pb.RouteRequest(prompt=EXTRACTION, request_id="x1"), timeout=10)
            strong = stub.Route(pb.RouteRequest(prompt=PROOF, request_id="p1"), timeout=10)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert (cheap.model, cheap.reason) == ("gpt-4o-mini", "policy:extraction")
        assert (strong.model, strong.reason) == ("gpt-4o", "policy:maths")
        assert info.metadata["policy"]["name"] == "toy"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        logged = {r["request_id"]: r["reason"] for r in read_decision_log(decisions)}
        assert logged == {"x1": "policy:extraction", "p1": "policy:maths"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gateway_serves_the_policy(toy_policy_dir: Path, tmp_path: Path) -> None:
    """The OpenAI-compatible gateway in route mode in front of the local test upstream, a real httpx client."""
    import httpx
    from gateway_upstream import FakeUpstream

    from router_model.gateway.app import create_app
    from router_model.gateway.config import GatewayConfig, Upstream
    from router_model.gateway.server import ServerThread

    fake = FakeUpstream()
    up = ServerThread(fake.app()).start()
    log = tmp_path / "gw.jsonl"
    config = GatewayConfig(upstream=Upstream(up.url + "/v1"), mode="route", decision_log=log)
    gw = ServerThread(create_app(config, router=Router.load(toy_policy_dir))).start()
    try:
        got = {}
        for name, prompt in (("x", EXTRACTION), ("p", PROOF)):
            resp = httpx.post(f"{gw.url}/v1/chat/completions", timeout=10, headers={"authorization": "Bearer sk-test"},
                              json={"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]})
            assert resp.status_code == 200, resp.text
            got[name] = (resp.headers["x-router-model"], resp.headers["x-router-reason"])
        assert got == {"x": ("gpt-4o-mini", "policy:extraction"), "p": ("gpt-4o", "policy:maths")}
        assert [r.body["model"] for r in fake.received] == ["gpt-4o-mini", "gpt-4o"]
    finally:
        gw.stop()
        up.stop()
