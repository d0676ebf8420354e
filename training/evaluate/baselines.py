"""Reference router scores on the same rows, so a trained router is judged against something.

All scores follow the metrics convention: higher = more reason to call the strong model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["HEURISTIC_KEYWORDS", "heuristic_scores", "oracle_scores", "random_scores"]


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random scores: random routing, APGR about 0.5 and CPT(p%) about p%."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return np.random.default_rng(seed).random(n)


def oracle_scores(cheap_passed: Sequence[float] | np.ndarray, strong_passed: Sequence[float] | np.ndarray) -> np.ndarray:
    """The best possible router in hindsight: score = strong - cheap outcome (the gain from calling strong).

    Ties toward cheap: rows where strong is no better score <= 0, below every row where strong
    helps, so any threshold above 0 keeps them on the cheap model; where the cheap model wins
    (strong < cheap) the score is negative, which is why the oracle's APGR can exceed 1.
    """
    cheap, strong = np.asarray(cheap_passed, dtype=float), np.asarray(strong_passed, dtype=float)
    if cheap.shape != strong.shape:
        raise ValueError(f"length mismatch: cheap_passed={cheap.shape}, strong_passed={strong.shape}")
    return strong - cheap


# The keyword/length heuristic often quoted for routing ("long prompts and coding/maths/reasoning
# words need the big model"). One point per keyword family present, capped at 3.
HEURISTIC_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("implement", r"implement\w*"),
    ("debug", r"debug\w*"),
    ("analyze", r"analy[sz]\w*"),
    ("prove", r"prove[sn]?|proof\w*"),
    ("derive", r"deriv\w*"),
    ("optimize", r"optimi[sz]\w*"),
    ("step by step", r"step[\s-]+by[\s-]+step"),
    ("code", r"code\w*|coding"),
    ("function", r"functions?"),
    ("algorithm", r"algorithm\w*"),
    ("calculate", r"calculat\w*"),
)
_KEYWORD_RES = tuple(re.compile(rf"\b(?:{pat})\b", re.IGNORECASE) for _, pat in HEURISTIC_KEYWORDS)
_LENGTH_SCALE = 1024.0  # approx tokens at which the length part saturates
_MAX_HITS = 3


def heuristic_scores(texts: Sequence[str]) -> np.ndarray:
    """Keyword + length heuristic in [0, 1]: 0.5 * length part + 0.5 * keyword part.

    Length part: approx tokens (whitespace words * 1.3) on a log scale, log1p(t) / log1p(1024),
    capped at 1. Keyword part: number of keyword families found (implement, debug, analyze/analyse,
    prove, derive, optimize, step by step, code, function, algorithm, calculate), capped at 3, / 3.
    """
    out = np.empty(len(texts))
    denom = math.log1p(_LENGTH_SCALE)
    for i, text in enumerate(texts):
        tokens = len(text.split()) * 1.3
        length = min(math.log1p(tokens) / denom, 1.0)
        hits = sum(1 for rx in _KEYWORD_RES if rx.search(text))
        out[i] = 0.5 * length + 0.5 * min(hits, _MAX_HITS) / _MAX_HITS
    return out
