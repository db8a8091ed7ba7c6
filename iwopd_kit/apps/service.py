"""The alignment check as one library call: a dump, or a run's directory of dumps, in; one result out.

:func:`check_dump` does what ``iwopd-kit check`` does: read the dump (any reader of
:mod:`iwopd_kit.formats`; a directory through its framework's layout, :mod:`iwopd_kit.formats.dirs`),
score the series it lacks with the models given (:func:`iwopd_kit.engines.rescore.rescore`), run
:func:`~iwopd_kit.alignment.check_alignment`, and keep the pooled and per-group mismatch metrics.
A file gives a :class:`~iwopd_kit.apps.check_result.CheckResult`; a directory a
:class:`~iwopd_kit.apps.check_result.DirCheckResult` (one CheckResult per file, one summary per step).
``to_dict()`` of either is the ``--json`` object (schema 2, :mod:`iwopd_kit.apps.check_result`). The
CLI only parses its arguments, calls this and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..alignment import Tolerances, check_alignment
from ..alignment.mismatch import batch_delta, metrics_from_delta
from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS, Batch, BatchError
from ..engines.rescore import device_error, rescore
from ..formats.dirs import Dump, dump_of, plan_directory
from .check_result import CheckResult, DirCheckResult, StepSummary, unchecked_of

READ_ERRORS: tuple[type[Exception], ...] = (BatchError, OSError, ValueError, RuntimeError)
"""What :func:`check_dump` raises for a file it cannot read, group or score (BatchError is a ValueError)."""


class _Progress:
    """``progress`` as given: None, a callable ``(rows, desc)``, or an object with ``step(rows, desc)`` and
    optionally ``start(total_rows, batch_rows)``, ``file(name)`` and ``close()``."""

    def __init__(self, progress: Any) -> None:
        self.p = progress

    def _call(self, name: str, *a: Any) -> None:
        fn = getattr(self.p, name, None)
        if fn is not None:
            fn(*a)

    def start(self, total: int, rows: int) -> None:
        self._call("start", total, rows)

    def file(self, name: str) -> None:
        self._call("file", name)

    def close(self) -> None:
        self._call("close")

    def step(self, n: int, desc: str | None = None) -> None:
        if callable(self.p) and not hasattr(self.p, "step"):
            self.p(n, desc)
        else:
            self._call("step", n, desc)


def _check_one(dump: Dump, opts: dict, bar: _Progress, models: dict) -> CheckResult:
    """Read, group, rescore and check one dump; raises :data:`READ_ERRORS` when it cannot."""
    batch, reader = dump.read(opts["allow_pickle"])
    if opts["group_by"] is not None:
        batch = batch.with_groups_from_meta(opts["group_by"])
    passes = int(not batch.has(STUDENT_LOGPROBS)) + int(not batch.has(TEACHER_LOGPROBS))
    bar.start(batch.size * (passes + 1), batch.size)
    r = rescore(batch, student=opts["student"], teacher=opts["teacher"], student_tokenizer=opts["student_tokenizer"],
                teacher_tokenizer=opts["teacher_tokenizer"], device=opts["device"], dtype=opts["dtype"],
                batch_size=opts["batch_size"], progress=bar.step, models=models)
    batch = r.batch
    report = check_alignment(batch, opts["tolerances"] or Tolerances(), student_tokenizer=r.student_tokenizer,
                             teacher_tokenizer=r.teacher_tokenizer)
    bar.step(batch.size, "checked")
    return CheckResult(path=dump.path, format=reader, batch=batch, report=report, metrics=dict(report.metrics or {}),
                       groups=dict(report.group_metrics), unchecked=unchecked_of(report),
                       provenance=r.provenance, notes=r.notes, name=dump.name, step=dump.step, rows=batch.size,
                       tokens=int(batch.valid().sum()), row_groups=batch.groups,
                       student_tokenizer=r.student_tokenizer, teacher_tokenizer=r.teacher_tokenizer)


def check_dump(path: str | Path, *, student: Any = None, teacher: Any = None, student_tokenizer: Any = None,
               teacher_tokenizer: Any = None, group_by: str | None = None, format: str = "auto",
               allow_pickle: bool = False, device: str = "cpu", dtype: str = "float32", batch_size: int = 32,
               tolerances: Tolerances | None = None, progress: Any = None,
               keep_batches: bool = False) -> CheckResult | DirCheckResult:
    """Check a dump file (-> :class:`CheckResult`) or every dump under a directory (-> :class:`DirCheckResult`).

    ``student`` / ``teacher``: a model directory or a loaded transformers model; they score the series
    the dump lacks (default: the bundled toy models, when the ids fit them) and give the tokenizers of
    the tokenizer and BOS/EOS checks. ``student_tokenizer`` / ``teacher_tokenizer``: a folder of
    tokenizer files or a tokenizer object, in place of the model's. ``group_by``: set ``batch.groups``
    from ``meta[b][group_by]`` (without it: the reader's groups, e.g. prime-rl's ``env_name``).
    ``format``: a reader's name (:data:`~iwopd_kit.formats.registry.FORMATS`) or ``"auto"`` (a
    directory: its framework's layout, :data:`~iwopd_kit.formats.registry.LAYOUTS`, else each file by
    its suffix and keys). ``allow_pickle`` runs code from pickles: only for files you trust.
    ``device`` / ``dtype`` / ``batch_size``: how a model directory scores (a loaded model scores as
    it is). ``tolerances``: the check's thresholds. ``progress``: a callable ``progress(rows, desc)``,
    or an object with ``step(rows, desc)`` and optionally ``start(total_rows, batch_rows)``,
    ``file(name)`` (before each file of a directory) and ``close()``. ``keep_batches``: keep each
    file's checked batch in a directory's results (they cost memory; a file's result always has it).

    A file that cannot be read, grouped or scored raises (:data:`READ_ERRORS`; the message names the
    file, row or model); in a directory it becomes that file's ``error`` (exit code 2) and the others
    are still checked. A bad ``device`` is a ValueError, a directory without a dump a BatchError.
    """
    error = device_error(device)
    if error is not None:
        raise ValueError(error)
    opts = dict(student=student, teacher=teacher, student_tokenizer=student_tokenizer,
                teacher_tokenizer=teacher_tokenizer, group_by=group_by, allow_pickle=allow_pickle, device=device,
                dtype=dtype, batch_size=batch_size, tolerances=tolerances)
    bar = _Progress(progress)
    try:
        if Path(path).is_dir():
            return _check_directory(Path(path), format, opts, bar, keep_batches)
        return _check_one(dump_of(path, format), opts, bar, {})
    finally:
        bar.close()


def _failed(dump: Dump, error: str) -> CheckResult:
    return CheckResult(path=dump.path, format=None, batch=None, report=None, name=dump.name, step=dump.step,
                       error=error)


def _step_summary(step: int | None, results: list[CheckResult], deltas: list[torch.Tensor]) -> StepSummary:
    s = StepSummary(step, files=[r.name for r in results])
    for r in results:
        errors, warnings = r.counts()
        s.rows, s.tokens = s.rows + r.rows, s.tokens + r.tokens
        s.errors, s.warnings = s.errors + errors, s.warnings + warnings
        s.exit_code = max(s.exit_code, r.exit_code)
    s.kinds = sorted({f.kind for r in results for f in r.findings})
    flat = torch.cat(deltas) if deltas else torch.zeros(0, dtype=torch.float64)
    s.metrics = metrics_from_delta(flat) if flat.numel() else {}
    return s


def _delta(batch: Batch) -> torch.Tensor | None:
    """The step's share of Δ: the tokens the report's metrics pool (both series finite, loss-masked)."""
    if not (batch.has(ROLLOUT_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        return None
    return batch_delta(batch)


def _check_directory(root: Path, format: str, opts: dict, bar: _Progress, keep_batches: bool) -> DirCheckResult:
    """Every dump :func:`~iwopd_kit.formats.dirs.plan_directory` finds, one step at a time (a step's Δ
    is pooled for its summary and then dropped); models are loaded once for all files."""
    plan = plan_directory(root, format)
    models: dict = {}
    results: list[CheckResult] = []
    steps: list[StepSummary] = []
    for step in plan.steps:
        in_step, deltas = [], []
        for dump in (d for d in plan.dumps if d.step == step):
            bar.file(dump.name)
            try:
                r = _check_one(dump, opts, _Progress(None), models)
            except READ_ERRORS as e:
                r = _failed(dump, str(e))
            if r.batch is not None:
                d = _delta(r.batch)
                if d is not None and d.numel():
                    deltas.append(d)
                if not keep_batches:
                    r.batch = None
            in_step.append(r)
        steps.append(_step_summary(step, in_step, deltas))
        results += in_step
    return DirCheckResult(path=root, files=results, steps=steps, layouts=plan.layouts, notes=list(plan.notes))


__all__ = ["CheckResult", "DirCheckResult", "READ_ERRORS", "check_dump"]
