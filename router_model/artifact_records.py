"""The sections of `metadata.json` other than its top level: what embedded, the goal, the data,
parity, a day-0 policy, N models. `router_model/artifact.py` (`ArtifactMetadata`) owns the file
and its validation; each record here owns its own keys (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router_model.decision import RoutingRules
from router_model.encoder import EncoderSettings
from router_model.errors import ArtifactError
from router_model.multi import PASS_OUTPUT, RULE_KINDS, SINGLE, CostModel
from router_model.prompt_digest import PromptDigest


def plain_json(value: Any) -> Any:
    """JSON-ready copies of nested mappings (metadata holds read-only views after parsing)."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value


@dataclass(frozen=True)
class EmbedderSpec:
    """What the artifact records about the embedder: enough to tokenise exactly as training did."""

    name: str
    pooling: str
    normalize: bool
    dim: int
    encoder: EncoderSettings
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder"]["model_inputs"] = list(self.encoder.model_inputs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbedderSpec:
        enc = dict(d["encoder"])
        enc["model_inputs"] = tuple(enc["model_inputs"])
        return cls(
            name=str(d["name"]),
            pooling=str(d["pooling"]),
            normalize=bool(d["normalize"]),
            dim=int(d["dim"]),
            encoder=EncoderSettings(**enc),
            weights_sha256=str(d["weights_sha256"]),
        )


@dataclass(frozen=True)
class GoalRecord:
    """The goal the threshold was chosen for, its risk and method, and what was certified (docs/guarantee.md).

    Everything after `met_on_validation` is optional: directories written before risk control
    load with the empirical method, no risk and no certified floor.
    """

    kind: str
    value: float
    met_on_validation: bool | None = None
    risk: float | None = None  # allowed chance the goal fails on new traffic; None: no guarantee
    method: str = "empirical"
    certified: bool | None = None  # whether any routing beyond the safe end was certified
    certified_floor: float | None = None  # quality floor (fraction of always-strong) the threshold is certified at
    bound: float | None = None  # floor: lower bound on quality / strong; budget: upper bound on the spend
    n_labelled: int | None = None  # rows the threshold was chosen on
    n_needed: int | None = None  # not certified: rows that would certify the best gap observed
    threshold_rows: str = "validation"  # "validation", "oof" (cross-fitted train + validation) or "all" (every labelled row)
    # The test behind the certificate (docs/guarantee.md): "exact", "betting" or "clopper-pearson" (the only one
    # before betting, so a record with a risk and no field reads as it); "none" without risk control.
    certificate: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GoalRecord:
        def opt(name: str, cast: Any) -> Any:
            v = d.get(name)
            if v is None:
                return None
            try:
                return cast(v)
            except (TypeError, ValueError):
                raise ArtifactError(f"metadata.json: goal.{name} must be a {cast.__name__}, got {v!r}") from None

        return cls(
            str(d["kind"]),
            float(d["value"]),
            opt("met_on_validation", bool),
            risk=opt("risk", float),
            method=str(d.get("method") or "empirical"),
            certified=opt("certified", bool),
            certified_floor=opt("certified_floor", float),
            bound=opt("bound", float),
            n_labelled=opt("n_labelled", int),
            n_needed=opt("n_needed", int),
            threshold_rows=str(d.get("threshold_rows") or "validation"),
            certificate=str(d.get("certificate") or ("none" if d.get("risk") is None else "clopper-pearson")),
        )

    def describe(self) -> str:
        """One line for summaries: goal, risk, method and what was certified."""
        head = f"{self.kind}={self.value:g}"
        if self.risk is None:
            return f"{head}, no risk control (method {self.method}; met on validation: {self.met_on_validation})"
        which = "labelled (all)" if self.threshold_rows == "all" else self.threshold_rows
        rows = f" on {self.n_labelled} {which} rows" if self.n_labelled else ""
        if self.kind != "quality_floor":
            state = f"certified (upper bound {self.bound:.4g})" if self.certified else "not certified: all cheap"
        elif self.certified:
            state = f"certified floor {self.certified_floor:.3f} of always-strong"
        else:
            need = f"; about {self.n_needed:,} labelled rows would certify the best gap seen" if self.n_needed else ""
            state = f"nothing cheap certified: all strong (floor 1.000){need}"
        return f"{head} at risk {self.risk:g} ({self.certificate} certificate, method {self.method}{rows}): {state}"


