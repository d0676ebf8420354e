"""Projections: dollars a month for a traffic profile, for one model, a routed pair or a mix of N.

The per-call formula is `router_model.cost`'s (`request_cost`); these scale it to a month and
blend it across models, for `router-cost estimate` and the observe-mode report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from router_model.cost import ModelPrice, Number, PriceTable, normalize_model_name
from router_model.dollars import check_non_negative, check_share, token_cost
from router_model.errors import ConfigError

DAYS_PER_MONTH = 30


def monthly_cost(
    price: ModelPrice, requests: Number, input_tokens: Number, output_tokens: Number, cached_share: Number = 0.0
) -> Number:
    """Dollars a month for `requests` calls a month of `input_tokens` + `output_tokens` each (a
    long-context tier applies when one request's `input_tokens` exceed its threshold)."""
    check_non_negative(requests, "requests")
    check_non_negative(input_tokens, "input_tokens")
    check_non_negative(output_tokens, "output_tokens")
    check_share(cached_share, "cached_share")
    return token_cost(price, requests * input_tokens, requests * output_tokens, cached_share, input_tokens)


def blended_price(cheap: float, strong: float, cheap_share: Number) -> Number:
    """Average $/1M when `cheap_share` of calls pay `cheap` and the rest `strong` (same tokens per call).

    Pass e.g. `cheap_price.input, strong_price.input` for the blended input price.
    """
    check_non_negative(cheap, "cheap price")
    check_non_negative(strong, "strong price")
    check_share(cheap_share, "cheap_share")
    return cheap_share * cheap + (1 - cheap_share) * strong


def routed_monthly_cost(
    cheap_price: ModelPrice,
    strong_price: ModelPrice,
    requests: Number,
    input_tokens: Number,
    output_tokens: Number,
    cached_share: Number,
    cheap_share: Number,
) -> Number:
    """Dollars a month when `cheap_share` of the calls go to the cheap model, the rest to the strong."""
    check_share(cheap_share, "cheap_share")
    return monthly_cost(cheap_price, requests * cheap_share, input_tokens, output_tokens, cached_share) + monthly_cost(
        strong_price, requests * (1 - cheap_share), input_tokens, output_tokens, cached_share
    )


# ---------------------------------------------------------------- N models: a routed mix

MIX_TOLERANCE = 1e-6  # how far the shares of a mix may sum from 1 (float noise of hand-typed shares)


@dataclass(frozen=True)
class MixCost:
    """Monthly dollars of a routed mix of N models, against each model of the mix taking all requests.

    `alone`: each model at 100% of the requests; `routed_by_model`: each model's part of the mix
    (its share of the requests); `priciest`: the model of the mix with the highest `alone`, the
    baseline `savings` is measured against (what the traffic costs without routing).
    """

    shares: Mapping[str, float]
    alone: Mapping[str, float]
    routed_by_model: Mapping[str, float]
    routed: float
    priciest: str
    savings: float
    savings_fraction: float


def check_mix(shares: Mapping[str, float]) -> None:
    """Refuse a mix that is empty, has a share outside [0, 1], or whose shares do not sum to 1,
    naming the bad item: a mix that does not add up would report a cost for traffic that is not there."""
    if not shares:
        raise ConfigError("a mix needs at least one MODEL=SHARE")
    for model, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ConfigError(f"{model}={share!r}: a share must be a fraction within [0, 1] (0.3, not 30)")
    total = math.fsum(shares.values())
    if abs(total - 1.0) > MIX_TOLERANCE:
        items = ", ".join(f"{m}={s:g}" for m, s in shares.items())
        raise ConfigError(f"the shares sum to {total:.9g}, not 1 (within {MIX_TOLERANCE:g}): {items}")


def parse_mix(text: str) -> dict[str, float]:
    """`MODEL=SHARE[,MODEL=SHARE...]` (the command-line form of a mix) -> {model: share}, checked by
    `check_mix`; a malformed or repeated item is a ConfigError naming it."""
    shares: dict[str, float] = {}
    seen: set[str] = set()
    for raw in text.split(","):
        item = raw.strip()
        model, sep, value = item.partition("=")
        model, value = model.strip(), value.strip()
        if not sep or not model or not value:
            raise ConfigError(f"{item!r}: expected MODEL=SHARE, e.g. gpt-4o=0.3,gpt-4o-mini=0.7")
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(f"{item!r}: the share {value!r} is not a number (a fraction within [0, 1])") from None
        if normalize_model_name(model) in seen:
            raise ConfigError(f"{item!r}: model {model!r} is named twice in the mix")
        seen.add(normalize_model_name(model))
        shares[model] = share
    check_mix(shares)
    return shares


def mix_monthly_cost(
    table: PriceTable,
    shares: Mapping[str, float],
    requests: float,
    input_tokens: float,
    output_tokens: float,
    cached_share: float = 0.0,
) -> MixCost:
    """Dollars a month when `shares[m]` of the `requests` go to model m (same tokens per request),
    each model alone, and the saving against the priciest model of the mix.

    Every model must be priced in `table` (UnknownModelError names the one that is not).
    """
    check_mix(shares)
    prices = {m: table.price(m) for m in shares}
    alone = {m: float(monthly_cost(p, requests, input_tokens, output_tokens, cached_share)) for m, p in prices.items()}
    parts = {
        m: float(monthly_cost(p, requests * shares[m], input_tokens, output_tokens, cached_share)) for m, p in prices.items()
    }
    routed = math.fsum(parts.values())
    priciest = max(alone, key=lambda m: alone[m])  # the first of equals: the order given
    baseline = alone[priciest]
    saving = baseline - routed
    return MixCost(
        shares=MappingProxyType(dict(shares)),
        alone=MappingProxyType(alone),
        routed_by_model=MappingProxyType(parts),
        routed=routed,
        priciest=priciest,
        savings=saving,
        savings_fraction=saving / baseline if baseline else 0.0,
    )
