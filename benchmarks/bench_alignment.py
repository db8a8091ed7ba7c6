"""check_alignment at [64, 4096]: time (goal < 1 s) and the ratio against a naive baseline.

Two batches of random log-probs in completion coordinates: a healthy one (rollout = student up to
1e-6) and one where every 8th row is shifted by two tokens (class A). Each timing builds a fresh
``Batch`` first (so the ragged -> tensor conversion is paid inside ``check_alignment``, as in real
use) and keeps the best of a few runs.

The baseline, measured in the same run: the lag scan alone, written the naive way — a Python loop
over rows and lags over the ragged lists (mean |rollout[j + k] - student[j]| per row and lag).

    .venv/bin/python -m benchmarks.bench_alignment
"""

from __future__ import annotations

import time

import torch

import iwopd_kit as K
from iwopd_kit.batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS

from benchmarks.timing import best_of

B, L, MAX_LAG = 64, 4096, 4


def make(shifted: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    full = -torch.rand(B, L + 2, generator=g, dtype=torch.float64) * 5
    student = full[:, :L]
    rollout = (student + 1e-6 * torch.randn(B, L, generator=g, dtype=torch.float64)).clamp(max=0)
    if shifted:
        rollout[::8] = full[::8, 2:]
    return dict(prompt_ids=[[1, 5 + b % 3] for b in range(B)], completion_ids=torch.randint(3, 16, (B, L), generator=g).tolist(),
                rollout_logprobs=rollout.tolist(), student_logprobs=student.tolist(),
                teacher_logprobs=(student - 0.1).tolist())


def naive_lag_scan(rollout: list[list[float]], student: list[list[float]], max_lag: int = MAX_LAG) -> list[list[float]]:
    """Per row, per lag k: mean |rollout[j + k] - student[j]| over the overlap (pure Python)."""
    out = []
    for r, s in zip(rollout, student):
        n = len(r)
        row = []
        for k in range(-max_lag, max_lag + 1):
            pairs = [abs(r[j + k] - s[j]) for j in range(max(0, -k), min(n, n - k))]
            row.append(sum(pairs) / len(pairs) if pairs else float("nan"))
        out.append(row)
    return out


def time_check(kw: dict, repeats: int = 3) -> tuple[float, K.AlignmentReport]:
    best, report = float("inf"), None
    for _ in range(repeats):
        batch = K.Batch(**kw)               # fresh: no cached tensors
        t0 = time.perf_counter()
        report = K.check_alignment(batch)
        best = min(best, time.perf_counter() - t0)
    return best, report


def main() -> None:
    healthy, shifted = make(False), make(True)
    t_h, rep_h = time_check(healthy)
    t_s, rep_s = time_check(shifted)
    t_base, _ = best_of(lambda: naive_lag_scan(shifted[ROLLOUT_LOGPROBS], shifted[STUDENT_LOGPROBS]), repeats=1)
    print(f"batch: [{B}, {L}], lags [-{MAX_LAG}, {MAX_LAG}], torch threads {torch.get_num_threads()}")
    print(f"check_alignment healthy: {t_h:.3f} s ({len(rep_h.findings)} findings) (goal < 1 s)")
    print(f"check_alignment shifted: {t_s:.3f} s ({len(rep_s.by_kind('offset'))} offset rows of {B // 8} shifted) "
          f"(goal < 1 s)")
    print(f"baseline (naive per-row Python lag scan only): {t_base:.3f} s")
    print(f"ratio baseline/check_alignment: healthy {t_base / t_h:.1f}x | shifted {t_base / t_s:.1f}x")
    b = K.Batch(**shifted)
    r, s = b.series(ROLLOUT_LOGPROBS, torch.float64), b.series(STUDENT_LOGPROBS, torch.float64)
    t_lag, _ = best_of(lambda: K.lag_scan(r, s, b.valid(), MAX_LAG), repeats=5)
    print(f"lag scan alone, on tensors: {t_lag * 1e3:.1f} ms | ratio baseline/lag_scan {t_base / t_lag:.0f}x")


if __name__ == "__main__":
    main()
