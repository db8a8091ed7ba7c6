"""Gap-based detectors over groups of rows: what the pattern of rollout - trainer says.

Class H (temperature on one side only), I (top-p / top-k renormalised rollout log-probs) and J (a
stale rollout policy). Each reads the open policy tokens (``ctx.open()``) and fits its cause per
*scope*: each group of ``batch.groups`` (when the batch has groups), then the batch's remaining open
tokens as one pool (a batch without groups is one scope). A finding explains the tokens of its scope
that the cause accounts for (``ctx.mark``); a scope it does not name keeps its tokens open for the
later detectors and for numerics (:mod:`~iwopd_kit.alignment.numerics`), which judges whatever is left.
A group-level finding names its group (``Finding.group`` and the message).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS
from ..batch.blocks import masked, row_blocks
from ..objective import iw_opd_loss
from .context import Context
from .core import Finding
from .numerics import find_numerics, judge_pool
from .tensors import first_position, first_true
from .zeros import group_floor


def scopes(ctx: Context) -> list[tuple[str | None, Tensor]]:
    """``(group name, rows [B] bool)``: each group when the batch has groups, then ``(None, every row)``."""
    out = ctx.groups() if ctx.batch.groups is not None else []
    return out + [(None, torch.ones(ctx.batch.size, dtype=torch.bool))]


def _in(name: str | None) -> str:
    return f"in group {name!r}: " if name is not None else ""


def _gap_pattern(d: Tensor, s: Tensor, min_tokens: int = 8) -> str:
    """Classify the large gaps d = rollout - trainer (data only, no settings).

    ``processed``: rollout above trainer almost everywhere (top-p/top-k renormalisation);
    ``temperature``: rollout below trainer almost everywhere (a 1/T sharpening on the trainer side
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


def _signed_r(d: Tensor, s: Tensor, min_tokens: int) -> float | None:
    """Pearson r of the signed gap ``d`` against the log-prob ``s`` (flat), None below ``min_tokens``."""
    if d.numel() < min_tokens:
        return None
    r = float(torch.corrcoef(torch.stack([d.double(), s.double()]))[0, 1])
    return None if r != r else r


def find_temperature(ctx: Context) -> list[Finding]:
    """Class H: rollout log-probs and trainer log-probs computed at different temperatures.

    Uses the recorded settings when present (raw-mode rollout log-probs are at T = 1, processed
    ones at the sampling T; ``batch.scoring`` says what the student was scored at) and confirms on
    the data: the gap must exceed ``tol.same``; the batch-level error explains every open token.
    Without settings, the data signature decides (:func:`_gap_pattern`: rollout below trainer almost
    everywhere, or both signs with |gap| growing with |log-prob|; top-p renormalisation instead puts
    the rollout above), per scope (each group, then the rest of the batch): an error where the scope's
    mismatch is beyond the numerics bounds (:func:`~iwopd_kit.alignment.numerics.judge_pool`); within them
    a warning only where the signed gap follows the log-prob (``tol.temperature_r``): healthy bf16 rounding
    also grows with |log-prob| but has either sign, so the unsigned pattern alone is no evidence (a healthy
    bf16 dump without its settings was a false alarm). Then per remaining row, only beyond the bounds (a
    row's handful of tokens shows a sign pattern by chance).
    """
    batch, tol = ctx.batch, ctx.tol
    opened = ctx.open()
    if not bool(opened.any()):
        return []
    gap = ctx.full_gap()                    # read on open tokens only (every mask below is inside ``opened``)
    big = (gap > tol.same).logical_or_(gap < -tol.same).logical_and_(opened)    # open tokens with |gap| > same
    if not bool(big.any()):
        return []
    roll_T = batch.sampling.logprob_temperature if batch.sampling is not None else None
    score_T = batch.scoring.get(STUDENT_LOGPROBS)
    if roll_T is not None and score_T is not None:
        if abs(roll_T - score_T) > 1e-6:
            b, j = first_position(big)
            how = ("raw (untempered, logprobs_mode=raw_logprobs)" if batch.sampling.logprobs_mode == "raw_logprobs"
                   else f"processed at T={roll_T:g}")
            ctx.mark("temperature", opened)
            return [Finding(
                "temperature", None, None, "error",
                f"rollout log-probs are {how} but the student was scored at T={score_T:g}: "
                f"{int(big.sum())} of {int(opened.sum())} tokens differ by more than {tol.same:g} (first: row {b}, "
                f"position {j}); score at T={roll_T:g} or sample with logprobs_mode='processed_logprobs'",
            )]
        return []
    out = []
    for name, rows in scopes(ctx):
        tokens = ctx.open() & rows[:, None]
        hit = tokens & big
        if not bool(hit.any()) or _gap_pattern(masked(gap, hit), ctx.masked_trainer(hit), tol.min_tokens_for_pattern) != "temperature":
            continue
        severity, r = "error", None
        if judge_pool(ctx, masked(gap, tokens).neg_())["severity"] != "error":
            # bf16 rounding also grows with |log-prob|, but with either sign: within the bounds, only a signed
            # gap that follows the log-prob names a temperature (a warning)
            r = _signed_r(masked(gap, hit), ctx.masked_trainer(hit), tol.temperature_min_tokens)
            if r is None or abs(r) < tol.temperature_r:
                continue
            severity = "warning"
        ctx.mark("temperature", tokens)
        n_rows = int((tokens.any(1)).sum())
        why = ("the gap has a consistent sign or grows with |log-prob|" if r is None else
               f"within the numerics bounds, but the signed gap follows the log-prob: Pearson r {r:+.2f} over "
               f"{int(hit.sum())} tokens, where rounding gives noise of either sign")
        out.append(Finding(
            "temperature", None, None, severity,
            f"{_in(name)}rollout and trainer log-probs differ in a temperature-like pattern on {int(hit.sum())} of "
            f"{int(tokens.sum())} tokens{f' of its {n_rows} rows' if name is not None else ''} ({why}): apply the same "
            "temperature on both sides (vLLM's raw_logprobs ignore temperature)"
            + (f"; check the sampling settings of group {name!r}" if name is not None else "")
            + "; a stale rollout policy can look alike", group=name))
    left = ctx.open()
    for b in ((left & big).sum(1) >= tol.min_tokens_for_pattern).nonzero().flatten().tolist():
        row = left[b]
        hit = row & big[b]
        if _gap_pattern(gap[b][hit], ctx.trainer_rows([b])[0][hit], tol.min_tokens_for_pattern) != "temperature":
            continue
        if judge_pool(ctx, -gap[b][row])["severity"] != "error":
            continue
        ctx.mark("temperature", row[None, :] & (torch.arange(batch.size) == b)[:, None])
        out.append(Finding(
            "temperature", b, int(first_true(hit[None, :])[0]), "error",
            f"row {b}'s rollout and trainer log-probs differ in a temperature-like pattern on {int(hit.sum())} of "
            f"{int(row.sum())} tokens, beyond the numerics bounds: this row was sampled or scored at another "
            "temperature than the rest; apply the same temperature on both sides"))
    return out


def find_processed(ctx: Context) -> list[Finding]:
    """Class I: top-p / top-k renormalised (processed) rollout log-probs sit above the full-vocab ones.

    vLLM's processed log-prob of a kept token is log(p_t / S_t), S_t the kept mass at step t, so
    A_t = teacher - rollout = (teacher - log p_t) + log S_t: every advantage moves *down* by |log S_t|.
    Per scope (each group, then the rest), the floor rule of :func:`~iwopd_kit.alignment.zeros.group_floor`
    (recorded top_p / top_k, or, without settings, the top_p the data bounds: a nucleus of one at exactly
    0.0 and every other token above the trainer by -log S <= -log top_p) names the tokens it explains:
    trainer - rollout in [floor, ``tol.same``]. The finding (a warning) measures the bias
    (:func:`processed_bias`): mean log S, its share of mean |A|, and the IW-OPD loss and mean prefix weight
    with the full-distribution log-probs in place of the rollout's; without settings also the estimated
    top_p (an upper bound). Where ``kept_logmass`` is recorded the trainer series already is
    student - kept_logmass (``ctx.trainer``): an info says the renormalisation was accounted for exactly.
    """
    tol = ctx.tol
    out = _kept_info(ctx)
    gap = ctx.full_gap()
    for name, rows in scopes(ctx):
        tokens = ctx.open() & rows[:, None]
        if not bool(tokens.any()):
            continue
        floor = group_floor(ctx, tokens)
        if floor.top_p is None:
            continue
        delta = -gap
        expl = tokens & (delta >= floor.explain) & (delta <= tol.same)
        big = expl & (gap.abs() > tol.same)
        if not bool(big.any()):
            continue
        ctx.mark("processed_logprobs", expl)
        b, j = first_position(big)
        zeros = expl & ctx.rollout_zero() & (delta < -tol.same)
        if floor.estimated:
            top_p = math.exp(float(masked(delta, expl).min()))
            how = (f"no settings recorded; rollout above the trainer on {int(big.sum())} of {int(tokens.sum())} tokens"
                   + (f", {int(zeros.sum())} of them at exactly 0.0 where the trainer's probability is at least "
                      f"{math.exp(float(masked(delta, zeros).min())):.4g} (a nucleus of one)" if bool(zeros.any()) else "")
                   + f": estimated top_p <= {top_p:.4g} (the smallest kept mass S = exp(trainer - rollout), an upper bound)")
        else:
            s = ctx.batch.sampling
            how = ", ".join(x for x in (f"top_p={s.top_p:g}" if s.top_p < 1 else "",
                                        f"top_k={s.top_k}" if s.top_k else "") if x) + ", processed_logprobs"
        q = processed_bias(ctx, expl)
        text = (f"{_in(name)}rollout log-probs are renormalised over a top-p/top-k set ({how}): they sit above the "
                f"trainer's full-distribution log-probs on {int(big.sum())} of {int(tokens.sum())} tokens (first: row {b}, "
                f"position {j}). A kept token's rollout value is log(p/S), S the kept mass: mean log S = {q['mean_log_s']:.4g} "
                f"(mean kept mass {q['kept']:.4f}), so every advantage A = teacher - rollout is shifted down by |log S|")
        if "mean_abs_a" in q:
            text += (f", {q['share']:.1%} of mean |A| ({q['mean_abs_a']:.4g}); with the full-distribution log-probs (the "
                     f"trainer's recompute) as rollout log-probs the IW-OPD loss would be {q['loss_full']:.4g} instead of "
                     f"{q['loss']:.4g} ({q['loss_full'] - q['loss']:+.3g}) and the mean prefix weight "
                     f"{q['weight_full']:.4f} instead of {q['weight']:.4f} (gamma {q['gamma']:g})")
        text += "; sample with top_p=1, top_k=0 (the paper's setting) or use logprobs_mode='raw_logprobs' at T=1"
        out.append(Finding("processed_logprobs", None, None, "warning", text, group=name))
    return out


def _kept_info(ctx: Context) -> list[Finding]:
    """An info when ``kept_logmass`` turned renormalised rollout log-probs into exact comparisons."""
    adj = ctx.kept_adjusted() & ctx.checked
    if not bool(adj.any()):
        return []
    log_s = masked(ctx.batch.series("kept_logmass", torch.float64), adj)
    if not bool((log_s < -ctx.tol.same).any()):
        return []
    return [Finding(
        "processed_logprobs", None, None, "info",
        f"{int(adj.sum())} tokens carry kept_logmass (the trainer's log-mass over the engine's kept set, mean log S = "
        f"{float(log_s.mean()):.4g}): their rollout log-probs are compared with student - kept_logmass exactly and judged "
        "as at top_p 1; the advantage A = teacher - rollout is still shifted down by |log S| on them unless the "
        "trainer renormalises the same way")]


def processed_bias(ctx: Context, valid: Tensor) -> dict[str, float]:
    """The size of the top-p bias on ``valid`` tokens: ``mean_log_s`` (mean of student - rollout), ``kept``
    (mean exp of it) and, with teacher log-probs, ``mean_abs_a`` (mean |teacher - rollout|), ``share``
    (|mean log S| / mean |A|), ``loss`` / ``weight`` (IW-OPD loss and mean prefix weight with the rollout
    log-probs) and ``loss_full`` / ``weight_full`` (with the student's full-distribution log-probs
    instead), at meta ``iw_opd_gamma`` / ``iw_opd_epsilon`` (default 0.5 / 1e-8), token-mean."""
    batch = ctx.batch
    s, r = batch.series(STUDENT_LOGPROBS, torch.float64), batch.series(ROLLOUT_LOGPROBS, torch.float64)
    ok = valid & torch.isfinite(s) & torch.isfinite(r)
    log_s = (s - r)[ok]
    out = {"mean_log_s": float(log_s.mean()), "kept": float(log_s.exp().mean())}
    if not batch.has(TEACHER_LOGPROBS):
        return out
    t = batch.series(TEACHER_LOGPROBS, torch.float64)
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
    same pair, else one per row); it explains those rows' open tokens. Without them, the data, per
    scope (each group, then the rest): a gap of the *same sign in every row* of the scope (at least
    ``tol.stale_min_rows`` rows with ``tol.min_tokens_for_lag`` open tokens each) whose pooled
    t-statistic reaches ``tol.stale_t`` is a warning that explains the scope's open tokens.
    """
    batch, tol = ctx.batch, ctx.tol
    pv, tv = ctx.meta("policy_version"), ctx.meta("trainer_version")
    if pv is not None and tv is not None:
        both = [b for b in range(batch.size) if pv[b] is not None and tv[b] is not None]
        stale = [b for b in both if pv[b] != tv[b]]
        if not stale:
            return []
        ctx.mark("staleness", ctx.open() & torch.isin(torch.arange(batch.size), torch.tensor(stale))[:, None])
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
    out = []
    for name, scope in scopes(ctx):
        tokens = ctx.open() & scope[:, None]
        found = _stale(ctx, tokens)
        if found is None:
            continue
        mu, t, n_rows = found
        ctx.mark("staleness", tokens)
        side = "above" if mu > 0 else "below"
        out.append(Finding(
            "staleness", None, None, "warning",
            f"{_in(name)}rollout log-probs sit {side} the trainer's in every one of the {n_rows} rows (mean gap "
            f"{mu:+.3g}, t = {t:.1f}) with no offset, temperature or top-p pattern: rollout policy older than the trained "
            "policy? Sync the vLLM weights every step, and record meta policy_version / trainer_version to confirm",
            group=name))
    return out


def _stale(ctx: Context, tokens: Tensor) -> tuple[float, float, int] | None:
    """(mean gap, t, rows) when the ``tokens`` [B, L] show the staleness signature, else None."""
    tol = ctx.tol
    gap = ctx.full_gap()                  # finite on the open tokens, which ``tokens`` are
    n_b = tokens.sum(1)
    rows = n_b >= tol.min_tokens_for_lag
    if int(rows.sum()) < tol.stale_min_rows:
        return None
    vals = masked(gap, tokens & rows[:, None])
    if float(torch.linalg.vector_norm(vals, 1)) / vals.numel() <= tol.same:      # mean |gap|, no float copy
        return None
    sums = torch.cat([gap[r].masked_fill(~tokens[r], 0.0).sum(1) for r in row_blocks(ctx.batch.size, ctx.batch.width)])
    means = (sums / n_b)[rows]
    if not (bool((means > 0).all()) or bool((means < 0).all())):
        return None
    mu, sd = float(vals.mean()), float(vals.std())
    t = abs(mu) / (sd / math.sqrt(vals.numel())) if sd > 0 else math.inf
    return (mu, t, int(rows.sum())) if t >= tol.stale_t else None


__all__ = ["scopes", "find_temperature", "find_processed", "processed_bias", "find_staleness", "find_numerics"]
