"""The one table of per-token series names: one name per series, with what every view needs of it.

A series has one name everywhere a reader sees it (``"rollout"``, ``"gap"``, ...): the token strips'
``color_by``, the widgets, the plots' legends, the check report. ``field`` is the :class:`~iwopd_kit.batch.Batch`
field a measured series is read from (``rollout_logprobs``...; None for a derived series), ``label``
how a legend or caption names it, ``bounds`` / ``scale`` its fixed colour scale in the strips
(:mod:`iwopd_kit.views.colors`), ``color`` its line colour in the plots.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS


@dataclass(frozen=True)
class SeriesName:
    name: str
    field: str | None
    label: str
    bounds: tuple[float, float]
    scale: str
    color: str | None = None


SERIES_NAMES: tuple[SeriesName, ...] = (
    SeriesName("rollout", ROLLOUT_LOGPROBS, "rollout log-prob", (-5.0, 0.0), "sequential_r", "#1b9e77"),
    SeriesName("student", STUDENT_LOGPROBS, "student log-prob", (-5.0, 0.0), "sequential_r", "#7570b3"),
    SeriesName("teacher", TEACHER_LOGPROBS, "teacher log-prob", (-5.0, 0.0), "sequential_r", "#d95f02"),
    SeriesName("advantage", None, "advantage A", (-2.0, 2.0), "diverging", "#4393c3"),
    SeriesName("weight", None, "prefix weight w", (1.0, 1.5), "sequential", "#b2182b"),
    SeriesName("loss", None, "per-token loss", (-2.0, 2.0), "diverging"),
    SeriesName("gap", None, "|rollout − student|", (0.0, 0.5), "sequential"),
)
"""Every known series, in display order."""

BY_NAME: dict[str, SeriesName] = {s.name: s for s in SERIES_NAMES}
MEASURED: tuple[SeriesName, ...] = tuple(s for s in SERIES_NAMES if s.field is not None)
"""The series a batch stores (rollout, student, teacher), with their Batch fields."""


def series_label(name: str) -> str:
    """How a legend or caption names a series (its own name when it is not in the table)."""
    s = BY_NAME.get(name)
    return s.label if s is not None else name


__all__ = ["SeriesName", "SERIES_NAMES", "BY_NAME", "MEASURED", "series_label"]
