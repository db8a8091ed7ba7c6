"""Repo-wide pytest configuration, so the plain commands work from the repo root:

    pytest tests/
    pytest --nbval notebooks/

For notebooks: run kernels in this environment (``--nbval-current-env``), sanitize with
``notebooks/sanitize.cfg`` (addresses, temporary paths, the repo root, elapsed seconds and the
token views' hover values, whose last digit follows the CPU's kernels), and do not compare plotly's JSON payload nor the PNG copies of figures
and views (``iwopd_kit/views/static.py``; their bytes depend on Chromium): the figures are checked
through the numbers printed beside them, the copies' ``text/plain`` is still compared. Kernels inherit a deterministic, CPU-friendly environment.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent

def _env_defaults() -> dict[str, str]:
    """The kit's one table of environment defaults (iwopd_kit/envdefaults.py), loaded without the package."""
    spec = importlib.util.spec_from_file_location("_iwopd_envdefaults", ROOT / "iwopd_kit" / "envdefaults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.RUN_ENV_DEFAULTS


DETERMINISTIC_ENV = {**_env_defaults(), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
for _k, _v in DETERMINISTIC_ENV.items():
    os.environ.setdefault(_k, _v)

NOT_COMPARED = ("application/vnd.plotly.v1+json", "image/png")


def pytest_configure(config):
    opt = config.option
    if getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False):
        opt.nbval_current_env = True
        if not getattr(opt, "nbval_sanitize_with", None):
            opt.nbval_sanitize_with = str(ROOT / "notebooks" / "sanitize.cfg")


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        parent = getattr(item, "parent", None)
        if parent is not None and hasattr(parent, "skip_compare") and not set(NOT_COMPARED) <= set(parent.skip_compare):
            parent.skip_compare = tuple(parent.skip_compare) + NOT_COMPARED
