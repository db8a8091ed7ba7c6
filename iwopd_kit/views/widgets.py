"""ipywidgets explorers: move gamma / eps and watch A, w and the loss change, token by token.

For exploring in a live notebook; outputs are not meant for comparison. Follow an explorer cell
with a static view at fixed arguments (``token_strip`` or a figure from :mod:`.plots`) so a reader
without a kernel sees the same thing.

Frame: every tensor is ``[B, L]`` in completion coordinates (token j = the j-th generated token of
row b; right-padded; ``mask`` bool ``[B, L]``). All recomputation lives in the pure functions
:func:`_state` and :func:`_result_state` (no widgets, no printing), which the callbacks call and set
``ipywidgets.HTML.value`` with; so the explorers never print inside ``Output`` widgets.
"""

from __future__ import annotations

import html
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS
from ..objective import advantage, iw_opd_loss, prefix_weights
from .results import PipelineResult
from .tokens import token_strip

#: Series the explorers colour by (names of :data:`~iwopd_kit.views.names.SERIES_NAMES`).
EXPLORER_SERIES = ("advantage", "weight", "loss")
#: Slider range of gamma; the weight colour scale is fixed to [1, 1 + GAMMA_MAX] so colours never jump.
GAMMA_MAX = 2.0
_BOUNDS = {"weight": (1.0, 1.0 + GAMMA_MAX)}


