"""Real sqlite MLflow stores with toy versions, and `router-promote` on them, for the unit tier.

A store is a copy of an empty template database (creating MLflow's tables takes seconds; a copy
does not); a toy model directory (tests/toy_artifact.py) is registered as `router-train` registers a
trained one (a run's `model/` artifact, a version whose tag `artifact_version` names the directory).
Use the `mlflow_template` fixture of tests/unit/conftest.py for the template.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

NAME = "router-model"
CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"


def new_store(template: Path, base: Path) -> str:
    """A fresh store whose artifacts live under `base` (never in the working directory); its URI."""
    import mlflow

    base.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, base / "mlflow.db")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment("router-model", artifact_location=(base / "artifacts").as_uri())
    client.create_experiment("router-promotion", artifact_location=(base / "promotion").as_uri())
    return uri


def register(uri: str, model_dir: Path, *, tags: dict[str, str] | None = None) -> str:
    """Log `model_dir` as a run's `model/` artifact and register it as router-train does (training/tracking.py)."""
    import mlflow

    from router_model.artifact import read_metadata
    from training.tracking import register_version, version_tags

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("router-model")
    assert exp is not None
    run = client.create_run(exp.experiment_id)
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    version = register_version(uri, NAME, run.info.run_id, source=f"{run.info.artifact_uri}/model",
                               tags=tags if tags is not None else version_tags(read_metadata(model_dir)),
                               description="toy")
    assert version is not None
    return version


def promote(capsys, uri: str, cache: Path, *args: str) -> tuple[int, dict]:
    """`router-promote --json` in process: its exit code and its JSON (or {"stderr": ...})."""
    from training.promote_cli import main

    capsys.readouterr()
    code = main(["--tracking-uri", uri, "--cache-dir", str(cache), "--bootstrap", "200", "--json", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {"stderr": err})
