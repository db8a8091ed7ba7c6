"""The descriptors behind :class:`iwopd_kit.batch.Batch`'s per-token fields: stored packed, shown as lists.

:class:`Rows` is one per-token field (``completion_ids``, a log-prob series, the loss mask, the token
source); :class:`Streams` is the dict of named weight streams; :func:`pack_field` validates one field
against the completion lengths and packs it (:mod:`iwopd_kit.ragged`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ragged import FLOATS, BatchError, Column, Packed, mask_row, series_row, source_row

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


__all__ = ["RAGGED", "Rows", "Streams", "pack_field"]
