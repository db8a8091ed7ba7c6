"""A teacher series shifted against its tokens: token j carries the teacher's log-prob of token j + d.

The rollout-vs-trainer offset check (``gap_rows.find_offset``) cannot see the teacher: the teacher is
another model, so its values never equal the student's. What survives is the alignment: teacher and
student score the *same* token at position j, and on the many tokens both find near-certain (or both
find unlikely) their log-probs are close, so position by position the teacher series sits nearer the
student's at shift 0 than at any other. A teacher series sliced d tokens early or late breaks that:
some shift d != 0 then fits better than d = 0, in nearly every row.

Which tokens: the policy tokens (``batch.policy_mask()``) with a finite teacher and student log-prob; a
pair (teacher[j + k], student[j]) counts only inside one contiguous segment of the policy mask (the
rollout offset scan's machinery: ``lags.blocked_segment_scan``). Coordinate frame: [B, L] completion
coordinates; the internal lag k pairs teacher[j + k] with student[j]; findings name the shift d = -k
(token j carries the teacher's log-prob of token j + d).

The rule (calibration in docs/calibration.md, "teacher shift"): over the batch, the best lag k != 0 with
|k| <= ``tol.max_lag`` (the one with the smallest pooled mean |teacher[j + k] - student[j]| among those
pairing at least ``tol.teacher_min_tokens`` tokens) must fit ``tol.teacher_lag_gain`` times better than
lag 0 when |k| = 1, ``tol.teacher_wide_lag_gain`` times when |k| >= 2 (more candidates, more chances of a
spurious fit: on healthy fixtures a lag of 2-4 fitted up to 1.47 times better, through the segment-edge
tokens it leaves out), over at least ``tol.teacher_min_tokens`` pairs at lag 0, and at least
``tol.teacher_row_share`` of the rows with ``tol.min_tokens_for_lag`` pairs at both lags (and at least
``tol.stale_min_rows`` of them) must each fit better at k than at 0. It is a warning per such row: a
shift is the likeliest cause, but the two series belong to different models, so the evidence is
statistical (an early-training student far from its teacher gives a gap that no shift reduces, and no
finding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..batch import STUDENT_LOGPROBS, TEACHER_LOGPROBS
from ..batch.blocks import series_mask, series_rows
from .context import Context
from .core import Finding, gap_text
from .lags import blocked_segment_scan


def teacher_lags(max_lag: int) -> Tensor:
    """The lags the teacher scan compares: every k in [-max_lag, max_lag] (``Tolerances.max_lag``), [2K + 1] long."""
    return torch.arange(-max_lag, max_lag + 1)


def teacher_lag_fit(ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
    """Per row and lag k in :func:`teacher_lags` (``ctx.tol.max_lag``), over the pairs (teacher[j + k], student[j])
    inside one segment of the policy mask with both values finite: the sum of |teacher[j + k] - student[j]| and
    the pair count.

    Returns ``(lags [2K + 1], total [B, 2K + 1], count [B, 2K + 1])`` (float64)."""
    batch = ctx.batch
    ok = ctx.policy & series_mask(batch, TEACHER_LOGPROBS, torch.isfinite) & series_mask(batch, STUDENT_LOGPROBS, torch.isfinite)
    lags = teacher_lags(ctx.tol.max_lag)
    B = batch.size
    segs = batch.segments(ctx.policy)
    seg_total, seg_count, _ = blocked_segment_scan(lambda rows: series_rows(batch, TEACHER_LOGPROBS, rows),
                                                   lambda rows: series_rows(batch, STUDENT_LOGPROBS, rows),
                                                   ok, ctx.policy, lags[None, :].expand(B, -1), len(segs))
    seg_rows = torch.tensor([b for b, _, _ in segs], dtype=torch.long)
    total = torch.zeros(B, lags.numel(), dtype=torch.float64).index_add_(0, seg_rows, seg_total)
    count = torch.zeros_like(total).index_add_(0, seg_rows, seg_count)
    return lags, total, count


def _slice_hint(d: int) -> str:
    """Where a shift d usually comes from, for the finding's message."""
    if d < 0:
        return f"a [-R - {-d}:-{-d}] slice of the sequence's log-probs instead of [-R:]"
    if d == 1:
        return "the logits at t scoring token t instead of the logits at t - 1"
    return f"a slice starting {d} tokens late"


def find_teacher_offset(ctx: Context) -> list[Finding]:
    """Class A on the teacher series: a warning per row that fits better at the batch's best shift d,
    0 < |d| <= ``tol.max_lag`` (module docstring: the rule); nothing when the batch has no student series or
    too few pairs."""
    batch, tol = ctx.batch, ctx.tol
    if not (batch.has(TEACHER_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        return []
    lags, total, count = teacher_lag_fit(ctx)
    col0 = int((lags == 0).nonzero()[0])
    n = count.sum(0)
    pooled = total.sum(0) / n                                              # [2K + 1], NaN where no pairs
    if not bool(n[col0] >= tol.teacher_min_tokens):
        return []
    cand = torch.nan_to_num(pooled.masked_fill((lags == 0) | (n < tol.teacher_min_tokens), float("inf")), nan=float("inf"))
    c = int(cand.argmin())
    e0, ek = float(pooled[col0]), float(cand[c])
    gain = tol.teacher_lag_gain if abs(int(lags[c])) == 1 else tol.teacher_wide_lag_gain
    if not ek * gain <= e0:
        return []
    rows_ok = (count[:, col0] >= tol.min_tokens_for_lag) & (count[:, c] >= tol.min_tokens_for_lag)
    row_e0, row_ek = total[:, col0] / count[:, col0], total[:, c] / count[:, c]
    better = rows_ok & (row_ek < row_e0)
    n_ok, n_better = int(rows_ok.sum()), int(better.sum())
    if n_ok < tol.stale_min_rows or n_better < tol.teacher_row_share * n_ok:
        return []
    d = -int(lags[c])
    first = (ctx.policy.cumsum(1) == 1) & ctx.policy
    out = []
    for b in better.nonzero().flatten().tolist():
        j = int(first[b].nonzero()[0]) if bool(first[b].any()) else 0
        out.append(Finding(
            "offset", b, j, "warning",
            f"teacher log-probs look shifted by {d:+d} token(s) against the student's: token j carries the teacher's "
            f"log-prob of token j{d:+d} (this row: mean |teacher - student| {gap_text(float(row_e0[b]))} as stored, "
            f"{gap_text(float(row_ek[b]))} with the shift undone; the batch: {gap_text(e0)} vs {gap_text(ek)} over "
            f"{int(count[:, c].sum())} token pairs, {n_better} of {n_ok} rows fit better shifted); the teacher and "
            "student score the same token at position j, so their log-probs should line up position by position; "
            f"check where the teacher's completion log-probs are sliced ({_slice_hint(d)}), or rescore the teacher "
            "(iwopd-kit check --teacher DIR) and compare",
        ))
    return out


__all__ = ["teacher_lags", "teacher_lag_fit", "find_teacher_offset"]
