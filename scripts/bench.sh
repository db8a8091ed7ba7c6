#!/usr/bin/env bash
# Every benchmark in benchmarks/, one after the other, printing ratios measured in the same run
# (the numbers in docs/benchmarks.md). Run it on a quiet machine: `make bench`.
# Optional: BENCH_SUITE=1 also times the whole test suite (`scripts/test.sh`, several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
unset VLLM_LOGGING_LEVEL             # the table's value (ERROR), whatever the caller set
source scripts/env.sh
echo "== $(date -u +%FT%TZ) | $(nproc) CPUs | $(.venv/bin/python -c 'import torch, vllm; print("torch", torch.__version__, "| vllm", vllm.__version__)')"
for b in bench_logprobs bench_loss bench_memory bench_alignment bench_views bench_rollout bench_scan; do
  echo; echo "== python -m benchmarks.$b"
  .venv/bin/python -m "benchmarks.$b"
done
if [ "${BENCH_SUITE:-0}" = "1" ]; then
  echo; echo "== the test suite (scripts/test.sh)"
  bash scripts/test.sh -q
fi
