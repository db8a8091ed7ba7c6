"""Peak memory of ``check_alignment`` per detector, in bytes per completion token, on one large step.

Two steps of the prime-rl-shaped run of ``scan_data.py`` (``--ranks`` x ``--rows`` rows of ``--mean-len``
completion tokens on average; defaults 2 x 256 x 2048, the largest step of ``bench_scan.py``): a healthy one and
one with group A's rollout shifted by one token. Each stage runs in a fresh process: read the step (the scan's
reader, ``read_step``), run the detectors before the probed one (the state it sees in ``check_alignment``), take
the resident set, reset the peak counter (``/proc/self/clear_refs`` 5) and run the probed stage; the number is
(``VmHWM`` - ``VmRSS`` before) / completion tokens, and what it leaves held (``VmRSS`` after - before: the
``Context`` caches it filled). Stages: ``read`` (the step's batch, above the warm process); before the others the check runs once on 8 rows
of the step (its imports and code paths warm, as ``bench_scan.py``'s one-step scan does);
each detector in run order (its ``run`` plus the driver's bookkeeping: the ``explained`` clone and the marking),
``summary`` (the report's gap stats and mismatch metrics) and ``check`` (the whole ``check_alignment``, from
after the read). glibc's mmap threshold is fixed at 1 MB by default (``--glibc-default`` leaves it), so that a
freed large buffer leaves the resident set at once and each stage's number is its own allocations.

    .venv/bin/python -m benchmarks.probe_check [--data DIR] [--ranks 2 --rows 256 --mean-len 2048]
    .venv/bin/python -m benchmarks.probe_check --data DIR --stages trace   # running peak / held after each stage
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import scan_data

CHILD = r"""
import ctypes, dataclasses, json, sys
cfg = json.loads(sys.argv[1])
if not cfg["glibc_default"]:
    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)          # M_MMAP_THRESHOLD fixed at 1 MB
import torch
from iwopd_kit.run.steps import find_steps
from iwopd_kit.run.batches import read_step
from iwopd_kit.run.scan import _lean_memory
from iwopd_kit.alignment import check as C
from iwopd_kit.alignment.core import Context, one_thread
from iwopd_kit.alignment.tensors import row_mask

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")

_lean_memory()
sf = find_steps(cfg["run"])[0][0]
stage = cfg["stage"]
base = reset()
batch = read_step(list(sf.dumps), [str(d.path) for d in sf.dumps])[0]
tokens = int(sum(batch.lengths))
out = {"tokens": tokens, "rows": batch.size, "width": batch.width}
if stage == "read":
    out["peak"] = status("VmHWM") - base
    out["held"] = status("VmRSS") - base
else:
    C.check_alignment(batch.select(list(range(8))))      # warm: the check's code paths, on 8 rows of this step
if stage == "read":
    pass
elif stage == "check":
    base = reset()
    rep = C.check_alignment(batch)
    out["peak"] = status("VmHWM") - base
    out["kinds"] = sorted(rep.kinds)
elif stage == "trace":
    base = reset()
    ctx = Context(batch)
    out["trace"] = []
    with one_thread():
        for det in C.run_order():
            if det.unmet(ctx) is None:
                C.run_detectors(ctx, (dataclasses.replace(det, runs_before=None),))
            out["trace"].append((det.kind, status("VmHWM") - base, status("VmRSS") - base))
        getattr(ctx, "release", lambda: None)()       # as check_alignment does (where it does)
        C._gap_summary(batch)
        out["trace"].append(("summary", status("VmHWM") - base, status("VmRSS") - base))
else:
    ctx = Context(batch)
    found = {}
    with one_thread():
        for det in C.run_order():
            if det.kind == stage:
                base = reset()
            if det.unmet(ctx) is None:
                before = ctx.explained.clone() if det.explains_gap else None
                found[det.kind] = det.run(ctx)
                if before is not None and found[det.kind] and torch.equal(before, ctx.explained):
                    rows = row_mask(ctx.batch.size, {f.row for f in found[det.kind] if f.row is not None})
                    for name, members in ctx.groups():
                        if any(f.group == name and f.row is None for f in found[det.kind]) and name is not None:
                            rows |= members
                    ctx.mark(det.kind, ctx.open() & rows[:, None])
                del before
            if det.kind == stage:
                out["peak"] = status("VmHWM") - base
                out["held"] = status("VmRSS") - base
                out["findings"] = len(found.get(det.kind, []))
                out["ran"] = det.unmet(ctx) is None or det.kind in found
                break
        if stage == "summary":
            base = reset()
            C._gap_summary(batch)
            out["peak"] = status("VmHWM") - base
print(json.dumps(out))
"""


def probe(run: Path, stage: str, glibc_default: bool) -> dict:
    cfg = {"run": str(run), "stage": stage, "glibc_default": glibc_default}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"stage {stage}: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="write the two steps here and keep them (default: a temp dir, removed)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--mean-len", type=int, default=2048)
    ap.add_argument("--stages", help="comma-separated stages (default: all)")
    ap.add_argument("--glibc-default", action="store_true", help="leave glibc's mmap threshold dynamic")
    args = ap.parse_args()
    from iwopd_kit.alignment.check import run_order

    root = Path(args.data or tempfile.mkdtemp(prefix="iwopd_probe_check_"))
    runs = {"healthy": root / "healthy", "shifted": root / "shifted"}
    for name, run in runs.items():
        if not (run / "token_exports").exists():
            scan_data.write_run(run, 1, args.ranks, args.rows, args.mean_len, shift_step=1 if name == "shifted" else None)
    stages = (args.stages.split(",") if args.stages else
              ["read", *[d.kind for d in run_order()], "summary", "check"])
    print(f"== {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {os.cpu_count()} CPUs | load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} | mmap threshold "
          f"{'glibc default' if args.glibc_default else 'fixed at 1 MB'}")
    if stages == ["trace"]:                       # the check's running peak / held memory after each stage
        for name, run in runs.items():
            r = probe(run, "trace", args.glibc_default)
            print(f"{name}: " + ", ".join(f"{k} {p / r['tokens']:.0f}/{h / r['tokens']:.0f}" for k, p, h in r["trace"]))
        return
    res = {name: {s: probe(run, s, args.glibc_default) for s in stages} for name, run in runs.items()}
    first = next(iter(res["healthy"].values()))
    print(f"step: {first['rows']} rows, width {first['width']}, {first['tokens']:,} completion tokens")
    print("| stage | healthy: peak / held B/token | shifted: peak / held B/token |\n|---|---|---|")
    for s in stages:
        cells = []
        for name in runs:
            r = res[name][s]
            cell = f"{r['peak'] / r['tokens']:.1f}"
            if "held" in r:
                cell += f" / {r['held'] / r['tokens']:.1f}"
            if "findings" in r:
                cell += f" ({r['findings']} findings)" if r["ran"] else " (not run)"
            if "kinds" in r:
                cell += f" ({', '.join(r['kinds']) or 'no finding'})"
            cells.append(cell)
        print(f"| {s} | " + " | ".join(cells) + " |", flush=True)
    if not args.data:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
