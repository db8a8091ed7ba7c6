"""The check's data types: findings, tolerances, the report, and what a detector is.

A detector is a :class:`Detector`: its ``kind`` (one failure class of :data:`KINDS`), the inputs
it ``needs`` (each a :class:`Need`; when one is missing the report says so, with the need's own
words), whether it ``explains_gap`` (its rows, or the whole batch, need no further gap-based
finding), and one ``run(context) -> list[Finding]``. :class:`Context` carries the batch, the
tolerances, the extra inputs, and what the detectors that ran before decided.

Only data types and tiny tensor helpers live here: views may import this module; they never
import the detectors.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..batch import Batch
from ..objective import REDUCTIONS

KINDS = (
    "offset", "missing_token_ids", "teacher_coverage", "tokenizer_mismatch", "bos_eos", "padding",
    "truncation", "temperature", "processed_logprobs", "staleness", "normalisation", "ordering", "numerics",
)
SEVERITIES = ("error", "warning", "info")
SIDES = (("student", "student_logprobs"), ("teacher", "teacher_logprobs"))
"""The two scored sides and their series; the rollout is the reference they are compared with."""


@dataclass(frozen=True)
class Finding:
    kind: str
    row: int | None
    position: int | None
    severity: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; expected one of {SEVERITIES}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Tolerances:
    """Thresholds, in nats, on the per-token gap |rollout - student| = |Δ| (calibration: docs/calibration.md).

    same: values this close are the same number (float32 vLLM vs transformers: max ~3e-5, also at 151,936 tokens).
    rounding: in a batch whose bulk agrees to float32 (see ``bulk_quantile``), a structureless gap on a
        token up to this is a warning, beyond it an error (a token off by a nat among exact ones is not
        rounding); also the per-token bound a re-ordered row must match its partner within.
    max_lag: the offset scan tries every shift d with |d| <= max_lag (plus each row's prompt-length
        differences); a row shifted by d has token j carrying the rollout log-prob of token j + d.
    lag_gain: an offset is reported when some shift d != 0 fits at least this many times better than the
        unshifted series (d = 0);
        a re-ordered row must match another row's student series this many times better than its own.
    min_tokens_for_lag: rows shorter than this are not scanned for offsets / ordering, and an offset lag
        counts only where it pairs at least this many tokens of the row.
    stale_t: pooled t-statistic (|mean gap| / standard error) a same-sign gap must reach to be called stale.
    stale_min_rows: rows (each with >= min_tokens_for_lag values) needed before a gap counts as systematic.
    bulk_quantile: the |Δ| quantile that tells a low-precision batch (above ``same``: bf16 on a side,
        p90 0.007-0.013 on the tiny student, 0.08-0.11 at 151,936 tokens) from a float32 one (p90 <= 6e-6);
        a confident model's bf16 bulk can agree to float32 (the tiny teacher's p90 5e-6); recorded dtypes (meta ``rollout_dtype``
        / ``trainer_dtype``) other than float32/float64 also make it low-precision.
    mult_prob_error: in a low-precision batch, the pooled ``mismatch/token_mult_prob_error`` (mean
        exp|Δ|) above which the mismatch is an error (NeMo-RL's healthy bound, 1.05; bf16 vLLM vs an fp32
        trainer measured 1.005 on the tiny student, 1.032-1.038 at 151,936 tokens).
    k3_kl: in a low-precision batch, the pooled ``mismatch/k3_kl`` above which the mismatch is an error
        (10x the usual dense-model upper end of 1e-3; bf16 measured 1-2e-4 tiny, at most 2.2e-3 at 151,936).
    metric_se: a pooled metric (``mult_prob_error``, ``k3_kl``) counts as beyond its bound only when it
        exceeds it by more than this many standard errors of its mean (the per-token values' std /
        sqrt(n)): on a 4-row, 24-token bf16 batch of a 151,936-token model one or two tail tokens move
        mean exp|Δ| by ~0.02 (healthy worst seed 1.045; docs/calibration.md), a real mismatch is far beyond.
    zero_slack: how far below where a certain / nucleus-of-one token sits (0, or log(top_p) under
        processed top-p) the trainer's log-prob of a token with a rollout log-prob of exactly 0.0 may be
        and still count as healthy (engine rounding of a near-certain token); below it the 0.0 is a
        padding value on a real token.
    """

    same: float = 1e-3
    rounding: float = 0.25
    max_lag: int = 4
    lag_gain: float = 10.0
    min_tokens_for_lag: int = 3
    stale_t: float = 3.0
    stale_min_rows: int = 4
    bulk_quantile: float = 0.9
    mult_prob_error: float = 1.05
    k3_kl: float = 1e-2
    metric_se: float = 2.0
    zero_slack: float = 0.02


@dataclass(frozen=True)
class RowLag:
    """The offset check's decision for one row: the shift it settled on and the mean |gap| there.

    Read it as :attr:`shift` (d): the row is shifted by d when token j carries the rollout log-prob
    of token j + d (``rollout[j] ≈ student[j + d]``), the convention of every finding, table and
    view; d is 0 where the check reported no offset. :attr:`gap_at_shift` is the mean |gap| once
    the shift is undone (= ``gap_at_0``, the mean |gap| as stored, when d = 0). NaN where the row
    has no overlapping values.

    The stored fields keep the lag scan's internal convention for compatibility: ``lag`` = k = -d
    (lag k pairs ``rollout[j + k]`` with ``student[j]``) and ``gap_at_lag`` = :attr:`gap_at_shift`.
    The ``repr`` shows the shift.
    """

    row: int
    lag: int
    gap_at_0: float
    gap_at_lag: float

    @property
    def shift(self) -> int:
        """d: token j carries the rollout log-prob of token j + d (0 for a row the check left alone)."""
        return -self.lag

    @property
    def gap_at_shift(self) -> float:
        """The mean |rollout[j] - student[j + d]| over the row's valid pairs (the shift undone)."""
        return self.gap_at_lag

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
    :attr:`row_shifts` for all rows at once), ``explained_rows`` (rows whose
    gap a row-level finding explained, left out of the later gap detectors) and ``gap_explained``
    (a batch-level finding explained the gap of the whole batch).

    ``metrics``: the rollout-vs-trainer mismatch metrics under the names the field logs
    (:func:`iwopd_kit.mismatch_metrics`: ``mismatch/k3_kl``, ``mismatch/token_mult_prob_error``, ...),
    pooled over every valid token that has both a rollout and a student log-prob, rows flagged for
    other reasons included. Empty when a series is missing; ``unchecked`` then lists ``"mismatch"``
    and ``unchecked_reasons["mismatch"]`` says why.
    """

    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    unchecked_reasons: dict[str, str] = field(default_factory=dict)
    row_lags: tuple[RowLag, ...] = ()
    explained_rows: tuple[int, ...] = ()
    gap_explained: bool = False
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def row_shifts(self) -> tuple[int, ...]:
        """The offset check's shift d per row (token j carries the rollout log-prob of token j + d; 0 where
        it reported no offset); empty when the offset scan did not run."""
        return tuple(x.shift for x in self.row_lags)

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
        lines = [head] + [f"  [{f.severity}] {f.kind} row={f.row} pos={f.position}: {f.message}" for f in self.findings]
        if self.unchecked:
            lines.append(f"  not checked: {self.unchecked_text()}")
        return "\n".join(lines)


FULL_PRECISION: tuple[str, ...] = ("float32", "float64")
"""Recorded dtypes (meta ``rollout_dtype`` / ``trainer_dtype``) whose rounding is below ``Tolerances.same``."""


# ------------------------------------------------------------------------------------- the context
@dataclass
class Context:
    """What one detector run sees: the batch, the tolerances, the extra inputs, earlier decisions.

    ``explained_rows``: rows already explained by a row-level finding (re-ordered, shifted,
    padded, stale); the gap detectors leave them out. ``gap_explained``: a batch-level finding
    (temperature, top-p, staleness) explained the gap. ``row_lags``: the offset check's per-row
    decisions, for the report. The driver updates the first two after each detector that
    ``explains_gap``.
    """

    batch: Batch
    tol: Tolerances = field(default_factory=Tolerances)
    student_tokenizer: Any = None
    teacher_tokenizer: Any = None
    num_items: int | None = None
    reduction: str | None = None
    explained_rows: set[int] = field(default_factory=set)
    gap_explained: bool = False
    row_lags: tuple[RowLag, ...] = ()

    @property
    def tokenizer(self) -> Any:
        """The tokenizer for BOS/EOS checks: the student's, else the teacher's (None without either)."""
        return self.student_tokenizer if self.student_tokenizer is not None else self.teacher_tokenizer

    @property
    def exclude(self) -> frozenset[int]:
        return frozenset(self.explained_rows)

    def has(self, name: str) -> bool:
        return self.batch.has(name)

    @property
    def has_pair(self) -> bool:
        """Both series a gap needs: rollout and student log-probs."""
        return self.batch.has("rollout_logprobs") and self.batch.has("student_logprobs")

    def meta(self, key: str) -> list[Any] | None:
        """``meta[b][key]`` per row (None where absent); None when no row has the key."""
        return meta_values(self.batch, key)

    def valid(self) -> Tensor:
        """batch.valid() [B, L] with the explained rows switched off."""
        valid = self.batch.valid()
        if self.explained_rows:
            valid[sorted(self.explained_rows)] = False
        return valid

    def gap(self, valid: Tensor) -> Tensor:
        """rollout - student [B, L] float64 on ``valid`` tokens, NaN elsewhere (needs :data:`PAIR`).

        Built in place from the stored series (one float64 [B, L] result, no float64 copies of the inputs).
        """
        b = self.batch
        d = b.packed("rollout_logprobs").values.to(torch.float64, copy=True)    # packed: no padded copies
        d.sub_(b.packed("student_logprobs").values)
        g = torch.full((b.size, b.width), float("nan"), dtype=torch.float64)
        g.masked_scatter_(b.padding_mask(), d)
        del d
        return g.masked_fill_(~valid, float("nan"))

    def recorded_dtype(self, key: str) -> str | None:
        """The first recorded ``meta[b][key]`` (``rollout_dtype`` / ``trainer_dtype``), None when none is."""
        return next((str(v) for v in self.meta(key) or [] if v is not None), None)

    def low_precision(self, abs_gap: Tensor) -> bool:
        """Whether rounding below float32 is expected in the gaps: a recorded rollout or trainer dtype other
        than float32/float64, or the ``tol.bulk_quantile`` quantile of ``abs_gap`` (finite |gap| values of
        the tokens that tell) above ``tol.same``."""
        if any(d is not None and d not in FULL_PRECISION for d in map(self.recorded_dtype, ("rollout_dtype", "trainer_dtype"))):
            return True
        return abs_gap.numel() > 0 and float(torch.quantile(abs_gap.double(), self.tol.bulk_quantile)) > self.tol.same


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

    ``explains_gap``: its findings explain the rollout-student gap (row-level ones for their rows,
    a batch-level one for the whole batch), so the gap detectors after it skip what it explained.
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
def meta_values(batch: Batch, key: str) -> list[Any] | None:
    """``meta[b][key]`` per row (None where absent); None when no row has the key."""
    if batch.meta is None:
        return None
    vals = [m.get(key) if isinstance(m, dict) else None for m in batch.meta]
    return vals if any(v is not None for v in vals) else None


PAIR = Need("rollout_logprobs and student_logprobs", lambda c: c.has_pair)
TEACHER = Need("teacher_logprobs", lambda c: c.has("teacher_logprobs"))
PADDED = Need("prompts of different lengths", lambda c: len(set(c.batch.prompt_lengths)) > 1,
              reason="all prompts have the same length, so no row was left-padded")
SCORED_OR_LENGTHS = Need(
    "student_logprobs / teacher_logprobs or the other side's lengths in meta",
    lambda c: (c.has("student_logprobs") or c.has("teacher_logprobs")
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
           "Context", "Need", "Detector", "PAIR", "TEACHER", "PADDED", "SCORED_OR_LENGTHS", "BOTH_TOKENIZERS",
           "A_TOKENIZER", "VERSIONS_OR_PAIR", "COUNT_OR_REDUCTION", "FULL_PRECISION", "meta_values", "one_thread",
           "value_text", "gap_text", "GAP_FLOOR"]
