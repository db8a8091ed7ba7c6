#!/usr/bin/env bash
# Setup, then the main job: `iwopd-kit demo` on the bundled tiny models (real vLLM rollouts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/iwopd-kit demo "$@"
