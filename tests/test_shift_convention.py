"""One sign convention for shifts wherever a reader looks: "shifted by +d: token j carries the
log-prob of token j + d", i.e. ``rollout[j] ≈ student[j + d]``.

A batch whose rollout series is shifted by a known d (both signs) must say +d (or -d) the same way in
the finding's message, the report's per-row shift, the diff view's table (text and HTML) and the
notebook-02 exercise's reference; the opposite sign appears nowhere and a detector answering it
fails the exercise's checker. The lag scan's internal k = -d shows in none of them.
"""

from __future__ import annotations

import re

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.teaching import exercises as E
from iwopd_kit.teaching import solutions as S

B, L, V = 5, 14, 40
ROWS = (1, 3)


def shifted_batch(d: int, prompt_lengths: tuple[int, ...] = (3,) * B, seed: int = 0) -> K.Batch:
    """Rows ``ROWS`` have token j carrying the log-prob of token j + d (``rollout[j] = student[j + d]``)."""
    g = torch.Generator().manual_seed(seed)
    ext = torch.log_softmax(torch.randn(B, L + abs(d), V, generator=g, dtype=torch.float64) * 1.5, -1)
    y = torch.randint(0, V, (B, L + abs(d)), generator=g)
    full = ext.gather(-1, y[..., None]).squeeze(-1)                 # [B, L + |d|]
    lo = max(0, -d)                                                   # student[j] = full[j + lo]
    student = full[:, lo:lo + L]
    rollout = student.clone()
    for b in ROWS:
        rollout[b] = full[b, lo + d:lo + d + L]                      # rollout[j] = full[j + lo + d] = student[j + d]
    prompts = [list(range(1, p + 1)) for p in prompt_lengths]
    return K.Batch(prompt_ids=prompts, completion_ids=y[:, lo:lo + L].tolist(), rollout_logprobs=rollout.tolist(),
                   student_logprobs=student.tolist())


def _plus(d: int) -> str:
    return f"{d:+d}"


@pytest.mark.parametrize("d", [3, -3, 2, -2])
def test_every_view_of_a_shift_says_plus_d(d):
    batch = shifted_batch(d)
    s, r = batch.series("student_logprobs"), batch.series("rollout_logprobs")
    b0 = ROWS[0]
    j = torch.arange(L)
    inside = (j + d >= 0) & (j + d < L)
    assert torch.allclose(r[b0, j[inside]], s[b0, (j + d)[inside]])  # the batch is what its name says

    report = K.check_alignment(batch)
    offsets = report.by_kind("offset")
    assert sorted(f.row for f in offsets) == list(ROWS)
    for f in offsets:
        assert f"shifted by {_plus(d)} token(s)" in f.message, f.message
        assert f"token j carries the log-prob of token j{_plus(d)}" in f.message, f.message
        assert f"shifted by {_plus(-d)}" not in f.message and f"j{_plus(-d)}" not in f.message
        assert not re.search(r"\blag\b", f.message), f.message

    # the report's per-row shift, and its repr
    assert report.row_shifts == tuple(d if b in ROWS else 0 for b in range(B))
    assert [x.shift for x in report.row_lags] == list(report.row_shifts)
    assert f"shift={_plus(d)}" in repr(report.row_lags[b0]) and "lag" not in repr(report.row_lags[b0])

    # the diff view: its table, as text and as HTML
    view = K.views.alignment_view(batch, report)
    assert {row[0]: row[1] for row in view.shift_rows if row[1]} == {b: d for b in ROWS}
    text = view.to_text()
    table = text.split("shift d: token j carries the rollout log-prob of token j + d", 1)[1]
    for b in range(B):
        want = _plus(d) if b in ROWS else "0"
        assert re.search(rf"^\s*{b}\s+{re.escape(want)}\s", table, re.M), table
    assert not re.search(rf"^\s*{ROWS[0]}\s+{re.escape(_plus(-d))}\s", table, re.M)
    html = view.to_html()
    assert "<th>shift d</th>" in html
    assert re.search(rf"<tr><td class=\"n\">{b0}</td><td>{re.escape(_plus(d))}</td>", html), html
    assert f"<td>{_plus(-d)}</td>" not in html
    for shown in (text, html):
        assert not re.search(r"\b(best )?lag\b", shown), "the lag scan's k leaks into the view"

    # the notebook-02 exercise speaks the same convention: its reference and worked solution say +d
    mask = batch.valid()
    for detector in (E.reference_offset_detector, S.best_shift_solution):
        got = detector(r, s, mask)
        assert got.tolist() == list(report.row_shifts), detector.__name__


