"""Per-token strips: one coloured box per generated token, one line per row.

Coordinate frame: row ``b`` is one sampled completion of the batch; token ``j``
is the ``j``-th *generated* token of that row (``j = 0`` is the first token
after the prompt). Every per-token series is indexed the same way, so
``series["advantage"][b][j]`` belongs to ``tokens[b][j]``.

Series the kit produces (any other name is accepted too):

* ``rollout``   log-prob of the sampled token under the rollout engine
* ``student``   the same log-prob recomputed by the trained student
* ``teacher``   the teacher's log-prob of that token
* ``advantage`` ``A = teacher - rollout``
* ``weight``    the importance weight ``w`` in ``[1, 1 + gamma]``
* ``loss``      the token's contribution to the loss
* ``gap``       ``|rollout - student|``

Missing values are ``None`` or NaN; they are written ``—`` and left uncoloured.

Without token text (``tokens=None``) the strip shows the token ids, one separated box each. Marked
tokens (``mark=[(row, position), ...]``, e.g. the token a finding points at) get a thick outline in
the HTML (and so in its PNG copy) and a ``*`` in the text table's ``mark`` column.

The colour scale of each known series is fixed (:data:`DEFAULT_BOUNDS`,
:data:`SCALE_KINDS`) so a colour means the same thing in every strip. Values
beyond the bounds take the endpoint colour; tooltips and text always show the
true value. Output is byte-identical across runs and processes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .colors import (
    DEFAULT_BOUNDS, NEGATIVE_RAMP, POSITIVE_RAMP, SCALE_KINDS, SEQUENTIAL_RAMP, ColorScale, is_dark,
    ramp_color, scale_for,
)
from .inputs import (
    SERIES_ORDER, id_or_none, normalise_series, normalise_tokens, normalise_window, ragged_rows,
)
from .report import MISSING, format_value, html_page, text_table
from .text import visible_html, visible_text

_CSS = (
    ".iwv{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
    "font-size:13px;line-height:1.25;color:#111}"
    ".iwv .k{display:inline-block;white-space:pre;padding:1px 1px;margin:1px 0;"
    "border-radius:2px;min-width:.4em}"
    ".iwv .w{color:#fff}"
    ".iwv .m{outline:1px dashed #bbb;outline-offset:-1px}"
    ".iwv .k i{font-style:normal;opacity:.55}"
    ".iwv-t{font-weight:bold;margin:.2em 0}"
    ".iwv-l{font-size:11px;color:#444;margin:.2em 0 .5em}"
    ".iwv-g{display:inline-block;width:10em;height:.8em;vertical-align:middle;"
    "border:1px solid #ccc;margin:0 .4em}"
    ".iwv-r{margin:.3em 0 .7em}"
    ".iwv-h{font-size:11px;color:#666}"
    ".iwv details{font-size:11px;color:#444}"
    ".iwv details pre{white-space:pre-wrap;margin:.2em 0;padding:.3em;background:#f6f6f6}"
)

# Only in strips that show ids or mark tokens (the other strips' HTML stays as it was).
_EXTRA_CSS = (
    ".iwv .d{margin:1px 3px 1px 0;padding:1px 3px;box-shadow:inset 0 0 0 1px #d0d0d0}"
    ".iwv .x{outline:3px solid #111;outline-offset:1px;font-weight:bold;position:relative;z-index:1}"
)


# --------------------------------------------------------------------------
# the strip


@dataclass(frozen=True, repr=False)
class TokenStrip:
    """Validated per-token data plus how to show it.

    Shapes: ``tokens[b][j]`` is token ``j`` of row ``b``; ``series[name][b][j]``
    the matching float (NaN = missing); ``token_ids[b][j]`` an int or None.
    ``rows`` lists the rows shown, ``window = (start, stop)`` the positions
    ``start <= j < stop`` shown (``stop`` None = to the end).

    Display: ``_repr_html_()`` / :meth:`to_html` (coloured HTML), ``repr()`` /
    :meth:`to_text` (one text line per token); in a notebook the HTML is followed by a PNG copy
    for front ends without CSS (:func:`iwopd_kit.views.static.display_html_view`).
    """

    tokens: tuple[tuple[str, ...], ...]
    series: dict[str, tuple[tuple[float, ...], ...]]
    color_by: Optional[str]
    scale: Optional[ColorScale]
    prompts: Optional[tuple[str, ...]] = None
    token_ids: Optional[tuple[tuple[Optional[int], ...], ...]] = None
    rows: tuple[int, ...] = ()
    window: Optional[tuple[int, Optional[int]]] = None
    title: Optional[str] = None
    decimals: int = 3
    marks: frozenset = frozenset()
    ids_shown: bool = False

    # -- selection --------------------------------------------------------

    def positions(self, b: int) -> range:
        """Positions ``j`` of row ``b`` that are shown (the window, cut to the row)."""
        n = len(self.tokens[b])
        if self.window is None:
            return range(n)
        start, stop = self.window
        stop = n if stop is None else min(stop, n)
        return range(min(start, n), max(min(start, n), stop))

    @property
    def n_shown(self) -> int:
        """Number of tokens shown over all selected rows."""
        return sum(len(self.positions(b)) for b in self.rows)

    # -- text -------------------------------------------------------------

    def text_rows(self) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)`` of the text table: row, pos, token (or id when there is no token text), [id],
        one column per series, and a ``mark`` column (``*``) when tokens are marked."""
        with_id = self.token_ids is not None and not self.ids_shown
        header = ["row", "pos", "id" if self.ids_shown else "token"] + (["id"] if with_id else [])
        header += list(self.series) + (["mark"] if self.marks else [])
        out: list[list[Any]] = []
        for b in self.rows:
            for j in self.positions(b):
                line: list[Any] = [b, j, visible_text(self.tokens[b][j])]
                if with_id:
                    line.append(self.token_ids[b][j])
                line += [self.series[name][b][j] for name in self.series]
                if self.marks:
                    line.append("*" if (b, j) in self.marks else "")
                out.append(line)
        return header, out

    def to_text(self) -> str:
        """Plain-text table, one line per shown token, values rounded to ``decimals``."""
        header, rows = self.text_rows()
        table = text_table(header, rows, decimals=self.decimals)
        return f"{self.title}\n{table}" if self.title else table

    def __repr__(self) -> str:
        return self.to_text()

    def __str__(self) -> str:
        return self.to_text()

    # -- html -------------------------------------------------------------

    def _tooltip(self, b: int, j: int) -> str:
        head = ("flagged · " if (b, j) in self.marks else "") + f"j={j}"
        if self.token_ids is not None:
            tid = self.token_ids[b][j]
            head += f" id={MISSING if tid is None else tid}"
        lines = [head] + [
            f"{name}={format_value(vals[b][j], self.decimals)}" for name, vals in self.series.items()
        ]
        return html.escape("\n".join(lines), quote=True)

    def _token_html(self, b: int, j: int) -> str:
        tok = self.tokens[b][j]
        attrs = ""
        cls = "k"
        if self.scale is not None and self.color_by is not None:
            color = self.scale.color(self.series[self.color_by][b][j])
            if color is None:
                cls = "k m"
            else:
                attrs = f' style="background-color:{color}"'
                if is_dark(color):
                    cls = "k w"
        if self.ids_shown:
            cls += " d"
        if (b, j) in self.marks:
            cls += " x"
        breaks = "<br>" * tok.count("\n")
        return f'<span class="{cls}"{attrs} title="{self._tooltip(b, j)}">{visible_html(tok)}</span>{breaks}'

    def _row_html(self, b: int) -> str:
        n = len(self.tokens[b])
        pos = self.positions(b)
        head = f"row {b} · {n} tokens"
        if self.window is not None:
            head += f" · positions {pos.start}–{pos.stop - 1}" if len(pos) else " · no positions in window"
        parts = [f'<div class="iwv-r"><div class="iwv-h">{html.escape(head)}</div>']
        if self.prompts is not None:
            parts.append(
                "<details><summary>prompt</summary>"
                f"<pre>{html.escape(self.prompts[b])}</pre></details>"
            )
        sep = " " if self.ids_shown else ""   # ids stay apart even where the stylesheet is stripped
        parts.append("<div>" + sep.join(self._token_html(b, j) for j in pos) + "</div></div>")
        return "".join(parts)

    def _legend_html(self) -> str:
        extra = ""
        if self.ids_shown:
            extra += " · boxes show token ids (no tokenizer given)"
        if self.marks:
            extra += ' · <span class="k x">flagged</span> token outlined'
        if self.scale is None or self.color_by is None:
            return f'<div class="iwv-l">no colour{extra}; hover a token for its values</div>'
        s = self.scale
        kind = {"diverging": "diverging", "sequential": "sequential",
                "sequential_r": "sequential, reversed"}[s.kind]
        return (
            '<div class="iwv-l">'
            f"colour: <b>{html.escape(self.color_by)}</b> ({kind}) "
            f"{_fmt_bound(s.lo)}"
            f'<span class="iwv-g" style="background:{s.gradient_css()}"></span>'
            f"{_fmt_bound(s.hi)} · white at {_fmt_bound(s.anchor)}"
            " · clipped beyond the bounds · missing: "
            f'<span class="k m">{MISSING}</span>'
            f"{extra} · hover a token for its values</div>"
        )

    def to_html(self, full_page: bool = False) -> str:
        """The HTML fragment (inline CSS), or a full ``<!doctype html>`` page."""
        title = "" if (full_page or not self.title) else (
            f'<div class="iwv-t">{html.escape(self.title)}</div>'
        )
        body = "".join(self._row_html(b) for b in self.rows)
        css = _CSS + (_EXTRA_CSS if self.ids_shown or self.marks else "")
        fragment = f'<div class="iwv"><style>{css}</style>{title}{self._legend_html()}{body}</div>'
        if full_page:
            return html_page(self.title or "Token strip", [("", fragment)])
        return fragment

    def _repr_html_(self) -> str:
        return self.to_html()

    def _ipython_display_(self) -> None:
        """In a notebook: the HTML, then (in a kernel with Chromium) its PNG copy; see :mod:`.static`."""
        from .static import display_html_view

        display_html_view(self.to_html(), self.to_text(), "token strip")


