#!/usr/bin/env bash
# The fast loop: the pure library's tests, without the ones marked slow (engines, servers, browsers,
# training, wheel builds, notebooks; conftest.py gives the marks). `make test` still runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
start=$(date +%s)
.venv/bin/python -m pytest tests/ -m "not slow" "$@"
echo "fast loop wall time: $(( $(date +%s) - start )) s"
