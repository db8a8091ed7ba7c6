"""The exercise harness: what every checker of the notebooks' exercises is built from.

Random ragged cases (:func:`make_case`, :func:`cases`, :func:`random_logprobs`), the result type
(:class:`ExerciseResult`) and the failure that stops a checker (:class:`CheckFailed`, turned into a
failed result by :func:`run_checker`), the call of the reader's function (:func:`call_reader`,
:func:`as_tensor`, :func:`check_shape`), comparisons within ``TOL`` (:func:`close`,
:func:`first_mismatch`, :func:`matches`, :func:`hint_for`) and the first-mismatch messages
(:func:`mismatch_message`, :func:`aligned`, :func:`fmt`, :func:`fmt_row`). The checkers themselves are
in :mod:`iwopd_kit.teaching.exercises` (the objective: advantage, prefix weights, loss) and
:mod:`iwopd_kit.teaching.pairing` (which log-prob belongs to which token); ``exercises`` re-exports
them all.

Frame: every per-token tensor is ``[B, L]`` in completion coordinates (token j = the j-th generated
token of row b; right-padded; ``mask`` bool ``[B, L]`` marks the tokens that count; positions
``j >= L_b`` are padding). Case i is drawn from ``torch.Generator().manual_seed(BASE_SEED + i)``.
"""

from __future__ import annotations

import html
import math
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

#: Absolute and relative tolerance of every comparison.
TOL = 1e-5
#: Number of random batches per checker.
N_CASES = 24
#: Case i is drawn from ``torch.Generator().manual_seed(BASE_SEED + i)``.
BASE_SEED = 2606
#: Shifts the offset detector must try: d in [-MAX_SHIFT, MAX_SHIFT] (rows are built with |d| <= 3).
MAX_SHIFT = 4

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


class CheckFailed(Exception):
    """Stops a checker with the message of its first failure (:func:`run_checker` turns it into a failed result)."""


# ------------------------------------------------------------------------------------- random cases
@dataclass(frozen=True)
class Case:
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


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def make_case(index: int, holes: bool = True, ensure_valid: bool = False) -> tuple[Case, torch.Generator]:
    """Case ``index``: B in 1..5, L in 1..12, ragged rows, random holes, some fully-masked rows."""
    seed = BASE_SEED + index
    g = torch.Generator().manual_seed(seed)
    B, L = randint(g, 1, 5), randint(g, 1, 12)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[randint(g, 0, B - 1)] = L
    padding = torch.arange(L)[None, :] < lengths[:, None]
    keep = torch.rand(B, L, generator=g) < 0.8 if holes else torch.ones(B, L, dtype=torch.bool)
    mask = padding & keep
    mask[torch.rand(B, generator=g) < 0.2] = False
    if index % 4 == 1 and B > 1:
        mask[B - 1] = False          # a fully-masked row every fourth case
    if ensure_valid and not bool(mask.any()):
        mask[0, 0] = True
    return Case(index, seed, lengths.tolist(), padding, mask), g


def random_logprobs(g: torch.Generator, shape: Sequence[int]) -> Tensor:
    """Random log-probs in (-4.05, -0.05], float32."""
    return -(torch.rand(*shape, generator=g) * 4.0 + 0.05)


def cases(**kw: Any) -> Iterator[tuple[Case, torch.Generator]]:
    """The ``N_CASES`` cases in order, each with its generator (keywords go to :func:`make_case`)."""
    for i in range(N_CASES):
        yield make_case(i, **kw)


# ------------------------------------------------------------------------------------------ helpers
def fmt(v: float) -> str:
    """A value for a message: rounded to 4 decimals (small ones in scientific notation), ``nan``, ``inf``, ``-inf``."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    r = round(v, _DECIMALS)
    return f"{0.0 if r == 0 else r:g}" if abs(r) >= 1e-3 or r == 0 else f"{v:.3e}"


def fmt_row(x: Tensor) -> str:
    """A row of values as ``[0.2, -0.3, -inf]`` (bools as 0/1), rounded."""
    if x.dtype == torch.bool:
        return "[" + ", ".join(str(int(v)) for v in x.tolist()) + "]"
    return "[" + ", ".join(fmt(float(v)) for v in x.tolist()) + "]"


def _shapes(args: dict[str, Any]) -> str:
    parts = []
    for k, v in args.items():
        parts.append(f"{k} {list(v.shape)} {str(v.dtype).replace('torch.', '')}" if isinstance(v, Tensor) else f"{k}={v!r}")
    return ", ".join(parts)


def call_reader(name: str, fn: Callable, args: dict[str, Any], case: Case, extra: str = "") -> Any:
    """fn(*args) on clones of the tensors; an exception becomes a :class:`CheckFailed` explaining it."""
    call = {k: v.clone() if isinstance(v, Tensor) and not v.requires_grad else v for k, v in args.items()}
    try:
        return fn(*call.values())
    except Exception as e:  # noqa: BLE001 - any error of the reader's function is reported
        frames = traceback.extract_tb(e.__traceback__)
        at = f"\n  raised at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        raise CheckFailed(f"{case.header(name, extra)}\n  your function raised {type(e).__name__}: {e}{at}\n"
                          f"  called as fn({', '.join(args)}) with {_shapes(args)}") from None


def as_tensor(out: Any, name: str, case: Case, extra: str, what: str) -> Tensor:
    """The reader's return value as a tensor; a :class:`CheckFailed` naming ``what`` was expected when it is none."""
    if isinstance(out, Tensor):
        return out
    try:
        return torch.as_tensor(out)
    except Exception:  # noqa: BLE001
        raise CheckFailed(f"{case.header(name, extra)}\n  your function returned {type(out).__name__}; "
                          f"expected a torch.Tensor {what}") from None


