"""A directory of dumps -> the dumps in it, each with its reader and its training step.

``iwopd-kit check DIR`` (and :func:`iwopd_kit.check_dump` on a directory) reads what
:func:`plan_directory` finds. The frameworks' on-disk layouts live in one table,
:data:`iwopd_kit.formats.registry.LAYOUTS` (prime-rl's ``token_exports/step_N/rank_R.jsonl``,
NeMo-RL's ``train_data_step{N}.jsonl``, slime's ``data_{id}.pt`` + ``train_{id}.pt``, the kit's TRL
callback dumps and its own JSONL per step): a file goes to the first active layout whose pattern
matches its path (and, for a layout that ``confirm``\\ s, whose reader recognises its first record).
Every other file with a reader's suffix is read on its own by its suffix and keys (``format="auto"``),
its step taken from a ``step_N`` / ``stepN`` in its path when there is one. With a ``format``
given, every file with that reader's suffixes is read with it.

Paths are matched relative to the parent of the directory given, so checking a run's export root,
its ``token_exports/`` or one ``step_N/`` finds the same steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..batch import Batch, BatchError
from . import files
from .registry import BY_NAME, FORMATS, LAYOUTS, SUFFIXES, Layout, read_dump

_STEP = re.compile(r"(?:^|[/_.-])step_?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Dump:
    """One dump of a directory: ``name`` (its path relative to the directory, what the tables show),
    ``step`` (None when its path names none), the ``layout`` that claimed it (None: read on its own),
    the ``format`` it is read with (the layout's reader when its first record was confirmed, else
    ``"auto"``: by suffix and keys) and the ``companion`` its layout joins to it (None when none)."""

    path: Path
    name: str
    step: int | None = None
    layout: str | None = None
    format: str = "auto"
    companion: Path | None = None

    def read(self, allow_pickle: bool = False) -> tuple[Batch, str]:
        """``(batch, reader name)``; a :class:`~iwopd_kit.batch.BatchError` naming the file when it does not read."""
        lay = _BY_NAME.get(self.layout or "")
        if lay is None or lay.read is None or self.companion is None:
            return read_dump(self.path, self.format, allow_pickle)
        try:
            return lay.read(self.path, self.companion, allow_pickle), lay.reader
        except BatchError as e:
            msg = str(e)
            raise BatchError(msg if str(self.path) in msg else f"{self.path}: {msg}") from None
        except (TypeError, ValueError, RuntimeError, AttributeError, KeyError) as e:
            raise BatchError(f"{self.path} (+ {self.companion.name}): malformed {lay.name} dump "
                             f"({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class DumpPlan:
    """What a directory holds: its ``dumps`` in (step, natural path) order (dumps without a step
    last), the ``layouts`` that claimed any (table order), and ``notes`` (a prime-rl step without its
    ``STABLE`` marker, a pending layout read file by file)."""

    root: Path
    dumps: list[Dump]
    layouts: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[int | None]:
        """The distinct steps, in order."""
        return list(dict.fromkeys(d.step for d in self.dumps))


_BY_NAME: dict[str, Layout] = {lay.name: lay for lay in LAYOUTS}


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _generic_step(rel: str) -> int | None:
    found = _STEP.findall(rel)
    return int(found[-1]) if found else None


def _confirmed(lay: Layout, path: Path) -> bool:
    """The reader recognises the first record; a first line that does not parse stays the layout's (its
    reader then says what is wrong with it, e.g. a step still being written)."""
    reader = BY_NAME[lay.reader]
    if not lay.confirm or reader.container != "jsonl":
        return True
    first = files.first_jsonl_record(path)
    return first is None or bool(reader.sniff(first))


def _claim(lay: Layout, path: Path, rel: str, name: str, taken: set[Path]) -> Dump | None:
    m = re.search(lay.pattern, rel)
    if m is None or not _confirmed(lay, path):
        return None
    companion = None
    if lay.companion is not None:
        c = path.parent / lay.companion.format(**m.groupdict())
        if c.is_file() and c not in taken:
            companion = c
    step = m.groupdict().get("step")
    fmt = lay.reader if lay.confirm else "auto"       # a name alone does not pin the reader: the keys decide
    return Dump(path, name, int(step) if step is not None else None, lay.name, fmt, companion)


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def plan_directory(directory: str | Path, format: str = "auto") -> DumpPlan:
    """The dumps under ``directory`` (every file with a reader's suffix, in it or below), each with its
    step, layout and reader; ``format`` other than ``"auto"`` reads every file of that reader's suffixes
    with it. A :class:`~iwopd_kit.batch.BatchError` when it is not a directory or holds no dump."""
    root = Path(directory)
    if not root.is_dir():
        raise BatchError(f"{root}: not a directory")
    if format not in FORMATS:
        raise BatchError(f"unknown format {format!r}; expected one of {FORMATS}")
    suffixes = SUFFIXES if format == "auto" else BY_NAME[format].suffixes
    base = root.resolve().parent
    found = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes),
                   key=lambda p: _natural(str(p)))
    if not found:
        raise BatchError(f"{root}: no dump files (suffixes {list(suffixes)}) in it or below")
    dumps: list[Dump] = []
    taken: set[Path] = set()
    used: list[str] = []
    notes: list[str] = []
    if format == "auto":
        for lay in LAYOUTS:
            matching = [p for p in found if p not in taken and re.search(lay.pattern, _rel(p.resolve(), base))]
            if not matching:
                continue
            if not lay.active:
                notes.append(f"{len(matching)} file(s) look like {lay.help}; this version has no {lay.reader!r} reader, "
                             "so each is read on its own by its suffix and keys")
                continue
            claimed = [d for p in matching if (d := _claim(lay, p, _rel(p.resolve(), base), _rel(p, root), taken))]
            for d in claimed:
                taken.add(d.path)
                if d.companion is not None:
                    taken.add(d.companion)
            dumps += claimed
            if claimed:
                used.append(lay.name)
                notes += _missing_markers(lay, claimed, root)
    for p in found:
        if p not in taken:
            dumps.append(Dump(p, _rel(p, root), _generic_step(_rel(p.resolve(), base)), None, format))
    dumps.sort(key=lambda d: (d.step is None, d.step or 0, _natural(d.name)))
    return DumpPlan(root, dumps, tuple(used), notes)


def _missing_markers(lay: Layout, claimed: list[Dump], root: Path) -> list[str]:
    if lay.marker is None:
        return []
    dirs = dict.fromkeys(d.path.parent for d in claimed)
    out = []
    for d in dirs:
        if not (d / lay.marker).exists():
            where = _rel(d, root) if d != root else d.name
            out.append(f"{where}: no {lay.marker} marker: the trainer may still be writing this step (checked anyway)")
    return out


def dump_of(path: str | Path, format: str = "auto") -> Dump:
    """One file as a :class:`Dump`: its step and layout when a layout's pattern names them."""
    path = files.existing(path)
    rel = _rel(path.resolve(), path.resolve().parent.parent)
    if format == "auto":
        for lay in LAYOUTS:
            if lay.active and (d := _claim(lay, path, rel, path.name, set())) is not None:
                return d
    return Dump(path, path.name, _generic_step(rel), None, format)


__all__ = ["Dump", "DumpPlan", "dump_of", "plan_directory"]
