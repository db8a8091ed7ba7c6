"""Where the steps of a run are: the dumps the readers' layout table finds under RUN, grouped by step.

The dumps and their steps come from :func:`iwopd_kit.formats.dirs.plan_directory` (the table
:data:`iwopd_kit.formats.registry.LAYOUTS`): prime-rl's ``token_exports/step_N/rank_R.jsonl`` (one file
per rank), NeMo-RL's ``train_data_step{N}.jsonl``, slime's ``data_{id}.pt`` joined with
``train_{id}.pt``, the kit's TRL callback dumps and its own JSONL per step; any other dump file takes its
step from a ``step_N`` / ``stepN`` in its path. A dump whose path names no step is listed as not read.

A step is complete when its layout's marker exists in each of its folders (prime-rl's ``STABLE``,
touched once every rank has flushed), else when none of its files changed for ``settle_s`` seconds.
Nothing under the store, a folder named ``iwopd_scan`` or a hidden folder is looked at.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..batch import BatchError
from ..formats.dirs import Dump, plan_directory
from ..formats.registry import LAYOUTS

RANK_RE = re.compile(r"rank[_-]?(\d+)", re.IGNORECASE)
STORE_DIRNAME = "iwopd_scan"
"""The store's default folder name (``RUN/iwopd_scan``): never searched for dumps."""
_MARKERS = {lay.name: lay.marker for lay in LAYOUTS if lay.marker}


@dataclass(frozen=True)
class StepFiles:
    """One step of a run: its number, its dumps (natural order) and the markers that say it is complete."""

    step: int
    dumps: tuple[Dump, ...]
    markers: tuple[Path, ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the step reads (dumps and the companions joined to them)."""
        return tuple(p for d in self.dumps for p in (d.path, d.companion) if p is not None)

    def fingerprint(self, run: Path) -> dict:
        """``{"files": {relative path: [size, mtime_ns]}, "marker": bool}``: what a re-scan compares."""
        files = {}
        for f in self.files:
            st = f.stat()
            files[rel(f, run)] = [st.st_size, st.st_mtime_ns]
        return {"files": files, "marker": all(m.exists() for m in self.markers) if self.markers else None}

    def complete(self, settle_s: float, now: float | None = None) -> str | None:
        """None when the step can be read; else why not yet."""
        missing = [m for m in self.markers if not m.exists()]
        if missing:
            return (f"no {missing[0].name} marker in {missing[0].parent.name} yet (the trainer writes it once every "
                    "rank has flushed)")
        if self.markers or settle_s <= 0:
            return None
        age = (time.time() if now is None else now) - max(f.stat().st_mtime for f in self.files)
        return None if age >= settle_s else f"modified {age:.0f} s ago (a step is read once unchanged for {settle_s:g} s)"


def rel(path: Path, run: Path) -> str:
    """``path`` relative to ``run``, with forward slashes (the ``file`` column of the store)."""
    return Path(path).relative_to(run).as_posix()


def rank_number(path: str | Path) -> int | None:
    found = RANK_RE.findall(Path(path).stem)
    return int(found[-1]) if found else None


def _skipped(path: Path, run: Path, store: Path | None) -> bool:
    parts = path.relative_to(run).parts[:-1]
    if any(p.startswith(".") or p == STORE_DIRNAME for p in parts):
        return True
    return store is not None and store in path.resolve().parents


def find_steps(run: str | Path, exclude: str | Path | None = None,
               format: str = "auto") -> tuple[list[StepFiles], dict[str, str]]:
    """The steps under ``run`` (sorted by step) and ``{relative path: why not read}`` for dumps without a step.

    ``exclude``: a folder to leave out (the store, when it lives elsewhere); ``format``: read every file of
    that reader's suffixes with it (default: the layouts, then each file's suffix and keys).
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a directory; expected a run folder (e.g. prime-rl's output_dir)")
    try:
        plan = plan_directory(run, format)
    except BatchError:                                   # no dump file at all (yet)
        return [], {}
    store = Path(exclude).resolve() if exclude is not None else None
    by_step: dict[int, list[Dump]] = {}
    unread: dict[str, str] = {}
    for d in plan.dumps:
        if _skipped(d.path, run, store):
            continue
        if d.step is None:
            unread[rel(d.path, run)] = "no step number in its path (expected step_N / stepN, or a framework's layout)"
            continue
        by_step.setdefault(d.step, []).append(d)
    steps = []
    for n, dumps in sorted(by_step.items()):
        markers = tuple(sorted({d.path.parent / _MARKERS[d.layout] for d in dumps if d.layout in _MARKERS}))
        steps.append(StepFiles(n, tuple(dumps), markers))
    return steps, dict(sorted(unread.items()))


__all__ = ["StepFiles", "find_steps", "rank_number", "rel", "STORE_DIRNAME"]
