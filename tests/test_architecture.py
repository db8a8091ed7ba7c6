"""The import rules of docs/ARCHITECTURE.md, checked on the source (an AST scan of iwopd_kit/, no imports run).

Every ``import`` counts, at module level or inside a function (a lazy import is still a dependency).
The top level of the package is a handful of rooms by role; each room stands on a floor and imports
only from itself and from rooms on lower floors (two rooms on one floor do not import each other);
no cycles between modules, inside a room or across; the views import data types and the objective
only; nothing in the kit imports the checkout-only packages (``research``, ``tests``); no module over
400 lines; no module imports another's ``_private`` names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "iwopd_kit"
MAX_LINES = 400

# The rooms, from the ground up: room -> (floor, what it is for). docs/ARCHITECTURE.md's room table is
# held equal to this one (tests/test_docs.py).
ROOMS: dict[str, tuple[int, str]] = {
    "batch": (0, "the data model: `Batch`, its fields and ragged storage, the sampling settings it records"),
    "objective": (0, "the IW-OPD objective: advantage, prefix weights, losses, metrics (tensor math)"),
    "toy": (0, "the toy task and the paths of the bundled assets (`iwopd_kit/data/`)"),
    "formats": (1, "readers of other projects' dumps (TRL, verl, vLLM, prime-rl, NeMo-RL, slime) and the reader table"),
    "alignment": (1, "the check: detectors, their registry and tolerances, the mismatch metrics"),
    "engines": (2, "rollouts with log-probs (vLLM, transformers, a server), the one scoring path, rescoring, chat prompts"),
    "views": (2, "token strips, the check page, plots, widgets, static copies; they draw, never decide"),
    "run": (3, "a whole run: step discovery, the Parquet store, DuckDB views, gates, the run report"),
    "integrations": (3, "the live TRL callback and TRL's vLLM path"),
    "teaching": (3, "the notebooks' exercise checkers and worked solutions"),
    "apps": (4, "what a user runs: the demo pipeline, the training loop, `check_dump`, replay"),
    "cli": (5, "`iwopd-kit`: parses, calls the apps, prints"),
}
TOP = 6                                   # iwopd_kit/__init__.py: re-exports only
CHECKOUT_ONLY = ("research", "tests")     # never imported by the kit (not in the wheel)

# What a view may import from the kit: other views, the data types, and the module that owns a shared quantity.
VIEW_IMPORTS = ("iwopd_kit.views", "iwopd_kit.batch", "iwopd_kit.objective", "iwopd_kit.alignment.core",
                "iwopd_kit.alignment.kinds", "iwopd_kit.alignment.mismatch")   # mismatch: the owner of Δ

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


def _room(module: str) -> str | None:
    """The room a module is in (``iwopd_kit.<room>[...]``); None for the package's ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _floor(module: str) -> int | None:
    room = _room(module)
    return TOP if room is None else ROOMS[room][0] if room in ROOMS else None


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
    assert "iwopd_kit.engines.rollout" in GRAPH["iwopd_kit.apps.pipeline"]            # a lazy import counts
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = [c for c in _cycles(GRAPH) if set(c) not in ALLOWED_CYCLES]
    assert cycles == [], f"import cycles between modules: {cycles}"


def test_the_top_level_is_the_rooms():
    top = sorted(p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
                 if (p.suffix == ".py" or (p / "__init__.py").exists()))
    assert top == sorted([*ROOMS, "__init__"]), f"the top level of iwopd_kit/ is the rooms of ROOMS and __init__.py: {top}"


def test_every_room_imports_only_itself_and_lower_floors():
    missing = sorted({m for m in MODULES if _floor(m) is None})
    assert missing == [], f"modules outside every room (add the room to ROOMS and docs/ARCHITECTURE.md): {missing}"
    upward = [f"{m} ({_room(m)}, floor {_floor(m)}) imports {t} ({_room(t)}, floor {_floor(t)})"
              for m, targets in GRAPH.items() for t in sorted(targets)
              if _room(t) != _room(m) and _floor(t) >= _floor(m) and _room(m) is not None]
    assert upward == [], "imports of a room on the same or a higher floor:\n" + "\n".join(upward)


def test_the_kit_imports_no_checkout_only_package():
    bad = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{module} imports {n}" for n in names if n.split(".")[0] in CHECKOUT_ONLY]
    assert bad == [], bad


def test_ground_floor_imports_nothing_outside_its_room():
    ground = {m: sorted(t for t in GRAPH[m] if _room(t) != _room(m)) for m in MODULES if _floor(m) == 0}
    ground = {m: t for m, t in ground.items() if t}
    assert ground == {}, f"ground-floor modules must not import another room: {ground}"


def test_views_import_data_types_only():
    bad = [f"{m} imports {t}" for m, targets in GRAPH.items() if m.startswith("iwopd_kit.views")
           for t in sorted(targets) if not any(t == ok or t.startswith(ok + ".") for ok in VIEW_IMPORTS)]
    assert bad == [], "views may import only " + ", ".join(VIEW_IMPORTS) + ":\n" + "\n".join(bad)


TYPE_MODULES = {"iwopd_kit.alignment.core", "iwopd_kit.alignment.context", "iwopd_kit.alignment.kinds",
                "iwopd_kit.alignment.tolerances"}


def test_the_detector_types_do_not_import_the_detectors():
    for module in TYPE_MODULES:
        assert all(_room(t) in {"batch", "objective"} or t in TYPE_MODULES for t in GRAPH[module]), module


