"""Colour scales of the per-token views: fixed bounds per series, white-centred ramps.

ColorBrewer RdBu (diverging) and Purples (sequential), both colour-blind friendly; the first stop of
every ramp is exactly white, and the text colour flips to white on dark backgrounds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .names import SERIES_NAMES

#: Fixed colour bounds ``(lo, hi)`` per known series (from :data:`~iwopd_kit.views.names.SERIES_NAMES`). Log-probs: a token with
#: probability 1 (log-prob 0) is white and ``log p <= -5`` is darkest.
#: ``loss`` is the per-token contribution before averaging; pass ``bounds=``
#: when the loss is normalised differently.
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {s.name: s.bounds for s in SERIES_NAMES}

#: Scale kind per known series; series not listed use ``"diverging"``.
#:
#: * ``"diverging"``: white at 0 (or the bound nearest 0), red below, blue above
#: * ``"sequential"``: white at ``lo``, darker purple towards ``hi``
#: * ``"sequential_r"``: white at ``hi``, darker purple towards ``lo``
SCALE_KINDS: dict[str, str] = {s.name: s.scale for s in SERIES_NAMES}

# Colour ramps from white outwards (ColorBrewer RdBu and Purples, both
# colour-blind friendly). The first stop is exactly white.
NEGATIVE_RAMP: tuple[str, ...] = ("#ffffff", "#fddbc7", "#f4a582", "#d6604d", "#b2182b")
POSITIVE_RAMP: tuple[str, ...] = ("#ffffff", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac")
SEQUENTIAL_RAMP: tuple[str, ...] = (
    "#ffffff", "#efedf5", "#dadaeb", "#bcbddc", "#9e9ac8",
    "#807dba", "#6a51a3", "#54278f", "#3f007d",
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
