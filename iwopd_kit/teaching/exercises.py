"""Checkers for the notebooks' exercises: run the reader's function against the kit's reference.

Every checker is importable from here (the notebooks do): the objective's checkers
:func:`check_advantage` (notebook 03), :func:`check_prefix_weights` (04) and :func:`check_iw_opd_loss`
(05) are defined in this module; the pairing checkers :func:`check_sampled_logprobs` (01),
:func:`check_offset_detector` (02) and :func:`check_realign` (06) in :mod:`iwopd_kit.teaching.pairing`
and re-exported here; both are built on the harness :mod:`iwopd_kit.teaching.harness` (the cases,
the comparisons and the messages). Worked solutions, under other names, are in
:mod:`iwopd_kit.teaching.solutions`.

Each checker calls the reader's function and the reference on the same random ragged batches
(``N_CASES`` cases; case i uses ``torch.Generator().manual_seed(BASE_SEED + i)``; B in 1..5 rows,
L in 1..12 positions, rows of different lengths right-padded, random masks with holes and some
fully-masked rows) and returns an :class:`ExerciseResult`. On failure its message explains the
FIRST mismatch: the case and its seed, the row b and position j, expected vs got (rounded), the
row's inputs and a hint when the answer matches a common mistake; or the shapes when they differ;
or the exception the function raised.

Frame: every per-token tensor is ``[B, L]`` in completion coordinates (token j = the j-th generated
token of row b; right-padded; ``mask`` bool ``[B, L]`` marks the tokens that count; positions
``j >= L_b`` are padding). Log-probs come as float32, like a model's; the reference is computed
in float64 from the same values and compared with tolerance ``TOL`` (absolute and relative).

Padding values are chosen to catch real bugs: the teacher holds ``-inf`` at padding (a teacher
server's sentinel) and, for the offset detector, both series hold NaN there.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..objective import advantage, iw_opd_loss, prefix_weights
from .harness import (
    BASE_SEED, MAX_SHIFT, N_CASES, TOL, Case, CheckFailed, ExerciseResult, aligned, as_tensor, call_reader, cases,
    check_shape, close, first_mismatch, fmt, hint_for, mismatch_message, random_logprobs, run_checker,
)
from .pairing import check_offset_detector, check_realign, check_sampled_logprobs, reference_offset_detector


# ------------------------------------------------------------------------------------------ advantage
def check_advantage(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> ExerciseResult:
    """Check ``fn(teacher, rollout, mask) -> A`` against :func:`iwopd_kit.objective.advantage`.

    Inputs: teacher, rollout float32 [B, L] log-probs (teacher ``-inf`` at padding), mask bool [B, L].
    Expected: ``A = teacher - rollout`` on valid tokens and exactly 0 everywhere else; compared at
    every position.
    """
    name = "check_advantage"

    def body() -> str:
        total = 0
        for case, g in cases():
            B, L = case.shape
            teacher = random_logprobs(g, (B, L)).masked_fill(~case.padding, -math.inf)
            rollout = random_logprobs(g, (B, L)).masked_fill(~case.padding, 0.0)
            args = {"teacher": teacher, "rollout": rollout, "mask": case.mask}
            got = as_tensor(call_reader(name, fn, args, case), name, case, "", "[B, L]")
            check_shape(got, (B, L), name, case, "", "[B, L] = teacher.shape")
            exp = advantage(teacher.double(), rollout.double(), case.mask)
            everywhere = torch.ones(B, L, dtype=torch.bool)
            bad = first_mismatch(exp, got, everywhere)
            if bad is not None:
                t, r, m = teacher.double(), rollout.double(), case.mask
                hint = hint_for(got, everywhere, [
                    ("A is rollout - teacher here; the advantage is teacher - rollout.", lambda: torch.where(m, r - t, 0.0)),
                    ("-inf * 0 is NaN: multiplying by the mask does not clear the teacher's -inf at padding; "
                     "use torch.where(mask, teacher - rollout, 0).", lambda: (t - r) * m),
                    ("the mask is not applied: A must be 0 on masked-out tokens and padding.", lambda: t - r),
                ])
                raise CheckFailed(mismatch_message(name, case, "", *bad, exp, got,
                                                   {"teacher": teacher, "rollout": rollout, "mask": case.mask}) + hint)
            total += B * L
        return f"✓ {name}: {N_CASES} cases, {total} positions compared (valid, masked and padding), all within {TOL:g}."

    return run_checker(body)


# ------------------------------------------------------------------------------------- prefix weights
_GAMMAS = (0.5, 1.0, 0.25, 2.0, 0.0)


def _random_advantages(g: torch.Generator, case: Case) -> Tensor:
    """A float32 [B, L]: N(0, 1) on valid tokens with some exact zeros and some all-zero rows.

    Odd cases also leave non-zero values on masked-out positions (they must not count in S).
    """
    B, L = case.shape
    a = torch.randn(B, L, generator=g)
    a = a.masked_fill(torch.rand(B, L, generator=g) < 0.1, 0.0)
    a[torch.rand(B, generator=g) < 0.15] = 0.0
    if case.index % 2 == 0:
        a = a.masked_fill(~case.mask, 0.0)
    return a


def _weights_variant(a: Tensor, m: Tensor, gamma: float, eps: float, *, inclusive: bool = False,
                     use_mask: bool = True, signed: bool = False, guard: bool = True, rising: bool = False) -> Tensor:
    x = a if signed else a.abs()
    x = torch.where(m, x, 0.0) if use_mask else x
    before = torch.cumsum(x, -1) - (0 if inclusive else x)
    total = x.sum(-1, keepdim=True)
    share = before / (total.clamp_min(eps) if guard else total)
    return 1 + gamma * share if rising else 1 + gamma * (1 - share)


def check_prefix_weights(fn: Callable[[Tensor, Tensor, float, float], Tensor]) -> ExerciseResult:
    """Check ``fn(advantages, mask, gamma, eps) -> w`` against :func:`iwopd_kit.objective.prefix_weights`.

    Inputs: advantages float32 [B, L], mask bool [B, L], gamma in {0, 0.25, 0.5, 1, 2}, eps 1e-8.
    Expected: ``w_j = 1 + gamma * (1 - S_<j / max(S, eps))`` with the exclusive prefix sum
    ``S_<j = sum_{k<j} |A_k|`` over valid tokens; compared on valid positions only.
    """
    name = "check_prefix_weights"

    def body() -> str:
        total = 0
        for case, g in cases():
            B, L = case.shape
            gamma, eps = _GAMMAS[case.index % len(_GAMMAS)], 1e-8
            extra = f"gamma={gamma:g}, eps={eps:g}"
            a = _random_advantages(g, case)
            args = {"advantages": a, "mask": case.mask, "gamma": gamma, "eps": eps}
            got = as_tensor(call_reader(name, fn, args, case, extra), name, case, extra, "[B, L]")
            check_shape(got, (B, L), name, case, extra, "[B, L] = advantages.shape")
            exp = prefix_weights(a.double(), case.mask, gamma=gamma, eps=eps)
            bad = first_mismatch(exp, got, case.mask)
            if bad is not None:
                a64, m = a.double(), case.mask
                hint = hint_for(got, m, [
                    ("this is the inclusive prefix sum (k <= j); S_<j sums the tokens strictly before j, "
                     "so w_0 = 1 + gamma.", lambda: _weights_variant(a64, m, gamma, eps, inclusive=True)),
                    ("masked-out tokens count in S here; sum |A| over valid tokens only.",
                     lambda: _weights_variant(a64, m, gamma, eps, use_mask=False)),
                    ("this uses the signed A; the weights use |A|.",
                     lambda: _weights_variant(a64, m, gamma, eps, signed=True)),
                    ("the weights rise along the row; w = 1 + gamma * (1 - share) falls from 1 + gamma.",
                     lambda: _weights_variant(a64, m, gamma, eps, rising=True)),
                ])
                if not hint and bool(torch.isnan(got.detach()[bad[0], bad[1]])):
                    hint = "\n  hint: NaN on a row whose |A| sums to 0: divide by max(S, eps), not S."
                raise CheckFailed(mismatch_message(name, case, extra, *bad, exp, got,
                                                   {"advantages": a, "mask": case.mask},
                                                   note="(compared on valid positions only)") + hint)
            total += int(case.mask.sum())
        return f"✓ {name}: {N_CASES} cases, {total} valid tokens compared, all within {TOL:g}."

    return run_checker(body)


# ------------------------------------------------------------------------------------------- loss
def _loss_of(out: Any) -> Any:
    """The loss tensor of a function's return value (a tensor, or an object with ``.loss``)."""
    return out.loss if hasattr(out, "loss") and not isinstance(out, Tensor) else out


