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

from ..mismatch import QUANTILES, abs_delta_quantiles, mean_standard_error, metrics_from_delta
from ..objective import iw_opd_loss
from .core import FULL_PRECISION, Context, Finding
from .tensors import first_position, masked, stored_series


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
    big = (gap > tol.same).logical_or_(gap < -tol.same)    # |gap| > same (NaN off valid tokens), no float copy
    if not bool(big.any()):
        return []
    roll_T = batch.sampling.logprob_temperature if batch.sampling is not None else None
    score_T = batch.scoring.get("student_logprobs")
    if roll_T is not None and score_T is not None:
        if abs(roll_T - score_T) > 1e-6:
            b, j = first_position(big)
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
    if _gap_pattern(masked(gap, big), masked(stored_series(batch, "student_logprobs"), big).double()) != "temperature":
        return []
    return [Finding(
        "temperature", None, None, "error",
        f"rollout and student log-probs differ in a temperature-like pattern on {n_big} of {int(valid.sum())} tokens "
        f"(the gap has a consistent sign or grows with |log-prob|): apply the same temperature on both sides "
        "(vLLM's raw_logprobs ignore temperature); a stale rollout policy can look alike",
    )]


def find_processed(ctx: Context) -> list[Finding]:
    """Class I: top-p / top-k renormalised (processed) rollout log-probs sit above the full-vocab ones.

    vLLM's processed log-prob of a kept token is log(p_t / S_t), S_t the kept mass at step t, so
    A_t = teacher - rollout = (teacher - log p_t) + log S_t: every advantage moves *down* by |log S_t|.
    The finding measures it (:func:`processed_bias`): mean log S (= mean of student - rollout), its share
    of mean |A|, and the IW-OPD loss and mean prefix weight with the full-distribution log-probs (the
    trainer's recompute) in place of the rollout's. Skipped when an earlier finding (temperature)
    already explained the batch's gap.
    """
    if ctx.gap_explained:
        return []
    batch, tol = ctx.batch, ctx.tol
    valid = ctx.valid()
    gap = ctx.gap(valid)
    big = (gap > tol.same).logical_or_(gap < -tol.same)    # |gap| > same (NaN off valid tokens), no float copy
    if not bool(big.any()):
        return []
    sampling = batch.sampling
    recorded = sampling is not None and sampling.truncates and sampling.logprobs_mode == "processed_logprobs"
    if not recorded and _gap_pattern(masked(gap, big), masked(stored_series(batch, "student_logprobs"), big).double()) != "processed":
        return []
    b, j = first_position(big)
    how = (", ".join(x for x in (f"top_p={sampling.top_p:g}" if sampling.top_p < 1 else "",
                                 f"top_k={sampling.top_k}" if sampling.top_k else "") if x) + ", processed_logprobs"
           if recorded else "no settings recorded; rollout above the student on almost every differing token")
    q = processed_bias(ctx, valid)
    text = (f"rollout log-probs are renormalised over a top-p/top-k set ({how}): they sit above the trainer's "
            f"full-distribution log-probs on {int(big.sum())} of {int(valid.sum())} tokens (first: row {b}, position {j}). "
            f"A kept token's rollout value is log(p/S), S the kept mass: mean log S = {q['mean_log_s']:.4g} (mean kept "
            f"mass {q['kept']:.4f}), so every advantage A = teacher - rollout is shifted down by |log S|")
    if "mean_abs_a" in q:
        text += (f", {q['share']:.1%} of mean |A| ({q['mean_abs_a']:.4g}); with the full-distribution log-probs (the "
                 f"trainer's recompute) as rollout log-probs the IW-OPD loss would be {q['loss_full']:.4g} instead of "
                 f"{q['loss']:.4g} ({q['loss_full'] - q['loss']:+.3g}) and the mean prefix weight "
                 f"{q['weight_full']:.4f} instead of {q['weight']:.4f} (gamma {q['gamma']:g})")
    text += "; sample with top_p=1, top_k=0 (the paper's setting) or use logprobs_mode='raw_logprobs' at T=1"
    return [Finding("processed_logprobs", None, None, "warning", text)]


