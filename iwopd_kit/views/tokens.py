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

The colour scale of each known series is fixed (:data:`DEFAULT_BOUNDS`,
:data:`SCALE_KINDS`) so a colour means the same thing in every strip. Values
beyond the bounds take the endpoint colour; tooltips and text always show the
true value. Output is byte-identical across runs and processes.
"""

from __future__ import annotations

import functools
import html
import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .report import MISSING, format_value, html_page, text_table

#: Display order of the known series; other series follow in the order given.
SERIES_ORDER: tuple[str, ...] = (
    "rollout", "student", "teacher", "advantage", "weight", "loss", "gap",
)

#: Fixed colour bounds ``(lo, hi)`` per known series. Log-probs: a token with
#: probability 1 (log-prob 0) is white and ``log p <= -5`` is darkest.
#: ``loss`` is the per-token contribution before averaging; pass ``bounds=``
#: when the loss is normalised differently.
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "rollout": (-5.0, 0.0),
    "student": (-5.0, 0.0),
    "teacher": (-5.0, 0.0),
    "advantage": (-2.0, 2.0),
    "weight": (1.0, 1.5),
    "loss": (-2.0, 2.0),
    "gap": (0.0, 0.5),
}

#: Scale kind per known series; series not listed use ``"diverging"``.
#:
#: * ``"diverging"``: white at 0 (or the bound nearest 0), red below, blue above
#: * ``"sequential"``: white at ``lo``, darker purple towards ``hi``
#: * ``"sequential_r"``: white at ``hi``, darker purple towards ``lo``
SCALE_KINDS: dict[str, str] = {
    "rollout": "sequential_r",
    "student": "sequential_r",
    "teacher": "sequential_r",
    "advantage": "diverging",
    "weight": "sequential",
    "loss": "diverging",
    "gap": "sequential",
}

# Colour ramps from white outwards (ColorBrewer RdBu and Purples, both
# colour-blind friendly). The first stop is exactly white.
NEGATIVE_RAMP: tuple[str, ...] = ("#ffffff", "#fddbc7", "#f4a582", "#d6604d", "#b2182b")
POSITIVE_RAMP: tuple[str, ...] = ("#ffffff", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac")
SEQUENTIAL_RAMP: tuple[str, ...] = (
    "#ffffff", "#efedf5", "#dadaeb", "#bcbddc", "#9e9ac8",
    "#807dba", "#6a51a3", "#54278f", "#3f007d",
)

# Visible stand-ins for whitespace inside tokens.
_VISIBLE = {" ": "·", "\t": "→", "\r": "␍", "\n": "⏎"}
_EMPTY_TOKEN = "∅"

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


# --------------------------------------------------------------------------
# colours


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _rgb_to_hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{min(255, max(0, int(round(c)))):02x}" for c in rgb)


def ramp_color(ramp: Sequence[str], t: float) -> str:
    """Colour at fraction ``t`` in ``[0, 1]`` along a ramp (piecewise-linear in sRGB)."""
    t = min(1.0, max(0.0, t))
    pos = t * (len(ramp) - 1)
    i = min(int(pos), len(ramp) - 2)
    f = pos - i
    if f == 0.0:
        return ramp[i]
    if f == 1.0:
        return ramp[i + 1]
    a, b = _hex_to_rgb(ramp[i]), _hex_to_rgb(ramp[i + 1])
    return _rgb_to_hex([a[k] + (b[k] - a[k]) * f for k in range(3)])


@functools.lru_cache(maxsize=4096)
def is_dark(color: str) -> bool:
    """True if white text reads better than black on ``color`` (WCAG luminance)."""
    def channel(c: int) -> float:
        s = c / 255.0
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _hex_to_rgb(color))
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # contrast with white > contrast with black  <=>  lum < ~0.179
    return (1.05 / (lum + 0.05)) > ((lum + 0.05) / 0.05)


@dataclass(frozen=True)
class ColorScale:
    """Maps a value to a background colour.

    ``anchor`` is the value drawn white; values move along ``NEGATIVE_RAMP``
    (or ``SEQUENTIAL_RAMP`` for ``sequential_r``) below it and
    ``POSITIVE_RAMP`` (or ``SEQUENTIAL_RAMP``) above it, reaching the ramp's
    last colour at ``lo`` / ``hi``. Values outside ``[lo, hi]`` are clipped.
    """

    lo: float
    hi: float
    kind: str = "diverging"

    def __post_init__(self) -> None:
        if self.kind not in ("diverging", "sequential", "sequential_r"):
            raise ValueError(f"unknown scale kind {self.kind!r}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"bounds must be finite with lo < hi, got ({self.lo}, {self.hi})")

    @property
    def anchor(self) -> float:
        """The value drawn white."""
        if self.kind == "sequential":
            return self.lo
        if self.kind == "sequential_r":
            return self.hi
        return min(self.hi, max(self.lo, 0.0))

    @property
    def low_ramp(self) -> tuple[str, ...]:
        return SEQUENTIAL_RAMP if self.kind == "sequential_r" else NEGATIVE_RAMP

    @property
    def high_ramp(self) -> tuple[str, ...]:
        return SEQUENTIAL_RAMP if self.kind == "sequential" else POSITIVE_RAMP

    def color(self, value: Optional[float]) -> Optional[str]:
        """``#rrggbb`` for ``value``; ``None`` for a missing value (None / NaN)."""
        if value is None or math.isnan(value):
            return None
        v = min(self.hi, max(self.lo, value))
        a = self.anchor
        if v >= a:
            return ramp_color(self.high_ramp, (v - a) / (self.hi - a) if self.hi > a else 0.0)
        return ramp_color(self.low_ramp, (a - v) / (a - self.lo))

    def gradient_css(self) -> str:
        """CSS ``linear-gradient`` from ``lo`` (left) to ``hi`` (right)."""
        a = (self.anchor - self.lo) / (self.hi - self.lo) * 100.0
        stops: list[str] = []
        if a > 0:
            low = self.low_ramp
            n = len(low) - 1
            stops += [f"{low[n - i]} {a * i / n:.1f}%" for i in range(n + 1)]
        if a < 100:
            high = self.high_ramp
            n = len(high) - 1
            first = 1 if a > 0 else 0  # the anchor's white stop is already there
            stops += [f"{high[i]} {a + (100.0 - a) * i / n:.1f}%" for i in range(first, n + 1)]
        return "linear-gradient(to right," + ",".join(stops) + ")"


