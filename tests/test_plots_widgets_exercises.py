"""Plotly figures, widget state and exercise checkers.

Figures: built from the golden batch of docs/method.md (gamma 0.5, A = [[0.2, -0.3, 0.5], [0.4, 0, 0]]) and
checked trace by trace. Widgets: the pure ``_state`` function (no browser), plus one slider change
on a real VBox. Exercises: each checker passes on the kit's reference and fails, naming row and
position, on a deliberately wrong implementation.
"""

from __future__ import annotations

import math
import re

import plotly.graph_objects as go
import pytest
import torch

from iwopd_kit.teaching import exercises as E
from iwopd_kit.teaching.pairing import offset_case
from iwopd_kit.alignment import AlignmentReport
from iwopd_kit.batch import Batch
from iwopd_kit.objective import advantage, iw_opd_loss, opd_loss, prefix_weights
from iwopd_kit.apps.pipeline import PipelineResult
from iwopd_kit.engines.scoring import sampled_logprobs
from iwopd_kit.views import plots as P
from iwopd_kit.views import widgets as Wd

LN4 = math.log(4.0)
A = torch.tensor([[0.2, -0.3, 0.5], [0.4, 0.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True], [True, False, False]])
W = torch.tensor([[1.5, 1.4, 1.25], [1.5, 1.0, 1.0]], dtype=torch.float64)


def _trace(fig: go.Figure, name: str):
    names = [t.name for t in fig.data]
    assert name in names, f"no trace {name!r}; traces are {names}"
    return fig.data[names.index(name)]


def _golden_batch() -> Batch:
    """Golden number 1 (docs/method.md) as a Batch, with a rollout series equal to the student (no rollout cache)."""
    student = [[-LN4] * 3, [-LN4]]
    teacher = [[-LN4 + 0.2, -LN4 - 0.3, -LN4 + 0.5], [-LN4 + 0.4]]
    return Batch(prompt_ids=[[5], [6, 7]], completion_ids=[[0, 1, 2], [1]], rollout_logprobs=student,
                 student_logprobs=student, teacher_logprobs=teacher)


# ------------------------------------------------------------------------------------------ plots
def test_logprob_figure_lines_and_tick_labels():
    fig = P.logprob_figure(_golden_batch(), 0, tokens=["a", " b", "\n"])
    assert isinstance(fig, go.Figure) and not isinstance(fig, go.FigureWidget)
    assert [t.name for t in fig.data] == ["rollout", "student", "teacher"]
    assert list(_trace(fig, "teacher").y) == [round(-LN4 + d, 6) for d in (0.2, -0.3, 0.5)]
    assert list(_trace(fig, "student").x) == [0, 1, 2]
    assert list(fig.layout.xaxis.ticktext) == ["a", "·b", "⏎"]
    assert (fig.layout.width, fig.layout.height) == (P.WIDTH, P.HEIGHT)
    with pytest.raises(ValueError, match="2 strings but row 0 has 3"):
        P.logprob_figure(_golden_batch(), 0, tokens=["a", "b"])


def test_advantage_weight_figure_traces_and_linear_reference():
    fig = P.advantage_weight_figure(A, W, MASK, 0, gamma=0.5)
    assert list(_trace(fig, "A").y) == [0.2, -0.3, 0.5]
    assert list(_trace(fig, "w").y) == [1.5, 1.4, 1.25]
    ref = list(_trace(fig, "linear 1+γ(1−j/T)").y)
    assert ref[0] == 1.5 and ref == [1.5, round(1 + 0.5 * 2 / 3, 6), round(1 + 0.5 / 3, 6)]
    assert _trace(fig, "w").yaxis == "y2" and _trace(fig, "A").type == "bar"
    # row 1 has one valid token: one point each, the reference starts (and ends) at 1 + gamma
    fig1 = P.advantage_weight_figure(A, W, MASK, 1, gamma=0.5)
    assert list(_trace(fig1, "A").x) == [0] and list(_trace(fig1, "linear 1+γ(1−j/T)").y) == [1.5]


