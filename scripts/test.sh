#!/usr/bin/env bash
# Set up (idempotent), lint, type-check, check the layer contract, then run the unit tier and,
# if it passes, the integration tier (what CI runs).
#   bash scripts/test.sh                    # everything
#   bash scripts/test.sh tests/unit         # any pytest arguments: just that pytest run, after the checks
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
# Caches (exported embedder, embeddings) stay inside the checkout.
export ROUTER_CACHE_DIR="${ROUTER_CACHE_DIR:-$PWD/.cache/router-model}"
python scripts/gen_proto.py --check
ruff check router_model training benchmarks tests notebooks/build_notebooks.py scripts
mypy
lint-imports
if [ "$#" -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
# The unit tier needs no trained model and runs in well under two minutes; a failure stops here.
python -m pytest -q --durations=10 tests/unit
# The integration tier: real MiniLM routers, real servers, notebooks, the install test.
python -m pytest -q --durations=25 tests/integration
