"""One checked step -> the store's tables (pyarrow): tokens, rows, the step, its groups, its findings.

Token order is the batch's packed order: row by row (the step's rows, in file order), position 0..L_b-1
within a row (completion coordinates). A value a source does not have is null, never zero.

The metrics of a row and of a group pool Δ = student − rollout over the row's (group's) *counted*
tokens: ``batch.metric_mask()`` (loss-masked, sampled by the policy, in the writer's metric pool) where
both log-probs are finite.
The step's pooled metrics are the check's own (``AlignmentReport.metrics``), and a group's are the
check's ``group_metrics`` when the report has them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..alignment.core import AlignmentReport
from ..alignment.kinds import KINDS
from ..alignment.mismatch import MISMATCH_KEYS, metrics_from_delta
from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS, TOKEN_SOURCES, Batch
from ..objective import advantage, prefix_weights
from .batches import packed_weights, rl_advantages, row_groups, row_rewards
from .steps import rank_number
from .store import KIND_COLUMNS, METRICS, STREAMS

F64 = pa.float64()


NULL_CHUNK = 1 << 16
_NULLS: dict[pa.DataType, pa.Array] = {}


def nulls(n: int, type_=F64) -> pa.ChunkedArray:
    """``n`` nulls as slices of one shared 65,536-null array: a series a source lacks costs no memory per token
    (``pa.nulls(n, float64)`` allocates 8 bytes per token)."""
    chunk = _NULLS.get(type_)
    if chunk is None:
        chunk = _NULLS[type_] = pa.nulls(NULL_CHUNK, type_)
    full, rest = divmod(n, NULL_CHUNK)
    return pa.chunked_array([chunk] * full + ([chunk.slice(0, rest)] if rest or not full else []), type_)


def _col(x: np.ndarray | None, n: int, type_=F64) -> pa.Array | pa.ChunkedArray:
    """A float column: NaN -> null; a missing series -> all null."""
    if x is None:
        return nulls(n, type_)
    return pa.array(x, type=type_, from_pandas=True)


def _flat(batch: Batch, t: torch.Tensor) -> np.ndarray:
    """[B, L] -> the real tokens, row by row (the packed order)."""
    return t[batch.padding_mask()].numpy()


def _series(batch: Batch, name: str) -> np.ndarray | None:
    p = batch.packed(name)
    return None if p is None else p.values.to(torch.float64).numpy()


def pool_mask(batch: Batch) -> torch.Tensor:
    """[B, L] bool: the tokens the writer's framework pools its mismatch metrics over (``Batch.metric_mask()``:
    policy tokens, less those outside the writer's metric pool), ``policy_mask()`` for a batch without one."""
    return batch.metric_mask()


