"""Dollars: what tokens cost at a model's price, and what an upstream's `usage` block costs.

Prices are router_model/cost.py's (`ModelPrice`, `PriceTable`). The arithmetic is plain float
(scalars or numpy arrays): token totals are formed first and divided by 1M last, which keeps
round figures (1M calls x 500 tokens x $2.50) exact; a long-context tier applies per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_model.cost import TOKENS_PER_UNIT, ModelPrice, Number, PriceTable
from router_model.errors import ConfigError

# ---------------------------------------------------------------- arithmetic


def check_non_negative(value: Number, what: str) -> None:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError(f"{what} must be finite and non-negative, got {value!r}")


def check_share(value: Number, what: str) -> None:
    arr = np.asarray(value, dtype=float)
    if not np.all((arr >= 0) & (arr <= 1)):  # also rejects NaN
        raise ConfigError(f"{what} must be within [0, 1], got {value!r}")


def _rates(price: ModelPrice, request_input_tokens: Number) -> tuple[Number, Number, Number]:
    """($/1M input, cached input, output) for requests of `request_input_tokens` input tokens each:
    the base prices, or per request (np.where, one pass per tier) the tier its own input exceeds."""
    if not price.tiers:
        return price.input, price.cached_input, price.output
    x = np.asarray(request_input_tokens, dtype=float)
    rates = [np.full(x.shape, r) for r in (price.input, price.cached_input, price.output)]
    for tier in price.tiers:  # ascending: a higher tier overwrites a lower one
        above = x > tier.above_input_tokens
        rates = [np.where(above, new, old) for new, old in zip((tier.input, tier.cached_input, tier.output), rates)]
    if x.ndim == 0:
        return float(rates[0]), float(rates[1]), float(rates[2])
    return rates[0], rates[1], rates[2]


def token_cost(price: ModelPrice, input_tokens: Number, output_tokens: Number, cached_share: Number,
               request_input_tokens: Number | None = None) -> Number:
    """Dollars for token totals: totals times $/1M, divided by 1M last to keep round figures exact.

    A tiered (long-context) price is chosen by the input tokens of one request,
    `request_input_tokens` (default: `input_tokens`, i.e. the totals are one request each) --
    never by a total summed over many requests.
    """
    p_in, p_cached, p_out = _rates(price, input_tokens if request_input_tokens is None else request_input_tokens)
    cached = input_tokens * cached_share
    uncached = input_tokens - cached
    return (uncached * p_in + cached * p_cached + output_tokens * p_out) / TOKENS_PER_UNIT


def request_cost(price: ModelPrice, input_tokens: Number, output_tokens: Number, cached_share: Number = 0.0) -> Number:
    """Dollars for one request (or elementwise for arrays); `cached_share` of input hits the cache."""
    check_non_negative(input_tokens, "input_tokens")
    check_non_negative(output_tokens, "output_tokens")
    check_share(cached_share, "cached_share")
    return token_cost(price, input_tokens, output_tokens, cached_share)


# ------------------------------------------------------------------ an answer's usage, in dollars


def _token_count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer; `cached_tokens` is the part of `prompt_tokens` billed at the cached price,
    `cache_write_tokens` the part written to the prompt cache (Anthropic; billed at the cache-write price)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def from_anthropic(cls, usage: Any) -> Usage | None:
        """Read an Anthropic Messages `usage` object; None when there is none. Its `input_tokens`
        exclude the cache reads and writes, which are added here to make `prompt_tokens` the whole input."""
        if not isinstance(usage, Mapping):
            return None
        fresh = _token_count(usage.get("input_tokens"))
        read = _token_count(usage.get("cache_read_input_tokens"))
        write = _token_count(usage.get("cache_creation_input_tokens"))
        return cls(fresh + read + write, _token_count(usage.get("output_tokens")), read, write)

    @classmethod
    def from_response(cls, usage: Any) -> Usage | None:
        """Read an OpenAI chat-completion `usage` object; None when there is none."""
        return cls._openai(usage, "prompt_tokens", "completion_tokens", "prompt_tokens_details")

    @classmethod
    def from_responses_usage(cls, usage: Any) -> Usage | None:
        """Read the Responses API's `usage` (`input_tokens`, `output_tokens`,
        `input_tokens_details.cached_tokens`); None when there is none."""
        return cls._openai(usage, "input_tokens", "output_tokens", "input_tokens_details")

    @classmethod
    def _openai(cls, usage: Any, prompt_key: str, completion_key: str, details_key: str) -> Usage | None:
        if not isinstance(usage, Mapping):
            return None
        details = usage.get(details_key)
        prompt = _token_count(usage.get(prompt_key))
        cached = _token_count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        return cls(prompt, _token_count(usage.get(completion_key)), min(cached, prompt))

    def to_dict(self) -> dict[str, int]:
        out = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens}
        if self.cache_write_tokens:
            out["cache_write_tokens"] = self.cache_write_tokens
        return out


def usage_cost(prices: PriceTable, model: str, usage: Usage) -> float | None:
    """USD for `usage` on `model`: uncached input, cached input (cache reads), cache writes and output
    at their prices (a cache write at `cache_write_input`, else the input price); None if unpriced."""
    found = prices.lookup(model)
    if found is None:
        return None
    p = found.price.at(usage.prompt_tokens)  # a long-context tier by this request's own input
    written = usage.cache_write_tokens
    uncached = usage.prompt_tokens - usage.cached_tokens - written
    write_price = p.cache_write_input if p.cache_write_input is not None else p.input
    return (uncached * p.input + usage.cached_tokens * p.cached_input + written * write_price
            + usage.completion_tokens * p.output) / TOKENS_PER_UNIT
