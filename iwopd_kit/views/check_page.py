"""The page ``iwopd-kit check --html`` writes: summary, notes, mismatch metrics, findings, per-finding strips.

Self-contained (inline CSS and SVG, no script, no URL): it renders the same offline, with
JavaScript off, and in a headless-Chromium PNG.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from ..alignment.core import AlignmentReport
from ..batch import Batch
from .alignment import row_anchor, alignment_view, finding_counts
from .findings import finding_strips
from .mismatch import batch_delta, mismatch_html
from .report import html_page, html_table
from .text import readable_tokens, token_style

_CSS = ("<style>.iwf{margin:.4em 0 1.2em}.iwf-c{font-size:12px;color:#333;margin:.1em 0}"
        ".iwn{background:#fff8e1;border-left:4px solid #f0b400;padding:.3em .6em;margin:.4em 0}</style>")


def token_texts(batch: Batch, tokenizer: Any) -> list[list[str]] | None:
    """Token text per row from a tokenizer (None without one: the strips then show the ids)."""
    if tokenizer is None:
        return None
    if token_style(tokenizer) != "plain":   # BPE: the text each token stands for, specials marked
        return [readable_tokens(tokenizer, c) for c in batch.completion_ids]
    return [[str(t) for t in tokenizer.convert_ids_to_tokens(list(c))] for c in batch.completion_ids]


def check_html(path: str, batch: Batch, report: AlignmentReport, tokenizer: Any = None,
               notes: Sequence[str] = (), max_strips: int = 20) -> str:
    """The check's page for one dump (``notes``: what the CLI did, e.g. which models scored which series)."""
    tokens = token_texts(batch, tokenizer)
    head = (f"<p>{html.escape(str(path))}: {batch.size} rows, {int(batch.valid().sum())} valid tokens, "
            f"{len(report.findings)} finding(s); {'ok' if report.ok else 'errors'}</p>")
    summary = html_table(*finding_counts(report)) if report.findings else "<p>no findings</p>"
    note_html = "".join(f'<p class="iwn">{html.escape(n)}</p>' for n in notes)
    unchecked = (f"<p>not checked: {html.escape(report.unchecked_text())}</p>" if report.unchecked else "")
    strips, n_row = finding_strips(batch, report, tokens, max_strips=max_strips, anchor=row_anchor)
    more = (f"<p>per-token views of the first {max_strips} of {n_row} findings with a row</p>"
            if n_row > max_strips else "")
    ids = "" if tokens is not None else ("<p>no tokenizer given (pass --student/--teacher DIR): tokens are shown "
                                        "as their ids</p>")
    anchored = [f.row for f in report.findings if f.row is not None][:max_strips]     # the rows finding_strips draws
    view = alignment_view(batch, report, rows=[], linked_rows=anchored).to_html()   # the findings list (linked), the lag table
    metrics = mismatch_html(report.metrics, batch_delta(batch), report.unchecked_reasons.get("mismatch"))
    return html_page(f"alignment check: {Path(path).name}", [
        ("summary", _CSS + head + note_html + summary + unchecked),
        ("rollout vs trainer mismatch", metrics),
        ("findings and per-token view", view + more + ids + "".join(strips)),
    ])


__all__ = ["check_html", "token_texts"]
