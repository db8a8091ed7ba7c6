"""Sampled-token log-probs: the kit's fused `sampled_logprobs` vs full log_softmax-then-gather (TRL's
formulation), on [8, 2048, 32000] float32 logits (2.1 GB), on the tiny vocabulary, and on bf16
logits at a real vocabulary, [2, 2048, 151936] (1.2 GB).

Two jobs: teacher scoring (no grad) and the student loss forward + backward (not at the bf16
shape). Each variant runs in a fresh subprocess; "peak extra memory" = peak RSS during the job
minus RSS after the logits were allocated (the peak is reset there through /proc/self/clear_refs).
Prints ratios kit / baseline measured in this run.

The bf16 case: the baseline is a float32 log_softmax + gather (``logits.float()``), the accurate
answer; "max |kit - base|" is the kit's largest difference from it (goal <= 1e-3 nats), next to
that of a log_softmax + gather computed in bf16 itself.

    .venv/bin/python -m benchmarks.bench_logprobs [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {"large": (8, 2048, 32000), "tiny": (8, 2048, 16), "vocab-bf16": (2, 2048, 151936)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_logits(shape, dtype, seed: int = 0):
    """Random logits (std 4, a realistic scale), made 64 positions at a time (no full float32 temporary)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    B, L, V = shape
    out = torch.empty(B, L, V, dtype=dtype)
    for b in range(B):
        for s in range(0, L, 64):
            out[b, s : s + 64] = (4 * torch.randn(min(64, L - s), V, generator=g)).to(dtype)
    return out


def child(shape: tuple[int, int, int], variant: str, job: str, repeats: int) -> dict:
    import torch

    import iwopd_kit as K

    torch.manual_seed(0)
    B, L, V = shape
    dtype = torch.bfloat16 if "bf16" in variant else torch.float32
    logits = make_logits(shape, dtype).requires_grad_(job == "train")
    tokens = torch.randint(0, V, (B, L))
    weights = torch.randn(B, L)
    diff = {}
    if variant == "kit-bf16":             # accuracy against float32, measured before the timed part
        with torch.no_grad():
            lp32 = torch.cat([torch.log_softmax(logits[b].float(), -1).gather(-1, tokens[b, :, None]).squeeze(-1)[None]
                              for b in range(B)])
            lp16 = torch.cat([torch.log_softmax(logits[b], -1).gather(-1, tokens[b, :, None]).squeeze(-1)[None]
                              for b in range(B)])
            diff = {"max_diff": float((K.sampled_logprobs(logits, tokens) - lp32).abs().max()),
                    "max_diff_bf16": float((lp16.float() - lp32).abs().max())}
            del lp32, lp16
    base = rss_bytes()
    reset_peak()

    def run():
        if variant.startswith("kit"):
            lp = K.sampled_logprobs(logits, tokens)
        else:
            z = logits.float() if logits.dtype != torch.float32 else logits
            lp = torch.log_softmax(z, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        if job == "train":
            loss = -(weights * lp).mean()
            loss.backward()
            g = logits.grad
            logits.grad = None
            return loss.detach(), g
        return lp, None

    with torch.set_grad_enabled(job == "train"):
        out, grad = run()          # warm-up, and the peak we measure
        peak = peak_bytes()
        grad_sum = None if grad is None else [float(grad.double().abs().sum()), float(grad.double().sum(-1).abs().max())]
        del grad
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return {"peak_extra": max(0, peak - base), "logits_bytes": logits.numel() * logits.element_size(),
            "seconds": min(times), "checksum": float(out.double().sum()),
            "grad": None if grad_sum is None else grad_sum, **diff}


def measure(shape, variant, job, repeats) -> dict:
    code = ("import json; from benchmarks import bench_logprobs as b; "
            f"print(json.dumps(b.child({tuple(shape)!r}, {variant!r}, {job!r}, {repeats})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny shape only")
    ap.add_argument("--only", choices=sorted(SHAPES), help="one shape only")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shapes = {"tiny": SHAPES["tiny"]} if args.quick else SHAPES
    if args.only:
        shapes = {args.only: SHAPES[args.only]}
    print(f"{'shape':<18} {'job':<6} {'time kit/base':>14} {'peak extra kit/base':>20} {'extra/logits kit':>17} {'extra/logits base':>18}  same result")
    for name, shape in shapes.items():
        bf16 = name.endswith("bf16")
        for job in ("score",) if bf16 else ("score", "train"):
            kit = measure(shape, "kit-bf16" if bf16 else "kit", job, args.repeats)
            base = measure(shape, "baseline-bf16" if bf16 else "baseline", job, args.repeats)
            same = abs(kit["checksum"] - base["checksum"]) <= 1e-4 * max(1.0, abs(base["checksum"]))
            if job == "train":
                same = same and abs(kit["grad"][0] - base["grad"][0]) <= 1e-4 * base["grad"][0]
            mem_ratio = kit["peak_extra"] / base["peak_extra"] if base["peak_extra"] else float("nan")
            print(f"{str(list(shape)):<18} {job:<6} {kit['seconds'] / base['seconds']:>14.2f} {mem_ratio:>20.2f} "
                  f"{kit['peak_extra'] / kit['logits_bytes']:>17.2f} {base['peak_extra'] / base['logits_bytes']:>18.2f}  {same}"
                  + (f"  (bf16 logits: max |kit - float32| = {kit['max_diff']:.2e} nats, goal <= 1e-3; a bf16 "
                     f"log_softmax + gather: {kit['max_diff_bf16']:.3f})" if bf16 else ""), flush=True)


if __name__ == "__main__":
    main()
