"""Checkers for the pairing exercises: which log-prob belongs to which token.

* :func:`check_sampled_logprobs` (notebook 01): the log-prob of each sampled token from logits;
* :func:`check_offset_detector` (notebook 02): per row, the shift d (token j carries the log-prob of token j + d);
* :func:`check_realign` (notebook 06): move a shifted row's values back onto their tokens.

Built on the harness :mod:`iwopd_kit.teaching.harness` (same cases, tolerance and messages as the
objective's checkers in :mod:`iwopd_kit.teaching.exercises`, which re-exports these checkers: the
notebooks import every checker from there). :func:`offset_case` (the offset detector's cases) is
public so that the tests can hold each case to the shifts it claims.

Frame: every per-token tensor is ``[B, L]`` in completion coordinates (token j = the j-th generated
token of row b; right-padded; ``mask`` bool ``[B, L]``); ``logits`` are ``[B, L, V]``, already
shifted (``logits[b, j]`` predicts ``tokens[b, j]``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..alignment import lag_scan
from ..engines.scoring import sampled_logprobs
from .harness import (
    MAX_SHIFT, N_CASES, TOL, Case, CheckFailed, ExerciseResult, aligned, as_tensor, call_reader, cases, check_shape,
    first_mismatch, fmt, fmt_row, hint_for, make_case, matches, mismatch_message, randint, random_logprobs,
    run_checker,
)

# --------------------------------------------------------------------------------- sampled log-probs
_TEMPERATURES = (0.7, 1.0, 2.0, 0.5, 1.3)
_OFF_BY_ONE = ("a next-token off-by-one: these logits are already shifted, logits[b, j] predicts "
               "tokens[b, j]; gather token j from position j, do not shift again")


def _shifted_pick(logp: Tensor, tokens: Tensor, got: Tensor, step: int) -> Tensor:
    """The answer of a reader who shifted once more: token j scored with the log-probs of position j - step.

    ``step = +1``: logp[b, j - 1][tokens[b, j]] for j >= 1; ``step = -1``: logp[b, j][tokens[b, j + 1]]
    at position j for j < L - 1. The position the shift leaves undefined takes ``got``'s value, so only
    the shifted positions decide; rows of one position give no evidence (raises, so no hint).
    """
    L = tokens.shape[1]
    if L < 2:
        raise ValueError("no shifted positions")
    out = got.detach().double().clone()
    if step > 0:
        out[:, 1:] = logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    else:
        out[:, :-1] = logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return out


def check_sampled_logprobs(fn: Callable[[Tensor, Tensor, float], Tensor]) -> ExerciseResult:
    """Check ``fn(logits, tokens, temperature) -> log-probs`` against :func:`iwopd_kit.engines.scoring.sampled_logprobs`.

    Inputs: logits float32 [B, L, V] (V in 2..12; ``logits[b, j]`` already predicts ``tokens[b, j]``,
    i.e. shifted), tokens int64 [B, L] (pad id 0 at padding), temperature in {0.5, 0.7, 1, 1.3, 2}.
    Expected: ``log_softmax(logits / T)[token]`` at every position (padding too: id 0 is a token).
    """
    name = "check_sampled_logprobs"

    def body() -> str:
        total = 0
        for case, g in cases():
            B, L = case.shape
            V = randint(g, 2, 12)
            T = _TEMPERATURES[case.index % len(_TEMPERATURES)]
            extra = f"V={V}, temperature={T:g}"
            logits = torch.randn(B, L, V, generator=g) * 3.0
            tokens = torch.randint(0, V, (B, L), generator=g).masked_fill(~case.padding, 0)
            args = {"logits": logits, "tokens": tokens, "temperature": T}
            got = as_tensor(call_reader(name, fn, args, case, extra), name, case, extra, "[B, L]")
            check_shape(got, (B, L), name, case, extra, "[B, L] = tokens.shape",
                        hints=[((B, L - 1), _OFF_BY_ONE + " (pairing logits[:, :-1] with tokens[:, 1:] "
                                "shifts a second time and loses a position)")])
            z = logits.double()
            exp = sampled_logprobs(z, tokens, temperature=T)
            everywhere = torch.ones(B, L, dtype=torch.bool)
            bad = first_mismatch(exp, got, everywhere)
            if bad is not None:
                pick = lambda lp: lp.gather(-1, tokens[..., None]).squeeze(-1)  # noqa: E731
                hint = hint_for(got, everywhere, [
                    ("the temperature is missing: divide the logits by T before log_softmax.",
                     lambda: pick(torch.log_softmax(z, -1))),
                    ("the logits are multiplied by T; divide them by T.", lambda: pick(torch.log_softmax(z * T, -1))),
                    ("the temperature is applied after log_softmax; divide the logits by T first.",
                     lambda: pick(torch.log_softmax(z, -1)) / T),
                    ("these are raw logits: subtract logsumexp over the vocabulary (log_softmax).",
                     lambda: pick(z / T)),
                    ("log_softmax over the wrong dimension: normalise over the vocabulary (dim=-1).",
                     lambda: pick(torch.log_softmax(z / T, 1))),
                    (_OFF_BY_ONE + " (token j here gets the logits of position j - 1)",
                     lambda: _shifted_pick(torch.log_softmax(z / T, -1), tokens, got, +1)),
                    (_OFF_BY_ONE + " (the logits of position j here score token j + 1)",
                     lambda: _shifted_pick(torch.log_softmax(z / T, -1), tokens, got, -1)),
                ])
                b, j = bad
                note = (f"token id at (row {b}, position {j}) = {int(tokens[b, j])}; "
                        f"logits[{b}, {j}] = {fmt_row(logits[b, j])}")
                raise CheckFailed(mismatch_message(name, case, extra, b, j, exp, got,
                                                   {"tokens": tokens.double()}, note=note) + hint)
            total += B * L
        return f"✓ {name}: {N_CASES} cases, {total} positions compared, all within {TOL:g}."

    return run_checker(body)


# ---------------------------------------------------------------------------------- offset detector
def reference_offset_detector(rollout: Tensor, student: Tensor, mask: Tensor, max_shift: int = MAX_SHIFT) -> Tensor:
    """Per row, the shift d in [-max_shift, max_shift] minimising mean |rollout[j] - student[j + d]|.

    A row shifted by d has token j carrying the log-prob of token j + d (the findings' convention).
    Inputs [B, L] (NaN allowed off-mask), mask bool [B, L]. Returns LongTensor [B]; a row with no
    valid token gets 0.
    """
    shifts, err = _scan(rollout, student, mask, max_shift)
    best = shifts[torch.nan_to_num(err, nan=math.inf).argmin(dim=1)]
    return torch.where(mask.bool().any(dim=1), best, torch.zeros_like(best))


def _scan(rollout: Tensor, student: Tensor, mask: Tensor, max_shift: int) -> tuple[Tensor, Tensor]:
    """``(shifts d [2K+1], err [B, 2K+1])``: mean |rollout[j] - student[j + d]| per row, in float64, with
    |d| <= L - 1 (no overlap beyond). The kit's lag scan pairs rollout[j + k] with student[j], i.e. k = -d."""
    lags, err = lag_scan(rollout.double(), student.double(), mask.bool(), max(0, min(max_shift, rollout.shape[1] - 1)))
    return -lags, err


def offset_case(index: int) -> tuple[Case, Tensor, Tensor, Tensor]:
    """A case with rows shifted by known shifts: returns (case, rollout, student, shifts [B]).

    Row b shifted by d satisfies rollout[b, j] ≈ student[b, j + d] (token j carries the log-prob of
    token j + d; rounding noise 1e-4); rows too short for their shift (L_b < |d| + 3) and fully-masked
    rows have d = 0; fully-masked rows hold unrelated values. Both series are NaN at padding.
    """
    case, g = make_case(index, holes=False)
    B, L = case.shape
    base = random_logprobs(g, (B, L + 2 * MAX_SHIFT))
    noise = torch.randn(B, L, generator=g) * 1e-4
    shifts = -torch.randint(-3, 4, (B,), generator=g)
    lengths = torch.tensor(case.lengths)
    valid_row = case.mask.any(dim=1)
    shifts = torch.where((lengths >= shifts.abs() + 3) & valid_row, shifts, torch.zeros_like(shifts))
    student = base[:, MAX_SHIFT:MAX_SHIFT + L]
    idx = (torch.arange(L)[None, :] + shifts[:, None]) + MAX_SHIFT    # rollout[j] = student[j + d]
    rollout = base.gather(1, idx) + noise
    unrelated = random_logprobs(g, (B, L))
    rollout = torch.where(valid_row[:, None], rollout, unrelated)
    nan = torch.tensor(float("nan"))
    return case, rollout.masked_fill(~case.padding, nan), student.masked_fill(~case.padding, nan), shifts


def check_offset_detector(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> ExerciseResult:
    """Check ``fn(rollout, student, mask) -> shifts`` on rows shifted by known shifts.

    Inputs: rollout, student float32 [B, L] log-probs of the same tokens (NaN at padding; they differ
    by rounding noise ~1e-4 where aligned), mask bool [B, L] (padding and fully-masked rows).
    Expected: LongTensor [B], per row the shift d in [-4, 4] with ``rollout[j] ≈ student[j + d]``
    (the row's token j carries the log-prob of token j + d: the convention of the check's findings);
    0 for a healthy row and for a row with no valid token.
    """
    name = "check_offset_detector"

    def body() -> str:
        rows = shifted = 0
        for i in range(N_CASES):
            case, rollout, student, shifts = offset_case(i)
            B, L = case.shape
            args = {"rollout": rollout, "student": student, "mask": case.mask}
            got = as_tensor(call_reader(name, fn, args, case), name, case, "", "LongTensor [B]")
            check_shape(got, (B,), name, case, "", "one shift per row, [B]")
            if got.is_floating_point() and not bool((got == got.round()).all()):
                raise CheckFailed(f"{case.header(name)}\n  shifts must be integers, got {fmt_row(got)}")
            wrong = (got.long() != shifts).nonzero().flatten()
            if len(wrong):
                raise CheckFailed(_offset_message(name, case, int(wrong[0]), shifts, got.long(), rollout, student))
            rows += B
            shifted += int((shifts != 0).sum())
        return (f"✓ {name}: {N_CASES} cases, {rows} rows compared ({shifted} of them shifted), "
                "every shift found.")

    return run_checker(body)


def _j(d: int) -> str:
    """``j``, ``j + 2`` or ``j - 2``."""
    return "j" if d == 0 else f"j {'+' if d > 0 else '-'} {abs(d)}"


def _offset_message(name: str, case: Case, b: int, shifts: Tensor, got: Tensor, rollout: Tensor, student: Tensor) -> str:
    d, gd = int(shifts[b]), int(got[b])
    tried, err = _scan(rollout, student, case.mask, MAX_SHIFT)
    errs = {int(x): float(e) for x, e in zip(tried.tolist(), err[b].tolist())}

    def gap(x: int) -> str:
        return fmt(errs[x]) if x in errs and not math.isnan(errs[x]) else "no overlap"

    if not bool(case.mask[b].any()):
        built = "row b has no valid token (fully masked), so its shift is 0"
    elif d == 0:
        built = "row b is healthy: rollout[j] ≈ student[j]"
    else:
        built = f"row b was built shifted by d = {d:+d}: rollout[j] ≈ student[{_j(d)}] (token j carries the log-prob of token {_j(d)})"
    lines = [case.header(name),
             f"  first mismatch at row {b} (position {b} of the output [B]): expected shift {d:+d}, got {gd:+d}",
             "  " + built.replace("row b", f"row {b}"),
             f"  mean |rollout[j] - student[j + d]| over valid j: {gap(d)} at d = {d:+d}, {gap(gd)} at d = {gd:+d}",
             *aligned([(f"row {b} rollout", rollout[b]), (f"row {b} student", student[b]),
                       (f"row {b} mask", case.mask[b])])]
    pairs = [(int(x), int(y)) for x, y in zip(shifts.tolist(), got.tolist())]
    if all(y == -x for x, y in pairs) and any(x != 0 for x, _ in pairs):
        lines.append("  hint: the sign is flipped: d is the shift with rollout[j] ≈ student[j + d] "
                     "(token j carries the log-prob of token j + d).")
    elif all(y == x + MAX_SHIFT for x, y in pairs):
        lines.append(f"  hint: these look like indices into the shifts tried; subtract {MAX_SHIFT} "
                     f"(shifts run -{MAX_SHIFT}..{MAX_SHIFT}).")
    elif all(abs(y - x) == 1 for x, y in pairs):
        lines.append("  hint: off by one everywhere: check how the shifted series are paired (rollout[j] against student[j + d]).")
    elif not bool(case.mask[b].any()):
        lines.append("  hint: a row without valid tokens gives no evidence; report shift 0 for it.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ realign
_WRONG_WAY = ("the shift goes the wrong way: token j's value sits at slot j - d (token j carries the "
              "log-prob of token j + d, so slot i holds token i + d's value).")


def _realign_reference(rollout: Tensor, mask: Tensor, shifts: Tensor) -> tuple[Tensor, Tensor]:
    """Row b shifted by d_b (token j carries the value of token j + d_b): move each value back.

    Returns (values [B, L], mask [B, L]): ``values[b, j] = rollout[b, j - d_b]`` where
    ``0 <= j - d_b < L``, NaN elsewhere; the new mask keeps a token when it was in the mask and got a
    finite value (``rollout`` holds NaN at padding, so slots read from padding are dropped too).
    """
    B, L = rollout.shape
    src = torch.arange(L)[None, :] - shifts[:, None]                     # [B, L]: slot holding token j's value
    inside = (src >= 0) & (src < L)
    values = rollout.gather(1, src.clamp(0, L - 1)).masked_fill(~inside, float("nan"))
    return values, mask & ~values.isnan()


def _realign_case(index: int) -> tuple[Case, Tensor, Tensor]:
    """A case with one shift per row: (case, stored rollout [B, L] NaN at padding, shifts [B] in -3..3)."""
    case, g = make_case(index)
    B, L = case.shape
    rollout = (-(torch.rand(B, L, generator=g) * 4.0 + 0.05)).masked_fill(~case.padding, float("nan"))
    shifts = torch.randint(-3, 4, (B,), generator=g)
    if index % 3 == 0:
        shifts = shifts.abs()        # the layout bug's sign (d = own prompt - shortest prompt >= 0)
    longest = torch.tensor(case.lengths) - 1                              # |d_b| < L_b: a value survives
    shifts = shifts.sign() * torch.minimum(shifts.abs(), longest)
    return case, rollout, shifts


def check_realign(fn: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]) -> ExerciseResult:
    """Check ``fn(rollout, mask, shifts) -> (values, new_mask)``: undo a per-row shift.

    Inputs: rollout float32 [B, L] as stored by a broken pipeline, NaN at padding (row b has L_b
    tokens); mask bool [B, L] (holes, fully-masked rows); shifts int64 [B], d_b in -3..3: row b is
    shifted by d_b, i.e. token j carries the log-prob of token j + d_b (stored slot i holds token
    i + d_b's value). Expected, in the token frame: ``values[b, j] = rollout[b, j - d_b]`` and
    ``new_mask[b, j] = mask[b, j]`` and token j got a value (``0 <= j - d_b < L_b``). For d_b > 0
    the first d_b tokens lose their value (it was never stored: it lay before the slice) and the
    last d_b stored slots, which read padding, are no token's value any more. Compared: new_mask at
    every position, values where the expected new mask is True.
    """
    name = "check_realign"

    def body() -> str:
        values_n = dropped = 0
        for i in range(N_CASES):
            case, rollout, shifts = _realign_case(i)
            B, L = case.shape
            extra = f"shifts {shifts.tolist()}"
            args = {"rollout": rollout, "mask": case.mask, "shifts": shifts}
            out = call_reader(name, fn, args, case, extra)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise CheckFailed(f"{case.header(name, extra)}\n  your function returned {type(out).__name__}; "
                                  "expected a pair (values [B, L] float, new_mask [B, L] bool)")
            got_v = as_tensor(out[0], name, case, extra, "[B, L] of values")
            got_m = as_tensor(out[1], name, case, extra, "[B, L] bool mask")
            check_shape(got_v, (B, L), name, case, extra, "values, [B, L] = rollout.shape")
            check_shape(got_m, (B, L), name, case, extra, "new_mask, [B, L] = mask.shape")
            exp_v, exp_m = _realign_reference(rollout.double(), case.mask, shifts)
            msg = _realign_mismatch(name, case, extra, rollout, shifts, exp_v, exp_m, got_v, got_m.bool())
            if msg:
                raise CheckFailed(msg)
            values_n += int(exp_m.sum())
            dropped += int((case.mask & ~exp_m).sum())
        return (f"✓ {name}: {N_CASES} cases, {values_n} realigned values compared and every mask entry "
                f"({dropped} tokens correctly dropped for lack of a stored value), all within {TOL:g}.")

    return run_checker(body)


def _realign_mismatch(name: str, case: Case, extra: str, rollout: Tensor, shifts: Tensor, exp_v: Tensor,
                      exp_m: Tensor, got_v: Tensor, got_m: Tensor) -> str:
    """The message for the first wrong mask entry, else the first wrong value ('' when both match)."""
    B, L = case.shape
    j_ = torch.arange(L)[None, :]
    lengths = torch.tensor(case.lengths)[:, None]
    r64 = rollout.double()
    wrong_way = _realign_reference(r64, case.mask, -shifts)
    variants_m = [
        ("the mask is unchanged: after realigning, tokens whose value was never stored (the first d "
         "tokens of a row shifted by d > 0) must leave the mask.", lambda: case.mask),
        ("you dropped the last d tokens: that is the stored frame, where the last d slots read padding. "
         "In the token frame, after realigning, the tokens without a value are the first d.",
         lambda: case.mask & (j_ < lengths - shifts[:, None])),
    ]
    bad_m = (got_m != exp_m).nonzero()
    if len(bad_m):
        b, j = (int(v) for v in bad_m[0])
        if matches(wrong_way[0], got_v, got_m & wrong_way[1]) and bool((got_m == wrong_way[1]).all()):
            hint = f"\n  hint: {_WRONG_WAY}"
        else:
            hint = next((f"\n  hint: {t}" for t, make in variants_m if bool((make() == got_m).all())), "")
        d = int(shifts[b])
        lines = [case.header(name, extra),
                 f"  first mismatch in new_mask at row {b}, position {j} ({case.where(b, j)}; row {b} is shifted "
                 f"by d = {d:+d}): expected {int(exp_m[b, j])}, got {int(got_m[b, j])}",
                 *aligned([(f"row {b} rollout (stored)", rollout[b]), (f"row {b} mask", case.mask[b]),
                           (f"row {b} expected values", exp_v[b]), (f"row {b} expected new_mask", exp_m[b]),
                           (f"row {b} got values", got_v.detach()[b]), (f"row {b} got new_mask", got_m[b])])]
        return "\n".join(lines) + hint
    bad = first_mismatch(exp_v, got_v, exp_m)
    if bad is None:
        return ""
    b, j = bad
    d = int(shifts[b])
    hint = hint_for(got_v, exp_m, [
        (_WRONG_WAY, lambda: wrong_way[0]),
        ("these are the stored values, not moved: values[b, j] = rollout[b, j - d].", lambda: r64),
    ])
    return mismatch_message(name, case, extra, b, j, exp_v, got_v, {"rollout (stored)": rollout, "mask": case.mask},
                            note=f"row {b} is shifted by d = {d:+d}: token {j}'s value is stored at slot {j - d}; "
                                 "values are compared where the expected new_mask is True") + hint


__all__ = [
    "check_offset_detector", "check_realign", "check_sampled_logprobs", "offset_case", "reference_offset_detector",
]
