"""A teacher series shifted against its tokens: token j carries the teacher's log-prob of token j + d.

The rollout-vs-trainer offset check (``gap_rows.find_offset``) cannot see the teacher: the teacher is
another model, so its values never equal the student's. What survives is the alignment: teacher and
student score the *same* token at position j, and on the many tokens both find near-certain (or both
find unlikely) their log-probs are close, so position by position the teacher series sits nearer the
student's at shift 0 than at any other. A teacher series sliced one token early or late breaks that:
some shift d != 0 then fits better than d = 0, in nearly every row.

Which tokens: the policy tokens (``batch.policy_mask()``) with a finite teacher and student log-prob; a
pair (teacher[j + k], student[j]) counts only inside one contiguous segment of the policy mask (as the
rollout offset scan, ``lags.segment_scan``). Coordinate frame: [B, L] completion coordinates; the
internal lag k pairs teacher[j + k] with student[j]; findings name the shift d = -k (token j carries
the teacher's log-prob of token j + d).

The rule (calibration in docs/calibration.md, "teacher shift"): over the batch, the better of the lags
k = +-1 (:data:`TEACHER_LAGS`) must fit ``tol.teacher_lag_gain`` times better (pooled mean |teacher - student|) than lag 0 over
at least ``tol.teacher_min_tokens`` pairs, and at least ``tol.teacher_row_share`` of the rows with
``tol.min_tokens_for_lag`` pairs (and at least ``tol.stale_min_rows`` of them) must each fit better
at k than at 0. It is a warning per such row: a shift is the likeliest cause, but the two series belong
to different models, so the evidence is statistical (an early-training student far from its teacher
gives a gap that no shift reduces, and no finding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Context, Finding, gap_text
from .lags import segment_ids


TEACHER_LAGS = (-1, 0, 1)
"""The lags the teacher scan compares: a teacher series sliced one token early or late (the next-token
off-by-one). Wider lags are not scanned: on healthy fixtures they leave out each segment's first or last
tokens, and that alone made lag -4 fit up to 1.47 times better than lag 0 (docs/calibration.md)."""


def teacher_lag_fit(ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
    """Per row and lag k in :data:`TEACHER_LAGS`, over the pairs (teacher[j + k], student[j]) inside one segment
    of the policy mask with both values finite: the sum of |teacher[j + k] - student[j]| and the pair count.

    Returns ``(lags [3], total [B, 3], count [B, 3])`` (float64)."""
    batch = ctx.batch
    t = batch.series("teacher_logprobs", torch.float64)
    s = batch.series("student_logprobs", torch.float64)
    seg = segment_ids(ctx.policy)
    ok = ctx.policy & torch.isfinite(t) & torch.isfinite(s)
    t, s = t.masked_fill(~ok, 0.0), s.masked_fill(~ok, 0.0)
    lags = torch.tensor(TEACHER_LAGS)
    B, L = t.shape
    j = torch.arange(L)[None, :]
    total = torch.zeros(B, lags.numel(), dtype=torch.float64)
    count = torch.zeros_like(total)
    for i, k in enumerate(TEACHER_LAGS):
        idc = (j + k).clamp(0, L - 1).expand(B, -1)
        pair = ok & ok.gather(1, idc) & (j + k >= 0) & (j + k < L) & (seg.gather(1, idc) == seg)
        total[:, i] = torch.where(pair, (t.gather(1, idc) - s).abs(), 0.0).sum(1)
        count[:, i] = pair.sum(1)
    return lags, total, count


def find_teacher_offset(ctx: Context) -> list[Finding]:
    """Class A on the teacher series: a warning per row that fits better at the batch's best shift d = +-1
    (module docstring: the rule); nothing when the batch has no student series or too few pairs."""
    batch, tol = ctx.batch, ctx.tol
    if not (batch.has("teacher_logprobs") and batch.has("student_logprobs")):
        return []
    lags, total, count = teacher_lag_fit(ctx)
    col0 = int((lags == 0).nonzero()[0])
    n = count.sum(0)
    pooled = total.sum(0) / n                                              # [3], NaN where no pairs
    if not bool(n[col0] >= tol.teacher_min_tokens):
        return []
    cand = torch.nan_to_num(pooled.masked_fill((lags == 0) | (n < tol.teacher_min_tokens), float("inf")), nan=float("inf"))
    c = int(cand.argmin())
    e0, ek = float(pooled[col0]), float(cand[c])
    if not ek * tol.teacher_lag_gain <= e0:
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
            "check where the teacher's completion log-probs are sliced (a [-R - 1:-1] slice instead of [-R:], or "
            "the logits at t scoring token t), or rescore the teacher (iwopd-kit check --teacher DIR) and compare",
        ))
    return out


__all__ = ["TEACHER_LAGS", "teacher_lag_fit", "find_teacher_offset"]
