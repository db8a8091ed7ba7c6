"""One token strip per finding, coloured by the series behind it, with the flagged token outlined.

A missing-teacher finding is drawn by the teacher's log-probs (the missing value left uncoloured and
outlined), a missing rollout value by the rollout's, a gap finding (offset, ordering, numerics, ...)
by ``gap = |rollout − student|``: what the reader needs to see the cause at a glance. Without a
tokenizer the strip shows the token ids, each in its own box. A value the file had as ``null`` is
written ``null`` in the caption under the strip.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

from ..alignment.core import AlignmentReport, Finding
from ..batch import Batch
from .names import SERIES_NAMES
from .series import per_token_series
from .tokens import token_strip

#: The series each finding kind is drawn by (``None``: the side whose value is missing at the finding's token).
KIND_SERIES: dict[str, str | None] = {
    "offset": "gap", "ordering": "gap", "numerics": "gap", "padding": "gap", "temperature": "gap",
    "processed_logprobs": "gap", "staleness": "gap", "normalisation": "gap",
    "missing_token_ids": "rollout", "bos_eos": "rollout",
    "teacher_coverage": "teacher", "tokenizer_mismatch": "teacher",
    "truncation": None,
}

LABELS = {s.name: s.label for s in SERIES_NAMES if s.name in ("gap", "rollout", "student", "teacher")}

#: A strip shows at most this many positions on each side of the flagged token (a long row is cut).
CONTEXT = 48


TEACHER_OFFSET = "teacher log-probs look shifted"
"""How the teacher-shift finding (an ``offset`` on the teacher series, ``alignment/teacher_shift.py``) begins:
it is drawn by the teacher's log-probs, not by the rollout-vs-student gap."""


def series_for(kind: str, series: dict[str, Any], row: int, pos: int | None, message: str = "") -> str | None:
    """The series a finding of ``kind`` at ``(row, pos)`` is coloured by, among those present (``message``: the
    finding's, which tells a teacher-side offset)."""
    name = "teacher" if kind == "offset" and message.startswith(TEACHER_OFFSET) else KIND_SERIES.get(kind, "gap")
    if name is None:                   # truncation: the side that stops having values at the token
        sides = [s for s in ("student", "teacher") if s in series]
        missing = [s for s in sides if pos is not None and _missing(series[s][row][pos])]
        name = (missing or sides or [None])[0]
    if name in series:
        return name
    return next((s for s in ("gap", "rollout", "teacher", "student") if s in series), None)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def file_value(v: Any, decimals: int = 4) -> str:
    """A value as the dump wrote it: ``null`` for a missing one, ``-inf``, or the number."""
    if _missing(v):
        return "null"
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    return f"{v:.{decimals}g}"


def _caption(f: Finding, batch: Batch, series: dict[str, Any], tokens: Sequence[Sequence[str]] | None) -> str:
    if f.position is None:
        return f"row {f.row}: the finding names no single token"
    j = f.position
    what = f"id {batch.completion_ids[f.row][j]}"
    if tokens is not None:
        what = f"{tokens[f.row][j]!r}, " + what
    vals = ", ".join(f"{s} = {file_value(series[s][f.row][j])}" for s in ("rollout", "student", "teacher")
                     if s in series)
    return f"flagged token: row {f.row}, position {j} ({what}){': ' + vals if vals else ''}"


def finding_strips(batch: Batch, report: AlignmentReport, tokens: Sequence[Sequence[str]] | None = None,
                   max_strips: int = 20, anchor=None) -> tuple[list[str], int]:
    """HTML of one strip per row-level finding (at most ``max_strips``), and how many findings had a row.

    ``tokens``: token text per row (None: show the ids). ``anchor(row)``: the id the first strip of a
    row gets, so the findings list can link to it.
    """
    series = per_token_series(batch)
    with_row = [f for f in report.findings if f.row is not None]
    out, seen = [], set()
    for f in with_row[:max_strips]:
        b, j = f.row, f.position
        if j is not None and not 0 <= j < batch.lengths[b]:
            j = None                                   # a position beyond the row (a length finding): no mark
        name = series_for(f.kind, series, b, j, f.message)
        n = batch.lengths[b]
        window = None
        if j is not None and n > 2 * CONTEXT + 1:
            window = (max(0, j - CONTEXT), min(n, j + CONTEXT + 1))
        title = f"[{f.severity}] {f.kind}, row {b}" + ("" if j is None else f", position {j}")
        title += f": coloured by {LABELS.get(name, name)}" if name else ": no series to colour by"
        strip = token_strip(tokens if tokens is not None else None, series, color_by=name,
                            token_ids=batch.completion_ids, rows=[b], window=window, title=title,
                            mark=None if j is None else [(b, j)])
        caption = html.escape(_caption(f if j == f.position else Finding(f.kind, b, None, f.severity, f.message),
                                       batch, series, tokens))
        ident = f' id="{anchor(b)}"' if anchor is not None and b not in seen else ""
        seen.add(b)
        out.append(f'<div class="iwf"{ident}>{strip.to_html()}<p class="iwf-c">{caption}</p></div>')
    return out, len(with_row)


__all__ = ["CONTEXT", "KIND_SERIES", "file_value", "finding_strips", "series_for"]