def check_iw_opd_loss(fn: Callable[[Tensor, Tensor, Tensor, Tensor, float], Any]) -> ExerciseResult:
    """Check ``fn(student, teacher, mask, rollout, gamma) -> loss`` against :func:`iwopd_kit.objective.iw_opd_loss`.

    Inputs: student float32 [B, L] (a leaf with ``requires_grad``), teacher float32 [B, L]
    (``-inf`` at padding), mask bool [B, L] (at least one valid token), rollout float32 [B, L],
    gamma in {0, 0.25, 0.5, 1, 2}, eps the default 1e-8.
    Expected: the scalar token-mean loss ``-(1/N) sum m * w * A * student`` (N = valid tokens), and
    its gradient w.r.t. ``student`` (``-m * w * A / N``, 0 off-mask) at every position.
    The function may return the loss tensor or an object with a ``.loss`` attribute.
    """
    name = "check_iw_opd_loss"

    def body() -> str:
        values = grads = 0
        for case, g in cases(ensure_valid=True):
            B, L = case.shape
            gamma = _GAMMAS[case.index % len(_GAMMAS)]
            extra = f"gamma={gamma:g}"
            student = random_logprobs(g, (B, L)).masked_fill(~case.padding, 0.0)
            teacher = random_logprobs(g, (B, L)).masked_fill(~case.padding, -math.inf)
            rollout = random_logprobs(g, (B, L)).masked_fill(~case.padding, 0.0)
            s_leaf = student.clone().requires_grad_(True)
            args = {"student": s_leaf, "teacher": teacher, "mask": case.mask, "rollout": rollout, "gamma": gamma}
            out = _loss_of(call_reader(name, fn, args, case, extra))
            got = as_tensor(out, name, case, extra, "scalar loss")
            if got.numel() != 1:
                raise CheckFailed(f"{case.header(name, extra)}\n  shape mismatch: expected a scalar loss "
                                  f"(shape [] or [1]), got shape {list(got.shape)}; reduce with the token mean over valid tokens")
            ref_leaf = student.double().requires_grad_(True)
            ref = iw_opd_loss(ref_leaf, teacher.double(), case.mask, rollout.double(), gamma=gamma)
            ref.loss.backward()
            exp_grad = ref_leaf.grad
            got_grad = _reader_grad(got, s_leaf, name, case, extra)
            msg = _loss_mismatch(name, case, extra, ref.loss.detach(), got.detach().reshape(()),
                                 exp_grad, got_grad, student, teacher, rollout, gamma)
            if msg:
                raise CheckFailed(msg)
            values += 1
            grads += B * L
        return (f"✓ {name}: {N_CASES} cases, {values} loss values and {grads} gradient entries "
                f"d loss / d student[b, j] compared, all within {TOL:g}.")

    return run_checker(body)


