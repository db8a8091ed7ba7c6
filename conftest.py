"""Repo-wide pytest configuration, so the plain commands work from the repo root:

    pytest tests/
    pytest --nbval notebooks/

For notebooks: run kernels in this environment (``--nbval-current-env``), sanitize with
``notebooks/sanitize.cfg`` (addresses, temporary paths, the repo root, elapsed seconds and the
token views' hover values, whose last digit follows the CPU's kernels), and do not compare plotly's JSON payload nor the PNG copies of figures
and views (``iwopd_kit/views/static.py``; their bytes depend on Chromium): the figures are checked
through the numbers printed beside them, the copies' ``text/plain`` is still compared. Kernels inherit a deterministic, CPU-friendly environment.

The fast loop: ``pytest -m "not slow"``. A test is marked ``slow`` (registered in pyproject.toml) when
it starts an engine, a server, a browser, a training run, a wheel build or a notebook kernel, or
takes more than about 2 s. The marks are given here, in one place, so a test file needs no edit:

- every test of a module in ``SLOW_MODULES`` (the whole module drives engines, browsers, ...);
- every test that requests a fixture in ``SLOW_FIXTURES`` (a vLLM engine, the chat pair's models, a real tokenizer);
- every notebook cell collected by nbval;
- and, in a module that mixes both, the tests decorated ``@pytest.mark.slow`` in the file itself.

After a run, the summary lists any test not marked slow that took more than ``FAST_LIMIT_S``
(setup + call), so that a slow test added later is noticed (the first test to load a model or a
tokenizer carries that one-time cost: look before marking); see CONTRIBUTING.md.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent

def _env_defaults() -> dict[str, str]:
    """The kit's one table of environment defaults (iwopd_kit/engines/envdefaults.py), loaded without the package."""
    spec = importlib.util.spec_from_file_location("_iwopd_envdefaults", ROOT / "iwopd_kit" / "engines" / "envdefaults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.RUN_ENV_DEFAULTS


DETERMINISTIC_ENV = {**_env_defaults(), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
for _k, _v in DETERMINISTIC_ENV.items():
    os.environ.setdefault(_k, _v)

NOT_COMPARED = ("application/vnd.plotly.v1+json", "image/png")

SLOW_MODULES = {
    "test_browser.py", "test_chat_fixtures.py", "test_docs_site.py", "test_large_vocab.py", "test_static_render.py",
    "test_static_views.py", "test_train.py", "test_trl_callback.py", "test_trl_chat.py",
    "test_trl_vllm.py", "test_vllm.py", "test_vllm_server.py", "test_wheel.py", "test_when.py",
}
SLOW_FIXTURES = {"vllm_raw", "vllm_processed", "chat_engine", "chat_student", "chat_teacher",   # engines, 151k-vocab models
                 "qwen3", "gpt2", "llama3"}                       # real BPE tokenizers (50k-151k tokens), ~1-2 s each
FAST_LIMIT_S = 2.0
_durations: dict[str, float] = {}


def pytest_configure(config):
    opt = config.option
    if getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False):
        opt.nbval_current_env = True
        if not getattr(opt, "nbval_sanitize_with", None):
            opt.nbval_sanitize_with = str(ROOT / "notebooks" / "sanitize.cfg")


def pytest_ignore_collect(collection_path, config):
    """Under ``-m "not slow"`` a module of ``SLOW_MODULES`` would be deselected whole: skip importing it
    (vLLM, TRL, Playwright imports cost seconds of collection)."""
    if collection_path.name in SLOW_MODULES and config.getoption("markexpr", "").split() == ["not", "slow"]:
        return True
    return None


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        path = Path(str(item.path))
        if (path.name in SLOW_MODULES or path.suffix == ".ipynb"
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker("slow")
        parent = getattr(item, "parent", None)
        if parent is not None and hasattr(parent, "skip_compare") and not set(NOT_COMPARED) <= set(parent.skip_compare):
            parent.skip_compare = tuple(parent.skip_compare) + NOT_COMPARED


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call") and "slow" not in report.keywords:
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    over = sorted(((d, n) for n, d in _durations.items() if d > FAST_LIMIT_S), reverse=True)
    if over:
        terminalreporter.section(f"tests not marked slow that took over {FAST_LIMIT_S:g} s (mark them: conftest.py)")
        for d, n in over:
            terminalreporter.write_line(f"{d:6.1f} s  {n}")
