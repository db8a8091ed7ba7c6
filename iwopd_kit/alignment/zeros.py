"""Exact 0.0 rollout log-probs: a certain token, a nucleus of one, or a padding value on a real token?

vLLM returns exactly 0.0 for a sampled token whose probability is 1 in the engine's arithmetic, and,
with ``processed_logprobs`` under top-p / top-k, for a token that is alone in the kept set: with
top_p < 1 a token whose probability p >= top_p is the whole nucleus (S = p, log(p / S) = 0), and with
top_k = 1 every token is. Both are healthy. TRL also pads its rollout log-prob rows with 0.0 (and
zero-filled tensors do the same), so a 0.0 on a valid token whose trainer log-prob is far below
where a nucleus of one can sit is a padding value that reached a real token.

The rule (:func:`zero_placeholders`): an open token with rollout exactly 0.0 is a placeholder when the
trainer's log-prob of it is below its group's floor (:func:`zero_floors`):

- recorded settings (``batch.sampling``, processed log-probs): log(top_p) - ``tol.zero_slack`` under
  top-p, -inf under top_k = 1, else -``zero_slack``; raw log-probs: -``zero_slack``;
- no recorded settings: when the group's *other* tokens show the top-p signature (rollout above the
  trainer on at least 95% of those differing by more than ``tol.same``, at least
  ``tol.min_tokens_for_pattern`` of them), top_p is estimated from them: each kept token's S =
  exp(trainer - rollout) >= top_p, so ``top_p_hat`` = min S (over tokens with S >= ``tol.min_top_p``) is
  an upper bound, and the floor is log(top_p_hat) - ``tol.nucleus_slack``; without the signature (too
  few differing tokens to tell, as in a 4-row batch of a confident model), log(``tol.min_top_p``): a 0.0
  on a token the trainer gives p < ``min_top_p`` is a padding value whatever top_p was, and one between
  that and a certain token is *ambiguous* (:func:`zero_ambiguous`: a nucleus of one, or a padding value;
  the offset detector's warning asks for the settings). With recorded settings that say no truncation
  (top_p 1, top_k 0, or raw log-probs), -``zero_slack``.

``zero_slack`` allows for the engine's rounding of a near-certain token (bf16: a few 1e-3); ``nucleus_slack``
for an estimate that sits above the true top_p (docs/calibration.md). Tokens without a trainer value are
never called placeholders here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Batch
from ..batch.blocks import masked, row_blocks
from .context import Context
from .tolerances import Tolerances


def nucleus_floor(batch: Batch) -> float:
    """The lowest trainer log-prob a token can have and still be alone in the rollout's kept set (recorded settings)."""
    s = batch.sampling
    if s is None or s.logprobs_mode != "processed_logprobs":
        return 0.0
    if s.top_k == 1:
        return -math.inf
    return math.log(s.top_p) if s.top_p < 1.0 else 0.0


def recorded_truncation(batch: Batch) -> bool:
    """The batch records processed log-probs under top-p / top-k."""
    s = batch.sampling
    return s is not None and s.truncates and s.logprobs_mode == "processed_logprobs"


def may_estimate(batch: Batch) -> bool:
    """Whether the data may suggest a truncation the settings do not record (none recorded, or processed at top_p 1)."""
    s = batch.sampling
    return s is None or (s.logprobs_mode == "processed_logprobs" and not s.truncates)


@dataclass(frozen=True)
class Floor:
    """One group's rule for 0.0 tokens: ``zero`` (the trainer log-prob a 0.0 token needs), ``explain`` (the lowest
    trainer - rollout a renormalised token may have; -inf for none), ``top_p`` (recorded, or the data's upper
    bound; None when no truncation is recorded or seen), ``estimated`` (True when from the data) and ``sure``
    (the trainer log-prob from which on a 0.0 is healthy without doubt; between ``zero`` and it, ambiguous)."""

    zero: float
    explain: float
    top_p: float | None
    estimated: bool
    sure: float | None = None

    @property
    def certain(self) -> float:
        return self.zero if self.sure is None else self.sure


def topp_signature(gap: Tensor, tol: Tolerances) -> bool:
    """True when the flat gaps (rollout - trainer) of a pool's non-zero tokens show renormalisation: at least
    ``tol.min_tokens_for_pattern`` of them beyond ``tol.same``, and 95% of those with the rollout above."""
    big = gap.abs() > tol.same
    n = int(big.sum())
    return n >= tol.min_tokens_for_pattern and float((gap[big] > 0).double().mean()) >= 0.95


def group_floor(ctx: Context, tokens: Tensor) -> Floor:
    """The 0.0 rule of one pool of tokens ([B, L] bool, usually a group's open tokens); see the module docstring."""
    batch, tol = ctx.batch, ctx.tol
    if recorded_truncation(batch):
        s = batch.sampling
        return Floor(nucleus_floor(batch) - tol.zero_slack,
                     math.log(s.top_p) - tol.zero_slack if s.top_k == 0 else -math.inf, s.top_p, False)
    none = Floor(-tol.zero_slack, 0.0, None, False)
    if not may_estimate(batch):
        return none
    nz = tokens & ~ctx.rollout_zero()
    gap = masked(ctx.full_gap(), nz)
    if not topp_signature(gap, tol):
        return none if batch.sampling is not None else Floor(math.log(tol.min_top_p), 0.0, None, False, -tol.zero_slack)
    delta = -gap
    kept = delta[(delta >= math.log(tol.min_top_p)) & (delta <= tol.same)]
    top_p = min(1.0, math.exp(float(kept.min()))) if kept.numel() else 1.0
    return Floor(math.log(top_p) - tol.nucleus_slack, math.log(tol.min_top_p), top_p, True)


