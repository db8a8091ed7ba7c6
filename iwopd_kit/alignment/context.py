"""The context a detector runs in: the batch, the tolerances, the extra inputs, and the per-token
explanation map (which tokens a finding already accounts for, and by which kind).

Coordinate frame: [B, L] completion coordinates (token j = the j-th generated token of row b).
``core`` re-exports :class:`Context`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, Batch
from ..batch.blocks import masked, nanmean_rows, row_blocks, series_mask, series_rows
from .kinds import KINDS
from .tolerances import FULL_PRECISION, Tolerances


def meta_values(batch: Batch, key: str) -> list[Any] | None:
    """``meta[b][key]`` per row (None where absent); None when no row has the key."""
    if batch.meta is None:
        return None
    vals = [m.get(key) if isinstance(m, dict) else None for m in batch.meta]
    return vals if any(v is not None for v in vals) else None


def explained_rows(explained: Tensor | None, checked: Tensor | None) -> tuple[int, ...]:
    """Rows with at least one checked token, every one of them explained."""
    if explained is None or checked is None:
        return ()
    left = (checked & ~explained).any(1)
    return tuple((checked.any(1) & ~left).nonzero().flatten().tolist())


def all_explained(explained: Tensor | None, checked: Tensor | None) -> bool:
    """Whether every checked token is explained (and there is one)."""
    return explained is not None and checked is not None and bool(checked.any()) and not bool((checked & ~explained).any())


# ------------------------------------------------------------------------------------- the context
NO_GROUP = "(no group)"
"""The group name of a row whose ``batch.groups`` entry is None (in a batch that has groups)."""


class Context:
    """What one detector run sees: the batch, the tolerances, the extra inputs, and the explanation map.

    The map, [B, L] in completion coordinates: ``explained`` (bool; tokens a finding accounts for) and
    ``token_kinds`` (int8; index in :data:`KINDS` of the first finding that explained or flagged the
    token, -1 none), filled through :meth:`mark`. ``policy`` = ``batch.policy_mask()``; ``checked``
    the policy tokens with a finite rollout and trainer value; :meth:`open` the checked tokens not yet
    explained: what every gap detector reads. The "trainer" series is the student's, minus
    ``kept_logmass`` where that is recorded (:meth:`trainer`). ``explained_rows`` / ``gap_explained``
    (constructor arguments: a caller running one detector on its own) pre-explain whole rows / every token.
    ``row_lags``: the offset check's per-row decisions, for the report.
    """

    def __init__(self, batch: Batch, tol: Tolerances = Tolerances(), *, student_tokenizer: Any = None,
                 teacher_tokenizer: Any = None, num_items: int | None = None, reduction: str | None = None,
                 explained_rows: Any = (), gap_explained: bool = False, row_lags: tuple = ()) -> None:
        self.batch, self.tol = batch, tol
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.num_items, self.reduction, self.row_lags = num_items, reduction, tuple(row_lags)
        B, L = batch.size, batch.width
        self.token_kinds = torch.full((B, L), -1, dtype=torch.int8)
        self.explained = torch.zeros((B, L), dtype=torch.bool)
        self.policy = batch.policy_mask()
        self._gap: Tensor | None = None
        self._rollout_zero: Tensor | None = None
        self._checked: Tensor | None = None
        rows = sorted(set(explained_rows))
        if rows:
            self.explained[rows] = True
        if gap_explained:
            self.explained[:] = True

    @property
    def tokenizer(self) -> Any:
        """The tokenizer for BOS/EOS checks: the student's, else the teacher's (None without either)."""
        return self.student_tokenizer if self.student_tokenizer is not None else self.teacher_tokenizer

    def has(self, name: str) -> bool:
        return self.batch.has(name)

    @property
    def has_pair(self) -> bool:
        """Both series a gap needs: rollout and student log-probs."""
        return self.batch.has(ROLLOUT_LOGPROBS) and self.batch.has(STUDENT_LOGPROBS)

    def meta(self, key: str) -> list[Any] | None:
        """``meta[b][key]`` per row (None where absent); None when no row has the key."""
        return meta_values(self.batch, key)

    # -- the trainer series and the gap ---------------------------------------------------------
    def kept_adjusted(self) -> Tensor:
        """[B, L] bool: tokens whose trainer value is ``student - kept_logmass`` (kept_logmass recorded and
        finite, rollout log-probs not recorded as raw): the rollout's renormalisation is undone exactly there."""
        b = self.batch
        if not b.has("kept_logmass") or (b.sampling is not None and b.sampling.logprobs_mode == "raw_logprobs"):
            return torch.zeros(b.size, b.width, dtype=torch.bool)
        return torch.isfinite(b.series("kept_logmass", torch.float64))

    def trainer_rows(self, rows: slice | Sequence[int], width: int | None = None) -> Tensor:
        """float64 [len(rows), width]: :meth:`trainer` on those rows (and the first ``width`` columns, default all),
        built from the packed series of those rows only (the same values, bit for bit)."""
        b = self.batch
        s = series_rows(b, STUDENT_LOGPROBS, rows, width=width)
        if b.has("kept_logmass") and not (b.sampling is not None and b.sampling.logprobs_mode == "raw_logprobs"):
            k = series_rows(b, "kept_logmass", rows, width=width)
            s = torch.where(torch.isfinite(k), s - k, s)          # kept_adjusted() on these rows
        return s

    def masked_trainer(self, mask: Tensor) -> Tensor:
        """``masked(trainer(), mask)``: the flat trainer values of the ``mask`` tokens ([B, L] bool) in row-major
        order, built per block of rows."""
        return torch.cat([masked(self.trainer_rows(r), mask[r]) for r in row_blocks(self.batch.size, self.batch.width)])

    def trainer(self) -> Tensor:
        """float64 [B, L]: the student log-prob, minus ``kept_logmass`` on :meth:`kept_adjusted` tokens (needs PAIR).
        A new tensor (not cached: the detectors read it per block of rows, :meth:`trainer_rows`)."""
        b = self.batch
        out = torch.empty(b.size, b.width, dtype=torch.float64)
        for rows in row_blocks(b.size, b.width):
            out[rows] = self.trainer_rows(rows)
        return out

    def full_gap(self) -> Tensor:
        """float64 [B, L]: rollout - trainer on every completion token (NaN where a value is missing). Cached; built
        per block of rows."""
        if self._gap is None:
            b = self.batch
            g = torch.empty(b.size, b.width, dtype=torch.float64)
            for rows in row_blocks(b.size, b.width):
                g[rows] = series_rows(b, ROLLOUT_LOGPROBS, rows).sub_(self.trainer_rows(rows))
            self._gap = g
        return self._gap

    def gap(self, mask: Tensor) -> Tensor:
        """rollout - trainer [B, L] float64 on ``mask`` tokens, NaN elsewhere (a new tensor; needs :data:`PAIR`)."""
        return self.full_gap().masked_fill(~mask, float("nan"))

    def release(self) -> None:
        """Drop the cached float64 gap and the masks; they are rebuilt on the next use."""
        self._gap = self._rollout_zero = self._checked = None

    def row_abs_gap(self, mask: Tensor) -> Tensor:
        """float64 [B]: mean |rollout - trainer| over each row's ``mask`` tokens (NaN for a row without any), i.e.
        ``nanmean_rows(gap(mask).abs())``, computed per block of rows (no [B, L] float64 copy; needs PAIR)."""
        fg, nan = self.full_gap(), float("nan")
        return torch.cat([nanmean_rows(fg[r].masked_fill(~mask[r], nan).abs_())
                          for r in row_blocks(self.batch.size, self.batch.width)])

    def rollout_zero(self) -> Tensor:
        """[B, L] bool: tokens whose rollout log-prob is exactly 0.0 (cached; needs ``rollout_logprobs``)."""
        if self._rollout_zero is None:
            self._rollout_zero = series_mask(self.batch, ROLLOUT_LOGPROBS, lambda x: x == 0.0)
        return self._rollout_zero

    @property
    def checked(self) -> Tensor:
        """[B, L] bool: policy tokens with a finite rollout and trainer value (all False without PAIR; a copy of the
        cached mask)."""
        if not self.has_pair:
            return torch.zeros_like(self.policy)
        if self._checked is None:                # per block of rows: isfinite makes a float |x| copy of its input
            g = self.full_gap()
            self._checked = self.policy & torch.cat([torch.isfinite(g[r]) for r in row_blocks(*g.shape)])
        return self._checked.clone()

    def open(self) -> Tensor:
        """[B, L] bool: checked tokens no finding has explained yet (what a gap detector reads)."""
        return self.checked & ~self.explained

    def valid(self) -> Tensor:
        """The tokens a gap detector reads: :meth:`open` (kept under its old name)."""
        return self.open()

    # -- the explanation map --------------------------------------------------------------------
    def mark(self, kind: str, mask: Tensor, explains: bool = True) -> None:
        """Record ``kind`` on the ``mask`` tokens (where no earlier finding did); ``explains``: they need no
        further gap-based finding."""
        self.token_kinds.masked_fill_(mask & (self.token_kinds < 0), KINDS.index(kind))
        if explains:
            self.explained |= mask

    @property
    def explained_rows(self) -> set[int]:
        """Rows whose every checked token is explained."""
        return set(explained_rows(self.explained, self.checked))

    @property
    def exclude(self) -> frozenset[int]:
        return frozenset(self.explained_rows)

    @property
    def gap_explained(self) -> bool:
        """Every checked token is explained."""
        return all_explained(self.explained, self.checked)

    def groups(self) -> list[tuple[str | None, Tensor]]:
        """``(name, rows [B] bool)`` per group of ``batch.groups`` in order of first appearance (a row without a
        group: :data:`NO_GROUP`); one ``(None, every row)`` when the batch has no groups."""
        g = self.batch.groups
        if g is None:
            return [(None, torch.ones(self.batch.size, dtype=torch.bool))]
        names = [NO_GROUP if x is None else x for x in g]
        return [(n, torch.tensor([x == n for x in names])) for n in dict.fromkeys(names)]

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


__all__ = ["Context", "NO_GROUP", "explained_rows", "all_explained", "meta_values"]
