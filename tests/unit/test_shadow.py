"""Shadow grading in the gateway: a toy router (tests/toy_artifact.py), real uvicorn servers, the `openai` SDK.

Traffic goes through a gateway in observe mode in front of the local upstream (which also plays
the judge, tests/gateway_upstream.py). That the labels file it writes trains a router the gateway
then hot-reloads (the real `router-train`) is tests/integration/test_shadow.py.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

import openai
import pytest
from gateway_upstream import wait_for
from route_gateway import metric_at

from router_model import Router
from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream, load_config
from router_model.gateway.errors import GatewayConfigError
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.server import ServerThread
from router_model.labelling.config import GradingSpec, ShadowConfig
from router_model.labelling.errors import LabellingConfigError
from router_model.labelling.shadow import ShadowGrader, ShadowJob

REPO = Path(__file__).resolve().parents[2]
JUDGE = "gpt-4o"


def _wait_for(predicate, timeout: float = 15.0, step: float = 0.05) -> bool:
    return wait_for(predicate, timeout, step)


_metric = metric_at


def _rows(path: Path) -> list[dict]:
    """The complete rows so far (the gateway may be appending one while we read)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


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


# ---------------------------------------------------------------- config (fast)


def test_shadow_is_off_unless_configured_and_config_is_checked(upstream, tmp_path):
    assert load_config(upstream_url=upstream.url).shadow is None
    toml = tmp_path / "gw.toml"
    toml.write_text(f'''
[upstream]
base_url = "{upstream.url}"
[shadow]
out = "{tmp_path / 'labels.jsonl'}"
sample_rate = 0.25
judge = "{JUDGE}"
drop_tags = ["PII", "secret"]
custom_checks = ["json:loads"]
[shadow.checks]
refusal = false
''')
    shadow = load_config(toml).shadow
    assert shadow is not None and shadow.sample_rate == 0.25 and shadow.drop_tags == {"pii", "secret"}
    assert shadow.grading.judge == JUDGE and shadow.grading.custom_checks == ("json:loads",)
    assert dict(shadow.grading.checks) == {"refusal": False}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"upstream": {"base_url": upstream.url}, "shadow": {"out": "x", "sample_rat": 1}}))
    with pytest.raises(GatewayConfigError, match="shadow: Additional properties are not allowed .'sample_rat'"):
        load_config(bad)
    bad.write_text(json.dumps({"upstream": {"base_url": upstream.url}, "shadow": {"out": "x", "sample_rate": 2}}))
    with pytest.raises(GatewayConfigError, match="shadow.sample_rate"):
        load_config(bad)
    with pytest.raises(LabellingConfigError, match="cannot import module 'nope_mod'"):
        create_app(GatewayConfig(upstream=Upstream(upstream.url), shadow=ShadowConfig(
            out=tmp_path / "l.jsonl", grading=GradingSpec(custom_checks=("nope_mod:f",)))))


def _job(i: int, tags: tuple[str, ...] = ()) -> ShadowJob:
    return ShadowJob(body={"model": "auto", "messages": [{"role": "user", "content": f"q{i}"}]}, tags=tags, headers={},
                     served_model="gpt-4o", served_content=None, cheap_model="gpt-4o-mini", strong_model="gpt-4o",
                     artifact_version="v1", mode="observe", request_id=str(i))


def test_a_full_queue_drops_and_counts_without_waiting(upstream, tmp_path):
    metrics = GatewayMetrics()
    config = _shadow(tmp_path / "labels.jsonl", queue_size=3, drop_tags=frozenset({"pii"}))

    grader = ShadowGrader(config, make_caller=lambda h: None, metrics=metrics)  # type: ignore[arg-type,return-value]

    async def offer_all() -> list[bool]:
        started = time.perf_counter()
        taken = [grader.offer(_job(i)) for i in range(10)] + [grader.offer(_job(99, ("PII",)))]
        assert time.perf_counter() - started < 0.05  # offer never waits
        return taken

    taken = asyncio.run(offer_all())
    assert taken == [True] * 3 + [False] * 8
    assert metrics.shadow_dropped.labels("queue_full")._value.get() == 7
    assert metrics.shadow_dropped.labels("tag")._value.get() == 1
    assert metrics.shadow_sampled._value.get() == 3
    grader.close()
    assert stat.S_IMODE((tmp_path / "labels.jsonl").stat().st_mode) == 0o600


