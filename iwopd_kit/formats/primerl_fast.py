"""prime-rl's token export read fast: typed JSON decoding (msgspec) and numpy per record, for clean files.

The same :class:`~iwopd_kit.batch.Batch` as :func:`iwopd_kit.formats.primerl.from_primerl_records` on the same
file (its rules, its module docstring), built without a Python loop per token: each line is decoded into
typed lists (the keys the reader uses) and the other per-token keys are kept as raw JSON whose elements are
counted (the export's lists are flat lists of numbers, booleans and nulls), then cut into completion
coordinates with numpy and packed in the narrowest lossless dtype, as the data model packs rows.

It reads only what needs no finding and no error: :func:`read_primerl_fast` returns None (and the caller
reads the file with the exact reader, which names the row, the key and the position) at the first line
that is empty or not JSON, a key the schema does not have, a value of another type (a ``null`` or a
non-finite log-prob, 0/1 for a bool, a float token id), lists of different lengths, a row without a
loss-masked token, a negative token id, a positive log-prob, a weight stream null on some tokens only, or
a schema_version other than 1. ``tests/test_primerl_fast.py`` checks both readers give equal batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batch import TOKEN_SOURCES, Batch
from ..batch.ragged import Column, Packed
from .primerl import FMT, META, STREAM_FILL
from .records import build

try:
    import msgspec
    from msgspec import UNSET, Raw, UnsetType
except ImportError:                       # the exact reader then reads every file
    msgspec = None

POLICY, OTHER, CONTEXT = (TOKEN_SOURCES.index(n) for n in ("policy", "other_model", "context"))
OTHER_KEYS = ("position_ids", "advantages", "entropy", "mismatch_kl", "log_importance_ratio", "importance_ratio",
              "prob_delta", "is_masked", "is_masked_high", "is_masked_low")
"""The export's other per-token keys (token_export.py ``_export_columns``): only their lengths are read."""

if msgspec is not None:
    class _Record(msgspec.Struct, forbid_unknown_fields=True):
        token_ids: list[int]
        loss_mask: list[bool]
        inference_logprobs: list[float]
        trainer_logprobs: list[float]
        rl_weights: list[float | None] | None = None
        ce_weights: list[float | None] | None = None
        ref_kl_weights: list[float | None] | None = None
        schema_version: Any = UNSET
        step: Any = UNSET
        rank: Any = UNSET
        micro_step: Any = UNSET
        micro_sequence_idx: Any = UNSET
        export_sequence_idx: Any = UNSET
        env_name: Any = UNSET
        position_ids: Raw | UnsetType = UNSET
        advantages: Raw | UnsetType = UNSET
        entropy: Raw | UnsetType = UNSET
        mismatch_kl: Raw | UnsetType = UNSET
        log_importance_ratio: Raw | UnsetType = UNSET
        importance_ratio: Raw | UnsetType = UNSET
        prob_delta: Raw | UnsetType = UNSET
        is_masked: Raw | UnsetType = UNSET
        is_masked_high: Raw | UnsetType = UNSET
        is_masked_low: Raw | UnsetType = UNSET


class _Unclean(Exception):
    """A line the fast path leaves to the exact reader."""


def _raw_length(raw: Any) -> int | None:
    """Elements of a raw JSON value if it is a flat list of scalars (None: not a list, so not length-checked)."""
    b = bytes(raw)
    if not b.startswith(b"["):
        return None
    inner = b[1:-1]
    if b"[" in inner or b"{" in inner or b'"' in inner:
        raise _Unclean                       # nested or strings: count with the exact reader
    return inner.count(b",") + 1 if inner.strip() else 0


def _stream(values: list | None, T: int) -> np.ndarray | None:
    """A weight stream over the record (float64 [T]); None when absent (null or all null)."""
    if values is None:
        return None
    if len(values) != T:
        raise _Unclean
    if values.count(None) == T:              # the stream is absent (prime-rl writes [None] * T)
        return None
    arr = np.array(values, dtype=np.float64)
    nan = np.isnan(arr)
    if nan.all():
        return None
    if nan.any() or not np.isfinite(arr).all():
        raise _Unclean                       # some nulls: a finding the exact reader writes
    return arr