# ------------------------------------------------------------------------------------ pure state
def _default_tokens(mask: Tensor) -> list[list[str]]:
    """Position labels ``"0" .. "L-1"`` for every row (each row as wide as the tensor)."""
    return [[str(j) for j in range(mask.shape[1])] for _ in range(mask.shape[0])]


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` as float64 with NaN off-mask (shown as missing in the strip)."""
    x = x.detach().to(torch.float64)
    return torch.where(mask, x, torch.full_like(x, float("nan")))


def _state(
    advantages: Tensor,
    mask: Tensor,
    gamma: float,
    eps: float,
    row: int,
    series: str,
    window: tuple[int, int] | None,
    *,
    student_logprobs: Tensor | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
    extra: Mapping[str, Tensor] | None = None,
) -> tuple[str, str]:
    """The explorer's view for one setting of the controls: ``(strip_html, summary_text)``.

    Args:
        advantages: float [B, L], A in completion coordinates (values off-mask are ignored).
        mask: bool [B, L].
        gamma, eps: prefix-weight parameters; w = 1 + gamma * (1 - S_<j / max(S, eps)).
        row: the row b shown.
        series: which series colours the tokens: ``advantage``, ``weight`` or ``loss``.
        window: ``(start, stop)``: positions start <= j < stop shown; None = all.
        student_logprobs: float [B, L], log pi_theta of the sampled tokens. When given, ``loss`` is
            the IW-OPD per-token loss and the summary's loss equals
            ``iw_opd_loss(student, teacher, mask, rollout, gamma, eps).loss`` for any teacher /
            rollout with ``teacher - rollout = advantages`` (token-mean over the batch's valid
            tokens). When None, ``loss`` shows the per-token coefficient ``-w * A`` (the gradient
            of the token's loss w.r.t. its log-prob, times N) and the summary says so.
        tokens: B rows of token strings (default: the position numbers), each as long as the
            row's completion (at most L).
        extra: more [B, L] series shown in the tooltips (e.g. rollout / student / teacher).
    """
    if series not in EXPLORER_SERIES:
        raise ValueError(f"series must be one of {EXPLORER_SERIES}, got {series!r}")
    mask = mask.bool()
    if not 0 <= row < mask.shape[0]:
        raise ValueError(f"row must be in [0, {mask.shape[0]}), got {row!r}")
    adv = torch.where(mask, advantages.detach().to(torch.float64), torch.zeros(mask.shape, dtype=torch.float64))
    weights = prefix_weights(adv, mask, gamma=gamma, eps=eps)
    if student_logprobs is not None and bool(mask.any()):
        res = iw_opd_loss(student_logprobs.detach().to(torch.float64), adv, mask,
                          rollout_logprobs=torch.zeros_like(adv), gamma=gamma, eps=eps)
        per_token, loss_text = res.per_token_loss, f"loss (IW-OPD, token-mean) = {float(res.loss):.6f}"
    elif student_logprobs is not None:
        per_token, loss_text = torch.zeros_like(adv), "loss undefined: the batch has no valid tokens"
    else:
        per_token = -weights * adv
        loss_text = "loss needs student log-probs; 'loss' shows the per-token coefficient −w·A"
    tokens = _default_tokens(mask) if tokens is None else [list(t) for t in tokens]
    values = {name: _masked(t, mask) for name, t in (extra or {}).items()}
    values.update(advantage=_masked(adv, mask), weight=_masked(weights, mask), loss=_masked(per_token, mask))
    strip = token_strip(tokens, values, color_by=series, rows=[row], window=window, bounds=_BOUNDS.get(series),
                        title=f"row {row} · coloured by {series} · γ = {gamma:g}, eps = {eps:g}")
    summary = _summary(weights, mask, row, gamma, eps, loss_text)
    return strip.to_html(), summary


def _summary(weights: Tensor, mask: Tensor, row: int, gamma: float, eps: float, loss_text: str) -> str:
    """One line: gamma, eps, the loss, mean weight over the batch's valid tokens and over the row's."""
    n, n_row = int(mask.sum()), int(mask[row].sum())
    mean_w = float(weights[mask].mean()) if n else float("nan")
    row_w = float(weights[row][mask[row]].mean()) if n_row else float("nan")
    return (f"γ = {gamma:g}, eps = {eps:g} · {loss_text} · mean weight = {mean_w:.4f} "
            f"({n} valid tokens; row {row}: {row_w:.4f} over {n_row})")


def _result_series(result: PipelineResult) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(student, teacher, rollout, mask, A) of a pipeline result, [B, L] each (rollout: student if absent)."""
    batch = result.batch
    mask = batch.valid()
    student = batch.series(STUDENT_LOGPROBS, torch.float64)
    teacher = batch.series(TEACHER_LOGPROBS, torch.float64)
    rollout = batch.series(ROLLOUT_LOGPROBS, torch.float64) if batch.has(ROLLOUT_LOGPROBS) else student
    return student, teacher, rollout, mask, advantage(teacher, rollout, mask)


def _result_state(result: PipelineResult, gamma: float, eps: float, row: int, series: str,
                  window: tuple[int, int] | None) -> tuple[str, str]:
    """:func:`_state` over a pipeline result; the loss equals ``iw_opd_loss`` of its log-probs at (gamma, eps)."""
    student, teacher, rollout, mask, adv = _result_series(result)
    extra = {"rollout": rollout, "student": student, "teacher": teacher}
    return _state(adv, mask, gamma, eps, row, series, window, student_logprobs=student,
                  tokens=result.tokens, extra=extra)


# ------------------------------------------------------------------------------------------ widgets
def _controls(n_rows: int, width: int, gamma: float, eps: float):
    import ipywidgets as W

    style = {"description_width": "5em"}
    row = W.Dropdown(options=[(f"row {b}", b) for b in range(n_rows)], value=0, description="sample", style=style)
    g = W.FloatSlider(value=gamma, min=0.0, max=GAMMA_MAX, step=0.05, description="gamma",
                      continuous_update=False, readout_format=".2f", style=style)
    e = W.FloatLogSlider(value=eps, base=10, min=-12, max=0, step=0.5, description="eps",
                         continuous_update=False, readout_format=".0e", style=style)
    series = W.ToggleButtons(options=list(EXPLORER_SERIES), value="weight", description="colour", style=style)
    window = W.IntRangeSlider(value=(0, max(width - 1, 0)), min=0, max=max(width - 1, 0), step=1,
                              description="positions", continuous_update=False, style=style)
    return row, g, e, series, window


def _explorer(n_rows: int, width: int, gamma: float, eps: float, compute) -> "object":
    """A VBox of controls, a summary line and the strip; ``compute(gamma, eps, row, series, window)``."""
    import ipywidgets as W

    row, g, e, series, window = _controls(n_rows, width, gamma, eps)
    summary, strip = W.HTML(), W.HTML()

    def refresh(_change=None) -> None:
        lo, hi = window.value
        strip_html, text = compute(float(g.value), float(e.value), int(row.value), series.value, (lo, hi + 1))
        strip.value = strip_html
        summary.value = f"<code>{html.escape(text)}</code>"

    for w in (row, g, e, series, window):
        w.observe(refresh, names="value")
    refresh()
    return W.VBox([W.HBox([row, series]), W.HBox([g, e]), window, summary, strip])


def explore_weights(advantages: Tensor, mask: Tensor, tokens: Sequence[Sequence[str]] | None = None,
                    gamma: float = 0.5, eps: float = 1e-8, student_logprobs: Tensor | None = None):
    """Explore the prefix weights of A: row picker, gamma / eps sliders, series selector, position window.

    Args:
        advantages: float [B, L]; mask: bool [B, L]; tokens: B rows of token strings (optional).
        gamma, eps: the sliders' start values.
        student_logprobs: optional float [B, L]; makes ``loss`` the real IW-OPD loss (see :func:`_state`).

    Returns the ``ipywidgets.VBox``; its strip and summary are recomputed on every change.
    """
    mask = mask.bool()

    def compute(g: float, e: float, row: int, series: str, window: tuple[int, int]) -> tuple[str, str]:
        return _state(advantages, mask, g, e, row, series, window,
                      student_logprobs=student_logprobs, tokens=tokens)

    return _explorer(mask.shape[0], mask.shape[1], gamma, eps, compute)


def explore_result(result: PipelineResult, eps: float = 1e-8):
    """The same explorer over a pipeline result: A from its teacher and rollout log-probs, the loss
    recomputed with ``iw_opd_loss`` for the slider's gamma / eps, tooltips with every log-prob.

    Returns the ``ipywidgets.VBox``.
    """
    def compute(g: float, e: float, row: int, series: str, window: tuple[int, int]) -> tuple[str, str]:
        return _result_state(result, g, e, row, series, window)

    return _explorer(result.batch.size, result.batch.width, result.gamma, eps, compute)


__all__ = ["GAMMA_MAX", "EXPLORER_SERIES", "explore_result", "explore_weights"]
