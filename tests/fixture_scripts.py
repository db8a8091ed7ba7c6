"""Helpers for the tests of framework fixtures: import a fixture script from scripts/, compare regenerated JSON."""

from __future__ import annotations

import importlib.util
import math
import sys
from types import ModuleType

from iwopd_kit import toy
from research import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"


def script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ goes on sys.path: the fixture scripts import each other)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def same(a, b) -> bool:
    """Equal JSON values, floats to 1e-6 relative (a float32 ULP may differ between CPUs' vector kernels)."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return False
        return a == b or (a != a and b != b) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b
