"""The data model: rows of prompt + completion in *completion coordinates*.

Token j of a row is the j-th *generated* token of that row (j = 0..L_b-1), never a column of a
padded tensor. Per-token series (rollout / student / teacher log-probs, the mask) are ragged lists
of length L_b. Padded tensors are produced on demand, right-padded, with shape [B, L] where
L = max_b L_b, together with a bool ``valid`` mask [B, L].

Missing values: ``None`` in the ragged lists, ``NaN`` in the padded float tensors. A literal NaN in
the input is an error (use ``None`` / JSON ``null`` for "no value"); ``-inf`` is a legal value
(teacher servers use it as a sentinel at padding) and is rejected later only where it is used.

JSONL schema, one row per line::

    {"prompt_ids": [int], "completion_ids": [int],
     "rollout_logprobs": [float|null] | null, "student_logprobs": ..., "teacher_logprobs": ...,
     "mask": [bool|0|1] | null, "finish_reason": str | null,
     "sampling": {...} | null, "meta": {...}}
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

SERIES: tuple[str, ...] = ("rollout_logprobs", "student_logprobs", "teacher_logprobs")
"""The per-token float series a batch can carry, all in completion coordinates."""

LOGPROBS_MODES: tuple[str, ...] = ("raw_logprobs", "processed_logprobs")


class BatchError(ValueError):
    """Bad input: the message names the row, the position (or key) and what was expected."""


@dataclass(frozen=True)
class SamplingSettings:
    """How the completions were sampled (recorded by every rollout engine).

    ``logprobs_mode`` follows vLLM: ``raw_logprobs`` are log_softmax(logits) whatever the
    temperature; ``processed_logprobs`` are after temperature and top-p/top-k (renormalised).
    ``top_k`` 0 means off.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    logprobs_mode: str = "raw_logprobs"
    seed: int | None = None
    max_tokens: int | None = None
    engine: str = ""

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise BatchError(f"sampling.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise BatchError(f"sampling.top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise BatchError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise BatchError(f"sampling.logprobs_mode must be one of {LOGPROBS_MODES}, got {self.logprobs_mode!r}")

    @property
    def logprob_temperature(self) -> float:
        """The temperature the rollout log-probs are computed at (1.0 in raw mode)."""
        return self.temperature if self.logprobs_mode == "processed_logprobs" else 1.0

    @property
    def truncates(self) -> bool:
        """True when top-p / top-k cut the distribution before sampling."""
        return self.top_p < 1.0 or self.top_k > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "sampling") -> "SamplingSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BatchError(f"{where}: unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def _check_series_row(name: str, row: int, values: Sequence[Any], length: int) -> list[float | None]:
    if len(values) != length:
        raise BatchError(
            f"row {row}: {name} has {len(values)} values but completion_ids has {length} tokens; "
            f"expected one value per completion token (use null for a missing value)"
        )
    out: list[float | None] = []
    for j, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BatchError(f"row {row}, position {j}: {name} must be a number or null, got {v!r}")
        v = float(v)
        if math.isnan(v):
            raise BatchError(f"row {row}, position {j}: {name} is NaN; expected a log-prob (use null for a missing value)")
        if v > 1e-6 and name in SERIES:
            raise BatchError(f"row {row}, position {j}: {name} = {v} is a positive log-prob; expected a value <= 0")
        out.append(v)
    return out


def _check_ids(name: str, row: int, ids: Any) -> list[int]:
    if not isinstance(ids, (list, tuple)):
        raise BatchError(f"row {row}: {name} must be a list of token ids, got {type(ids).__name__}")
    out = []
    for j, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise BatchError(f"row {row}, position {j}: {name} must hold non-negative int token ids, got {t!r}")
        out.append(int(t))
    return out


