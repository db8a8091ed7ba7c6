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

ROLLOUT_LOGPROBS = "rollout_logprobs"
STUDENT_LOGPROBS = "student_logprobs"
TEACHER_LOGPROBS = "teacher_logprobs"
SERIES: tuple[str, ...] = (ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS)
"""The three log-prob series of the sampled tokens (rollout engine, trainer's student recompute, teacher)."""
KEPT_LOGMASS = "kept_logmass"
"""log S_t: the trainer's log of its probability mass over the engine's kept set (top-p / top-k) at token t."""
FLOATS: tuple[str, ...] = (*SERIES, KEPT_LOGMASS)
"""Every per-token float field that holds a log-value (<= 0)."""
TOKEN_SOURCES: tuple[str, ...] = ("policy", "other_model", "context")
"""Where a completion token came from: ``policy`` (sampled by the policy being trained, the rollout
engine), ``other_model`` (sampled by another model: a frozen teacher in SFT-distill, prime-rl's
``ce_weights`` tokens), ``context`` (not sampled at all: a tool output, a user turn, template
scaffold inside a multi-turn completion). Stored as int8 codes, the index in this tuple."""


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
        if (nan.any() and int(nan.sum()) != list(values).count(None)) or (name in FLOATS and (arr > 1e-6).any()):
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
        if v > 1e-6 and name in FLOATS:
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


def source_row(row: int, values: Any, length: int) -> np.ndarray:
    """One row of ``token_source`` as int8 codes (index in :data:`TOKEN_SOURCES`; None row = all ``policy``)."""
    if values is None:
        return np.zeros(length, dtype=np.int8)
    if not isinstance(values, (list, tuple)):
        raise BatchError(f"row {row}: token_source must be a list of {TOKEN_SOURCES} names, got {type(values).__name__}")
    if len(values) != length:
        raise BatchError(f"row {row}: token_source has {len(values)} values but completion_ids has {length} tokens")
    code = _SOURCE_CODE
    out = np.empty(length, dtype=np.int8)
    for j, v in enumerate(values):
        c = code.get(v) if isinstance(v, str) else None
        if c is None:
            raise BatchError(f"row {row}, position {j}: token_source must be one of {TOKEN_SOURCES}, got {v!r}")
        out[j] = c
    return out


_SOURCE_CODE = {name: i for i, name in enumerate(TOKEN_SOURCES)}


class Packed:
    """The rows of one per-token field: ``values`` [sum L_b] (1-D) and ``lengths`` [B] (int64)."""

    __slots__ = ("values", "lengths", "kind")

    def __init__(self, values: Tensor, lengths: np.ndarray, kind: str):
        self.values, self.lengths, self.kind = values, lengths, kind   # kind: "ids" | "series" | "mask" | "source"

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

    _START = {"series": np.float32, "ids": np.int32, "mask": np.bool_, "source": np.int8}
    _WIDE = {"series": np.float64, "ids": np.int64, "mask": np.bool_, "source": np.int8}
    _FILL = {"series": np.nan, "mask": True, "source": 0}

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
    if kind == "source":
        return flat.astype(np.int8, copy=False)
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
        elif kind == "source":
            row = [TOKEN_SOURCES[v] for v in row]
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
    if name in FLOATS and bool((flat > 1e-6).any()):
        b, j = (int(x) for x in ((v > 1e-6) & valid).nonzero()[0])
        raise BatchError(f"row {b}, position {j}: {name} = {float(v[b, j])} is a positive log-prob; expected a value <= 0")
    if flat.dtype == torch.float64:
        flat = torch.from_numpy(narrow(flat.numpy(), "series"))
    return flat.clone() if flat.data_ptr() == v.data_ptr() else flat


