"""Sampled-token log-probs: the kit's fused `sampled_logprobs` vs full log_softmax-then-gather (TRL's
formulation), on [8, 2048, 32000] float32 logits (2.1 GB) and on the tiny vocabulary.

Two jobs: teacher scoring (no grad) and the student loss forward + backward. Each variant runs in
a fresh subprocess; "peak extra memory" = peak RSS during the job minus RSS after the logits (and,
for training, nothing else) were allocated. Prints ratios kit / baseline measured in this run.

    .venv/bin/python benchmarks/bench_logprobs.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {"large": (8, 2048, 32000), "tiny": (8, 2048, 16)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(shape: tuple[int, int, int], variant: str, job: str, repeats: int) -> dict:
    import torch

    import iwopd_kit as K

    torch.manual_seed(0)
    B, L, V = shape
    logits = torch.randn(B, L, V, requires_grad=(job == "train"))
    tokens = torch.randint(0, V, (B, L))
    weights = torch.randn(B, L)
    base = rss_bytes()

    def run():
        if variant == "kit":
            lp = K.sampled_logprobs(logits, tokens)
        else:
            lp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        if job == "train":
            loss = -(weights * lp).mean()
            loss.backward()
            g = logits.grad
            logits.grad = None
            return loss.detach(), g
        return lp, None

    with torch.set_grad_enabled(job == "train"):
        out, grad = run()          # warm-up, and the peak we measure
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        grad_sum = None if grad is None else [float(grad.double().abs().sum()), float(grad.double().sum(-1).abs().max())]
        del grad
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return {"peak_extra": max(0, peak - base), "logits_bytes": logits.numel() * 4, "seconds": min(times),
            "checksum": float(out.double().sum()), "grad": None if grad_sum is None else grad_sum}


def measure(shape, variant, job, repeats) -> dict:
    code = ("import json,sys; sys.path.insert(0,'benchmarks'); import bench_logprobs as b; "
            f"print(json.dumps(b.child({tuple(shape)!r}, {variant!r}, {job!r}, {repeats})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny shape only")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shapes = {"tiny": SHAPES["tiny"]} if args.quick else SHAPES
    print(f"{'shape':<18} {'job':<6} {'time kit/base':>14} {'peak extra kit/base':>20} {'extra/logits kit':>17} {'extra/logits base':>18}  same result")
    for name, shape in shapes.items():
        for job in ("score", "train"):
            kit = measure(shape, "kit", job, args.repeats)
            base = measure(shape, "baseline", job, args.repeats)
            same = abs(kit["checksum"] - base["checksum"]) <= 1e-4 * max(1.0, abs(base["checksum"]))
            if job == "train":
                same = same and abs(kit["grad"][0] - base["grad"][0]) <= 1e-4 * base["grad"][0]
            mem_ratio = kit["peak_extra"] / base["peak_extra"] if base["peak_extra"] else float("nan")
            print(f"{str(list(shape)):<18} {job:<6} {kit['seconds'] / base['seconds']:>14.2f} {mem_ratio:>20.2f} "
                  f"{kit['peak_extra'] / kit['logits_bytes']:>17.2f} {base['peak_extra'] / base['logits_bytes']:>18.2f}  {same}")


if __name__ == "__main__":
    main()
