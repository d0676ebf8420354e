"""The router's answer and the rules that may decide before the classifier does."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Reasons a decision can carry. `classifier` is the learned decision; the others are rules.
REASON_CLASSIFIER = "classifier"
REASON_VISION = "vision"
REASON_LONG_CONTEXT = "long-context"
TAG_REASON_PREFIX = "tag:"


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
    strong one on this request; None only when the request has no text for the classifier.
    `confidence` is the probability that the chosen model is the right choice (1.0 for a rule).
    """

    model: str
    p_cheap_ok: float | None
    confidence: float
    threshold: float
    reason: str
    artifact_version: str
    prompt_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
