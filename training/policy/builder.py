"""Build a day-0 policy into a model directory the router loads like a trained one.

policy.yaml -> examples embedded through the exported embedder -> the policy head (scoring.py) merged
with the fp32 and the int8 embedder (training/artifact/graph.py, quantize.py) -> metadata.json with a
`policy` record -> loaded back through `Router` and held to the numpy reference -> published. The policy
supplies its head, metadata and check; staging and publishing are the training writer's, shared with the
trained routers (training/artifact/writer.py: a directory that is not a router artifact is never replaced).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from router_model.artifact import (
    FP32,
    GRAPH_FILES,
    INT8,
    ArtifactMetadata,
    GoalRecord,
    PolicyRecord,
    sha256_file,
)
from router_model.errors import ArtifactError
from router_model.request import parse_request
from training.artifact.writer import (
    DEFAULT_GRAPH_CHOICES,
    FP32_MAX_DIFF,
    INT8_MIN_AGREEMENT,
    HeadGraph,
    ParityCheck,
    Stamp,
    check_replaceable,
    discard,
    publish,
    stage_artifact,
)
from training.cache import default_cache_dir
from training.embedding.common import DEFAULT_EMBEDDER
from training.embedding.export import export_embedder
from training.embedding.onnx_embedder import ExportedEmbedder, OnnxEmbedder
from training.policy.schema import Policy, load_policy
from training.policy.scoring import PolicyMatrix, head_onnx, head_parity, policy_matrix, reference_probabilities

POLICY_FILE = "policy.yaml"  # the source policy, copied into the model directory (and hashed with the rest)

# Requests of many kinds that are in no policy: the int8 and fp32 graphs are compared on these
# and on the policy's own examples (there are no labelled outcomes to compare APGR on).
PROBE_PROMPTS = (
    "What time zone is Tokyo in?",
    "Rewrite this sentence to sound more polite: send me the report now.",
    "List three synonyms for 'happy'.",
    "Is this email spam? 'You have won a free cruise, click here to claim.'",
    "Turn these notes into a bulleted list: milk, eggs, call Sam, book dentist.",
    "Convert 5 miles to kilometres.",
    "What does HTTP status 404 mean?",
    "Give me a title for a blog post about houseplants.",
    "Pull the dates out of this text: we met on 3 March and again on 12 April.",
    "Say 'thank you for your order' in Spanish and German.",
    "Why does my recursive Fibonacci function in Python time out for n=50, and how do I fix it?",
    "Show that the square root of 2 is irrational.",
    "Design a rate limiter for a distributed API with per-user quotas and explain the trade-offs.",
    "Find the race condition in this Go code that sometimes deadlocks on channel close.",
    "Compare the two attached 60-page supplier contracts and list every clause where liability differs.",
    "Write a 2,000-word short story about grief told from the point of view of a lighthouse.",
    "Solve the recurrence T(n) = 2T(n/2) + n log n and justify each step.",
    "Explain why this SQL query is slow on 50M rows and propose indexes, with the query plan reasoning.",
    "Derive the closed form of the sum of k^3 for k = 1..n and prove it by induction.",
    "Draft a nuanced op-ed arguing both sides of remote work for a national newspaper.",
    "hi",
    "Summarise the plot of Hamlet.",
    "Write a regex that matches a UK postcode.",
    "Refactor this 400-line legacy Java class into smaller classes and explain each decision.",
)


@dataclass(frozen=True)
class BuildConfig:
    """One policy build: the file, the target directory, and overrides of the file's pair."""

    policy: Path
    out_dir: Path
    cheap_model: str | None = None
    strong_model: str | None = None
    default_graph: str = "auto"  # auto | fp32 | int8
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.default_graph not in DEFAULT_GRAPH_CHOICES:
            raise ValueError(f"default_graph must be auto or one of {sorted(GRAPH_FILES)}, got {self.default_graph!r}")


@dataclass(frozen=True)
class PolicyBuild:
    model_dir: Path
    metadata: ArtifactMetadata
    policy: Policy


def _examples(policy: Policy) -> list[str]:
    """Example texts in class order, as the router will see them (the classifier text of a prompt)."""
    return [parse_request(e).classifier_text for r in policy.ordered_routes for e in r.examples]


