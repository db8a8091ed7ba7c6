"""``scan_run``: check every step of a run and write the store (:mod:`iwopd_kit.run.store`).

Steps are independent: each is read (all its files), checked with ``check_alignment`` and turned into
its tables by one task; tasks run in a local process pool (``workers``) or on a Ray cluster (``ray``;
:mod:`iwopd_kit.run.executors`), and the tables are sorted by their keys, so any number of workers, and
either executor, writes the same store. A re-scan reads only the steps whose files
are new or changed (``manifest.json`` keeps each step's file sizes and mtimes); ``follow`` keeps
polling until ``follow_timeout`` and reads each step once it is complete (:meth:`StepFiles.complete`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from . import store as S
from .executors import make_executor
from .steps import StepFiles, find_steps, rel
from .tables import (
    FINDING_SCHEMA, GROUP_SCHEMA, STEP_SCHEMA, finding_records, group_records, records_table, row_table,
    step_record, write_tokens,
)
from .timeline import write_report

NOT_READ = 2
"""Exit code when a file of a step could not be read (as ``iwopd-kit check``)."""


@dataclass
class ScanResult:
    """What a scan did: the store, the steps it holds, the steps read now, the flagged ones, what it could not read."""

    store: Path
    steps: list[int]
    scanned: list[int]
    bad_steps: list[int]
    pending: dict[int, str] = field(default_factory=dict)
    not_read: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """2 when a step's file could not be read or the run has no step at all, else 1 when a step has an
        error-level finding, else 0."""
        if not self.steps and not self.pending:
            return NOT_READ
        if any(not why.startswith("no step number") for why in self.not_read.values()):
            return NOT_READ
        return 1 if self.bad_steps else 0


def _lean_memory() -> None:
    """Arrow on the system allocator, so that a worker's freed table buffers go back to glibc (mimalloc, Arrow's
    default, keeps them: 73 against 37 bytes per token held after the token table of a 0.5M-token step).
    glibc's mmap threshold is left alone: fixed at 1 MB (as `iwopd-kit check` sets it) every large buffer is a
    fresh mmap, and the page faults cost 30-40 % of the scan's time here (benchmarks/bench_scan.py)."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _scan_step(task: dict) -> dict:
    """One step: read, check, write its token partition and page; return its small tables (a pool task)."""
    from ..alignment import check_alignment
    from .batches import read_step

    _lean_memory()

    store, step, run_name = Path(task["store"]), task["step"], task["run_name"]
    part = S.step_partition(store, step)
    shutil.rmtree(part, ignore_errors=True)
    batch, files, rows, formats, unread = read_step(task["dumps"], task["names"], task["allow_pickle"])
    out = {"step": step, "fingerprint": task["fingerprint"], "formats": formats, "unread": unread}
    if batch is not None and task["group_by"]:
        from ..batch import BatchError

        try:
            batch = batch.with_groups_from_meta(task["group_by"])
        except BatchError as e:
            row = int(str(e).split()[1].rstrip(":")) if str(e).startswith("row ") else 0
            out["unread"] = {**unread, files[row]: f"--group-by: row {rows[row]} of this file: {e}"}
            return out
    if batch is None:
        return out
    report = check_alignment(batch)
    part.mkdir(parents=True, exist_ok=True)
    tmp = part / "part-0.parquet.tmp"
    token_nulls = write_tokens(tmp, run_name, batch, report, files, rows, gamma=task["gamma"])
    os.replace(tmp, part / "part-0.parquet")
    rec = step_record(run_name, step, batch, report, files, rows)
    rec.update(readers=", ".join(sorted(set(formats.values()))), unread=len(unread))
    out.update(rows=row_table(run_name, step, batch, report, files, rows), steps=records_table([rec], STEP_SCHEMA),
               groups=records_table(group_records(run_name, step, batch, report), GROUP_SCHEMA),
               findings=records_table(finding_records(run_name, step, batch, report, files, rows), FINDING_SCHEMA))
    rows_t = out["rows"]
    out["lacks"] = sorted(set(token_nulls) | {c for c in rows_t.column_names
                                              if rows_t.column(c).null_count == rows_t.num_rows and rows_t.num_rows})
    if task["html"]:
        from ..views.check_page import check_html

        page = store / "steps" / f"step_{step}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(check_html(f"{run_name} step {step} ({len(set(files))} file(s))", batch, report))
    return out


