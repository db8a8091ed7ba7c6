"""Checkers for the notebooks' exercises: run the reader's function against the kit's reference.

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

import html
import math
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .alignment import lag_scan
from .objective import advantage, iw_opd_loss, prefix_weights
from .scoring import sampled_logprobs

#: Absolute and relative tolerance of every comparison.
TOL = 1e-5
#: Number of random batches per checker.
N_CASES = 24
#: Case i is drawn from ``torch.Generator().manual_seed(BASE_SEED + i)``.
BASE_SEED = 2606
#: Lags the offset detector must scan: k in [-MAX_LAG, MAX_LAG] (rows are built with |k| <= 3).
MAX_LAG = 4

_DECIMALS = 4


# ------------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class ExerciseResult:
    """The outcome of a checker.

    ok: True when every case matched. message: one line on success; on failure the first
    mismatch (case, seed, row, position, expected vs got) or the exception raised.
    ``bool(result)`` is ``result.ok``, so ``assert check_advantage(my_advantage)`` works.
    """

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        color, bg = ("#1a9850", "#f1f9f3") if self.ok else ("#b2182b", "#fdf3f2")
        return (f'<div style="border-left:4px solid {color};background:{bg};padding:.4em .7em;'
                'font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap">'
                f"{html.escape(self.message)}</div>")


class _Fail(Exception):
    """Internal: stops a checker with the message of its first failure."""


# ------------------------------------------------------------------------------------- random cases
@dataclass(frozen=True)
class _Case:
    """One random ragged batch: lengths L_b, padding [B, L] (j < L_b) and mask [B, L] (tokens that count)."""

    index: int
    seed: int
    lengths: list[int]
    padding: Tensor
    mask: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def header(self, name: str, extra: str = "") -> str:
        B, L = self.shape
        return (f"✗ {name}: case {self.index + 1} of {N_CASES} (seed {self.seed}; B={B}, L={L}, "
                f"row lengths {self.lengths}{'; ' + extra if extra else ''})")

    def where(self, b: int, j: int) -> str:
        """Words for position (b, j): a valid token, a masked-out token, or padding."""
        if not bool(self.padding[b, j]):
            return f"padding: row {b} has only {self.lengths[b]} tokens"
        return "a valid token" if bool(self.mask[b, j]) else "a masked-out token (mask is False)"


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _case(index: int, holes: bool = True, ensure_valid: bool = False) -> tuple[_Case, torch.Generator]:
    """Case ``index``: B in 1..5, L in 1..12, ragged rows, random holes, some fully-masked rows."""
    seed = BASE_SEED + index
    g = torch.Generator().manual_seed(seed)
    B, L = _randint(g, 1, 5), _randint(g, 1, 12)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[_randint(g, 0, B - 1)] = L
    padding = torch.arange(L)[None, :] < lengths[:, None]
    keep = torch.rand(B, L, generator=g) < 0.8 if holes else torch.ones(B, L, dtype=torch.bool)
    mask = padding & keep
    mask[torch.rand(B, generator=g) < 0.2] = False
    if index % 4 == 1 and B > 1:
        mask[B - 1] = False          # a fully-masked row every fourth case
    if ensure_valid and not bool(mask.any()):
        mask[0, 0] = True
    return _Case(index, seed, lengths.tolist(), padding, mask), g


def _logprobs(g: torch.Generator, shape: Sequence[int]) -> Tensor:
    """Random log-probs in (-4.05, -0.05], float32."""
    return -(torch.rand(*shape, generator=g) * 4.0 + 0.05)


def _cases(**kw: Any):
    for i in range(N_CASES):
        yield _case(i, **kw)


# ------------------------------------------------------------------------------------------ helpers
def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    r = round(v, _DECIMALS)
    return f"{0.0 if r == 0 else r:g}" if abs(r) >= 1e-3 or r == 0 else f"{v:.3e}"


def _fmt_row(x: Tensor) -> str:
    """A row of values as ``[0.2, -0.3, -inf]`` (bools as 0/1), rounded."""
    if x.dtype == torch.bool:
        return "[" + ", ".join(str(int(v)) for v in x.tolist()) + "]"
    return "[" + ", ".join(_fmt(float(v)) for v in x.tolist()) + "]"


def _shapes(args: dict[str, Any]) -> str:
    parts = []
    for k, v in args.items():
        parts.append(f"{k} {list(v.shape)} {str(v.dtype).replace('torch.', '')}" if isinstance(v, Tensor) else f"{k}={v!r}")
    return ", ".join(parts)


def _call(name: str, fn: Callable, args: dict[str, Any], case: _Case, extra: str = "") -> Any:
    """fn(*args) on clones of the tensors; an exception becomes a :class:`_Fail` explaining it."""
    call = {k: v.clone() if isinstance(v, Tensor) and not v.requires_grad else v for k, v in args.items()}
    try:
        return fn(*call.values())
    except Exception as e:  # noqa: BLE001 - any error of the reader's function is reported
        frames = traceback.extract_tb(e.__traceback__)
        at = f"\n  raised at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        raise _Fail(f"{case.header(name, extra)}\n  your function raised {type(e).__name__}: {e}{at}\n"
                    f"  called as fn({', '.join(args)}) with {_shapes(args)}") from None


def _as_tensor(out: Any, name: str, case: _Case, extra: str, what: str) -> Tensor:
    if isinstance(out, Tensor):
        return out
    try:
        return torch.as_tensor(out)
    except Exception:  # noqa: BLE001
        raise _Fail(f"{case.header(name, extra)}\n  your function returned {type(out).__name__}; "
                    f"expected a torch.Tensor {what}") from None


def _check_shape(got: Tensor, shape: tuple[int, ...], name: str, case: _Case, extra: str, what: str) -> None:
    if tuple(got.shape) != tuple(shape):
        raise _Fail(f"{case.header(name, extra)}\n  shape mismatch: expected {list(shape)} ({what}), "
                    f"got {list(got.shape)}")


def _close(expected: Tensor, got: Tensor) -> Tensor:
    """Elementwise |got - expected| <= TOL * (1 + |expected|); equal infinities and NaN == NaN count as close."""
    e, g = expected.double(), got.detach().double()
    return torch.isclose(g, e, rtol=TOL, atol=TOL, equal_nan=True)


def _first_bad(expected: Tensor, got: Tensor, compare: Tensor) -> tuple[int, int] | None:
    """First (b, j) in row-major order where ``compare`` is True and the values differ."""
    bad = compare & ~_close(expected, got)
    if not bool(bad.any()):
        return None
    b, j = (int(v) for v in bad.nonzero()[0])
    return b, j


def _matches(variant: Tensor, got: Tensor, compare: Tensor) -> bool:
    return bool((_close(variant, got) | ~compare).all())


def _hint(got: Tensor, compare: Tensor, variants: Sequence[tuple[str, Callable[[], Tensor]]]) -> str:
    """The text of the first known mistake that reproduces ``got`` on the compared positions."""
    for text, make in variants:
        try:
            v = make()
        except Exception:  # noqa: BLE001 - a variant that cannot be built is no hint
            continue
        if tuple(v.shape) == tuple(got.shape) and _matches(v, got, compare):
            return f"\n  hint: {text}"
    return ""


def _mismatch_message(name: str, case: _Case, extra: str, b: int, j: int, expected: Tensor, got: Tensor,
                      inputs: dict[str, Tensor], note: str = "") -> str:
    """Header, the first mismatching (b, j) with expected vs got, row b's inputs, expected and got rows."""
    e, g = float(expected[b, j]), float(got.detach()[b, j])
    diff = abs(e - g) if math.isfinite(e) and math.isfinite(g) else float("nan")
    lines = [case.header(name, extra),
             f"  first mismatch at row {b}, position {j} ({case.where(b, j)}): expected {_fmt(e)}, "
             f"got {_fmt(g)}" + (f" (|diff| {diff:.3g} > tolerance {TOL:g})" if diff == diff else "")]
    rows = [(f"row {b} {k}", v[b]) for k, v in inputs.items()]
    rows += [(f"row {b} expected", expected[b]), (f"row {b} got", got.detach()[b])]
    lines += _aligned(rows)
    if note:
        lines.append(f"  {note}")
    return "\n".join(lines)


