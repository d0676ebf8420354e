#!/usr/bin/env bash
# Set up (idempotent), lint, type-check and run the test suite, notebooks included (what CI runs).
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -m "not slow"   # the fast tier: no test that trains or embeds real data
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
# Caches (exported embedder, embeddings) stay inside the checkout.
export ROUTER_CACHE_DIR="${ROUTER_CACHE_DIR:-$PWD/.cache/router-model}"
python scripts/gen_proto.py --check
ruff check router_model training benchmarks tests notebooks/build_notebooks.py scripts
mypy
python -m pytest -q --durations=25 "$@"