def counted(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(counted [B, L] bool, Δ float64 [B, L] or None): the tokens the row / group metrics pool (the metric pool
    where both log-probs are finite), and Δ there."""
    pm = pool_mask(batch)
    if not (batch.has(ROLLOUT_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        return torch.zeros_like(pm), None
    d = batch.series(STUDENT_LOGPROBS, torch.float64) - batch.series(ROLLOUT_LOGPROBS, torch.float64)
    return pm & torch.isfinite(d), d


def flat_masks(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(policy [N] bool, counted [N] bool, Δ [N] float64 or None)`` over the real tokens in the packed order
    (N = Σ L_b): :meth:`Batch.policy_mask`, :func:`counted` and Δ without a padded [B, L] copy."""
    n = int(batch.packed("completion_ids").lengths.sum())
    m, src = batch.packed("mask"), batch.packed("token_source")
    policy = np.ones(n, np.bool_) if m is None else m.values.numpy().astype(np.bool_)
    if src is not None:
        policy &= src.values.numpy() == TOKEN_SOURCES.index("policy")
    if not (batch.has(ROLLOUT_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        return policy, np.zeros(n, np.bool_), None
    pool = policy.copy()
    if batch.metric_pool:                               # Batch.metric_mask: a non-zero weight in a pool stream
        streams, hit = packed_weights(batch), np.zeros(n, np.bool_)
        for name in batch.metric_pool:
            hit |= np.nan_to_num(streams[name].values.numpy().astype(np.float64), nan=0.0) != 0
        pool &= hit
    d = _series(batch, STUDENT_LOGPROBS) - _series(batch, ROLLOUT_LOGPROBS)
    return policy, pool & np.isfinite(d), d


def token_kinds(batch: Batch, report: AlignmentReport) -> torch.Tensor:
    """int8 [B, L]: index in ``KINDS`` of the finding at each token, -1 where none (the report's own
    ``token_kinds`` when it has them; else each finding's (row, position) token)."""
    tk = report.token_kinds
    if tk is not None:
        return torch.as_tensor(tk, dtype=torch.int8)
    out = torch.full((batch.size, batch.width), -1, dtype=torch.int8)
    for f in reversed(report.findings):                 # the first finding at a token wins
        if f.row is not None and f.position is not None and 0 <= f.position < batch.width:
            out[f.row, f.position] = KINDS.index(f.kind)
    return out


def _advantage(batch: Batch, gamma: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """IW-OPD's A = teacher − rollout (the student's recompute where there is no rollout) and its prefix weight,
    on policy tokens where both are finite; NaN elsewhere; None without a teacher."""
    ref = ROLLOUT_LOGPROBS if batch.has(ROLLOUT_LOGPROBS) else STUDENT_LOGPROBS
    if not (batch.has(TEACHER_LOGPROBS) and batch.has(ref)):
        return None, None
    t, r = batch.series(TEACHER_LOGPROBS, torch.float64), batch.series(ref, torch.float64)
    m = batch.policy_mask() & torch.isfinite(t) & torch.isfinite(r)
    a = advantage(torch.where(m, t, 0.0), torch.where(m, r, 0.0), m)
    w = prefix_weights(a, m, gamma=gamma)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return _flat(batch, torch.where(m, a, nan)), _flat(batch, torch.where(m, w, nan))


def _per_row(values: list[str | None], index: np.ndarray) -> pa.Array:
    """A string column whose value is ``values[index[t]]`` per token, dictionary-encoded (one copy per row, not
    per token); None stays null."""
    names = sorted({v for v in values if v is not None})
    code = {v: i for i, v in enumerate(names)}
    per = pa.array([code.get(v) for v in values], pa.int32())
    return pa.DictionaryArray.from_arrays(per.take(pa.array(index)), pa.array(names, pa.string()))


def _constant(value: str, n: int) -> pa.ChunkedArray:
    """A dictionary-encoded string column holding ``value`` on each of ``n`` tokens (shared chunks, as :func:`nulls`)."""
    chunk = pa.DictionaryArray.from_arrays(pa.array(np.zeros(min(n, NULL_CHUNK), np.int32)), pa.array([value]))
    full, rest = divmod(n, len(chunk))
    return pa.chunked_array([chunk] * full + ([chunk.slice(0, rest)] if rest else []), chunk.type)


def token_table(run: str, batch: Batch, report: AlignmentReport, files: list[str], rows: list[int],
                gamma: float = 0.5, kinds: torch.Tensor | None = None, first_row: int = 0) -> pa.Table:
    """One row per completion token of the step (no ``step`` column: the partition names it).

    ``batch`` may be rows ``first_row``.. of the step (:func:`write_tokens`): every value is a function of its
    row, and ``kinds`` (int8 [B, L] of those rows, :func:`token_kinds` of the whole step) carries the findings."""
    lengths = batch.packed("completion_ids").lengths
    n = int(lengths.sum())
    step_row = np.repeat(np.arange(first_row, first_row + batch.size, dtype=np.int32), lengths)
    local_row = step_row - first_row
    starts = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    position = (np.arange(n) - starts).astype(np.int32)
    rank = [rank_number(f) for f in files]
    src = batch.packed("token_source")
    codes = np.zeros(n, dtype=np.int8) if src is None else src.values.numpy().astype(np.int8)
    mask = batch.packed("mask")
    roll, stud = _series(batch, ROLLOUT_LOGPROBS), _series(batch, STUDENT_LOGPROBS)
    policy, counted_, delta = flat_masks(batch)
    adv, w = _advantage(batch, gamma)
    rl = rl_advantages(batch)
    kinds = _flat(batch, token_kinds(batch, report) if kinds is None else kinds).astype(np.int64)
    kind_col = pa.DictionaryArray.from_arrays(pa.array(np.where(kinds < 0, 0, kinds).astype(np.int32), mask=kinds < 0),
                                              pa.array(KINDS, pa.string()))
    cols: dict[str, pa.Array] = {
        "run": _constant(run, n),
        "file": _per_row(files, local_row),
        "rank": pa.array(rank, pa.int32()).take(local_row),
        "group": _per_row(row_groups(batch), local_row),
        "row": pa.array(np.asarray(rows, dtype=np.int32)[local_row], pa.int32()),
        "step_row": pa.array(step_row, pa.int32()),
        "position": pa.array(position, pa.int32()),
        "token_id": pa.array(batch.packed("completion_ids").values.numpy().astype(np.int64), pa.int64()),
        "token_source": pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(TOKEN_SOURCES)),
        "loss_mask": pa.array(np.ones(n, bool) if mask is None else mask.values.numpy().astype(bool), pa.bool_()),
        "policy": pa.array(policy, pa.bool_()),
        "counted": pa.array(counted_, pa.bool_()),
        "rollout_logprob": _col(roll, n),
        "student_logprob": _col(stud, n),
        "teacher_logprob": _col(_series(batch, TEACHER_LOGPROBS), n),
        "kept_logmass": _col(_series(batch, "kept_logmass"), n),
        "delta": _col(delta, n),
        "advantage": _col(adv, n),
        "prefix_weight": _col(w, n),
        "rl_advantage": _col(None if rl is None else _flat(batch, rl), n),
    }
    streams = packed_weights(batch)
    for name in sorted(set(STREAMS) | set(streams)):
        p = streams.get(name)
        cols[f"w_{name}"] = _col(None if p is None else p.values.to(torch.float64).numpy(), n)
    cols["finding_kind"] = kind_col
    return pa.table(cols)


CHUNK_TOKENS = 1 << 16
"""Tokens per chunk of rows that :func:`write_tokens` builds and writes at a time (one Parquet row group each)."""


def write_tokens(path, run: str, batch: Batch, report: AlignmentReport, files: list[str], rows: list[int],
                 gamma: float = 0.5, chunk_tokens: int = CHUNK_TOKENS) -> list[str]:
    """Write the step's token table to ``path`` chunk of rows by chunk (about ``chunk_tokens`` tokens each), so
    that only one chunk's columns are alive at a time; return the columns null on every token."""
    import pyarrow.parquet as pq

    from .store import parquet_options

    kinds = token_kinds(batch, report)
    ends = np.cumsum(batch.packed("completion_ids").lengths)
    writer, nulls_left, start = None, None, 0
    try:
        while start < batch.size:
            stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + chunk_tokens, "right")))
            stop = min(stop, batch.size)
            part = batch if (start, stop) == (0, batch.size) else batch.select(range(start, stop))
            table = token_table(run, part, report, files[start:stop], rows[start:stop], gamma,
                                kinds=kinds[start:stop, :part.width], first_row=start)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, **parquet_options(table.schema))
                nulls_left = set(table.column_names)
            writer.write_table(table, row_group_size=table.num_rows)
            nulls_left = {c for c in nulls_left if table.column(c).null_count == table.num_rows}
            del table, part
            start = stop
    finally:
        if writer is not None:
            writer.close()
    return sorted(nulls_left or ())