def _progress(total: int, show: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    if not show or total == 0:
        return (lambda step: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        return (lambda step: None), (lambda: None)
    bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False, desc="scan")

    def step(n: int) -> None:
        bar.set_description(f"scan step {n}")
        bar.update(1)
    return step, bar.close


def _reset_if_old(store: Path) -> None:
    """A store written under another schema version is removed table by table and rescanned."""
    path = store / "manifest.json"
    if path.exists() and json.loads(path.read_text()).get("schema") != S.SCHEMA_VERSION:
        shutil.rmtree(S.tokens_dir(store), ignore_errors=True)
        for name in S.TABLES:
            (store / f"{name}.parquet").unlink(missing_ok=True)
        path.unlink()


def _write(store: Path, results: list[dict], manifest: dict) -> None:
    replaced = {r["step"] for r in results}
    for name in S.TABLES:
        table = S.merge(S.read_table(store, name), [r.get(name) for r in results], replaced, name)
        if table is not None:
            S.write_parquet(table, store / f"{name}.parquet")
    for r in results:
        manifest["steps"][str(r["step"])] = {**r["fingerprint"], "formats": r["formats"], "unread": r["unread"],
                                             "lacks": r.get("lacks", [])}
    S.write_json(store / "manifest.json", manifest)


def _scan_json(run: Path, store: Path, manifest: dict, no_step: dict[str, str], pending: dict[int, str]) -> dict:
    read, not_read, lacks = {}, dict(no_step), {}
    for step, m in sorted(manifest["steps"].items(), key=lambda kv: int(kv[0])):
        read.update(m.get("formats", {}))
        not_read.update(m.get("unread", {}))
        for fmt in set(m.get("formats", {}).values()):
            cols = set(m.get("lacks", []))
            lacks[fmt] = cols if fmt not in lacks else lacks[fmt] & cols
    return {"schema": S.SCHEMA_VERSION, "run": str(run), "store": str(store), "steps": len(manifest["steps"]),
            "read": read, "not_read": dict(sorted(not_read.items())),
            "pending_steps": {str(k): v for k, v in sorted(pending.items())},
            "lacks": {fmt: sorted(cols) for fmt, cols in sorted(lacks.items())},
            "lacks_note": "columns that are null on every token / row of every step read with that reader"}


def _scan_once(run: Path, store: Path, manifest: dict, opts: dict, settle_s: float,
               executor) -> tuple[list[int], dict, dict]:
    steps, no_step = find_steps(run, exclude=store, format=opts["format"])
    tasks, pending = [], {}
    for sf in steps:
        why = sf.complete(settle_s)
        if why is not None:
            pending[sf.step] = why
            continue
        fp = sf.fingerprint(run)
        done = manifest["steps"].get(str(sf.step))
        if done is not None and done.get("files") == fp["files"]:
            continue
        tasks.append(_task(run, store, sf, fp, opts))
    tick, close = _progress(len(tasks), opts["progress"])
    try:
        results = executor.run(_scan_step, tasks, tick)
    finally:
        close()
    if results or not (store / "manifest.json").exists():
        _write(store, results, manifest)
    S.write_json(store / "scan.json", _scan_json(run, store, manifest, no_step, pending))
    return sorted(r["step"] for r in results), pending, no_step


def _task(run: Path, store: Path, sf: StepFiles, fp: dict, opts: dict) -> dict:
    return {"store": str(store), "step": sf.step, "run_name": run.resolve().name, "dumps": list(sf.dumps),
            "names": [rel(d.path, run) for d in sf.dumps], "fingerprint": fp,
            **{k: opts[k] for k in ("allow_pickle", "gamma", "html", "group_by")}}


def scan_run(run: str | Path, out: str | Path | None = None, *, format: str = "auto", workers: int | None = None,
             follow: bool = False, follow_timeout: float = 3600.0, poll_s: float = 10.0, settle_s: float | None = None,
             allow_pickle: bool = False, gamma: float = 0.5, html: bool = True, group_by: str | None = None,
             progress: bool | None = None, ray: str | bool | None = None) -> ScanResult:
    """Check every step under ``run`` and write the store (default ``run/iwopd_scan``); see docs/run_scan.md.

    ``workers``: processes (default ``os.cpu_count()``); ``follow``: keep polling every ``poll_s`` seconds for
    ``follow_timeout`` seconds; ``settle_s``: a step without a marker is read once its files are unchanged this
    long (default 0, or 10 s with ``follow``); ``gamma``: the prefix weights' gamma; ``group_by``: each row's
    group is its ``meta[group_by]`` (in place of the reader's groups); ``progress``: a bar on stderr (default: when
    stderr is a terminal); ``ray``: run the step tasks on Ray, ``"HOST:PORT"`` an existing cluster, True or ``""`` a
    local Ray started here (with ``workers`` CPUs); the store is the same as the local pool's. A store written with other ``format`` / ``gamma`` / ``group_by`` / ``allow_pickle`` is
    rescanned whole.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a directory; expected a run folder (e.g. prime-rl's output_dir)")
    store = S.store_path(run, out)
    store.mkdir(parents=True, exist_ok=True)
    _reset_if_old(store)
    opts = {"format": format, "allow_pickle": allow_pickle, "gamma": gamma, "html": html, "group_by": group_by,
            "workers": workers if workers is not None else (os.cpu_count() or 1),
            "progress": sys.stderr.isatty() if progress is None else progress}
    settle = settle_s if settle_s is not None else (10.0 if follow else 0.0)
    deadline = time.monotonic() + follow_timeout
    scanned: list[int] = []
    executor = make_executor(opts["workers"], ray)
    try:
        while True:
            manifest = S.read_manifest(store)
            manifest["run"] = str(run)
            options = {k: opts[k] for k in ("format", "gamma", "group_by", "allow_pickle")}
            if manifest.get("options", options) != options:
                manifest["steps"] = {}                   # read every step again under the new options
            manifest["options"] = options
            new, pending, no_step = _scan_once(run, store, manifest, opts, settle, executor)
            scanned += new
            write_report(store)                          # while following, the page follows the run
            if not follow or time.monotonic() + poll_s > deadline:
                break
            time.sleep(poll_s)
    finally:
        executor.close()
    return _result(store, sorted(set(scanned)), pending, no_step)


def _result(store: Path, scanned: list[int], pending: dict, no_step: dict) -> ScanResult:
    steps = S.read_table(store, "steps")
    manifest = S.read_manifest(store)
    not_read = dict(no_step)
    for m in manifest["steps"].values():
        not_read.update(m.get("unread", {}))
    all_steps = sorted(int(s) for s in manifest["steps"])
    bad = [] if steps is None else sorted(s for s, e in zip(steps.column("step").to_pylist(),
                                                          steps.column("errors").to_pylist()) if e)
    return ScanResult(store, all_steps, scanned, bad, pending, not_read)


__all__ = ["ScanResult", "scan_run", "NOT_READ"]
