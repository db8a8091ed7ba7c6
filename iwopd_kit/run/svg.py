"""Small inline-SVG charts for the run report: lines over steps with a healthy band, stacked bars.

Plain strings, no script, no external reference; deterministic (fixed number formatting), so a page
renders the same offline and can be compared byte for byte. x is the step number.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

PALETTE = ("#2166ac", "#b2182b", "#1b7837", "#762a83", "#e08214", "#35978f", "#8c510a", "#c51b7d", "#4d4d4d",
           "#5aae61", "#9970ab", "#d6604d", "#4393c3")
"""Line / bar colours, in order (ColorBrewer dark tones)."""

W, H = 340, 170
L, R, T, B = 52, 10, 22, 26          # margins: left (y labels), right, top (title), bottom (x labels)


def _num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.2e}" if a < 1e-3 or a >= 1e4 else f"{v:.4g}"


def _finite(ys: Sequence[float | None]) -> list[float]:
    return [float(y) for y in ys if y is not None and math.isfinite(float(y))]


def _scale(lo: float, hi: float, log: bool):
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi <= lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad

    def y(v: float) -> float:
        t = ((math.log10(v) if log else v) - lo) / (hi - lo)
        return T + (1 - t) * (H - T - B)
    return y, lo, hi


def _x(xs: Sequence[int]):
    x0, x1 = min(xs), max(xs)
    span = (x1 - x0) or 1

    def x(v: float) -> float:
        return L + (v - x0) / span * (W - L - R) if x1 > x0 else (L + W - R) / 2
    return x


def line_chart(title: str, xs: Sequence[int], series: Sequence[tuple[str, Sequence[float | None]]],
               band: tuple[float | None, float | None] = (None, None), marks: Sequence[int] = ()) -> str:
    """One metric over steps: a polyline per series (None / non-finite values break the line), the healthy band
    shaded green (``band`` = (low, high), either None for no bound) and a red tick under each step in ``marks``.

    A log y axis is used when every value is positive and they span more than two decades."""
    vals = [v for _, ys in series for v in _finite(ys)]
    lo_b, hi_b = band
    esc = html.escape(title)
    head = f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">' \
           f'<title>{esc}</title><text x="{L}" y="14" font-size="12" font-weight="bold">{esc}</text>'
    if not vals or not xs:
        return head + f'<text x="{L}" y="{H / 2:.0f}" font-size="11" fill="#777">no values</text></svg>'
    bounds = [b for b in (lo_b, hi_b) if b is not None]
    lo, hi = min(vals + bounds), max(vals + bounds)
    log = lo > 0 and hi / lo > 100
    y, _, _ = _scale(lo, hi, log)
    x = _x(xs)
    parts = [head, f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#ccc"/>']
    if bounds:
        top = y(hi_b) if hi_b is not None else T
        bottom = y(lo_b) if lo_b is not None else H - B
        top, bottom = max(T, min(top, H - B)), max(T, min(bottom, H - B))
        parts.append(f'<rect x="{L}" y="{top:.1f}" width="{W - L - R}" height="{max(bottom - top, 0):.1f}" '
                     'fill="#1b7837" fill-opacity="0.10"/>')
        for b_ in bounds:
            parts.append(f'<line x1="{L}" x2="{W - R}" y1="{y(b_):.1f}" y2="{y(b_):.1f}" stroke="#1b7837" '
                         f'stroke-dasharray="4 3"/><text x="{W - R - 2}" y="{y(b_) - 2:.1f}" font-size="9" '
                         f'text-anchor="end" fill="#1b7837">{_num(b_)}</text>')
    for v in (hi, lo):                                   # the data's range (and bounds), where they sit
        parts.append(f'<text x="{L - 4}" y="{y(v) + 4:.0f}" font-size="10" text-anchor="end">{_num(v)}</text>')
    parts.append(f'<text x="{L}" y="{H - 8}" font-size="10">{xs[0]}</text>'
                 f'<text x="{W - R}" y="{H - 8}" font-size="10" text-anchor="end">{xs[-1]}</text>'
                 f'<text x="{(L + W - R) / 2:.0f}" y="{H - 8}" font-size="10" text-anchor="middle">step</text>')
    for m in marks:
        parts.append(f'<line x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{H - B}" y2="{H - B - 6}" stroke="#b2182b" '
                     'stroke-width="2"/>')
    for i, (name, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        runs, cur = [], []
        for xv, yv in zip(xs, ys):
            ok = yv is not None and math.isfinite(float(yv)) and (not log or float(yv) > 0)
            if ok:
                cur.append(f"{x(xv):.1f},{y(float(yv)):.1f}")
            elif cur:
                runs.append(cur)
                cur = []
        runs.append(cur)
        for pts in runs:
            if len(pts) == 1:
                cx, cy = pts[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            elif pts:
                parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="1.6">'
                             f'<title>{html.escape(name)}</title></polyline>')
    return "".join(parts) + "</svg>"


def stacked_bars(title: str, xs: Sequence[int], layers: Sequence[tuple[str, Sequence[int]]]) -> str:
    """Counts per step stacked by layer (e.g. findings by kind); each bar's tooltip lists its counts."""
    esc = html.escape(title)
    totals = [sum(c[i] for _, c in layers) for i in range(len(xs))]
    out = [f'<svg width="{W * 2}" height="{H}" viewBox="0 0 {W * 2} {H}" '
           f'role="img"><title>{esc}</title><text x="{L}" y="14" font-size="12" font-weight="bold">{esc}</text>']
    top = max(totals, default=0)
    if not xs or top == 0:
        return out[0] + f'<text x="{L}" y="{H / 2:.0f}" font-size="11" fill="#777">no findings</text></svg>'
    width = W * 2 - L - R
    bw = width / len(xs)
    scale = (H - T - B) / top
    out.append(f'<text x="{L - 4}" y="{T + 4}" font-size="10" text-anchor="end">{top}</text>'
               f'<text x="{L - 4}" y="{H - B + 4}" font-size="10" text-anchor="end">0</text>')
    for i, step in enumerate(xs):
        y0 = H - B
        tip = f"step {step}: " + ", ".join(f"{n} {c[i]}" for n, c in layers if c[i])
        out.append(f"<g><title>{html.escape(tip)}</title>")
        for k, (_, counts) in enumerate(layers):
            h = counts[i] * scale
            if h:
                out.append(f'<rect x="{L + i * bw + bw * 0.1:.1f}" y="{y0 - h:.1f}" width="{bw * 0.8:.1f}" '
                           f'height="{h:.1f}" fill="{PALETTE[k % len(PALETTE)]}"/>')
                y0 -= h
        out.append("</g>")
    out.append(f'<text x="{L}" y="{H - 8}" font-size="10">{xs[0]}</text><text x="{W * 2 - R}" y="{H - 8}" '
               f'font-size="10" text-anchor="end">{xs[-1]}</text>')
    return "".join(out) + "</svg>"


def legend(names: Sequence[str]) -> str:
    """Coloured swatches in :data:`PALETTE` order (the order of the chart's series / layers)."""
    return '<p class="lg">' + " ".join(
        f'<span><span style="display:inline-block;width:.9em;height:.9em;background:{PALETTE[i % len(PALETTE)]};'
        f'vertical-align:middle"></span> {html.escape(n)}</span>' for i, n in enumerate(names)) + "</p>"


__all__ = ["line_chart", "stacked_bars", "legend", "PALETTE"]