def test_cumulative_share_is_exclusive():
    fig = P.cumulative_share_figure(A, MASK, 0)
    assert list(_trace(fig, "S_<j / S").y) == [0.0, 0.2, 0.5]       # |A| = 0.2, 0.3, 0.5; S = 1
    assert list(_trace(fig, "linear j/T").y) == [0.0, round(1 / 3, 6), round(2 / 3, 6)]
    # w = 1 + gamma * (1 - share)
    share = _trace(fig, "S_<j / S").y
    assert [round(1 + 0.5 * (1 - s), 6) for s in share] == [1.5, 1.4, 1.25]


def test_weights_for_gammas():
    fig = P.weights_for_gammas_figure(A, MASK, 0)
    assert [t.name for t in fig.data] == ["γ=0", "γ=0.25", "γ=0.5", "γ=1"]
    assert list(_trace(fig, "γ=0").y) == [1.0, 1.0, 1.0]
    assert list(_trace(fig, "γ=0.5").y) == [1.5, 1.4, 1.25]
    for t, g in zip(fig.data, (0.0, 0.25, 0.5, 1.0)):
        assert t.y[0] == 1 + g and all(a >= b for a, b in zip(t.y, t.y[1:]))


def test_alignment_diff_figure():
    rollout = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("nan"), float("nan")]])
    student = torch.tensor([[-1.0, -2.5, -2.0], [-0.25, float("nan"), float("nan")]])
    fig = P.alignment_diff_figure(rollout, student, MASK, 0)
    assert [t.name for t in fig.data] == ["rollout", "student", "rollout − student"]
    assert list(_trace(fig, "rollout − student").y) == [0.0, 0.5, -1.0]
    assert list(P.alignment_diff_figure(rollout, student, MASK, 1).data[2].y) == [-0.25]


def test_empty_row_and_bad_row():
    empty = torch.zeros(2, 3, dtype=torch.bool)
    fig = P.cumulative_share_figure(A, empty, 0)
    assert fig.layout.annotations[0].text == "row 0 has no valid tokens"
    with pytest.raises(ValueError, match=r"row must be an int in \[0, 2\)"):
        P.weights_for_gammas_figure(A, MASK, 2)
    with pytest.raises(ValueError, match=r"shape \(2, 2\) but mask has shape \(2, 3\)"):
        P.cumulative_share_figure(A[:, :2], MASK, 0)


def test_figure_html_fixed_id_no_cdn_deterministic():
    fig = P.advantage_weight_figure(A, W, MASK, 0, gamma=0.5)
    h = P.figure_html(fig, "iw-fig-0")
    assert 'id="iw-fig-0"' in h
    assert "cdn" not in h.lower() and "<script src=" not in h
    assert h == P.figure_html(P.advantage_weight_figure(A, W, MASK, 0, gamma=0.5), "iw-fig-0")
    assert '"bdata"' not in h                                      # plain rounded lists, readable
    with pytest.raises(ValueError):
        P.figure_html(fig, "has space")


# ---------------------------------------------------------------------------------------- widgets
def _loss_in(summary: str) -> float:
    m = re.search(r"loss \(IW-OPD, token-mean\) = (-?[0-9.]+)", summary)
    assert m, summary
    return float(m.group(1))


