"""`router-cost observed` says how much of the would-be savings a model switch would lose to cold
prompt caches (router_model/observe/report.py, `ColdCacheEstimate`), from the gateway's records.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from gateway_harness import running_gateway
from gateway_upstream import CACHED_TOKENS, serve_fake_upstream, wait_for

from router_model import Router
from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.observe.decision_log import utc_timestamp
from router_model.observe.report import build_report, format_report
from router_model.observe.report_cli import main

PRICES = PriceTable.load()
CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _rec(i: int, model: str, *, usage: Usage | None, mode: str = "observe", served: str = STRONG) -> dict:
    record = {"ts": utc_timestamp(T0 + timedelta(minutes=i)), "request_id": f"r{i}", "prompt_sha256": "0" * 64,
              "prompt_tokens": 1000, "model": model, "cheap_model": CHEAP, "strong_model": STRONG,
              "p_cheap_ok": 0.9 if model == CHEAP else 0.1, "confidence": 0.9, "reason": "classifier",
              "threshold": 0.5, "artifact_version": "v1"}
    if usage is not None:  # a gateway record
        baseline, routed = usage_cost(PRICES, STRONG, usage), usage_cost(PRICES, model, usage)
        assert baseline is not None and routed is not None
        record.update(source="gateway", mode=mode, served_model=served, usage=usage.to_dict(),
                      saved_usd=baseline - routed)
    return record


def test_a_switch_loses_the_cached_input_discount_of_the_model_it_moves_to() -> None:
    warm, cold = Usage(1000, 100, 800), Usage(1000, 100, 0)
    log = [
        _rec(0, CHEAP, usage=warm),  # would move to the cheap model; 800 tokens were read from gpt-4o's cache
        _rec(1, CHEAP, usage=cold),  # would move, but nothing was cached: nothing to lose
        _rec(2, STRONG, usage=warm),  # stays: its cache stays warm
        _rec(3, CHEAP, usage=warm, mode="route", served=CHEAP),  # routed: the cost is already the real one
        _rec(4, CHEAP, usage=None),  # router-serve: no usage, not in the estimate
    ]
    r = build_report(log, prices=PRICES, requests_per_month=1_000_000)
    c = r.cache
    assert c is not None
    assert (c.records, c.switched, c.switched_cached, c.cached_tokens, c.unpriced) == (3, 2, 1, 800, 0)
    # logged savings: (2,500 - 150) + (3,500 - 210) micro-dollars; lost: 800 x (0.15 - 0.075) per 1M
    assert c.saved_usd == pytest.approx((2350 + 3290) / 1e6)
    assert c.lost_usd == pytest.approx(800 * (0.15 - 0.075) / 1e6)
    assert c.lost_fraction == pytest.approx(60 / 5640)
    text = format_report(r)
    assert "lost to cold caches on the switched turns: $0.0001 (1.1% of the savings)" in text
    assert "monthly savings after cold caches" in text
    assert any(a.startswith("cold caches:") for a in r.assumptions)
    assert r.to_dict()["cache"]["lost_fraction"] == pytest.approx(60 / 5640)


def test_a_log_without_gateway_usage_has_no_cache_estimate() -> None:
    r = build_report([_rec(0, CHEAP, usage=None), _rec(1, STRONG, usage=None)], prices=PRICES)
    assert r.cache is None and "prompt caches" not in format_report(r)
    assert not any(a.startswith("cold caches:") for a in r.assumptions)


def test_from_the_gateways_own_observe_log(toy_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway logs what the estimate reads: observe mode, `auto` served by the strong model whose
    answers report cached tokens, "Translate ..." decided cheap."""
    log = tmp_path / "decisions.jsonl"
    with serve_fake_upstream() as fake:
        config = GatewayConfig(upstream=Upstream(fake.url), mode="observe", decision_log=log)
        with running_gateway(config, Router.load(toy_model_dir)) as gw:
            for text in ("Translate this sentence into French.", "Prove the theorem."):
                resp = httpx.post(f"{gw.url}/v1/chat/completions", timeout=10,
                                  json={"model": "auto", "messages": [{"role": "user", "content": text}]})
                assert resp.status_code == 200
            assert wait_for(lambda: len(gw.records()) == 2)
    assert main(["--log", str(log), "--requests-per-month", "1000", "--json"]) == 0
    cache = json.loads(capsys.readouterr().out)["cache"]
    assert (cache["records"], cache["switched"], cache["switched_cached"]) == (2, 1, 1)
    assert cache["cached_tokens"] == CACHED_TOKENS
    assert cache["lost_usd"] == pytest.approx(CACHED_TOKENS * (0.15 - 0.075) / 1e6)