# Where a module may not import another module's private (``_name``) names: a name shared between
# modules is public there (and in its ``__all__``). The whole kit.
NO_PRIVATE_IMPORTS = ("iwopd_kit",)


def _private_imports(module: str, path: Path) -> list[str]:
    """``from <a module of the kit> import _name`` statements of one module (dunder names are not private)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and _targets(module, path, node):
            out += [f"{module}:{node.lineno} imports {a.name} from {'.' * node.level}{node.module or ''}"
                    for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_the_private_import_scan_sees_one(tmp_path):
    path = tmp_path / "tables.py"
    path.write_text("from .batches import _streams, rl_advantages\nfrom . import __version__\n")
    assert _private_imports("iwopd_kit.run.tables", path) == ["iwopd_kit.run.tables:1 imports _streams from .batches"]


def test_no_module_imports_another_modules_private_names():
    scoped = [m for m in MODULES if any(m == s or m.startswith(s + ".") for s in NO_PRIVATE_IMPORTS)]
    assert scoped, f"no module under {NO_PRIVATE_IMPORTS}"
    bad = [hit for m in scoped for hit in _private_imports(m, MODULES[m])]
    assert bad == [], "imports of another module's private names (make them public, in its __all__):\n" + "\n".join(bad)


def test_names_shared_in_teaching_are_in_their_modules_all():
    """What a teaching module imports from a sibling is in the sibling's ``__all__`` (its public interface)."""
    missing = []
    for module, path in MODULES.items():
        if not module.startswith("iwopd_kit.teaching."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                source = f"iwopd_kit.teaching.{node.module}"
                exported = _all_of(MODULES[source])
                missing += [f"{module} imports {a.name} from {source}, not in its __all__"
                            for a in node.names if a.name not in exported]
    assert missing == [], "\n".join(missing)


def _all_of(path: Path) -> set[str]:
    """The names of a module's ``__all__`` (a literal list or tuple of strings); empty when it has none."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _defined(path: Path) -> set[str]:
    """The names a module defines at its top level (def, class, assignment; also inside a top-level if/try)."""
    out: set[str] = set()
    for top in ast.parse(path.read_text()).body:
        for n in ([top] if not isinstance(top, (ast.If, ast.Try)) else list(ast.walk(top))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(n.name)
            targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
            out |= {x.id for t in targets for x in ast.walk(t) if isinstance(x, ast.Name)}
    return out


def _imported_past_owner(module: str, path: Path) -> list[str]:
    """``from <a kit module> import name`` where that module does not define ``name`` (it only imports it): the name
    should come from its owner. A package's ``__init__`` is a public face and may be imported from."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias, target in zip(node.names, _targets(module, path, node)):
            source = MODULES.get(target)
            if (source is None or source.name == "__init__.py" or target.rsplit(".", 1)[-1] == alias.name
                    or alias.name in _defined(source)):
                continue                                   # outside the kit, a package's face, a submodule, or owned
            out.append(f"{module}:{node.lineno} imports {alias.name} from {target}, which does not define it")
    return out


def test_the_owner_scan_sees_one(tmp_path):
    path = tmp_path / "probe.py"                  # read as a module of the check: core defines Finding, imports Context
    path.write_text("from .core import Context, Finding\nfrom . import lags\nfrom .context import Context\n")
    assert _imported_past_owner("iwopd_kit.alignment.probe", path) == [
        "iwopd_kit.alignment.probe:1 imports Context from iwopd_kit.alignment.core, which does not define it"]


def test_every_name_is_imported_from_its_owner():
    bad = [hit for m, path in MODULES.items() for hit in _imported_past_owner(m, path)]
    assert bad == [], "\n".join(bad)


# The series names have one home (iwopd_kit/batch/ragged.py: ROLLOUT_LOGPROBS, ...); elsewhere a literal is allowed
# only where it names a Python parameter, not a series of a Batch:
SERIES_LITERALS_ALLOWED = {
    "iwopd_kit/batch/ragged.py": "the constants' home",
    "iwopd_kit/objective/core.py": "the losses name their own tensor parameters in their errors (floor 0, no Batch)",
    "iwopd_kit/integrations/trl.py": "TRL's loss signature (_LOSS_PARAMS), compared with the installed TRL",
}
SERIES_NAMES = ("rollout_logprobs", "student_logprobs", "teacher_logprobs")


def _series_literals(path: Path, name: str) -> list[str]:
    """``file:line`` of each string constant equal to a series name, outside docstrings and outside a function that
    has a parameter of that name (an error naming the parameter)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    params: dict[int, set[str]] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = {a.arg for a in fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs}
            for n in ast.walk(fn):
                params.setdefault(id(n), set()).update(names)
    return [f"{name}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and n.value in SERIES_NAMES and id(n) not in docs
            and n.value not in params.get(id(n), set())]


def test_the_series_literal_scan_sees_one(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text('"""doc: rollout_logprobs"""\ndef f(rollout_logprobs):\n    return "rollout_logprobs"\n'
                    'def g(batch):\n    return batch.series("teacher_logprobs")\n')
    assert _series_literals(path, "probe.py") == ["probe.py:5 'teacher_logprobs'"]


def test_series_names_are_spelled_only_in_their_home():
    rel = {m: path.relative_to(PACKAGE.parent).as_posix() for m, path in MODULES.items()}
    bad = [hit for m, path in MODULES.items() if rel[m] not in SERIES_LITERALS_ALLOWED for hit in _series_literals(path, rel[m])]
    assert bad == [], "series names spelled as literals (use ROLLOUT_LOGPROBS, ... from iwopd_kit.batch):\n" + "\n".join(bad)


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
