#!/usr/bin/env bash
# Create .venv and install router-model with everything (training, serving, tests) from this repo.
# torch==2.13.0 goes first: it is a CPU build pip takes from local disk; installing
# sentence-transformers into an env without torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
if command -v npm >/dev/null 2>&1; then
  # The Node.js gRPC client used by the cross-language contract test.
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
fi