@dataclass(frozen=True)
class DataRecord:
    """Which log the router was trained on, and what the reader made of it."""

    files: tuple[str, ...]
    sha256: str
    rows_read: int
    rows_used: int
    skipped: Mapping[str, int]
    split_rows: Mapping[str, int]
    pass_threshold: float
    trained_prompts: PromptDigest | None = None  # train + validation prompts (membership only)

    def to_dict(self) -> dict[str, Any]:
        extra = {"trained_prompts": self.trained_prompts.to_dict()} if self.trained_prompts is not None else {}
        return {
            **extra,
            "files": list(self.files),
            "sha256": self.sha256,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "skipped": dict(self.skipped),
            "split_rows": dict(self.split_rows),
            "pass_threshold": self.pass_threshold,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataRecord:
        return cls(
            files=tuple(str(f) for f in d.get("files", ())),
            sha256=str(d.get("sha256", "")),
            rows_read=int(d.get("rows_read", 0)),
            rows_used=int(d.get("rows_used", 0)),
            skipped={str(k): int(v) for k, v in dict(d.get("skipped", {})).items()},
            split_rows={str(k): int(v) for k, v in dict(d.get("split_rows", {})).items()},
            pass_threshold=float(d.get("pass_threshold", 0.8)),
            trained_prompts=PromptDigest.from_dict(d["trained_prompts"]) if d.get("trained_prompts") else None,
        )


@dataclass(frozen=True)
class ParityRecord:
    """How closely the exported graphs match the sklearn pipeline and each other (test split)."""

    head_onnx_vs_sklearn_max_abs: float
    fp32_graph_vs_sklearn_max_abs: float
    int8_decision_agreement: float
    int8_apgr_abs_diff: float
    int8_max_abs_diff: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParityRecord:
        return cls(
            head_onnx_vs_sklearn_max_abs=float(d["head_onnx_vs_sklearn_max_abs"]),
            fp32_graph_vs_sklearn_max_abs=float(d["fp32_graph_vs_sklearn_max_abs"]),
            int8_decision_agreement=float(d["int8_decision_agreement"]),
            int8_apgr_abs_diff=float(d["int8_apgr_abs_diff"]),
            int8_max_abs_diff=float(d["int8_max_abs_diff"]),
            n=int(d["n"]),
        )


POLICY_TIERS = ("cheap", "strong")
_POLICY_RULE_KEYS = ("image_to_strong", "strong_tags", "max_tokens")


@dataclass(frozen=True)
class PolicyRecord:
    """A day-0 policy artifact (training/policy): its classes are the policy's routes, scored by
    similarity to written example requests; no outcome labels were used. Absent for trained routers."""

    name: str
    routes: Mapping[str, str]  # route name -> "cheap" | "strong" (the classes, whose order is `classes`')
    examples: Mapping[str, int]  # route name -> number of example requests
    rules: Mapping[str, Any]  # the RoutingRules the policy asks for (image_to_strong, strong_tags, max_tokens)
    scoring: Mapping[str, float] = field(default_factory=dict)  # how similarities become probabilities
    source: str = ""  # the policy file, copied into the directory
    source_sha256: str = ""

    def routing_rules(self) -> RoutingRules:
        """The rules to apply when the caller names none."""
        r = dict(self.rules)
        tags = r.get("strong_tags")
        return RoutingRules(**{**r, **({"strong_tags": frozenset(tags)} if tags is not None else {})})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "routes": dict(self.routes),
            "examples": dict(self.examples),
            "rules": plain_json(self.rules),
            "scoring": dict(self.scoring),
            "source": self.source,
            "source_sha256": self.source_sha256,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyRecord:
        rules = dict(d.get("rules", {}))
        unknown = sorted(set(rules) - set(_POLICY_RULE_KEYS))
        if unknown:
            raise ValueError(f"policy.rules has unknown key(s) {unknown}")
        return cls(
            name=str(d["name"]),
            routes={str(k): str(v) for k, v in dict(d["routes"]).items()},
            examples={str(k): int(v) for k, v in dict(d.get("examples", {})).items()},
            rules=rules,
            scoring={str(k): float(v) for k, v in dict(d.get("scoring", {})).items()},
            source=str(d.get("source", "")),
            source_sha256=str(d.get("source_sha256", "")),
        )


@dataclass(frozen=True)
class MultiModelRecord:
    """An N-model router (format 2): the graph's pass/ok columns, the serving rule and per-model dollars.

    `models` are the graph's column order, cheapest first; output `output` holds P(pass) for each,
    then P(ok) (loses nothing against every pricier model) for each: shape (batch, 2N).
    """

    models: tuple[str, ...]
    rule: str  # the serving rule (router_model/multi.py RULE_KINDS); metadata.json key "policy"
    value: float
    cost_models: tuple[CostModel, ...]
    best_single: str
    output: str = PASS_OUTPUT
    cost_source: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "policy": self.rule,
            "value": "inf" if self.value == float("inf") else self.value,
            "cost_models": [c.to_dict() for c in self.cost_models],
            "best_single": self.best_single,
            "output": self.output,
            "cost_source": dict(self.cost_source),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultiModelRecord:
        models = tuple(str(m) for m in d["models"])
        rec = cls(
            models=models,
            rule=str(d["policy"]),
            value=float(d["value"]),
            cost_models=tuple(CostModel.from_dict(c) for c in d["cost_models"]),
            best_single=str(d["best_single"]),
            output=str(d.get("output", PASS_OUTPUT)),
            cost_source={str(k): str(v) for k, v in dict(d.get("cost_source", {})).items()},
        )
        if len(models) < 2 or len(set(models)) != len(models):
            raise ValueError(f"multi.models must be at least two distinct names, got {list(models)}")
        if rec.rule not in RULE_KINDS:
            raise ValueError(f"multi.rule {rec.rule!r} is not one of {list(RULE_KINDS)}")
        if rec.rule == SINGLE and not (rec.value == int(rec.value) and 0 <= rec.value < len(models)):
            raise ValueError(f"multi.value of policy 'single' must be a model column 0..{len(models) - 1}, "
                             f"got {rec.value}")
        if tuple(c.model for c in rec.cost_models) != models:
            raise ValueError("multi.cost_models must name multi.models, in order")
        if rec.best_single not in models:
            raise ValueError(f"multi.best_single {rec.best_single!r} is not one of multi.models")
        return rec




@dataclass(frozen=True)
class EscalationRecord:
    """The answer-quality score and its certified use (docs/guarantee.md, "Route, then escalate").

    `on`: the served router scores a cheap answer with the graph `graph` and asks the strong model
    when the score (P(the cheap answer fails where the strong one passes)) is >= `answer_threshold`.
    The routing threshold served with it is the artifact's `threshold` (0.0: every request tries
    the cheap model first). Off: the record still says what was tried and why it is off.
    """

    on: bool
    reason: str  # one sentence: why on, or why off
    family: str = "off"  # the certified candidate family served: "route" (no escalation) or "cascade"
    answer_threshold: float | None = None
    graph: str = ""  # the answer-score graph's file ("" when none was exported)
    features: tuple[str, ...] = ()
    feature_version: int = 0
    candidates: tuple[Mapping[str, Any], ...] = ()  # every family tried: certified?, thresholds, cost, quality
    evaluation: Mapping[str, Any] = field(default_factory=dict)  # on the held-out test split

    def to_dict(self) -> dict[str, Any]:
        return {
            "on": self.on,
            "reason": self.reason,
            "family": self.family,
            "answer_threshold": self.answer_threshold,
            "graph": self.graph,
            "features": list(self.features),
            "feature_version": self.feature_version,
            "candidates": [plain_json(c) for c in self.candidates],
            "evaluation": plain_json(self.evaluation),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EscalationRecord:
        u = d.get("answer_threshold")
        rec = cls(
            on=bool(d["on"]),
            reason=str(d.get("reason", "")),
            family=str(d.get("family", "off")),
            answer_threshold=None if u is None else float(u),
            graph=str(d.get("graph", "")),
            features=tuple(str(f) for f in d.get("features", ())),
            feature_version=int(d.get("feature_version", 0)),
            candidates=tuple(plain_json(c) for c in d.get("candidates", ())),
            evaluation=plain_json(dict(d.get("evaluation", {}))),
        )
        if rec.on and (rec.answer_threshold is None or not 0.0 <= rec.answer_threshold <= 1.0 or not rec.graph):
            raise ValueError("escalation.on needs an answer_threshold in [0, 1] and a graph")
        return rec