def _aligned(rows: Sequence[tuple[str, Tensor]], indent: str = "    ") -> list[str]:
    """``label = [values]`` lines with the ``=`` signs aligned."""
    width = max(len(label) for label, _ in rows)
    return [f"{indent}{label.ljust(width)} = {_fmt_row(v)}" for label, v in rows]


def _run(checker: Callable[[], str]) -> ExerciseResult:
    try:
        return ExerciseResult(True, checker())
    except _Fail as f:
        return ExerciseResult(False, str(f))


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
        for case, g in _cases():
            B, L = case.shape
            teacher = _logprobs(g, (B, L)).masked_fill(~case.padding, -math.inf)
            rollout = _logprobs(g, (B, L)).masked_fill(~case.padding, 0.0)
            args = {"teacher": teacher, "rollout": rollout, "mask": case.mask}
            got = _as_tensor(_call(name, fn, args, case), name, case, "", "[B, L]")
            _check_shape(got, (B, L), name, case, "", "[B, L] = teacher.shape")
            exp = advantage(teacher.double(), rollout.double(), case.mask)
            everywhere = torch.ones(B, L, dtype=torch.bool)
            bad = _first_bad(exp, got, everywhere)
            if bad is not None:
                t, r, m = teacher.double(), rollout.double(), case.mask
                hint = _hint(got, everywhere, [
                    ("A is rollout - teacher here; the advantage is teacher - rollout.", lambda: torch.where(m, r - t, 0.0)),
                    ("-inf * 0 is NaN: multiplying by the mask does not clear the teacher's -inf at padding; "
                     "use torch.where(mask, teacher - rollout, 0).", lambda: (t - r) * m),
                    ("the mask is not applied: A must be 0 on masked-out tokens and padding.", lambda: t - r),
                ])
                raise _Fail(_mismatch_message(name, case, "", *bad, exp, got,
                                              {"teacher": teacher, "rollout": rollout, "mask": case.mask}) + hint)
            total += B * L
        return f"✓ {name}: {N_CASES} cases, {total} positions compared (valid, masked and padding), all within {TOL:g}."

    return _run(body)


