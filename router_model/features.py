"""Cheap request features fed to the classifier beside the embedding.

One implementation for training and serving: the artifact lists the feature names it was
trained with and the router computes exactly those. Values are scaled to roughly [0, 1] so a
linear head needs no separate scaler. Whether they help is measured in
`benchmarks/routing_quality.py` (with and without).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|#include\b|\bfunction\s*\w*\(|\breturn\b.*;|=>|\bimport \w+|"
    r"\bSELECT\b.+\bFROM\b|\{\s*\n|\bpublic static\b|\bconsole\.log\b|\bprintf\(",
    re.IGNORECASE | re.DOTALL,
)
_MATH = re.compile(r"[0-9=+\-*/^<>()\[\]{}|√∑∫πθ]")
_SAMPLE_CHARS = 20_000


def _log_tokens(text: str, n_tokens: int) -> float:
    return math.log1p(n_tokens) / 10.0


def _has_code(text: str, n_tokens: int) -> float:
    return 1.0 if _CODE.search(text[:_SAMPLE_CHARS]) else 0.0


def _math_density(text: str, n_tokens: int) -> float:
    sample = text[:_SAMPLE_CHARS]
    if not sample:
        return 0.0
    return min(1.0, 4.0 * len(_MATH.findall(sample)) / len(sample))


FEATURES: dict[str, Callable[[str, int], float]] = {
    "log_tokens": _log_tokens,
    "has_code": _has_code,
    "math_density": _math_density,
}
DEFAULT_FEATURES: tuple[str, ...] = tuple(FEATURES)


def check_feature_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown request features {unknown}; known: {sorted(FEATURES)}")


def request_features(texts: Sequence[str], n_tokens: Sequence[int], names: Sequence[str]) -> np.ndarray:
    """Feature matrix (len(texts), len(names)), float32, for the classifier's extra input."""
    out = np.zeros((len(texts), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        fn = FEATURES[name]
        for i, (t, n) in enumerate(zip(texts, n_tokens)):
            out[i, j] = fn(t, int(n))
    return out