def _fmt_bound(x: float) -> str:
    return f"{x:g}"


def token_strip(
    tokens: Optional[Sequence[Sequence[str]]],
    series: Mapping[str, Any],
    color_by: Optional[str] = "advantage",
    *,
    prompts: Optional[Sequence[str]] = None,
    token_ids: Any = None,
    rows: Optional[Sequence[int]] = None,
    window: Optional[tuple[Optional[int], Optional[int]]] = None,
    bounds: Optional[tuple[float, float]] = None,
    title: Optional[str] = None,
    decimals: int = 3,
    mark: Optional[Sequence[tuple[int, int]]] = None,
) -> TokenStrip:
    """Build a :class:`TokenStrip` from per-token data, validating at the boundary.

    Args:
        tokens: ``B`` rows, each a list of ``L_b`` completion token strings
            (token ``j`` = the ``j``-th generated token of row ``b``); ``None`` with
            ``token_ids`` given: show the ids (no tokenizer known), one box each.
        series: name -> per-token floats, either ragged ``B`` rows of exactly
            ``L_b`` values or a padded ``[B, L]`` numpy array / torch tensor
            (cut to ``L_b`` per row). ``None`` / NaN = missing.
        color_by: series that colours the tokens (``None``: no colour).
        prompts: optional ``B`` prompt strings, shown collapsed above each row.
        token_ids: optional ids, same layout as a series, shown in tooltips
            and as the ``id`` text column.
        rows: row indices to show, in that order (default: all).
        window: ``(start, stop)`` -> show only positions ``start <= j < stop``.
        bounds: ``(lo, hi)`` of the colour scale (default
            :data:`DEFAULT_BOUNDS` for ``color_by``).
        title: optional heading.
        decimals: decimals of the values in tooltips and text.
        mark: ``(row, position)`` pairs of tokens to outline (e.g. a finding's token).

    Raises:
        ValueError: a series or ``token_ids`` row whose length differs from its
            token row (the message names the series, the row and both
            lengths), a wrong number of rows or prompts, an unknown
            ``color_by`` (the message lists the series), bad ``rows`` /
            ``window`` / ``bounds``.
    """
    ids_shown = tokens is None
    if ids_shown:
        if token_ids is None:
            raise ValueError("tokens=None needs token_ids: the strip shows the ids when there is no token text")
        if hasattr(token_ids, "shape"):
            raise TypeError("tokens=None needs ragged token_ids (B lists of L_b ids): a padded array has no row lengths")
        tokens = [[MISSING if v is None else str(v) for v in row] for row in token_ids]
    toks = normalise_tokens(tokens)
    lengths = [len(r) for r in toks]
    if not isinstance(series, Mapping):
        raise TypeError("series: expected a dict mapping series name -> per-token values")
    vals = normalise_series(series, lengths)

    if color_by is not None and color_by not in vals:
        available = ", ".join(vals) or "(none; pass color_by=None)"
        raise ValueError(f"color_by={color_by!r} is not one of the series: {available}")

    ids = None
    if token_ids is not None:
        ids = tuple(
            tuple(id_or_none(v, f"token_ids row {b} position {j}") for j, v in enumerate(row))
            for b, row in enumerate(ragged_rows("token_ids", token_ids, lengths))
        )

    prm = None
    if prompts is not None:
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of prompt strings, one per row")
        prm = tuple(str(p) for p in prompts)
        if len(prm) != len(toks):
            raise ValueError(f"prompts has {len(prm)} entries but tokens has {len(toks)} rows")

    if rows is None:
        shown = tuple(range(len(toks)))
    else:
        shown = tuple(int(r) for r in rows)
        bad = [r for r in shown if not 0 <= r < len(toks)]
        if bad:
            raise ValueError(f"rows {bad} out of range for {len(toks)} rows")

    if not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative int, got {decimals!r}")

    scale = None
    if color_by is not None:
        if bounds is not None and len(bounds) != 2:
            raise ValueError(f"bounds must be (lo, hi), got {bounds!r}")
        scale = scale_for(color_by, bounds, vals[color_by])

    marks = frozenset()
    if mark is not None:
        marks = frozenset((int(b), int(j)) for b, j in mark)
        bad = [(b, j) for b, j in sorted(marks) if not (0 <= b < len(toks) and 0 <= j < lengths[b])]
        if bad:
            raise ValueError(f"mark: (row, position) pairs {bad} are outside the tokens (rows 0..{len(toks) - 1}, "
                             "positions 0..L_b - 1)")

    return TokenStrip(
        tokens=toks,
        series=vals,
        color_by=color_by,
        scale=scale,
        prompts=prm,
        token_ids=ids,
        rows=shown,
        window=normalise_window(window),
        title=title,
        decimals=decimals,
        marks=marks,
        ids_shown=ids_shown,
    )


# the strip's public names, with the colour, input and text helpers it re-exports from .colors, .inputs, .text
__all__ = [
    "DEFAULT_BOUNDS", "NEGATIVE_RAMP", "POSITIVE_RAMP", "SCALE_KINDS", "SEQUENTIAL_RAMP", "SERIES_ORDER", "ColorScale",
    "TokenStrip", "is_dark", "ramp_color", "scale_for", "token_strip", "visible_html", "visible_text",
]