# ------------------------------------------------------------------------------------- prefix weights
_GAMMAS = (0.5, 1.0, 0.25, 2.0, 0.0)


def _random_advantages(g: torch.Generator, case: _Case) -> Tensor:
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
        for case, g in _cases():
            B, L = case.shape
            gamma, eps = _GAMMAS[case.index % len(_GAMMAS)], 1e-8
            extra = f"gamma={gamma:g}, eps={eps:g}"
            a = _random_advantages(g, case)
            args = {"advantages": a, "mask": case.mask, "gamma": gamma, "eps": eps}
            got = _as_tensor(_call(name, fn, args, case, extra), name, case, extra, "[B, L]")
            _check_shape(got, (B, L), name, case, extra, "[B, L] = advantages.shape")
            exp = prefix_weights(a.double(), case.mask, gamma=gamma, eps=eps)
            bad = _first_bad(exp, got, case.mask)
            if bad is not None:
                a64, m = a.double(), case.mask
                hint = _hint(got, m, [
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
                raise _Fail(_mismatch_message(name, case, extra, *bad, exp, got,
                                              {"advantages": a, "mask": case.mask},
                                              note="(compared on valid positions only)") + hint)
            total += int(case.mask.sum())
        return f"✓ {name}: {N_CASES} cases, {total} valid tokens compared, all within {TOL:g}."

    return _run(body)


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
        for case, g in _cases(ensure_valid=True):
            B, L = case.shape
            gamma = _GAMMAS[case.index % len(_GAMMAS)]
            extra = f"gamma={gamma:g}"
            student = _logprobs(g, (B, L)).masked_fill(~case.padding, 0.0)
            teacher = _logprobs(g, (B, L)).masked_fill(~case.padding, -math.inf)
            rollout = _logprobs(g, (B, L)).masked_fill(~case.padding, 0.0)
            s_leaf = student.clone().requires_grad_(True)
            args = {"student": s_leaf, "teacher": teacher, "mask": case.mask, "rollout": rollout, "gamma": gamma}
            out = _loss_of(_call(name, fn, args, case, extra))
            got = _as_tensor(out, name, case, extra, "scalar loss")
            if got.numel() != 1:
                raise _Fail(f"{case.header(name, extra)}\n  shape mismatch: expected a scalar loss (shape [] or [1]), "
                            f"got shape {list(got.shape)}; reduce with the token mean over valid tokens")
            ref_leaf = student.double().requires_grad_(True)
            ref = iw_opd_loss(ref_leaf, teacher.double(), case.mask, rollout.double(), gamma=gamma)
            ref.loss.backward()
            exp_grad = ref_leaf.grad
            got_grad = _reader_grad(got, s_leaf, name, case, extra)
            msg = _loss_mismatch(name, case, extra, ref.loss.detach(), got.detach().reshape(()),
                                 exp_grad, got_grad, student, teacher, rollout, gamma)
            if msg:
                raise _Fail(msg)
            values += 1
            grads += B * L
        return (f"✓ {name}: {N_CASES} cases, {values} loss values and {grads} gradient entries "
                f"d loss / d student[b, j] compared, all within {TOL:g}.")

    return _run(body)


def _reader_grad(loss: Tensor, leaf: Tensor, name: str, case: _Case, extra: str) -> Tensor:
    """d loss / d student of the reader's loss (zeros where the student does not enter)."""
    if not loss.requires_grad:
        raise _Fail(f"{case.header(name, extra)}\n  the loss does not depend on the student log-probs (no gradient); "
                    "the gradient must flow through log pi_theta = student (and only through it)")
    try:
        (grad,) = torch.autograd.grad(loss.reshape(()), leaf, allow_unused=True)
    except Exception as e:  # noqa: BLE001
        raise _Fail(f"{case.header(name, extra)}\n  backward through your loss failed: {type(e).__name__}: {e}") from None
    return torch.zeros_like(leaf) if grad is None else grad


def _loss_mismatch(name: str, case: _Case, extra: str, exp: Tensor, got: Tensor, exp_grad: Tensor,
                   got_grad: Tensor, student: Tensor, teacher: Tensor, rollout: Tensor, gamma: float) -> str:
    """The message for the first difference in value or gradient ('' when both match)."""
    value_ok = bool(_close(exp, got))
    everywhere = torch.ones_like(case.mask)
    bad = _first_bad(exp_grad, got_grad, everywhere)
    if value_ok and bad is None:
        return ""
    m = case.mask
    n = int(m.sum())
    s64, t64, r64 = student.double(), teacher.double(), rollout.double()
    lines = [case.header(name, extra)]
    if not value_ok:
        lines.append(f"  loss value: expected {_fmt(float(exp))}, got {_fmt(float(got))} "
                     f"(N = {n} valid tokens)")
        hint = _hint(got.reshape(1, 1), torch.ones(1, 1, dtype=torch.bool), [
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
        lines.append(f"  loss value matches ({_fmt(float(exp))}) but the gradient does not")
    if bad is not None:
        b, j = bad
        e, gv = float(exp_grad[b, j]), float(got_grad[b, j])
        lines.append(f"  first gradient mismatch at row {b}, position {j} ({case.where(b, j)}): "
                     f"d loss / d student[{b}, {j}] expected {_fmt(e)}, got {_fmt(gv)}")
        lines += _aligned([(f"row {b} {k}", v[b]) for k, v in
                           (("student", student), ("teacher", teacher), ("rollout", rollout), ("mask", m))]
                          + [(f"row {b} gradient expected", exp_grad[b]), (f"row {b} gradient got", got_grad[b])])
        if bool(torch.isnan(got_grad[b, j])):
            lines.append("  hint: NaN in the gradient: the teacher's -inf at padding leaks; "
                         "select with torch.where(mask, ..., 0) before multiplying.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- sampled log-probs
_TEMPERATURES = (0.7, 1.0, 2.0, 0.5, 1.3)


def check_sampled_logprobs(fn: Callable[[Tensor, Tensor, float], Tensor]) -> ExerciseResult:
    """Check ``fn(logits, tokens, temperature) -> log-probs`` against :func:`iwopd_kit.scoring.sampled_logprobs`.

    Inputs: logits float32 [B, L, V] (V in 2..12; ``logits[b, j]`` already predicts ``tokens[b, j]``,
    i.e. shifted), tokens int64 [B, L] (pad id 0 at padding), temperature in {0.5, 0.7, 1, 1.3, 2}.
    Expected: ``log_softmax(logits / T)[token]`` at every position (padding too: id 0 is a token).
    """
    name = "check_sampled_logprobs"

    def body() -> str:
        total = 0
        for case, g in _cases():
            B, L = case.shape
            V = _randint(g, 2, 12)
            T = _TEMPERATURES[case.index % len(_TEMPERATURES)]
            extra = f"V={V}, temperature={T:g}"
            logits = torch.randn(B, L, V, generator=g) * 3.0
            tokens = torch.randint(0, V, (B, L), generator=g).masked_fill(~case.padding, 0)
            args = {"logits": logits, "tokens": tokens, "temperature": T}
            got = _as_tensor(_call(name, fn, args, case, extra), name, case, extra, "[B, L]")
            _check_shape(got, (B, L), name, case, extra, "[B, L] = tokens.shape")
            z = logits.double()
            exp = sampled_logprobs(z, tokens, temperature=T)
            everywhere = torch.ones(B, L, dtype=torch.bool)
            bad = _first_bad(exp, got, everywhere)
            if bad is not None:
                pick = lambda lp: lp.gather(-1, tokens[..., None]).squeeze(-1)  # noqa: E731
                hint = _hint(got, everywhere, [
                    ("the temperature is missing: divide the logits by T before log_softmax.",
                     lambda: pick(torch.log_softmax(z, -1))),
                    ("the logits are multiplied by T; divide them by T.", lambda: pick(torch.log_softmax(z * T, -1))),
                    ("the temperature is applied after log_softmax; divide the logits by T first.",
                     lambda: pick(torch.log_softmax(z, -1)) / T),
                    ("these are raw logits: subtract logsumexp over the vocabulary (log_softmax).",
                     lambda: pick(z / T)),
                    ("log_softmax over the wrong dimension: normalise over the vocabulary (dim=-1).",
                     lambda: pick(torch.log_softmax(z / T, 1))),
                ])
                b, j = bad
                note = (f"token id at (row {b}, position {j}) = {int(tokens[b, j])}; "
                        f"logits[{b}, {j}] = {_fmt_row(logits[b, j])}")
                raise _Fail(_mismatch_message(name, case, extra, b, j, exp, got,
                                              {"tokens": tokens.double()}, note=note) + hint)
            total += B * L
        return f"✓ {name}: {N_CASES} cases, {total} positions compared, all within {TOL:g}."

    return _run(body)


# ---------------------------------------------------------------------------------- offset detector
def reference_offset_detector(rollout: Tensor, student: Tensor, mask: Tensor, max_lag: int = MAX_LAG) -> Tensor:
    """Per row, the lag k in [-max_lag, max_lag] minimising mean |rollout[j + k] - student[j]|.

    Inputs [B, L] (NaN allowed off-mask), mask bool [B, L]. Returns LongTensor [B]; a row with no
    valid token gets 0. A row where token j carries the log-prob of token j + d has lag k = -d
    (the convention of :func:`iwopd_kit.alignment.lag_scan`).
    """
    lags, err = _scan(rollout, student, mask, max_lag)
    best = lags[torch.nan_to_num(err, nan=math.inf).argmin(dim=1)]
    return torch.where(mask.bool().any(dim=1), best, torch.zeros_like(best))


def _scan(rollout: Tensor, student: Tensor, mask: Tensor, max_lag: int) -> tuple[Tensor, Tensor]:
    """:func:`iwopd_kit.alignment.lag_scan` in float64, with the lags cut to |k| <= L - 1 (no overlap beyond)."""
    return lag_scan(rollout.double(), student.double(), mask.bool(), max(0, min(max_lag, rollout.shape[1] - 1)))


def _offset_case(index: int) -> tuple[_Case, Tensor, Tensor, Tensor]:
    """A case with rows shifted by known lags: returns (case, rollout, student, lags [B]).

    Row b with lag k satisfies rollout[b, j + k] ≈ student[b, j] (rounding noise 1e-4); rows too
    short for their lag (L_b < |k| + 3) and fully-masked rows have lag 0; fully-masked rows hold
    unrelated values. Both series are NaN at padding.
    """
    case, g = _case(index, holes=False)
    B, L = case.shape
    base = _logprobs(g, (B, L + 2 * MAX_LAG))
    noise = torch.randn(B, L, generator=g) * 1e-4
    lags = torch.randint(-3, 4, (B,), generator=g)
    lengths = torch.tensor(case.lengths)
    valid_row = case.mask.any(dim=1)
    lags = torch.where((lengths >= lags.abs() + 3) & valid_row, lags, torch.zeros_like(lags))
    student = base[:, MAX_LAG:MAX_LAG + L]
    idx = (torch.arange(L)[None, :] - lags[:, None]) + MAX_LAG    # rollout[j] = student[j - k]
    rollout = base.gather(1, idx) + noise
    unrelated = _logprobs(g, (B, L))
    rollout = torch.where(valid_row[:, None], rollout, unrelated)
    nan = torch.tensor(float("nan"))
    return case, rollout.masked_fill(~case.padding, nan), student.masked_fill(~case.padding, nan), lags


def check_offset_detector(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> ExerciseResult:
    """Check ``fn(rollout, student, mask) -> lags`` on rows shifted by known lags.

    Inputs: rollout, student float32 [B, L] log-probs of the same tokens (NaN at padding; they differ
    by rounding noise ~1e-4 where aligned), mask bool [B, L] (padding and fully-masked rows).
    Expected: LongTensor [B], per row the lag k in [-4, 4] with ``rollout[j + k] ≈ student[j]``
    (the convention of :func:`iwopd_kit.alignment.lag_scan`: a row whose token j carries the
    log-prob of token j + d has k = -d); 0 for a healthy row and for a row with no valid token.
    """
    name = "check_offset_detector"

    def body() -> str:
        rows = shifted = 0
        for i in range(N_CASES):
            case, rollout, student, lags = _offset_case(i)
            B, L = case.shape
            args = {"rollout": rollout, "student": student, "mask": case.mask}
            got = _as_tensor(_call(name, fn, args, case), name, case, "", "LongTensor [B]")
            _check_shape(got, (B,), name, case, "", "one lag per row, [B]")
            if got.is_floating_point() and not bool((got == got.round()).all()):
                raise _Fail(f"{case.header(name)}\n  lags must be integers, got {_fmt_row(got)}")
            wrong = (got.long() != lags).nonzero().flatten()
            if len(wrong):
                raise _Fail(_offset_message(name, case, int(wrong[0]), lags, got.long(), rollout, student))
            rows += B
            shifted += int((lags != 0).sum())
        return (f"✓ {name}: {N_CASES} cases, {rows} rows compared ({shifted} of them shifted), "
                "every lag found.")

    return _run(body)


def _j(k: int) -> str:
    """``j``, ``j + 2`` or ``j - 2``."""
    return "j" if k == 0 else f"j {'+' if k > 0 else '-'} {abs(k)}"


def _offset_message(name: str, case: _Case, b: int, lags: Tensor, got: Tensor, rollout: Tensor, student: Tensor) -> str:
    k, gk = int(lags[b]), int(got[b])
    lag_range, err = _scan(rollout, student, case.mask, MAX_LAG)
    errs = {int(x): float(e) for x, e in zip(lag_range.tolist(), err[b].tolist())}

    def gap(x: int) -> str:
        return _fmt(errs[x]) if x in errs and not math.isnan(errs[x]) else "no overlap"

    if not bool(case.mask[b].any()):
        built = "row b has no valid token (fully masked), so its lag is 0"
    elif k == 0:
        built = "row b is healthy: rollout[j] ≈ student[j]"
    else:
        built = f"row b was built with rollout[{_j(k)}] ≈ student[j] (token j carries the log-prob of token {_j(-k)})"
    lines = [case.header(name),
             f"  first mismatch at row {b} (position {b} of the output [B]): expected lag {k:+d}, got {gk:+d}",
             "  " + built.replace("row b", f"row {b}"),
             f"  mean |rollout[j + k] - student[j]| over valid j: {gap(k)} at k = {k:+d}, {gap(gk)} at k = {gk:+d}",
             *_aligned([(f"row {b} rollout", rollout[b]), (f"row {b} student", student[b]),
                        (f"row {b} mask", case.mask[b])])]
    pairs = [(int(x), int(y)) for x, y in zip(lags.tolist(), got.tolist())]
    if all(y == -x for x, y in pairs) and any(x != 0 for x, _ in pairs):
        lines.append("  hint: the sign is flipped: k is the lag with rollout[j + k] ≈ student[j].")
    elif all(y == x + MAX_LAG for x, y in pairs):
        lines.append(f"  hint: these look like indices into the scanned lags; subtract {MAX_LAG} (lags run -{MAX_LAG}..{MAX_LAG}).")
    elif all(abs(y - x) == 1 for x, y in pairs):
        lines.append("  hint: off by one everywhere: check how the shifted series are paired (rollout[j + k] against student[j]).")
    elif not bool(case.mask[b].any()):
        lines.append("  hint: a row without valid tokens gives no evidence; report lag 0 for it.")
    return "\n".join(lines)


__all__ = [
    "BASE_SEED", "MAX_LAG", "N_CASES", "TOL", "ExerciseResult", "check_advantage", "check_iw_opd_loss",
    "check_offset_detector", "check_prefix_weights", "check_sampled_logprobs", "reference_offset_detector",
]
