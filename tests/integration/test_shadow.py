"""Shadow grading end to end with real training: traffic through a gateway in observe mode in front of
the local upstream (which also plays the judge, tests/gateway_upstream.py); the labels file it
writes is trained on with the real `router-train`, and the gateway hot-reloads the model directory
that produces. The queue, the sampling and the grading in the gateway: tests/unit/test_shadow.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from gateway_upstream import serve_fake_upstream, wait_for

from router_model import Router
from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.server import ServerThread
from router_model.labelling.config import GradingSpec, ShadowConfig

JUDGE = "gpt-4o"


def _wait_for(predicate, timeout: float = 15.0, step: float = 0.05) -> bool:
    return wait_for(predicate, timeout, step)


def _rows(path: Path) -> list[dict]:
    """The complete rows so far (the gateway may be appending one while we read)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


@pytest.fixture(scope="module")
def upstream():
    with serve_fake_upstream() as fake:
        yield fake


class _Gw:
    def __init__(self, config: GatewayConfig, router: Router | None) -> None:
        self.server = ServerThread(create_app(config, router=router)).start()
        self.url = self.server.url
        self.gateway = self.server.server.config.app.state.gateway

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-caller", max_retries=0)

    def stop(self) -> None:
        self.server.stop()


def _shadow(out: Path, **kw) -> ShadowConfig:
    return ShadowConfig(out=out, grading=GradingSpec(judge=JUDGE), **kw)


EASY = ("Classify the sentiment of review {i} as positive or negative: 'works fine, day {i}'.",
        "Extract the invoice number from: 'Invoice INV-{i:04d}, total ${i}.50'.",
        "Translate 'order {i} has shipped' into French.",
        "Is ticket {i} about billing or shipping? 'I was charged for order {i} twice.'")


HARD = ("Prove that for every n >= {i} the sum 1 + 2 + ... + n equals n(n+1)/2.",
        "Prove that the square root of {p} is irrational.",
        "Prove that there are infinitely many primes congruent to {j} mod 4.",
        "Prove by induction that 3 divides n^3 + 2n for n = {i} and beyond.")


def _traffic(n: int) -> list[str]:
    out = []
    for i in range(n):
        group = EASY if i % 2 == 0 else HARD
        out.append(group[(i // 2) % len(group)].format(i=i, p=(2, 3, 5, 7, 11, 13)[i % 6], j=1 + 2 * (i // 2 % 2)) + f" (#{i})")
    return out


def test_end_to_end_traffic_to_labels_to_router_train_to_hot_reload(upstream, model_dir, cache_dir, tmp_path):
    """observe mode + shadow grading -> labels -> router-train --log labels.jsonl -> the gateway reloads it."""
    from router_model.offline.log import read_logs

    live = tmp_path / "router"
    shutil.copytree(model_dir, live)
    first = Router.load(live)
    out = tmp_path / "labels.jsonl"
    config = GatewayConfig(upstream=Upstream(upstream.url), model_dir=live, watch_interval=0.2, mode="observe",
                           shadow=_shadow(out))
    gw = _Gw(config, first)
    try:
        prompts = _traffic(40)
        client = gw.sdk()
        for p in prompts:
            resp = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": p}])
            assert resp.choices[0].message.content == f"answer from {first.strong_model}"  # observe: unchanged
        assert _wait_for(lambda: len(_rows(out)) == len(prompts), timeout=30)
        read = read_logs([out], models=(first.cheap_model, first.strong_model))
        assert read.rows_used == 40
        assert sum(not r.passed[first.cheap_model] for r in read.records) == 20  # the 'prove' prompts

        # router-train's own argument parsing, in this process (torch is already imported by the session's fixtures).
        from training.cli import build_parser, config_from_args
        from training.pipeline import train

        train(config_from_args(build_parser().parse_args(
            ["--log", str(out), "--out", str(live), "--no-track", "--no-progress", "--heads", "logreg_c1",
             "--cache-dir", str(cache_dir)])))
        trained = json.loads((live / "metadata.json").read_text())
        assert trained["artifact_version"] != first.version

        def reloaded() -> bool:
            ready = httpx.get(f"{gw.url}/readyz").json()
            return ready.get("artifact_version") == trained["artifact_version"]

        assert _wait_for(reloaded, timeout=30), "the gateway did not hot-reload the new model directory"
        # The new router serves: a routed request is decided by it and logged with its version.
        resp = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Prove that the square root of 17 is irrational."}])
        assert resp.headers["x-router-artifact"] == trained["artifact_version"]
    finally:
        gw.stop()