def test_state_changes_with_gamma_and_loss_matches():
    g = torch.Generator().manual_seed(0)
    student = -torch.rand(3, 6, generator=g) * 3
    teacher = -torch.rand(3, 6, generator=g) * 3
    rollout = -torch.rand(3, 6, generator=g) * 3
    mask = torch.rand(3, 6, generator=g) < 0.8
    adv = advantage(teacher, rollout, mask)
    html_a, sum_a = Wd._state(adv, mask, 0.5, 1e-8, 0, "weight", None, student_logprobs=student)
    html_b, sum_b = Wd._state(adv, mask, 1.0, 1e-8, 0, "weight", None, student_logprobs=student)
    assert html_a != html_b and sum_a != sum_b
    for gamma, s in ((0.5, sum_a), (1.0, sum_b)):
        ref = iw_opd_loss(student, teacher, mask, rollout, gamma=gamma, eps=1e-8).loss
        assert _loss_in(s) == pytest.approx(float(ref), abs=2e-6)
    # window and series change the strip; no student -> the summary says what 'loss' shows
    html_w, _ = Wd._state(adv, mask, 0.5, 1e-8, 0, "loss", (2, 4))
    assert "positions 2–3" in html_w
    assert "needs student log-probs" in Wd._state(adv, mask, 0.5, 1e-8, 1, "advantage", None)[1]
    with pytest.raises(ValueError, match="series must be one of"):
        Wd._state(adv, mask, 0.5, 1e-8, 0, "entropy", None)


def test_state_golden_loss():
    student = torch.full((2, 3), -LN4, dtype=torch.float64)
    _, summary = Wd._state(A, MASK, 0.5, 1e-8, 0, "advantage", None, student_logprobs=student)
    assert "loss (IW-OPD, token-mean) = 0.382964" in summary and "row 0: 1.3833 over 3" in summary


def test_explore_weights_widget_updates_on_slider():
    ipywidgets = pytest.importorskip("ipywidgets")
    student = torch.full((2, 3), -LN4, dtype=torch.float64)
    box = Wd.explore_weights(A, MASK, tokens=[["a", "b", "c"], ["d", "e", "f"]], student_logprobs=student)
    assert isinstance(box, ipywidgets.VBox)
    html_w = [w for w in box.children if isinstance(w, ipywidgets.HTML)]
    summary, strip = html_w
    assert "0.382964" in summary.value and "a" in strip.value
    before = strip.value
    gamma = next(w for w in box.children[1].children if isinstance(w, ipywidgets.FloatSlider))
    gamma.value = 1.0
    assert strip.value != before and "γ = 1," in summary.value


def test_explore_result_state_matches_iw_opd_loss():
    batch = _golden_batch().replace(rollout_logprobs=[[-0.5, -0.25, -1.0], [-1.0]])
    mask = batch.valid()
    s, t, r = (batch.series(k, torch.float64) for k in ("student_logprobs", "teacher_logprobs", "rollout_logprobs"))
    result = PipelineResult(batch=batch, report=AlignmentReport(), iw_opd=iw_opd_loss(s, t, mask, r),
                            opd=opd_loss(s, t, mask, r), tokens=[["x", "y", "z"], ["w"]], prompts=["p", "q"],
                            correct=[True, False], gamma=0.5)
    for gamma in (0.0, 0.5, 1.5):
        strip_html, summary = Wd._result_state(result, gamma, 1e-8, 0, "loss", None)
        assert _loss_in(summary) == pytest.approx(float(iw_opd_loss(s, t, mask, r, gamma=gamma).loss), abs=2e-6)
        assert "rollout=-0.5" in strip_html          # the tooltips carry the log-probs
    box = Wd.explore_result(result)
    assert type(box).__name__ == "VBox"


# -------------------------------------------------------------------------------------- exercises
def test_checkers_pass_on_the_reference():
    for result, words in (
        (E.check_advantage(advantage), "positions compared"),
        (E.check_prefix_weights(prefix_weights), "valid tokens compared"),
        (E.check_iw_opd_loss(iw_opd_loss), "gradient entries"),
        (E.check_iw_opd_loss(lambda s, t, m, r, g: iw_opd_loss(s, t, m, r, gamma=g).loss), "loss values"),
        (E.check_sampled_logprobs(sampled_logprobs), "positions compared"),
        (E.check_offset_detector(E.reference_offset_detector), "shifted"),
    ):
        assert result.ok, result.message
        assert bool(result) and result.message.startswith("✓") and f"{E.N_CASES} cases" in result.message
        assert words in result.message
        assert "within 1e-05" in result.message or "every shift found" in result.message
        assert "✓" in result._repr_html_() and repr(result) == result.message


