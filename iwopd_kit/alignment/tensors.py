"""Small tensor helpers of the detectors: the stored series in its own dtype, first and last positions, row masks.
The row-block helpers (a series read per block of rows, boolean selection without an index tensor) live with the
data model, in :mod:`iwopd_kit.batch.blocks`."""

from __future__ import annotations

import torch
from torch import Tensor

from ..batch import Batch


def stored_series(batch: Batch, name: str) -> Tensor:
    """``batch.series(name)`` [B, L] in the dtype it is stored in (float32 for vLLM / torch values):
    the detectors upcast per block or per use, never the whole batch twice."""
    return batch.series(name, batch.packed(name).values.dtype)


def first_position(m: Tensor) -> tuple[int, int]:
    """``(row, position)`` of the first True of a [B, L] bool tensor in row-major order (which must have
    one), without ``nonzero`` (which lists every True as two int64)."""
    i = int(m.reshape(-1).to(torch.int8).argmax())
    return divmod(i, m.shape[1])


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


__all__ = ["stored_series", "first_position", "row_mask", "first_true", "last_true", "at"]
