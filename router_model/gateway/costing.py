"""Dollars from an upstream answer's `usage` and the price table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router_model.cost import TOKENS_PER_UNIT, PriceTable


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer; `cached_tokens` is the part of `prompt_tokens` billed at the cached price."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_response(cls, usage: Any) -> Usage | None:
        """Read an OpenAI `usage` object; None when there is none."""
        if not isinstance(usage, Mapping):
            return None
        details = usage.get("prompt_tokens_details")
        prompt = _count(usage.get("prompt_tokens"))
        cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        return cls(prompt, _count(usage.get("completion_tokens")), min(cached, prompt))

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens}


def usage_cost(prices: PriceTable, model: str, usage: Usage) -> float | None:
    """USD for `usage` on `model`: uncached input, cached input and output at their prices; None if unpriced."""
    if model not in prices:
        return None
    p = prices.price(model)
    uncached = usage.prompt_tokens - usage.cached_tokens
    return (uncached * p.input + usage.cached_tokens * p.cached_input + usage.completion_tokens * p.output) / TOKENS_PER_UNIT
