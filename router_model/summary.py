"""Human-readable summaries of a trained router: its held-out evaluation table and its metadata.

`router-train` prints the table when it finishes; `python -m router_model info` prints it again
from metadata.json. Both go through here, so the two never drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from router_model.answer_score import reads_logprobs
from router_model.artifact import ArtifactMetadata

COLUMNS = ("apgr", "cpt50", "cpt80", "strong_share", "quality_vs_strong", "cost_saved")
ROUTERS = ("router", "random", "heuristic", "oracle")
LEGEND = (
    "APGR: share of the cheap-to-strong quality gap recovered, averaged over every strong-call share "
    "(random 0.5; higher is better).",
    "CPT(p%): share of calls that must go to the strong model to recover p% of that gap (lower is better).",
    "ECE / Brier: distance between p_cheap_ok and the observed rate of 'the cheap model lost nothing' (lower is better).",
)


def _f(v: Any, fmt: str = ".3f") -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, fmt)
    return "n/a"


def format_evaluation(ev: Mapping[str, Any], *, indent: str = "") -> str:
    """The held-out table: the router and the baselines at the router's strong share (rows indented by `indent`)."""
    lines = [
        f"Held-out test set: {ev.get('n_test')} prompts (cheap pass rate {_f(ev.get('q_weak'))}, "
        f"strong {_f(ev.get('q_strong'))})",
        f"{indent}{'router':<11}" + "".join(f"{c:>18}" for c in COLUMNS),
    ]
    for name in ROUTERS:
        b = ev.get(name)
        if isinstance(b, Mapping):
            lines.append(f"{indent}{name:<11}" + "".join(f"{_f(b.get(c)):>18}" for c in COLUMNS))
    r = ev.get("router")
    if isinstance(r, Mapping):
        lines.append(f"{indent}router calibration: AUC {_f(r.get('auc'))}  ECE {_f(r.get('ece'))}  Brier {_f(r.get('brier'))}")
        if "confidence_ece" in r:
            lines.append(
                f"{indent}decision confidence (P(chosen model does at least as well)): mean {_f(r.get('confidence_mean'))}, "
                f"observed {_f(r.get('chosen_at_least_as_good'))}, ECE {_f(r.get('confidence_ece'))}"
            )
    lines.append(f"{indent}random routing is shown in expectation (APGR 0.5, CPT(p%) = p%) and at the router's strong share.")
    return "\n".join(lines)


def escalation_line(meta: ArtifactMetadata) -> str | None:
    """The answer-score escalation (docs/guarantee.md) in one line; None when the artifact has no record of it."""
    esc = meta.escalation
    if esc is None:
        return None
    if esc.on and esc.answer_threshold is not None:
        reads = (", the score reads the cheap answer's token log-probabilities: the gateway asks for them"
                 if reads_logprobs(esc.features) else "")
        return f"escalation: on ({esc.family}, escalate when answer score >= {esc.answer_threshold:.3g}{reads})"
    return f"escalation: off ({esc.reason or 'no reason recorded'})"


def metadata_summary(meta: ArtifactMetadata, path: str | Path) -> str:
    """Pair, threshold, goal, held-out metrics, parity and versions of a model directory."""
    enc = meta.embedder.encoder
    lines = [
        f"model directory: {path}",
        f"artifact_version: {meta.artifact_version}  (format {meta.format_version}, created {meta.created_at or '?'})",
        f"pair: cheap={meta.cheap_model}  strong={meta.strong_model}",
        f"threshold: {meta.threshold:.4f}  (route to cheap when p_cheap_ok >= threshold)",
        f"goal: {meta.goal.describe()}",
        f"head: {meta.head}  target: {meta.target}  calibration: {meta.calibration}",
        f"embedder: {meta.embedder.name}  dim {meta.embedder.dim}  max_length {enc.max_length}  truncation {enc.truncation}",
        f"features: {', '.join(meta.features) or 'none'}",
        f"graphs: {', '.join(f'{k}={v}' for k, v in sorted(meta.graphs.items()))}  default: {meta.default_graph}",
    ]
    if meta.data is not None:
        d = meta.data
        lines.append(f"data: {d.rows_used} rows used of {d.rows_read} read, split {dict(d.split_rows)}, sha256 {d.sha256[:16]}...")
    if meta.multi is not None:  # an N-model router (format 2): `pair` above is cheapest / best single model
        m = meta.multi
        lines.append(f"models ({len(m.models)}, cheapest first): {', '.join(m.models)}; rule {m.rule}={m.value:.6g}, "
                     f"rules send to {m.best_single}")
    escalation = escalation_line(meta)
    if escalation is not None:
        lines.append(escalation)
    test = meta.test_metrics
    if isinstance(test.get("router"), Mapping):
        lines.append(format_evaluation(test, indent="  "))
    if meta.parity is not None:
        p = meta.parity
        lines.append(
            f"parity: fp32 vs sklearn max abs {p.fp32_graph_vs_sklearn_max_abs:.1e}; int8 agreement "
            f"{p.int8_decision_agreement:.3f}, APGR diff {p.int8_apgr_abs_diff:.4f}"
        )
    if meta.versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(meta.versions.items())))
    return "\n".join(lines)
