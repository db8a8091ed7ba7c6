"""Row blocks of a :class:`~iwopd_kit.batch.core.Batch`: a padded series built for some rows only, a per-token test
of a series computed block by block, and the flat selections and row means the detectors build on them, so that a
step of millions of tokens needs no padded [B, L] float64 copy of a series (coordinate frame: [B, L] completion
coordinates, as ``Batch.series``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .core import Batch


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



def nanmean_rows(d: Tensor) -> Tensor:
    """Mean over dim 1 ignoring NaN (NaN for a row without values); faster than torch.nanmean."""
    ok = ~d.isnan()
    return torch.where(ok, d, torch.zeros((), dtype=d.dtype)).sum(1) / ok.sum(1)



__all__ = ["BLOCK_ELEMENTS", "row_blocks", "series_rows", "series_mask", "masked", "nanmean_rows"]