def _reader_grad(loss: Tensor, leaf: Tensor, name: str, case: Case, extra: str) -> Tensor:
    """d loss / d student of the reader's loss (zeros where the student does not enter)."""
    if not loss.requires_grad:
        raise CheckFailed(f"{case.header(name, extra)}\n  the loss does not depend on the student log-probs "
                          "(no gradient); the gradient must flow through log pi_theta = student (and only through it)")
    try:
        (grad,) = torch.autograd.grad(loss.reshape(()), leaf, allow_unused=True)
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"{case.header(name, extra)}\n  backward through your loss failed: "
                          f"{type(e).__name__}: {e}") from None
    return torch.zeros_like(leaf) if grad is None else grad


def _loss_mismatch(name: str, case: Case, extra: str, exp: Tensor, got: Tensor, exp_grad: Tensor,
                   got_grad: Tensor, student: Tensor, teacher: Tensor, rollout: Tensor, gamma: float) -> str:
    """The message for the first difference in value or gradient ('' when both match)."""
    value_ok = bool(close(exp, got))
    everywhere = torch.ones_like(case.mask)
    bad = first_mismatch(exp_grad, got_grad, everywhere)
    if value_ok and bad is None:
        return ""
    m = case.mask
    n = int(m.sum())
    s64, t64, r64 = student.double(), teacher.double(), rollout.double()
    lines = [case.header(name, extra)]
    if not value_ok:
        lines.append(f"  loss value: expected {fmt(float(exp))}, got {fmt(float(got))} "
                     f"(N = {n} valid tokens)")
        hint = hint_for(got.reshape(1, 1), torch.ones(1, 1, dtype=torch.bool), [
            ("this is the sum over tokens; the loss is the token mean (divide by N valid tokens).",
             lambda: (exp * n).reshape(1, 1)),
            ("this is plain OPD (every weight 1): the prefix weights are missing.",
             lambda: iw_opd_loss(s64, t64, m, r64, gamma=0.0).loss.reshape(1, 1)),
            ("the advantage uses the current student; use the rollout log-probs (teacher - rollout).",
             lambda: iw_opd_loss(s64, t64, m, None, gamma=gamma).loss.reshape(1, 1)),
            ("this divides by B * L; divide by the number of valid tokens N.",
             lambda: (exp * n / m.numel()).reshape(1, 1)),
            ("this is the mean over rows of per-row token means; the exercise asks for the token mean.",
             lambda: iw_opd_loss(s64, t64, m, r64, gamma=gamma, reduction="sequence_mean").loss.reshape(1, 1)),
            ("the sign is flipped: loss = -(1/N) sum m * w * A * log pi.", lambda: (-exp).reshape(1, 1)),
        ])
        lines[-1] += hint
    else:
        lines.append(f"  loss value matches ({fmt(float(exp))}) but the gradient does not")
    if bad is not None:
        b, j = bad
        e, gv = float(exp_grad[b, j]), float(got_grad[b, j])
        lines.append(f"  first gradient mismatch at row {b}, position {j} ({case.where(b, j)}): "
                     f"d loss / d student[{b}, {j}] expected {fmt(e)}, got {fmt(gv)}")
        lines += aligned([(f"row {b} {k}", v[b]) for k, v in
                          (("student", student), ("teacher", teacher), ("rollout", rollout), ("mask", m))]
                         + [(f"row {b} gradient expected", exp_grad[b]), (f"row {b} gradient got", got_grad[b])])
        if bool(torch.isnan(got_grad[b, j])):
            lines.append("  hint: NaN in the gradient: the teacher's -inf at padding leaks; "
                         "select with torch.where(mask, ..., 0) before multiplying.")
    return "\n".join(lines)


__all__ = [
    "BASE_SEED", "MAX_SHIFT", "N_CASES", "TOL", "ExerciseResult", "check_advantage", "check_iw_opd_loss",
    "check_offset_detector", "check_prefix_weights", "check_realign", "check_sampled_logprobs",
    "reference_offset_detector",
]
