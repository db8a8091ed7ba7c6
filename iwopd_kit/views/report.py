"""Plain HTML and text tables and self-contained HTML pages.

Everything here is pure rendering over plain Python values: strings, ints,
floats (``None`` / NaN mean "missing" and render as ``—``). Output is
deterministic (no ids, no timestamps, no scripts, no external links), so it can
be compared byte for byte and committed as a report.
"""

from __future__ import annotations

import html
import math
import numbers
import unicodedata
from typing import Any, Sequence

#: How a missing value (``None`` or NaN) is written in tables and tooltips.
MISSING = "—"

_PAGE_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;"
    "margin:1.5em auto;max-width:70em;padding:0 1em;color:#222;line-height:1.4}"
    "h1{font-size:1.5em;margin:.2em 0 .8em}"
    "h2{font-size:1.15em;margin:1.4em 0 .5em;border-bottom:1px solid #ddd}"
    "table.iwr{border-collapse:collapse;font-size:.9em;margin:.5em 0}"
    ".iwr th,.iwr td{border:1px solid #ccc;padding:.15em .6em;text-align:left}"
    ".iwr th{background:#f3f3f3}"
    ".iwr td.n,.iwr th.n{text-align:right;font-variant-numeric:tabular-nums}"
)


def is_number(value: Any) -> bool:
    """True for real numbers (int, float, numpy scalars), False for bool/str/None."""
    if type(value) in (float, int):
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_missing(value: Any) -> bool:
    """True for ``None`` and float NaN."""
    if value is None:
        return True
    return is_number(value) and math.isnan(float(value))


def format_value(value: Any, decimals: int = 4) -> str:
    """Format one table cell.

    Floats are rounded to ``decimals`` places (``-0.000`` is written ``0.000``),
    integers are written as they are, missing values as :data:`MISSING`, and
    anything else through ``str``.
    """
    if type(value) is float:  # fast path for the common case
        return _format_float(value, decimals)
    if is_missing(value):
        return MISSING
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if is_number(value):
        return _format_float(float(value), decimals)
    return str(value)


def _format_float(x: float, decimals: int) -> str:
    if x != x:
        return MISSING
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = f"{x:.{decimals}f}"
    if text[0] == "-" and float(text) == 0.0:
        text = text[1:]
    return text


def display_width(text: str) -> int:
    """Terminal columns taken by ``text`` (wide East Asian chars count 2, combining 0)."""
    if text.isascii():
        return len(text)
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _numeric_columns(rows: Sequence[Sequence[Any]], ncols: int) -> list[bool]:
    """Per column: True if every non-missing cell is a number (right-aligned)."""
    numeric = [True] * ncols
    for row in rows:
        for c, cell in enumerate(row):
            if not is_missing(cell) and not is_number(cell):
                numeric[c] = False
    return numeric


def _check_shape(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> None:
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(
                f"table row {i} has {len(row)} cells but the header has {len(header)}"
            )


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - display_width(text))
    return fill + text if right else text + fill


def text_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], decimals: int = 4) -> str:
    """Aligned plain-text table.

    ``header`` has ``C`` names, ``rows`` is a list of rows of ``C`` cells.
    Columns are separated by two spaces; a column whose cells are all numbers
    (or missing) is right-aligned, any other column left-aligned. A dashed rule
    follows the header; trailing spaces are stripped; no final newline.
    """
    _check_shape(header, rows)
    ncols = len(header)
    numeric = _numeric_columns(rows, ncols)
    head = [str(h) for h in header]
    body = [[format_value(cell, decimals) for cell in row] for row in rows]
    widths = [display_width(h) for h in head]
    for row in body:
        for c, cell in enumerate(row):
            widths[c] = max(widths[c], display_width(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [_pad(cell, widths[c], numeric[c]) for c, cell in enumerate(cells)]
        return "  ".join(parts).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in body)
    return "\n".join(out)


def html_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], decimals: int = 4) -> str:
    """HTML ``<table class="iwr">`` fragment for a summary table.

    Same cell formatting as :func:`text_table`; numeric columns carry class
    ``n`` (right-aligned by the page CSS of :func:`html_page`). All text is
    escaped with :func:`html.escape`.
    """
    _check_shape(header, rows)
    numeric = _numeric_columns(rows, len(header))

    def cls(c: int) -> str:
        return ' class="n"' if numeric[c] else ""

    head = "".join(f"<th{cls(c)}>{html.escape(str(h))}</th>" for c, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{cls(c)}>{html.escape(format_value(cell, decimals))}</td>"
            for c, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="iwr"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained HTML page: inline CSS, no scripts, no external links.

    ``sections`` is a list of ``(heading, html_fragment)``; each becomes a
    ``<section>`` with an ``<h2>`` heading (omitted when the heading is empty)
    followed by the fragment, inserted as is (it is already HTML). The title
    and headings are escaped.
    """
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_PAGE_CSS}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, fragment in sections:
        head = f"<h2>{html.escape(heading)}</h2>" if heading else ""
        parts.append(f"<section>{head}{fragment}</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