def test_a_detector_answering_the_opposite_sign_fails_the_exercise():
    flipped = E.check_offset_detector(lambda r, s, m: -S.best_shift_solution(r, s, m))
    assert not flipped.ok and "sign is flipped" in flipped.message and "expected shift +" in flipped.message
    m = re.search(r"expected shift ([+-]\d+), got ([+-]\d+)", flipped.message)
    assert m and int(m.group(1)) == -int(m.group(2)) != 0
    # the lag scan's internal k (= -d) is the opposite sign, so it fails too
    assert not E.check_offset_detector(lambda r, s, m: -S.best_shift_solution(r, s, m, 4)).ok
    assert E.check_offset_detector(S.best_shift_solution).ok


@pytest.mark.parametrize("d", [1, -1])
def test_a_one_token_shift_blames_a_next_token_off_by_one(d):
    (f, *_) = K.check_alignment(shifted_batch(d)).by_kind("offset")
    assert f"shifted by {_plus(d)} token(s)" in f.message
    assert "next-token off-by-one" in f.message and "BOS" in f.message, f.message
    assert "position t" in f.message
    assert "prompt-length difference" not in f.message and "batch-wide" not in f.message, f.message


def test_a_shift_equal_to_a_prompt_length_difference_keeps_the_prompt_length_explanation():
    # rows 1 and 3 have prompts 2 tokens longer than the shortest, and are shifted by +2 (TRL's review bug 1)
    batch = shifted_batch(2, prompt_lengths=(5, 7, 5, 7, 5))
    offsets = K.check_alignment(batch).by_kind("offset")
    assert sorted(f.row for f in offsets) == list(ROWS)
    for f in offsets:
        assert "shifted by +2" in f.message
        assert "prompt-length difference" in f.message and "2 token(s) longer than the batch's shortest (7 vs 5)" in f.message
        assert "batch-wide prompt length" in f.message and "off-by-one" not in f.message
    # a one-token shift that IS a prompt-length difference is explained by the prompts too
    one = K.check_alignment(shifted_batch(1, prompt_lengths=(4, 5, 4, 5, 4))).by_kind("offset")
    assert one and all("prompt-length difference" in f.message and "off-by-one" not in f.message for f in one)


def test_a_larger_shift_unrelated_to_prompt_lengths_gets_the_general_fix():
    (f, *_) = K.check_alignment(shifted_batch(3)).by_kind("offset")
    assert "off-by-one" not in f.message and "prompt-length difference" not in f.message
    assert "index the rollout log-probs by completion position per row" in f.message


def test_the_stored_notebooks_show_shifts_and_never_a_lag():
    """Notebooks 02 and 06, as stored (strict nbval re-checks these outputs): the offset findings and the
    diff view's table say +d, the 02 exercise speaks shifts, and no text or output shows a lag."""
    import json
    from pathlib import Path

    nb_dir = Path(__file__).resolve().parents[1] / "notebooks"
    for name, d in (("02_alignment_check.ipynb", 6), ("06_debug_a_run.ipynb", 2)):
        cells = json.loads((nb_dir / name).read_text())["cells"]
        sources = "\n".join("".join(c["source"]) for c in cells)
        outputs = "\n".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                            for c in cells for o in c.get("outputs", []))
        for text in (sources, outputs):
            assert not re.search(r"\b(best )?lags?\b|\bk = -d\b|d = -k", text), name
        assert f"shifted by +{d} token(s): token j carries the log-prob of token j+{d}" in outputs, name
        assert re.search(rf"^\s*1\s+\+{d}\s", outputs, re.M), f"{name}: row 1 of the diff view's table is not +{d}"
        assert "row  shift d" in outputs, name
    nb02 = (nb_dir / "02_alignment_check.ipynb").read_text()
    assert "expected shift +" in nb02 and "every shift found" in nb02
