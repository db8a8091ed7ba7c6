"""The registry of detectors and ``check_alignment``, the driver that runs it.

``REGISTRY`` lists one :class:`~iwopd_kit.alignment.core.Detector` per failure class, in the order
the report lists their findings. The driver runs them in that order, except that a detector with
``runs_before`` runs just before the one it names (ordering before offsets); a detector whose
``needs`` are not all met is not run, and the first missing need is the report's reason.

Why this order: missing values (B), ordering (L) before offsets (A), then padding (F), temperature
(H) / processed (I), staleness (J) and last numerics (M), which judges every open token nothing else
explained (always: a batch- or group-level finding removes only the tokens it explains). Each
detector with ``explains_gap`` marks the tokens it accounts for in ``ctx.explained`` [B, L] (and
``ctx.token_kinds``), so one cause gives one finding per token set. Teacher coverage (C), truncation
(G), BOS/EOS (E), tokenizers (D) and normalisation (K) are independent of the gap.

To add a detector: write ``find_x(ctx) -> list[Finding]`` in the module of its family, add its
kind to ``core.KINDS``, and add one ``Detector(...)`` line here.
"""

from __future__ import annotations

from typing import Any

import torch

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, Batch
from ..batch.blocks import masked
from .context import NO_GROUP, Context
from .core import (
    A_TOKENIZER, BOTH_TOKENIZERS, COUNT_OR_REDUCTION, PADDED, PAIR, SCORED_OR_LENGTHS, TEACHER, VERSIONS_OR_PAIR,
    AlignmentReport, Detector, Finding, one_thread,
)
from .coverage import find_missing, find_teacher_coverage, find_truncation
from .gap_batch import find_processed, find_staleness, find_temperature
from .gap_rows import find_offset, find_ordering, find_padding
from .kinds import KINDS
from .mismatch import batch_delta, metrics_from_delta
from .normalisation import find_normalisation
from .numerics import find_numerics
from .tensors import row_mask
from .tokens import find_bos_eos, find_tokenizer_mismatch
from .tolerances import Tolerances

REGISTRY: tuple[Detector, ...] = (
    Detector("missing_token_ids", find_missing),
    Detector("offset", find_offset, needs=(PAIR,), explains_gap=True),
    Detector("ordering", find_ordering, needs=(PAIR,), explains_gap=True, runs_before="offset"),
    Detector("padding", find_padding, needs=(PAIR, PADDED), explains_gap=True),
    Detector("temperature", find_temperature, needs=(PAIR,), explains_gap=True),
    Detector("processed_logprobs", find_processed, needs=(PAIR,), explains_gap=True),
    Detector("teacher_coverage", find_teacher_coverage, needs=(TEACHER,)),
    Detector("truncation", find_truncation, needs=(SCORED_OR_LENGTHS,)),
    Detector("staleness", find_staleness, needs=(VERSIONS_OR_PAIR,), explains_gap=True),
    Detector("numerics", find_numerics, needs=(PAIR,)),
    Detector("bos_eos", find_bos_eos, needs=(A_TOKENIZER,)),
    Detector("tokenizer_mismatch", find_tokenizer_mismatch, needs=(BOTH_TOKENIZERS,)),
    Detector("normalisation", find_normalisation, needs=(COUNT_OR_REDUCTION,)),
)


def run_order(registry: tuple[Detector, ...] = REGISTRY) -> tuple[Detector, ...]:
    """The registry with every ``runs_before`` detector moved just before the one it names."""
    order = [d for d in registry if d.runs_before is None]
    for d in registry:
        if d.runs_before is not None:
            i = next((i for i, e in enumerate(order) if e.kind == d.runs_before), None)
            if i is None:
                raise ValueError(f"detector {d.kind!r} runs before {d.runs_before!r}, which is not in the registry")
            order.insert(i, d)
    return tuple(order)


def detector(kind: str) -> Detector:
    """The registered detector of one failure class."""
    for d in REGISTRY:
        if d.kind == kind:
            return d
    raise KeyError(f"no detector for {kind!r}; registered: {[d.kind for d in REGISTRY]}")


