"""Settings of the grading rubric and of shadow grading: frozen dataclasses and their JSON Schema.

This module imports nothing from the gateway, so `router_model.gateway.config` can embed
`SHADOW_SCHEMA` under its `shadow` key without an import cycle; the gateway's escalation-check
toggles are kept here as plain values and become a `Checks` in `rubric.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router_model.labelling.errors import LabellingConfigError

CHECK_NAMES = ("json", "json_schema", "length", "empty", "refusal", "tool_arguments")
_CALLABLE = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"

GRADING_PROPERTIES: dict[str, Any] = {
    "judge": {"type": "string", "minLength": 1},
    "rubric": {"type": "string", "minLength": 1},
    "checks": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **{k: {"type": "boolean"} for k in CHECK_NAMES},
            "refusal_patterns": {"type": "array", "items": {"type": "string"}},
        },
    },
    "custom_checks": {"type": "array", "items": {"type": "string", "pattern": _CALLABLE}},
    "json_schema": {"type": ["object", "boolean"]},
}

SHADOW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["out"],
    "properties": {
        "out": {"type": "string", "minLength": 1},
        "sample_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "drop_tags": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "queue_size": {"type": "integer", "minimum": 1},
        "workers": {"type": "integer", "minimum": 1},
        "retries": {"type": "integer", "minimum": 0},
        "store_answers": {"type": "boolean"},
        "logprobs": {"type": "boolean"},
        **GRADING_PROPERTIES,
    },
}


@dataclass(frozen=True)
class GradingSpec:
    """The team's rubric: programmatic checks, custom `module:function` checks, an optional LLM judge.

    `rubric` is the judge's prompt template file (None: the shipped 1-10 single-answer rubric);
    `checks` are the gateway's escalation-check toggles (all on by default); `json_schema`, when
    set, is a schema every answer's content must parse into.
    """

    judge: str | None = None
    rubric: Path | None = None
    checks: Mapping[str, Any] = field(default_factory=dict)
    custom_checks: tuple[str, ...] = ()
    json_schema: Mapping[str, Any] | bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", MappingProxyType(dict(self.checks)))
        object.__setattr__(self, "custom_checks", tuple(self.custom_checks))
        unknown = sorted(set(self.checks) - {*CHECK_NAMES, "refusal_patterns"})
        if unknown:
            raise LabellingConfigError(f"unknown check(s) {unknown}; known: {[*CHECK_NAMES, 'refusal_patterns']}", key="checks")
        for i, spec in enumerate(self.custom_checks):
            if not re.match(_CALLABLE, spec):
                raise LabellingConfigError(f"expected 'module:function', got {spec!r}", key=f"custom_checks[{i}]")


@dataclass(frozen=True)
class ShadowConfig:
    """Shadow grading in the gateway: which share of routed requests, where rows go, how much queueing.

    Off unless configured. `drop_tags`: requests carrying any of these routing tags are never
    sampled (e.g. `pii`). `store_answers`: keep both answers in the row (for audits and regrading).
    `logprobs`: ask the cheap model for its answers' token log-probabilities and keep them (off by
    default): the answer score can then learn from them (router_model/answer_features.py).
    """

    out: Path
    sample_rate: float = 1.0
    grading: GradingSpec = field(default_factory=GradingSpec)
    drop_tags: frozenset[str] = frozenset()
    queue_size: int = 1000
    workers: int = 2
    retries: int = 2
    store_answers: bool = True
    logprobs: bool = False

    def __post_init__(self) -> None:
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 <= rate <= 1:
            raise LabellingConfigError(f"expected a number in [0, 1], got {rate!r}", key="shadow.sample_rate")
        if self.queue_size < 1:
            raise LabellingConfigError(f"must be >= 1, got {self.queue_size!r}", key="shadow.queue_size")
        if self.workers < 1:
            raise LabellingConfigError(f"must be >= 1, got {self.workers!r}", key="shadow.workers")
        if self.retries < 0:
            raise LabellingConfigError(f"must be >= 0, got {self.retries!r}", key="shadow.retries")
        if self.logprobs and not self.store_answers:
            raise LabellingConfigError("token log-probabilities are kept beside the answers: logprobs needs "
                                       "store_answers", key="shadow.logprobs")
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "sample_rate", float(rate))
        object.__setattr__(self, "drop_tags", frozenset(t.strip().lower() for t in self.drop_tags))


def grading_spec(raw: Mapping[str, Any]) -> GradingSpec:
    """The rubric part of a (schema-checked) config table."""
    return GradingSpec(
        judge=raw.get("judge"),
        rubric=Path(raw["rubric"]) if raw.get("rubric") else None,
        checks=dict(raw.get("checks") or {}),
        custom_checks=tuple(raw.get("custom_checks") or ()),
        json_schema=raw.get("json_schema"),
    )


def shadow_config(raw: Mapping[str, Any]) -> ShadowConfig:
    """The `shadow` table of the gateway's config file (already checked against SHADOW_SCHEMA)."""
    kwargs: dict[str, Any] = {k: raw[k] for k in ("sample_rate", "queue_size", "workers", "retries", "store_answers", "logprobs") if k in raw}
    return ShadowConfig(
        out=Path(raw["out"]), grading=grading_spec(raw), drop_tags=frozenset(raw.get("drop_tags") or ()), **kwargs
    )
