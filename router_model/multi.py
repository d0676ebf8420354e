"""Choosing one model among N from per-model probabilities (serving side; numpy only).

The graph of an N-model artifact returns, per request, P(pass) for every model and
P(ok) = P(the model loses nothing against every pricier model), columns cheapest first.
`choose` applies the artifact's rule; `CostModel` is the per-request dollar estimate the
`lambda` rule and the decision's expected cost use. Training (`training/multi/rule.py`)
sweeps the same function, so what was measured is what is served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RULE_FAMILIES = ("cheapest_ok", "cheapest_pass", "lambda")  # the families training sweeps
# Plus one fixed rule: every request to one model (value = its column). What a risk-controlled
# goal falls back to when the labelled rows certify no routing (training/multi/rule.py).
SINGLE = "single"
RULE_KINDS = (*RULE_FAMILIES, SINGLE)
PASS_OUTPUT = "pass_probabilities"


@dataclass(frozen=True)
class CostModel:
    """Dollars per call on one model: intercept + per_token * prompt tokens (fitted on training rows)."""

    model: str
    intercept: float
    per_token: float
    mean: float  # mean dollars per call on the training rows

    def estimate(self, n_tokens: Any) -> Any:
        return self.intercept + self.per_token * np.asarray(n_tokens, dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "intercept": self.intercept, "per_token": self.per_token, "mean": self.mean}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostModel:
        return cls(str(d["model"]), float(d["intercept"]), float(d["per_token"]), float(d.get("mean", 0.0)))


def choose(
    kind: str,
    value: float,
    p_pass: np.ndarray,
    p_ok: np.ndarray,
    est_cost: np.ndarray,
    allowed: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """The chosen column per row (columns cheapest first). `allowed` restricts the candidates.

    cheapest_ok / cheapest_pass: the first allowed column whose probability is >= value; when none
    is, the allowed column with the highest P(pass). lambda: argmax of P(pass) - value * dollars
    (value = inf: the cheapest allowed model). single: column `value`, or when it is not allowed,
    the allowed column with the highest P(pass).
    """
    n, N = p_pass.shape
    allow = np.ones(N, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    if allow.shape != (N,) or not allow.any():
        raise ValueError(f"allowed must mark at least one of {N} models")
    if kind in ("cheapest_ok", "cheapest_pass"):
        prob = p_ok if kind == "cheapest_ok" else p_pass
        clears = (prob >= value) & allow
        fallback = np.argmax(np.where(allow, p_pass, -np.inf), axis=1)
        first = np.argmax(clears, axis=1)
        return np.where(clears.any(axis=1), first, fallback)
    if kind == SINGLE:
        col = int(value)
        if not 0 <= col < N:
            raise ValueError(f"single: model column {col} is not one of 0..{N - 1}")
        if allow[col]:
            return np.full(n, col, dtype=np.int64)
        return np.argmax(np.where(allow, p_pass, -np.inf), axis=1)
    if kind == "lambda":
        if np.isinf(value):
            return np.argmin(np.where(allow, est_cost, np.inf), axis=1)
        return np.argmax(np.where(allow, p_pass - value * est_cost, -np.inf), axis=1)
    raise ValueError(f"unknown policy {kind!r}; expected one of {RULE_KINDS}")
