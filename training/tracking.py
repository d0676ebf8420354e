"""MLflow tracking: every training run is a run, and its model directory a registered version.

Default store: `sqlite:///mlflow.db` in the working directory (the plain file store needs an
opt-in flag in MLflow 3); `MLFLOW_TRACKING_URI` or `--tracking-uri` overrides it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def _flatten(prefix: str, d: dict[str, Any], out: dict[str, float]) -> None:
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            _flatten(key, v, out)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            out[key] = float(v)


def track_run(config, read, artifact, evaluation, head_scores, choice, plots, model, embed_stats, elapsed) -> str:
    """Log params, data hash and counts, metrics, plots, the model dir and the sklearn head."""
    import joblib
    import mlflow

    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(config.experiment)
    with mlflow.start_run() as run:
        mlflow.log_params({k: str(v)[:500] for k, v in config.params().items()})
        mlflow.log_params(
            {
                "cheap_model_resolved": read.cheap_model,
                "strong_model_resolved": read.strong_model,
                "data_sha256": read.data_sha256,
                "head": artifact["head"],
                "artifact_version": artifact["artifact_version"],
                "default_graph_chosen": artifact["default_graph"],
            }
        )
        metrics: dict[str, float] = {
            "rows_read": read.rows_read,
            "rows_used": read.rows_used,
            "rows_skipped": sum(read.skipped.values()),
            "threshold": choice.threshold,
            "val_strong_share": choice.strong_share,
            "val_quality_vs_strong": choice.quality_vs_strong,
            "train_seconds": elapsed,
            "embed_texts_per_second": embed_stats.get("texts_per_second", 0.0),
        }
        _flatten("test", evaluation, metrics)
        _flatten("val", head_scores, metrics)
        _flatten("parity", artifact.get("parity", {}), metrics)
        mlflow.log_metrics({k.replace("[", "_").replace("]", "_"): v for k, v in metrics.items()})
        for p in plots:
            mlflow.log_artifact(str(p), artifact_path="plots")
        mlflow.log_artifacts(str(config.out_dir), artifact_path="model")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sklearn_head.joblib"
            joblib.dump(model, path)
            mlflow.log_artifact(str(path), artifact_path="analysis")
        run_id = run.info.run_id
        source = f"{run.info.artifact_uri}/model"
    try:
        client = mlflow.MlflowClient()
        try:
            client.get_registered_model(config.registered_model)
        except Exception:
            client.create_registered_model(config.registered_model, description="router-model directories (ONNX + metadata.json)")
        mv = client.create_model_version(
            config.registered_model,
            source=source,
            run_id=run_id,
            tags={"artifact_version": artifact["artifact_version"], "default_graph": artifact["default_graph"]},
            description=f"cheap={read.cheap_model} strong={read.strong_model} threshold={choice.threshold:.4f}",
        )
        print(f"mlflow: run {run_id} in {uri}; registered {config.registered_model} v{mv.version}", flush=True)
    except Exception as e:  # registration is a convenience; the run itself is tracked
        log.warning("could not register the model in MLflow: %s", e)
        print(f"mlflow: run {run_id} in {uri} (not registered: {e})", flush=True)
    return run_id
