"""The descriptors behind :class:`iwopd_kit.batch.Batch`'s per-token fields: stored packed, shown as lists.

:class:`Rows` is one per-token field (``completion_ids``, a log-prob series, the loss mask, the token
source); :class:`Streams` is the dict of named weight streams; :func:`pack_field` validates one field
against the completion lengths and packs it (:mod:`iwopd_kit.batch.ragged`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .ragged import (
    FLOATS, KEPT_LOGMASS, SERIES, BatchError, Column, Packed, mask_row, rows_of, series_row, source_row,
)

RAGGED: tuple[str, ...] = ("prompt_ids", "completion_ids", *FLOATS, "mask", "token_source")
"""The per-token fields stored packed (one 1-D tensor + row lengths each)."""


class Rows:
    """A per-token field of :class:`Batch`: stored packed, shown as ragged lists built on first read.

    Assigning (only ``__init__`` does, the batch is frozen) keeps the given value until
    ``__post_init__`` packs it; reading returns the lists (cached; a frozen batch never changes).
    """

    def __init__(self, required: bool = False):
        self.required = required

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            if self.required:                    # no default: dataclasses treats the field as required
                raise AttributeError(self.name)
            return None
        d = obj.__dict__
        shown = d.get("_lists", {})
        if self.name not in shown:
            p = d["_packed"].get(self.name)
            shown[self.name] = None if p is None else p.rows()
            d["_lists"] = shown
        return shown[self.name]

    def __set__(self, obj, value) -> None:
        obj.__dict__.setdefault("_packed", {})[self.name] = value
        obj.__dict__.get("_lists", {}).pop(self.name, None)


class Streams:
    """``Batch.weights``: named per-token streams, stored packed, shown as {name: ragged lists}."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return None
        packed = obj.__dict__.get("_weights")
        if not isinstance(packed, dict) or not packed:
            return None
        return {k: p.rows() if isinstance(p, Packed) else p for k, p in packed.items()}

    def __set__(self, obj, value) -> None:
        if value is not None and not isinstance(value, dict):
            raise BatchError(f"weights must be a dict of named per-token streams, got {type(value).__name__}")
        obj.__dict__["_weights"] = value


def pack_field(name: str, v: Any, lengths: np.ndarray) -> Packed | None:
    """One per-token field (lists or Packed) validated against the completion lengths and packed."""
    if isinstance(v, Packed) and np.array_equal(v.lengths, lengths):
        return v
    if isinstance(v, Packed):                 # lengths changed (a replace): validate as rows
        v = v.rows()
    if v is None:
        return None
    if len(v) != len(lengths):
        raise BatchError(f"{name} has {len(v)} rows but the batch has {len(lengths)}")
    kind = "mask" if name == "mask" else "source" if name == "token_source" else "series"
    col = Column(kind)
    for b, (r, n) in enumerate(zip(v, lengths.tolist())):
        col.append(mask_row(b, r, n) if kind == "mask" else source_row(b, r, n) if kind == "source"
                   else series_row(name, b, r, n))
    return col.packed()


def batch_records(self) -> list[dict[str, Any]]:
    """``Batch.to_records``: one JSONL-style dict per row; the newer keys only where the batch has them."""
    cols = {name: self._rows(name) for name in RAGGED}
    streams = {k: p.rows() for k, p in (self.__dict__.get("_weights") or {}).items()}
    recs = []
    for b in range(self.size):
        rec: dict[str, Any] = {"prompt_ids": cols["prompt_ids"][b], "completion_ids": cols["completion_ids"][b]}
        for name in SERIES:
            rec[name] = None if cols[name] is None else cols[name][b]
        rec["mask"] = None if cols["mask"] is None else cols["mask"][b]
        # the newer keys are written only when present, so older readers keep reading plain dumps
        for name in (KEPT_LOGMASS, "token_source"):
            if cols[name] is not None:
                rec[name] = cols[name][b]
        if streams:
            rec["weights"] = {k: v[b] for k, v in streams.items()}
        if self.groups is not None:
            rec["group"] = self.groups[b]
        if self.kept_ids is not None:
            rec["kept_ids"] = self.kept_ids[b]
        if self.metric_pool is not None:
            rec["metric_pool"] = list(self.metric_pool)
        rec["finish_reason"] = None if self.finish_reasons is None else self.finish_reasons[b]
        rec["sampling"] = None if self.sampling is None else self.sampling.to_dict()
        meta = dict(self.meta[b]) if self.meta is not None else {}
        if self.scoring:
            meta.setdefault("scoring", self.scoring)
        rec["meta"] = meta
        recs.append(rec)
    return recs


def check_padded(values: torch.Tensor, lengths: Sequence[int], name: str) -> None:
    """A [B, L'] tensor with B rows and L' >= the longest completion, or a BatchError naming the shapes."""
    if values.dim() != 2 or values.shape[0] != len(lengths):
        raise BatchError(f"{name}: expected a [B, L] tensor with B={len(lengths)}, got shape {tuple(values.shape)}")
    if values.shape[1] < max(lengths):
        raise BatchError(f"{name}: tensor has {values.shape[1]} columns but the longest completion has {max(lengths)}")


def ragged_from_padded(values: torch.Tensor, lengths: Sequence[int], name: str = "values") -> list[list[float | None]]:
    """Cut a right-padded [B, L'] tensor to ragged rows of lengths L_b; NaN becomes None."""
    check_padded(values, lengths, name)
    lengths = np.asarray(lengths, dtype=np.int64)
    valid = torch.arange(values.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    return rows_of(values.detach().to("cpu", torch.float64)[valid], lengths, "series")


__all__ = ["RAGGED", "Rows", "Streams", "batch_records", "check_padded", "pack_field", "ragged_from_padded"]
