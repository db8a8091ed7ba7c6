"""What :func:`iwopd_kit.check_dump` returns: one dump's check, or a directory's (per file, per step).

``CheckResult.to_dict()`` is the ``iwopd-kit check --json`` object of a file, schema 2::

    {"schema": 2, "path", "format" (the reader's name), "step", "rows", "tokens", "ok", "exit_code",
     "findings": [{kind, row, position, severity, message, group (when the row has one)}],
     "metrics": {"mismatch/...": value}, "groups": {group: {metric: value}},
     "unchecked": {kind: reason}, "provenance": {series: "dump" | "rescored with <model>, <dtype>"},
     "notes": [...]}            (+ "error" for a file of a directory that did not read: exit_code 2)

``DirCheckResult.to_dict()``: ``{"schema": 2, "path", "layouts", "notes", "exit_code",
"steps": {step: {files, rows, tokens, errors, warnings, metrics, kinds, exit_code}},
"files": {name: <a file's object>}}`` (a step key is the step number as a string, ``"-"`` for
files whose path names none). Non-finite metric values are written ``null`` (strict JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..alignment.core import AlignmentReport
from ..batch import Batch
from ..views.mismatch import metric_text

SCHEMA = 2
"""Version of the ``check --json`` object (2: per-group metrics, provenance, the reader, steps)."""

FILE_HEADER = ["file", "rows", "tokens", "errors", "warnings", "k3_kl", "token_mult_prob_error", "kinds", "exit"]
"""The per-file table of a directory (a ``step`` column after ``file`` when some file has a step)."""
STEP_HEADER = ["step", "files", "rows", "tokens", "errors", "warnings", "k3_kl", "token_mult_prob_error", "kinds",
               "exit"]


def _json_metrics(m: dict | None) -> dict:
    return {k: (_json_metrics(v) if isinstance(v, dict) else
                None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in (m or {}).items()}


def _cell(x: float | None) -> str | None:
    """A metric cell as the single-file table writes it; None (drawn —) when not computed."""
    return None if x is None else metric_text(x)


def unchecked_of(report: AlignmentReport) -> dict[str, str]:
    """``{kind: reason}`` for the classes the report could not check."""
    if isinstance(report.unchecked, dict):
        return dict(report.unchecked)
    reasons = report.unchecked_reasons
    return {k: reasons.get(k, "inputs missing") for k in report.unchecked}


@dataclass
class CheckResult:
    """One dump's check. ``batch``: what was checked, scored series filled (None for a file of a
    directory unless ``keep_batches``); ``report``: the :class:`AlignmentReport`; ``metrics``: its pooled
    mismatch metrics; ``groups``: its per-group metrics (``report.group_metrics``); ``unchecked``:
    ``{kind: reason}``; ``provenance``: ``{series: where it came from}`` for each series the batch has;
    ``notes``: what the check did (which model scored what, what it could not). ``name`` / ``step``:
    the file's name in its directory and its training step (None when its path names none).
    ``error``: why a file of a directory did not read (``report`` None, ``exit_code`` 2)."""

    path: Path
    format: str | None
    batch: Batch | None
    report: AlignmentReport | None
    metrics: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    name: str = ""
    step: int | None = None
    rows: int = 0
    tokens: int = 0
    error: str | None = None
    row_groups: list[str | None] | None = field(default=None, repr=False)
    student_tokenizer: Any = field(default=None, repr=False, compare=False)
    teacher_tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Read, and no error-level finding."""
        return self.report is not None and self.report.ok

    @property
    def exit_code(self) -> int:
        """``iwopd-kit check``'s code: 0 clean, 1 an error-level finding, 2 unreadable."""
        return 2 if self.report is None else 0 if self.report.ok else 1

    @property
    def findings(self) -> list:
        return [] if self.report is None else list(self.report.findings)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the views decode with: the student's, else the teacher's (None without either)."""
        return self.student_tokenizer if self.student_tokenizer is not None else self.teacher_tokenizer

    def finding_dicts(self) -> list[dict]:
        """The findings as dicts, each with its row's ``group`` when there is one."""
        out = []
        for f in self.findings:
            d = f.to_dict()
            g = d.pop("group", None)
            if g is None and self.row_groups is not None and f.row is not None and 0 <= f.row < len(self.row_groups):
                g = self.row_groups[f.row]
            if g is not None:
                d["group"] = g
            out.append(d)
        return out

    def to_dict(self) -> dict:
        """The ``--json`` object of a file (module docstring); ``json.dumps`` of it is strict JSON."""
        obj = {"schema": SCHEMA, "path": str(self.path), "format": self.format, "step": self.step, "rows": self.rows,
               "tokens": self.tokens, "ok": self.ok, "exit_code": self.exit_code, "findings": self.finding_dicts(),
               "metrics": _json_metrics(self.metrics), "groups": _json_metrics(self.groups),
               "unchecked": dict(self.unchecked), "provenance": dict(self.provenance), "notes": list(self.notes)}
        if self.error is not None:
            obj["error"] = self.error
        return obj

    def counts(self) -> tuple[int, int]:
        """``(errors, warnings)`` among the findings."""
        errors = sum(f.severity == "error" for f in self.findings)
        return errors, sum(f.severity == "warning" for f in self.findings)

    def table_row(self, with_step: bool = False) -> list:
        """This file's line of :data:`FILE_HEADER` (what ``iwopd-kit check DIR`` prints)."""
        head = [self.name or str(self.path)] + (["-" if self.step is None else self.step] if with_step else [])
        if self.report is None:
            return head + ["-", "-", "-", "-", None, None, "unreadable", self.exit_code]
        errors, warnings = self.counts()
        kinds = sorted({f.kind for f in self.findings})
        return head + [self.rows, self.tokens, errors, warnings, _cell(self.metrics.get("mismatch/k3_kl")),
                       _cell(self.metrics.get("mismatch/token_mult_prob_error")), ", ".join(kinds) or "-",
                       self.exit_code]


