"""The import rules of docs/ARCHITECTURE.md, checked on the source (an AST scan of iwopd_kit/, no imports run).

Every ``import`` counts, at module level or inside a function (a lazy import is still a dependency):
no cycles between modules, every module on a floor and importing only from its floor or below, the
views importing data types and the objective only (never the pipeline or the detectors), and no
module over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "iwopd_kit"
MAX_LINES = 400

# Floors, from the ground up (docs/ARCHITECTURE.md); a key names a module or a package and everything in it.
FLOORS: dict[str, int] = {
    "iwopd_kit.batch": 0, "iwopd_kit.objective": 0, "iwopd_kit.toy": 0, "iwopd_kit.envdefaults": 0,
    "iwopd_kit.ragged": 0, "iwopd_kit.fields": 0, "iwopd_kit.chromium": 0, "iwopd_kit.sampling": 0, "iwopd_kit.random_models": 0,
    "iwopd_kit.alignment.core": 1, "iwopd_kit.alignment.kinds": 1, "iwopd_kit.alignment.tolerances": 1,
    "iwopd_kit.alignment.context": 1, "iwopd_kit.results": 1, "iwopd_kit.formats": 1, "iwopd_kit.scoring": 1,
    "iwopd_kit.study": 1, "iwopd_kit.study_stats": 1, "iwopd_kit.mismatch": 1,
    "iwopd_kit.alignment": 2, "iwopd_kit.views": 2, "iwopd_kit.rescore": 2, "iwopd_kit.check_result": 2,
    "iwopd_kit.rollout": 3, "iwopd_kit.exercises": 3, "iwopd_kit.exercise_base": 3,
    "iwopd_kit.exercises_pairing": 3, "iwopd_kit.run": 3, "iwopd_kit.solutions": 4, "iwopd_kit.integrations": 3,
    "iwopd_kit.server": 4, "iwopd_kit.pipeline": 4, "iwopd_kit.service": 4, "iwopd_kit.train": 4, "iwopd_kit.chat": 4,
    "iwopd_kit.replay": 4, "iwopd_kit.replay_io": 4, "iwopd_kit.replay_rules": 2,
    "iwopd_kit.browser": 5, "iwopd_kit.cli": 5,
    "iwopd_kit": 6,                       # the package's __init__: re-exports only
}

# What a view may import from the kit: other views, the data types, and the module that owns a shared quantity.
VIEW_IMPORTS = ("iwopd_kit.views", "iwopd_kit.batch", "iwopd_kit.objective", "iwopd_kit.alignment.core",
                "iwopd_kit.results", "iwopd_kit.study", "iwopd_kit.mismatch",   # mismatch: the owner of Δ
                "iwopd_kit.chromium")   # the PNG copies need a browser; the leaf that finds it, no kit logic

# Known exceptions, each to be removed by the change that fixes it:
ALLOWED_CYCLES: list[set[str]] = []
ALLOWED_LONG: set[str] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The kit's modules (or packages) an import statement reaches; [] for imports from outside the kit."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "iwopd_kit"]
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        full = ".".join(base + ([node.module] if node.module else []))
    elif (node.module or "").split(".")[0] == "iwopd_kit":
        full = node.module
    else:
        return []
    return [f"{full}.{a.name}" if f"{full}.{a.name}" in MODULES else full for a in node.names]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {t for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                         for t in _targets(module, path, n) if t != module}
    return graph


GRAPH = _graph()


def _floor(module: str) -> int | None:
    """The floor of the longest key that is the module or a package above it."""
    keys = [k for k in FLOORS if module == k or module.startswith(k + ".")]
    return FLOORS[max(keys, key=len)] if keys else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_the_kit():
    assert "iwopd_kit.alignment.core" in MODULES and "iwopd_kit.views.alignment" in MODULES
    assert "iwopd_kit.alignment.core" in GRAPH["iwopd_kit.views.alignment"]
    assert "iwopd_kit.rollout" in GRAPH["iwopd_kit.pipeline"]            # a lazy import counts
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = [c for c in _cycles(GRAPH) if set(c) not in ALLOWED_CYCLES]
    assert cycles == [], f"import cycles between modules: {cycles}"


def test_every_module_has_a_floor_and_imports_only_from_its_floor_or_below():
    missing = [m for m in MODULES if _floor(m) is None]
    assert missing == [], f"modules without a floor (add them to FLOORS and docs/ARCHITECTURE.md): {missing}"
    upward = [f"{m} (floor {_floor(m)}) imports {t} (floor {_floor(t)})"
              for m, targets in GRAPH.items() for t in sorted(targets) if _floor(t) > _floor(m)]
    assert upward == [], "imports from a higher floor:\n" + "\n".join(upward)


def test_ground_floor_imports_nothing_from_the_kit():
    # the data model may use its storage helpers (ragged.py, itself importing nothing; fields.py, its field
    # descriptors over ragged.py) and its settings type (sampling.py, which imports only ragged.py's error type);
    # no other ground module imports the kit
    allowed = {("iwopd_kit.batch", "iwopd_kit.ragged"), ("iwopd_kit.batch", "iwopd_kit.sampling"),
               ("iwopd_kit.batch", "iwopd_kit.fields"), ("iwopd_kit.fields", "iwopd_kit.ragged"),
               ("iwopd_kit.sampling", "iwopd_kit.ragged")}
    ground = {m: sorted(t for t in GRAPH[m] if (m, t) not in allowed) for m in MODULES if _floor(m) == 0}
    ground = {m: t for m, t in ground.items() if t}
    assert ground == {}, f"ground-floor modules must not import the kit: {ground}"


def test_views_import_data_types_only():
    bad = [f"{m} imports {t}" for m, targets in GRAPH.items() if m.startswith("iwopd_kit.views")
           for t in sorted(targets) if not any(t == ok or t.startswith(ok + ".") for ok in VIEW_IMPORTS)]
    assert bad == [], "views may import only " + ", ".join(VIEW_IMPORTS) + ":\n" + "\n".join(bad)


TYPE_MODULES = {"iwopd_kit.alignment.core", "iwopd_kit.alignment.context", "iwopd_kit.alignment.kinds",
                "iwopd_kit.alignment.tolerances"}


def test_the_detector_types_do_not_import_the_detectors():
    for module in TYPE_MODULES:
        assert GRAPH[module] <= {"iwopd_kit.batch", "iwopd_kit.objective"} | TYPE_MODULES, module


@pytest.mark.parametrize("module", sorted(MODULES), ids=lambda m: m)
def test_module_is_at_most_400_lines(module):
    path = MODULES[module]
    rel = path.relative_to(PACKAGE.parent).as_posix()
    n = len(path.read_text().splitlines())
    if rel in ALLOWED_LONG:
        return
    assert n <= MAX_LINES, f"{rel} has {n} lines (at most {MAX_LINES}): split it by topic"


def test_allowed_exceptions_are_still_needed():
    long_now = {p for p in ALLOWED_LONG if len((PACKAGE.parent / p).read_text().splitlines()) > MAX_LINES}
    assert long_now == ALLOWED_LONG, f"no longer over {MAX_LINES} lines, remove from ALLOWED_LONG: {ALLOWED_LONG - long_now}"
    cycles = [set(c) for c in _cycles(GRAPH)]
    stale = [c for c in ALLOWED_CYCLES if c not in cycles]
    assert stale == [], f"no longer a cycle, remove from ALLOWED_CYCLES: {stale}"
