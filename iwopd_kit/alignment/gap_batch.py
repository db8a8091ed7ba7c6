"""Gap-based detectors over the whole batch: what the pattern of rollout - student says.

Class H (temperature on one side only), I (top-p / top-k renormalised rollout log-probs),
J (a stale rollout policy) and M (numerics: a gap nothing else explains). They run after the
row-level detectors and leave out the rows those explained; a batch-level finding of H, I or J
explains the gap of the whole batch, so I runs only when H found nothing and M only when none did.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import Context, Finding, nanmean_rows


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


def find_temperature(ctx: Context) -> list[Finding]:
    """Class H: rollout log-probs and student log-probs computed at different temperatures.

    Uses the recorded settings when present (raw-mode rollout log-probs are at T = 1, processed
    ones at the sampling T; ``batch.scoring`` says what the student was scored at) and confirms on
    the data: the gap must exceed ``tol.same``. Without settings, the data signature decides
    (:func:`_gap_pattern`): rollout below student almost everywhere, or both signs with |gap|
    growing with |log-prob|; top-p renormalisation instead puts the rollout above the student.
    """
    batch, tol = ctx.batch, ctx.tol
    valid = ctx.valid()
    if not bool(valid.any()):
        return []
    gap = ctx.gap(valid)
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


def find_processed(ctx: Context) -> list[Finding]:
    """Class I: top-p / top-k renormalised (processed) rollout log-probs sit above the full-vocab ones.

    Skipped when an earlier finding (temperature) already explained the batch's gap.
    """
    if ctx.gap_explained:
        return []
    batch, tol = ctx.batch, ctx.tol
    valid = ctx.valid()
    gap = ctx.gap(valid)
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


def find_staleness(ctx: Context) -> list[Finding]:
    """Class J: the rollout policy is older than the policy being trained.

    Recorded versions decide when present: ``meta[b]["policy_version"]`` (vLLM's weights) differing
    from ``meta[b]["trainer_version"]`` is an error (one batch-level finding when every row has the
    same pair, else one per row). Without them, the data: a gap of the *same sign in every row*
    (at least ``tol.stale_min_rows`` rows) whose pooled t-statistic reaches ``tol.stale_t`` and
    that no offset / temperature / processed pattern explained (``ctx.gap_explained``) is a warning.
    """
    batch, tol = ctx.batch, ctx.tol
    pv, tv = ctx.meta("policy_version"), ctx.meta("trainer_version")
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
    if ctx.gap_explained:
        return []
    gap = ctx.gap(ctx.valid())
    n_b = (~gap.isnan()).sum(1)
    rows = n_b >= tol.min_tokens_for_lag
    if int(rows.sum()) < tol.stale_min_rows:
        return []
    g = gap[rows]
    vals = g[~g.isnan()]
    if float(vals.abs().mean()) <= tol.same:
        return []
    means = nanmean_rows(g)
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


def find_numerics(ctx: Context) -> list[Finding]:
    """Class M: a gap with no structure. Up to ``tol.rounding`` it is low-precision rounding (warning);
    beyond that an unexplained disagreement (error). Redo the comparison in float64 on both sides: a gap
    that stays the same size is a bug, one that shrinks by orders of magnitude was rounding.

    Skipped when a batch-level finding explained the gap; explained rows are left out.
    """
    if ctx.gap_explained:
        return []
    tol = ctx.tol
    valid = ctx.valid()
    gap = ctx.gap(valid)
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


__all__ = ["find_temperature", "find_processed", "find_staleness", "find_numerics"]
