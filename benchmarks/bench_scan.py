"""``iwopd-kit scan`` on a >= 20M-token prime-rl-shaped run: tokens / s per worker (1 and 2 workers), peak memory
per worker in bytes per token of the largest step, store size in bytes per token, and ``sql`` latency of the
cookbook queries of docs/run_scan.md on that store.

The run (``scan_data.py``, prime-rl's export format exactly as tests/run_fixtures.py writes it): ``--steps`` steps
x ``--ranks`` ranks x ``--rows`` rows of ``--mean-len`` completion tokens on average (defaults: 20 x 2 x 256 x
2048, about 21M completion tokens, 3.9 GB of JSONL), one step with group A's rollout shifted (a class-A defect),
written to a temp dir. Tokens = completion tokens (the rows of the store's ``tokens`` table).

Each scan runs in a fresh subprocess that first scans a one-step run (the imports and every code path warm),
then takes its resident set as the baseline, resets the peak counter (``/proc/self/clear_refs`` 5) and scans
the big run. Memory: peak RSS (``VmHWM`` of ``/proc/self/status``, the counter ``getrusage``'s ``ru_maxrss``
reads but cannot reset) minus the baseline, of the 1-worker scan, which runs its steps in its own process
(the same task a pool worker runs). Goals: >= 1M tokens / s per worker including the check, >= 1.7x with 2
workers on 2 cores, <= 50 bytes per token of the largest step.

    nice -n 0 .venv/bin/python -m benchmarks.bench_scan [--steps 20 --ranks 2 --rows 256 --mean-len 2048]
    .venv/bin/python -m benchmarks.bench_scan --steps 2 --profile      # cProfile of a 1-worker scan, top 25
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import scan_data

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
from iwopd_kit.run import scan_run

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

scan_run(cfg["tiny"], cfg["tiny_store"], workers=1, progress=False, html=cfg["html"])
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                   # peak RSS := current RSS
t0 = time.perf_counter()
if cfg["profile"]:
    import cProfile, pstats
    prof = cProfile.Profile()
    r = prof.runcall(scan_run, cfg["run"], cfg["store"], workers=cfg["workers"], progress=False, html=cfg["html"])
else:
    r = scan_run(cfg["run"], cfg["store"], workers=cfg["workers"], progress=False, html=cfg["html"])
seconds = time.perf_counter() - t0
out = {"seconds": seconds, "base": base, "peak": status("VmHWM"), "bad": r.bad_steps, "steps": len(r.steps)}
if cfg["profile"]:
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
print(json.dumps(out))
"""


def scan_child(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-4000:])
    if cfg["profile"]:
        print(out.stderr[-6000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def cookbook() -> dict[str, str]:
    text = (ROOT / "docs" / "run_scan.md").read_text()
    return {re.match(r"-- name: (\S+)\n", b).group(1): b for b in re.findall(r"```sql\n(.*?)```", text, re.S)}


def sql_latency(store: Path, repeats: int = 3) -> list[tuple[str, float, float, int]]:
    """(query, first run s, best of ``repeats`` s, rows) per cookbook query, each on a fresh ``open_store``."""
    from iwopd_kit.run import open_store

    out = []
    for name, q in cookbook().items():
        times, n = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            n = len(open_store(store).execute(q).fetchall())
            times.append(time.perf_counter() - t0)
        out.append((name, times[0], min(times), n))
    return out


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rows", type=int, default=256, help="rows per rank and step")
    ap.add_argument("--mean-len", type=int, default=2048)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    ap.add_argument("--html", action="store_true", help="also write the per-step pages (scan's default; off here)")
    ap.add_argument("--profile", action="store_true", help="cProfile one 1-worker scan instead of the table")
    ap.add_argument("--keep", metavar="DIR", help="write the run here and keep it (default: a temp dir, removed)")
    args = ap.parse_args()
    scan_data.same_as_fixture()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="iwopd_bench_scan_"))
    try:
        run, tiny = tmp / "run", tmp / "tiny"
        t0 = time.perf_counter()
        if not (run / "token_exports").exists():
            scan_data.write_run(run, args.steps, args.ranks, args.rows, args.mean_len, shift_step=min(3, args.steps))
        scan_data.write_run(tiny, 1, 1, 4, 64, shift_step=None)
        import pyarrow.parquet as pq
        jsonl = sum(f.stat().st_size for f in run.rglob("*.jsonl"))
        print(f"== {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {os.cpu_count()} CPUs | load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} | nice {os.nice(0)}")
        print(f"run: {args.steps} steps x {args.ranks} ranks x {args.rows} rows, {jsonl / 1e9:.2f} GB JSONL "
              f"(written in {time.perf_counter() - t0:.0f} s)")
        cfg = {"run": str(run), "tiny": str(tiny), "tiny_store": str(tmp / "tiny_store"), "html": args.html,
               "profile": args.profile}
        if args.profile:
            scan_child({**cfg, "store": str(tmp / "store_prof"), "workers": 1})
            return
        rows = []
        for w in [int(x) for x in args.workers.split(",")]:
            store = tmp / f"store_{w}"
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(tmp / "tiny_store", ignore_errors=True)
            r = scan_child({**cfg, "store": str(store), "workers": w})
            steps = pq.read_table(store / "steps.parquet", columns=["step", "tokens"]).to_pylist()
            tokens, largest = sum(s["tokens"] for s in steps), max(s["tokens"] for s in steps)
            rows.append((w, r, tokens, largest, store))
            print(f"scan, {w} worker(s): {r['seconds']:.1f} s, {tokens / r['seconds'] / w / 1e6:.3f} M tokens/s per "
                  f"worker; bad steps {r['bad']}; load average now {os.getloadavg()[0]:.2f}", flush=True)
        w1 = next((x for x in rows if x[0] == 1), rows[0])
        _, r, tokens, largest, store = w1
        print(f"\ntokens: {tokens:,} in {r['steps']} steps, largest step {largest:,}")
        print("| workers | seconds | M tokens/s per worker (goal >= 1.0) | speed-up vs 1 worker (goal >= 1.7 at 2) |")
        print("|---|---|---|---|")
        for w, rr, *_ in rows:
            print(f"| {w} | {rr['seconds']:.1f} | {tokens / rr['seconds'] / w / 1e6:.3f} | "
                  f"{r['seconds'] / rr['seconds']:.2f} |")
        extra = r["peak"] - r["base"]
        print(f"\npeak RSS above the warm baseline, 1-worker scan: {extra / 1e6:.0f} MB = {extra / largest:.1f} bytes per "
              f"token of the largest step (goal <= 50); baseline {r['base'] / 1e6:.0f} MB")
        size = du(store)
        print(f"store: {size / 1e6:.0f} MB = {size / tokens:.1f} bytes per token (tokens/ {du(store / 'tokens') / tokens:.1f})")
        print("\n| cookbook query | rows | first run (s) | best of 3 (s) |\n|---|---|---|---|")
        for name, first, best, n in sql_latency(store):
            print(f"| {name} | {n} | {first:.3f} | {best:.3f} |")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
