"""Worked solutions of the notebooks' exercises, one function per exercise.

They live here, not in the notebooks, so that a rendered notebook (nbconvert HTML, GitHub) shows
the exercise and its checker but not the answer; each notebook checks the matching solution in a
cell of its own (``check_advantage(solutions.advantage_solution)`` shows ✓). They are written the
way a reader would write them: plain torch from the formulas, without calling the kit's own
implementation (:mod:`iwopd_kit.objective`, :mod:`iwopd_kit.engines.scoring`, :mod:`iwopd_kit.alignment`),
so each check compares two independent computations.

Every tensor is ``[B, L]`` in completion coordinates (token j = the j-th generated token of row b,
right-padded; ``mask`` bool ``[B, L]`` = the tokens that count), except ``logits`` ``[B, L, V]``.

| notebook | exercise | solution | checker (:mod:`iwopd_kit.teaching.exercises`) |
|---|---|---|---|
| 01 | log-prob of each sampled token | :func:`sampled_logprobs_solution` | ``check_sampled_logprobs`` |
| 02 | offset detector (the shift d per row) | :func:`best_shift_solution` | ``check_offset_detector`` |
| 03 | advantage | :func:`advantage_solution` | ``check_advantage`` |
| 04 | prefix weights | :func:`prefix_weights_solution` | ``check_prefix_weights`` |
| 05 | the IW-OPD loss | :func:`iw_opd_loss_solution` | ``check_iw_opd_loss`` |
| 06 | realign shifted rows | :func:`realign_solution` | ``check_realign`` |
"""

from __future__ import annotations

import torch
from torch import Tensor


def sampled_logprobs_solution(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / T)[token]`` per position, without a ``[B, L, V]`` log_softmax.

    logits [B, L, V] already shifted (``logits[b, j]`` predicts ``tokens[b, j]``), tokens [B, L]
    int64 -> [B, L]. ``z[y] - logsumexp(z)`` is the same number as ``log_softmax(z)[y]``.
    """
    z = logits / temperature                                         # [B, L, V]
    return z.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(z, dim=-1)


def best_shift_solution(rollout: Tensor, student: Tensor, mask: Tensor, max_shift: int = 4) -> Tensor:
    """Per row, the shift d in [-max_shift, max_shift] minimising mean |rollout[j] - student[j + d]|.

    A row shifted by d has token j carrying the log-prob of token j + d. The pairs at shift d: every
    j with ``mask[b, j]`` and ``mask[b, j + d]`` (both indices inside the row); a shift with no pair
    is skipped. Ties go to the smaller |d|, then to the negative d (a healthy row, where every shift
    but 0 is worse, is never moved). A row with no valid token gets 0. Returns int64 [B].
    """
    B, L = rollout.shape
    best = torch.zeros(B, dtype=torch.long)                           # [B]
    for b in range(B):
        scores = []
        for d in range(-max_shift, max_shift + 1):
            pairs = [(j, j + d) for j in range(L) if 0 <= j + d < L and mask[b, j] and mask[b, j + d]]
            if pairs:
                err = sum(abs(float(rollout[b, i] - student[b, j])) for i, j in pairs) / len(pairs)
                scores.append((err, abs(d), d))
        if scores:
            best[b] = min(scores)[2]
    return best


def advantage_solution(teacher: Tensor, rollout: Tensor, mask: Tensor) -> Tensor:
    """``A = sg(teacher - rollout)`` where ``mask`` is True and exactly 0 elsewhere ([B, L]).

    ``torch.where`` rather than ``* mask``: the teacher's ``-inf`` at padding times 0 is NaN.
    """
    diff = teacher.detach() - rollout.detach()                        # sg(.): a fixed reward
    return torch.where(mask, diff, torch.zeros_like(diff))


def prefix_weights_solution(advantages: Tensor, mask: Tensor, gamma: float = 0.5, eps: float = 1e-8) -> Tensor:
    """``w_j = 1 + gamma * (1 - S_<j / max(S, eps))`` with the exclusive prefix sum of |A| over valid tokens.

    advantages, mask [B, L] -> w [B, L] (detached). ``S_<j`` shifts the running sum one place, so
    ``w_0 = 1 + gamma`` and w never rises along a row.
    """
    a = torch.where(mask, advantages.detach().abs(), torch.zeros_like(advantages))   # |A| on valid tokens
    running = torch.cumsum(a, dim=-1)                                               # S_<=j
    before = torch.cat([torch.zeros_like(running[..., :1]), running[..., :-1]], dim=-1)  # S_<j (exclusive)
    total = running[..., -1:]                                                       # S
    return 1.0 + gamma * (1.0 - before / total.clamp_min(eps))


def iw_opd_loss_solution(student: Tensor, teacher: Tensor, mask: Tensor, rollout: Tensor, gamma: float,
                         eps: float = 1e-8) -> Tensor:
    """The token-mean IW-OPD loss ``-(1/N) sum m * w * A * log pi_theta`` (a scalar).

    A from the rollout (not the current student), w the prefix weights, both detached; the gradient
    flows through ``student`` only, ``-w * A / N`` per valid token; N = number of valid tokens.
    """
    zero = torch.zeros_like(student)
    A = torch.where(mask, teacher.detach() - rollout.detach(), zero)               # advantage vs the rollout
    w = prefix_weights_solution(A, mask, gamma, eps)                                # detached weights
    logp = torch.where(mask, student, zero)                                         # the only path for the gradient
    return -(w * A * logp).sum() / mask.sum()


def realign_solution(rollout: Tensor, mask: Tensor, shifts: Tensor) -> tuple[Tensor, Tensor]:
    """Undo a per-row shift: row b's token j carries the log-prob of token j + d_b.

    rollout [B, L] as stored (NaN at padding), mask [B, L] bool, shifts [B] int64 -> (values [B, L],
    new_mask [B, L]) in the token frame: ``values[b, j] = rollout[b, j - d_b]`` where that slot
    exists, NaN where it does not; ``new_mask`` drops the tokens left without a finite value (for
    d_b > 0 the first d_b tokens, whose values were never stored).
    """
    B, L = rollout.shape
    values = torch.full_like(rollout, float("nan"))                                 # [B, L]
    for b in range(B):
        d = int(shifts[b])
        for j in range(L):
            if 0 <= j - d < L:
                values[b, j] = rollout[b, j - d]
    return values, mask & ~values.isnan()


__all__ = [
    "advantage_solution", "best_shift_solution", "iw_opd_loss_solution", "prefix_weights_solution",
    "realign_solution", "sampled_logprobs_solution",
]
