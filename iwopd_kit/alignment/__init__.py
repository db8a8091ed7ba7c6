"""The alignment check: do the rollout, student and teacher series describe the same tokens?

One small detector per failure class (13 of them, :data:`KINDS`); ``check_alignment`` runs every
one its inputs allow and returns an :class:`AlignmentReport`. Every finding names its ``kind``,
``row`` (0-based row of the input; None for a batch-level finding), ``position`` (0-based
completion token index, or None), ``severity`` (error / warning / info) and a message that says
what to change.

Coordinate frame: every series is ``[B, L]`` in completion coordinates (token j = the j-th
generated token of row b, right-padded, NaN where missing); ``gap = rollout - trainer`` per token
(trainer = the student's recompute, minus ``kept_logmass`` where recorded). A finding may name a
``group`` (``batch.groups``) instead of, or beside, a row.

Which tokens: the gap detectors read the *open* policy tokens (``batch.policy_mask()``: loss-masked and
sampled by the policy, with a finite rollout and trainer value, not yet explained by an earlier finding);
each finding explains a set of tokens (``Context.mark``; the report's ``token_kinds`` [B, L]), and numerics
judges whatever is left, per group and for the batch (docs/method.md, "which tokens each detector reads").

Where things live:

- ``core``: :class:`Finding`, :class:`AlignmentReport`, :class:`RowLag`, what a detector is
  (:class:`~iwopd_kit.alignment.core.Detector`, its ``needs`` and ``run(context)``), re-exporting
  ``kinds`` (:data:`KINDS`), ``tolerances`` (:class:`Tolerances`) and ``context`` (:class:`Context`, the
  explanation map, groups, the trainer series);
- ``lags``: the segment-aware lag scan and the offset rule (``fit_shifts``; ``shifted_rows`` per row);
- the detectors, by family: ``gap_rows`` (offset A, ordering L, padding F; 0.0 values: ``zeros``),
  ``gap_batch`` (temperature H, processed I, staleness J, fitted per group), ``numerics`` (M),
  ``coverage`` (missing values B, teacher coverage C, truncation G; the teacher's shift by up to max_lag tokens:
  ``teacher_shift``, an offset warning), ``tokens`` (tokenizer mismatch D,
  BOS/EOS E; "stop" rows: ``stops``), ``normalisation`` (K);
- ``check``: the ordered ``REGISTRY`` and ``check_alignment``; one class alone:
  ``detector(kind)(Context(batch, tol, ...))``.

Detectors compare *series*; they never recompute them. Thresholds live in :class:`Tolerances`
(nats). Calibration assumptions:

- healthy float32 vLLM rollout vs transformers recompute of the same weights: max |gap| ~3e-6
  (measured on the bundled tiny models); ``same = 1e-3`` sits ~300x above it;
- bf16 on one side: max |gap| ~0.06, no structure; ``rounding = 0.25`` keeps that a warning;
- real misalignment (an offset, a 1/T rescale, a top-p renormalisation, left padding without
  position ids, a re-ordered row) changes values by > 0.05 on most tokens and has a structure the
  detectors look for (a better lag, a sign, growth with the pad amount, a match with another row);
- a stale rollout policy shows a small gap of consistent sign in every row (the rollout policy
  prefers its own samples: E[log pi_old - log pi_new] = KL >= 0); ``stale_t`` is the pooled
  t-statistic a group's mean must reach so that rounding noise never qualifies.

Meta keys read (all optional, per row in ``batch.meta``): ``stop`` / ``stop_reason`` (what stopped a
"stop" row, for E), ``policy_version`` (the weights vLLM
sampled with) and ``trainer_version`` (the weights being trained) for J; ``teacher_prompt_length``,
``teacher_completion_length``, ``student_prompt_length``, ``student_completion_length`` (what the
other side saw) for G; ``grad_accum_steps`` for K.
"""

from __future__ import annotations

from ..objective.core import REDUCTIONS
from .check import REGISTRY, check_alignment, detector, run_detectors, run_order
from .context import Context
from .core import AlignmentReport, Detector, Finding, Need, RowLag
from .kinds import KINDS, SEVERITIES
from .lags import (
    ShiftedRows,
    Shifts,
    best_lags,
    fit_shifts,
    lag_scan,
    prompt_length_lags,
    row_lag_error,
    segment_ids,
    shifted_rows,
)
from .tokens import SAMPLE_TEXTS, detect_tokenizer_mismatch
from .tolerances import Tolerances

__all__ = [
    "KINDS", "SEVERITIES", "REDUCTIONS", "SAMPLE_TEXTS", "Finding", "Tolerances", "RowLag", "AlignmentReport",
    "Context", "Need", "Detector", "REGISTRY", "run_order", "detector", "run_detectors", "check_alignment",
    "lag_scan", "row_lag_error", "prompt_length_lags", "best_lags", "ShiftedRows", "shifted_rows", "Shifts", "fit_shifts",
    "segment_ids",
    "detect_tokenizer_mismatch",
]