def test_sample_rate_samples_that_share(tmp_path):
    grader = ShadowGrader(_shadow(tmp_path / "l.jsonl", sample_rate=0.3, queue_size=10_000), make_caller=lambda h: None,  # type: ignore[arg-type,return-value]
                          metrics=GatewayMetrics(), seed=7)

    async def offer_all() -> int:
        return sum(grader.offer(_job(i)) for i in range(2000))

    assert 500 <= asyncio.run(offer_all()) <= 700
    grader.close()


# ---------------------------------------------------------------- through the gateway (a toy router)


def test_shadow_grading_after_the_response_never_delays_it(upstream, router, tmp_path):
    out = tmp_path / "labels.jsonl"
    gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url), shadow=_shadow(out, drop_tags=frozenset({"pii"}))), router)
    try:
        client = gw.sdk()
        started = time.monotonic()
        # The shadow call to the cheap model takes 3 s at the upstream; the caller must not wait for it.
        resp = client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Prove that there are infinitely many primes."}],
            extra_headers={"x-fake-fault": f"{router.cheap_model}=slow"},
        )
        assert time.monotonic() - started < 2.5  # < the 3 s of the shadow call (generous: the machine may be loaded)
        assert resp.choices[0].message.content == f"answer from {router.strong_model}"
        assert not _rows(out)
        assert _wait_for(lambda: len(_rows(out)) == 1, timeout=15)
        (row,) = _rows(out)
        assert row["outcomes"] == {router.cheap_model: {"score": 0.3}, router.strong_model: {"score": 0.9}}
        assert row["grading"][router.strong_model]["answer_paid_by_labelling"] is False  # the served answer is reused
        assert row["grading"][router.cheap_model]["answer_paid_by_labelling"] is True
        assert row["metadata"]["mode"] == "observe" and row["artifact_version"] == router.version
        assert row["labelling_cost_usd"] < row["cost_usd"]

        # Tagged requests are never sampled; a stream is graded by asking both models; unrouted models are not.
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "my ssn is ..."}],
                                       extra_headers={"x-router-tags": "pii"})
        with client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Name three colours."}],
                                            stream=True) as stream:
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
        assert _wait_for(lambda: len(_rows(out)) == 2)
        time.sleep(0.3)
        rows = _rows(out)
        assert len(rows) == 2 and rows[1]["messages"][0]["content"] == "Name three colours."
        assert all(g["answer_paid_by_labelling"] for g in rows[1]["grading"].values())
        assert _metric(gw.url, "router_gateway_shadow_dropped_total", reason="tag") == 1
        assert _metric(gw.url, "router_gateway_shadow_rows_total", result="labelled") == 2
        assert _metric(gw.url, "router_gateway_shadow_cost_usd_total") > 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        gw.stop()


def test_full_queue_in_the_gateway_drops_with_a_metric(upstream, router, tmp_path):
    out = tmp_path / "labels.jsonl"
    gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url), shadow=_shadow(out, queue_size=1, workers=1)), router)
    try:
        client = gw.sdk()
        for i in range(6):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"Question {i}?"}],
                                           extra_headers={"x-fake-fault": f"{router.cheap_model}=slow"})
        assert _wait_for(lambda: _metric(gw.url, "router_gateway_shadow_dropped_total", reason="queue_full") >= 3, timeout=5)
        assert _metric(gw.url, "router_gateway_shadow_sampled_total") + \
            _metric(gw.url, "router_gateway_shadow_dropped_total", reason="queue_full") == 6
    finally:
        gw.stop()


def test_unparsable_verdicts_in_the_gateway_are_no_outcome(upstream, router, tmp_path):
    out = tmp_path / "labels.jsonl"
    gw = _Gw(GatewayConfig(upstream=Upstream(upstream.url), shadow=_shadow(out)), router)
    try:
        gw.sdk().chat.completions.create(model="auto", messages=[{"role": "user", "content": "Summarise: it rained."}],
                                         extra_headers={"x-fake-fault": "verdict_garbage"})
        ungraded = out.with_name("labels.ungraded.jsonl")
        assert _wait_for(lambda: len(_rows(ungraded)) == 1)
        (row,) = _rows(ungraded)
        assert row["outcomes"] == {} and set(row["ungraded"]) == {router.cheap_model, router.strong_model}
        assert not _rows(out)
        assert _metric(gw.url, "router_gateway_shadow_rows_total", result="ungraded") == 1
    finally:
        gw.stop()