class _Columns:
    def __init__(self):
        self.prompts, self.comps = Column("ids"), Column("ids")
        self.roll, self.stud, self.mask, self.source = Column("series"), Column("series"), Column("mask"), Column("source")
        self.streams: dict[str, Column] = {}
        self.n_tokens, self.groups, self.meta = 0, [], []
        self.all_masked = self.all_policy = True

    def add(self, rec: "_Record") -> None:
        toks = np.array(rec.token_ids, dtype=np.int64)
        T = len(toks)
        lm = np.array(rec.loss_mask, dtype=np.bool_)
        inf = np.array(rec.inference_logprobs, dtype=np.float64)
        trn = np.array(rec.trainer_logprobs, dtype=np.float64)
        if T == 0 or len(lm) != T or len(inf) != T or len(trn) != T or toks.min() < 0:
            raise _Unclean
        if rec.schema_version is not UNSET and rec.schema_version != 1:
            raise _Unclean
        for key in OTHER_KEYS:
            raw = getattr(rec, key)
            if raw is not UNSET and _raw_length(raw) not in (None, T):
                raise _Unclean
        if not lm.any():
            raise _Unclean
        start = int(lm.argmax())
        r, s = inf[start:], trn[start:]
        if not (np.isfinite(r).all() and np.isfinite(s).all()) or (r > 1e-6).any() or (s > 1e-6).any():
            raise _Unclean                   # missing values (findings) or a positive log-prob (an error)
        streams = {n: _stream(getattr(rec, n), T) for n in STREAM_FILL}
        eff = {n: (v[start:] if v is not None else None) for n, v in streams.items()}
        m = lm[start:]
        n = T - start
        self.prompts.append(toks[:start])
        self.comps.append(toks[start:])
        self.roll.append(r)
        self.stud.append(s)
        self.mask.append(m)
        fill = {k: (v if v is not None else np.full(n, STREAM_FILL[k])) for k, v in eff.items()}
        other = (fill["ce_weights"] != 0) & (fill["rl_weights"] == 0) & (fill["ref_kl_weights"] == 0) & (r == 0)
        src = np.where(m, np.where(other, OTHER, POLICY), np.where(r != 0, POLICY, CONTEXT)).astype(np.int8)
        self.source.append(src)
        self.all_masked &= bool(m.all())
        self.all_policy &= not src.any()
        for name, v in eff.items():
            col = self.streams.get(name)
            if v is not None and col is None:        # the first record that carries it: earlier rows get the fill
                col = self.streams[name] = Column("series")
                if self.n_tokens:
                    col.append(np.full(self.n_tokens, STREAM_FILL[name]), record=False)
            if col is not None:
                col.append(v if v is not None else np.full(n, STREAM_FILL[name]), record=False)
        self.n_tokens += n
        self.groups.append(rec.env_name if isinstance(rec.env_name, str) else None)
        scalars = {k: getattr(rec, k) for k in META if getattr(rec, k) is not UNSET}
        self.meta.append({"primerl": {**scalars, "prompt_tokens": start}})

    def batch(self) -> Batch:
        lengths = np.asarray(self.comps.lengths, dtype=np.int64)
        weights = {k: c.packed(lengths) for k, c in sorted(self.streams.items(), key=lambda kv: list(STREAM_FILL).index(kv[0]))}
        pool = tuple(n for n in ("rl_weights", "ref_kl_weights") if n in weights) or None   # train.py L496-520
        return build(FMT, self.prompts.packed(), completion_ids=self.comps.packed(),
                     mask=None if self.all_masked else self.mask.packed(),
                     token_source=None if self.all_policy else self.source.packed(),
                     rollout_logprobs=self.roll.packed(), student_logprobs=self.stud.packed(),
                     weights=weights or None, metric_pool=pool,
                     groups=self.groups if any(g is not None for g in self.groups) else None, meta=self.meta,
                     findings=[])


def read_primerl_fast(path: str | Path) -> Batch | None:
    """The file's :class:`Batch` as the exact reader builds it, or None where the exact reader must read it."""
    if msgspec is None:
        return None
    decode = msgspec.json.Decoder(_Record).decode
    cols = _Columns()
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    return None
                cols.add(decode(line))
    except (msgspec.DecodeError, _Unclean, OverflowError, ValueError, TypeError):
        return None
    if not cols.meta:
        return None
    return cols.batch()


__all__ = ["read_primerl_fast"]
