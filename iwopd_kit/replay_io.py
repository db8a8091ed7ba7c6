"""Where a replayed row comes from, and the ``iwopd-kit replay`` command.

``iwopd-kit replay DUMP_OR_RUN --step S --row R --model DIR`` reads the row's fixed tokens from

- a dump file (any layout :func:`iwopd_kit.formats.load_any` reads): ``--row`` indexes its rows;
- a run directory: ``--step S`` picks the step's files, found by the step number in a file's name
  or, failing that, in the nearest folder's name (``step_N``, ``step-N``, ``stepN``): prime-rl's
  ``token_exports/step_S/rank_*.jsonl``, NeMo-RL's ``train_data_step{S}.jsonl``, the kit's JSONL
  named with its step; ``--row`` indexes the rows of the step in file order (natural order:
  rank_2 before rank_10), as the step's concatenated batch has them;
- a store written by ``iwopd-kit scan``: not readable by this install (a clear error says so).

and replays it (:func:`iwopd_kit.replay.replay_row`). Exit code: 0 when the engines and the stored
series agree, 1 when something parts, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .batch import Batch, BatchError
from .formats.load import load_any
from .formats.registry import SUFFIXES
from .replay import DTYPES, ReplayResult, replay_row
from .rescore import device_error

STEP_RE = re.compile(r"step[_-]?(\d+)", re.IGNORECASE)


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def step_number(path: Path, root: Path | None = None) -> int | None:
    """The step a file belongs to: the last step number in its name, else in the nearest folder's name
    (folders up to ``root``)."""
    path = Path(path)
    parts = path.relative_to(root).parts if root is not None else path.parts
    for name in [Path(parts[-1]).stem, *reversed(parts[:-1])]:
        found = STEP_RE.findall(name)
        if found:
            return int(found[-1])
    return None


def is_store(path: Path) -> bool:
    """A directory ``iwopd-kit scan`` wrote (its ``manifest.json`` beside a ``tokens/`` dataset)."""
    return (path / "manifest.json").is_file() and (path / "tokens").is_dir()


def step_files(run: Path) -> dict[int, list[Path]]:
    """The dump files under ``run`` by step number (each list in natural order); hidden folders left out."""
    by_step: dict[int, list[Path]] = {}
    for p in run.rglob("*"):
        rel = p.relative_to(run)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file() or p.suffix.lower() not in SUFFIXES:
            continue
        n = step_number(p, run)
        if n is not None:
            by_step.setdefault(n, []).append(p)
    return {n: sorted(fs, key=_natural) for n, fs in sorted(by_step.items())}


def load_row(path: str | Path, row: int, step: int | None = None, format: str = "auto",
             allow_pickle: bool = False) -> tuple[Batch, int, str]:
    """``(batch, r, where)``: the batch of the file that holds the row, its index there, and a description.

    ``path``: a dump file (``row`` indexes its rows; ``step``, when given, must be the one its path names)
    or a run directory (``step`` required; ``row`` indexes the step's rows over its files in order).
    Errors (:class:`BatchError`) name the file, the step and the rows there are.
    """
    path = Path(path)
    if row < 0:
        raise BatchError(f"--row must be >= 0, got {row}")
    if not path.exists():
        raise BatchError(f"{path}: no such file or directory")
    if path.is_file():
        named = step_number(path)
        if step is not None and named is not None and named != step:
            raise BatchError(f"{path} is step {named} (from its path), not step {step}; pass the run directory to "
                             "pick a step, or drop --step")
        batch = load_any(path, format, allow_pickle=allow_pickle)
        if row >= batch.size:
            raise BatchError(f"{path}: row {row} is out of range: the file has {batch.size} rows (0..{batch.size - 1})")
        return batch, row, f"{path} row {row}"
    if is_store(path):
        raise BatchError(f"{path} is a store of iwopd-kit scan: STORE input needs iwopd-kit scan's store "
                         "(iwopd_kit.run), which this install does not have; pass the run directory and --step instead")
    steps = step_files(path)
    if not steps:
        raise BatchError(f"{path}: no dump file with a step number in its name or folders (step_N, stepN; suffixes "
                         f"{list(SUFFIXES)}); pass a dump file instead")
    if step is None:
        raise BatchError(f"{path} is a run directory: pass --step (its steps: {_steps_text(steps)})")
    if step not in steps:
        raise BatchError(f"{path}: no step {step} (its steps: {_steps_text(steps)})")
    seen = 0
    for f in steps[step]:
        batch = load_any(f, format, allow_pickle=allow_pickle)
        if row < seen + batch.size:
            r = row - seen
            return batch, r, f"{f} row {r} (step {step} row {row})"
        seen += batch.size
    raise BatchError(f"{path}: step {step} has {seen} rows in {len(steps[step])} file(s) (0..{seen - 1}); row {row} is "
                     "out of range")


def _steps_text(steps: dict[int, list[Path]]) -> str:
    keys = list(steps)
    return ", ".join(map(str, keys)) if len(keys) <= 12 else f"{keys[0]}..{keys[-1]} ({len(keys)} steps)"


# ------------------------------------------------------------------------------------------- the command
def add_replay_command(sub, input_args) -> None:
    """Register ``iwopd-kit replay`` on the CLI's subparsers; ``input_args`` adds ``--format`` / ``--allow-pickle``."""
    r = sub.add_parser("replay", help="replay one row on vLLM and transformers: the first position where the "
                                       "engines and the stored series part, and which side moved (exit 1 if any)")
    r.add_argument("path", metavar="DUMP_OR_RUN", help="a dump file, or a run directory (with --step)")
    r.add_argument("--step", type=int, help="the step of a run directory (prime-rl step_S, NeMo-RL train_data_stepS)")
    r.add_argument("--row", type=int, required=True, help="the row: in the file, or in the step's files in order")
    r.add_argument("--model", required=True, metavar="DIR", help="the local model dir the row was sampled and scored with")
    r.add_argument("--dtype", default="float32", choices=DTYPES, help="vLLM's dtype (default float32)")
    r.add_argument("--trainer-dtype", default="float32", choices=DTYPES, help="transformers' dtype (default float32)")
    r.add_argument("--device", default="cpu", help="device of the transformers replay (default cpu; e.g. cuda:0)")
    r.add_argument("--max-model-len", type=int, help="vLLM's max_model_len (default: a power of two >= the row's length)")
    r.add_argument("--json", metavar="OUT", help="write the per-token table and the verdict as JSON")
    input_args(r)
    r.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """``iwopd-kit replay``: print the table and the verdict; 0 agree, 1 something parts, 2 bad input."""
    error = device_error(args.device)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        batch, r, where = load_row(args.path, args.row, args.step, args.format, args.allow_pickle)
        result = replay_row(batch, r, args.model, dtype=args.dtype, trainer_dtype=args.trainer_dtype,
                            device=args.device, max_model_len=args.max_model_len, source=where)
    except (BatchError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_header(result))
    print(result)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
        except OSError as e:
            print(f"error: cannot write {args.json} ({e})", file=sys.stderr)
            return 2
    return 0 if result.cause == "agree" else 1


def _header(result: ReplayResult) -> str:
    return (f"{result.source}: {len(result.token_ids)} completion tokens; vLLM {result.dtype} vs transformers "
            f"{result.trainer_dtype} on {result.device} ({result.model_dir}); tolerance {result.tolerance_name} = "
            f"{result.tolerance:g}\n")


__all__ = ["add_replay_command", "is_store", "load_row", "run_replay", "step_files", "step_number"]
