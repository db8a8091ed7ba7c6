"""Helpers shared by the readers of per-sample JSONL dumps (prime-rl's token export, NeMo-RL's
``train_data_step*.jsonl``): whole-sequence lists cut into completion coordinates, values a writer
could not represent (``null``, ``NaN``, ``±inf``) kept as missing values *and* reported, and the
data model's errors re-worded in the dump's own coordinates.

A dump row holds aligned lists over its whole sequence (prompt + completion, index ``t``); the
kit's rows start at the completion (index ``j = t - start``). Every message names the dump row
(0-based; its line is row + 1) and, for a per-token value, both coordinates.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ..batch import Batch, BatchError


def finding(kind: str, row: int | None, position: int | None, severity: str, message: str) -> dict[str, Any]:
    """A ``Batch.findings`` entry (the keys of ``alignment.Finding``)."""
    return {"kind": kind, "row": row, "position": position, "severity": severity, "message": message}


def where(fmt: str, row: int, line: int | None = None) -> str:
    """``"<fmt>, row R (line N)"``: the batch row and the file line (row + 1 unless rows were left out)."""
    return f"{fmt}, row {row} (line {row + 1 if line is None else line})"


def ints(values: Any, key: str, at: str) -> list[int]:
    """A list of non-negative ints, or an error naming the first bad entry."""
    if not isinstance(values, list):
        raise BatchError(f"{at}: {key} must be a list of ints, got {type(values).__name__}")
    for t, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BatchError(f"{at}, token {t}: {key} must be a non-negative int, got {v!r}")
    return values


def flags(values: Any, key: str, at: str) -> list[bool]:
    """A list of bools (``true``/``false`` or 0/1), or an error naming the first bad entry."""
    if not isinstance(values, list):
        raise BatchError(f"{at}: {key} must be a list of bools, got {type(values).__name__}")
    for t, v in enumerate(values):
        if v not in (0, 1) or (isinstance(v, float)):
            raise BatchError(f"{at}, token {t}: {key} must be a bool or 0/1, got {v!r}")
    return [bool(v) for v in values]


def floats(values: Any, key: str, at: str) -> list[float | None]:
    """A list of numbers; ``null``, ``NaN`` and ``±inf`` stay as they are (the caller decides)."""
    if not isinstance(values, list):
        raise BatchError(f"{at}: {key} must be a list of numbers, got {type(values).__name__}")
    for t, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise BatchError(f"{at}, token {t}: {key} must be a number or null, got {v!r}")
    return values


def keep_finite(values: list[float | None], start: int, end: int, counts: Callable[[int], bool], fmt: str, row: int,
                key: str, series: str, why: str) -> tuple[list[float | None], list[dict[str, Any]]]:
    """``values[start:end]`` with every null / NaN / ±inf kept as a missing value (None), and findings.

    One ``numerics`` finding per row and key: ``error`` when a token that ``counts`` (one a loss
    component reads; ``counts(t)`` in dump coordinates) lost its value, ``warning`` otherwise.
    ``why`` says what the writer does with a non-finite value.
    """
    out: list[float | None] = []
    bad: list[tuple[int, Any]] = []
    for t in range(start, end):
        v = values[t]
        if v is None or not math.isfinite(v):
            out.append(None)
            bad.append((t, v))
        else:
            out.append(float(v))
    if not bad:
        return out, []
    hit = [t for t, _ in bad if counts(t)]
    t0, v0 = next(((t, v) for t, v in bad if t in hit), bad[0]) if hit else bad[0]
    shown = "null" if v0 is None else repr(v0)
    msg = (f"{fmt}: {len(bad)} {key} value(s) not finite in the completion ({len(hit)} on tokens the loss reads), first "
           f"{shown} at position {t0 - start} (token {t0} of the row); {why}. Kept as missing {series} values")
    return out, [finding("numerics", row, t0 - start, "error" if hit else "warning", msg)]


def build(fmt: str, prompts: list[list[int]], lines: list[int] | None = None, **fields: Any) -> Batch:
    """``Batch(prompt_ids=prompts, **fields)``; an error in completion coordinates is re-worded to name
    the dump row, its line (``lines[b]``; default b + 1) and the token of the dump row."""
    try:
        return Batch(prompt_ids=prompts, **fields)
    except BatchError as e:
        msg = str(e)
        if not msg.startswith("row "):
            raise BatchError(f"{fmt}: {msg}") from None
        b = int(msg.split()[1].rstrip(":,"))
        line = None if lines is None else lines[b]
        raise BatchError(f"{where(fmt, b, line)}{msg[len(f'row {b}'):]} (completion coordinates: position 0 is "
                         f"token {len(prompts[b])} of the row)") from None


__all__ = ["build", "finding", "flags", "floats", "ints", "keep_finite", "where"]