def _row_metrics(batch: Batch) -> dict[str, np.ndarray]:
    """The mismatch metrics per row over its counted tokens (NaN for a row without one), float64 [B] each; sums
    per row over the packed tokens (``np.add.reduceat``: no padded [B, L] temporaries)."""
    _, m, d = flat_masks(batch)
    B = batch.size
    if d is None:
        return {c: np.full(B, np.nan) for c in (*METRICS, "seq_log_ratio")}
    starts = batch.packed("completion_ids").offsets[:-1]
    d0 = np.where(m, d, 0.0)
    k = np.add.reduceat(m.astype(np.float64), starts)
    none = k == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda x: np.add.reduceat(np.where(m, x, 0.0), starts) / k  # noqa: E731  (NaN where k == 0)
        rho = np.exp(d0)
        m1, m2 = mean(rho), mean(rho * rho)
        out = {
            "token_mult_prob_error": mean(np.exp(np.abs(d0))), "k3_kl": mean(np.expm1(d0) - d0),
            "logp_abs_diff_mean": mean(np.abs(d0)), "logp_abs_diff_max": np.maximum.reduceat(np.abs(d0), starts),
            "is_ratio_mean": m1, "is_ratio_min": np.minimum.reduceat(np.where(m, rho, math.inf), starts),
            "is_ratio_max": np.maximum.reduceat(np.where(m, rho, -math.inf), starts), "is_ess": m1 * m1 / m2,
            "chi2_token": m2 - 1.0, "seq_log_ratio": np.add.reduceat(d0, starts),
        }
    return {c: np.where(none, np.nan, v) for c, v in out.items()}


