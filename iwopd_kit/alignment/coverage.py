"""Coverage and length detectors: does every valid token have the values it needs?

Class B (missing rollout log-probs / token ids), C (teacher coverage) and G (truncation: the
student or the teacher saw a shorter sequence). Independent of the rollout-student gap.
"""

from __future__ import annotations

import torch

from .core import SIDES, Context, Finding, value_text
from .tensors import first_true, last_true


def find_missing(ctx: Context) -> list[Finding]:
    """Class B: conversion-time findings, and rollout values missing on valid tokens (a masked-out
    token never reaches the loss, so it needs no rollout log-prob)."""
    batch = ctx.batch
    out = [Finding(**f) for f in batch.findings]
    if batch.has("rollout_logprobs"):
        miss = batch.valid() & batch.series("rollout_logprobs", torch.float64).isnan()
        counts, first = miss.sum(1), first_true(miss)
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


def find_teacher_coverage(ctx: Context) -> list[Finding]:
    """Class C: every valid token needs a finite teacher log-prob."""
    batch = ctx.batch
    t = batch.series("teacher_logprobs", torch.float64)
    valid = batch.valid()
    bad = valid & ~torch.isfinite(t)
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
    return out


def find_truncation(ctx: Context) -> list[Finding]:
    """Class G: the student or teacher saw a shorter sequence than the rollout.

    From the series: a row whose finite values stop before its last valid token (a tail of
    non-finite values after at least one finite one) — the other side's max length cut the
    completion. From ``meta``: ``{side}_prompt_length`` / ``{side}_completion_length`` differing
    from this batch's lengths (prompt or completion truncated differently on the two sides).
    """
    batch = ctx.batch
    out: list[Finding] = []
    valid = batch.valid()
    cols = torch.arange(batch.width)[None, :]
    last_valid, n_valid = last_true(valid), valid.sum(1)
    for side, name in SIDES:
        if not batch.has(name):
            continue
        fin = valid & torch.isfinite(batch.series(name, torch.float64))
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