def group_floors(ctx: Context, tokens: Tensor | None = None) -> dict[str | None, Floor]:
    """The floor of each group by name (:func:`group_floor` over ``tokens``, default the open tokens)."""
    tokens = ctx.open() if tokens is None else tokens
    return {name: group_floor(ctx, tokens & rows[:, None]) for name, rows in ctx.groups()}


def zero_floors(ctx: Context, tokens: Tensor | None = None) -> tuple[Tensor, dict[str | None, Floor]]:
    """Per token [B, L] float64, the floor of its group (:func:`group_floor` over ``tokens``, default the open
    tokens), and the floor of each group by name."""
    floors = group_floors(ctx, tokens)
    out = torch.zeros(ctx.batch.size, ctx.batch.width, dtype=torch.float64)
    for name, rows in ctx.groups():
        out[rows] = floors[name].zero
    return out, floors


def zero_placeholders(batch: Batch, tol: Tolerances, valid: Tensor | None = None, ctx: Context | None = None) -> Tensor:
    """[B, L] bool: tokens (of ``valid``, default every open policy token) whose rollout log-prob is exactly 0.0
    although the trainer's log-prob is below where a certain / nucleus-of-one token sits (see the module
    docstring)."""
    ctx = Context(batch, tol) if ctx is None else ctx
    if not ctx.has_pair:
        return torch.zeros(batch.size, batch.width, dtype=torch.bool)
    valid = ctx.open() if valid is None else valid & ctx.checked
    floors = group_floors(ctx, valid)
    zero = valid & ctx.rollout_zero()
    out, groups = torch.zeros_like(zero), ctx.groups()
    for r in row_blocks(ctx.batch.size, ctx.batch.width):
        t = ctx.trainer_rows(r)
        for name, rows in groups:                    # the groups partition the rows: one floor per row
            out[r] |= zero[r] & rows[r, None] & (t < floors[name].zero)
    return out


def zero_ambiguous(ctx: Context, valid: Tensor | None = None) -> Tensor:
    """[B, L] bool: open tokens at exactly 0.0 whose trainer log-prob lies between the group's error floor and a
    certain token's (no settings recorded, too few tokens to tell a nucleus of one from a padding value)."""
    if not ctx.has_pair:
        return torch.zeros(ctx.batch.size, ctx.batch.width, dtype=torch.bool)
    valid = ctx.open() if valid is None else valid & ctx.checked
    out = torch.zeros_like(valid)
    zero = valid & ctx.rollout_zero()
    floors = [(rows, group_floor(ctx, valid & rows[:, None])) for _, rows in ctx.groups()]
    floors = [(rows, f) for rows, f in floors if f.sure is not None]
    if not floors:
        return out
    for r in row_blocks(ctx.batch.size, ctx.batch.width):
        t = ctx.trainer_rows(r)
        for rows, f in floors:
            out[r] |= zero[r] & rows[r, None] & (t >= f.zero) & (t < f.sure)
    return out


def lone_final_eos(batch: Batch, zero: Tensor, eos: int) -> Tensor:
    """[B] bool: rows whose only placeholder (``zero`` [B, L]) is their final token, an EOS: an EOS appended
    by hand (the BOS/EOS check's); a row with more placeholders has a padded rollout series (an offset)."""
    last = torch.tensor(batch.lengths) - 1
    rows = torch.arange(batch.size)
    col = last.clamp(min=0)
    at_last = (last >= 0) & zero[rows, col] & (batch.tokens(pad_id=-1)[rows, col] == eos)
    return at_last & (zero.sum(1) == 1)


def placeholder_text(batch: Batch, floor: Floor | None = None) -> str:
    """Why a 0.0 there cannot be a nucleus of one, for the messages."""
    if floor is not None and floor.sure is not None:
        return (f"no sampling settings recorded, and the other tokens do not show top-p renormalisation (or are too few "
                f"to); a token the trainer gives p < {math.exp(floor.zero):.2g} is alone in no realistic nucleus")
    if floor is not None and floor.estimated:
        return (f"no sampling settings recorded; the other tokens sit above the trainer as under top-p <= "
                f"{floor.top_p:.3g}, and a nucleus of one needs p >= top_p, i.e. a log-prob above {floor.zero:.3g}")
    f = nucleus_floor(batch)
    if f == 0.0:
        return "a sampled token has exactly 0.0 only when it is certain"
    return f"alone in the top_p={batch.sampling.top_p:g} nucleus only above log(top_p) = {f:.3g}"


__all__ = ["nucleus_floor", "recorded_truncation", "may_estimate", "Floor", "topp_signature", "group_floor",
           "group_floors", "zero_floors", "zero_placeholders", "zero_ambiguous", "lone_final_eos", "placeholder_text"]
