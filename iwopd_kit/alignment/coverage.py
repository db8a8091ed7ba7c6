"""Coverage and length detectors: does every valid token have the values it needs?

Class B (missing rollout log-probs / token ids), C (teacher coverage) and G (truncation: the
student or the teacher saw a shorter sequence). Independent of the rollout-student gap.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS
from ..batch.blocks import series_mask
from .context import Context
from .core import SIDES, Finding, value_text
from .teacher_shift import find_teacher_offset
from .tensors import first_position, first_true, last_true


def find_missing(ctx: Context) -> list[Finding]:
    """Class B: conversion-time findings, and missing (null) values, never dropped without a word.

    A rollout log-prob is required on every loss-masked policy token (``batch.policy_mask()``), a student
    (trainer) log-prob on every loss-masked token (``batch.valid()``: the trainer trains on all of them):
    a null there is an error per row, naming the series, the first position and the count, and the token
    is flagged in the explanation map (the gap checks and the metrics cannot read it). A null on any other
    completion token (masked out, or sampled by another model / context) is one info per series.
    """
    batch = ctx.batch
    out = [Finding(**f) for f in batch.findings]
    reported = {f.row for f in out if f.kind == "missing_token_ids"}
    pad = batch.padding_mask()
    for name, side, required in ((ROLLOUT_LOGPROBS, "rollout", ctx.policy), (STUDENT_LOGPROBS, "student", batch.valid())):
        if not batch.has(name):
            continue
        nan = pad & batch.series(name).isnan()
        miss = required & nan
        ctx.mark("missing_token_ids", miss, explains=False)
        counts, first = miss.sum(1), first_true(miss)
        for b in (counts > 0).nonzero().flatten().tolist():
            if side == "rollout" and b in reported:
                continue
            j = int(first[b])
            fix = ("the engine returned no log-prob for the sampled token id: request logprobs with the sampled token "
                   "(logprobs=0) and keep the token ids (return_token_ids / logprob_token_ids)" if side == "rollout" else
                   "the trainer returned no log-prob for a token it trains on: rescore the row so that every loss-masked "
                   "token has one (these tokens are left out of every gap check and of the mismatch metrics)")
            what = "rollout log-prob(s)" if side == "rollout" else "student (trainer) log-prob(s) on loss-masked tokens"
            out.append(Finding("missing_token_ids", b, j, "error",
                               f"{int(counts[b])} {what} missing (first at position {j}); {fix}"))
        out += _masked_nulls("missing_token_ids", side, nan & ~required)
    return out


def _masked_nulls(kind: str, side: str, nulls: Tensor) -> list[Finding]:
    """One info for the null values of a series outside the tokens that need one (``nulls`` [B, L])."""
    if not bool(nulls.any()):
        return []
    rows = nulls.any(1)
    b, j = first_position(nulls)
    return [Finding(kind, b, j, "info",
                    f"{int(nulls.sum())} {side} value(s) are null on {int(rows.sum())} row(s) outside the tokens that need "
                    f"one (first: row {b}, position {j}): tokens masked out of the loss, or not sampled by the policy; "
                    "they are not checked and no metric counts them")]


def find_teacher_coverage(ctx: Context) -> list[Finding]:
    """Class C: every loss-masked policy token needs a finite teacher log-prob (an error per row); a null on
    any other completion token is one info (a -inf sentinel there is not reported). Then the teacher's alignment:
    an ``offset`` warning per row when the teacher series fits the student's better shifted
    (:func:`~iwopd_kit.alignment.teacher_shift.find_teacher_offset`)."""
    batch = ctx.batch
    t = batch.series(TEACHER_LOGPROBS, torch.float64)
    valid = ctx.policy
    bad = valid & ~torch.isfinite(t)
    ctx.mark("teacher_coverage", bad, explains=False)
    n_bad, n_valid, first = bad.sum(1), valid.sum(1), first_true(bad)
    out = []
    for b in (n_bad > 0).nonzero().flatten().tolist():
        j = int(first[b])
        out.append(Finding(
            "teacher_coverage", b, j, "error",
            f"{int(n_valid[b]) - int(n_bad[b])} finite teacher log-probs for {int(n_valid[b])} valid tokens (first gap at "
            f"position {j}, value {value_text(t[b, j].item())}); the teacher must score every completion token (check the teacher "
            "server's window and the -inf padding sentinels)",
        ))
    return out + _masked_nulls("teacher_coverage", "teacher", batch.padding_mask() & ~valid & t.isnan()) + find_teacher_offset(ctx)


def find_truncation(ctx: Context) -> list[Finding]:
    """Class G: the student or teacher saw a shorter sequence than the rollout.

    From the series, over the loss-masked policy tokens: a row whose finite values stop before its last one (a tail of
    non-finite values after at least one finite one) — the other side's max length cut the
    completion. From ``meta``: ``{side}_prompt_length`` / ``{side}_completion_length`` differing
    from this batch's lengths (prompt or completion truncated differently on the two sides).
    """
    batch = ctx.batch
    out: list[Finding] = []
    valid = ctx.policy
    cols = torch.arange(batch.width)[None, :]
    last_valid, n_valid = last_true(valid), valid.sum(1)
    for side, name in SIDES:
        if not batch.has(name):
            continue
        fin = valid & series_mask(batch, name, torch.isfinite)
        last_fin = last_true(fin)
        tail_rows = ((last_fin >= 0) & (last_fin < last_valid)).nonzero().flatten().tolist()
        if not tail_rows:
            continue
        tail = valid & (cols > last_fin[:, None])
        first, n_tail = first_true(tail), tail.sum(1)
        for b in tail_rows:
            out.append(Finding(
                "truncation", b, int(first[b]), "error",
                f"{side} log-probs stop at position {int(first[b])}: the last {int(n_tail[b])} of {int(n_valid[b])} valid "
                f"tokens have no finite {side} value, a cut-off tail: the {side} saw a truncated sequence "
                "(max_length / max_model_len / max_position_embeddings / a server window shorter than prompt + "
                "completion); raise its limit to the longest prompt + completion, or mask the cut tokens in every series",
            ))
    from_meta: list[Finding] = []
    for side, _ in SIDES:
        for what, own in (("prompt", batch.prompt_lengths), ("completion", batch.lengths)):
            other = ctx.meta(f"{side}_{what}_length")
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


__all__ = ["find_missing", "find_teacher_coverage", "find_truncation"]