def processed_bias(ctx: Context, valid: Tensor) -> dict[str, float]:
    """The size of the top-p bias on ``valid`` tokens: ``mean_log_s`` (mean of student - rollout), ``kept``
    (mean exp of it) and, with teacher log-probs, ``mean_abs_a`` (mean |teacher - rollout|), ``share``
    (|mean log S| / mean |A|), ``loss`` / ``weight`` (IW-OPD loss and mean prefix weight with the rollout
    log-probs) and ``loss_full`` / ``weight_full`` (with the student's full-distribution log-probs
    instead), at meta ``iw_opd_gamma`` / ``iw_opd_epsilon`` (default 0.5 / 1e-8), token-mean."""
    batch = ctx.batch
    s, r = batch.series("student_logprobs", torch.float64), batch.series("rollout_logprobs", torch.float64)
    ok = valid & torch.isfinite(s) & torch.isfinite(r)
    log_s = (s - r)[ok]
    out = {"mean_log_s": float(log_s.mean()), "kept": float(log_s.exp().mean())}
    if not batch.has("teacher_logprobs"):
        return out
    t = batch.series("teacher_logprobs", torch.float64)
    m = ok & torch.isfinite(t)
    if not bool(m.any()):
        return out
    zero = torch.zeros((), dtype=torch.float64)
    s0, r0, t0 = (torch.where(m, x, zero) for x in (s, r, t))
    gamma = next((float(v) for v in ctx.meta("iw_opd_gamma") or [] if v is not None), 0.5)
    eps = next((float(v) for v in ctx.meta("iw_opd_epsilon") or [] if v is not None), 1e-8)
    roll = iw_opd_loss(s0, t0, m, rollout_logprobs=r0, gamma=gamma, eps=eps)
    full = iw_opd_loss(s0, t0, m, rollout_logprobs=s0, gamma=gamma, eps=eps)
    mean_abs_a = float((t0 - r0)[m].abs().mean())
    out.update(mean_abs_a=mean_abs_a, share=abs(float((s0 - r0)[m].mean())) / mean_abs_a if mean_abs_a > 0 else math.inf,
               loss=float(roll.loss), loss_full=float(full.loss), weight=roll.metrics["iw_opd/mean_weight"],
               weight_full=full.metrics["iw_opd/mean_weight"], gamma=gamma)
    return out


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
    has = ~gap.isnan()
    n_b = has.sum(1)
    rows = n_b >= tol.min_tokens_for_lag
    if int(rows.sum()) < tol.stale_min_rows:
        return []
    has &= rows[:, None]
    vals = masked(gap, has)
    if float(torch.linalg.vector_norm(vals, 1)) / vals.numel() <= tol.same:      # mean |gap|, no float copy
        return []
    means = (gap.nan_to_num_(0.0).sum(1) / n_b)[rows]      # the row means (gap is not needed beyond this)
    del gap, has
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


_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}


