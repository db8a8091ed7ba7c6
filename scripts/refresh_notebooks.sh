#!/usr/bin/env bash
# Re-execute every notebook top to bottom in a fresh kernel, with the same environment as CI,
# and store the outputs (what strict `pytest --nbval notebooks/` compares against).
# Usage: bash scripts/refresh_notebooks.sh [notebooks/NN_name.ipynb ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
unset VLLM_LOGGING_LEVEL             # the table's value (ERROR), whatever the caller set
source scripts/env.sh
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(notebooks/*.ipynb)
for nb in "${files[@]}"; do
  start=$(date +%s)
  .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
    --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=600 \
    --ExecutePreprocessor.record_timing=False --ExecutePreprocessor.store_widget_state=False "$nb" 2>&1 | grep -v "is ignored" || true
  # widget state carries random model ids: keep the stored notebook deterministic
  .venv/bin/python -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['metadata'].pop('widgets', None); open(p,'w').write(json.dumps(d, indent=1, ensure_ascii=False) + chr(10))" "$nb"
  echo "$nb: $(( $(date +%s) - start )) s"
done
