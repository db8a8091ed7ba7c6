"""Lags: how well rollout log-probs match trainer log-probs when shifted by k tokens, per segment.

``lag_scan`` scores every lag in a window per row, ``row_lag_error`` a per-row lag, ``lag_pairs`` how
many token pairs a lag compares, ``prompt_length_lags`` the shifts a batch-wide prompt-length slicing
bug produces, ``segment_ids`` numbers the contiguous runs of a mask, ``segment_scan`` scores lags per
segment (``blocked_segment_scan``: over a whole batch, a block of rows at a time; the teacher-shift rule
of ``teacher_shift.py`` scans with it too), ``fit_shifts`` is the offset decision per segment (the rule
class A reports and the views show), ``best_lags`` / ``shifted_rows`` its per-row summary.

Which tokens: the open policy tokens of :class:`~iwopd_kit.alignment.core.Context` (``batch.policy_mask()``
with a finite rollout and trainer value, not yet explained); a pair (rollout[j + k], trainer[j]) counts
only when both tokens lie in the same contiguous segment of the policy mask (``batch.segments()``: one
per assistant turn of a multi-turn row), so pairs never cross a masked hole.

Coordinate frame: ``[B, L]`` completion coordinates; lag k pairs rollout[j + k] with trainer[j].
The lag k is this module's internal convention only. What a reader sees (findings, the report's
``RowLag.shift`` and ``row_shifts``, the diff view, the notebooks) is the shift d = -k: a segment shifted
by d has token j carrying the rollout log-prob of token j + d.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS, Batch
from ..batch.blocks import nanmean_rows, row_blocks, series_rows
from .context import Context
from .core import RowLag, one_thread
from .tolerances import Tolerances


@one_thread()
def lag_scan(rollout: Tensor, student: Tensor, valid: Tensor, max_lag: int = 4,
             segments: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean |rollout[j + k] - student[j]| per row for k in [-K, K].

    ``rollout``, ``student`` [B, L] and ``valid`` [B, L] bool, in completion coordinates; ``segments``
    [B, L] long (``segment_ids``): when given, a pair counts only inside one segment. One Python step per
    lag (2K+1 of them), none per row. Returns ``(lags [2K+1], err [B, 2K+1])``; err is NaN where a row
    has no overlapping values.
    """
    lags = torch.arange(-max_lag, max_lag + 1)
    dtype = torch.promote_types(rollout.dtype, student.dtype)
    nan = torch.tensor(float("nan"), dtype=dtype)
    r = torch.where(valid, rollout.to(dtype), nan)
    s = torch.where(valid, student.to(dtype), nan)
    B, L = r.shape
    err = torch.full((B, len(lags)), float("nan"), dtype=dtype)
    for i, k in enumerate(lags.tolist()):
        if abs(k) >= L:
            continue
        # pairs (rollout[j + k], student[j]) for every j with both indices inside [0, L)
        d = (r[:, k:] - s[:, : L - k]) if k >= 0 else (r[:, : L + k] - s[:, -k:])
        if segments is not None:
            same = (segments[:, k:] == segments[:, : L - k]) if k >= 0 else (segments[:, : L + k] == segments[:, -k:])
            d = d.masked_fill(~same, float("nan"))
        err[:, i] = nanmean_rows(d.abs())
    return lags, err


def row_lag_error(rollout: Tensor, student: Tensor, valid: Tensor, lags: Tensor) -> Tensor:
    """Mean |rollout[j + k_b] - student[j]| per row for a per-row lag ``lags`` [B] (vectorised gather).

    Used for the lags suggested by prompt-length differences, which can exceed the scan window.
    Returns err [B] (NaN where a row has no overlapping values).
    """
    B, L = rollout.shape
    j = torch.arange(L)[None, :]
    idx = j + lags[:, None]
    inside = (idx >= 0) & (idx < L)
    r = torch.where(valid, rollout, torch.full_like(rollout, float("nan")))
    s = torch.where(valid, student, torch.full_like(student, float("nan")))
    shifted = r.gather(1, idx.clamp(0, L - 1)).masked_fill(~inside, float("nan"))
    return nanmean_rows((shifted - s).abs())


