"""Every notebook is stored fully executed, top to bottom in one kernel, so strict nbval has
something meaningful to compare (refresh with scripts/refresh_notebooks.sh)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_in_order(path: Path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert None not in counts, f"{path.name}: cell {counts.index(None)} was never executed"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts} are not 1..n in order"
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, f"{path.name}: most code cells have no output"
    for i, c in enumerate(code):
        for out in c.get("outputs", []):
            assert out.get("output_type") != "error", f"{path.name}: code cell {i} stored an error"
            if out.get("name") == "stderr":
                raise AssertionError(f"{path.name}: code cell {i} wrote to stderr: {''.join(out.get('text', ''))[:300]}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_widget_cells_ignore_output(path: Path):
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code" and "NBVAL_IGNORE_OUTPUT" in "".join(c["source"]):
            src = "".join(c["source"])
            assert "widget" in src.lower() or "explore" in src, f"{path.name}: a non-widget cell ignores its output:\n{src[:200]}"
