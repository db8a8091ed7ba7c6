"""One function per failure class, with the call signatures the kit has always had.

Thin wrappers: each builds a :class:`~iwopd_kit.alignment.core.Context` from its arguments and
runs the registered detector (``check.detector(kind)``), which returns no findings when an input it
needs is missing. ``exclude``: rows already explained (left out); ``explained``: the batch's gap is
already explained. ``check_alignment`` runs the registry itself and does not go through these.
"""

from __future__ import annotations

from typing import Any

from ..batch import Batch
from .check import detector
from .core import Context, Finding, Tolerances
from .tokens import detect_tokenizer_mismatch


def _run(kind: str, batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset(),
         explained: bool = False, **inputs: Any) -> list[Finding]:
    ctx = Context(batch, tol, explained_rows=set(exclude), gap_explained=explained, **inputs)
    return detector(kind)(ctx)


def detect_offset(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class A (offset); see :func:`~iwopd_kit.alignment.gap_rows.find_offset`."""
    return _run("offset", batch, tol, exclude)


def detect_missing(batch: Batch) -> list[Finding]:
    """Class B (missing token ids / rollout log-probs); see :func:`~iwopd_kit.alignment.coverage.find_missing`."""
    return _run("missing_token_ids", batch)


def detect_teacher_coverage(batch: Batch) -> list[Finding]:
    """Class C (teacher coverage); see :func:`~iwopd_kit.alignment.coverage.find_teacher_coverage`."""
    return _run("teacher_coverage", batch)


def detect_temperature(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class H (temperature); see :func:`~iwopd_kit.alignment.gap_batch.find_temperature`."""
    return _run("temperature", batch, tol, exclude)


def detect_processed(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class I (processed log-probs); see :func:`~iwopd_kit.alignment.gap_batch.find_processed`."""
    return _run("processed_logprobs", batch, tol, exclude)


def detect_numerics(batch: Batch, tol: Tolerances = Tolerances(), explained: bool = False,
                    exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class M (numerics); see :func:`~iwopd_kit.alignment.gap_batch.find_numerics`."""
    return _run("numerics", batch, tol, exclude, explained)


def detect_ordering(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class L (ordering); see :func:`~iwopd_kit.alignment.gap_rows.find_ordering`."""
    return _run("ordering", batch, tol, exclude)


def detect_padding(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class F (padding); see :func:`~iwopd_kit.alignment.gap_rows.find_padding`."""
    return _run("padding", batch, tol, exclude)


def detect_truncation(batch: Batch) -> list[Finding]:
    """Class G (truncation); see :func:`~iwopd_kit.alignment.coverage.find_truncation`."""
    return _run("truncation", batch)


def detect_staleness(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset(),
                     explained: bool = False) -> list[Finding]:
    """Class J (staleness); see :func:`~iwopd_kit.alignment.gap_batch.find_staleness`."""
    return _run("staleness", batch, tol, exclude, explained)


def detect_normalisation(batch: Batch, num_items: int | None = None, reduction: str | None = None) -> list[Finding]:
    """Class K (normalisation); see :func:`~iwopd_kit.alignment.normalisation.find_normalisation`."""
    return _run("normalisation", batch, num_items=num_items, reduction=reduction)


def detect_bos_eos(batch: Batch, tokenizer: Any, tol: Tolerances = Tolerances()) -> list[Finding]:
    """Class E (BOS / EOS) with one tokenizer; see :func:`~iwopd_kit.alignment.tokens.find_bos_eos`."""
    return _run("bos_eos", batch, tol, student_tokenizer=tokenizer)


__all__ = ["detect_offset", "detect_missing", "detect_teacher_coverage", "detect_temperature", "detect_processed",
           "detect_numerics", "detect_ordering", "detect_padding", "detect_truncation", "detect_staleness",
           "detect_normalisation", "detect_bos_eos", "detect_tokenizer_mismatch"]
