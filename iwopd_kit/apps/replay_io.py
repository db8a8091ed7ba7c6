"""Where a replayed row comes from, and the ``iwopd-kit replay`` command.

``iwopd-kit replay DUMP_OR_RUN --step S --row R --model DIR`` reads the row's fixed tokens from

- a dump file (any layout the readers know; a slime rollout dump is joined with its train dump as
  :func:`iwopd_kit.formats.dirs.dump_of` finds it): ``--row`` indexes its rows;
- a run directory: ``--step S`` picks the step's dumps as ``iwopd-kit scan`` finds them
  (:func:`iwopd_kit.run.steps.find_steps`: prime-rl's ``token_exports/step_S/rank_*.jsonl``, NeMo-RL's
  ``train_data_step{S}.jsonl``, the kit's JSONL named with its step, ...); ``--row`` indexes the rows of the
  step's batch, its dumps read and concatenated in order (:func:`iwopd_kit.run.batches.read_step`), so it
  is the store's ``step_row``;
- a store written by ``iwopd-kit scan``: ``--step S --row R`` is the store's ``(step, step_row)``; its
  ``rows`` table names the file and the file's own row, read again from the run the store was made from
  (``manifest.json``'s ``run``, else the store's parent folder), with the store's ``format`` and
  ``allow_pickle``; a run that changed since the scan is an error.

and replays it (:func:`iwopd_kit.apps.replay.replay_row`). Exit code: 0 when the engines and the stored
series agree, 1 when something parts, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..batch import Batch, BatchError
from ..engines.rescore import device_error
from ..formats.dirs import dump_of
from ..run.batches import read_step
from ..run.steps import find_steps
from .replay import DTYPES, ReplayResult, replay_row


def is_store(path: Path) -> bool:
    """A directory ``iwopd-kit scan`` wrote (its ``manifest.json`` beside ``steps.parquet`` or ``tokens/``)."""
    return (path / "manifest.json").is_file() and ((path / "steps.parquet").is_file() or (path / "tokens").is_dir())


def load_row(path: str | Path, row: int, step: int | None = None, format: str = "auto",
             allow_pickle: bool = False) -> tuple[Batch, int, str]:
    """``(batch, r, where)``: a batch that holds the row, its index there, and where it came from.

    ``path``: a dump file (``row`` indexes its rows; ``step``, when given, must be the one its path names),
    a run directory (``step`` required; ``row`` indexes the step's concatenated batch) or a scan store
    (``step`` and ``row`` = the store's ``step`` and ``step_row``). Errors (:class:`BatchError`) name the
    file, the step and the rows there are.
    """
    path = Path(path)
    if row < 0:
        raise BatchError(f"--row must be >= 0, got {row}")
    if not path.exists():
        raise BatchError(f"{path}: no such file or directory")
    if path.is_file():
        dump = dump_of(path, format)
        if step is not None and dump.step is not None and dump.step != step:
            raise BatchError(f"{path} is step {dump.step} (from its path), not step {step}; pass the run directory to "
                             "pick a step, or drop --step")
        batch, _ = dump.read(allow_pickle)
        if row >= batch.size:
            raise BatchError(f"{path}: row {row} is out of range: the file has {batch.size} rows (0..{batch.size - 1})")
        joined = f" (+ {dump.companion.name})" if dump.companion is not None else ""
        return batch, row, f"{path}{joined} row {row}"
    if is_store(path):
        return _store_row(path, row, step)
    return _run_row(path, row, step, format, allow_pickle)


def _run_row(run: Path, row: int, step: int | None, format: str, allow_pickle: bool) -> tuple[Batch, int, str]:
    steps, _ = find_steps(run, format=format)
    if not steps:
        raise BatchError(f"{run}: no dump with a step in its path (step_N, stepN, or a framework's layout); pass a dump "
                         "file instead")
    numbers = [s.step for s in steps]
    if step is None:
        raise BatchError(f"{run} is a run directory: pass --step (its steps: {_steps_text(numbers)})")
    if step not in numbers:
        raise BatchError(f"{run}: no step {step} (its steps: {_steps_text(numbers)})")
    dumps = list(steps[numbers.index(step)].dumps)
    names = [d.path.relative_to(run).as_posix() for d in dumps]
    batch, files, rows, _, unread = read_step(dumps, names, allow_pickle)
    skipped = "".join(f"; not read: {n} ({why})" for n, why in unread.items())
    if batch is None:
        raise BatchError(f"{run}: step {step} has no readable dump{skipped}")
    if row >= batch.size:
        raise BatchError(f"{run}: step {step} has {batch.size} rows in {len(set(files))} file(s) "
                         f"(0..{batch.size - 1}); row {row} is out of range{skipped}")
    return batch, row, f"{run / files[row]} row {rows[row]} (step {step} row {row}){skipped}"


def _store_row(store: Path, row: int, step: int | None) -> tuple[Batch, int, str]:
    """The row ``(step, step_row)`` of a scan store, read again from its run."""
    try:
        import pyarrow.parquet as pq

        from ..run.store import read_manifest
    except ImportError as e:
        raise BatchError(f"{store} is a store of iwopd-kit scan; reading it needs pyarrow (the 'run' extra: pip install "
                         f"'iwopd-kit[run]'): {e}") from None
    manifest = read_manifest(store)
    steps = sorted(int(s) for s in manifest.get("steps", {}))
    if step is None:
        raise BatchError(f"{store} is a scan store: pass --step (its steps: {_steps_text(steps)})")
    table = pq.read_table(store / "rows.parquet", columns=["step", "step_row", "file", "row"],
                          filters=[("step", "=", step), ("step_row", "=", row)]) if (store / "rows.parquet").exists() else None
    if table is None or table.num_rows == 0:
        raise BatchError(f"{store}: the store has no row {row} of step {step} (its steps: {_steps_text(steps)})")
    file, own = table.column("file")[0].as_py(), table.column("row")[0].as_py()
    runs = [Path(manifest["run"])] if manifest.get("run") else []
    runs += [store.parent] if store.name == "iwopd_scan" and store.parent not in runs else []
    run = next((r for r in runs if (r / file).is_file()), None)
    if run is None:
        raise BatchError(f"{store}: step {step} row {row} is {file} row {own}, but that file is not under the run the store "
                         f"was made from ({', '.join(map(str, runs)) or 'not recorded'}); pass the run directory and --step")
    options = manifest.get("options", {})
    changed = f"{store}: step {step} row {row} is {file} row {own} in the store, but the run now gives"
    try:
        batch, r, where = _run_row(run, row, step, options.get("format", "auto"), bool(options.get("allow_pickle", False)))
    except BatchError as e:
        raise BatchError(f"{changed} no such row ({e}): the run changed since the scan; run iwopd-kit scan again") from None
    if not where.startswith(f"{run / file} row {own} "):
        raise BatchError(f"{changed} {where}: the run changed since the scan; run iwopd-kit scan again")
    return batch, r, f"{where} from the store {store}"


def _steps_text(keys: list[int]) -> str:
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


__all__ = ["add_replay_command", "is_store", "load_row", "run_replay"]
