#!/usr/bin/env bash
# Set up (idempotent), lint, check the layer contract, then type-check beside the unit tier and, if
# both pass, run the integration tier (what CI runs).
#   bash scripts/test.sh                    # everything
#   bash scripts/test.sh tests/unit         # any pytest arguments: just that pytest run, after the checks
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
# Caches (exported embedder, embeddings) stay inside the checkout.
export ROUTER_CACHE_DIR="${ROUTER_CACHE_DIR:-$PWD/.cache/router-model}"
python scripts/gen_proto.py --check
ruff check router_model training benchmarks tests notebooks/build_notebooks.py notebooks/notebook_cells.py scripts
lint-imports
if [ "$#" -gt 0 ]; then
  mypy
  exec python -m pytest -q "$@"
fi
# The type check runs beside the unit tier; both must pass before the integration tier. The unit
# tier needs no trained model; its tests wait on loopback servers more than they compute, so two
# workers share the cores with mypy and finish it in well under two minutes.
mypy_log=$(mktemp)
mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
unit=0
python -m pytest -q -n 2 --durations=10 tests/unit || unit=$?
typed=0
wait "$mypy_pid" || typed=$?
cat "$mypy_log"
rm -f "$mypy_log"
if [ "$unit" -ne 0 ] || [ "$typed" -ne 0 ]; then
  echo "stopping: unit tier exit $unit, mypy exit $typed" >&2
  exit 1
fi
# The integration tier: real MiniLM routers, real servers, notebooks, the install test.
python -m pytest -q --durations=25 tests/integration
