"""The alignment check: do the rollout, student and teacher series describe the same tokens?

One small detector per failure class of SPEC section 3; ``check_alignment`` runs them all and
returns an :class:`AlignmentReport`. Every finding names its ``kind``, ``row`` (0-based row of the
input; None for a batch-level finding), ``position`` (0-based completion token index, or None),
``severity`` (error / warning / info) and a message that says what to change.

Detectors here compare *series*; they never recompute them. Thresholds (``Tolerances``) are in
nats; the defaults sit far above float32 agreement between vLLM and transformers (~3e-6 measured)
and below the smallest real misalignment effect seen (an offset or a 1/T rescale change values by
>0.05 on most tokens).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .batch import Batch

KINDS = (
    "offset", "missing_token_ids", "teacher_coverage", "tokenizer_mismatch", "bos_eos", "padding",
    "truncation", "temperature", "processed_logprobs", "staleness", "normalisation", "ordering", "numerics",
)
SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    kind: str
    row: int | None
    position: int | None
    severity: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; expected one of {SEVERITIES}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Tolerances:
    """Thresholds, in nats, on |rollout - student| per token.

    same: values this close are the same number (float32 vLLM vs transformers: ~3e-6).
    rounding: a per-token gap up to this, with no structure, is low-precision rounding (bf16: ~0.06).
    lag_gain: an offset is reported when some lag k != 0 fits at least this many times better than k = 0.
    """

    same: float = 1e-3
    rounding: float = 0.25
    max_lag: int = 4
    lag_gain: float = 10.0
    min_tokens_for_lag: int = 3


@dataclass(frozen=True)
class AlignmentReport:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no error-level finding."""
        return not any(f.severity == "error" for f in self.findings)

    def by_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_dicts(self) -> list[dict]:
        return [f.to_dict() for f in self.findings]

    def __repr__(self) -> str:
        head = f"AlignmentReport(ok={self.ok}, {len(self.findings)} finding(s))"
        lines = [head] + [f"  [{f.severity}] {f.kind} row={f.row} pos={f.position}: {f.message}" for f in self.findings]
        if self.unchecked:
            lines.append(f"  not checked: {', '.join(self.unchecked)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers
def _shift(x: Tensor, k: int) -> Tensor:
    """y[:, j] = x[:, j + k] (NaN where out of range)."""
    out = torch.full_like(x, float("nan"))
    L = x.shape[1]
    if abs(k) >= L:
        return out
    if k >= 0:
        out[:, : L - k] = x[:, k:]
    else:
        out[:, -k:] = x[:, : L + k]
    return out


def lag_scan(rollout: Tensor, student: Tensor, valid: Tensor, max_lag: int = 4) -> tuple[Tensor, Tensor]:
    """Mean |rollout[j + k] - student[j]| per row for k in [-K, K] (vectorised over rows).

    Returns ``(lags [2K+1], err [B, 2K+1])``; err is NaN where a row has no overlapping values.
    """
    lags = torch.arange(-max_lag, max_lag + 1)
    r = torch.where(valid, rollout, torch.full_like(rollout, float("nan")))
    s = torch.where(valid, student, torch.full_like(student, float("nan")))
    errs = []
    for k in lags.tolist():
        d = (_shift(r, k) - s).abs()
        errs.append(torch.nanmean(d, dim=1))
    return lags, torch.stack(errs, dim=1)


def _valid(batch: Batch, exclude: frozenset[int] = frozenset()) -> Tensor:
    """batch.valid() with the rows in ``exclude`` (already explained by an offset) switched off."""
    valid = batch.valid()
    for b in exclude:
        valid[b] = False
    return valid


def _gap(batch: Batch, valid: Tensor) -> Tensor | None:
    if not (batch.has("rollout_logprobs") and batch.has("student_logprobs")):
        return None
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    return torch.where(valid, r - s, torch.full_like(r, float("nan")))


# ---------------------------------------------------------------------------------------- detectors
def detect_offset(batch: Batch, tol: Tolerances = Tolerances()) -> list[Finding]:
    """Class A: per row, the lag k that best matches rollout to student log-probs; healthy rows have k = 0."""
    if not (batch.has("rollout_logprobs") and batch.has("student_logprobs")):
        return []
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    valid = batch.padding_mask() & torch.isfinite(r.nan_to_num(posinf=math.inf)) & ~r.isnan()
    lags, err = lag_scan(r, s, batch.padding_mask() & ~r.isnan() & ~s.isnan(), tol.max_lag)
    k0 = int((lags == 0).nonzero())
    out = []
    for b in range(batch.size):
        if batch.lengths[b] < tol.min_tokens_for_lag or not bool(valid[b].any()):
            continue
        e = err[b]
        if torch.isnan(e[k0]) or e[k0] <= tol.same:
            continue
        e_other = e.clone()
        e_other[k0] = float("inf")
        e_other = torch.nan_to_num(e_other, nan=float("inf"))
        best = int(e_other.argmin())
        k = int(lags[best])
        if e_other[best] * tol.lag_gain <= e[k0]:
            out.append(Finding(
                "offset", b, 0, "error",
                f"rollout log-probs are shifted by {-k:+d} token(s): token j carries the log-prob of token j{-k:+d} "
                f"(mean gap {float(e[k0]):.3g} at lag 0, {float(e_other[best]):.3g} at lag {k:+d}); index the rollout "
                "log-probs by completion position per row, not from a batch-wide prompt length",
            ))
    return out


def detect_missing(batch: Batch) -> list[Finding]:
    """Class B: conversion-time findings, and rollout values missing on real tokens."""
    out = [Finding(**f) for f in batch.findings]
    if batch.has("rollout_logprobs"):
        for b, row in enumerate(batch.rollout_logprobs):
            missing = [j for j, v in enumerate(row) if v is None]
            if missing and not any(f.kind == "missing_token_ids" and f.row == b for f in out):
                out.append(Finding(
                    "missing_token_ids", b, missing[0], "error",
                    f"{len(missing)} rollout log-prob(s) missing (first at position {missing[0]}); the engine returned no "
                    "log-prob for the sampled token id: request logprobs with the sampled token (logprobs=0) and keep "
                    "the token ids (return_token_ids / logprob_token_ids)",
                ))
    return out


def detect_teacher_coverage(batch: Batch) -> list[Finding]:
    """Class C: every valid token needs a finite teacher log-prob."""
    if not batch.has("teacher_logprobs"):
        return []
    t = batch.series("teacher_logprobs", torch.float64)
    bad = batch.valid() & ~torch.isfinite(t)
    out = []
    for b in range(batch.size):
        pos = bad[b].nonzero().flatten().tolist()
        if pos:
            n_valid = int(batch.valid()[b].sum())
            out.append(Finding(
                "teacher_coverage", b, pos[0], "error",
                f"{n_valid - len(pos)} finite teacher log-probs for {n_valid} valid tokens (first gap at position {pos[0]}, "
                f"value {t[b, pos[0]].item()}); the teacher must score every completion token (check the teacher "
                "server's window and the -inf padding sentinels)",
            ))
    return out


def detect_temperature(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class H: rollout log-probs and student log-probs computed at different temperatures.

    Uses the recorded settings when present (raw-mode rollout log-probs are at T = 1, processed
    ones at the sampling T; ``batch.scoring`` says what the student was scored at) and confirms on
    the data: the gap must exceed ``tol.same``. Without settings, the data signature decides
    (:func:`_gap_pattern`): rollout below student almost everywhere, or both signs with |gap|
    growing with |log-prob|; top-p renormalisation instead puts the rollout above the student.
    """
    valid = _valid(batch, exclude)
    gap = _gap(batch, valid)
    if gap is None or not bool(valid.any()):
        return []
    big = valid & (gap.abs() > tol.same)
    if not bool(big.any()):
        return []
    roll_T = batch.sampling.logprob_temperature if batch.sampling is not None else None
    score_T = batch.scoring.get("student_logprobs")
    if roll_T is not None and score_T is not None:
        if abs(roll_T - score_T) > 1e-6:
            b, j = (int(v) for v in big.nonzero()[0])
            how = ("raw (untempered, logprobs_mode=raw_logprobs)" if batch.sampling.logprobs_mode == "raw_logprobs"
                   else f"processed at T={roll_T:g}")
            return [Finding(
                "temperature", None, None, "error",
                f"rollout log-probs are {how} but the student was scored at T={score_T:g}: "
                f"{int(big.sum())} of {int(valid.sum())} tokens differ by more than {tol.same:g} (first: row {b}, "
                f"position {j}); score at T={roll_T:g} or sample with logprobs_mode='processed_logprobs'",
            )]
        return []
    n_big = int(big.sum())
    if _gap_pattern(gap[big], batch.series("student_logprobs", torch.float64)[big]) != "temperature":
        return []
    return [Finding(
        "temperature", None, None, "error",
        f"rollout and student log-probs differ in a temperature-like pattern on {n_big} of {int(valid.sum())} tokens "
        f"(the gap has a consistent sign or grows with |log-prob|): apply the same temperature on both sides "
        "(vLLM's raw_logprobs ignore temperature); a stale rollout policy can look alike",
    )]


def _gap_pattern(d: Tensor, s: Tensor, min_tokens: int = 8) -> str:
    """Classify the large gaps d = rollout - student (data only, no settings).

    ``processed``: rollout above student almost everywhere (top-p/top-k renormalisation);
    ``temperature``: rollout below student almost everywhere (a 1/T sharpening on the student side
    lifts the confident sampled tokens), or both signs with |d| growing with |log-prob|;
    ``noise``: anything else (rounding, or too few tokens to say).
    """
    if d.numel() < min_tokens:
        return "noise"
    pos, neg = float((d > 0).double().mean()), float((d < 0).double().mean())
    if pos >= 0.95:
        return "processed"
    if neg >= 0.95:
        return "temperature"
    corr = torch.corrcoef(torch.stack([d.abs(), s.abs()]))[0, 1]
    return "temperature" if float(corr) > 0.5 else "noise"

def detect_processed(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class I: top-p / top-k renormalised (processed) rollout log-probs sit above the full-vocab ones."""
    valid = _valid(batch, exclude)
    gap = _gap(batch, valid)
    if gap is None:
        return []
    big = valid & (gap.abs() > tol.same)
    if not bool(big.any()):
        return []
    recorded = batch.sampling is not None and batch.sampling.truncates and batch.sampling.logprobs_mode == "processed_logprobs"
    if not recorded and _gap_pattern(gap[big], batch.series("student_logprobs", torch.float64)[big]) != "processed":
        return []
    kept = float(torch.exp(-gap[big]).mean())
    b, j = (int(v) for v in big.nonzero()[0])
    return [Finding(
        "processed_logprobs", None, None, "warning",
        f"rollout log-probs sit above the student's on {int(big.sum())} of {int(valid.sum())} tokens (first: row {b}, "
        f"position {j}; mean kept mass ~{kept:.3f}): they are renormalised over a top-p/top-k set, which biases the "
        "advantage upward; sample with top_p=1, top_k=0 or use logprobs_mode='raw_logprobs' at T=1",
    )]


def detect_numerics(batch: Batch, tol: Tolerances = Tolerances(), explained: bool = False,
                    exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class M: a gap with no structure. Up to ``tol.rounding`` it is low-precision rounding (warning);
    beyond that an unexplained disagreement (error). Redo the comparison in float64 on both sides: a gap
    that stays the same size is a bug, one that shrinks by orders of magnitude was rounding."""
    valid = _valid(batch, exclude)
    gap = _gap(batch, valid)
    if gap is None or explained:
        return []
    a = gap.abs()[valid & ~gap.isnan()]
    if a.numel() == 0 or float(a.max()) <= tol.same:
        return []
    worst = torch.nan_to_num(gap.abs().masked_fill(~valid, float("nan")), nan=-1.0)
    b, j = divmod(int(worst.argmax()), worst.shape[1])
    mx, mean = float(a.max()), float(a.mean())
    sev = "warning" if mx <= tol.rounding else "error"
    what = ("looks like low-precision rounding (bf16?)" if sev == "warning"
            else "is too large for rounding and has no offset/temperature pattern")
    return [Finding(
        "numerics", b, j, sev,
        f"|rollout - student| up to {mx:.3g} (mean {mean:.3g}, at row {b}, position {j}) {what}; compare in float32 "
        "or float64 on both sides",
    )]


def check_alignment(batch: Batch, tolerances: Tolerances = Tolerances()) -> AlignmentReport:
    """Run every detector this batch has the inputs for.

    ``batch`` should carry ``rollout_logprobs`` and ``student_logprobs`` (recomputed by the trainer
    side) and, when available, ``teacher_logprobs``; ``batch.sampling`` / ``batch.scoring`` enable
    the config-aware temperature rule. The report lists which classes could not be checked.
    """
    findings: list[Finding] = []
    findings += detect_missing(batch)
    findings += detect_offset(batch, tolerances)
    offset_rows = frozenset(f.row for f in findings if f.kind == "offset")
    structured = detect_temperature(batch, tolerances, offset_rows) or detect_processed(batch, tolerances, offset_rows)
    findings += structured
    findings += detect_teacher_coverage(batch)
    findings += detect_numerics(batch, tolerances, explained=bool(structured), exclude=offset_rows)
    unchecked = []
    if not (batch.has("rollout_logprobs") and batch.has("student_logprobs")):
        unchecked += ["offset", "temperature", "processed_logprobs", "numerics"]
    if not batch.has("teacher_logprobs"):
        unchecked.append("teacher_coverage")
    unchecked += ["tokenizer_mismatch", "bos_eos", "padding", "truncation", "staleness", "normalisation", "ordering"]
    stats = {}
    gap = _gap(batch, batch.valid())
    if gap is not None and bool((~gap.isnan()).any()):
        a = gap.abs()[~gap.isnan()]
        stats = {"max_abs_gap": float(a.max()), "mean_abs_gap": float(a.mean()), "tokens": float(a.numel())}
    return AlignmentReport(findings=findings, stats=stats, unchecked=unchecked)

