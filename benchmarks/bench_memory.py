"""Memory of the data model: `iwopd-kit check` on a large JSONL dump, in bytes per token above a tiny
dump's baseline (goal <= 50), and the time of the paths that build a `Batch`.

The large dump: 512 rows x 4096 completion tokens (2.1M tokens), 64-token prompts, token ids from
a 151,936-token vocabulary, and the three series (rollout / student / teacher log-probs, float32
values as vLLM and torch write them), written to a temp dir. The baseline: the same command on a
4-row x 16-token dump. Each measurement runs in a fresh subprocess and reads the process's peak
RSS (VmHWM) at the end; "above baseline" = peak(large) - peak(tiny), so the interpreter, torch and
the kit's imports cancel out. ``read`` = ``read_jsonl`` alone; ``check`` = the CLI's
``iwopd-kit check FILE`` (read, check_alignment, the table).

Paths timed in-process (best of 3): a `Batch` from ragged lists at [256, 48] (what the rollout
conversion builds) and at [64, 4096]; `from_trl_batch` at [64, 4096] (the TRL capture);
`check_alignment` at [64, 4096] on a fresh batch; `read_jsonl` of the large dump.

    .venv/bin/python -m benchmarks.bench_memory [--rows 512 --tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timing import best_of

VOCAB = 151_936


def write_dump(path: Path, rows: int, tokens: int, seed: int = 0) -> int:
    """A JSONL dump in the kit's schema with float32-valued log-probs; returns the token count."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with path.open("w") as f:
        for b in range(rows):
            ids = torch.randint(0, VOCAB, (64 + tokens,), generator=g)
            student = -torch.rand(tokens, generator=g) * 4
            rec = {"prompt_ids": ids[:64].tolist(), "completion_ids": ids[64:].tolist(),
                   ROLLOUT_LOGPROBS: (student + 1e-3 * torch.randn(tokens, generator=g)).clamp(max=0).tolist(),
                   STUDENT_LOGPROBS: student.tolist(), TEACHER_LOGPROBS: (student - 0.2).tolist(),
                   "mask": None, "finish_reason": "length", "sampling": None, "meta": {}}
            f.write(json.dumps(rec) + "\n")
    return rows * tokens


SHIM = r"""
import sys
if sys.argv[3]:                  # --kit-src: import the kit from that checkout, not the installed one
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                        and "editable" not in getattr(f, "__name__", "").lower()]
    sys.path.insert(0, sys.argv[3])
"""

CHILD = SHIM + r"""
import contextlib, io, json, time
mode, path = sys.argv[1], sys.argv[2]
import iwopd_kit as K
from iwopd_kit import cli
from iwopd_kit.batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS
t1 = time.perf_counter()
if mode == "read":
    K.read_jsonl(path)
else:
    sys.argv = ["iwopd-kit", "check", path]          # as the console script runs it
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main()
        except SystemExit:
            pass
t2 = time.perf_counter()
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "seconds": t2 - t1, "kit": K.__file__}))
"""


def child(mode: str, path: Path, kit_src: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), kit_src], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


PATHS = SHIM + r"""
import json
from benchmarks import bench_memory
print(json.dumps(bench_memory.time_paths(bench_memory.Path(sys.argv[2]))))
"""


def time_paths(big: Path) -> list[tuple[str, float]]:
    import torch

    import iwopd_kit as K

    g = torch.Generator().manual_seed(1)

    def lists(B, L):
        s = (-torch.rand(B, L, generator=g) * 4)
        return dict(prompt_ids=[[1, 2, 3]] * B, completion_ids=torch.randint(0, VOCAB, (B, L), generator=g).tolist(),
                    rollout_logprobs=s.tolist(), student_logprobs=s.tolist(), teacher_logprobs=(s - 0.2).tolist())

    small, large = lists(256, 48), lists(64, 4096)
    B, L = 64, 4096
    ids = torch.randint(0, VOCAB, (B, 8 + L), generator=g)
    labels = ids.clone()
    labels[:, :8] = -100
    trl = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
           ROLLOUT_LOGPROBS: -torch.rand(B, 8 + L, generator=g)}
    out = []
    out.append(("Batch from lists [256, 48] (rollout conversion)", best_of(lambda: K.Batch(**small))[0]))
    out.append(("Batch from lists [64, 4096]", best_of(lambda: K.Batch(**large))[0]))
    out.append(("from_trl_batch [64, 4096] (TRL capture)", best_of(lambda: K.from_trl_batch(trl))[0]))

    def check():
        batch = K.Batch(**large)
        t0 = time.perf_counter()
        K.check_alignment(batch)
        return time.perf_counter() - t0

    out.append(("check_alignment [64, 4096], fresh batch", min(check() for _ in range(3))))
    out.append((f"read_jsonl of the large dump ({big.stat().st_size / 1e6:.0f} MB)", best_of(lambda: K.read_jsonl(big), 1)[0]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--no-paths", action="store_true", help="memory only")
    ap.add_argument("--kit-src", default="", help="import iwopd_kit from this directory (to compare another version)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="iwopd_bench_mem_") as tmp:
        tiny, big = Path(tmp) / "tiny.jsonl", Path(tmp) / "big.jsonl"
        write_dump(tiny, 4, 16)
        t0 = time.perf_counter()
        n = write_dump(big, args.rows, args.tokens)
        print(f"dump: {args.rows} x {args.tokens} = {n:,} tokens, {big.stat().st_size / 1e6:.0f} MB "
              f"(written in {time.perf_counter() - t0:.0f} s)")
        print("| command | peak RSS tiny (MB) | peak RSS large (MB) | above baseline (MB) | bytes / token (goal <= 50 for check) | time large (s) |")
        print("|---|---|---|---|---|---|")
        kit = None
        for mode in ("read", "check"):
            a, b = child(mode, tiny, args.kit_src), child(mode, big, args.kit_src)
            kit = b["kit"]
            extra = b["peak"] - a["peak"]
            print(f"| {mode} | {a['peak'] / 1e6:.0f} | {b['peak'] / 1e6:.0f} | {extra / 1e6:.0f} | {extra / n:.1f} | "
                  f"{b['seconds']:.2f} |", flush=True)
        print(f"(kit imported from {kit})")
        if not args.no_paths:
            print("\n| path | seconds (best of 3) |\n|---|---|")
            out = subprocess.run([sys.executable, "-c", PATHS, "paths", str(big), args.kit_src],
                                 capture_output=True, text=True, check=True)
            for name, t in json.loads(out.stdout.strip().splitlines()[-1]):
                print(f"| {name} | {t:.3f} |", flush=True)


if __name__ == "__main__":
    main()