RECORD_KEYS = frozenset({"prompt_ids", "completion_ids", *FLOATS, "mask", "token_source", "weights", "group", "kept_ids",
                         "metric_pool", "finish_reason", "sampling", "meta"})


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
                                               **{k: None for k in (*FLOATS, "mask", "token_source")}}
        self.weights: dict[str, Column] = {}
        self.total = 0                            # completion tokens so far
        self.finish: list[Any] = []
        self.samplings: list[dict] = []
        self.metas: list[dict] = []
        self.groups: list[str | None] = []
        self.kept: list[Any] = []
        self.pools: set[tuple[str, ...]] = set()

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
            n = len(c)
            per_token = {name: None if rec.get(name) is None else series_row(name, b, rec[name], n) for name in FLOATS}
            m = rec.get("mask")
            per_token["mask"] = None if m is None else mask_row(b, m, n)
            src = rec.get("token_source")
            per_token["token_source"] = None if src is None else source_row(b, src, n)
            streams = weight_rows(b, rec.get("weights"), n)
            group = group_value(b, rec.get("group"))
            kept = kept_row(b, rec.get("kept_ids"), n)
        except BatchError as e:
            raise locate(e, self.source) from None
        cols = self.cols
        cols["prompt_ids"].append(p)
        cols["completion_ids"].append(c)
        for name, v in per_token.items():
            kind = "mask" if name == "mask" else "source" if name == "token_source" else "series"
            if v is None:
                if cols[name] is not None:
                    cols[name].fill(n)
                continue
            if cols[name] is None:
                cols[name] = Column(kind, filled=self.total)
            cols[name].append(v)
        for name, col in self.weights.items():
            if name not in streams:
                col.fill(n)
        for name, v in streams.items():
            if name not in self.weights:
                self.weights[name] = Column("series", filled=self.total)
            self.weights[name].append(v)
        self.total += n
        self.finish.append(rec.get("finish_reason"))
        self.groups.append(group)
        self.kept.append(kept)
        if rec.get("sampling") is not None:
            self.samplings.append(rec["sampling"])
        pool = rec.get("metric_pool")
        if pool is not None:
            if not isinstance(pool, list) or not all(isinstance(x, str) for x in pool):
                raise BatchError(f"{where} {b} (line {b + 1}): metric_pool must be a list of weight-stream names, got {pool!r}")
            self.pools.add(tuple(pool))
        meta = rec.get("meta")
        self.metas.append(dict(meta) if isinstance(meta, dict) else {})

    def build(self) -> dict[str, Any]:
        """The Batch fields: packed per-token fields, ``weights``, ``groups``, ``kept_ids``,
        ``finish_reasons``, ``meta``, and ``samplings``."""
        if not self.cols["completion_ids"].lengths:
            raise BatchError("no records; expected at least one row")
        lengths = self.cols["completion_ids"].lengths
        out = {k: None if c is None else c.packed(lengths if k not in ("prompt_ids", "completion_ids") else None)
               for k, c in self.cols.items()}
        weights = {k: c.packed(lengths) for k, c in self.weights.items()} or None
        self.cols, self.weights = {}, {}
        groups = self.groups if any(g is not None for g in self.groups) else None
        kept = self.kept if any(k is not None for k in self.kept) else None
        return {**out, "weights": weights, "groups": groups, "kept_ids": kept, "finish_reasons": self.finish,
                "meta": self.metas, "samplings": self.samplings, "metric_pools": sorted(self.pools)}


def weight_rows(row: int, streams: Any, length: int) -> dict[str, np.ndarray]:
    """A row's named weight streams (``{"rl_weights": [...], ...}``) as float arrays of ``length`` values."""
    if streams is None:
        return {}
    if not isinstance(streams, dict):
        raise BatchError(f"row {row}: weights must be an object of named per-token streams, got {type(streams).__name__}")
    out = {}
    for name, vals in streams.items():
        if vals is None:
            continue
        if not isinstance(vals, (list, tuple)):
            raise BatchError(f"row {row}: weights[{name!r}] must be a list of numbers, got {type(vals).__name__}")
        out[str(name)] = series_row(f"weights[{name!r}]", row, vals, length)
    return out


def group_value(row: int, g: Any) -> str | None:
    """A row's group name (a string; a number is accepted and shown as text)."""
    if g is None or isinstance(g, str):
        return g
    if isinstance(g, (int, float)) and not isinstance(g, bool):
        return str(g)
    raise BatchError(f"row {row}: group must be a string or null, got {g!r}")


def kept_row(row: int, kept: Any, length: int) -> list[list[int] | None] | None:
    """A row's kept sets: per token, the token ids the engine kept (None where not recorded)."""
    if kept is None:
        return None
    if not isinstance(kept, (list, tuple)) or len(kept) != length:
        n = len(kept) if isinstance(kept, (list, tuple)) else type(kept).__name__
        raise BatchError(f"row {row}: kept_ids has {n} entries but completion_ids has {length} tokens; expected one "
                         "list of kept token ids (or null) per completion token")
    out: list[list[int] | None] = []
    for j, ids in enumerate(kept):
        if ids is None:
            out.append(None)
            continue
        arr = ids_row("kept_ids", row, list(ids) if isinstance(ids, tuple) else ids)
        if arr.size == 0:
            raise BatchError(f"row {row}, position {j}: kept_ids is empty; expected at least the sampled token (or null)")
        out.append(arr.tolist())
    return out
