#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, notebooks included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
# Caches (exported embedder, embeddings) stay inside the checkout.
export ROUTER_CACHE_DIR="${ROUTER_CACHE_DIR:-$PWD/.cache/router-model}"
python scripts/gen_proto.py --check
python -m pytest -q "$@"
