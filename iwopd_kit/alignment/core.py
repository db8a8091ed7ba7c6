"""The check's data types: findings, tolerances, the report, and what a detector is.

A detector is a :class:`Detector`: its ``kind`` (one failure class of :data:`KINDS`), the inputs
it ``needs`` (each a :class:`Need`; when one is missing the report says so, with the need's own
words), whether it ``explains_gap`` (the tokens it accounts for need no further gap-based finding),
and one ``run(context) -> list[Finding]``. :class:`Context` carries the batch, the tolerances, the
extra inputs, and the per-token explanation map the detectors that ran before filled
(``explained`` [B, L] and ``token_kinds`` [B, L]; docs/method.md, "which tokens each detector reads").

Only data types and tiny tensor helpers live here: views may import this module; they never
import the detectors.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..batch import STUDENT_LOGPROBS, TEACHER_LOGPROBS
from ..objective import REDUCTIONS
from .context import NO_GROUP, Context, all_explained, explained_rows, meta_values
from .kinds import KINDS, SEVERITIES
from .tolerances import FULL_PRECISION, Tolerances

SIDES = (("student", STUDENT_LOGPROBS), ("teacher", TEACHER_LOGPROBS))
"""The two scored sides and their series; the rollout is the reference they are compared with."""


@dataclass(frozen=True)
class Finding:
    kind: str
    row: int | None
    position: int | None
    severity: str
    message: str
    group: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; expected one of {SEVERITIES}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RowLag:
    """The offset check's decision for one row: the shift it settled on and the mean |gap| there.

    :attr:`shift` (d): the row is shifted by d when token j carries the rollout log-prob of token
    j + d (``rollout[j] ≈ student[j + d]``), the convention of every finding, table and view; d is 0
    where the check reported no offset (the lag scan's internal k is -d). :attr:`gap_at_shift` is the
    mean |rollout[j] - student[j + d]| over the row's valid pairs, the shift undone (= ``gap_at_0``,
    the mean |gap| as stored, when d = 0). NaN where the row has no overlapping values.
    """

    row: int
    shift: int
    gap_at_0: float
    gap_at_shift: float

    def __repr__(self) -> str:
        d = f"{self.shift:+d}" if self.shift else "0"
        return (f"RowLag(row={self.row}, shift={d}, gap_at_0={self.gap_at_0:.3g}, "
                f"gap_at_shift={self.gap_at_shift:.3g})")


@dataclass(frozen=True)
class AlignmentReport:
    """Findings, a few summary stats, and the classes the inputs did not allow to check.

    ``unchecked`` lists kinds; ``unchecked_reasons[kind]`` says which input was missing.
    What the check decided, for views to show rather than re-decide: ``row_lags`` (one
    :class:`RowLag` per row when the offset scan ran, else empty; read each as ``.shift``, and
    :attr:`row_shifts` for all rows at once), and the per-token map: ``token_kinds`` (int8 [B, L]:
    the index in :data:`KINDS` of the finding that explains or flags each token, -1 for none),
    ``explained`` (bool [B, L]: tokens a finding accounts for, left out of the later gap detectors)
    and ``checked`` (bool [B, L]: the policy tokens with a finite rollout and trainer value, the ones
    the gap detectors read). :attr:`explained_rows` and :attr:`gap_explained` derive from them.

    ``metrics``: the rollout-vs-trainer mismatch metrics under the names the field logs
    (:func:`iwopd_kit.mismatch_metrics`: ``mismatch/k3_kl``, ``mismatch/token_mult_prob_error``, ...),
    pooled over the tokens the writer's framework pools (``batch.metric_mask()``: its policy tokens,
    less any outside the writer's metric pool) that have both a rollout and a
    student log-prob, rows flagged for other reasons included; ``group_metrics[group]`` the same per
    group (``batch.groups``; empty without groups) plus ``"tokens"``. Empty when a series is missing;
    ``unchecked`` then lists ``"mismatch"`` and ``unchecked_reasons["mismatch"]`` says why.
    """

    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    unchecked_reasons: dict[str, str] = field(default_factory=dict)
    row_lags: tuple[RowLag, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    group_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    token_kinds: Tensor | None = field(default=None, compare=False, repr=False)
    explained: Tensor | None = field(default=None, compare=False, repr=False)
    checked: Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def row_shifts(self) -> tuple[int, ...]:
        """The offset check's shift d per row (token j carries the rollout log-prob of token j + d; 0 where
        it reported no offset); empty when the offset scan did not run."""
        return tuple(x.shift for x in self.row_lags)

    @property
    def explained_rows(self) -> tuple[int, ...]:
        """Rows whose every checked token a finding explained (derived from ``explained`` and ``checked``)."""
        return explained_rows(self.explained, self.checked)

    @property
    def gap_explained(self) -> bool:
        """True when findings explained every checked token of the batch (and there was one)."""
        return all_explained(self.explained, self.checked)

    @property
    def ok(self) -> bool:
        """True when there is no error-level finding."""
        return not any(f.severity == "error" for f in self.findings)

    def by_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_dicts(self) -> list[dict]:
        return [f.to_dict() for f in self.findings]

    def unchecked_text(self) -> str:
        """``kind (why), ...`` for the classes not checked."""
        return ", ".join(f"{k} ({self.unchecked_reasons[k]})" if k in self.unchecked_reasons else k
                         for k in self.unchecked)

    def __repr__(self) -> str:
        head = f"AlignmentReport(ok={self.ok}, {len(self.findings)} finding(s))"
        lines = [head] + [f"  [{f.severity}] {f.kind} row={f.row} pos={f.position}"
                          + (f" group={f.group}" if f.group is not None else "") + f": {f.message}"
                          for f in self.findings]
        if self.unchecked:
            lines.append(f"  not checked: {self.unchecked_text()}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Need:
    """One input a detector needs: ``holds(context)`` says whether it is there.

    ``what`` names it for the report (``needs {what}``); ``reason`` replaces that sentence when the
    input is there but cannot show the defect (all prompts of one length: nothing was padded).
    """

    what: str
    holds: Callable[[Context], bool]
    reason: str | None = None

    @property
    def missing(self) -> str:
        return self.reason if self.reason is not None else f"needs {self.what}"


@dataclass(frozen=True)
class Detector:
    """One failure class: ``run(context)`` returns its findings; it runs only when every need holds.

    ``explains_gap``: its findings explain the rollout-student gap of the tokens it marks
    (:meth:`Context.mark`); a detector that marks none has its row-level findings explain their rows'
    tokens and group-level ones their group's (a batch-level finding marks nothing by itself).
    ``runs_before``: the kind of a detector this one must run before although it is reported after
    it (the report keeps the registry's order; ordering is tried before offsets).
    """

    kind: str
    run: Callable[[Context], list[Finding]]
    needs: tuple[Need, ...] = ()
    explains_gap: bool = False
    runs_before: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown detector kind {self.kind!r}; expected one of {KINDS}")

    def unmet(self, ctx: Context) -> str | None:
        """Why this detector cannot run on ``ctx`` (the first missing need), or None."""
        return next((n.missing for n in self.needs if not n.holds(ctx)), None)

    def __call__(self, ctx: Context) -> list[Finding]:
        """The findings on ``ctx``; none when an input it needs is missing."""
        if self.unmet(ctx) is not None:
            return []
        with one_thread():
            return self.run(ctx)


# --------------------------------------------------------------------------------------- the needs
PAIR = Need("rollout_logprobs and student_logprobs", lambda c: c.has_pair)
TEACHER = Need(TEACHER_LOGPROBS, lambda c: c.has(TEACHER_LOGPROBS))
PADDED = Need("prompts of different lengths", lambda c: len(set(c.batch.prompt_lengths)) > 1,
              reason="all prompts have the same length, so no row was left-padded")
SCORED_OR_LENGTHS = Need(
    "student_logprobs / teacher_logprobs or the other side's lengths in meta",
    lambda c: (c.has(STUDENT_LOGPROBS) or c.has(TEACHER_LOGPROBS)
               or any(c.meta(f"{side}_{what}_length") is not None for side, _ in SIDES for what in ("prompt", "completion"))))
BOTH_TOKENIZERS = Need("student_tokenizer and teacher_tokenizer",
                       lambda c: c.student_tokenizer is not None and c.teacher_tokenizer is not None)
A_TOKENIZER = Need("a tokenizer: student_tokenizer or teacher_tokenizer", lambda c: c.tokenizer is not None)
VERSIONS_OR_PAIR = Need(
    "meta policy_version / trainer_version, or rollout_logprobs and student_logprobs",
    lambda c: (c.meta("policy_version") is not None and c.meta("trainer_version") is not None) or c.has_pair)
COUNT_OR_REDUCTION = Need("num_items or reduction", lambda c: c.num_items is not None or c.reduction is not None)


# ---------------------------------------------------------------------------------- tensor helpers
@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops with one intra-op thread, then restore the setting.

    The detectors do elementwise work on [B, L] tensors (a few MB): one thread does it in well
    under a millisecond per op, while on a machine whose cores are busy (a training run beside a
    notebook) OpenMP's synchronisation made the same op ~100x slower (8 ms with 2 threads).
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def value_text(x: float) -> str:
    """A per-token value in a message as the dump wrote it: ``null`` for a missing one (NaN in the kit's
    tensors), ``-inf`` / ``inf``, else the number (``repr``-exact)."""
    x = float(x)
    if x != x:
        return "null"
    return str(x)


def gap_text(x: float) -> str:
    """A mean |log-prob| gap in a message: three significant digits, or ``< 1e-05`` at float32 rounding level.

    A gap that only rounding makes (a shift undone, a row compared with its true partner) is not a
    reproducible number: its digits change with the CPU and the kernel, so it is not printed as one.
    """
    x = float(x)
    return f"< {GAP_FLOOR:g}" if 0.0 <= x < GAP_FLOOR else f"{x:.3g}"


GAP_FLOOR = 1e-5
"""Mean gaps below this are float32 rounding (a log-prob's float32 ulp near 1 is 1.2e-7; kernels differ by a few)."""


__all__ = ["KINDS", "SEVERITIES", "REDUCTIONS", "SIDES", "Finding", "Tolerances", "RowLag", "AlignmentReport",
           "Context", "NO_GROUP", "explained_rows", "all_explained", "Need", "Detector", "PAIR", "TEACHER", "PADDED", "SCORED_OR_LENGTHS", "BOTH_TOKENIZERS",
           "A_TOKENIZER", "VERSIONS_OR_PAIR", "COUNT_OR_REDUCTION", "FULL_PRECISION", "meta_values", "one_thread",
           "value_text", "gap_text", "GAP_FLOOR"]
