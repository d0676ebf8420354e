"""router_model.offline (log reader, metrics, savings reports) and `router-cost` import none of the training stack."""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = (
    "router_model.offline.costs",
    "router_model.offline.log",
    "router_model.offline.metrics",
    "router_model.offline.multi_data",
    "router_model.offline.multi_evaluation",
    "router_model.offline.multi_savings",
    "router_model.offline.row",
    "router_model.offline.savings",
    "router_model.offline.savings_cli",
    "router_model.offline.split",
    "router_model.cost_cli",
)
HEAVY = ("torch", "sklearn", "mlflow", "training")


def test_offline_evaluation_imports_no_training_stack() -> None:
    code = (
        f"import importlib, json, sys\nfor m in {MODULES!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
