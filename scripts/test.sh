#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, notebooks included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python scripts/gen_proto.py --check
python -m pytest -q "$@"
