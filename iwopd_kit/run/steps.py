"""Where the steps of a run are: every dump file under RUN that names a step, grouped by step number.

A file belongs to step N when its name, or the name of a folder between it and RUN, carries a step
number (``step_N``, ``step-N``, ``stepN``, any case; the file's own name first, then its folders
from the nearest up). The layouts this finds:

- prime-rl's token export: ``token_exports/step_N/rank_R.jsonl``, one file per rank; the trainer
  touches ``step_N/STABLE`` once every rank has flushed (``TokenExporter.mark_stable``);
- the kit's own JSONL, one file per step named with its step (``rollouts_step_N.jsonl``, ``step_N.jsonl``);
- NeMo-RL's ``train_data_step{N}.jsonl`` (its ``grpo.py`` names the file after ``total_steps + 1``).

A step is complete when its ``STABLE`` marker exists (a folder ``step_N`` inside ``token_exports``),
else when none of its files changed for ``settle_s`` seconds. Files with a reader's suffix but no step
number are listed, with that reason, as not read; nothing under the store, a folder named ``iwopd_scan`` or a hidden folder is looked at.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..formats.registry import SUFFIXES

STEP_RE = re.compile(r"step[_-]?(\d+)", re.IGNORECASE)
RANK_RE = re.compile(r"rank[_-]?(\d+)", re.IGNORECASE)
MARKER = "STABLE"
STORE_DIRNAME = "iwopd_scan"
"""The store's default folder name (``RUN/iwopd_scan``): never searched for dumps."""


@dataclass(frozen=True)
class StepFiles:
    """One step of a run: its number, its files (natural order), and the marker that says it is complete."""

    step: int
    files: tuple[Path, ...]
    marker: Path | None = None          # prime-rl's STABLE (None: the layout has no marker)

    def fingerprint(self, run: Path) -> dict:
        """``{"files": {relative path: [size, mtime_ns]}, "marker": bool}``: what a re-scan compares."""
        files = {}
        for f in self.files:
            st = f.stat()
            files[rel(f, run)] = [st.st_size, st.st_mtime_ns]
        return {"files": files, "marker": self.marker is not None and self.marker.exists()}

    def complete(self, settle_s: float, now: float | None = None) -> str | None:
        """None when the step can be read; else why not yet."""
        if self.marker is not None:
            return None if self.marker.exists() else (f"no {MARKER} marker in {self.marker.parent.name} yet (prime-rl "
                                                      "touches it once every rank has flushed)")
        if settle_s <= 0:
            return None
        age = (time.time() if now is None else now) - max(f.stat().st_mtime for f in self.files)
        return None if age >= settle_s else f"modified {age:.0f} s ago (a step is read once unchanged for {settle_s:g} s)"


def rel(path: Path, run: Path) -> str:
    """``path`` relative to ``run``, with forward slashes (the ``file`` column of the store)."""
    return Path(path).relative_to(run).as_posix()


def step_number(path: Path, run: Path) -> int | None:
    """The step a file belongs to: the last step number in its name, else in the nearest folder's name."""
    parts = Path(path).relative_to(run).parts
    names = [Path(parts[-1]).stem, *reversed(parts[:-1])]
    for name in names:
        found = STEP_RE.findall(name)
        if found:
            return int(found[-1])
    return None


def rank_number(path: Path) -> int | None:
    found = RANK_RE.findall(Path(path).stem)
    return int(found[-1]) if found else None


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _marker(files: list[Path]) -> Path | None:
    dirs = {f.parent for f in files}
    for d in sorted(dirs):
        if re.fullmatch(r"step_\d+", d.name) and d.parent.name == "token_exports":
            return d / MARKER
    return None


def find_steps(run: str | Path, exclude: str | Path | None = None) -> tuple[list[StepFiles], dict[str, str]]:
    """The steps under ``run`` (sorted by step) and ``{relative path: why not read}`` for dump files without a step.

    ``exclude``: a folder to leave out (the store, when it lives inside the run).
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a directory; expected a run folder (e.g. prime-rl's output_dir)")
    skip = Path(exclude).resolve() if exclude is not None else None
    by_step: dict[int, list[Path]] = {}
    unread: dict[str, str] = {}
    for p in run.rglob("*"):
        r = p.relative_to(run)
        if any(part.startswith(".") or part == STORE_DIRNAME for part in r.parts[:-1]) or not p.is_file():
            continue
        if skip is not None and (p.resolve() == skip or skip in p.resolve().parents):
            continue
        if p.suffix.lower() not in SUFFIXES:
            continue
        n = step_number(p, run)
        if n is None:
            unread[r.as_posix()] = "no step number in its name or its folders' names (expected step_N / stepN)"
            continue
        by_step.setdefault(n, []).append(p)
    steps = [StepFiles(n, tuple(sorted(fs, key=_natural)), _marker(fs)) for n, fs in sorted(by_step.items())]
    return steps, dict(sorted(unread.items()))


__all__ = ["StepFiles", "find_steps", "step_number", "rank_number", "rel", "MARKER"]