def _first(report: AlignmentReport) -> dict[int, Any]:
    first = {}
    for f in report.findings:
        if f.row is not None and f.row not in first:
            first[f.row] = f
    return first


def row_table(run: str, step: int, batch: Batch, report: AlignmentReport, files: list[str], rows: list[int]) -> pa.Table:
    """One row per sample of the step."""
    B = batch.size
    valid, pm = batch.valid(), batch.policy_mask()
    first = _first(report)
    n_found = np.bincount([f.row for f in report.findings if f.row is not None], minlength=B)
    cols = {
        "run": pa.array([run] * B, pa.string()), "step": pa.array([step] * B, pa.int64()),
        "file": pa.array(files, pa.string()), "rank": pa.array([rank_number(f) for f in files], pa.int32()),
        "row": pa.array(rows, pa.int32()), "step_row": pa.array(np.arange(B, dtype=np.int32)),
        "group": pa.array(row_groups(batch), pa.string()),
        "prompt_len": pa.array(batch.packed("prompt_ids").lengths.astype(np.int32)),
        "completion_len": pa.array(batch.packed("completion_ids").lengths.astype(np.int32)),
        "loss_tokens": pa.array(valid.sum(1).numpy().astype(np.int32)),
        "policy_tokens": pa.array(pm.sum(1).numpy().astype(np.int32)),
        "finish_reason": pa.array(batch.finish_reasons or [None] * B, pa.string()),
        "reward": pa.array(row_rewards(batch), F64),
    }
    cols.update({c: _col(v, B) for c, v in _row_metrics(batch).items()})
    cols["n_findings"] = pa.array(n_found.astype(np.int32))
    cols["first_kind"] = pa.array([first[b].kind if b in first else None for b in range(B)], pa.string())
    cols["first_severity"] = pa.array([first[b].severity if b in first else None for b in range(B)], pa.string())
    return pa.table(cols)


def _counts(findings) -> dict[str, int]:
    out = {"errors": 0, "warnings": 0, "infos": 0, **{c: 0 for c in KIND_COLUMNS}}
    for f in findings:
        out[{"error": "errors", "warning": "warnings", "info": "infos"}[f.severity]] += 1
        out[f"n_{f.kind}"] += 1
    return out


def _metric_cols(metrics: dict[str, float] | None) -> dict[str, float | None]:
    metrics = metrics or {}
    return {c: metrics.get(k) for c, k in zip(METRICS, MISMATCH_KEYS)}


def finding_group(f, groups: list[str | None]) -> str | None:
    g = f.group
    return g if g is not None else (groups[f.row] if f.row is not None else None)


