"""Small generated runs for the run-scan tests: a few steps of tiny rows whose defects are known by construction.

Each row: a prompt of 3-5 ids, a completion of 8-13 tokens y_j sampled (seeded) from random logits z_j over
V = 24 ids, rollout log-probs log_softmax(z_j)[y_j] (float32), the trainer's recompute equal to them up to
float32 rounding (|noise| <= 2e-6, a healthy full-precision pair), a teacher log_softmax(z_j + noise)[y_j],
a group "A" / "B" (rows alternate) and a reward in {0, 1}. Defects, by step:

- ``temp_from``: from this step on, group ``B``'s trainer log-probs are scored at temperature 0.7
  (log_softmax(z_j / 0.7)[y_j]) while the rollout's stay at T = 1 (class H, temperature);
- ``shift_from``: from this step on, group ``A``'s rollout log-probs are shifted by one token
  (token j carries the log-prob of token j + 1; the last token keeps its own), class A (offset).

:func:`write_primerl_run` writes them the way prime-rl's ``TokenExporter`` does
(github.com/PrimeIntellect-ai/prime-rl, commit 559b44772e471d1538537b8805cc77f3824a5e64,
``src/prime_rl/trainer/rl/token_export.py``: ``_write`` lines 104-114, one ``json.dumps(record,
separators=(",", ":"), allow_nan=False)`` line per sequence appended to
``token_exports/step_{step}/rank_{rank}.jsonl``; ``mark_stable`` lines 79-83 touches ``STABLE`` in
the step directory; the record's keys from ``export`` lines 56-69 and ``_export_columns`` lines
134-157: aligned per-token lists over prompt + completion, ``inference_logprobs`` 0.0 on prompt tokens,
``[None] * T`` for an absent optional stream, ``env_name`` the row's environment). prime-rl's export
has no teacher series and no reward. :func:`write_kit_run` writes the kit's own JSONL, one
``rollouts_step_{N}.jsonl`` per step, with the teacher series, groups and ``meta["reward"]``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import iwopd_kit as K

V = 24


def make_rows(step: int, rank: int, n_rows: int, temp_from: int | None = None, shift_from: int | None = None,
              seed: int = 0) -> list[dict]:
    """``n_rows`` rows of one (step, rank): prompt / completion ids and the three series as float lists."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank * 101)
    rows = []
    for b in range(n_rows):
        group = "AB"[b % 2]
        n_p = 3 + int(torch.randint(0, 3, (1,), generator=g))
        n = 8 + int(torch.randint(0, 6, (1,), generator=g))
        z = torch.randn(n, V, generator=g, dtype=torch.float64) * 2.0
        y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(-1)
        lp = torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1).float().double()
        noise = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 4e-6
        student = lp + noise
        teacher = torch.log_softmax(z + torch.randn(n, V, generator=g, dtype=torch.float64) * 0.5, -1)
        teacher = teacher.gather(-1, y[:, None]).squeeze(-1).float().double()
        rollout = lp.clone()
        if temp_from is not None and step >= temp_from and group == "B":
            student = torch.log_softmax(z / 0.7, -1).gather(-1, y[:, None]).squeeze(-1).float().double()
        if shift_from is not None and step >= shift_from and group == "A":
            rollout = torch.cat([lp[1:], lp[-1:]])
        prompt = torch.randint(3, V + 3, (n_p,), generator=g).tolist()
        rows.append({"prompt_ids": prompt, "completion_ids": (y + 3).tolist(), "rollout": rollout.tolist(),
                     "student": student.tolist(), "teacher": teacher.tolist(), "group": group,
                     "reward": float(int(torch.randint(0, 2, (1,), generator=g)))})
    return rows


def primerl_record(row: dict, step: int, rank: int, idx: int) -> dict:
    """One row as prime-rl's exporter writes it (aligned lists over prompt + completion)."""
    p, c = row["prompt_ids"], row["completion_ids"]
    T = len(p) + len(c)
    inf = [0.0] * len(p) + row["rollout"]
    trn = [math.log(1 / V)] + [-1.0] * (len(p) - 1) + row["student"]
    mask = [False] * len(p) + [True] * len(c)
    ratio = [math.exp(t - i) if m else 1.0 for t, i, m in zip(trn, inf, mask)]
    return {
        "schema_version": 1, "step": step, "rank": rank, "micro_step": idx // 4, "micro_sequence_idx": idx % 4,
        "export_sequence_idx": idx, "env_name": row["group"], "token_ids": p + c, "position_ids": list(range(T)),
        "loss_mask": mask, "advantages": [row["reward"] - 0.5] * T, "inference_logprobs": inf, "trainer_logprobs": trn,
        "entropy": [0.3] * T, "mismatch_kl": [r - 1 - math.log(r) for r in ratio],
        "log_importance_ratio": [math.log(r) for r in ratio], "importance_ratio": ratio,
        "prob_delta": [math.exp(t) - math.exp(i) for t, i in zip(trn, inf)], "is_masked": [False] * T,
        "is_masked_high": [False] * T, "is_masked_low": [False] * T,
        "rl_weights": [None] * T, "ce_weights": [None] * T, "ref_kl_weights": [None] * T,
    }


def write_primerl_step(run_dir: Path, step: int, ranks: int = 2, n_rows: int = 6, stable: bool = True,
                       **defects) -> Path:
    d = Path(run_dir) / "token_exports" / f"step_{step}"
    d.mkdir(parents=True, exist_ok=True)
    for rank in range(ranks):
        rows = make_rows(step, rank, n_rows, **defects)
        (d / f"rank_{rank}.jsonl").write_text("".join(
            json.dumps(primerl_record(r, step, rank, i), separators=(",", ":"), allow_nan=False) + "\n"
            for i, r in enumerate(rows)))
    if stable:
        (d / "STABLE").touch()
    return d


def write_primerl_run(run_dir: Path, steps=range(1, 7), temp_from: int | None = 3, shift_from: int | None = 5,
                      **kw) -> Path:
    """A prime-rl-shaped run: steps 1-6, two ranks of six rows; group B's temperature from step 3, A's shift from 5."""
    for s in steps:
        write_primerl_step(run_dir, s, temp_from=temp_from, shift_from=shift_from, **kw)
    return Path(run_dir)


def kit_batch(rows: list[dict]) -> K.Batch:
    return K.Batch(prompt_ids=[r["prompt_ids"] for r in rows], completion_ids=[r["completion_ids"] for r in rows],
                   rollout_logprobs=[r["rollout"] for r in rows], student_logprobs=[r["student"] for r in rows],
                   teacher_logprobs=[r["teacher"] for r in rows], groups=[r["group"] for r in rows],
                   finish_reasons=["stop"] * len(rows), meta=[{"reward": r["reward"]} for r in rows])


def write_kit_run(run_dir: Path, steps=range(0, 4), n_rows: int = 8, temp_from: int | None = None,
                  shift_from: int | None = None) -> Path:
    """The kit's JSONL, one ``rollouts_step_{N}.jsonl`` per step (teacher series, groups, rewards)."""
    for s in steps:
        K.write_jsonl(kit_batch(make_rows(s, 0, n_rows, temp_from=temp_from, shift_from=shift_from)),
                      Path(run_dir) / f"rollouts_step_{s}.jsonl")
    return Path(run_dir)
