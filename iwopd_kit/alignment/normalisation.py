"""Normalisation (class K): how the loss is divided over the batch's valid tokens.

Needs ``num_items`` (TRL's ``num_items_in_batch``) or a ``reduction``; independent of the
rollout-student gap.
"""

from __future__ import annotations

from ..objective.core import REDUCTIONS
from .context import Context
from .core import Finding


# --------------------------------------------------------------------------------- K: normalisation
def find_normalisation(ctx: Context) -> list[Finding]:
    """Class K: how the loss is normalised over the batch's valid tokens.

    ``num_items`` (TRL's ``num_items_in_batch``) different from the N valid tokens of ``batch`` is a
    warning unless ``meta[b]["grad_accum_steps"] > 1`` says that it counts several micro-batches
    (then it must still be >= N). ``reduction`` ('token_mean' or 'sequence_mean') gives an info
    finding, when rows have different numbers of valid tokens n_b, about the weight per token:
    1/N under token_mean, 1/(B n_b) under sequence_mean. Reads ``ctx.num_items`` and ``ctx.reduction``.
    """
    batch, num_items, reduction = ctx.batch, ctx.num_items, ctx.reduction
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} or None, got {reduction!r}")
    n_b = batch.valid().sum(1)
    N = int(n_b.sum())
    out: list[Finding] = []
    if num_items is not None:
        accum = ctx.meta("grad_accum_steps")
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


__all__ = ["find_normalisation"]
