"""`pip install` of the inference part alone (no extras) gives a working predict_model.

Builds a fresh virtual environment, installs this repo without extras (numpy, onnxruntime,
tokenizers, tqdm from the package index), and routes with a model directory produced by
training. Slow (about a minute); it proves the inference package carries no training deps.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


SCRIPT = r"""
import json, sys, os
from router_model import predict_model
d = predict_model("Translate 'good morning' into French.")
heavy = sorted(m for m in ("torch", "sklearn", "sentence_transformers", "transformers", "onnx", "mlflow") if m in sys.modules)
print(json.dumps({"model": d.model, "p": d.p_cheap_ok, "reason": d.reason, "heavy": heavy}))
"""


def test_inference_only_install_routes(tmp_path: Path, model_dir: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # Build from a copy of the sources so the repo's own build dirs are not touched.
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "router-model" in names
    assert not names & {"torch", "scikit-learn", "sentence-transformers", "mlflow", "onnx", "transformers"}, names
    out = subprocess.run(
        [str(py), "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"ROUTER_MODEL_DIR": str(model_dir), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert got["model"] in (meta["cheap_model"], meta["strong_model"])
    assert 0.0 <= got["p"] <= 1.0
    assert got["reason"] == "classifier"
    assert got["heavy"] == []
