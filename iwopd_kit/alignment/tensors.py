"""Memory-lean tensor helpers of the detectors (a real dump is millions of tokens): the stored series
without a float64 copy of the batch, and boolean selection without an index tensor."""

from __future__ import annotations

import torch
from torch import Tensor

from ..batch import Batch


def stored_series(batch: Batch, name: str) -> Tensor:
    """``batch.series(name)`` [B, L] in the dtype it is stored in (float32 for vLLM / torch values):
    the detectors upcast per block or per use, never the whole batch twice."""
    return batch.series(name, batch.packed(name).values.dtype)


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


__all__ = ["stored_series", "masked", "first_position"]
