"""The alignment diff view: rollout vs recomputed student per token (a row with a teacher-side finding:
its teacher log-probs), the shift per row, and the findings of a check linked to the rows they point at.

Reads a :class:`~iwopd_kit.batch.Batch` and an :class:`~iwopd_kit.alignment.AlignmentReport`;
decides nothing: the shift table is the check's own per-row decision (``report.row_lags``, read as
``RowLag.shift``), so it shows a shift only for a row the check reported as shifted. A row shifted
by d has token j carrying the rollout log-prob of token j + d, the findings' convention.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from ..alignment.core import AlignmentReport
from ..alignment.kinds import KINDS
from ..batch import Batch
from .findings import LABELS, series_for
from .report import html_table, text_table
from .series import per_token_series
from .tokens import token_strip


SHIFT_HEADER = ("row", "shift d", "mean gap as stored", "mean gap, shift undone")
SHIFT_NOTE = "shift d: token j carries the rollout log-prob of token j + d (0: not shifted)"


def row_anchor(b: int) -> str:
    """The HTML id of row ``b``'s strip (the findings table and the check page link to it)."""
    return f"iwopd-align-row-{b}"


@dataclass(frozen=True)
class AlignmentView:
    """HTML (``_repr_html_``) and text (``repr``) of a check: findings, per-row shifts, per-token gaps.

    ``shift_rows``: one ``(row, shift d, mean gap as stored, mean gap with the shift undone)`` per
    row, from the report's ``row_lags`` (d = 0 and the stored gap twice where the check reported no
    offset).
    """

    findings: tuple[tuple, ...]
    shift_rows: tuple[tuple, ...]
    strips_html: tuple[str, ...]
    rows: tuple[int, ...]
    ok: bool
    linked_rows: tuple[int, ...] | None = None     # rows whose anchors exist where the view is shown; None: ``rows``

    def _shift_table(self, table) -> str:
        rows = [[b, f"{d:+d}" if d else "0", e0, e] for b, d, e0, e in self.shift_rows]
        return table(list(SHIFT_HEADER), rows, decimals=4)

    def to_text(self) -> str:
        head = f"alignment: {'ok' if self.ok else 'ERRORS'}, {len(self.findings)} finding(s)"
        f = text_table(["severity", "kind", "row", "position", "message"], [list(x) for x in self.findings]) if self.findings else "no findings"
        return "\n".join([head, f, "", SHIFT_NOTE, self._shift_table(text_table)])

    def __repr__(self) -> str:
        return self.to_text()

    def to_html(self) -> str:
        def link(row, pos):
            if row is None:
                return "—"
            label = f'row {row}{"" if pos is None else f", position {pos}"}'
            drawn = self.rows if self.linked_rows is None else self.linked_rows
            return f'<a href="#{row_anchor(row)}">{label}</a>' if row in drawn else label   # no link to a row not drawn

        items = "".join(
            f"<li><b>[{html.escape(sev)}] {html.escape(kind)}</b> {link(row, pos)}: {html.escape(msg)}</li>"
            for sev, kind, row, pos, msg in self.findings
        ) or "<li>no findings</li>"
        status = "ok" if self.ok else "errors"
        parts = [f"<div class='iwopd-align'><p><b>alignment: {status}</b></p><ul>{items}</ul>",
                 f"<p>{html.escape(SHIFT_NOTE)}</p>", self._shift_table(html_table)]
        for b, strip_html in zip(self.rows, self.strips_html):
            parts.append(f"<div id='{row_anchor(b)}'>{strip_html}</div>")
        parts.append("</div>")
        return "".join(parts)

    def _repr_html_(self) -> str:
        return self.to_html()

    def _ipython_display_(self) -> None:   # the HTML, then its PNG copy (see views/static.py)
        from .static import display_html_view

        display_html_view(self.to_html(), self.to_text(), "alignment view")


def finding_counts(report: AlignmentReport, max_rows: int = 20) -> tuple[list[str], list[list]]:
    """A rows x classes table of finding counts: ``(header, rows)`` for ``text_table`` / ``html_table``.

    One line per input row with findings (``batch`` for batch-level ones), a column per class that
    has findings, and a last ``all`` line with the totals; at most ``max_rows`` row lines (the
    rest are summed into one ``... N more rows`` line).
    """
    kinds = [k for k in KINDS if any(f.kind == k for f in report.findings)]
    col = {k: i for i, k in enumerate(kinds)}
    per: dict[int | None, list[int]] = {}
    for f in report.findings:
        per.setdefault(f.row, [0] * len(kinds))[col[f.kind]] += 1
    keys = sorted(per, key=lambda r: -1 if r is None else r)
    lines = [["batch" if r is None else r, *per[r]] for r in keys[:max_rows]]
    if len(keys) > max_rows:
        rest = [sum(per[r][i] for r in keys[max_rows:]) for i in range(len(kinds))]
        lines.append([f"... {len(keys) - max_rows} more rows", *rest])
    lines.append(["all", *[sum(per[r][i] for r in keys) for i in range(len(kinds))]])
    return ["row", *kinds], lines


def _row_series(report: AlignmentReport, series: dict, b: int) -> str | None:
    """The series row ``b``'s strip is coloured by: the one behind its first error (else its first finding),
    as the check page draws it (:func:`~iwopd_kit.views.findings.series_for`: a teacher-side finding by the
    teacher's log-probs); |rollout − student| for a row without findings."""
    found = sorted((f for f in report.findings if f.row == b), key=lambda f: f.severity != "error")
    if found:
        return series_for(found[0].kind, series, b, found[0].position, found[0].message)
    return "gap" if "gap" in series else None


def alignment_view(batch: Batch, report: AlignmentReport, tokens: list[list[str]] | None = None,
                   rows: list[int] | None = None, linked_rows: list[int] | None = None) -> AlignmentView:
    """Build the diff view. ``rows`` defaults to the rows with findings (or the first 3). Each row's strip is
    coloured by the series behind its findings (|rollout − student| for a gap finding or none, the teacher's
    log-probs for a teacher-side one).

    A finding links to its row's strip (``#iwopd-align-row-<row>``) only where that strip exists: the
    rows the view draws, or ``linked_rows`` when the page around the view draws the strips itself.

    The shift table is ``report.row_lags`` (empty when the check could not scan for shifts).
    """
    shift_rows = tuple((x.row, x.shift, x.gap_at_0, x.gap_at_shift) for x in report.row_lags)
    flagged = sorted({f.row for f in report.findings if f.row is not None})
    rows = rows if rows is not None else (flagged or list(range(min(3, batch.size))))
    if tokens is None:
        tokens = [[str(t) for t in c] for c in batch.completion_ids]
    series = per_token_series(batch)
    strips = []
    for b in rows:
        name = _row_series(report, series, b)
        label = LABELS.get(name, name)
        strips.append(token_strip(tokens, series, color_by=name, token_ids=batch.completion_ids, rows=[b],
                                  title=f"row {b}: {label}" if name else f"row {b}").to_html())
    strips = tuple(strips)
    findings = tuple((f.severity, f.kind, f.row, f.position, f.message) for f in report.findings)
    return AlignmentView(findings=findings, shift_rows=shift_rows, strips_html=strips, rows=tuple(rows), ok=report.ok,
                         linked_rows=None if linked_rows is None else tuple(linked_rows))
