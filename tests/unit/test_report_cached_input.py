"""`router-cost observed` prices the cached share of input tokens at the cached rate (issue 24,
prompt-cache-aware accounting): the share comes from the upstreams' usage the gateway logged."""

from __future__ import annotations

import pytest

from router_model.cost_projection import monthly_cost
from router_model.dollars import Usage
from router_model.observe.report import build_report

from .test_report_cold_cache import CHEAP, PRICES, STRONG, _rec


def test_the_cached_share_of_logged_usage_is_billed_at_the_cached_rate() -> None:
    warm = Usage(1000, 100, 500)  # half of every prompt read from the provider's cache
    log = [_rec(i, CHEAP if i % 2 else STRONG, usage=warm) for i in range(4)]
    r = build_report(log, prices=PRICES, requests_per_month=1_000_000, output_tokens=100)
    assert any("cached input: 50.0%" in a for a in r.assumptions)
    want = monthly_cost(PRICES.price(STRONG), 1_000_000, 1000, 100, 0.5)
    assert r.monthly_cost_strong == pytest.approx(float(want))
    cold = monthly_cost(PRICES.price(STRONG), 1_000_000, 1000, 100, 0.0)
    assert r.monthly_cost_strong < float(cold)


def test_without_logged_usage_there_is_no_cached_discount() -> None:
    log = [_rec(i, CHEAP if i % 2 else STRONG, usage=None) for i in range(4)]
    r = build_report(log, prices=PRICES, requests_per_month=1_000_000, output_tokens=100)
    assert any("no cached-input discount" in a for a in r.assumptions)
    assert r.monthly_cost_strong == pytest.approx(float(monthly_cost(PRICES.price(STRONG), 1_000_000, 1000, 100)))
