"""Shared timing helper for the benchmarks."""

from __future__ import annotations

import time


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    """(fastest wall time in seconds over ``repeats`` calls, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
