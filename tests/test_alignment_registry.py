"""The alignment check as a registry: one detector per class, reasons from declared needs, decisions
the report carries (per-row lags, explained rows) and the views read. Series are [B, L] in completion
coordinates."""

from __future__ import annotations

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import alignment as A
from iwopd_kit.alignment.core import Context, Detector, Finding

B, L, V = 6, 12, 50


def _shifted_batch(seed: int = 1, shifted=(1, 4), k: int = 2) -> K.Batch:
    """Rows in ``shifted`` read log-prob j + k for token j (an underlying sequence k tokens longer)."""
    g = torch.Generator().manual_seed(seed)
    ext = torch.log_softmax(torch.randn(B, L + k, V, generator=g, dtype=torch.float64) * 1.5, -1)
    y = torch.randint(0, V, (B, L + k), generator=g)
    full = ext.gather(-1, y[..., None]).squeeze(-1)
    student = full[:, :L]
    rollout = student.clone()
    for b in shifted:
        rollout[b] = full[b, k:]
    return K.Batch(prompt_ids=[[1]] * B, completion_ids=y[:, :L].tolist(), rollout_logprobs=rollout.tolist(),
                   student_logprobs=student.tolist())


def test_one_detector_per_class_and_ordering_runs_before_offset():
    kinds = [d.kind for d in A.REGISTRY]
    assert sorted(kinds) == sorted(A.KINDS) and len(kinds) == len(set(kinds))
    run = [d.kind for d in A.run_order()]
    assert sorted(run) == sorted(kinds)
    assert run.index("ordering") == run.index("offset") - 1
    # reported in registry order: offsets before orderings
    assert kinds.index("offset") < kinds.index("ordering")


def test_unchecked_reasons_are_the_first_unmet_need_of_each_detector():
    bare = K.Batch(prompt_ids=[[1], [1, 2]], completion_ids=[[3, 4], [5]])
    report = K.check_alignment(bare)
    ctx = Context(bare)
    expected = {d.kind: d.unmet(ctx) for d in A.REGISTRY if d.unmet(ctx) is not None}
    # the mismatch metrics are not a detector; their reason is listed beside the detectors' reasons
    assert report.unchecked_reasons.get("mismatch") == "needs rollout_logprobs and student_logprobs"
    assert {k: v for k, v in report.unchecked_reasons.items() if k != "mismatch"} == expected
    assert [k for k in report.unchecked if k != "mismatch"] == [k for k in A.KINDS if k in expected]
    assert expected["padding"] == "needs rollout_logprobs and student_logprobs"
    assert expected["teacher_coverage"] == "needs teacher_logprobs"
    assert "missing_token_ids" not in expected


def test_a_detector_whose_need_is_missing_returns_nothing():
    batch = _shifted_batch()
    assert A.detector("offset")(Context(batch))
    no_student = batch.replace(student_logprobs=None)
    assert A.detector("offset").unmet(Context(no_student)) == "needs rollout_logprobs and student_logprobs"
    assert A.detector("offset")(Context(no_student)) == []


def test_report_carries_the_offset_decision_per_row_and_the_explained_rows():
    batch = _shifted_batch(shifted=(1, 4), k=2)
    report = K.check_alignment(batch)
    assert sorted(f.row for f in report.by_kind("offset")) == [1, 4]
    assert [x.row for x in report.row_lags] == list(range(B))
    assert {x.row: x.shift for x in report.row_lags} == {0: 0, 1: 2, 2: 0, 3: 0, 4: 2, 5: 0}   # d (the scan's k = -2)
    assert report.row_shifts == (0, 2, 0, 0, 2, 0)
    assert not hasattr(report.row_lags[0], "lag")                   # one name for it: shift
    for x in report.row_lags:
        if x.shift == 0:
            assert x.gap_at_shift == x.gap_at_0
        else:
            assert x.gap_at_shift * 10 <= x.gap_at_0
    assert report.explained_rows == (1, 4) and not report.gap_explained
    # the detector alone reports the same rows as the registry run
    assert A.detector("offset")(Context(batch)) == report.by_kind("offset")


def test_diff_view_shows_a_lag_only_where_the_check_reported_an_offset():
    batch = _shifted_batch(shifted=(1, 4), k=3)
    # a scan window of 2 cannot see a 3-token shift (all prompts have one length: no prompt-length lags)
    narrow = A.Tolerances(max_lag=2)
    report = K.check_alignment(batch, narrow)
    assert report.by_kind("offset") == []
    best_k, _, _ = A.best_lags(batch, max_lag=4)
    assert [int(best_k[b]) for b in (1, 4)] == [-3, -3]          # a wider scan would find it
    view = K.views.alignment_view(batch, report)
    assert [row[1] for row in view.shift_rows] == [0] * B
    assert view.shift_rows == tuple((x.row, x.shift, x.gap_at_0, x.gap_at_shift) for x in report.row_lags)
    wide = K.check_alignment(batch)
    view = K.views.alignment_view(batch, wide)
    assert {row[0]: row[1] for row in view.shift_rows if row[1] != 0} == {1: 3, 4: 3}



def test_diff_view_links_a_finding_only_to_a_row_it_draws():
    import re

    batch = _shifted_batch(shifted=(1, 4), k=2)
    report = K.check_alignment(batch)
    assert {f.row for f in report.by_kind("offset")} == {1, 4}
    html = K.views.alignment_view(batch, report, rows=[1]).to_html()
    targets = re.findall(r'href="#([^"]+)"', html)
    ids = set(re.findall(r"id='([^']+)'", html))
    assert targets and set(targets) <= ids, f"links to rows not drawn: {set(targets) - ids}"
    assert "row 4" in html                                          # still named, as text

def test_an_added_detector_runs_in_its_place_and_its_rows_are_left_out_of_later_gap_detectors():
    batch = _shifted_batch(shifted=(1, 4), k=2)
    seen: list[frozenset[int]] = []

    def find_row_one(ctx: Context) -> list[Finding]:
        seen.append(ctx.exclude)
        return [Finding("ordering", 1, 0, "error", "row 1 explained by a test detector")]

    mine = Detector("ordering", find_row_one, needs=(A.core.PAIR,), explains_gap=True, runs_before="offset")
    registry = tuple(mine if d.kind == "ordering" else d for d in A.REGISTRY)
    ctx = Context(batch)
    findings, reasons = A.run_detectors(ctx, registry)
    assert seen == [frozenset()]
    assert [(f.kind, f.row) for f in findings] == [("offset", 4), ("ordering", 1)]
    assert ctx.explained_rows == {1, 4}
    assert "ordering" not in reasons


def test_runs_before_an_unknown_kind_is_an_error():
    bad = (Detector("numerics", lambda ctx: [], runs_before="offset"),)
    with pytest.raises(ValueError, match="'numerics' runs before 'offset', which is not in the registry"):
        A.run_order(bad)