def lag_pairs(valid: Tensor, lags: Tensor) -> Tensor:
    """How many (rollout[j + k], student[j]) pairs lag k compares in each row: ``valid`` [B, L] bool (both
    values present), ``lags`` [B, n] per-row lags. Returns [B, n] long."""
    B, L = valid.shape
    j = torch.arange(L)[None, None, :]
    idx = j + lags[:, :, None]                                           # [B, n, L]
    inside = (idx >= 0) & (idx < L)
    shifted = valid[:, None, :].expand(-1, lags.shape[1], -1).gather(2, idx.clamp(0, L - 1))
    return (shifted & inside & valid[:, None, :]).sum(-1)


def prompt_length_lags(prompt_lengths: list[int]) -> Tensor:
    """Candidate lags [B, 4] per row from prompt lengths: +-(p_b - p_min) and +-(p_max - p_b).

    A layout bug that slices every row at the batch's shortest (or longest) prompt shifts row b by
    exactly that many tokens (TRL's review bug 1), however long the prompts are.
    """
    p = torch.tensor(prompt_lengths)
    d_min, d_max = p - p.min(), p.max() - p
    return torch.stack([-d_min, d_min, -d_max, d_max], dim=1)


def segment_ids(mask: Tensor) -> Tensor:
    """LongTensor [B, L]: the number of the contiguous True run of ``mask`` each token is in (row-major, from 0),
    -1 where ``mask`` is False."""
    m = mask.to(torch.bool)
    prev = torch.zeros_like(m)
    prev[:, 1:] = m[:, :-1]
    ids = torch.cumsum((m & ~prev).reshape(-1).to(torch.long), 0).reshape(m.shape) - 1
    return ids.masked_fill_(~m, -1)


def segment_scan(r: Tensor, s: Tensor, ok: Tensor, seg: Tensor, lags: Tensor, n_seg: int) -> tuple[Tensor, Tensor]:
    """Sum of |r[j + k] - s[j]| and the number of pairs, per segment and lag column.

    ``r``, ``s`` [b, L] float64, ``ok`` [b, L] bool (the tokens that may pair), ``seg`` [b, L] segment
    numbers 0..n_seg-1 (-1 none), ``lags`` [b, n] per-row lags. A pair needs both tokens ``ok`` and in one
    segment. Returns ``(sum [n_seg, n], count [n_seg, n])``.
    """
    b, L = r.shape
    n = lags.shape[1]
    j = torch.arange(L)[None, :]
    total = torch.zeros(n_seg, n, dtype=torch.float64)
    count = torch.zeros(n_seg, n, dtype=torch.float64)
    for i in range(n):
        idx = j + lags[:, i:i + 1]
        inside = (idx >= 0) & (idx < L)
        idc = idx.clamp(0, L - 1)
        pair = ok & ok.gather(1, idc) & inside & (seg.gather(1, idc) == seg) & (seg >= 0)
        where = seg[pair]
        total[:, i].index_add_(0, where, (r.gather(1, idc) - s)[pair].abs())
        count[:, i].index_add_(0, where, torch.ones_like(where, dtype=torch.float64))
    return total, count


