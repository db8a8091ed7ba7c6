"""Exact 0.0 rollout log-probs: a certain token, a nucleus of one, or a padding value on a real token?

vLLM returns exactly 0.0 for a sampled token whose probability is 1 in the engine's arithmetic, and,
with ``processed_logprobs`` under top-p / top-k, for a token that is alone in the kept set: with
top_p < 1 a token whose probability p >= top_p is the whole nucleus (S = p, log(p / S) = 0), and with
top_k = 1 every token is. Both are healthy. TRL also pads its rollout log-prob rows with 0.0 (and
zero-filled tensors do the same), so a 0.0 on a valid token whose trainer log-prob is far below
where a nucleus of one can sit is a padding value that reached a real token.

The rule (:func:`zero_placeholders`): a valid token with rollout exactly 0.0 is a placeholder when the
trainer's (student's) log-prob of it is below ``floor - tol.zero_slack``, with ``floor`` = log(top_p)
for processed log-probs under top-p, -inf under top_k = 1, and 0 otherwise. ``zero_slack`` allows
for the rollout engine's rounding of a near-certain token (bf16: a few 1e-3; see docs/calibration.md).
Tokens without a student value are never called placeholders here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..batch import Batch
from .core import Tolerances
from .tensors import stored_series


def nucleus_floor(batch: Batch) -> float:
    """The lowest trainer log-prob a token can have and still be alone in the rollout's kept set."""
    s = batch.sampling
    if s is None or s.logprobs_mode != "processed_logprobs":
        return 0.0
    if s.top_k == 1:
        return -math.inf
    return math.log(s.top_p) if s.top_p < 1.0 else 0.0


def zero_placeholders(batch: Batch, tol: Tolerances, valid: Tensor | None = None) -> Tensor:
    """[B, L] bool: valid tokens whose rollout log-prob is exactly 0.0 although the trainer's log-prob is
    below where a certain / nucleus-of-one token sits (see the module docstring)."""
    valid = batch.valid() if valid is None else valid
    if not (batch.has("rollout_logprobs") and batch.has("student_logprobs")):
        return torch.zeros_like(valid)
    zero = valid & (stored_series(batch, "rollout_logprobs") == 0.0)
    s = stored_series(batch, "student_logprobs").to(torch.float64)     # the bound is compared in float64
    return zero.logical_and_(s < nucleus_floor(batch) - tol.zero_slack)   # NaN < x is False


def lone_final_eos(batch: Batch, zero: Tensor, eos: int) -> Tensor:
    """[B] bool: rows whose only placeholder (``zero`` [B, L]) is their final token, an EOS: an EOS appended
    by hand (the BOS/EOS check's); a row with more placeholders has a padded rollout series (an offset)."""
    last = torch.tensor(batch.lengths) - 1
    rows = torch.arange(batch.size)
    col = last.clamp(min=0)
    at_last = (last >= 0) & zero[rows, col] & (batch.tokens(pad_id=-1)[rows, col] == eos)
    return at_last & (zero.sum(1) == 1)


def placeholder_text(batch: Batch) -> str:
    """Why a 0.0 there cannot be a nucleus of one, for the messages."""
    floor = nucleus_floor(batch)
    if floor == 0.0:
        return "a sampled token has exactly 0.0 only when it is certain"
    return f"alone in the top_p={batch.sampling.top_p:g} nucleus only above log(top_p) = {floor:.3g}"


__all__ = ["nucleus_floor", "zero_placeholders", "lone_final_eos", "placeholder_text"]
