"""Ragged per-token rows stored packed: one 1-D tensor per field plus the row lengths.

The canonical form of every per-token field of :class:`~iwopd_kit.batch.Batch` (token ids, the
log-prob series, the mask). Rows are validated and converted one at a time (a JSONL row as it is
read, a rollout row as it is converted), so no Python list of floats outlives its row; the lists
the public attributes show are built only when someone reads them.

Missing values: ``NaN`` in the packed float tensors, ``None`` in the lists. This module is the one
place that converts between the two (:func:`rows_of`, :func:`series_row`); a literal NaN in the
input is an error (use ``None`` / JSON ``null`` for "no value"), ``-inf`` is a legal value.

Storage dtypes are lossless narrowings: float32 when every value of the field is exactly a float32
(what vLLM and torch produce; the JSON repr round-trips it), float64 otherwise; int32 token ids.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

SERIES: tuple[str, ...] = ("rollout_logprobs", "student_logprobs", "teacher_logprobs")


class BatchError(ValueError):
    """Bad input: the message names the row, the position (or key) and what was expected."""


_NUMBER_TYPES = {float, int, type(None)}


def ids_row(name: str, row: int, ids: Any) -> np.ndarray:
    """One row of token ids as int64, or a BatchError naming the row and position."""
    if not isinstance(ids, (list, tuple)):
        raise BatchError(f"row {row}: {name} must be a list of token ids, got {type(ids).__name__}")
    if not ids:
        return np.zeros(0, dtype=np.int64)
    if set(map(type, ids)) <= {int}:                       # fast path: plain ints
        try:
            arr = np.array(ids, dtype=np.int64)
        except OverflowError:
            raise BatchError(f"row {row}: {name} holds a token id beyond int64") from None
        if arr.min() >= 0:
            return arr
    for j, t in enumerate(ids):                            # slow path: find and name the bad one
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise BatchError(f"row {row}, position {j}: {name} must hold non-negative int token ids, got {t!r}")
    return np.array([int(t) for t in ids], dtype=np.int64)


def series_row(name: str, row: int, values: Sequence[Any] | None, length: int) -> np.ndarray:
    """One row of a per-token float series as float64 with NaN for None (None row = all missing)."""
    if values is None:
        return np.full(length, np.nan)
    if len(values) != length:
        raise BatchError(
            f"row {row}: {name} has {len(values)} values but completion_ids has {length} tokens; "
            f"expected one value per completion token (use null for a missing value)"
        )
    arr = None
    if set(map(type, values)) <= _NUMBER_TYPES:            # fast path: floats, ints and None
        arr = np.array(values, dtype=np.float64)
        nan = np.isnan(arr)
        if (nan.any() and int(nan.sum()) != list(values).count(None)) or (name in SERIES and (arr > 1e-6).any()):
            arr = None                                      # a literal NaN or a positive log-prob: name it
    if arr is not None:
        return arr
    for j, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BatchError(f"row {row}, position {j}: {name} must be a number or null, got {v!r}")
        v = float(v)
        if math.isnan(v):
            raise BatchError(f"row {row}, position {j}: {name} is NaN; expected a log-prob (use null for a missing value)")
        if v > 1e-6 and name in SERIES:
            raise BatchError(f"row {row}, position {j}: {name} = {v} is a positive log-prob; expected a value <= 0")
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def mask_row(row: int, m: Any, length: int) -> np.ndarray:
    """One row of the mask as bool (None row = every token counts)."""
    if m is None:
        return np.ones(length, dtype=np.bool_)
    if len(m) != length:
        raise BatchError(f"row {row}: mask has {len(m)} values but completion_ids has {length} tokens")
    try:
        ok = set(m) <= {0, 1}                               # True/False/0/1 (what `v in (0, 1)` accepts)
    except TypeError:
        ok = False
    if not ok:
        for j, v in enumerate(m):
            if v not in (0, 1, True, False):
                raise BatchError(f"row {row}, position {j}: mask must be a bool or 0/1, got {v!r}")
    return np.array([bool(v) for v in m], dtype=np.bool_) if not ok else np.array(m, dtype=np.bool_)


class Packed:
    """The rows of one per-token field: ``values`` [sum L_b] (1-D) and ``lengths`` [B] (int64)."""

    __slots__ = ("values", "lengths", "kind")

    def __init__(self, values: Tensor, lengths: np.ndarray, kind: str):
        self.values, self.lengths, self.kind = values, lengths, kind   # kind: "ids" | "series" | "mask"

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def rows(self) -> list[list]:
        """The rows as Python lists (NaN -> None for a float series)."""
        return rows_of(self.values, self.lengths, self.kind)

    def select(self, rows: Sequence[int]) -> "Packed":
        off = self.offsets
        parts = [self.values[off[r]: off[r + 1]] for r in rows]
        values = torch.cat(parts) if parts else self.values[:0]
        return Packed(values, self.lengths[list(rows)], self.kind)


class Column:
    """A per-token field being filled row by row, in one growing buffer of the narrowest lossless dtype.

    Starts as float32 / int32 / bool and widens once (float64 / int64) at the first row that needs
    it; no per-row array is kept, so reading N tokens holds about N values of the field, not more.
    """

    _START = {"series": np.float32, "ids": np.int32, "mask": np.bool_}
    _WIDE = {"series": np.float64, "ids": np.int64, "mask": np.bool_}
    _FILL = {"series": np.nan, "mask": True}

    def __init__(self, kind: str, filled: int = 0):
        self.kind, self.dtype = kind, np.dtype(self._START[kind])
        self.buf = bytearray()
        self.lengths: list[int] = []
        if filled:                               # rows before the first one that has values
            self.append(np.full(filled, self._FILL[kind]), record=False)

    def append(self, row: np.ndarray, record: bool = True) -> None:
        if self.dtype != self._WIDE[self.kind]:
            cast = row.astype(self.dtype)
            if not np.array_equal(cast, row, equal_nan=self.kind == "series"):
                wide = np.dtype(self._WIDE[self.kind])
                self.buf = bytearray(np.frombuffer(self.buf, dtype=self.dtype).astype(wide).tobytes())
                self.dtype, cast = wide, row.astype(wide)
        else:
            cast = row.astype(self.dtype, copy=False)
        self.buf += cast.tobytes()
        if record:
            self.lengths.append(len(row))

    def fill(self, n: int) -> None:
        """A row without values (missing log-probs / every token counts)."""
        self.append(np.full(n, self._FILL[self.kind]))

    def packed(self, lengths: np.ndarray | None = None) -> "Packed":
        values = torch.from_numpy(np.frombuffer(self.buf, dtype=self.dtype)) if self.buf else \
            torch.zeros(0, dtype=torch.from_numpy(np.zeros(0, self.dtype)).dtype)
        return Packed(values, np.asarray(self.lengths if lengths is None else lengths, dtype=np.int64), self.kind)


def narrow(flat: np.ndarray, kind: str) -> np.ndarray:
    """The narrowest dtype that holds every value exactly (float32 / int32 where they do)."""
    if kind == "mask":
        return flat.astype(np.bool_, copy=False)
    if kind == "ids":
        flat = flat.astype(np.int64, copy=False)
        return flat.astype(np.int32) if flat.size == 0 or flat.max() < 2**31 else flat
    flat = flat.astype(np.float64, copy=False)
    f32 = flat.astype(np.float32)
    return f32 if np.array_equal(f32, flat, equal_nan=True) else flat


def rows_of(values: Tensor, lengths: np.ndarray, kind: str) -> list[list]:
    """Split a packed 1-D tensor into Python rows; NaN becomes None in a float series."""
    flat = values.tolist()
    off = 0
    out = []
    for n in lengths.tolist():
        row = flat[off: off + n]
        if kind == "series":
            row = [None if v != v else v for v in row]
        out.append(row)
        off += n
    return out


def pack_padded(values: Tensor, valid: Tensor, name: str) -> Tensor:
    """The real tokens of a right-padded [B, L] float tensor, packed (1-D, NaN = missing).

    A positive log-prob is an error naming row and position; ``-inf`` is kept.
    """
    v = values.detach().to("cpu")
    if not v.is_floating_point() or v.dtype in (torch.bfloat16, torch.float16):
        v = v.to(torch.float64)
    flat = v[valid]
    if name in SERIES and bool((flat > 1e-6).any()):
        b, j = (int(x) for x in ((v > 1e-6) & valid).nonzero()[0])
        raise BatchError(f"row {b}, position {j}: {name} = {float(v[b, j])} is a positive log-prob; expected a value <= 0")
    if flat.dtype == torch.float64:
        flat = torch.from_numpy(narrow(flat.numpy(), "series"))
    return flat.clone() if flat.data_ptr() == v.data_ptr() else flat


RECORD_KEYS = frozenset({"prompt_ids", "completion_ids", *SERIES, "mask", "finish_reason", "sampling", "meta"})


def locate(e: BatchError, source: str) -> BatchError:
    """The error of a row's validation, located in the file: ``SOURCE: row N (line N + 1), ...``."""
    where = f"{source}: row" if source else "row"
    msg = re.sub(r"^row (\d+)", lambda m: f"{where} {m.group(1)} (line {int(m.group(1)) + 1})", str(e))
    return BatchError(f"{source}: {msg}" if source and msg == str(e) else msg)