def blocked_segment_scan(r_rows: Callable[[slice], Tensor], s_rows: Callable[[slice], Tensor], ok: Tensor,
                         mask: Tensor, lags: Tensor, n_seg: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`segment_scan` over the whole batch, a block of rows (``row_blocks``) at a time, so no [B, L] float64
    copy of either series is made.

    ``r_rows(rows)``, ``s_rows(rows)`` give the [rows, L] float64 series of a block of rows (the shifted series
    r[j + k] is compared with s[j]); ``ok`` [B, L] bool (the tokens that may pair); ``mask`` [B, L] bool, whose
    ``n_seg`` contiguous runs (:func:`segment_ids`, never across rows; ``len(batch.segments(mask))``) are the
    segments; ``lags`` [B, n] per-row lags. Returns ``(sum [n_seg, n], count [n_seg, n], open [n_seg])`` in
    row-major segment order (float64, float64, long: ``open`` counts each segment's ``ok`` tokens). The outputs
    are allocated before the scan: small tensors kept across the blocks would pin the heap between the blocks'
    temporaries (measured: 6 bytes per token more peak and held memory, ``benchmarks/probe_check.py``)."""
    total = torch.zeros(n_seg, lags.shape[1], dtype=torch.float64)
    count = torch.zeros_like(total)
    seg_open = torch.zeros(n_seg, dtype=torch.long)
    first = 0                  # segments are numbered row-major, so a block's are a contiguous range
    for rows in row_blocks(*ok.shape):
        seg = segment_ids(mask[rows])
        n_here = int(seg.max()) + 1 if seg.numel() else 0
        if n_here <= 0:
            continue
        tb, cb = segment_scan(r_rows(rows), s_rows(rows), ok[rows], seg, lags[rows], n_here)
        total[first:first + n_here] += tb
        count[first:first + n_here] += cb
        ids = seg[ok[rows] & (seg >= 0)] + first
        seg_open.index_add_(0, ids, torch.ones_like(ids))
        first += n_here
    if first != n_seg:
        raise ValueError(f"blocked_segment_scan: mask has {first} segments, n_seg={n_seg}")
    return total, count, seg_open


def _row_lags(flagged: Tensor, k: Tensor, e0: Tensor, e: Tensor) -> tuple[RowLag, ...]:
    """One :class:`RowLag` per row from [B] tensors: shift -``k`` and gap ``e`` where ``flagged``, else 0 and ``e0``."""
    rows = zip(flagged.tolist(), k.tolist(), e0.tolist(), e.tolist())
    return tuple(RowLag(b, -int(kb), g0, g) if hit else RowLag(b, 0, g0, g0) for b, (hit, kb, g0, g) in enumerate(rows))


@dataclass(frozen=True)
class Shifts:
    """The offset decision per segment and its per-row summary.

    ``segments``: (row, start, end) per segment of the policy mask (end exclusive); ``seg_best_k``,
    ``seg_e0``, ``seg_e_best``, ``seg_flagged`` per segment (best lag k != 0, mean |gap| at 0 and there).
    ``seg_adopted``: segments too short to fit a shift of their own (fewer than ``min_pairs`` pairs at the
    lag) that take the lag their row's flagged segments were fitted with, because it undoes their own
    in-segment pairs (:func:`adopt_row_shift`); their ``seg_best_k`` / ``seg_e_best`` are at that lag.
    Per row (over the pairs of all its segments): ``best_k``, ``e0``, ``e_best``; ``flagged`` rows have
    a flagged segment, ``row_k`` is then the lag of the row's largest flagged segment, ``e_row`` the
    row's mean |gap| at that lag.
    """

    segments: list[tuple[int, int, int]]
    seg_best_k: Tensor
    seg_e0: Tensor
    seg_e_best: Tensor
    seg_flagged: Tensor
    seg_adopted: Tensor
    best_k: Tensor
    e0: Tensor
    e_best: Tensor
    flagged: Tensor
    row_k: Tensor
    e_row: Tensor

    def row_lags(self) -> tuple[RowLag, ...]:
        """One :class:`RowLag` per row: the flagged lag where flagged, else 0 (and the gap there)."""
        return _row_lags(self.flagged, self.row_k, self.e0, self.e_row)


def fit_shifts(ctx: Context, min_pairs: int | None = None) -> Shifts:
    """Fit a shift per segment of the policy mask on the open tokens (needs rollout and student log-probs).

    Candidates: every k in [-K, K] (``tol.max_lag``) and the row's prompt-length lags. A segment is
    flagged when it has at least ``tol.min_tokens_for_lag`` open tokens, its mean |gap| at lag 0 exceeds
    ``tol.same``, and its best lag k != 0 among those that pair at least ``min_pairs`` (default
    ``tol.min_tokens_for_lag``) tokens fits at least ``tol.lag_gain`` times better than lag 0.
    """
    tol, batch = ctx.tol, ctx.batch
    min_pairs = tol.min_tokens_for_lag if min_pairs is None else min_pairs
    ok = ctx.open()
    segs = batch.segments(ctx.policy)
    S, B = len(segs), batch.size
    lags = torch.cat([torch.arange(-tol.max_lag, tol.max_lag + 1)[None, :].expand(B, -1),
                      prompt_length_lags(batch.prompt_lengths)], dim=1)                     # [B, n]
    col0 = tol.max_lag
    total, count, seg_open = blocked_segment_scan(lambda rows: series_rows(batch, ROLLOUT_LOGPROBS, rows),
                                                  ctx.trainer_rows, ok, ctx.policy, lags, S)
    seg_rows = torch.tensor([b for b, _, _ in segs], dtype=torch.long)
    seg_k, seg_e0, seg_eb, seg_flag = _decide(total, count, lags[seg_rows] if S else lags[:0], col0, min_pairs, seg_open, tol)
    seg_adopt = adopt_row_shift(total, count, lags[seg_rows] if S else lags[:0], seg_rows, seg_k, seg_e0, seg_eb,
                                seg_flag, min_pairs, tol)
    # per row, over all its segments' pairs
    row_total = torch.zeros(B, lags.shape[1], dtype=torch.float64).index_add_(0, seg_rows, total)
    row_count = torch.zeros_like(row_total).index_add_(0, seg_rows, count)
    row_open = torch.zeros(B, dtype=torch.long).index_add_(0, seg_rows, seg_open)
    best_k, e0, e_best, _ = _decide(row_total, row_count, lags, col0, min_pairs, row_open, tol)
    flagged = torch.zeros(B, dtype=torch.bool)
    row_k = torch.zeros(B, dtype=torch.long)
    e_row = e0.clone()
    size = torch.tensor([e - s for _, s, e in segs], dtype=torch.long)
    for i in sorted(seg_flag.nonzero().flatten().tolist(), key=lambda i: -int(size[i])):
        b = int(seg_rows[i])
        if not bool(flagged[b]):
            flagged[b], row_k[b] = True, seg_k[i]
            col = int((lags[b] == seg_k[i]).nonzero()[0])
            e_row[b] = row_total[b, col] / row_count[b, col] if row_count[b, col] > 0 else float("nan")
    return Shifts(segs, seg_k, seg_e0, seg_eb, seg_flag, seg_adopt, best_k, e0, e_best, flagged, row_k, e_row)


def adopt_row_shift(total: Tensor, count: Tensor, lags: Tensor, seg_rows: Tensor, seg_k: Tensor, seg_e0: Tensor,
                    seg_eb: Tensor, seg_flag: Tensor, min_pairs: int, tol: Tolerances) -> Tensor:
    """Which unflagged segments take their row's shift: [S] bool (``seg_k`` / ``seg_eb`` are updated in place there).

    ``total``, ``count`` [S, n] pair sums per segment and lag column, ``lags`` [S, n] the lag of each column,
    ``seg_rows`` [S] each segment's row. A segment qualifies when (1) every flagged segment of its row was
    fitted with one lag k, (2) the segment could not be fitted on its own: at k it pairs at least one but
    fewer than ``min_pairs`` tokens (a short assistant turn of a multi-turn row), (3) its mean |gap| at
    lag 0 exceeds ``tol.same``, and (4) at k its in-segment pairs fit at least ``tol.lag_gain`` times
    better than lag 0. The row's other turns establish the shift; the short turn only has to be consistent
    with it, so a healthy short turn (gap at lag 0 within ``tol.same``) is never taken in, nor one the
    row's shift does not undo.
    """
    S = total.shape[0]
    adopted = torch.zeros(S, dtype=torch.bool)
    row_ks: dict[int, set[int]] = {}
    for i in seg_flag.nonzero().flatten().tolist():
        row_ks.setdefault(int(seg_rows[i]), set()).add(int(seg_k[i]))
    for i in range(S):
        ks = row_ks.get(int(seg_rows[i]))
        if bool(seg_flag[i]) or ks is None or len(ks) != 1:
            continue
        k = next(iter(ks))
        cols = (lags[i] == k).nonzero().flatten()
        if cols.numel() == 0:
            continue
        c = float(count[i, cols[0]])
        if not 1 <= c < min_pairs:
            continue
        e_k, e0 = float(total[i, cols[0]]) / c, float(seg_e0[i])
        if e0 > tol.same and e_k * tol.lag_gain <= e0:
            adopted[i], seg_k[i], seg_eb[i] = True, k, e_k
    return adopted


def _decide(total: Tensor, count: Tensor, lags: Tensor, col0: int, min_pairs: int, n_open: Tensor,
            tol: Tolerances) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Best lag k != 0 per unit (segment or row) from pair sums: ``(best_k, e0, e_best, flagged)``."""
    err = total / count                                                  # NaN where no pairs
    e0 = err[:, col0] if err.shape[0] else err[:, :1].squeeze(1)
    e_all = torch.nan_to_num(err.masked_fill((lags == 0) | (count < min_pairs), float("inf")), nan=float("inf"))
    best = e_all.argmin(dim=1) if e_all.shape[0] else torch.zeros(0, dtype=torch.long)
    best_k = lags.gather(1, best[:, None]).squeeze(1) if e_all.shape[0] else torch.zeros(0, dtype=torch.long)
    e_best = e_all.gather(1, best[:, None]).squeeze(1) if e_all.shape[0] else torch.zeros(0, dtype=torch.float64)
    flagged = (n_open >= tol.min_tokens_for_lag) & ~e0.isnan() & (e0 > tol.same) & (e_best * tol.lag_gain <= e0)
    return best_k, e0, e_best, flagged


def best_lags(batch: Batch, max_lag: int = 4, min_pairs: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the lag k != 0 that best matches rollout to trainer log-probs, over the pairs of all its
    segments (a row of one segment: the row itself).

    Candidates: every k in [-max_lag, max_lag] and the row's prompt-length lags that compare at least
    ``min_pairs`` token pairs in the row (a lag that pairs one token of a 4-token row with another
    matches by chance: two near-certain tokens agree at any lag). Returns
    ``(best_k [B] long, err_at_0 [B], err_at_best [B])`` (mean |gap|; NaN / inf where undefined).
    """
    ctx = Context(batch, Tolerances(max_lag=max_lag))
    s = fit_shifts(ctx, min_pairs=min_pairs)
    return s.best_k, s.e0, s.e_best


@dataclass(frozen=True)
class ShiftedRows:
    """The offset decision per row: ``flagged`` [B] bool (a segment of the row is shifted), and
    ``best_k``, ``e0``, ``e_best`` [B] (the row's flagged lag and mean |gap| at lag 0 and there)."""

    flagged: Tensor
    best_k: Tensor
    e0: Tensor
    e_best: Tensor

    def row_lags(self) -> tuple[RowLag, ...]:
        """One :class:`RowLag` per row: the best lag where flagged, else 0 (and the gap there)."""
        return _row_lags(self.flagged, self.best_k, self.e0, self.e_best)


def shifted_rows(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> ShiftedRows:
    """Which rows carry shifted rollout log-probs (class A's rule, :func:`fit_shifts`, summarised per row);
    rows in ``exclude`` are left out. Needs rollout and student log-probs."""
    s = fit_shifts(Context(batch, tol, explained_rows=exclude))
    return ShiftedRows(s.flagged, torch.where(s.flagged, s.row_k, s.best_k), s.e0, torch.where(s.flagged, s.e_row, s.e_best))


__all__ = ["blocked_segment_scan", "lag_scan", "row_lag_error", "lag_pairs", "prompt_length_lags", "segment_ids", "segment_scan",
           "Shifts", "fit_shifts", "adopt_row_shift", "best_lags", "ShiftedRows", "shifted_rows"]
