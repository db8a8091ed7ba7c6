"""Lags: how well rollout log-probs match student log-probs when shifted by k tokens.

``lag_scan`` scores every lag in a window, ``row_lag_error`` a per-row lag, ``lag_pairs`` how many
token pairs a lag compares, ``prompt_length_lags`` the shifts a batch-wide prompt-length slicing bug
produces, ``best_lags`` the best lag k != 0 per row, and ``shifted_rows`` the offset decision (the rule
class A reports and the views show).

Coordinate frame: ``[B, L]`` completion coordinates; lag k pairs rollout[j + k] with student[j].
The lag k is this module's internal convention only. What a reader sees (findings, the report's
``RowLag.shift`` and ``row_shifts``, the diff view, the notebooks) is the shift d = -k: a row shifted
by d has token j carrying the rollout log-prob of token j + d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Batch
from .core import RowLag, Tolerances, one_thread
from .tensors import nanmean_rows, row_mask, stored_series


@one_thread()
def lag_scan(rollout: Tensor, student: Tensor, valid: Tensor, max_lag: int = 4) -> tuple[Tensor, Tensor]:
    """Mean |rollout[j + k] - student[j]| per row for k in [-K, K].

    ``rollout``, ``student`` [B, L] and ``valid`` [B, L] bool, in completion coordinates. Fully
    vectorised over rows and tokens: one Python step per lag (2K+1 of them), none per row.
    Returns ``(lags [2K+1], err [B, 2K+1])``; err is NaN where a row has no overlapping values.
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


BLOCK_ELEMENTS = 1 << 16
"""Tokens per block of rows in :func:`best_lags`: the scan's float64 temporaries stay O(block)."""


def row_blocks(rows: int, width: int, elements: int = BLOCK_ELEMENTS) -> list[slice]:
    """Consecutive row slices of about ``elements`` tokens each (at least one row per slice)."""
    step = max(1, elements // max(1, width))
    return [slice(i, min(rows, i + step)) for i in range(0, rows, step)]


def best_lags(batch: Batch, max_lag: int = 4, min_pairs: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the lag k != 0 that best matches rollout to student log-probs.

    Candidates: every k in [-max_lag, max_lag] and the row's prompt-length lags that compare at least
    ``min_pairs`` token pairs in the row (a lag that pairs one token of a 4-token row with another
    matches by chance: two near-certain tokens agree at any lag). Returns
    ``(best_k [B] long, err_at_0 [B], err_at_best [B])`` (mean |gap|; NaN / inf where undefined).
    Works over blocks of rows (:func:`row_blocks`), in float64 per block.
    """
    r, s = stored_series(batch, "rollout_logprobs"), stored_series(batch, "student_logprobs")
    pad = batch.padding_mask()
    extra = prompt_length_lags(batch.prompt_lengths)                                  # [B, 4]
    best_k, e0, e_best = (torch.empty(batch.size, dtype=torch.long), torch.empty(batch.size, dtype=torch.float64),
                          torch.empty(batch.size, dtype=torch.float64))
    for rows in row_blocks(batch.size, batch.width):
        rb, sb = r[rows].to(torch.float64), s[rows].to(torch.float64)
        valid_pairs = pad[rows] & ~rb.isnan() & ~sb.isnan()
        lags, err = lag_scan(rb, sb, valid_pairs, max_lag)
        e0[rows] = err[:, int((lags == 0).nonzero())]
        ex = extra[rows]
        extra_err = torch.stack([row_lag_error(rb, sb, valid_pairs, ex[:, i]) for i in range(ex.shape[1])], 1)
        all_lags = torch.cat([lags[None, :].expand(ex.shape[0], -1), ex], dim=1)       # [b, 2K+1+4]
        few = lag_pairs(valid_pairs, all_lags) < min_pairs
        e_all = torch.nan_to_num(torch.cat([err, extra_err], dim=1).masked_fill((all_lags == 0) | few, float("inf")),
                                 nan=float("inf"))
        best = e_all.argmin(dim=1)
        best_k[rows] = all_lags.gather(1, best[:, None]).squeeze(1)
        e_best[rows] = e_all.gather(1, best[:, None]).squeeze(1)
    return best_k, e0, e_best


@dataclass(frozen=True)
class ShiftedRows:
    """The offset decision for a batch: ``flagged`` [B] bool, and ``best_k``, ``e0``, ``e_best`` [B]
    from :func:`best_lags` (mean |gap| at lag 0 and at the best lag k != 0)."""

    flagged: Tensor
    best_k: Tensor
    e0: Tensor
    e_best: Tensor

    def row_lags(self) -> tuple[RowLag, ...]:
        """One :class:`RowLag` per row: the best lag where flagged, else 0 (and the gap there)."""
        rows = zip(self.flagged.tolist(), self.best_k.tolist(), self.e0.tolist(), self.e_best.tolist())
        return tuple(RowLag(b, int(k), e0, e_best) if hit else RowLag(b, 0, e0, e0)
                     for b, (hit, k, e0, e_best) in enumerate(rows))


def shifted_rows(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> ShiftedRows:
    """Which rows carry shifted rollout log-probs (class A's rule).

    A row is flagged when it has at least ``tol.min_tokens_for_lag`` tokens and a rollout value,
    its mean |gap| at lag 0 exceeds ``tol.same``, it is not in ``exclude`` (already explained), and
    its best lag k != 0 among those that compare at least ``tol.min_tokens_for_lag`` token pairs fits
    at least ``tol.lag_gain`` times better than lag 0. Needs rollout and student log-probs.
    """
    r = stored_series(batch, "rollout_logprobs")
    has_value = (batch.padding_mask() & ~r.isnan() & (r != math.inf)).any(1)
    del r
    best_k, e0, e_best = best_lags(batch, tol.max_lag, min_pairs=tol.min_tokens_for_lag)
    cand = ((torch.tensor(batch.lengths) >= tol.min_tokens_for_lag) & has_value & ~e0.isnan()
            & (e0 > tol.same) & ~row_mask(batch.size, exclude))
    return ShiftedRows(cand & (e_best * tol.lag_gain <= e0), best_k, e0, e_best)


__all__ = ["row_blocks", "lag_scan", "row_lag_error", "lag_pairs", "prompt_length_lags", "best_lags", "ShiftedRows",
           "shifted_rows"]