def find_numerics(ctx: Context) -> list[Finding]:
    """Class M: a gap with no structure, judged on its distribution, not on its largest token.

    With Δ = student - rollout on the valid tokens nothing else explained: a batch is *low-precision*
    when the recorded dtypes (meta ``rollout_dtype`` / ``trainer_dtype``, e.g. a bf16 vLLM engine vs a
    float32 trainer) say so, or when its bulk (the ``tol.bulk_quantile`` quantile of |Δ|) exceeds
    ``tol.same``. There, healthy rounding has long tails (a few tokens of 0.1-0.3 nats on the tiny
    models, several nats on rare tokens of large vocabularies): the finding is an error only when the
    pooled mismatch is beyond the field's healthy range (``mismatch/token_mult_prob_error`` above
    ``tol.mult_prob_error``, or ``mismatch/k3_kl`` above ``tol.k3_kl``, by more than ``tol.metric_se``
    standard errors of the mean: a handful of tokens cannot establish it), else a warning that names
    the cause. In a batch whose bulk agrees to float32, a token off by more than ``tol.rounding`` is an
    error: it is not rounding. Redo the comparison in float64 on both sides: a gap that stays the same
    size is a bug, one that shrinks by orders of magnitude was rounding.

    Skipped when a batch-level finding explained the gap; explained rows are left out.
    """
    if ctx.gap_explained:
        return []
    tol = ctx.tol
    valid = ctx.valid()
    gap = ctx.gap(valid)
    ok = torch.isfinite(gap)                   # NaN off the valid tokens
    delta = masked(gap, ok).neg_()
    if delta.numel() == 0:
        return []
    m = metrics_from_delta(delta)
    if m["mismatch/logp_abs_diff_max"] <= tol.same:
        return []
    worst = gap.abs_().masked_fill_(~ok, -1.0)   # gap is not needed beyond this point
    b, j = divmod(int(worst.argmax()), worst.shape[1])
    del gap, worst, ok
    q = abs_delta_quantiles(delta, (*QUANTILES, tol.bulk_quantile))
    bulk = q[f"p{100 * tol.bulk_quantile:g}"]
    rd, td = ctx.recorded_dtype("rollout_dtype"), ctx.recorded_dtype("trainer_dtype")
    low = any(d is not None and d not in FULL_PRECISION for d in (rd, td)) or bulk > tol.same   # = ctx.low_precision
    tmpe, k3, mx = m["mismatch/token_mult_prob_error"], m["mismatch/k3_kl"], m["mismatch/logp_abs_diff_max"]
    stats = (f"|trainer - rollout| p50 {q['p50']:.3g}, p90 {q['p90']:.3g}, p99 {q['p99']:.3g}, max {mx:.3g} (row {b}, "
             f"position {j}) over {delta.numel()} tokens; mismatch/token_mult_prob_error {tmpe:.4f}, mismatch/k3_kl {k3:.3g}")
    short = lambda d: _SHORT.get(d, d)  # noqa: E731
    if rd is not None and td is not None and rd != td:
        cause = f"rollout {short(rd)} vs trainer {short(td)}"
    elif rd is not None and td is not None:
        cause = f"rollout and trainer both {short(rd)}"
    elif rd is not None or td is not None:
        cause = (f"rollout {short(rd)}, trainer dtype not recorded" if td is None
                 else f"trainer {short(td)}, rollout dtype not recorded")
    else:
        cause = None
    if low:
        se_tmpe = mean_standard_error(delta, lambda d: torch.exp(d.abs()))
        se_k3 = mean_standard_error(delta, lambda d: torch.expm1(d) - d)
        over = [(f"mismatch/token_mult_prob_error {tmpe:.4f} > {tol.mult_prob_error:g} (NeMo-RL's healthy bound)",
                 tmpe - tol.mult_prob_error, se_tmpe), (f"mismatch/k3_kl {k3:.3g} > {tol.k3_kl:g}", k3 - tol.k3_kl, se_k3)]
        beyond = [f"{text} by more than {tol.metric_se:g} standard errors ({s_e:.2g})"
                  for text, x, s_e in over if x > tol.metric_se * s_e]
        noisy = [f"{text}, but within {tol.metric_se:g} standard errors ({s_e:.2g}) over {delta.numel()} tokens"
                 for text, x, s_e in over if 0 < x <= tol.metric_se * s_e]
        sev = "error" if beyond else "warning"
        healthy = (f"within the healthy range (token_mult_prob_error <= {tol.mult_prob_error:g})" if not noisy
                   else "at the edge of the healthy range")
        if beyond:
            what = (f"too wide for low-precision rounding{f' ({cause})' if cause else ''}: {'; '.join(beyond)}, with no "
                    "offset, temperature, top-p or staleness pattern; compare in float64 on both sides (rounding shrinks, "
                    "a bug stays) and check that both sides run the same weights")
        elif cause is not None:
            what = (f"{cause}: low-precision rounding, {healthy}; roll out in the trainer's dtype to remove it (TRL: build the engine with "
                    "iwopd_kit.integrations.trl.vllm_engine_kwargs(dtype='float32'), or train in the engine's dtype)")
        else:
            what = (f"looks like low-precision rounding (bf16 on one side?), {healthy}; record meta "
                    "rollout_dtype / trainer_dtype to name the cause, or compare in float32 or float64 on both sides")
        if noisy:
            what += f"; {'; '.join(noisy)}: too few tokens to call it, check a larger batch"
    else:
        sev = "error" if mx > tol.rounding else "warning"
        what = (f"while the bulk agrees to float32 (p{100 * tol.bulk_quantile:g} {bulk:.2g}): "
                + ("not rounding; find what changes this token's value on one side only" if sev == "error"
                   else "a small disagreement on a few tokens (batch-variant kernels?); compare in float64 on both sides"))
    return [Finding("numerics", b, j, sev, f"{stats}: {what}")]


__all__ = ["find_temperature", "find_processed", "processed_bias", "find_staleness", "find_numerics"]