@dataclass(frozen=True)
class Batch:
    """B rows of (prompt, completion) with optional per-token series, in completion coordinates.

    Attributes:
        prompt_ids: B lists of prompt token ids (BOS included when the tokenizer adds one).
        completion_ids: B lists of generated token ids y_0..y_{L_b-1} (a generated EOS included).
        rollout_logprobs / student_logprobs / teacher_logprobs: None, or B lists of L_b floats
            (None = missing) with the log-prob of y_j.
        mask: None (every completion token counts) or B lists of L_b bools.
        finish_reasons: B of "stop" / "length" / None.
        sampling: how the completions were sampled, if known.
        scoring: series name -> temperature it was scored at (filled by ``score``).
        meta: B free dicts (kept through JSONL).
        findings: problems met while converting from another format (class B, say), as dicts
            with the keys of ``alignment.Finding``; ``check_alignment`` reports them.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rollout_logprobs: list[list[float | None]] | None = None
    student_logprobs: list[list[float | None]] | None = None
    teacher_logprobs: list[list[float | None]] | None = None
    mask: list[list[bool]] | None = None
    finish_reasons: list[str | None] | None = None
    sampling: SamplingSettings | None = None
    scoring: dict[str, float] = field(default_factory=dict)
    meta: list[dict[str, Any]] | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    # padded tensors built from the ragged lists, kept per (what, dtype); a Batch is immutable
    # (every change goes through ``replace`` / ``with_series``, which start an empty cache)
    _cache: dict[tuple, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_ids, (list, tuple)) or not isinstance(self.completion_ids, (list, tuple)):
            raise BatchError("prompt_ids and completion_ids must be lists of rows (lists of token ids)")
        if len(self.prompt_ids) != len(self.completion_ids):
            raise BatchError(
                f"prompt_ids has {len(self.prompt_ids)} rows but completion_ids has {len(self.completion_ids)}; "
                "expected one prompt per completion"
            )
        if len(self.completion_ids) == 0:
            raise BatchError("the batch has no rows; expected at least one")
        set_ = object.__setattr__
        set_(self, "prompt_ids", [_check_ids("prompt_ids", b, p) for b, p in enumerate(self.prompt_ids)])
        comps = [_check_ids("completion_ids", b, c) for b, c in enumerate(self.completion_ids)]
        for b, c in enumerate(comps):
            if len(c) == 0:
                raise BatchError(f"row {b}: empty completion (0 tokens); expected at least one generated token")
        set_(self, "completion_ids", comps)
        lengths = [len(c) for c in comps]
        for name in SERIES:
            rows = getattr(self, name)
            if rows is None:
                continue
            if len(rows) != len(comps):
                raise BatchError(f"{name} has {len(rows)} rows but the batch has {len(comps)}")
            set_(self, name, [
                _check_series_row(name, b, [None] * lengths[b] if r is None else r, lengths[b])
                for b, r in enumerate(rows)
            ])
        if self.mask is not None:
            if len(self.mask) != len(comps):
                raise BatchError(f"mask has {len(self.mask)} rows but the batch has {len(comps)}")
            masks = []
            for b, m in enumerate(self.mask):
                if m is None:
                    masks.append([True] * lengths[b])
                    continue
                if len(m) != lengths[b]:
                    raise BatchError(f"row {b}: mask has {len(m)} values but completion_ids has {lengths[b]} tokens")
                for j, v in enumerate(m):
                    if v not in (0, 1, True, False):
                        raise BatchError(f"row {b}, position {j}: mask must be a bool or 0/1, got {v!r}")
                masks.append([bool(v) for v in m])
            set_(self, "mask", masks)
        for name, n in (("finish_reasons", len(comps)), ("meta", len(comps))):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise BatchError(f"{name} has {len(v)} entries but the batch has {n} rows")
        if self.sampling is not None and not isinstance(self.sampling, SamplingSettings):
            set_(self, "sampling", SamplingSettings.from_dict(dict(self.sampling)))

    # -- shape -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """B, the number of rows."""
        return len(self.completion_ids)

    def __len__(self) -> int:
        return self.size

    @property
    def lengths(self) -> list[int]:
        """L_b, the completion length of each row."""
        return [len(c) for c in self.completion_ids]

    @property
    def prompt_lengths(self) -> list[int]:
        return [len(p) for p in self.prompt_ids]

    @property
    def width(self) -> int:
        """L = max_b L_b, the width of the padded [B, L] tensors."""
        return max(self.lengths)

    # -- padded tensors --------------------------------------------------------------------
    def _cached(self, key: tuple, build) -> torch.Tensor:
        """A clone of the cached tensor for ``key`` (built once by ``build()``); callers may mutate it."""
        hit = self._cache.get(key)
        if hit is None:
            hit = build()
            self._cache[key] = hit
        return hit.clone()

    def _padded(self, rows: Sequence[Sequence[Any]], fill: Any, dtype: torch.dtype) -> torch.Tensor:
        """Right-pad ragged rows into a [B, L] tensor with one conversion (no per-row tensor).

        For float dtypes ``None`` becomes NaN (numpy's float conversion does that).
        """
        flat: list[Any] = []
        for r in rows:
            flat.extend(r)
        out = torch.full((self.size, self.width), fill, dtype=dtype)
        if flat:
            np_dtype = {torch.float32: np.float32, torch.float64: np.float64, torch.long: np.int64,
                        torch.bool: np.bool_}.get(dtype)
            values = (torch.from_numpy(np.array(flat, dtype=np_dtype)) if np_dtype is not None
                      else torch.tensor([float("nan") if v is None else v for v in flat], dtype=dtype))
            out[self._cached(("padding_mask",), self._build_padding_mask)] = values.to(dtype)
        return out

    def tokens(self, pad_id: int = 0) -> torch.Tensor:
        """Completion ids, LongTensor [B, L], right-padded with ``pad_id``."""
        return self._cached(("tokens", pad_id), lambda: self._padded(self.completion_ids, pad_id, torch.long))

    def _build_padding_mask(self) -> torch.Tensor:
        lengths = torch.tensor(self.lengths)
        return torch.arange(self.width)[None, :] < lengths[:, None]

    def padding_mask(self) -> torch.Tensor:
        """BoolTensor [B, L]: True for real completion tokens (j < L_b)."""
        return self._cached(("padding_mask",), self._build_padding_mask)

    def valid(self) -> torch.Tensor:
        """BoolTensor [B, L]: real completion tokens that count (padding mask AND ``mask``)."""
        def build() -> torch.Tensor:
            out = self.padding_mask()
            if self.mask is not None:
                out &= self._padded(self.mask, False, torch.bool)
            return out
        return self._cached(("valid",), build)

    def series(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """FloatTensor [B, L] of a per-token series; NaN where missing and at padding."""
        rows = self._series_rows(name)
        return self._cached(("series", name, dtype), lambda: self._padded(rows, float("nan"), dtype))

    def has(self, name: str) -> bool:
        return getattr(self, name) is not None

    def _series_rows(self, name: str) -> list[list[float | None]]:
        if name not in SERIES:
            raise BatchError(f"unknown series {name!r}; expected one of {SERIES}")
        rows = getattr(self, name)
        if rows is None:
            raise BatchError(f"the batch has no {name}; produce it first (rollout / score) or load it")
        return rows

    # -- new batches -----------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Batch":
        return dataclasses.replace(self, **changes)

    def with_series(self, name: str, values: torch.Tensor | Sequence[Sequence[float | None]],
                    temperature: float | None = None) -> "Batch":
        """A new batch with series ``name`` set from a [B, L'] tensor (L' >= L_b; padding cut) or ragged lists.

        NaN entries of a tensor become ``None`` (missing).
        """
        if name not in SERIES:
            raise BatchError(f"unknown series {name!r}; expected one of {SERIES}")
        rows = ragged_from_padded(values, self.lengths, name) if isinstance(values, torch.Tensor) else values
        scoring = dict(self.scoring)
        if temperature is not None:
            scoring[name] = float(temperature)
        return dataclasses.replace(self, **{name: rows}, scoring=scoring)

    def select(self, rows: Sequence[int]) -> "Batch":
        """A new batch with the given rows, in the given order."""
        for r in rows:
            if not 0 <= r < self.size:
                raise BatchError(f"row index {r} out of range for a batch of {self.size} rows")
        pick = lambda xs: None if xs is None else [xs[r] for r in rows]  # noqa: E731
        return dataclasses.replace(
            self, prompt_ids=pick(self.prompt_ids), completion_ids=pick(self.completion_ids),
            rollout_logprobs=pick(self.rollout_logprobs), student_logprobs=pick(self.student_logprobs),
            teacher_logprobs=pick(self.teacher_logprobs), mask=pick(self.mask),
            finish_reasons=pick(self.finish_reasons), meta=pick(self.meta), findings=[],
        )

    # -- JSONL -----------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        recs = []
        for b in range(self.size):
            rec: dict[str, Any] = {"prompt_ids": self.prompt_ids[b], "completion_ids": self.completion_ids[b]}
            for name in SERIES:
                rows = getattr(self, name)
                rec[name] = None if rows is None else rows[b]
            rec["mask"] = None if self.mask is None else self.mask[b]
            rec["finish_reason"] = None if self.finish_reasons is None else self.finish_reasons[b]
            rec["sampling"] = None if self.sampling is None else self.sampling.to_dict()
            meta = dict(self.meta[b]) if self.meta is not None else {}
            if self.scoring:
                meta.setdefault("scoring", self.scoring)
            rec["meta"] = meta
            recs.append(rec)
        return recs

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], source: str = "") -> "Batch":
        """Build a batch from JSONL-style records; errors name the row (0-based) and its line (row + 1)."""
        where = f"{source}: row" if source else "row"
        records = list(records)
        if not records:
            raise BatchError("no records; expected at least one row")
        allowed = {"prompt_ids", "completion_ids", *SERIES, "mask", "finish_reason", "sampling", "meta"}
        cols: dict[str, list[Any]] = {k: [] for k in allowed}
        for b, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise BatchError(f"{where} {b} (line {b + 1}): expected a JSON object, got {type(rec).__name__}")
            unknown = sorted(set(rec) - allowed)
            if unknown:
                raise BatchError(f"{where} {b} (line {b + 1}): unknown key(s) {unknown}; expected keys from {sorted(allowed)}")
            for key in ("prompt_ids", "completion_ids"):
                if key not in rec:
                    raise BatchError(f"{where} {b} (line {b + 1}): missing required key {key!r}")
            for k in allowed:
                cols[k].append(rec.get(k))
        series = {}
        for name in SERIES:
            present = [v is not None for v in cols[name]]
            series[name] = cols[name] if any(present) else None
        samplings = [s for s in cols["sampling"] if s is not None]
        sampling = SamplingSettings.from_dict(samplings[0], "sampling") if samplings else None
        if any(SamplingSettings.from_dict(s, "sampling") != sampling for s in samplings[1:]):
            raise BatchError("records disagree on 'sampling'; a batch has one set of sampling settings")
        metas = [dict(m) if isinstance(m, dict) else {} for m in cols["meta"]]
        scoring = metas[0].get("scoring", {}) if metas else {}
        try:
            return cls(
                prompt_ids=cols["prompt_ids"], completion_ids=cols["completion_ids"], **series,
                mask=cols["mask"] if any(m is not None for m in cols["mask"]) else None,
                finish_reasons=cols["finish_reason"], sampling=sampling, scoring=dict(scoring), meta=metas,
            )
        except BatchError as e:
            msg = re.sub(r"^row (\d+)", lambda m: f"{where} {m.group(1)} (line {int(m.group(1)) + 1})", str(e))
            raise BatchError(f"{source}: {msg}" if source and msg == str(e) else msg) from None


def ragged_from_padded(values: torch.Tensor, lengths: Sequence[int], name: str = "values") -> list[list[float | None]]:
    """Cut a right-padded [B, L'] tensor to ragged rows of lengths L_b; NaN becomes None."""
    if values.dim() != 2 or values.shape[0] != len(lengths):
        raise BatchError(f"{name}: expected a [B, L] tensor with B={len(lengths)}, got shape {tuple(values.shape)}")
    if values.shape[1] < max(lengths):
        raise BatchError(f"{name}: tensor has {values.shape[1]} columns but the longest completion has {max(lengths)}")
    v = values.detach().to("cpu", torch.float64).tolist()
    return [[None if math.isnan(x) else x for x in row[:n]] for row, n in zip(v, lengths)]


def write_jsonl(batch: Batch, path: str | Path) -> Path:
    """Write one JSON object per row (the schema in this module's docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for rec in batch.to_records():
            f.write(json.dumps(rec, allow_nan=True) + "\n")
    return path


def read_jsonl(path: str | Path) -> Batch:
    """Read a JSONL dump; errors name the line (1-based) and the key."""
    path = Path(path)
    if not path.exists():
        raise BatchError(f"{path}: no such file")
    records = []
    with path.open() as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                raise BatchError(f"{path}: line {i} is empty; expected one JSON object per line")
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BatchError(f"{path}: line {i} is not valid JSON ({e.msg} at column {e.colno}); "
                                 "the file may be truncated") from None
    return Batch.from_records(records, source=str(path))
