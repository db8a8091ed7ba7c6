"""What one pass of the pipeline produced, as plain data (no models, no engines, no views).

A leaf data type: :mod:`iwopd_kit.apps.pipeline` builds it, the views (``views.widgets``) read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..alignment.core import AlignmentReport
from ..batch import Batch
from ..objective import ObjectiveResult


@dataclass
class PipelineResult:
    """Everything one pass produced: the scored batch, the check, IW-OPD and OPD results."""

    batch: Batch
    report: AlignmentReport
    iw_opd: ObjectiveResult
    opd: ObjectiveResult
    tokens: list[list[str]]
    prompts: list[str]
    correct: list[bool]
    gamma: float
    settings: dict[str, Any] = field(default_factory=dict)


__all__ = ["PipelineResult"]
