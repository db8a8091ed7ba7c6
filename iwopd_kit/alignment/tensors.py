"""Tensor helpers of the detectors: memory-lean ones (a real dump is millions of tokens: the stored series
without a float64 copy of the batch, boolean selection without an index tensor) and small row helpers."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..batch import Batch


def stored_series(batch: Batch, name: str) -> Tensor:
    """``batch.series(name)`` [B, L] in the dtype it is stored in (float32 for vLLM / torch values):
    the detectors upcast per block or per use, never the whole batch twice."""
    return batch.series(name, batch.packed(name).values.dtype)


BLOCK_ELEMENTS = 1 << 16
"""Tokens per block of rows in the row-blocked computations (``fit_shifts``, the row gap means): their float64
temporaries stay O(block)."""


def row_blocks(rows: int, width: int, elements: int = BLOCK_ELEMENTS) -> list[slice]:
    """Consecutive row slices of about ``elements`` tokens each (at least one row per slice)."""
    step = max(1, elements // max(1, width))
    return [slice(i, min(rows, i + step)) for i in range(0, rows, step)]


def series_rows(batch: Batch, name: str, rows: slice | Sequence[int], dtype: torch.dtype = torch.float64,
                width: int | None = None) -> Tensor:
    """``batch.series(name, dtype)[rows, :width]`` (same values, bit for bit: NaN at padding) without padding the
    whole batch: [len(rows), width] (default ``batch.width``), padded from the packed values of those rows only."""
    p = batch.packed(name)
    if p is None:
        return batch.series(name, dtype)[rows, :width]                # raises the batch's error
    off, W = p.offsets, batch.width if width is None else min(width, batch.width)
    if isinstance(rows, slice):
        start, stop, step = rows.indices(batch.size)
        idx = list(range(start, stop, step))
    else:
        idx = [int(r) for r in rows]
    lengths = np.minimum(p.lengths[idx], W) if idx else np.zeros(0, dtype=np.int64)
    if isinstance(rows, slice) and step == 1 and W == batch.width:
        values = p.values[off[start]: off[stop]]
    else:
        values = torch.cat([p.values[off[r]: off[r] + n] for r, n in zip(idx, lengths.tolist())]) if idx else p.values[:0]
    out = torch.full((len(idx), W), float("nan"), dtype=dtype)
    mask = torch.arange(W)[None, :] < torch.from_numpy(np.asarray(lengths, dtype=np.int64))[:, None]
    return out.masked_scatter_(mask, values.to(dtype))


def series_mask(batch: Batch, name: str, fn, dtype: torch.dtype = torch.float64) -> Tensor:
    """[B, L] bool ``fn(batch.series(name, dtype))`` (an elementwise test), computed per block of rows: no [B, L]
    float copy of the series."""
    return torch.cat([fn(series_rows(batch, name, rows, dtype)) for rows in row_blocks(batch.size, batch.width)])


def masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x[mask]`` (a flat copy of the selected values) without the int64 index tensor torch's boolean
    indexing builds (16 bytes per element of ``x``): numpy's boolean indexing, for CPU tensors without grad."""
    if x.device.type != "cpu" or x.requires_grad or mask.device.type != "cpu":
        return x[mask]
    return torch.from_numpy(x.contiguous().numpy()[mask.contiguous().numpy()])



def first_position(m: Tensor) -> tuple[int, int]:
    """``(row, position)`` of the first True of a [B, L] bool tensor in row-major order (which must have
    one), without ``nonzero`` (which lists every True as two int64)."""
    i = int(m.reshape(-1).to(torch.int8).argmax())
    return divmod(i, m.shape[1])


def nanmean_rows(d: Tensor) -> Tensor:
    """Mean over dim 1 ignoring NaN (NaN for a row without values); faster than torch.nanmean."""
    ok = ~d.isnan()
    return torch.where(ok, d, torch.zeros((), dtype=d.dtype)).sum(1) / ok.sum(1)


def row_mask(n: int, rows: frozenset[int] | set[int]) -> Tensor:
    """BoolTensor [n]: True at the given rows."""
    m = torch.zeros(n, dtype=torch.bool)
    if rows:
        m[list(rows)] = True
    return m


def first_true(m: Tensor) -> Tensor:
    """Index of the first True per row of a [B, L] bool tensor (0 for a row without any)."""
    return m.to(torch.int8).argmax(dim=1)


def last_true(m: Tensor) -> Tensor:
    """Index of the last True per row of a [B, L] bool tensor (-1 for a row without any)."""
    L = m.shape[1]
    last = (L - 1) - m.flip(1).to(torch.int8).argmax(dim=1)        # no [B, L] int64 index tensor
    return last.masked_fill_(~m.any(1), -1)


def at(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, idx[b]] for a [B, L] tensor and [B] indices."""
    return x.gather(1, idx[:, None]).squeeze(1)


__all__ = ["BLOCK_ELEMENTS", "row_blocks", "series_rows", "series_mask", "stored_series", "masked", "first_position", "nanmean_rows", "row_mask", "first_true", "last_true", "at"]
