"""The labelled log as aligned arrays: texts, token counts, outcomes, split and per-request cost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable
from router_model.encoder import TextEncoder
from router_model.offline.costs import request_costs
from router_model.offline.log import LogReadResult
from router_model.offline.split import SPLIT_NAMES, assign_splits, normalize_prompt


@dataclass(frozen=True)
class Dataset:
    """One row per log record. `cheap_passed` / `strong_passed`: the cheap / strong model passed (0 or 1)."""

    texts: list[str]
    n_tokens: np.ndarray
    cheap_passed: np.ndarray
    strong_passed: np.ndarray
    split: np.ndarray
    cost_cheap: np.ndarray
    cost_strong: np.ndarray

    def rows(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)

    def split_counts(self) -> dict[str, int]:
        return {k: int((self.split == k).sum()) for k in SPLIT_NAMES}


def build_dataset(
    read: LogReadResult,
    encoder: TextEncoder,
    prices: PriceTable,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> Dataset:
    """Arrays for training and evaluation; the split is by normalised prompt text (no leaks)."""
    texts = [r.classifier_text for r in read.records]
    n_tokens = np.array([encoder.count_tokens(r.full_text) for r in read.records], dtype=np.int64)
    split = assign_splits([normalize_prompt(t) for t in texts], fractions=fractions, seed=seed)
    cheap_passed = np.array([float(r.passed[read.cheap_model]) for r in read.records])
    strong_passed = np.array([float(r.passed[read.strong_model]) for r in read.records])
    costs = request_costs(read, prices, output_tokens)
    return Dataset(texts, n_tokens, cheap_passed, strong_passed, split, costs.cheap, costs.strong)
