"""Dollars per logged request on each model of the pair, from the log's token counts or estimates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router_model.cost import DEFAULT_OUTPUT_TOKENS, PairPricing, PriceTable
from router_model.dollars import token_cost
from router_model.encoder import estimate_tokens
from router_model.offline.log import LogReadResult


@dataclass(frozen=True)
class RequestCosts:
    """Per-request token counts and dollars on each model, aligned with the log's records."""

    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cheap: np.ndarray
    strong: np.ndarray
    pricing: PairPricing


def request_costs(read: LogReadResult, prices: PriceTable, output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> RequestCosts:
    """Token counts from the log, else documented estimates (input ceil(chars / 4), output as given)."""
    pair = prices.pricing_for_pair(read.cheap_model, read.strong_model)  # unpriced: refused, naming the fix
    inp = np.array(
        [r.input_tokens if r.input_tokens is not None else estimate_tokens(r.full_text) for r in read.records], dtype=float
    )
    out = np.array([r.output_tokens if r.output_tokens is not None else output_tokens for r in read.records], dtype=float)

    def dollars(price) -> np.ndarray:  # per request: a long-context tier by each request's own input
        return np.asarray(token_cost(price, inp, out, 0.0), dtype=float)

    return RequestCosts(inp, out, dollars(pair.cheap), dollars(pair.strong), pair)