class RecordBuilder:
    """Validates and packs JSONL-style records one at a time: a record's lists are dropped as soon
    as it is packed, so reading a dump holds its values once, in tensors."""

    def __init__(self, source: str = ""):
        self.source = source
        self.where = f"{source}: row" if source else "row"
        self.cols: dict[str, Column | None] = {"prompt_ids": Column("ids"), "completion_ids": Column("ids"),
                                               **{k: None for k in (*SERIES, "mask")}}
        self.total = 0                            # completion tokens so far
        self.finish: list[Any] = []
        self.samplings: list[dict] = []
        self.metas: list[dict] = []

    def add(self, b: int, rec: Any) -> None:
        where = self.where
        if not isinstance(rec, dict):
            raise BatchError(f"{where} {b} (line {b + 1}): expected a JSON object, got {type(rec).__name__}")
        unknown = sorted(set(rec) - RECORD_KEYS)
        if unknown:
            raise BatchError(f"{where} {b} (line {b + 1}): unknown key(s) {unknown}; expected keys from {sorted(RECORD_KEYS)}")
        for key in ("prompt_ids", "completion_ids"):
            if key not in rec:
                raise BatchError(f"{where} {b} (line {b + 1}): missing required key {key!r}")
        try:
            p = ids_row("prompt_ids", b, rec["prompt_ids"])
            c = ids_row("completion_ids", b, rec["completion_ids"])
            if len(c) == 0:
                raise BatchError(f"row {b}: empty completion (0 tokens); expected at least one generated token")
            series = {name: None if rec.get(name) is None else series_row(name, b, rec[name], len(c)) for name in SERIES}
            m = rec.get("mask")
            m = None if m is None else mask_row(b, m, len(c))
        except BatchError as e:
            raise locate(e, self.source) from None
        cols = self.cols
        cols["prompt_ids"].append(p)
        cols["completion_ids"].append(c)
        for name, v in (*series.items(), ("mask", m)):
            kind = "mask" if name == "mask" else "series"
            if v is None:
                if cols[name] is not None:
                    cols[name].fill(len(c))
                continue
            if cols[name] is None:
                cols[name] = Column(kind, filled=self.total)
            cols[name].append(v)
        self.total += len(c)
        self.finish.append(rec.get("finish_reason"))
        if rec.get("sampling") is not None:
            self.samplings.append(rec["sampling"])
        meta = rec.get("meta")
        self.metas.append(dict(meta) if isinstance(meta, dict) else {})

    def build(self) -> dict[str, Any]:
        """The Batch fields: packed per-token fields, ``finish_reasons``, ``meta``, and ``samplings``."""
        if not self.cols["completion_ids"].lengths:
            raise BatchError("no records; expected at least one row")
        lengths = self.cols["completion_ids"].lengths
        out = {k: None if c is None else c.packed(lengths if k not in ("prompt_ids", "completion_ids") else None)
               for k, c in self.cols.items()}
        self.cols = {}
        return {**out, "finish_reasons": self.finish, "meta": self.metas, "samplings": self.samplings}