def _row_position(message: str) -> None:
    assert re.search(r"row \d+, position \d+", message), message
    assert "seed" in message and "expected" in message and "got" in message


def test_prefix_weights_inclusive_sum_fails_with_row_and_position():
    def inclusive(a, m, gamma, eps):
        x = torch.where(m, a.abs(), torch.zeros_like(a))
        return 1 + gamma * (1 - x.cumsum(-1) / x.sum(-1, keepdim=True).clamp_min(eps))

    res = E.check_prefix_weights(inclusive)
    assert not res.ok and not bool(res)
    _row_position(res.message)
    assert "inclusive prefix sum" in res.message and "expected 1.5" in res.message
    assert "✗" in res._repr_html_() and "&lt;" not in res.message


def test_advantage_mask_multiply_leaks_nan():
    res = E.check_advantage(lambda t, r, m: (t - r) * m)
    assert not res.ok
    _row_position(res.message)
    assert "padding" in res.message and "got nan" in res.message and "torch.where" in res.message
    flipped = E.check_advantage(lambda t, r, m: advantage(r, t, m))
    assert not flipped.ok and "teacher - rollout" in flipped.message


def test_sampled_logprobs_without_temperature_fails():
    res = E.check_sampled_logprobs(lambda z, y, T: sampled_logprobs(z, y, 1.0))
    assert not res.ok
    _row_position(res.message)
    assert "temperature=0.7" in res.message and "temperature is missing" in res.message


def test_iw_opd_loss_wrong_versions_fail():
    no_weights = E.check_iw_opd_loss(lambda s, t, m, r, g: opd_loss(s, t, m, r).loss)
    assert not no_weights.ok and "plain OPD" in no_weights.message
    assert re.search(r"gradient mismatch at row \d+, position \d+", no_weights.message)
    summed = E.check_iw_opd_loss(lambda s, t, m, r, g: iw_opd_loss(s, t, m, r, gamma=g).loss * m.sum())
    assert not summed.ok and "token mean" in summed.message
    detached = E.check_iw_opd_loss(lambda s, t, m, r, g: iw_opd_loss(s.detach(), t, m, r, gamma=g).loss)
    assert not detached.ok and "no gradient" in detached.message


def test_offset_detector_off_by_one_and_sign():
    off = E.check_offset_detector(lambda r, s, m: E.reference_offset_detector(r, s, m) + 1)
    assert not off.ok and re.search(r"row \d+ \(position \d+ of the output \[B\]\)", off.message), off.message
    assert "off by one" in off.message
    flipped = E.check_offset_detector(lambda r, s, m: -E.reference_offset_detector(r, s, m))
    assert not flipped.ok and "sign is flipped" in flipped.message and "expected shift" in flipped.message


def test_checker_reports_exceptions_and_shapes():
    def boom(a, m, gamma, eps):
        raise RuntimeError("not yet")

    res = E.check_prefix_weights(boom)
    assert not res.ok and "raised RuntimeError: not yet" in res.message and "advantages [" in res.message
    short = E.check_advantage(lambda t, r, m: (t - r)[:, :-1])
    assert not short.ok and "shape mismatch" in short.message


def test_offset_cases_have_the_shifts_they_claim():
    """The reference recovers every built shift, and the cases include shifted, healthy and empty rows."""
    shifted = empty = 0
    for i in range(E.N_CASES):
        case, rollout, student, shifts = offset_case(i)
        assert torch.equal(E.reference_offset_detector(rollout, student, case.mask), shifts)
        shifted += int((shifts != 0).sum())
        empty += int((~case.mask.any(dim=1)).sum())
    assert shifted >= 5 and empty >= 2
