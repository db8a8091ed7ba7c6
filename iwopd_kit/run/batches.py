"""One step of a run as one Batch: its files (ranks) read and concatenated, rows in file order.

Row ``r`` of the step's batch is row ``origin_rows[r]`` of file ``origin_files[r]``; the check runs
on the whole step (the pooled metrics are the step's), and every table of the store names both the
file's own row (what ``iwopd-kit check FILE`` reports) and the step's row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..batch import Batch, BatchError
from ..batch.fields import RAGGED
from ..batch.ragged import Packed


def _fill(kind: str, n: int) -> torch.Tensor:
    """The values a file that lacks a field gets in the concatenation: missing (NaN), counted (mask), policy."""
    if kind == "series":
        return torch.full((n,), float("nan"), dtype=torch.float32)
    if kind == "mask":
        return torch.ones(n, dtype=torch.bool)
    return torch.zeros(n, dtype=torch.int8)          # token_source: policy


def packed_weights(b: Batch) -> dict[str, Packed]:
    """The batch's named weight streams as stored (packed; ``Batch.weights`` builds Python lists)."""
    return dict(b.__dict__.get("_weights") or {})


def _concat_packed(parts: list[Packed | None], lengths: list[np.ndarray], kind: str) -> Packed | None:
    if all(p is None for p in parts):
        return None
    vals = [p.values if p is not None else _fill(kind, int(n.sum())) for p, n in zip(parts, lengths)]
    if kind == "series":
        vals = [v.to(torch.float64) if any(x.dtype == torch.float64 for x in vals) else v for v in vals]
    return Packed(torch.cat(vals), np.concatenate(lengths), kind)


def _same(name: str, values: list[Any], files: list[str]) -> Any:
    first = values[0]
    for v, f in zip(values[1:], files[1:]):
        if v != first:
            raise BatchError(f"{f}: its {name} ({v}) differs from {files[0]}'s ({first}); the files of one step must "
                             "share them (check them one by one with iwopd-kit check FILE)")
    return first


def concat(batches: list[Batch], files: list[str]) -> Batch:
    """The rows of ``batches`` (one per file, in order) as one Batch; a field some files lack is missing there."""
    if len(batches) == 1:
        return batches[0]
    lengths = [b.packed("completion_ids").lengths for b in batches]
    kw: dict[str, Any] = {}
    for name in RAGGED:
        parts = [b.packed(name) for b in batches]
        kind = "ids" if name in ("prompt_ids", "completion_ids") else "mask" if name == "mask" else \
            "source" if name == "token_source" else "series"
        lens = [b.packed("prompt_ids").lengths for b in batches] if name == "prompt_ids" else lengths
        kw[name] = _concat_packed(parts, lens, kind)
    names = sorted({k for b in batches for k in packed_weights(b)})
    kw["weights"] = {k: _concat_packed([packed_weights(b).get(k) for b in batches], lengths, "series") for k in names} or None
    for name, fill in (("groups", lambda b: [None] * b.size), ("finish_reasons", lambda b: [None] * b.size),
                       ("kept_ids", lambda b: [None] * b.size), ("meta", lambda b: [{} for _ in range(b.size)])):
        vals = [getattr(b, name) for b in batches]
        kw[name] = None if all(v is None for v in vals) else [x for b, v in zip(batches, vals) for x in (v or fill(b))]
    kw["sampling"] = _same("sampling settings", [b.sampling for b in batches], files)
    kw["metric_pool"] = _same("metric pool (the weight streams its framework's metrics pool over)",
                              [b.metric_pool for b in batches], files)
    kw["scoring"] = _same("scoring temperatures", [b.scoring for b in batches], files)
    findings, offset = [], 0
    for b in batches:
        for f in b.findings:
            findings.append({**f, "row": None if f.get("row") is None else f["row"] + offset})
        offset += b.size
    return Batch(**kw, findings=findings)


def read_step(dumps: list, names: list[str], allow_pickle: bool = False):
    """Read a step's dumps (:class:`iwopd_kit.formats.dirs.Dump`, each with its reader and companion):
    ``(batch | None, origin_files [B], origin_rows [B], readers {name: reader}, unread {name: why})``.
    A dump that cannot be read is listed with the reader's error; the others still count."""
    batches, used, readers, unread = [], [], {}, {}
    for dump, name in zip(dumps, names):
        try:
            batch, reader = dump.read(allow_pickle)
        except (BatchError, OSError) as e:
            unread[name] = str(e)
            continue
        batches.append(batch)
        used.append(name)
        readers[name] = reader
    if not batches:
        return None, [], [], readers, unread
    try:
        batch = concat(batches, used)
    except BatchError as e:
        return None, [], [], readers, {**unread, **{n: str(e) for n in used}}
    files = [n for n, b in zip(used, batches) for _ in range(b.size)]
    rows = [r for b in batches for r in range(b.size)]
    return batch, files, rows, readers, unread


def row_groups(batch: Batch) -> list[str | None]:
    """Each row's group (``batch.groups``: prime-rl's ``env_name``, NeMo-RL's ``agent_ref``, ...); None where none."""
    return list(batch.groups) if batch.groups is not None else [None] * batch.size


REWARD_KEYS = ("reward", "rewards", "score", "correct", "is_correct")
"""Meta keys read as a row's reward (first present); NeMo-RL counts a reward of 1 as correct."""


def row_rewards(batch: Batch) -> list[float | None]:
    """A scalar reward per row from ``meta`` (:data:`REWARD_KEYS`), None where the row has none."""
    out = []
    for m in batch.meta or [None] * batch.size:
        v = next((m[k] for k in REWARD_KEYS if isinstance(m, dict) and m.get(k) is not None), None)
        if isinstance(v, bool):
            v = float(v)
        out.append(float(v) if isinstance(v, (int, float)) else None)
    return out


def rl_advantages(batch: Batch) -> torch.Tensor | None:
    """The RL advantage the writer recorded per token, float64 [B, L] (NaN where missing), or None.

    From a weight stream named ``advantages`` / ``advantage``, else a scalar ``meta["advantage"]`` per row
    (GRPO's sequence advantage, the same on every token). Needed by prime-rl's DPPO mask (its sign picks the bound).
    """
    streams = packed_weights(batch)
    for name in ("advantages", "advantage"):
        if name in streams:
            return batch.weight(name, torch.float64)
    metas = batch.meta or []
    vals = [m.get("advantage") if isinstance(m, dict) else None for m in metas]
    if not any(isinstance(v, (int, float)) for v in vals):
        return None
    col = torch.tensor([float(v) if isinstance(v, (int, float)) else float("nan") for v in vals], dtype=torch.float64)
    out = col[:, None].expand(batch.size, batch.width).clone()
    return out.masked_fill_(~batch.padding_mask(), float("nan"))


__all__ = ["concat", "packed_weights", "read_step", "row_groups", "row_rewards", "rl_advantages", "REWARD_KEYS"]
