#!/usr/bin/env bash
# The whole test suite: setup, then `pytest tests/` and `pytest --nbval notebooks/` (real vLLM on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch_llama3_tokenizer.sh
source scripts/env.sh
start=$(date +%s)
.venv/bin/python -m pytest tests/ --durations=10 "$@"
if ls notebooks/*.ipynb >/dev/null 2>&1; then
  .venv/bin/python -m pytest --nbval notebooks/ "$@"
fi
echo "test suite wall time: $(( $(date +%s) - start )) s"
