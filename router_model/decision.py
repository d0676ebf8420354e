"""The router's answer and the rules that may decide before the classifier does."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Reasons a decision can carry. `classifier` is the learned decision; the others are rules.
REASON_CLASSIFIER = "classifier"
# The joint target's class where only the cheap model passes: the strong model's one way to lose.
CHEAP_ONLY_CLASS = "cheap_only"
REASON_VISION = "vision"
REASON_LONG_CONTEXT = "long-context"
TAG_REASON_PREFIX = "tag:"
# A day-0 policy artifact (training/policy) names the route that decided: "policy:<route>".
POLICY_REASON_PREFIX = "policy:"


@dataclass(frozen=True)
class RoutingRules:
    """Rules applied before the classifier; each can be switched off.

    Defaults follow where the cheap model fails most: images, requests a team tagged as
    needing accuracy or vision, and very long contexts.
    """

    image_to_strong: bool = True
    strong_tags: frozenset[str] = field(default_factory=lambda: frozenset({"high-accuracy", "vision"}))
    max_tokens: int | None = 16_000

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive or None, got {self.max_tokens}")
        object.__setattr__(self, "strong_tags", frozenset(t.strip().lower() for t in self.strong_tags))


@dataclass(frozen=True)
class RoutingDecision:
    """One routing decision.

    `p_cheap_ok` is the calibrated probability that the cheap model loses nothing against the
    strong one on this request; None when a rule decided.
    `confidence` is the calibrated probability that the chosen model does at least as well as the
    other: `p_cheap_ok` for a cheap decision, 1 - P(only the cheap model passes) for a strong one
    (so a strong decision on a request both models pass is a confident one); 1.0 for a rule.
    `margin` is `p_cheap_ok - threshold` (>= 0 routes cheap; near 0 is a close call); None for a rule.
    `centroid_distance` is the prompt's embedding distance to the nearest training centroid (drift,
    router_model/observe/drift.py); None for a rule or an artifact without a drift reference.
    `p_pass` / `expected_cost_usd` (N-model routers only): each model's P(pass), the chosen one's dollars.
    """

    model: str
    p_cheap_ok: float | None
    confidence: float
    threshold: float
    reason: str
    artifact_version: str
    prompt_tokens: int
    margin: float | None = None
    centroid_distance: float | None = None
    # N-model routers (artifact format 2, MultiHead in router_model/heads.py): every candidate's calibrated
    # P(pass) and the chosen model's expected dollars for this call; None for a cheap/strong pair.
    p_pass: dict[str, float] | None = None
    expected_cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
