"""The notebooks' exercises test the learner, read from the stored outputs (which strict nbval
re-checks on every run, so no second execution here).

For every exercise: the learner's stub is defined once and never rebound, its checker cell stores
a ✗ with the first mismatch (the stub as shipped is wrong on purpose), and the worked solution —
kept in ``iwopd_kit.teaching.solutions``, not in the notebook — stores a ✓ in a cell of its own. Every
notebook ends with three "what you can now do" sentences.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from iwopd_kit.teaching import solutions

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"

#: notebook -> (checker, the learner's function, the solution in iwopd_kit.teaching.solutions)
EXERCISES = {
    "01_rollout.ipynb": ("check_sampled_logprobs", "my_sampled_logprobs", "sampled_logprobs_solution"),
    "02_alignment_check.ipynb": ("check_offset_detector", "my_shift_detector", "best_shift_solution"),
    "03_advantage.ipynb": ("check_advantage", "my_advantage", "advantage_solution"),
    "04_prefix_weights.ipynb": ("check_prefix_weights", "my_prefix_weights", "prefix_weights_solution"),
    "05_loss_and_gradients.ipynb": ("check_iw_opd_loss", "my_iw_opd_loss", "iw_opd_loss_solution"),
    "06_debug_a_run.ipynb": ("check_realign", "my_realign", "realign_solution"),
}


def _cells(name: str) -> list[dict]:
    return json.loads((NB_DIR / name).read_text())["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def _result_text(cell: dict) -> str:
    outs = [o for o in cell.get("outputs", []) if o.get("output_type") == "execute_result"]
    assert len(outs) == 1, f"expected one displayed result, got {len(outs)}:\n{_src(cell)}"
    return "".join(outs[0]["data"]["text/plain"])


def _calling(cells: list[dict], call: str) -> tuple[int, dict]:
    hits = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code" and re.search(call, _src(c), re.M)]
    assert len(hits) == 1, f"expected one cell calling {call!r}, found {len(hits)}"
    return hits[0]


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_learners_check_fails_and_the_references_passes(name):
    check, mine, ref = EXERCISES[name]
    cells = _cells(name)
    i_mine, c_mine = _calling(cells, rf"^{check}\({mine}\)")
    i_ref, c_ref = _calling(cells, rf"^{check}\(solutions\.{ref}\)")
    got = _result_text(c_mine)
    assert got.startswith(f"✗ {check}:"), f"{name}: the stub's check should fail, stored:\n{got}"
    assert re.search(r"(first (gradient )?mismatch|shape mismatch|loss value: expected)", got), f"{name}: no first-mismatch explanation:\n{got}"
    assert "row" in got and "expected" in got and "got" in got
    ok = _result_text(c_ref)
    assert ok.startswith(f"✓ {check}:"), f"{name}: the reference's check should pass, stored:\n{ok}"
    assert i_mine < i_ref
    assert callable(getattr(solutions, ref))


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_stub_is_the_learners_and_the_solution_is_not_in_the_notebook(name):
    check, mine, ref = EXERCISES[name]
    code = [_src(c) for c in _cells(name) if c["cell_type"] == "code"]
    defs = [s for s in code if re.search(rf"^def {mine}\(", s, re.M)]
    assert len(defs) == 1, f"{name}: {mine} must be defined exactly once (a second def would rebind it)"
    rebinds = [s for s in code if re.search(rf"^\s*{mine}\s*=", s, re.M)]
    assert not rebinds, f"{name}: {mine} is rebound, so its check could not fail"
    everything = "\n".join(code)
    assert f"def {ref}" not in everything, f"{name}: the worked solution is written in the notebook"
    i_def = next(i for i, s in enumerate(code) if s in defs)
    i_check = next(i for i, s in enumerate(code) if re.search(rf"^{check}\({mine}\)", s, re.M))
    assert i_def <= i_check


@pytest.mark.parametrize("path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_each_notebook_ends_with_what_you_can_now_do(path):
    cells = json.loads(path.read_text())["cells"]
    last = cells[-1]
    assert last["cell_type"] == "markdown", f"{path.name}: the last cell is not the closing text"
    text = _src(last)
    assert "**What you can now do.**" in text, f"{path.name}: no 'What you can now do' closing"
    closing = text.split("**What you can now do.**", 1)[1]
    assert len(re.findall(r"\bYou\s+can\s", closing)) == 3, f"{path.name}: expected three 'You can ...' sentences:\n{closing}"