def step_record(run: str, step: int, batch: Batch, report: AlignmentReport, files: list[str], rows: list[int]) -> dict:
    """The ``steps`` row of one step (plain values)."""
    first = report.findings[0] if report.findings else None
    return {
        "run": run, "step": step, "files": len(set(files)), "rows": batch.size,
        "tokens": int(batch.packed("completion_ids").lengths.sum()), "loss_tokens": int(batch.valid().sum()),
        "policy_tokens": int(batch.policy_mask().sum()), **_metric_cols(report.metrics), **_counts(report.findings),
        "ok": report.ok, "first_kind": first.kind if first else None, "first_severity": first.severity if first else None,
        "first_file": files[first.row] if first is not None and first.row is not None else None,
        "first_row": rows[first.row] if first is not None and first.row is not None else None,
        "first_message": first.message if first else None,
        "unchecked": ", ".join(report.unchecked) or None,
    }


def group_records(run: str, step: int, batch: Batch, report: AlignmentReport) -> list[dict]:
    """The ``groups`` rows of one step (one per group; a batch without groups has none)."""
    groups = row_groups(batch)
    names = sorted({g for g in groups if g is not None})
    if not names:
        return []
    given = report.group_metrics
    policy, m, d = flat_masks(batch)
    code = {g: i for i, g in enumerate(names)}
    token_group = np.repeat(np.array([code.get(g, -1) for g in groups], np.int32), batch.packed("completion_ids").lengths)
    out = []
    for g in names:
        sel = token_group == code[g]
        gm = m & sel
        metrics = given.get(g)
        if metrics is None and d is not None and bool(gm.any()):
            metrics = metrics_from_delta(torch.from_numpy(d[gm]))      # the same Δ values, in the same order
        found = [f for f in report.findings if finding_group(f, groups) == g]
        out.append({"run": run, "step": step, "group": g, "rows": sum(x == g for x in groups),
                    "policy_tokens": int((policy & sel).sum()), "counted_tokens": int(gm.sum()), **_metric_cols(metrics),
                    **_counts(found)})
    return out


def finding_records(run: str, step: int, batch: Batch, report: AlignmentReport, files: list[str],
                    rows: list[int]) -> list[dict]:
    groups = row_groups(batch)
    return [{"run": run, "step": step, "idx": i, "kind": f.kind, "severity": f.severity,
             "file": files[f.row] if f.row is not None else None,
             "rank": rank_number(files[f.row]) if f.row is not None else None,
             "row": rows[f.row] if f.row is not None else None, "step_row": f.row, "position": f.position,
             "group": finding_group(f, groups), "message": f.message} for i, f in enumerate(report.findings)]


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in fields])


I32, I64, STR = pa.int32(), pa.int64(), pa.string()
_COUNTS = (("errors", I32), ("warnings", I32), ("infos", I32), *((c, I32) for c in KIND_COLUMNS))
STEP_SCHEMA = _schema(("run", STR), ("step", I64), ("files", I32), ("readers", STR), ("unread", I32), ("rows", I32),
                      ("tokens", I64), ("loss_tokens", I64), ("policy_tokens", I64), *((c, F64) for c in METRICS),
                      *_COUNTS, ("ok", pa.bool_()), ("first_kind", STR), ("first_severity", STR), ("first_file", STR),
                      ("first_row", I32), ("first_message", STR), ("unchecked", STR))
GROUP_SCHEMA = _schema(("run", STR), ("step", I64), ("group", STR), ("rows", I32), ("policy_tokens", I64),
                       ("counted_tokens", I64), *((c, F64) for c in METRICS), *_COUNTS)
FINDING_SCHEMA = _schema(("run", STR), ("step", I64), ("idx", I32), ("kind", STR), ("severity", STR), ("file", STR),
                         ("rank", I32), ("row", I32), ("step_row", I32), ("position", I32), ("group", STR),
                         ("message", STR))


def records_table(records: list[dict], schema: pa.Schema) -> pa.Table:
    """Plain records -> a table of ``schema`` (typed even when a column is all null or there are no records)."""
    return pa.Table.from_pylist(records, schema=schema)


__all__ = ["STEP_SCHEMA", "GROUP_SCHEMA", "FINDING_SCHEMA", "records_table", "token_table", "write_tokens", "nulls", "flat_masks", "row_table", "step_record", "group_records", "finding_records", "counted", "token_kinds"]
