"""The alignment check: do the rollout, student and teacher series describe the same tokens?

One small detector per failure class A-M of SPEC section 3; ``check_alignment`` runs every one its
inputs allow and returns an :class:`AlignmentReport`. Every finding names its ``kind``, ``row``
(0-based row of the input; None for a batch-level finding), ``position`` (0-based completion token
index, or None), ``severity`` (error / warning / info) and a message that says what to change.

Coordinate frame: every series is ``[B, L]`` in completion coordinates (token j = the j-th
generated token of row b, right-padded, NaN where missing); ``gap = rollout - student`` per token.

Detectors here compare *series*; they never recompute them. Thresholds live in :class:`Tolerances`
(nats). Calibration assumptions:

- healthy float32 vLLM rollout vs transformers recompute of the same weights: max |gap| ~3e-6
  (measured on the bundled tiny models); ``same = 1e-3`` sits ~300x above it;
- bf16 on one side: max |gap| ~0.06, no structure; ``rounding = 0.25`` keeps that a warning;
- real misalignment (an offset, a 1/T rescale, a top-p renormalisation, left padding without
  position ids, a re-ordered row) changes values by > 0.05 on most tokens and has a structure the
  detectors look for (a better lag, a sign, growth with the pad amount, a match with another row);
- a stale rollout policy shows a small gap of consistent sign in every row (the rollout policy
  prefers its own samples: E[log pi_old - log pi_new] = KL >= 0); ``stale_t`` is the pooled
  t-statistic the batch mean must reach so that rounding noise never qualifies.

Order in ``check_alignment``: missing ids (B), ordering (L) before offsets (A), then padding (F),
temperature (H) / processed (I), staleness (J) and only then numerics (M) for the gap nothing else
explains; teacher coverage (C), truncation (G), BOS/EOS (E), tokenizers (D) and normalisation (K)
are independent of the gap.

Meta keys read (all optional, per row in ``batch.meta``): ``policy_version`` (the weights vLLM
sampled with) and ``trainer_version`` (the weights being trained) for J; ``teacher_prompt_length``,
``teacher_completion_length``, ``student_prompt_length``, ``student_completion_length`` (what the
other side saw) for G; ``grad_accum_steps`` for K.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from .batch import Batch

KINDS = (
    "offset", "missing_token_ids", "teacher_coverage", "tokenizer_mismatch", "bos_eos", "padding",
    "truncation", "temperature", "processed_logprobs", "staleness", "normalisation", "ordering", "numerics",
)
SEVERITIES = ("error", "warning", "info")
REDUCTIONS = ("token_mean", "sequence_mean")


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
    """Thresholds, in nats, on |rollout - student| per token (see the module docstring for the calibration).

    same: values this close are the same number (float32 vLLM vs transformers: ~3e-6).
    rounding: a per-token gap up to this, with no structure, is low-precision rounding (bf16: ~0.06).
    max_lag: the offset scan tries lags k in [-max_lag, max_lag].
    lag_gain: an offset is reported when some lag k != 0 fits at least this many times better than k = 0;
        a re-ordered row must match another row's student series this many times better than its own.
    min_tokens_for_lag: rows shorter than this are not scanned for offsets / ordering.
    stale_t: pooled t-statistic (|mean gap| / standard error) a same-sign gap must reach to be called stale.
    stale_min_rows: rows (each with >= min_tokens_for_lag values) needed before a gap counts as systematic.
    """

    same: float = 1e-3
    rounding: float = 0.25
    max_lag: int = 4
    lag_gain: float = 10.0
    min_tokens_for_lag: int = 3
    stale_t: float = 3.0
    stale_min_rows: int = 4


@dataclass(frozen=True)
class AlignmentReport:
    """Findings, a few summary stats, and the classes the inputs did not allow to check.

    ``unchecked`` lists kinds; ``unchecked_reasons[kind]`` says which input was missing.
    """

    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    unchecked_reasons: dict[str, str] = field(default_factory=dict)

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

    def unchecked_text(self) -> str:
        """``kind (why), ...`` for the classes not checked."""
        return ", ".join(f"{k} ({self.unchecked_reasons[k]})" if k in self.unchecked_reasons else k
                         for k in self.unchecked)

    def __repr__(self) -> str:
        head = f"AlignmentReport(ok={self.ok}, {len(self.findings)} finding(s))"
        lines = [head] + [f"  [{f.severity}] {f.kind} row={f.row} pos={f.position}: {f.message}" for f in self.findings]
        if self.unchecked:
            lines.append(f"  not checked: {self.unchecked_text()}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops with one intra-op thread, then restore the setting.

    The detectors do elementwise work on [B, L] tensors (a few MB): one thread does it in well
    under a millisecond per op, while on a machine whose cores are busy (a training run beside a
    notebook) OpenMP's synchronisation made the same op ~100x slower (8 ms with 2 threads).
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _nanmean_rows(d: Tensor) -> Tensor:
    """Mean over dim 1 ignoring NaN (NaN for a row without values); faster than torch.nanmean."""
    ok = ~d.isnan()
    return torch.where(ok, d, torch.zeros((), dtype=d.dtype)).sum(1) / ok.sum(1)


@_one_thread()
def lag_scan(rollout: Tensor, student: Tensor, valid: Tensor, max_lag: int = 4) -> tuple[Tensor, Tensor]:
    """Mean |rollout[j + k] - student[j]| per row for k in [-K, K].

    ``rollout``, ``student`` [B, L] and ``valid`` [B, L] bool, in completion coordinates. Fully
    vectorised over rows and tokens: one Python step per lag (2K+1 of them), none per row.
    Returns ``(lags [2K+1], err [B, 2K+1])``; err is NaN where a row has no overlapping values.
    """
    lags = torch.arange(-max_lag, max_lag + 1)
    dtype = torch.promote_types(rollout.dtype, student.dtype)
    nan = torch.tensor(float("nan"), dtype=dtype)
    r = torch.where(valid, rollout.to(dtype), nan)
    s = torch.where(valid, student.to(dtype), nan)
    B, L = r.shape
    err = torch.full((B, len(lags)), float("nan"), dtype=dtype)
    for i, k in enumerate(lags.tolist()):
        if abs(k) >= L:
            continue
        # pairs (rollout[j + k], student[j]) for every j with both indices inside [0, L)
        d = (r[:, k:] - s[:, : L - k]) if k >= 0 else (r[:, : L + k] - s[:, -k:])
        err[:, i] = _nanmean_rows(d.abs())
    return lags, err


def row_lag_error(rollout: Tensor, student: Tensor, valid: Tensor, lags: Tensor) -> Tensor:
    """Mean |rollout[j + k_b] - student[j]| per row for a per-row lag ``lags`` [B] (vectorised gather).

    Used for the lags suggested by prompt-length differences, which can exceed the scan window.
    Returns err [B] (NaN where a row has no overlapping values).
    """
    B, L = rollout.shape
    j = torch.arange(L)[None, :]
    idx = j + lags[:, None]
    inside = (idx >= 0) & (idx < L)
    r = torch.where(valid, rollout, torch.full_like(rollout, float("nan")))
    s = torch.where(valid, student, torch.full_like(student, float("nan")))
    shifted = r.gather(1, idx.clamp(0, L - 1)).masked_fill(~inside, float("nan"))
    return _nanmean_rows((shifted - s).abs())


def prompt_length_lags(prompt_lengths: list[int]) -> Tensor:
    """Candidate lags [B, 4] per row from prompt lengths: +-(p_b - p_min) and +-(p_max - p_b).

    A layout bug that slices every row at the batch's shortest (or longest) prompt shifts row b by
    exactly that many tokens (TRL's review bug 1), however long the prompts are.
    """
    p = torch.tensor(prompt_lengths)
    d_min, d_max = p - p.min(), p.max() - p
    return torch.stack([-d_min, d_min, -d_max, d_max], dim=1)


def best_lags(batch: Batch, max_lag: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the lag k != 0 that best matches rollout to student log-probs.

    Candidates: every k in [-max_lag, max_lag] and the row's prompt-length lags. Returns
    ``(best_k [B] long, err_at_0 [B], err_at_best [B])`` (mean |gap|; NaN / inf where undefined).
    """
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    valid_pairs = batch.padding_mask() & ~r.isnan() & ~s.isnan()
    lags, err = lag_scan(r, s, valid_pairs, max_lag)
    e0 = err[:, int((lags == 0).nonzero())]
    extra = prompt_length_lags(batch.prompt_lengths)                                  # [B, 4]
    extra_err = torch.stack([row_lag_error(r, s, valid_pairs, extra[:, i]) for i in range(extra.shape[1])], 1)
    all_lags = torch.cat([lags[None, :].expand(batch.size, -1), extra], dim=1)         # [B, 2K+1+4]
    e_all = torch.nan_to_num(torch.cat([err, extra_err], dim=1).masked_fill(all_lags == 0, float("inf")),
                             nan=float("inf"))
    best = e_all.argmin(dim=1)
    return all_lags.gather(1, best[:, None]).squeeze(1), e0, e_all.gather(1, best[:, None]).squeeze(1)


def _row_mask(n: int, rows: frozenset[int] | set[int]) -> Tensor:
    """BoolTensor [n]: True at the given rows."""
    m = torch.zeros(n, dtype=torch.bool)
    if rows:
        m[list(rows)] = True
    return m


def _valid(batch: Batch, exclude: frozenset[int] = frozenset()) -> Tensor:
    """batch.valid() [B, L] with the rows in ``exclude`` (already explained) switched off."""
    valid = batch.valid()
    if exclude:
        valid[list(exclude)] = False
    return valid


def _has_pair(batch: Batch) -> bool:
    return batch.has("rollout_logprobs") and batch.has("student_logprobs")


def _gap(batch: Batch, valid: Tensor) -> Tensor | None:
    """rollout - student [B, L] float64 on ``valid`` tokens, NaN elsewhere (None without both series)."""
    if not _has_pair(batch):
        return None
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    return torch.where(valid, r - s, torch.full_like(r, float("nan")))


def _first_true(m: Tensor) -> Tensor:
    """Index of the first True per row of a [B, L] bool tensor (0 for a row without any)."""
    return m.to(torch.int8).argmax(dim=1)


def _last_true(m: Tensor) -> Tensor:
    """Index of the last True per row of a [B, L] bool tensor (-1 for a row without any)."""
    L = m.shape[1]
    idx = torch.arange(L).expand_as(m)
    return torch.where(m, idx, torch.full_like(idx, -1)).max(dim=1).values


def _meta_values(batch: Batch, key: str) -> list[Any] | None:
    """``meta[b][key]`` per row (None where absent); None when no row has the key."""
    if batch.meta is None:
        return None
    vals = [m.get(key) if isinstance(m, dict) else None for m in batch.meta]
    return vals if any(v is not None for v in vals) else None


# ---------------------------------------------------------------------------------------- detectors
@_one_thread()
def detect_offset(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class A: per row, the lag k that best matches rollout to student log-probs; healthy rows have k = 0.

    Candidates: every k in [-K, K] (``tol.max_lag``) and, per row, the shifts its prompt length
    suggests (``prompt_length_lags``), which catch slicing bugs of any size.

    Vectorised over rows (one :func:`lag_scan`); Python work only for the rows it reports. Rows in
    ``exclude`` (already explained, e.g. re-ordered) are skipped.
    """
    if not _has_pair(batch):
        return []
    pad = batch.padding_mask()
    r = batch.series("rollout_logprobs", torch.float64)
    has_value = pad & ~r.isnan() & (r != math.inf)
    best_k, e0, e_best = best_lags(batch, tol.max_lag)
    cand = ((torch.tensor(batch.lengths) >= tol.min_tokens_for_lag) & has_value.any(1) & ~e0.isnan()
            & (e0 > tol.same) & ~_row_mask(batch.size, exclude))
    flagged = cand & (e_best * tol.lag_gain <= e0)
    out = []
    for b in flagged.nonzero().flatten().tolist():
        k = int(best_k[b])
        out.append(Finding(
            "offset", b, 0, "error",
            f"rollout log-probs are shifted by {-k:+d} token(s): token j carries the log-prob of token j{-k:+d} "
            f"(mean gap {float(e0[b]):.3g} at lag 0, {float(e_best[b]):.3g} at lag {k:+d}); index the rollout "
            "log-probs by completion position per row, not from a batch-wide prompt length",
        ))
    return out


@_one_thread()
def detect_missing(batch: Batch) -> list[Finding]:
    """Class B: conversion-time findings, and rollout values missing on valid tokens (a masked-out
    token never reaches the loss, so it needs no rollout log-prob)."""
    out = [Finding(**f) for f in batch.findings]
    if batch.has("rollout_logprobs"):
        miss = batch.valid() & batch.series("rollout_logprobs", torch.float64).isnan()
        counts, first = miss.sum(1), _first_true(miss)
        reported = {f.row for f in out if f.kind == "missing_token_ids"}
        for b in (counts > 0).nonzero().flatten().tolist():
            if b in reported:
                continue
            j = int(first[b])
            out.append(Finding(
                "missing_token_ids", b, j, "error",
                f"{int(counts[b])} rollout log-prob(s) missing (first at position {j}); the engine returned no "
                "log-prob for the sampled token id: request logprobs with the sampled token (logprobs=0) and keep "
                "the token ids (return_token_ids / logprob_token_ids)",
            ))
    return out


@_one_thread()
def detect_teacher_coverage(batch: Batch) -> list[Finding]:
    """Class C: every valid token needs a finite teacher log-prob."""
    if not batch.has("teacher_logprobs"):
        return []
    t = batch.series("teacher_logprobs", torch.float64)
    valid = batch.valid()
    bad = valid & ~torch.isfinite(t)
    n_bad, n_valid, first = bad.sum(1), valid.sum(1), _first_true(bad)
    out = []
    for b in (n_bad > 0).nonzero().flatten().tolist():
        j = int(first[b])
        out.append(Finding(
            "teacher_coverage", b, j, "error",
            f"{int(n_valid[b]) - int(n_bad[b])} finite teacher log-probs for {int(n_valid[b])} valid tokens (first gap at "
            f"position {j}, value {t[b, j].item()}); the teacher must score every completion token (check the teacher "
            "server's window and the -inf padding sentinels)",
        ))
    return out


@_one_thread()
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


@_one_thread()
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


@_one_thread()
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


# --------------------------------------------------------------------------- L: ordering (tried first)
def _pairwise_gap(rows: Tensor, student: Tensor, max_elems: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Mean |rows[i, j] - student[c, j]| over the j where both have values, for every pair (i, c).

    ``rows`` [C, L], ``student`` [B, L] (NaN = no value). Returns ``(err [C, B], n [C, B])``; the
    work is split into chunks of candidate rows so that no temporary exceeds ``max_elems``.
    """
    C, L = rows.shape
    B = student.shape[0]
    step = max(1, max_elems // max(1, B * L))
    errs, ns = [], []
    for i in range(0, C, step):
        d = (rows[i : i + step, None, :] - student[None, :, :]).abs()   # [c, B, L]
        ok = ~d.isnan()
        n = ok.sum(-1)
        ns.append(n)
        errs.append(torch.where(ok, d, torch.zeros((), dtype=d.dtype)).sum(-1) / n)
    return torch.cat(errs), torch.cat(ns)


@_one_thread()
def detect_ordering(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class L: rows re-ordered or regrouped between the rollout and the trainer.

    Candidates are the rows whose rollout series disagrees with their own student series at lag 0
    (mean |gap| > ``tol.same``). A candidate is explained when the student series of *another* row
    matches its rollout series ``tol.lag_gain`` times better (and within ``tol.rounding`` on every token) over at
    least 90% of its values. Reported when at least two rows are explained (a re-order moves two
    rows at least); the message gives the mapping rollout row -> trainer row. Cost: a vectorised
    [C, B, 256] comparison on the first 256 positions picks each candidate's best partner, one
    [C, L] comparison confirms it (nothing on a healthy batch).
    """
    if not _has_pair(batch):
        return []
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    n_r = (~r.isnan()).sum(1)
    e0 = _nanmean_rows((r - s).abs())
    cand = (e0 > tol.same) & (n_r >= tol.min_tokens_for_lag) & ~_row_mask(batch.size, exclude)
    idx = cand.nonzero().flatten()
    if idx.numel() < 2:
        return []
    # every pair on the first `probe` columns picks each candidate's best partner; the full rows confirm it
    probe = min(r.shape[1], 256)
    err, _ = _pairwise_gap(r[idx, :probe], s[:, :probe])
    err[torch.arange(idx.numel()), idx] = float("inf")                      # not itself
    best = torch.nan_to_num(err, nan=float("inf")).argmin(dim=1)
    d = (r[idx] - s[best]).abs()
    n = (~d.isnan()).sum(1)
    best_err = _nanmean_rows(d)
    need = torch.clamp(torch.ceil(0.9 * n_r[idx].double()), min=tol.min_tokens_for_lag)
    best_err = torch.where(best_err.isnan() | (n < need) | (best == idx), torch.full_like(best_err, float("inf")), best_err)
    # a moved row matches its partner token by token, within rounding (the *max*, not the mean: two confident rows
    # with mostly near-0 log-probs have a small mean gap without being the same series)
    best_max = torch.nan_to_num(d, nan=0.0).max(dim=1).values
    matched = (best_err * tol.lag_gain <= e0[idx]) & (best_max <= tol.rounding)
    if int(matched.sum()) < 2:
        return []
    pairs = [(int(idx[i]), int(best[i]), float(e0[idx[i]]), float(best_err[i])) for i in matched.nonzero().flatten().tolist()]
    targets = [c for _, c, _, _ in pairs]
    how = "a permutation" if len(set(targets)) == len(targets) else "regrouped: several rows map to one"
    mapping = ", ".join(f"{b}->{c}" for b, c, _, _ in pairs[:12]) + (", ..." if len(pairs) > 12 else "")
    return [Finding(
        "ordering", b, 0, "error",
        f"rollout row {b} carries the log-probs of row {c} (mean gap {g0:.3g} against its own student series, "
        f"{gc:.3g} against row {c}'s): rows were re-ordered between rollout and training ({how}; rollout row -> "
        f"trainer row: {mapping}); carry a row id (prompt uid + sample index) through gathering, grouping and "
        "sharding, and restore the order by it before pairing series",
    ) for b, c, g0, gc in pairs]


# ------------------------------------------------------------------------------------- F: padding
@_one_thread()
def detect_padding(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset()) -> list[Finding]:
    """Class F: a gap that appears only in rows whose prompt was left-padded, growing with the pad amount.

    Needs only the prompt lengths: row b is padded by ``pad_b = max(P) - P_b`` tokens in a
    left-padded batch. Signature of a student scored under left padding without position ids (or a
    wrong next-token shift there): every row with ``pad_b = 0`` agrees (mean |gap| <= ``tol.same``),
    every row with ``pad_b > 0`` does not, and with two or more pad amounts the row gap is
    positively correlated with ``pad_b``. Rows in ``exclude`` are left out.
    """
    if not _has_pair(batch):
        return []
    P = torch.tensor(batch.prompt_lengths)
    pad_amt = P.max() - P
    if not bool((pad_amt > 0).any()):
        return []
    valid = _valid(batch, exclude)
    a = _gap(batch, valid).abs()
    row_gap = _nanmean_rows(a)
    has = ~row_gap.isnan()
    zero, padded = has & (pad_amt == 0), has & (pad_amt > 0)
    if not (bool(zero.any()) and bool(padded.any())):
        return []
    bad = row_gap > tol.same
    if bool(bad[zero].any()) or not bool(bad[padded].all()):
        return []
    x, y = pad_amt[padded].double(), row_gap[padded]
    if x.unique().numel() >= 2:
        rho = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
        if not rho > 0:
            return []
    first = _first_true(valid & (a > tol.same))
    n_zero = int(zero.sum())
    return [Finding(
        "padding", b, int(first[b]), "error",
        f"row {b} is left-padded by {int(pad_amt[b])} token(s) and its student log-probs differ from the rollout's "
        f"(mean gap {float(row_gap[b]):.3g}), while the {n_zero} unpadded row(s) agree and the gap grows with the pad "
        "amount: the student was scored under left padding with the wrong positions; pass position_ids = "
        "cumsum(attention_mask) - 1 (clamped at 0), or score right-padded rows, and take the logits of token j "
        "at column (first real column) + P_b + j - 1",
    ) for b in padded.nonzero().flatten().tolist()]


# ------------------------------------------------------------------------------------ G: truncation
_SIDES = (("student", "student_logprobs"), ("teacher", "teacher_logprobs"))


@_one_thread()
def detect_truncation(batch: Batch) -> list[Finding]:
    """Class G: the student or teacher saw a shorter sequence than the rollout.

    From the series: a row whose finite values stop before its last valid token (a tail of
    non-finite values after at least one finite one) — the other side's max length cut the
    completion. From ``meta``: ``{side}_prompt_length`` / ``{side}_completion_length`` differing
    from this batch's lengths (prompt or completion truncated differently on the two sides).
    """
    out: list[Finding] = []
    valid = batch.valid()
    cols = torch.arange(batch.width)[None, :]
    last_valid, n_valid = _last_true(valid), valid.sum(1)
    for side, name in _SIDES:
        if not batch.has(name):
            continue
        fin = valid & torch.isfinite(batch.series(name, torch.float64))
        last_fin = _last_true(fin)
        tail_rows = ((last_fin >= 0) & (last_fin < last_valid)).nonzero().flatten().tolist()
        if not tail_rows:
            continue
        tail = valid & (cols > last_fin[:, None])
        first, n_tail = _first_true(tail), tail.sum(1)
        for b in tail_rows:
            out.append(Finding(
                "truncation", b, int(first[b]), "error",
                f"{side} log-probs stop at position {int(first[b])}: the last {int(n_tail[b])} of {int(n_valid[b])} valid "
                f"tokens have no finite {side} value, a cut-off tail: the {side} saw a truncated sequence "
                "(max_length / max_model_len / max_position_embeddings / a server window shorter than prompt + "
                "completion); raise its limit to the longest prompt + completion, or mask the cut tokens in every series",
            ))
    from_meta: list[Finding] = []
    for side, _ in _SIDES:
        for what, own in (("prompt", batch.prompt_lengths), ("completion", batch.lengths)):
            other = _meta_values(batch, f"{side}_{what}_length")
            if other is None:
                continue
            for b, v in enumerate(other):
                if v is None or int(v) == own[b]:
                    continue
                pos = min(int(v), own[b]) if what == "completion" else None
                from_meta.append(Finding(
                    "truncation", b, pos, "error",
                    f"the {side} saw a {what} of {int(v)} tokens but the rollout's has {own[b]}: {what}s were truncated "
                    f"differently on the two sides (max_prompt_length / max_completion_length / max_length); use one "
                    f"limit for the rollout, the student and the teacher, and truncate once, before sampling",
                ))
    return out + sorted(from_meta, key=lambda f: f.row)


# ------------------------------------------------------------------------------------- J: staleness
@_one_thread()
def detect_staleness(batch: Batch, tol: Tolerances = Tolerances(), exclude: frozenset[int] = frozenset(),
                     explained: bool = False) -> list[Finding]:
    """Class J: the rollout policy is older than the policy being trained.

    Recorded versions decide when present: ``meta[b]["policy_version"]`` (vLLM's weights) differing
    from ``meta[b]["trainer_version"]`` is an error (one batch-level finding when every row has the
    same pair, else one per row). Without them, the data: a gap of the *same sign in every row*
    (at least ``tol.stale_min_rows`` rows) whose pooled t-statistic reaches ``tol.stale_t`` and
    that no offset / temperature / processed pattern explained (``explained``) is a warning.
    """
    pv, tv = _meta_values(batch, "policy_version"), _meta_values(batch, "trainer_version")
    if pv is not None and tv is not None:
        both = [b for b in range(batch.size) if pv[b] is not None and tv[b] is not None]
        stale = [b for b in both if pv[b] != tv[b]]
        if not stale:
            return []
        pairs = {(str(pv[b]), str(tv[b])) for b in stale}
        fix = ("sync the vLLM weights every step (IW-OPD is fully on-policy), or keep the old policy's log-probs "
               "as rollout_logprobs and importance-correct")
        if len(stale) == batch.size and len(pairs) == 1:
            (p, t), = pairs
            return [Finding("staleness", None, None, "error",
                            f"every row was sampled with policy_version {p} but the trainer is at version {t}: {fix}")]
        return [Finding("staleness", b, None, "error",
                        f"row {b} was sampled with policy_version {pv[b]} but the trainer is at version {tv[b]}: {fix}")
                for b in stale]
    if explained or not _has_pair(batch):
        return []
    gap = _gap(batch, _valid(batch, exclude))
    n_b = (~gap.isnan()).sum(1)
    rows = n_b >= tol.min_tokens_for_lag
    if int(rows.sum()) < tol.stale_min_rows:
        return []
    g = gap[rows]
    vals = g[~g.isnan()]
    if float(vals.abs().mean()) <= tol.same:
        return []
    means = _nanmean_rows(g)
    if not (bool((means > 0).all()) or bool((means < 0).all())):
        return []
    mu, sd = float(vals.mean()), float(vals.std())
    t = abs(mu) / (sd / math.sqrt(vals.numel())) if sd > 0 else math.inf
    if t < tol.stale_t:
        return []
    side = "above" if mu > 0 else "below"
    return [Finding(
        "staleness", None, None, "warning",
        f"rollout log-probs sit {side} the student's in every one of the {int(rows.sum())} rows (mean gap {mu:+.3g}, "
        f"t = {t:.1f}) with no offset, temperature or top-p pattern: rollout policy older than the trained policy? "
        "Sync the vLLM weights every step, and record meta policy_version / trainer_version to confirm",
    )]


# --------------------------------------------------------------------------------- K: normalisation
@_one_thread()
def detect_normalisation(batch: Batch, num_items: int | None = None, reduction: str | None = None) -> list[Finding]:
    """Class K: how the loss is normalised over the batch's valid tokens.

    ``num_items`` (TRL's ``num_items_in_batch``) different from the N valid tokens of ``batch`` is a
    warning unless ``meta[b]["grad_accum_steps"] > 1`` says that it counts several micro-batches
    (then it must still be >= N). ``reduction`` ('token_mean' or 'sequence_mean') gives an info
    finding, when rows have different numbers of valid tokens n_b, about the weight per token:
    1/N under token_mean, 1/(B n_b) under sequence_mean.
    """
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} or None, got {reduction!r}")
    n_b = batch.valid().sum(1)
    N = int(n_b.sum())
    out: list[Finding] = []
    if num_items is not None:
        accum = _meta_values(batch, "grad_accum_steps")
        G = max(int(v) for v in accum if v is not None) if accum is not None else None
        if num_items <= 0:
            out.append(Finding("normalisation", None, None, "error",
                               f"num_items={num_items}: the loss would divide by a non-positive count; pass the number "
                               "of valid tokens (or None to count them)"))
        elif num_items < N:
            out.append(Finding("normalisation", None, None, "warning",
                               f"num_items={num_items} is smaller than the {N} valid tokens of this batch: every token's "
                               f"loss is scaled up by {N / num_items:.3g}; count the tokens that count (mask and padding "
                               "removed), over all micro-batches of the optimiser step"))
        elif num_items > N and (G is None or G <= 1):
            why = ("no gradient-accumulation info (meta grad_accum_steps)" if G is None
                   else "grad_accum_steps=1, so it should equal them")
            out.append(Finding("normalisation", None, None, "warning",
                               f"num_items={num_items} but this batch has {N} valid tokens and {why}: right only when "
                               "num_items counts the valid tokens of all micro-batches of one optimiser step (TRL's "
                               f"num_items_in_batch); otherwise each token weighs {N / num_items:.3g}x what token_mean "
                               "gives — pass num_items=None for a single batch"))
    if reduction is not None:
        rows = n_b[n_b > 0]
        if rows.numel() >= 2 and int(rows.min()) != int(rows.max()):
            lo, hi, R = int(rows.min()), int(rows.max()), int(rows.numel())
            if reduction == "sequence_mean":
                msg = (f"reduction='sequence_mean': a token of row b weighs 1/(B n_b), so a token in the shortest row "
                       f"({lo} valid tokens) weighs {hi / lo:.3g}x one in the longest ({hi}); token_mean would weigh "
                       f"every token 1/N = 1/{N}. Short completions dominate the gradient (the authors' verl code); "
                       "compare runs only under the same reduction")
            else:
                msg = (f"reduction='token_mean': every token weighs 1/N = 1/{N}, so a row's total weight grows with its "
                       f"length: the longest row ({hi} valid tokens) counts {hi / lo:.3g}x the shortest ({lo}); "
                       f"sequence_mean would give each of the {R} rows 1/{R} (TRL uses token_mean); compare runs only "
                       "under the same reduction")
            out.append(Finding("normalisation", None, None, "info", msg))
    return out


# ----------------------------------------------------------------------------- D: tokenizer mismatch
SAMPLE_TEXTS: tuple[str, ...] = (
    "The quick brown fox: 12+34=46, naïve café — ok?\n",
    "7+5=12,12+9=21,21+2=23",
)
"""Texts for the encode/decode round trip; the first one both tokenizers can encode is used."""


def _encode(tok: Any, text: str) -> list[int] | None:
    try:
        return [int(i) for i in tok.encode(text, add_special_tokens=False)]
    except Exception:   # a vocabulary without the characters (no UNK) cannot encode this text
        return None


def _decode(tok: Any, ids: list[int]) -> str | None:
    try:
        return tok.decode(ids)
    except Exception:
        return None


def detect_tokenizer_mismatch(student_tok: Any, teacher_tok: Any,
                              sample_texts: Sequence[str] = SAMPLE_TEXTS) -> list[Finding]:
    """Class D: the teacher must read the student's token ids as the same strings.

    Compares ``get_vocab()`` (the first differing tokens/ids are listed), the special ids
    (bos / eos / pad / unk), the added tokens, an encode/decode round trip of a sample text, and
    the chat templates (a warning). Batch-level findings (row and position None).
    """
    out: list[Finding] = []
    vs, vt = student_tok.get_vocab(), teacher_tok.get_vocab()
    if vs != vt:
        inf = math.inf
        diff = [t for t in set(vs) | set(vt) if vs.get(t) != vt.get(t)]
        diff.sort(key=lambda t: (min(vs.get(t, inf), vt.get(t, inf)), t))
        first = "; ".join(f"{t!r}: student {vs.get(t)}, teacher {vt.get(t)}" for t in diff[:5])
        out.append(Finding(
            "tokenizer_mismatch", None, None, "error",
            f"student and teacher vocabularies differ on {len(diff)} token(s) (sizes {len(vs)} vs {len(vt)}; first: "
            f"{first}): the teacher scores other strings than the student sampled; use a teacher that shares the "
            "student's tokenizer (TRL compares get_vocab() the same way)",
        ))
    special = [(n, getattr(student_tok, n, None), getattr(teacher_tok, n, None))
               for n in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")]
    special = [(n, a, b) for n, a, b in special if a != b]
    if special:
        out.append(Finding(
            "tokenizer_mismatch", None, None, "error",
            "special token ids differ: " + "; ".join(f"{n} student {a}, teacher {b}" for n, a, b in special)
            + ": BOS/EOS/padding mean different things on the two sides; align the special tokens (or the tokenizers)",
        ))
    added_s = student_tok.get_added_vocab() if callable(getattr(student_tok, "get_added_vocab", None)) else None
    added_t = teacher_tok.get_added_vocab() if callable(getattr(teacher_tok, "get_added_vocab", None)) else None
    if added_s is not None and added_t is not None and added_s != added_t:
        diff = sorted(set(added_s.items()) ^ set(added_t.items()), key=lambda kv: (kv[1], kv[0]))
        out.append(Finding(
            "tokenizer_mismatch", None, None, "error",
            f"added tokens differ ({len(added_s)} on the student, {len(added_t)} on the teacher; first differences: "
            f"{', '.join(f'{t!r}={i}' for t, i in diff[:5])}): add the same tokens, in the same order, to both",
        ))
    for text in sample_texts:
        ids_s, ids_t = _encode(student_tok, text), _encode(teacher_tok, text)
        if ids_s is None and ids_t is None:
            continue
        if ids_s != ids_t:
            out.append(Finding(
                "tokenizer_mismatch", None, None, "error",
                f"the text {text!r} encodes differently: student {ids_s if ids_s is None else ids_s[:12]}, teacher "
                f"{ids_t if ids_t is None else ids_t[:12]}: send the student's token ids to the teacher, never re-tokenized text",
            ))
        else:
            dec_s, dec_t = _decode(student_tok, ids_s), _decode(teacher_tok, ids_s)
            if dec_s != dec_t:
                out.append(Finding(
                    "tokenizer_mismatch", None, None, "error",
                    f"the same ids decode differently: student {dec_s!r}, teacher {dec_t!r}: the tokenizers' decoders "
                    "(byte fallback, normalisers) differ; use one tokenizer for both",
                ))
        break
    ct_s, ct_t = getattr(student_tok, "chat_template", None), getattr(teacher_tok, "chat_template", None)
    if ct_s != ct_t:
        size = lambda ct: "none" if ct is None else f"{len(str(ct))} chars"  # noqa: E731
        out.append(Finding(
            "tokenizer_mismatch", None, None, "warning",
            f"chat templates differ (student: {size(ct_s)}, teacher: {size(ct_t)}): a prompt formatted for one model "
            "reaches the other differently; format each prompt once with the student's template and send the same ids "
            "to the teacher",
        ))
    return out


# ------------------------------------------------------------------------------------- E: BOS / EOS
def _adds_bos(tok: Any) -> bool:
    """True when encoding a short text with special tokens puts BOS first."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return False
    texts = ["a", "0"]
    try:
        specials = {getattr(tok, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
        plain = sorted((i, t) for t, i in tok.get_vocab().items() if i not in specials)
        texts = [plain[0][1], *texts] if plain else texts
    except Exception:
        pass
    for text in texts:
        try:
            ids = list(tok.encode(text))
        except Exception:
            continue
        if ids:
            return int(ids[0]) == int(bos)
    return False


def _at(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, idx[b]] for a [B, L] tensor and [B] indices."""
    return x.gather(1, idx[:, None]).squeeze(1)


@_one_thread()
def detect_bos_eos(batch: Batch, tokenizer: Any, tol: Tolerances = Tolerances()) -> list[Finding]:
    """Class E: double or missing BOS, an EOS appended by hand, tokens after EOS, pad == EOS.

    Prompt findings have ``position`` None; completion findings name the completion position.
    An EOS counts as appended by hand when it ends the completion and has no rollout log-prob, or
    exactly 0.0 while the student gives it less than ``-tol.same`` (a genuinely sampled, certain
    EOS can have 0.0 in float32), or when ``finish_reason`` is 'length' (vLLM reports 'stop' for a
    sampled EOS).
    """
    bos, eos, pad = (getattr(tokenizer, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id"))
    out: list[Finding] = []
    if bos is not None:
        adds = _adds_bos(tokenizer)
        for b, p in enumerate(batch.prompt_ids):
            if len(p) >= 2 and p[0] == bos and p[1] == bos:
                out.append(Finding(
                    "bos_eos", b, None, "error",
                    f"the prompt starts with BOS twice ({bos}, {bos}): a template that already writes BOS was tokenized "
                    "with add_special_tokens=True; tokenize templated text with add_special_tokens=False",
                ))
            elif adds and (not p or p[0] != bos):
                out.append(Finding(
                    "bos_eos", b, None, "warning",
                    f"the prompt does not start with BOS ({bos}) although the tokenizer adds one: the rollout and the "
                    "trainer may have tokenized it differently; tokenize once and send the same ids to vLLM, the student "
                    "and the teacher",
                ))
    if eos is None:
        return out
    tok, padm, valid = batch.tokens(pad_id=-1), batch.padding_mask(), batch.valid()
    is_eos = padm & (tok == eos)
    first = _first_true(is_eos)
    after = valid & is_eos.any(1)[:, None] & (torch.arange(batch.width)[None, :] > first[:, None])
    for b in after.any(1).nonzero().flatten().tolist():
        out.append(Finding(
            "bos_eos", b, int(first[b]) + 1, "error",
            f"{int(after[b].sum())} valid token(s) follow the EOS at position {int(first[b])}: the completion goes on past "
            "EOS (a stop that was not honoured, or padding that counts); cut each completion at its first EOS and mask "
            "what follows",
        ))
    last = torch.tensor(batch.lengths) - 1
    ends = (_at(tok, last) == eos) & _at(valid, last)
    flagged: set[int] = set()
    if batch.has("rollout_logprobs") and bool(ends.any()):
        r = _at(batch.series("rollout_logprobs", torch.float64), last)
        s = _at(batch.series("student_logprobs", torch.float64), last) if batch.has("student_logprobs") else None
        certain = (~s.isnan() & (s >= -tol.same)) if s is not None else torch.zeros_like(ends)
        for b in (ends & r.isnan()).nonzero().flatten().tolist():
            flagged.add(b)
            out.append(Finding(
                "bos_eos", b, int(last[b]), "error",
                "the final EOS has no rollout log-prob: it was appended by hand (or stands for a stop string), not "
                "sampled; drop it from the completion or mask it out so that it gets no advantage",
            ))
        for b in (ends & (r == 0.0) & ~certain).nonzero().flatten().tolist():
            flagged.add(b)
            said = f"the student gives it {float(s[b]):.3g}" if s is not None else "no student value to compare"
            out.append(Finding(
                "bos_eos", b, int(last[b]), "error" if s is not None else "warning",
                f"the final EOS has a rollout log-prob of exactly 0.0 ({said}): a placeholder for an EOS appended by "
                "hand; drop the appended EOS or mask it out",
            ))
    if batch.finish_reasons is not None:
        for b in ends.nonzero().flatten().tolist():
            if batch.finish_reasons[b] == "length" and b not in flagged:
                out.append(Finding(
                    "bos_eos", b, int(last[b]), "warning",
                    "finish_reason is 'length' but the completion ends in EOS: an EOS was appended after the length "
                    "cut (a sampled EOS finishes with 'stop'); drop the appended EOS or mask it out",
                ))
    if pad is not None and pad == eos:
        out.append(Finding(
            "bos_eos", None, None, "warning",
            f"pad_token_id == eos_token_id ({eos}): masks built as ids != pad drop every generated EOS and padding looks "
            "like EOS; build masks from lengths / attention_mask and keep the generated EOS valid",
        ))
        if batch.mask is not None:
            reasons = batch.finish_reasons or [None] * batch.size
            masked = is_eos.any(1) & ~_at(valid, first)
            for b in masked.nonzero().flatten().tolist():
                if reasons[b] in (None, "stop"):
                    out.append(Finding(
                        "bos_eos", b, int(first[b]), "warning",
                        "the generated EOS is masked out (pad == eos?): the model never learns to stop; mask by "
                        "length, not by token id",
                    ))
    return out


# ------------------------------------------------------------------------------------------ driver
def _reasons_unchecked(batch: Batch, student_tokenizer: Any, teacher_tokenizer: Any, num_items: int | None,
                       reduction: str | None) -> dict[str, str]:
    """kind -> why it could not be checked with these inputs."""
    why: dict[str, str] = {}
    pair = _has_pair(batch)
    if not pair:
        for k in ("offset", "ordering", "padding", "temperature", "processed_logprobs", "numerics"):
            why[k] = "needs rollout_logprobs and student_logprobs"
    elif len(set(batch.prompt_lengths)) == 1:
        why["padding"] = "all prompts have the same length, so no row was left-padded"
    if not batch.has("teacher_logprobs"):
        why["teacher_coverage"] = "needs teacher_logprobs"
    meta_lengths = any(_meta_values(batch, f"{side}_{what}_length") is not None
                       for side, _ in _SIDES for what in ("prompt", "completion"))
    if not (batch.has("student_logprobs") or batch.has("teacher_logprobs") or meta_lengths):
        why["truncation"] = "needs student_logprobs / teacher_logprobs or the other side's lengths in meta"
    if student_tokenizer is None or teacher_tokenizer is None:
        why["tokenizer_mismatch"] = "needs student_tokenizer and teacher_tokenizer"
    if student_tokenizer is None and teacher_tokenizer is None:
        why["bos_eos"] = "needs a tokenizer: student_tokenizer or teacher_tokenizer"
    versions = _meta_values(batch, "policy_version") is not None and _meta_values(batch, "trainer_version") is not None
    if not (versions or pair):
        why["staleness"] = "needs meta policy_version / trainer_version, or rollout_logprobs and student_logprobs"
    if num_items is None and reduction is None:
        why["normalisation"] = "needs num_items or reduction"
    return why


def check_alignment(batch: Batch, tolerances: Tolerances = Tolerances(), *, student_tokenizer: Any = None,
                    teacher_tokenizer: Any = None, num_items: int | None = None,
                    reduction: str | None = None) -> AlignmentReport:
    """Run every detector this batch (and the extra inputs) allow; list the classes it could not check.

    ``batch`` should carry ``rollout_logprobs`` and ``student_logprobs`` (recomputed by the trainer
    side) and, when available, ``teacher_logprobs``; ``batch.sampling`` / ``batch.scoring`` enable
    the config-aware temperature rule and ``batch.meta`` the version / length rules. Tokenizers
    enable D (both) and E (either; the student's first), ``num_items`` / ``reduction`` enable K.
    Ordering is tried before offsets, and every explained row is left out of the later gap
    detectors, so one cause gives one finding per row.
    """
    with _one_thread():
        return _check(batch, tolerances, student_tokenizer, teacher_tokenizer, num_items, reduction)


def _check(batch: Batch, tol: Tolerances, student_tokenizer: Any, teacher_tokenizer: Any, num_items: int | None,
           reduction: str | None) -> AlignmentReport:
    """The body of :func:`check_alignment` (the detectors, in order)."""
    findings: list[Finding] = detect_missing(batch)
    ordering = detect_ordering(batch, tol)
    exclude = frozenset(f.row for f in ordering)
    offset = detect_offset(batch, tol, exclude)
    exclude |= {f.row for f in offset}
    padding = detect_padding(batch, tol, exclude)
    exclude |= {f.row for f in padding}
    findings += offset + ordering + padding
    structured = detect_temperature(batch, tol, exclude) or detect_processed(batch, tol, exclude)
    findings += structured
    findings += detect_teacher_coverage(batch)
    findings += detect_truncation(batch)
    stale = detect_staleness(batch, tol, exclude, explained=bool(structured))
    findings += stale
    stale_rows = {f.row for f in stale if f.row is not None}
    explained = bool(structured) or any(f.row is None for f in stale)
    findings += detect_numerics(batch, tol, explained=explained, exclude=exclude | stale_rows)
    tokenizer = student_tokenizer if student_tokenizer is not None else teacher_tokenizer
    if tokenizer is not None:
        findings += detect_bos_eos(batch, tokenizer, tol)
    if student_tokenizer is not None and teacher_tokenizer is not None:
        findings += detect_tokenizer_mismatch(student_tokenizer, teacher_tokenizer)
    if num_items is not None or reduction is not None:
        findings += detect_normalisation(batch, num_items, reduction)
    reasons = _reasons_unchecked(batch, student_tokenizer, teacher_tokenizer, num_items, reduction)
    stats = {}
    gap = _gap(batch, batch.valid())
    if gap is not None and bool((~gap.isnan()).any()):
        a = gap.abs()[~gap.isnan()]
        stats = {"max_abs_gap": float(a.max()), "mean_abs_gap": float(a.mean()), "tokens": float(a.numel())}
    return AlignmentReport(findings=findings, stats=stats, unchecked=[k for k in KINDS if k in reasons],
                           unchecked_reasons=reasons)
