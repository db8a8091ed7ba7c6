"""A large prime-rl-shaped run for ``bench_scan.py``, written fast (numpy per row, one ``json.dumps`` per record).

The records are those of ``tests/run_fixtures.py``'s :func:`primerl_record` (prime-rl's ``TokenExporter``,
github.com/PrimeIntellect-ai/prime-rl commit 559b44772e471d1538537b8805cc77f3824a5e64,
``src/prime_rl/trainer/rl/token_export.py``: ``export`` lines 56-69, ``_export_columns`` lines 134-157,
``_write`` lines 104-114 — one ``json.dumps(record, separators=(",", ":"), allow_nan=False)`` line per
sequence in ``token_exports/step_{step}/rank_{rank}.jsonl``, ``STABLE`` touched by ``mark_stable`` lines
79-83): the same keys in the same order and the same per-token formulas, computed with numpy instead of
a Python loop per token. :func:`same_as_fixture` checks that on small rows, value for value.

Rows: a prompt of 64-128 ids, a completion of ``mean_len`` ± 75 % tokens (ids from a 151,936-token
vocabulary), rollout log-probs as float32 values (as vLLM writes them), the trainer's recompute equal up
to float32 rounding noise (a healthy pair), groups "A" / "B" alternating; ``shift_step``: group A's
rollout log-probs shifted by one token in that step (a class-A defect the check must flag).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

VOCAB = 151_936


def record(step: int, rank: int, idx: int, prompt: np.ndarray, comp: np.ndarray, rollout: np.ndarray,
           student: np.ndarray, group: str, reward: float) -> dict:
    """One record as :func:`run_fixtures.primerl_record` builds it (same keys, order and formulas)."""
    p, T = len(prompt), len(prompt) + len(comp)
    inf = np.concatenate([np.zeros(p), rollout])
    trn = np.concatenate([[math.log(1 / 24)], np.full(p - 1, -1.0), student])
    mask = np.arange(T) >= p
    log_r = np.where(mask, trn - inf, 0.0)
    ratio = np.where(mask, np.exp(log_r), 1.0)
    return {
        "schema_version": 1, "step": step, "rank": rank, "micro_step": idx // 4, "micro_sequence_idx": idx % 4,
        "export_sequence_idx": idx, "env_name": group, "token_ids": np.concatenate([prompt, comp]).tolist(),
        "position_ids": list(range(T)), "loss_mask": mask.tolist(), "advantages": [reward - 0.5] * T,
        "inference_logprobs": inf.tolist(), "trainer_logprobs": trn.tolist(), "entropy": [0.3] * T,
        "mismatch_kl": (ratio - 1 - np.log(ratio)).tolist(), "log_importance_ratio": np.log(ratio).tolist(),
        "importance_ratio": ratio.tolist(), "prob_delta": (np.exp(trn) - np.exp(inf)).tolist(),
        "is_masked": [False] * T, "is_masked_high": [False] * T, "is_masked_low": [False] * T,
        "rl_weights": [None] * T, "ce_weights": [None] * T, "ref_kl_weights": [None] * T,
    }


def rows(step: int, rank: int, n_rows: int, mean_len: int, shift_step: int | None, seed: int = 0):
    """``n_rows`` (prompt, completion, rollout, student, group, reward) of one (step, rank), seeded."""
    rng = np.random.default_rng([seed, step, rank])
    for b in range(n_rows):
        group = "AB"[b % 2]
        n = int(rng.integers(mean_len // 4, mean_len * 7 // 4 + 1))
        prompt = rng.integers(0, VOCAB, int(rng.integers(64, 129)))
        comp = rng.integers(0, VOCAB, n)
        lp = np.minimum(-rng.exponential(1.0, n), -1e-6).astype(np.float32).astype(np.float64)
        student = (lp + (rng.random(n) - 0.5) * 4e-6).astype(np.float32).astype(np.float64)
        rollout = np.concatenate([lp[1:], lp[-1:]]) if shift_step == step and group == "A" else lp
        yield prompt, comp, rollout, student, group, float(rng.integers(0, 2))


def write_run(run: Path, steps: int, ranks: int, n_rows: int, mean_len: int, shift_step: int | None = None) -> int:
    """Write the run; return its completion-token count."""
    total = 0
    for s in range(1, steps + 1):
        d = Path(run) / "token_exports" / f"step_{s}"
        d.mkdir(parents=True, exist_ok=True)
        for rank in range(ranks):
            with (d / f"rank_{rank}.jsonl").open("w") as f:
                for i, r in enumerate(rows(s, rank, n_rows, mean_len, shift_step)):
                    total += len(r[1])
                    f.write(json.dumps(record(s, rank, i, *r), separators=(",", ":"), allow_nan=False) + "\n")
        (d / "STABLE").touch()
    return total


def same_as_fixture() -> None:
    """Raise unless :func:`record` equals ``tests/run_fixtures.py``'s ``primerl_record`` on the same rows."""
    from tests.run_fixtures import primerl_record

    for i, (prompt, comp, roll, stud, group, reward) in enumerate(rows(1, 0, 4, 16, 1)):
        row = {"prompt_ids": prompt.tolist(), "completion_ids": comp.tolist(), "rollout": roll.tolist(),
               "student": stud.tolist(), "group": group, "reward": reward}
        ours, theirs = record(1, 0, i, prompt, comp, roll, stud, group, reward), primerl_record(row, 1, 0, i)
        assert list(ours) == list(theirs), "keys differ from run_fixtures.primerl_record"
        for k, v in theirs.items():
            w = ours[k]
            close = isinstance(v, list) and all(a == b or (isinstance(a, float) and math.isclose(a, b, rel_tol=1e-12,
                                                abs_tol=1e-15)) for a, b in zip(v, w)) and len(v) == len(w)
            assert v == w or close, f"{k} differs from run_fixtures.primerl_record"
