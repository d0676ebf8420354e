"""MLflow tracking: every training run is a run, and its model directory a registered version.

Default store: `sqlite:///mlflow.db` in the working directory (the plain file store needs an
opt-in flag in MLflow 3); `MLFLOW_TRACKING_URI` or `--tracking-uri` overrides it.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_model.answer_score import reads_logprobs
from router_model.artifact import ArtifactMetadata, EscalationRecord, GoalRecord
from router_model.offline.log import LogReadResult
from router_model.price_source import price_params
from router_model.registry import ARTIFACT_VERSION_TAG, tracking_uri
from training.head import FittedHead
from training.threshold import ThresholdChoice

log = logging.getLogger(__name__)


def _flatten(prefix: str, d: dict[str, Any], out: dict[str, float]) -> None:
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            _flatten(key, v, out)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            out[key] = float(v)


@dataclass(frozen=True)
class RunRecord:
    """Everything one training run logs: settings, the data read, the artifact and its evaluation."""

    params: dict[str, Any]
    read: LogReadResult
    metadata: ArtifactMetadata
    model_dir: Path  # the verified directory to log (staged: it is published only after tracking)
    choice: ThresholdChoice
    plots: tuple[Path, ...]
    head: FittedHead
    embed_stats: dict[str, float]
    elapsed: float


@dataclass(frozen=True)
class TrackingTarget:
    tracking_uri: str | None
    experiment: str
    registered_model: str

    @property
    def uri(self) -> str:
        return tracking_uri(self.tracking_uri)


def track_run(target: TrackingTarget, run: RunRecord) -> str:
    """Log params, data hash and counts, metrics, plots, the model dir and the sklearn head."""
    import joblib
    import mlflow

    meta, read, choice = run.metadata, run.read, run.choice
    uri = target.uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(target.experiment)
    with mlflow.start_run() as active:
        mlflow.log_params({k: str(v)[:500] for k, v in run.params.items()})
        mlflow.log_params(
            {
                "cheap_model_resolved": read.cheap_model,
                "strong_model_resolved": read.strong_model,
                "data_sha256": read.data_sha256,
                "head": meta.head,
                "artifact_version": meta.artifact_version,
                "default_graph_chosen": meta.default_graph,
                **goal_params(meta.goal),
                **escalation_params(meta.escalation),
            }
        )
        if meta.prices:  # which price source (and version) priced the pair
            mlflow.log_params({k: v[:500] for k, v in price_params(meta.prices).items()})
            mlflow.set_tag("router.prices_source", str(meta.prices.get("maintained") or meta.prices.get("source", ""))[:500])
        metrics: dict[str, float] = {
            "rows_read": read.rows_read,
            "rows_used": read.rows_used,
            "rows_skipped": sum(read.skipped.values()),
            "threshold": choice.threshold,
            "val_strong_share": choice.strong_share,
            "val_quality_vs_strong": choice.quality_vs_strong,
            **goal_metrics(meta.goal),
            "train_seconds": run.elapsed,
            "embed_texts_per_second": run.embed_stats.get("texts_per_second", 0.0),
        }
        _flatten("test", dict(meta.test_metrics), metrics)
        _flatten("val", run.head.validation, metrics)
        _flatten("parity", meta.parity.to_dict() if meta.parity else {}, metrics)
        mlflow.log_metrics({k.replace("[", "_").replace("]", "_"): v for k, v in metrics.items()})
        for p in run.plots:
            mlflow.log_artifact(str(p), artifact_path="plots")
        mlflow.log_artifacts(str(run.model_dir), artifact_path="model")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sklearn_head.joblib"
            joblib.dump(run.head.model, path)
            mlflow.log_artifact(str(path), artifact_path="analysis")
        run_id = active.info.run_id
        source = f"{active.info.artifact_uri}/model"
    register_version(uri, target.registered_model, str(run_id), source=source, tags=version_tags(meta),
                     description=f"cheap={read.cheap_model} strong={read.strong_model} threshold={choice.threshold:.4f}")
    return str(run_id)


def version_tags(meta: ArtifactMetadata, **extra: str) -> dict[str, str]:
    """The tags of a registered version: its artifact_version (which serving and router-promote check the
    downloaded directory against, router_model.registry.fetch_version) and its default graph."""
    return {ARTIFACT_VERSION_TAG: meta.artifact_version, "default_graph": meta.default_graph, **extra}


def register_version(uri: str, registered_model: str, run_id: str, *, source: str, tags: dict[str, str],
                     description: str) -> str | None:
    """Register the run's model directory (`source`, the run's `model/` artifact) as a new version of
    `registered_model` in the store at `uri`; its version number, or None when registration failed
    (a convenience: the run itself is tracked)."""
    import mlflow

    try:
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            client.get_registered_model(registered_model)
        except Exception:  # noqa: BLE001 - MLflow raises its own types for "not found"
            client.create_registered_model(registered_model, description="router-model directories (ONNX + metadata.json)")
        mv = client.create_model_version(registered_model, source=source, run_id=run_id, tags=tags, description=description)
        print(f"mlflow: run {run_id} in {uri}; registered {registered_model} v{mv.version}", flush=True)
        return str(mv.version)
    except Exception as e:  # noqa: BLE001 - registration is a convenience; the run itself is tracked
        log.warning("could not register the model in MLflow: %s", e)
        print(f"mlflow: run {run_id} in {uri} (not registered: {e})", flush=True)
        return None


def goal_params(goal: GoalRecord) -> dict[str, Any]:
    """The goal and its guarantee as run params (docs/guarantee.md)."""
    return {"goal_kind": goal.kind, "goal_value": goal.value, "goal_risk": "none" if goal.risk is None else goal.risk,
            "goal_method": goal.method, "goal_certificate": goal.certificate,
            "goal_threshold_rows": goal.threshold_rows}  # what was used (oof falls back on tiny logs)


def escalation_params(record: EscalationRecord | None) -> dict[str, Any]:
    """Whether the answer score escalates, and at what (training/escalation.py); {} when not tried."""
    if record is None:
        return {}
    return {"escalation_on": record.on, "escalation_family": record.family,
            "escalation_answer_threshold": "none" if record.answer_threshold is None else record.answer_threshold,
            "escalation_reason": record.reason,
            "escalation_reads_logprobs": reads_logprobs(record.features)}


def goal_metrics(goal: GoalRecord) -> dict[str, float]:
    """What was certified, as run metrics (absent fields are left out)."""
    fields = (("certified", goal.certified), ("certified_floor", goal.certified_floor), ("bound", goal.bound),
              ("n_labelled", goal.n_labelled), ("n_needed", goal.n_needed), ("risk", goal.risk))
    return {f"goal.{k}": float(v) for k, v in fields if v is not None}


def track_multi_run(target: TrackingTarget, params: dict[str, Any], metrics: dict[str, float], *, evaluation: dict[str, Any],
                    model_dir: Path, meta: ArtifactMetadata, plots: Sequence[Path]) -> str:
    """An N-model run (training/multi): params, held-out frontier figures, plots, the model dir, a version."""
    import mlflow

    mlflow.set_tracking_uri(target.uri)
    mlflow.set_experiment(target.experiment)
    with mlflow.start_run() as active:
        mlflow.log_params({k: str(v)[:500] for k, v in {**params, **goal_params(meta.goal)}.items()})
        flat: dict[str, float] = {**metrics, **goal_metrics(meta.goal)}
        _flatten("test", {k: v for k, v in evaluation.items() if k not in ("singles", "models")}, flat)
        for s in evaluation.get("singles", []):
            flat[f"test.single.{s['name']}.quality"] = float(s["quality"])
            flat[f"test.single.{s['name']}.cost"] = float(s["cost"])
        _flatten("parity", meta.parity.to_dict() if meta.parity else {}, flat)
        mlflow.log_metrics({re.sub(r"[^\w\-. /]", "_", k): v for k, v in flat.items()})
        for p in plots:
            mlflow.log_artifact(str(p), artifact_path="plots")
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        run_id = str(active.info.run_id)
        source = f"{active.info.artifact_uri}/model"
    assert meta.multi is not None
    register_version(target.uri, target.registered_model, run_id, source=source,
                     tags=version_tags(meta, models=str(len(meta.multi.models))),
                     description=f"N-model router: {', '.join(meta.multi.models)}; policy {meta.multi.rule}={meta.multi.value:g}")
    return run_id