def scale_for(name: str, bounds: Optional[tuple[float, float]] = None,
              values: Sequence[Sequence[float]] = ()) -> ColorScale:
    """The colour scale for series ``name``.

    ``bounds`` overrides :data:`DEFAULT_BOUNDS`. For a series with neither,
    the bounds are ``(-m, m)`` with ``m`` the largest finite ``|value|`` in
    ``values`` (all rows; 1 if there is none): data-dependent, so pass ``bounds=`` to
    compare strips of an unknown series.
    """
    kind = SCALE_KINDS.get(name, "diverging")
    if bounds is None:
        bounds = DEFAULT_BOUNDS.get(name)
    if bounds is None:
        finite = [abs(v) for row in values for v in row if math.isfinite(v)]
        m = max(finite, default=0.0) or 1.0
        bounds = (-m, m)
    lo, hi = bounds
    return ColorScale(float(lo), float(hi), kind)


# --------------------------------------------------------------------------
# input normalisation


def _to_numpy_like(data: Any) -> Any:
    """torch tensors -> numpy (float64 for floating dtypes); other inputs unchanged."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):
        t = data.detach().cpu()
        if t.is_floating_point():
            t = t.double()
        return t.numpy()
    return data


def _is_2d_array(data: Any) -> bool:
    return hasattr(data, "ndim") and hasattr(data, "shape") and data.ndim == 2


def _float_or_nan(value: Any, what: str) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected a number or None, got {value!r}") from None


def _id_or_none(value: Any, what: str) -> Optional[int]:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected an integer token id or None, got {value!r}") from None
    if math.isnan(f):
        return None
    if f != int(f):
        raise TypeError(f"{what}: expected an integer token id, got {value!r}")
    return int(f)


def _ragged_rows(name: str, data: Any, lengths: Sequence[int]) -> list[list[Any]]:
    """Cut ``data`` into rows of exactly ``lengths[b]`` values.

    ``data`` is a ragged list of rows (each exactly as long as its token row),
    or a padded ``[B, L]`` numpy array / torch tensor (cut to each row's token
    count; ``L`` must be at least that count).
    """
    data = _to_numpy_like(data)
    n_rows = len(lengths)
    if hasattr(data, "ndim") and data.ndim not in (1, 2):
        raise ValueError(f"{name}: expected [B, L] values, got an array of shape {tuple(data.shape)}")
    if len(data) != n_rows:
        raise ValueError(f"{name} has {len(data)} rows but tokens has {n_rows} rows")
    padded = _is_2d_array(data)
    rows: list[list[Any]] = []
    for b, n in enumerate(lengths):
        row = _to_numpy_like(data[b])
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
            raise TypeError(f"{name} row {b}: expected a sequence of per-token values, got {row!r}")
        if padded:
            if len(row) < n:
                raise ValueError(
                    f"{name} row {b}: padded width {len(row)} is shorter than the row's {n} tokens"
                )
            row = row[:n]
        elif len(row) != n:
            raise ValueError(f"{name} row {b} has {len(row)} values but the row has {n} tokens")
        rows.append(list(row.tolist() if hasattr(row, "tolist") else row))
    return rows


def _normalise_tokens(tokens: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    if isinstance(tokens, (str, bytes)):
        raise TypeError("tokens: expected a list of rows, each a list of token strings")
    out = []
    for b, row in enumerate(tokens):
        if isinstance(row, (str, bytes)):
            raise TypeError(f"tokens row {b} is a string; expected a list of token strings")
        for j, tok in enumerate(row):
            if not isinstance(tok, str):
                raise TypeError(f"tokens row {b} position {j}: expected str, got {tok!r}")
        out.append(tuple(row))
    return tuple(out)


def _ordered_names(names: Sequence[str]) -> list[str]:
    known = [n for n in SERIES_ORDER if n in names]
    return known + [n for n in names if n not in SERIES_ORDER]


def _normalise_series(series: Mapping[str, Any], lengths: Sequence[int]
                      ) -> dict[str, tuple[tuple[float, ...], ...]]:
    out: dict[str, tuple[tuple[float, ...], ...]] = {}
    for name in _ordered_names(list(series)):
        if not isinstance(name, str):
            raise TypeError(f"series names must be strings, got {name!r}")
        rows = _ragged_rows(f"series {name!r}", series[name], lengths)
        out[name] = tuple(
            tuple(_float_or_nan(v, f"series {name!r} row {b} position {j}") for j, v in enumerate(row))
            for b, row in enumerate(rows)
        )
    return out


def _normalise_window(window: Optional[Sequence[Optional[int]]]) -> Optional[tuple[int, Optional[int]]]:
    if window is None:
        return None
    if len(window) != 2:
        raise ValueError(f"window must be (start, stop), got {window!r}")
    start, stop = window
    start = 0 if start is None else int(start)
    if start < 0 or (stop is not None and int(stop) < start):
        raise ValueError(f"window must satisfy 0 <= start <= stop, got {window!r}")
    return start, (None if stop is None else int(stop))


# --------------------------------------------------------------------------
# token text


def _visible_char(ch: str) -> Optional[str]:
    """Stand-in for an invisible character, or None if ``ch`` prints as itself."""
    if ch in _VISIBLE:
        return _VISIBLE[ch]
    cat = unicodedata.category(ch)
    if cat == "Cc":
        return f"\\x{ord(ch):02x}"
    if cat in ("Cf", "Zs", "Zl", "Zp"):
        return f"\\u{ord(ch):04x}"
    return None


def visible_text(token: str) -> str:
    """Plain-text form of a token with whitespace made visible (``' '`` -> ``'·'``, ``'\\n'`` -> ``'⏎'``)."""
    if token == "":
        return _EMPTY_TOKEN
    if token.isprintable() and " " not in token:  # fast path: nothing to replace
        return token
    return "".join(_visible_char(ch) or ch for ch in token)


def visible_html(token: str) -> str:
    """Escaped HTML form of a token; stand-ins are wrapped in ``<i>`` (drawn faint)."""
    if token == "":
        return f"<i>{_EMPTY_TOKEN}</i>"
    if token.isprintable() and " " not in token:  # fast path: nothing to replace
        return html.escape(token)
    parts = []
    for ch in token:
        sub = _visible_char(ch)
        parts.append(f"<i>{html.escape(sub)}</i>" if sub else html.escape(ch))
    return "".join(parts)


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
        """``(header, rows)`` of the text table: row, pos, token, [id], one column per series."""
        header = ["row", "pos", "token"] + (["id"] if self.token_ids is not None else [])
        header += list(self.series)
        out: list[list[Any]] = []
        for b in self.rows:
            for j in self.positions(b):
                line: list[Any] = [b, j, visible_text(self.tokens[b][j])]
                if self.token_ids is not None:
                    line.append(self.token_ids[b][j])
                line += [self.series[name][b][j] for name in self.series]
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
        head = f"j={j}"
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
        parts.append("<div>" + "".join(self._token_html(b, j) for j in pos) + "</div></div>")
        return "".join(parts)

    def _legend_html(self) -> str:
        if self.scale is None or self.color_by is None:
            return '<div class="iwv-l">no colour; hover a token for its values</div>'
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
            " · hover a token for its values</div>"
        )

    def to_html(self, full_page: bool = False) -> str:
        """The HTML fragment (inline CSS), or a full ``<!doctype html>`` page."""
        title = "" if (full_page or not self.title) else (
            f'<div class="iwv-t">{html.escape(self.title)}</div>'
        )
        body = "".join(self._row_html(b) for b in self.rows)
        fragment = f'<div class="iwv"><style>{_CSS}</style>{title}{self._legend_html()}{body}</div>'
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
    tokens: Sequence[Sequence[str]],
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
) -> TokenStrip:
    """Build a :class:`TokenStrip` from per-token data, validating at the boundary.

    Args:
        tokens: ``B`` rows, each a list of ``L_b`` completion token strings
            (token ``j`` = the ``j``-th generated token of row ``b``).
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

    Raises:
        ValueError: a series or ``token_ids`` row whose length differs from its
            token row (the message names the series, the row and both
            lengths), a wrong number of rows or prompts, an unknown
            ``color_by`` (the message lists the series), bad ``rows`` /
            ``window`` / ``bounds``.
    """
    toks = _normalise_tokens(tokens)
    lengths = [len(r) for r in toks]
    if not isinstance(series, Mapping):
        raise TypeError("series: expected a dict mapping series name -> per-token values")
    vals = _normalise_series(series, lengths)

    if color_by is not None and color_by not in vals:
        available = ", ".join(vals) or "(none; pass color_by=None)"
        raise ValueError(f"color_by={color_by!r} is not one of the series: {available}")

    ids = None
    if token_ids is not None:
        ids = tuple(
            tuple(_id_or_none(v, f"token_ids row {b} position {j}") for j, v in enumerate(row))
            for b, row in enumerate(_ragged_rows("token_ids", token_ids, lengths))
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

    return TokenStrip(
        tokens=toks,
        series=vals,
        color_by=color_by,
        scale=scale,
        prompts=prm,
        token_ids=ids,
        rows=shown,
        window=_normalise_window(window),
        title=title,
        decimals=decimals,
    )
