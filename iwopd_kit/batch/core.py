"""The data model: rows of prompt + completion in *completion coordinates*.

Token j of a row is the j-th *generated* token of that row (j = 0..L_b-1), never a column of a
padded tensor. Per-token fields (token ids, rollout / student / teacher log-probs, the mask) have
L_b values per row. They are stored packed (one 1-D tensor per field, :mod:`iwopd_kit.batch.ragged`);
the public attributes show them as ragged Python lists, built on first read. Padded tensors are
produced on demand, right-padded, with shape [B, L] where L = max_b L_b, together with a bool
``valid`` mask [B, L].

Missing values: ``None`` in the ragged lists, ``NaN`` in the tensors (converted in one place,
:mod:`iwopd_kit.batch.ragged`). A literal NaN in the input is an error (use ``None`` / JSON ``null`` for
"no value"); ``-inf`` is a legal value (teacher servers use it as a sentinel at padding) and is
rejected later only where it is used.

What each token is (filled by the readers from what the writer records): ``mask`` is the *loss
mask* (holes allowed inside a completion: a multi-turn sample's tool, user and template turns);
``token_source`` says who produced each token (:data:`TOKEN_SOURCES`); ``weights`` are named
per-token weight streams (prime-rl's ``rl_weights`` / ``ce_weights`` / ``ref_kl_weights``);
``groups`` name each row's group (environment); ``kept_ids`` are the engine's kept sets (top-p /
top-k) and ``kept_logmass`` the trainer's log-mass over them. The gap detectors and the pooled
mismatch metrics read only :meth:`Batch.policy_mask` tokens (docs/method.md).

JSONL schema, one row per line (every key but the first two optional)::

    {"prompt_ids": [int], "completion_ids": [int],
     "rollout_logprobs": [float|null] | null, "student_logprobs": ..., "teacher_logprobs": ...,
     "kept_logmass": [float|null] | null, "mask": [bool|0|1] | null,
     "token_source": ["policy"|"other_model"|"context"] | null, "weights": {name: [float|null]} | null,
     "group": str | null, "kept_ids": [[int] | null] | null, "metric_pool": [str] | null,
     "finish_reason": str | null, "sampling": {...} | null, "meta": {...}}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .fields import RAGGED, Rows, Streams, batch_records, check_padded, pack_field, ragged_from_padded  # noqa: F401
from .ragged import (
    FLOATS, KEPT_LOGMASS, ROLLOUT_LOGPROBS, SERIES, STUDENT_LOGPROBS, TEACHER_LOGPROBS, TOKEN_SOURCES,
    BatchError, Column, Packed, RecordBuilder, group_value, ids_row, kept_row, locate, pack_padded, rows_of,
)
from .sampling import SamplingSettings

POLICY = TOKEN_SOURCES.index("policy")


@dataclass(frozen=True)
class Batch:
    """B rows of (prompt, completion) with optional per-token series, in completion coordinates.

    Attributes:
        prompt_ids: B lists of prompt token ids (BOS included when the tokenizer adds one).
        completion_ids: B lists of generated token ids y_0..y_{L_b-1} (a generated EOS included).
        rollout_logprobs / student_logprobs / teacher_logprobs: None, or B lists of L_b floats
            (None = missing) with the log-prob of y_j.
        kept_logmass: None, or B lists of L_b floats: log S_t of the kept set (see ``kept_ids``).
        mask: the loss mask: None (every completion token counts) or B lists of L_b bools.
        token_source: None (all ``policy``) or B lists of L_b names from :data:`TOKEN_SOURCES`.
        weights: None or {stream name: B lists of L_b floats (None = missing)}.
        groups / kept_ids: None, or B group names / B lists of L_b kept sets (None where not recorded).
        metric_pool: None, or the weight streams that define the writer's own metric pool: the pooled
            mismatch metrics read the policy tokens where one of them is non-zero (:meth:`metric_mask`).
        finish_reasons: B of "stop" / "length" / None.
        sampling: how the completions were sampled, if known.
        scoring: series name -> temperature it was scored at (filled by ``score``).
        meta: B free dicts (kept through JSONL).
        findings: problems met while converting from another format (class B, say), as dicts
            with the keys of ``alignment.Finding``; ``check_alignment`` reports them.

    The per-token fields are stored packed (:class:`iwopd_kit.batch.ragged.Packed`, lossless dtypes) and
    each list attribute is built the first time it is read; the tensor methods (``series``,
    ``tokens``, ``valid``, ...) read the packed form, so a batch that is only checked or trained
    on never holds Python lists of its tokens.
    """

    prompt_ids: list[list[int]] = Rows(required=True)
    completion_ids: list[list[int]] = Rows(required=True)
    rollout_logprobs: list[list[float | None]] | None = Rows()
    student_logprobs: list[list[float | None]] | None = Rows()
    teacher_logprobs: list[list[float | None]] | None = Rows()
    kept_logmass: list[list[float | None]] | None = Rows()
    mask: list[list[bool]] | None = Rows()
    token_source: list[list[str]] | None = Rows()
    weights: dict[str, list[list[float | None]]] | None = Streams()
    groups: list[str | None] | None = None
    kept_ids: list[list[list[int] | None]] | None = None
    metric_pool: tuple[str, ...] | None = None
    finish_reasons: list[str | None] | None = None
    sampling: SamplingSettings | None = None
    scoring: dict[str, float] = field(default_factory=dict)
    meta: list[dict[str, Any]] | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    # small padded tensors (the padding mask) kept per key; a Batch is immutable
    _cache: dict[tuple, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = self.__dict__["_packed"]
        p_in, c_in = raw["prompt_ids"], raw["completion_ids"]
        for v in (p_in, c_in):
            if not isinstance(v, (list, tuple, Packed)):
                raise BatchError("prompt_ids and completion_ids must be lists of rows (lists of token ids)")
        n_p, n_c = _nrows(p_in), _nrows(c_in)
        if n_p != n_c:
            raise BatchError(f"prompt_ids has {n_p} rows but completion_ids has {n_c}; expected one prompt per completion")
        if n_c == 0:
            raise BatchError("the batch has no rows; expected at least one")
        packed: dict[str, Packed | None] = {}
        for name in ("prompt_ids", "completion_ids"):
            v = raw[name]
            if not isinstance(v, Packed):
                col = Column("ids")
                for b, r in enumerate(v):
                    col.append(ids_row(name, b, r))
                v = col.packed()
            packed[name] = v
        lengths = packed["completion_ids"].lengths
        if (lengths == 0).any():
            b = int(np.flatnonzero(lengths == 0)[0])
            raise BatchError(f"row {b}: empty completion (0 tokens); expected at least one generated token")
        for name in RAGGED[2:]:
            packed[name] = pack_field(name, raw.get(name), lengths)
        streams = self.__dict__.get("_weights") or {}
        set_ = object.__setattr__
        set_(self, "_weights", {str(k): pack_field(f"weights[{k!r}]", v, lengths) for k, v in streams.items()
                                if v is not None} or None)
        set_(self, "_packed", packed)
        set_(self, "_lists", {})
        for name, n in (("finish_reasons", len(lengths)), ("meta", len(lengths)), ("groups", len(lengths)),
                        ("kept_ids", len(lengths))):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise BatchError(f"{name} has {len(v)} entries but the batch has {n} rows")
        if self.groups is not None:
            set_(self, "groups", [group_value(b, g) for b, g in enumerate(self.groups)])
        if self.metric_pool is not None:
            pool = tuple(str(n) for n in self.metric_pool)
            unknown = [n for n in pool if n not in (self.__dict__["_weights"] or {})]
            if unknown:
                raise BatchError(f"metric_pool names weight stream(s) {unknown} the batch does not have; it has "
                                 f"{sorted(self.__dict__['_weights'] or {})}")
            set_(self, "metric_pool", pool)
        if self.kept_ids is not None:
            set_(self, "kept_ids", [kept_row(b, k, n) for b, (k, n) in enumerate(zip(self.kept_ids, lengths.tolist()))])
        if self.sampling is not None and not isinstance(self.sampling, SamplingSettings):
            set_(self, "sampling", SamplingSettings.from_dict(dict(self.sampling)))

    def packed(self, name: str) -> Packed | None:
        """The packed form of a per-token field (``values`` 1-D, ``lengths`` [B]); None if absent."""
        if name not in RAGGED:
            raise BatchError(f"unknown per-token field {name!r}; expected one of {RAGGED}")
        return self._packed[name]

    # -- shape -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """B, the number of rows."""
        return len(self._packed["completion_ids"].lengths)

    def __len__(self) -> int:
        return self.size

    @property
    def lengths(self) -> list[int]:
        """L_b, the completion length of each row."""
        return self._packed["completion_ids"].lengths.tolist()

    @property
    def prompt_lengths(self) -> list[int]:
        return self._packed["prompt_ids"].lengths.tolist()

    @property
    def width(self) -> int:
        """L = max_b L_b, the width of the padded [B, L] tensors."""
        return int(self._packed["completion_ids"].lengths.max())

    # -- padded tensors --------------------------------------------------------------------
    def _padded(self, name: str, fill: Any, dtype: torch.dtype) -> torch.Tensor:
        """Right-pad a packed field into a new [B, L] tensor of ``dtype`` (one scatter, no per-row work)."""
        values = self._packed[name].values
        B, L = self.size, self.width
        if values.numel() == B * L:                   # no padding: one converting copy
            return values.view(B, L).to(dtype, copy=True)
        out = torch.full((B, L), fill, dtype=dtype)
        return out.masked_scatter_(self.padding_mask(), values.to(dtype))   # no index tensor (x[mask] = v builds one)

    def tokens(self, pad_id: int = 0) -> torch.Tensor:
        """Completion ids, LongTensor [B, L], right-padded with ``pad_id``."""
        return self._padded("completion_ids", pad_id, torch.long)

    def padding_mask(self) -> torch.Tensor:
        """BoolTensor [B, L]: True for real completion tokens (j < L_b)."""
        hit = self._cache.get(("padding_mask",))
        if hit is None:
            lengths = torch.from_numpy(self._packed["completion_ids"].lengths)
            hit = torch.arange(self.width)[None, :] < lengths[:, None]
            self._cache[("padding_mask",)] = hit
        return hit.clone()

    def valid(self) -> torch.Tensor:
        """BoolTensor [B, L]: real completion tokens that count (padding mask AND ``mask``)."""
        out = self.padding_mask()
        if self._packed["mask"] is not None:
            out &= self._padded("mask", False, torch.bool)
        return out

    def series(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """FloatTensor [B, L] of a per-token series (one of :data:`FLOATS`); NaN where missing and at padding."""
        if name not in FLOATS:
            raise BatchError(f"unknown series {name!r}; expected one of {FLOATS}")
        if self._packed[name] is None:
            raise BatchError(f"the batch has no {name}; produce it first (rollout / score) or load it")
        return self._padded(name, float("nan"), dtype)

    def has(self, name: str) -> bool:
        return self._packed[name] is not None

    # -- what each token is ----------------------------------------------------------------
    loss_mask = property(lambda self: self.mask, doc="The loss mask (= ``mask``): the tokens that count; None when all do.")

    def source_codes(self) -> torch.Tensor:
        """Int8Tensor [B, L]: index in :data:`TOKEN_SOURCES` per token (0 = policy), -1 at padding."""
        if self._packed["token_source"] is None:
            return torch.zeros(self.size, self.width, dtype=torch.int8).masked_fill_(~self.padding_mask(), -1)
        return self._padded("token_source", -1, torch.int8)

    def policy_mask(self) -> torch.Tensor:
        """BoolTensor [B, L]: loss-masked tokens sampled by the policy (``valid()`` and source ``policy``);
        the tokens the gap detectors and the pooled mismatch metrics read."""
        out = self.valid()
        return out if self._packed["token_source"] is None else out & (self.source_codes() == POLICY)

    def metric_mask(self) -> torch.Tensor:
        """BoolTensor [B, L]: the tokens the pooled mismatch metrics read, as the writer's framework pools them:
        ``policy_mask()``, and where ``metric_pool`` names weight streams, a non-zero weight in one of them
        (prime-rl's ``mismatch_kl`` leaves out tokens whose rl and ref_kl weights are both 0)."""
        out = self.policy_mask()
        if self.metric_pool:
            out &= torch.stack([self.weight(n, torch.float64).nan_to_num(0.0) != 0 for n in self.metric_pool]).any(0)
        return out

    def segments(self, mask: torch.Tensor | None = None) -> list[tuple[int, int, int]]:
        """Contiguous runs of ``mask`` (default ``policy_mask()``) per row: (row, start, end), end exclusive,
        in completion coordinates (a multi-turn row has one run per assistant turn)."""
        m = (self.policy_mask() if mask is None else mask).to(torch.int8)
        edges = torch.diff(torch.nn.functional.pad(m, (1, 1)), dim=1)        # (B, L + 1): +1 starts, -1 ends
        starts, ends = (edges == 1).nonzero().tolist(), (edges == -1).nonzero().tolist()
        return [(b, j, e) for (b, j), (_, e) in zip(starts, ends)]

    def weight(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """FloatTensor [B, L] of the weight stream ``name``; NaN where missing and at padding."""
        streams = self.__dict__.get("_weights") or {}
        if name not in streams:
            raise BatchError(f"the batch has no weight stream {name!r}; it has {sorted(streams)}")
        out = torch.full((self.size, self.width), float("nan"), dtype=dtype)
        return out.masked_scatter_(self.padding_mask(), streams[name].values.to(dtype))

    def with_groups_from_meta(self, key: str) -> "Batch":
        """A new batch whose ``groups`` are ``meta[b][key]`` (``--group-by KEY``); errors name the row."""
        metas = self.meta or [{}] * self.size
        groups = []
        for b, m in enumerate(metas):
            if not isinstance(m, dict) or m.get(key) is None:
                have = sorted(m) if isinstance(m, dict) else []
                raise BatchError(f"row {b}: meta has no {key!r} to group by (its keys: {have}); expected every row to "
                                 "name its group")
            groups.append(str(m[key]))
        return self.replace(groups=groups)

    def with_meta(self, **values: Any) -> "Batch":
        """A new batch with ``meta[b][key] = value`` for every row (a list of B values sets one per row)."""
        metas = [dict(m or {}) for m in (self.meta or [{}] * self.size)]
        for key, v in values.items():
            per_row = v if isinstance(v, list) else [v] * self.size
            if len(per_row) != self.size:
                raise BatchError(f"with_meta({key}=...): {len(per_row)} values for {self.size} rows")
            for m, x in zip(metas, per_row):
                m[key] = x
        return self.replace(meta=metas)

    # -- new batches -----------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Batch":
        """A new batch with some fields changed (the per-token fields not changed stay packed)."""
        kw = {f.name: (self._packed[f.name] if f.name in RAGGED else self.__dict__.get("_weights") if f.name == "weights"
                       else getattr(self, f.name))
              for f in dataclasses.fields(self) if f.init}
        kw.update(changes)
        return Batch(**kw)

    def with_series(self, name: str, values: torch.Tensor | Sequence[Sequence[float | None]],
                    temperature: float | None = None) -> "Batch":
        """A new batch with series ``name`` set from a [B, L'] tensor (L' >= L_b; padding cut) or ragged lists.

        NaN entries of a tensor become missing values.
        """
        if name not in FLOATS:
            raise BatchError(f"unknown series {name!r}; expected one of {FLOATS}")
        if isinstance(values, torch.Tensor):
            check_padded(values, self.lengths, name)
            valid = self.padding_mask()
            flat = pack_padded(values[:, : self.width], valid, name)
            values = Packed(flat, self._packed["completion_ids"].lengths, "series")
        scoring = dict(self.scoring)
        if temperature is not None:
            scoring[name] = float(temperature)
        return self.replace(**{name: values}, scoring=scoring)

    def select(self, rows: Sequence[int]) -> "Batch":
        """A new batch with the given rows, in the given order."""
        rows = list(rows)
        for r in rows:
            if not 0 <= r < self.size:
                raise BatchError(f"row index {r} out of range for a batch of {self.size} rows")
        pick = lambda xs: None if xs is None else [xs[r] for r in rows]  # noqa: E731
        ragged = {k: (None if p is None else p.select(rows)) for k, p in self._packed.items()}
        weights = {k: p.select(rows) for k, p in (self.__dict__.get("_weights") or {}).items()} or None
        return self.replace(**ragged, weights=weights, groups=pick(self.groups), kept_ids=pick(self.kept_ids),
                            finish_reasons=pick(self.finish_reasons), meta=pick(self.meta), findings=[])

    # -- JSONL -----------------------------------------------------------------------------
    def _rows(self, name: str) -> list | None:
        """The lists of a field, without keeping them (the cached ones if already built)."""
        shown = self.__dict__["_lists"].get(name)
        if shown is not None:
            return shown
        p = self._packed[name]
        return None if p is None else p.rows()

    def to_records(self) -> list[dict[str, Any]]:
        """One JSONL-style dict per row (the schema in this module's docstring)."""
        return batch_records(self)

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], source: str = "") -> "Batch":
        """Build a batch from JSONL-style records; errors name the row (0-based) and its line (row + 1).

        Each record is validated and packed as it comes (``records`` may be a generator), so no
        Python list of a record's values outlives it.
        """
        builder = RecordBuilder(source)
        for b, rec in enumerate(records):
            builder.add(b, rec)
        cols = builder.build()
        samplings = cols.pop("samplings")
        sampling = SamplingSettings.from_dict(samplings[0], "sampling") if samplings else None
        if any(SamplingSettings.from_dict(s, "sampling") != sampling for s in samplings[1:]):
            raise BatchError("records disagree on 'sampling'; a batch has one set of sampling settings")
        pools = {tuple(p) for p in cols.pop("metric_pools")}
        if len(pools) > 1:
            raise BatchError(f"records disagree on 'metric_pool' ({sorted(pools)}); a batch has one metric pool")
        cols["metric_pool"] = next(iter(pools), None)
        metas = cols["meta"]
        scoring = metas[0].get("scoring", {}) if metas else {}
        try:
            return cls(**cols, sampling=sampling, scoring=dict(scoring))
        except BatchError as e:
            raise locate(e, source) from None


def _nrows(v: Any) -> int:
    return len(v.lengths) if isinstance(v, Packed) else len(v)


def write_jsonl(batch: Batch, path: str | Path) -> Path:
    """Write one JSON object per row (the schema in this module's docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for rec in batch.to_records():
            f.write(json.dumps(rec, allow_nan=True) + "\n")
    return path


def read_jsonl(path: str | Path) -> Batch:
    """Read a JSONL dump; errors name the line (1-based) and the key.

    Streams: each line is parsed, validated and packed before the next is read.
    """
    path = Path(path)
    if not path.exists():
        raise BatchError(f"{path}: no such file")

    def records():
        with path.open() as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    raise BatchError(f"{path}: line {i} is empty; expected one JSON object per line")
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise BatchError(f"{path}: line {i} is not valid JSON ({e.msg} at column {e.colno}); "
                                     "the file may be truncated") from None

    return Batch.from_records(records(), source=str(path))
