"""Toy model directories for unit tests: valid artifacts built in milliseconds, no training.

`Router.load` verifies and serves these like a trained router (sha256 of every listed file,
graph inputs and outputs, the warm-up run), but nothing is trained or exported: the graph is a
hand-written word-weight table (onnx.helper), the tokenizer a tiny `tokenizers` WordLevel
vocabulary, the metadata the artifact module's own dataclasses written by its own
`write_metadata`. Only onnx, tokenizers, numpy and json are used (no torch, sentence-transformers,
sklearn), so the unit tier needs no model.

Every toy graph scores a text by its keywords' *strength*, `mean_strength(text)` (the tokenizer,
the strengths and the graph are in tests/toy_graphs.py); what each kind makes of it:

* pair (`write_toy_pair`): p_cheap_ok = sigmoid(logit(neutral_p) - mean_strength), exactly
  (`pair_p_cheap_ok`); neutral text gets `neutral_p` (default 0.6, cheap at threshold 0.5).
  "Translate this sentence into French." (8 tokens, strength -1) -> 0.80 (cheap);
  "Prove the theorem." (6 tokens, strength 2.67) -> 0.09 (strong).
* N models (`write_toy_multi`): model j (cheapest first) passes with
  P = sigmoid(MULTI_GAIN * (capability_j - mean_strength)), the same for P(ok), and the
  priciest model is always ok. Default capabilities put cheap-word prompts on models[0], neutral
  text on models[1] and strong-word prompts on models[-1] (policy cheapest_ok at 0.5).
* policy (`write_toy_policy`): one class per route; a route's keywords add WORD_WEIGHT to its
  column, softmax over routes; p_cheap_ok = the cheap routes' share, and the reason names the
  likeliest route of the chosen tier (`policy:translation`).

Request features (log_tokens, has_code, math_density) and token_type_ids are graph inputs, as in a
real artifact, with zero weight: they never change a decision. How a directory is staged, hashed
and published (and the drift reference a pair carries) is in tests/toy_directory.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from toy_directory import (  # staging, graphs, common metadata, drift reference; REFERENCE_PROMPTS re-exported
    REFERENCE_PROMPTS,
    base_metadata,
    embedder_spec,
    encoder_inputs,
    publish_directory,
    stage_directory,
    toy_artifact_version,
    toy_drift_reference,
    write_graphs,
)
from toy_graphs import (  # re-exported: tests import the toy's vocabulary and scoring from here
    CHEAP_WORDS,
    DEFAULT_MULTI_MODELS,
    DEFAULT_POLICY_ROUTES,
    EMBED_DIM,
    MULTI_GAIN,
    STRONG_WORDS,
    VOCAB,
    WORD_WEIGHT,
    default_capabilities,
    logit,
    mean_strength,
    multi_p_pass,
    pair_p_cheap_ok,
    router_graph,
    strengths,
    token_table,
    toy_answer_score,
    toy_answer_score_graph,
    toy_tokenizer,
)

from router_model.answer_features import FEATURE_VERSION
from router_model.answer_score import ANSWER_SCORE_FILE, SCORE_FEATURES, SCORE_FEATURES_WITH_LOGPROBS
from router_model.artifact import (
    FP32,
    POLICY_TIERS,
    PROBABILITIES_OUTPUT,
    EscalationRecord,
    GoalRecord,
    MultiModelRecord,
    PolicyRecord,
    sha256_file,
    write_metadata,
)
from router_model.decision import CHEAP_ONLY_CLASS
from router_model.drift_reference import write_reference
from router_model.features import DEFAULT_FEATURES
from router_model.multi import PASS_OUTPUT, CostModel

__all__ = [
    "CHEAP_WORDS",
    "DEFAULT_MULTI_MODELS",
    "DEFAULT_POLICY_ROUTES",
    "JOINT_CHEAP_OK",
    "JOINT_CLASSES",
    "REFERENCE_PROMPTS",
    "STRONG_WORDS",
    "WORD_WEIGHT",
    "mean_strength",
    "multi_p_pass",
    "pair_p_cheap_ok",
    "toy_answer_score",
    "toy_answer_score_graph",
    "toy_tokenizer",
    "write_toy_multi",
    "write_toy_pair",
    "write_toy_policy",
]

# The trained pair's joint target (training/head.py JOINT_CLASSES / JOINT_CHEAP_OK; that module is
# not imported so this file stays free of the training stack). p_cheap_ok = 1 - P(strong_only).
JOINT_CLASSES = ("both", CHEAP_ONLY_CLASS, "strong_only", "neither")
JOINT_CHEAP_OK = ("both", CHEAP_ONLY_CLASS, "neither")
_STRONG_ONLY = JOINT_CLASSES.index("strong_only")

POLICY_SOURCE_FILE = "policy.yaml"  # training/policy/builder.py POLICY_FILE

# Per-call dollars of a toy N-model artifact: intercept + per_token * prompt tokens, cheapest first.
_TOY_PRICES = ((0.00005, 0.15e-6), (0.0008, 2.5e-6), (0.004, 15e-6), (0.01, 60e-6))


# ------------------------------------------------------------------------------ the writers


def write_toy_pair(
    path: str | Path,
    *,
    cheap: str = "gpt-4o-mini",
    strong: str = "gpt-4o",
    threshold: float = 0.5,
    neutral_p: float = 0.6,
    word_weight: float = WORD_WEIGHT,
    seed: int = 0,
    version: str | None = None,
    features: Sequence[str] = DEFAULT_FEATURES,
    token_type_ids: bool = True,
    drift_reference: bool = True,
    max_length: int = 128,
    truncation: str = "head_tail",
    default_graph: str = FP32,
    work: int = 0,
    answer_threshold: float | None = None,
    answer_logprobs: bool = False,
) -> Path:
    """A cheap/strong model directory (format 1, joint target) that routes by keywords.

    p_cheap_ok = sigmoid(logit(neutral_p) - mean_strength(text)) (`pair_p_cheap_ok`). The other joint
    classes share p_cheap_ok as P(both) : P(cheap_only) : P(neither) = 6 : 1 : 3, so a strong
    decision's confidence, 1 - P(cheap_only), is 1 - 0.1 * p_cheap_ok (`_pair_head`).
    `seed` changes the noise columns (and so the graph, the hashes and the artifact_version);
    `version` sets the artifact_version outright. `work` adds busy-work layers (`router_graph`): the same
    decisions, but a graph run takes time in proportion to its tokens, like a real embedder's.
    `answer_threshold` (format 3): the pair also escalates on the toy answer score
    (`toy_answer_score_graph`: 0.88 without a stated final answer, 0.12 with one) at that threshold;
    `answer_logprobs`: that score also reads token log-probabilities (`toy_answer_score`'s logprob_mean).
    """
    path = Path(path)
    model_inputs = encoder_inputs(token_type_ids)
    table = token_table(EMBED_DIM, seed, strengths(word_weight))
    head_w, head_b = _pair_head(EMBED_DIM, neutral_p)
    escalation = None if answer_threshold is None else EscalationRecord(
        on=True, reason="toy", family="cascade", answer_threshold=float(answer_threshold), graph=ANSWER_SCORE_FILE,
        features=SCORE_FEATURES_WITH_LOGPROBS if answer_logprobs else SCORE_FEATURES, feature_version=FEATURE_VERSION,
    )

    def build(t: np.ndarray) -> onnx.ModelProto:
        return router_graph(t, head_w, head_b, model_inputs=model_inputs, n_features=len(features),
                      output=PROBABILITIES_OUTPUT, activation="softmax", name="toy_pair_router", work=work)

    tmp = stage_directory(path)
    try:
        graph_bytes = write_graphs(tmp, build, table, max_length)
        if drift_reference:
            write_reference(tmp, toy_drift_reference(table, threshold, neutral_p, max_length))
        if escalation is not None:  # before write_metadata, which hashes every file in the directory
            (tmp / ANSWER_SCORE_FILE).write_bytes(toy_answer_score_graph(logprobs=answer_logprobs))
        meta = base_metadata(
            artifact_version=toy_artifact_version("pair", seed, version, hashlib.sha256(graph_bytes).hexdigest(), cheap,
                                               strong, threshold, list(features), max_length, drift_reference,
                                               *(() if answer_threshold is None else ("answer_score", answer_threshold)),
                                               *(("answer_logprobs",) if answer_logprobs else ())),
            cheap_model=cheap,
            strong_model=strong,
            threshold=float(threshold),
            goal=GoalRecord(kind="quality_floor", value=0.95, met_on_validation=True),
            target="joint",
            classes=JOINT_CLASSES,
            cheap_ok_classes=JOINT_CHEAP_OK,
            head="toy-word-table",
            embedder=embedder_spec(table, max_length, truncation, model_inputs),
            features=tuple(features),
            default_graph=default_graph,
            escalation=escalation,
        )
        write_metadata(tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_directory(tmp, path)


def _pair_head(dim: int, neutral_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Joint-class logits: strong_only = strength - logit(neutral_p); the others fixed at log(0.6, 0.1, 0.3),
    which sum to 1, so P(strong_only) = sigmoid(strength - logit(neutral_p)) and p_cheap_ok its complement.
    P(cheap_only) = 0.1 * p_cheap_ok, so a strong decision's confidence is 1 - 0.1 * p_cheap_ok."""
    w = np.zeros((dim, len(JOINT_CLASSES)), dtype=np.float32)
    w[0, _STRONG_ONLY] = 1.0
    b = np.log(np.array([0.6, 0.1, 1.0, 0.3], dtype=np.float64))
    b[_STRONG_ONLY] = -logit(neutral_p)
    return w, b.astype(np.float32)


def write_toy_multi(
    path: str | Path,
    models: Sequence[str] = DEFAULT_MULTI_MODELS,
    *,
    policy: str = "cheapest_ok",
    value: float = 0.5,
    capabilities: Sequence[float] | None = None,
    best_single: str | None = None,
    seed: int = 0,
    version: str | None = None,
    features: Sequence[str] = DEFAULT_FEATURES,
    token_type_ids: bool = True,
    max_length: int = 128,
    truncation: str = "head_tail",
    default_graph: str = FP32,
) -> Path:
    """An N-model directory (format 2): `pass_probabilities` = P(pass) per model, then P(ok) per model.

    P(pass_j) = P(ok_j) = sigmoid(MULTI_GAIN * (capabilities[j] - mean_strength(text))) (`multi_p_pass`),
    except the priciest model's P(ok), which is 1. Default capabilities (-0.5, 1.0, 2.0, ...): with
    cheapest_ok at 0.5, a cheap-word prompt (strength <= -0.5) goes to models[0], neutral text to
    models[1], a strong-word prompt such as "Prove the theorem." (strength 2.7) to models[-1].
    Rules send a request to `best_single` (default: the priciest model).
    """
    path = Path(path)
    models = tuple(models)
    n = len(models)
    if n > len(_TOY_PRICES):
        raise ValueError(f"at most {len(_TOY_PRICES)} toy models (one price each), got {n}")
    caps = default_capabilities(n) if capabilities is None else tuple(float(c) for c in capabilities)
    if len(caps) != n:
        raise ValueError(f"{len(caps)} capabilities for {n} models")
    model_inputs = encoder_inputs(token_type_ids)
    table = token_table(EMBED_DIM, seed, strengths(WORD_WEIGHT))
    w = np.zeros((EMBED_DIM, 2 * n), dtype=np.float32)
    w[0, :] = -MULTI_GAIN
    b = np.array([MULTI_GAIN * c for c in caps] * 2, dtype=np.float32)
    w[0, 2 * n - 1] = 0.0
    b[2 * n - 1] = 40.0  # sigmoid(40) == 1.0 in float32: the priciest model loses to nothing pricier

    def build(t: np.ndarray) -> onnx.ModelProto:
        return router_graph(t, w, b, model_inputs=model_inputs, n_features=len(features), output=PASS_OUTPUT,
                      activation="sigmoid", name="toy_multi_router")

    best = best_single or models[-1]
    cost_models = tuple(
        CostModel(m, intercept, per_token, intercept + per_token * 200) for m, (intercept, per_token) in zip(models, _TOY_PRICES)
    )
    tmp = stage_directory(path)
    try:
        graph_bytes = write_graphs(tmp, build, table, max_length)
        meta = base_metadata(
            artifact_version=toy_artifact_version("multi", seed, version, hashlib.sha256(graph_bytes).hexdigest(), models,
                                               policy, value, best, list(features), max_length),
            cheap_model=models[0],
            strong_model=best,
            threshold=float(np.clip(value, 0.0, 1.0)) if policy.startswith("cheapest") else 0.0,
            goal=GoalRecord(kind="quality_floor", value=0.95, met_on_validation=True),
            target="multi",
            classes=tuple(f"pass:{m}" for m in models) + tuple(f"ok:{m}" for m in models),
            cheap_ok_classes=(f"ok:{models[0]}",),
            head="toy-word-table",
            embedder=embedder_spec(table, max_length, truncation, model_inputs),
            features=tuple(features),
            default_graph=default_graph,
            multi=MultiModelRecord(models=models, rule=policy, value=float(value), cost_models=cost_models,
                                   best_single=best, cost_source={m: "toy" for m in models}),
        )
        write_metadata(tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_directory(tmp, path)


def write_toy_policy(
    path: str | Path,
    *,
    routes: Mapping[str, tuple[str, Sequence[str]]] = DEFAULT_POLICY_ROUTES,
    cheap: str = "gpt-4o-mini",
    strong: str = "gpt-4o",
    threshold: float = 0.5,
    rules: Mapping[str, object] | None = None,
    name: str = "toy",
    seed: int = 0,
    version: str | None = None,
    max_length: int = 128,
) -> Path:
    """A day-0 policy directory (format 1 with a `policy` record): classes are the routes, cheap ones first.

    A route's keywords add WORD_WEIGHT to its class logit (per token, mean-pooled); a small bias
    (+0.1) on the first cheap route breaks the tie of neutral text, which therefore routes cheap
    with reason `policy:<first cheap route>`. Default rules: image to strong, strong tags
    [high-accuracy, legal] (not `vision`), max_tokens 1000, so a test can tell the policy's rules
    from `RoutingRules()`. Like a built policy it has no request features, and a copy of its
    source (`policy.yaml`, JSON, which YAML reads) is listed and hashed with the other files.
    """
    path = Path(path)
    ordered = [(r, t, tuple(ws)) for tier in POLICY_TIERS for r, (t, ws) in routes.items() if t == tier]
    if {t for _, t, _ in ordered} != set(POLICY_TIERS) or len(ordered) != len(routes):
        raise ValueError(f"a policy needs at least one route of each tier {POLICY_TIERS} and no other tier")
    classes = tuple(r for r, _, _ in ordered)
    unknown = [w for _, _, ws in ordered for w in ws if w not in VOCAB]
    if unknown:
        raise ValueError(f"route keywords {unknown} are not in the toy vocabulary (tests/toy_artifact.py VOCAB)")
    rules = dict(rules) if rules is not None else {"image_to_strong": True, "strong_tags": ["high-accuracy", "legal"],
                                                   "max_tokens": 1000}
    model_inputs = ("input_ids", "attention_mask", "token_type_ids")
    dim = max(EMBED_DIM, len(classes) + 1)
    table = token_table(dim, seed, np.zeros(len(VOCAB), dtype=np.float32))
    table[:, : len(classes)] = 0.0
    for k, (_, _, words) in enumerate(ordered):
        for word in words:
            table[VOCAB[word], k] = WORD_WEIGHT
    head_w = np.zeros((dim, len(classes)), dtype=np.float32)
    head_w[np.arange(len(classes)), np.arange(len(classes))] = 1.0
    head_b = np.zeros(len(classes), dtype=np.float32)
    head_b[0] = 0.1

    def build(t: np.ndarray) -> onnx.ModelProto:
        return router_graph(t, head_w, head_b, model_inputs=model_inputs, n_features=0, output=PROBABILITIES_OUTPUT,
                      activation="softmax", name="toy_policy_router")

    source = {
        "name": name,
        "cheap_model": cheap,
        "strong_model": strong,
        "threshold": threshold,
        "rules": rules,
        "routes": [{"name": r, "tier": t, "examples": [f"A request that mentions {w}." for w in ws] or ["An example."]}
                   for r, t, ws in ordered],
    }
    tmp = stage_directory(path)
    try:
        graph_bytes = write_graphs(tmp, build, table, max_length)
        (tmp / POLICY_SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        record = PolicyRecord(
            name=name,
            routes={r: t for r, t, _ in ordered},
            examples={r: len(ws) for r, _, ws in ordered},
            rules=rules,
            scoring={"word_weight": WORD_WEIGHT},
            source=POLICY_SOURCE_FILE,
            source_sha256=sha256_file(tmp / POLICY_SOURCE_FILE),
        )
        meta = base_metadata(
            artifact_version=toy_artifact_version("policy", seed, version, hashlib.sha256(graph_bytes).hexdigest(), cheap,
                                               strong, threshold, json.dumps(source, sort_keys=True)),
            cheap_model=cheap,
            strong_model=strong,
            threshold=float(threshold),
            goal=GoalRecord(kind="policy", value=float(threshold), met_on_validation=None),
            target="policy",
            classes=classes,
            cheap_ok_classes=tuple(r for r, t, _ in ordered if t == "cheap"),
            head="toy-policy-keywords",
            embedder=embedder_spec(table, max_length, "head_tail", model_inputs),
            features=(),
            default_graph=FP32,
            policy=record,
        )
        write_metadata(tmp, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_directory(tmp, path)
