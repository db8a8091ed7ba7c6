#!/usr/bin/env bash
# The documentation site: setup, then `mkdocs build --strict` into site/ (git-ignored), from docs/,
# the notebooks with their stored outputs and CONTRIBUTING.md (mkdocs.yml, scripts/docs_hooks.py).
# Offline: open site/index.html from the file system; nothing is fetched from the network.
# Usage: bash scripts/docs.sh [-d OTHER_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export NO_MKDOCS_2_WARNING=1
start=$(date +%s)
.venv/bin/python -m mkdocs build --strict "$@"
echo "docs site built in $(( $(date +%s) - start )) s: site/index.html"
