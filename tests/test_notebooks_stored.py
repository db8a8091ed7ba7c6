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


def test_sanitize_masks_only_token_tooltip_values():
    """Strict nbval compares the token views' HTML; their hover values are masked (the last digit follows the
    CPU's kernels) and nothing else is: the colours, the tokens and the text around them still count."""
    import re

    import torch
    from nbval.plugin import get_sanitize_patterns

    from iwopd_kit.views import token_strip

    patterns = get_sanitize_patterns((NOTEBOOKS[0].parent / "sanitize.cfg").read_text())

    def sanitize(s: str) -> str:
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    view = token_strip([["a", "b"]], {"rollout": torch.tensor([[-0.0331, -1.5]]), "gap": torch.tensor([[0.25, 0.0]])},
                       color_by="gap", title="gap=0.123 stays")
    html = view.to_html()
    clean = sanitize(html)
    assert "rollout=-0.033" in html and "rollout=-0.033" not in clean
    assert "\nrollout=N\ngap=N\"" in clean and "\nrollout=N\ngap=N\"" in sanitize(html.replace("-0.033", "-0.034"))
    assert "gap=0.123 stays" in clean                       # a title line of the view itself is text, compared
    assert re.findall(r"background-color:#[0-9a-f]{6}", clean) == re.findall(r"background-color:#[0-9a-f]{6}", html)
    printed = "loss=0.5\nstep=2 \"done\""
    assert sanitize(printed) == printed                     # printed output is never masked