def check_shape(got: Tensor, shape: tuple[int, ...], name: str, case: Case, extra: str, what: str,
                hints: Sequence[tuple[tuple[int, ...], str]] = ()) -> None:
    """A :class:`CheckFailed` when ``got`` has another shape; ``hints`` map a wrong shape to a known mistake."""
    if tuple(got.shape) != tuple(shape):
        hint = next((f"\n  hint: {text}" for wrong, text in hints if tuple(got.shape) == tuple(wrong)), "")
        raise CheckFailed(f"{case.header(name, extra)}\n  shape mismatch: expected {list(shape)} ({what}), "
                          f"got {list(got.shape)}{hint}")


def close(expected: Tensor, got: Tensor) -> Tensor:
    """Elementwise |got - expected| <= TOL * (1 + |expected|); equal infinities and NaN == NaN count as close."""
    e, g = expected.double(), got.detach().double()
    return torch.isclose(g, e, rtol=TOL, atol=TOL, equal_nan=True)


def first_mismatch(expected: Tensor, got: Tensor, compare: Tensor) -> tuple[int, int] | None:
    """First (b, j) in row-major order where ``compare`` is True and the values differ."""
    bad = compare & ~close(expected, got)
    if not bool(bad.any()):
        return None
    b, j = (int(v) for v in bad.nonzero()[0])
    return b, j


def matches(variant: Tensor, got: Tensor, compare: Tensor) -> bool:
    """True when ``got`` is close to ``variant`` at every position where ``compare`` ([B, L] bool) is True."""
    return bool((close(variant, got) | ~compare).all())


def hint_for(got: Tensor, compare: Tensor, variants: Sequence[tuple[str, Callable[[], Tensor]]]) -> str:
    """The text of the first known mistake that reproduces ``got`` on the compared positions."""
    for text, make in variants:
        try:
            v = make()
        except Exception:  # noqa: BLE001 - a variant that cannot be built is no hint
            continue
        if tuple(v.shape) == tuple(got.shape) and matches(v, got, compare):
            return f"\n  hint: {text}"
    return ""


def mismatch_message(name: str, case: Case, extra: str, b: int, j: int, expected: Tensor, got: Tensor,
                     inputs: dict[str, Tensor], note: str = "") -> str:
    """Header, the first mismatching (b, j) with expected vs got, row b's inputs, expected and got rows."""
    e, g = float(expected[b, j]), float(got.detach()[b, j])
    diff = abs(e - g) if math.isfinite(e) and math.isfinite(g) else float("nan")
    lines = [case.header(name, extra),
             f"  first mismatch at row {b}, position {j} ({case.where(b, j)}): expected {fmt(e)}, "
             f"got {fmt(g)}" + (f" (|diff| {diff:.3g} > tolerance {TOL:g})" if diff == diff else "")]
    rows = [(f"row {b} {k}", v[b]) for k, v in inputs.items()]
    rows += [(f"row {b} expected", expected[b]), (f"row {b} got", got.detach()[b])]
    lines += aligned(rows)
    if note:
        lines.append(f"  {note}")
    return "\n".join(lines)


def aligned(rows: Sequence[tuple[str, Tensor]], indent: str = "    ") -> list[str]:
    """``label = [values]`` lines with the ``=`` signs aligned."""
    width = max(len(label) for label, _ in rows)
    return [f"{indent}{label.ljust(width)} = {fmt_row(v)}" for label, v in rows]


def run_checker(checker: Callable[[], str]) -> ExerciseResult:
    """``checker()``'s success line as a passed result; a :class:`CheckFailed` it raises as a failed one."""
    try:
        return ExerciseResult(True, checker())
    except CheckFailed as f:
        return ExerciseResult(False, str(f))


__all__ = [
    "BASE_SEED", "MAX_SHIFT", "N_CASES", "TOL", "Case", "CheckFailed", "ExerciseResult", "aligned", "as_tensor",
    "call_reader", "cases", "check_shape", "close", "first_mismatch", "fmt", "fmt_row", "hint_for", "make_case",
    "matches", "mismatch_message", "randint", "random_logprobs", "run_checker",
]