@dataclass
class StepSummary:
    """One training step of a directory: its files, and its mismatch metrics pooled over all their tokens."""

    step: int | None
    files: list[str] = field(default_factory=list)
    rows: int = 0
    tokens: int = 0
    errors: int = 0
    warnings: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    exit_code: int = 0

    def to_dict(self) -> dict:
        return {"files": list(self.files), "rows": self.rows, "tokens": self.tokens, "errors": self.errors,
                "warnings": self.warnings, "metrics": _json_metrics(self.metrics), "kinds": list(self.kinds),
                "exit_code": self.exit_code}

    def table_row(self) -> list:
        return ["-" if self.step is None else self.step, len(self.files), self.rows, self.tokens, self.errors,
                self.warnings, _cell(self.metrics.get("mismatch/k3_kl")),
                _cell(self.metrics.get("mismatch/token_mult_prob_error")), ", ".join(self.kinds) or "-", self.exit_code]


@dataclass
class DirCheckResult:
    """A directory's check: ``files`` (one :class:`CheckResult` per dump, in (step, path) order),
    ``steps`` (one :class:`StepSummary` per step, same order), the ``layouts`` that claimed files
    (:data:`iwopd_kit.formats.registry.LAYOUTS`; none: each file read by its suffix and keys) and
    ``notes`` about the directory (a step without its finished-marker, a layout without a reader)."""

    path: Path
    files: list[CheckResult]
    steps: list[StepSummary] = field(default_factory=list)
    layouts: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def exit_code(self) -> int:
        """The worst file's code (2 outranks 1)."""
        return max((f.exit_code for f in self.files), default=0)

    def __getitem__(self, name: str) -> CheckResult:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"{name!r} is not a file of {self.path}; its files: {[f.name for f in self.files]}")

    @property
    def has_steps(self) -> bool:
        return any(f.step is not None for f in self.files)

    def file_table(self) -> tuple[list[str], list[list]]:
        """``(header, rows)``: one line per file (``iwopd-kit check DIR``'s table)."""
        with_step = self.has_steps
        header = FILE_HEADER[:1] + (["step"] if with_step else []) + FILE_HEADER[1:]
        return header, [f.table_row(with_step) for f in self.files]

    def step_table(self) -> tuple[list[str], list[list]]:
        """``(header, rows)``: one line per step, its metrics pooled over the step's files."""
        return list(STEP_HEADER), [s.table_row() for s in self.steps]

    def file_notes(self) -> dict[str, list[str]]:
        """Each distinct note of the files, with the files it came from (once per note, not per rank and step)."""
        noted: dict[str, list[str]] = {}
        for f in self.files:
            for note in f.notes:
                noted.setdefault(note, []).append(f.name)
        return noted

    def to_dict(self) -> dict:
        """The ``--json`` object of a directory (module docstring)."""
        return {"schema": SCHEMA, "path": str(self.path), "layouts": list(self.layouts), "notes": list(self.notes),
                "exit_code": self.exit_code,
                "steps": {("-" if s.step is None else str(s.step)): s.to_dict() for s in self.steps},
                "files": {f.name: f.to_dict() for f in self.files}}


__all__ = ["CheckResult", "DirCheckResult", "FILE_HEADER", "SCHEMA", "STEP_HEADER", "StepSummary", "unchecked_of"]
