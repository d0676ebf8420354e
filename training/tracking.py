"""MLflow tracking: every training run is a run, and its model directory a registered version.

Default store: `sqlite:///mlflow.db` in the working directory (the plain file store needs an
opt-in flag in MLflow 3); `MLFLOW_TRACKING_URI` or `--tracking-uri` overrides it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_model.artifact import ArtifactMetadata
from training.data.log import LogReadResult
from training.head import FittedHead
from training.threshold import ThresholdChoice

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


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
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


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
            }
        )
        metrics: dict[str, float] = {
            "rows_read": read.rows_read,
            "rows_used": read.rows_used,
            "rows_skipped": sum(read.skipped.values()),
            "threshold": choice.threshold,
            "val_strong_share": choice.strong_share,
            "val_quality_vs_strong": choice.quality_vs_strong,
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
    try:
        client = mlflow.MlflowClient()
        try:
            client.get_registered_model(target.registered_model)
        except Exception:  # noqa: BLE001 - MLflow raises its own types for "not found"
            client.create_registered_model(target.registered_model, description="router-model directories (ONNX + metadata.json)")
        mv = client.create_model_version(
            target.registered_model,
            source=source,
            run_id=run_id,
            tags={"artifact_version": meta.artifact_version, "default_graph": meta.default_graph},
            description=f"cheap={read.cheap_model} strong={read.strong_model} threshold={choice.threshold:.4f}",
        )
        print(f"mlflow: run {run_id} in {uri}; registered {target.registered_model} v{mv.version}", flush=True)
    except Exception as e:  # noqa: BLE001 - registration is a convenience; the run itself is tracked
        log.warning("could not register the model in MLflow: %s", e)
        print(f"mlflow: run {run_id} in {uri} (not registered: {e})", flush=True)
    return str(run_id)