def run_detectors(ctx: Context, registry: tuple[Detector, ...] = REGISTRY) -> tuple[list[Finding], dict[str, str]]:
    """Run ``registry`` on ``ctx``; return the findings in registry order and the reasons for the
    detectors that could not run (kind -> the first missing need).

    A detector with ``explains_gap`` marks the tokens it explains (``ctx.mark``). One that marks none
    has its row-level findings explain their rows' open tokens and its group-level findings their group's;
    a batch-level finding that marks nothing explains nothing (it never silences numerics by itself).
    """
    found: dict[str, list[Finding]] = {}
    reasons: dict[str, str] = {}
    for det in run_order(registry):
        why = det.unmet(ctx)
        if why is not None:
            reasons[det.kind] = why
            continue
        before = ctx.explained.clone() if det.explains_gap else None
        found[det.kind] = det.run(ctx)
        if before is not None and found[det.kind] and torch.equal(before, ctx.explained):
            rows = row_mask(ctx.batch.size, {f.row for f in found[det.kind] if f.row is not None})
            for name, members in ctx.groups():
                if any(f.group == name and f.row is None for f in found[det.kind]) and name is not None:
                    rows |= members
            ctx.mark(det.kind, ctx.open() & rows[:, None])
    return [f for det in registry for f in found.get(det.kind, [])], reasons


MISMATCH = "mismatch"
"""The name under which the report's ``unchecked`` lists the mismatch metrics when they could not be computed."""


def _gap_summary(batch: Batch) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]], str | None]:
    """The report's gap ``stats``, the pooled mismatch metrics (trainer = student recompute) of the batch and of
    each group, and why there are no metrics (None when there are), over the batch's policy tokens."""
    if not (batch.has(ROLLOUT_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        return {}, {}, {}, "needs rollout_logprobs and student_logprobs"
    flat = batch_delta(batch, finite_only=False)            # student - rollout where both have a value
    if flat.numel() == 0:
        return {}, {}, {}, "no policy token has both a finite rollout and a finite student log-prob"
    finite = torch.isfinite(flat)
    delta = flat if bool(finite.all()) else masked(flat, finite)
    if delta.numel() == 0:
        return ({"max_abs_gap": float("inf"), "mean_abs_gap": float("inf"), "tokens": float(flat.numel())}, {}, {},
                "no policy token has both a finite rollout and a finite student log-prob")
    metrics = metrics_from_delta(delta)
    if delta.numel() == flat.numel():                  # every gap finite: its stats are the metrics' |Δ| ones
        stats = {"max_abs_gap": metrics["mismatch/logp_abs_diff_max"],
                 "mean_abs_gap": metrics["mismatch/logp_abs_diff_mean"], "tokens": float(delta.numel())}
    else:
        a = flat.abs_()
        stats = {"max_abs_gap": float(a.max()), "mean_abs_gap": float(a.mean()), "tokens": float(a.numel())}
    groups: dict[str, dict[str, float]] = {}
    if batch.groups is not None:
        names = [NO_GROUP if g is None else g for g in batch.groups]
        for name in dict.fromkeys(names):
            d = batch_delta(batch, rows=[n == name for n in names])
            groups[name] = (metrics_from_delta(d) if d.numel() else {}) | {"tokens": float(d.numel())}
    return stats, metrics, groups, None


def check_alignment(batch: Batch, tolerances: Tolerances = Tolerances(), *, student_tokenizer: Any = None,
                    teacher_tokenizer: Any = None, num_items: int | None = None,
                    reduction: str | None = None) -> AlignmentReport:
    """Run every detector this batch (and the extra inputs) allow; list the classes it could not check.

    ``batch`` should carry ``rollout_logprobs`` and ``student_logprobs`` (recomputed by the trainer
    side) and, when available, ``teacher_logprobs``; ``batch.sampling`` / ``batch.scoring`` enable
    the config-aware temperature rule and ``batch.meta`` the version / length rules. Tokenizers
    enable D (both) and E (either; the student's first), ``num_items`` / ``reduction`` enable K.
    Ordering is tried before offsets, and every explained token is left out of the later gap
    detectors, so one cause gives one finding per token set; numerics judges what is left.
    """
    ctx = Context(batch, tolerances, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer,
                  num_items=num_items, reduction=reduction)
    with one_thread():
        findings, reasons = run_detectors(ctx)
        checked = ctx.checked
        ctx.release()                         # the [B, L] float64 caches go before the summary's flat copies
        stats, metrics, groups, why = _gap_summary(batch)
        if why is not None:
            reasons[MISMATCH] = why
    kinds = (*KINDS, MISMATCH)
    return AlignmentReport(findings=findings, stats=stats, unchecked=[k for k in kinds if k in reasons],
                           unchecked_reasons={k: reasons[k] for k in kinds if k in reasons}, metrics=metrics,
                           group_metrics=groups, row_lags=ctx.row_lags, token_kinds=ctx.token_kinds,
                           explained=ctx.explained, checked=checked)


__all__ = ["MISMATCH", "REGISTRY", "run_order", "detector", "run_detectors", "check_alignment"]