def _metadata(policy: Policy, source: Path, exported: ExportedEmbedder, *, stamp: Stamp) -> ArtifactMetadata:
    routes = policy.ordered_routes
    classes = tuple(r.name for r in routes)
    record = PolicyRecord(
        name=policy.name,
        routes={r.name: r.tier for r in routes},
        examples={r.name: len(r.examples) for r in routes},
        rules=dict(policy.rules),
        scoring=policy.scoring.as_dict(),
        source=POLICY_FILE,
        source_sha256=sha256_file(source),
    )
    return ArtifactMetadata(
        **stamp.fields(),
        cheap_model=policy.cheap_model,
        strong_model=policy.strong_model,
        threshold=policy.threshold,
        goal=GoalRecord(kind="policy", value=policy.threshold, met_on_validation=None),
        target="policy",
        classes=classes,
        cheap_ok_classes=tuple(r.name for r in routes if r.tier == "cheap"),
        head="policy-similarity",
        calibration="none (a written policy: scores are not calibrated probabilities)",
        embedder=exported.spec,
        features=(),
        policy=record,
    )


def _verify(model_dir: Path, m: PolicyMatrix, policy: Policy, *, texts: list[str], emb: np.ndarray,
            head_vs_reference: float) -> ParityCheck:
    """Load the staged directory through the router; hold fp32 to the reference, int8 to fp32."""
    from router_model.router import Router

    ref = reference_probabilities(m, policy.scoring, emb)[:, : m.n_cheap].sum(axis=1)
    p32 = Router.load(model_dir, graph=FP32).p_cheap_ok(texts)
    fp32_diff = float(np.abs(p32 - ref).max())
    if fp32_diff > FP32_MAX_DIFF:
        raise ArtifactError(f"the fp32 policy graph differs from the reference scoring by {fp32_diff:.2e}", file=GRAPH_FILES[FP32])
    p8 = Router.load(model_dir, graph=INT8).p_cheap_ok(texts)
    t = policy.threshold
    agreement = float(np.mean((p8 >= t) == (p32 >= t)))
    checks = {
        "head_vs_reference_max_abs": head_vs_reference,
        "fp32_graph_vs_reference_max_abs": fp32_diff,
        "int8_decision_agreement": agreement,
        "int8_max_abs_diff": float(np.abs(p8 - p32).max()),
        "n": float(len(texts)),
    }
    return ParityCheck(agreement >= INT8_MIN_AGREEMENT, {"metrics": {"policy_parity": checks}})


def build_policy(config: BuildConfig, say: Callable[[str], None] = lambda _m: None) -> PolicyBuild:
    """Validate, build, verify and publish; the target is checked before any work and again at publish."""
    policy = load_policy(config.policy)
    policy = replace(policy, cheap_model=config.cheap_model or policy.cheap_model,
                     strong_model=config.strong_model or policy.strong_model)
    if policy.cheap_model == policy.strong_model:
        raise ValueError(f"the cheap and the strong model must differ (both {policy.cheap_model!r})")
    out_dir = Path(config.out_dir)
    check_replaceable(out_dir)
    cache_dir = config.cache_dir or default_cache_dir()
    exported = export_embedder(policy.embedder or DEFAULT_EMBEDDER, cache_dir)
    embedder = OnnxEmbedder(exported, cache_dir=cache_dir)
    examples = _examples(policy)
    probes = list(PROBE_PROMPTS)
    try:
        emb = embedder.embed(examples + probes)
    finally:
        embedder.close()
    m = policy_matrix(policy, emb[: len(examples)])
    say(f"policy {policy.name}: {m.n_routes} routes ({m.n_cheap} cheap), {len(examples)} examples, "
        f"cheap={policy.cheap_model} strong={policy.strong_model}")
    onx = head_onnx(m, policy.scoring, onnx.load(str(exported.onnx_path)).ir_version)
    head = HeadGraph(onx, head_parity(onx, m, policy.scoring, embeddings=emb), "the reference scoring")
    texts = examples + probes
    staged = stage_artifact(
        out_dir,
        head=head,
        exported=exported,
        calibration_texts=examples,
        metadata=lambda stamp: _metadata(policy, config.policy, exported, stamp=stamp),
        check_parity=lambda model_dir, _meta: _verify(model_dir, m, policy, texts=texts, emb=emb,
                                                      head_vs_reference=head.vs_reference),
        default_graph=config.default_graph,
        extra_files=lambda model_dir: shutil.copyfile(config.policy, model_dir / POLICY_FILE),
    )
    meta = staged.metadata
    try:
        checks = meta.metrics["policy_parity"]
        say(f"checks: fp32 graph vs reference {checks['fp32_graph_vs_reference_max_abs']:.1e}; int8 vs fp32: "
            f"{checks['int8_decision_agreement']:.1%} of {int(checks['n'])} decisions agree; default graph {meta.default_graph}")
        publish(staged)
    except BaseException:
        discard(staged)
        raise
    say(f"model directory: {out_dir}")
    return PolicyBuild(out_dir, meta, policy)
