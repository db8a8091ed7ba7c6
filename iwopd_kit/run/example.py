"""A small run to debug, made from real rollouts of the bundled tiny models, with two planted problems.

:func:`write_example_run` writes ``steps`` steps of the kit's JSONL (``step_N.jsonl``, the layout
``iwopd-kit scan`` and ``iwopd-kit check DIR`` read), each ``rows`` rows of held-out prompts in two
groups (``"add"`` rows are even, ``"carry"`` rows odd). Every row is a real rollout of the tiny
student with transformers (raw log-probs at T = 1, the paper's setting), the student's log-probs
recomputed by the trainer side (:func:`iwopd_kit.score_batch`, float32) and the teacher's. The two
problems, each a bug seen in real runs:

- from step ``temp_from`` on, the ``"carry"`` group is sampled at temperature ``hot_temperature``
  with processed log-probs (the engine's log-probs at that temperature) while the trainer still
  scores at T = 1: class H (temperature), in one group of a healthy batch. The default 2.0 is far
  enough from 1 to leave the numerics bounds on this confident tiny student (at T = 1.5 or 0.7 its
  k3_kl stays near 1e-3, a numerics warning on most steps; below 1 a sharpened confident token also
  sits above the trainer, as top-p's renormalised ones do);
- from step ``shift_from`` on, the ``"add"`` group's rollout log-probs are shifted by one token
  (token j carries the log-prob of token j + 1; the last keeps its own): class A (offset).

Rows carry ``meta["reward"]`` (1.0 when the completion answers the prompt) and ``meta["step"]``.
Deterministic for a seed (the engine's seed is ``seed + step``).
"""

from __future__ import annotations

from pathlib import Path

from .. import toy
from ..batch import ROLLOUT_LOGPROBS, Batch, write_jsonl
from ..engines.rollout import TransformersEngine, rollout
from ..engines.scoring import load_model, load_tokenizer, score_batch

GROUPS = ("add", "carry")


def write_example_run(run_dir: str | Path, *, steps: int = 6, rows: int = 8, temp_from: int | None = 3,
                      shift_from: int | None = 5, hot_temperature: float = 2.0, seed: int = 0) -> Path:
    """Write the example run into ``run_dir`` (created) and return it; see the module docstring."""
    if steps < 1 or rows < 2:
        raise ValueError(f"expected steps >= 1 and rows >= 2 (one row per group at least), got steps={steps}, rows={rows}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(toy.STUDENT_DIR)
    student, teacher = load_model(toy.STUDENT_DIR), load_model(toy.TEACHER_DIR)
    cold = TransformersEngine(student, logprobs_mode="raw_logprobs")
    hot = TransformersEngine(student, logprobs_mode="processed_logprobs")
    prompts_all = toy.load_prompts(toy.EVAL_PROMPTS)
    for step in range(1, steps + 1):
        start = ((step - 1) * rows) % max(1, len(prompts_all) - rows)
        prompts = prompts_all[start:start + rows]
        ids = [tok(p)["input_ids"] for p in prompts]
        groups = [GROUPS[b % 2] for b in range(rows)]
        carry_hot = temp_from is not None and step >= temp_from
        parts = []
        for g in GROUPS:
            sel = [b for b in range(rows) if groups[b] == g]
            engine, t = (hot, hot_temperature) if (g == "carry" and carry_hot) else (cold, 1.0)
            parts.append((sel, rollout(engine, [ids[b] for b in sel], temperature=t, seed=seed + step,
                                       stop_token_ids=(tok.eos_token_id,))))       # the kit's default max_tokens
        comp = {b: (part, i) for sel, part in parts for i, b in enumerate(sel)}
        pick = lambda name: [getattr(comp[b][0], name)[comp[b][1]] for b in range(rows)]  # noqa: E731
        roll = pick(ROLLOUT_LOGPROBS)
        if shift_from is not None and step >= shift_from:
            roll = [r[1:] + r[-1:] if groups[b] == "add" else r for b, r in enumerate(roll)]
        completions = pick("completion_ids")
        texts = [tok.decode(c, skip_special_tokens=True) for c in completions]
        batch = Batch(prompt_ids=ids, completion_ids=completions, rollout_logprobs=roll,
                      finish_reasons=pick("finish_reasons"), groups=groups,
                      meta=[{"step": step, "reward": float(toy.is_correct(p, t))} for p, t in zip(prompts, texts)])
        batch = score_batch(batch, student=student, teacher=teacher, temperature=1.0)
        write_jsonl(batch, run_dir / f"step_{step}.jsonl")
    return run_dir


__all__ = ["GROUPS", "write_example_run"]
