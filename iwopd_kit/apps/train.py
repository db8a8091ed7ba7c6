"""A small, readable on-policy distillation loop.

Each step: sample student rollouts with vLLM (temperature 1, top_p 1) -> score them with the
teacher (no grad) and the current student (with grad) -> check rollout vs trainer log-probs ->
objective -> one optimizer step -> push the new student weights into the vLLM engine (sync every
step, as TRL requires for IW-OPD). ``sync=False`` skips the push, which is how staleness shows up.
The transformers engine is the fallback and the reference.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import toy
from ..batch import ROLLOUT_LOGPROBS, TEACHER_LOGPROBS, Batch
from ..batch.sampling import ROLLOUT_MAX_TOKENS, SamplingSettings
from ..engines.rollout import TransformersEngine, VLLMEngine
from ..engines.scoring import completion_logits, load_model, load_tokenizer, score, score_batch
from ..objective import iw_opd_loss, jsd_top1_loss, position_mask

OBJECTIVES = ("opd", "iw_opd", "iw_opd_signed", "prefix30", "suffix30", "jsd")


@dataclass(frozen=True)
class LoopConfig:
    """Settings of one run. ``objective`` is one of :data:`OBJECTIVES`.

    ``sampling`` is the rollout request (top_p 1, top_k 0: the paper's setting; ``max_tokens`` None means
    :data:`~iwopd_kit.batch.sampling.ROLLOUT_MAX_TOKENS`). Its ``seed`` and ``stop_token_ids`` stay None: each
    request gets a seed derived from ``run_seed`` and the tokenizer's EOS. ``sampling.temperature`` is also the
    temperature the student and teacher are scored at.
    """

    objective: str = "iw_opd"
    gamma: float = 0.5
    eps: float = 1e-8
    lr: float = 3e-5
    batch_size: int = 64
    steps: int = 20
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(max_tokens=ROLLOUT_MAX_TOKENS))
    run_seed: int = 0                  # torch's seed, the prompt order, and the base of each request's seed
    eval_every: int = 10
    eval_prompts: int = 256
    sync: bool = True
    engine: str = "vllm"
    jsd_beta: float = 0.5
    task: str = "main"
    eval_set: str = "eval"             # prompts/<eval_set>.jsonl of the task (the first eval_prompts of it)
    eval_sampled_prompts: int | None = None   # T=1 metrics on the first this many of them (None: all)
    early_eval_every: int = 0          # also evaluate every early_eval_every steps up to early_eval_until
    early_eval_until: int = 0
    rollout_dtype: str = "float32"     # the vLLM engine's dtype when the loop builds it ("bfloat16": inexact)
    tis_threshold: float | None = None  # token-level truncated IS of the policy-gradient term (None: off)
    eval_engine: str = "rollout"       # "transformers": evaluate with HF generate on the trainer's student

    def __post_init__(self) -> None:
        toy.get_task(self.task)   # a clear error for an unknown task
        if not isinstance(self.sampling, SamplingSettings):
            raise TypeError(f"sampling must be a SamplingSettings, got {type(self.sampling).__name__}")
        if self.sampling.truncates:
            raise ValueError(f"the loop samples with top_p=1 and top_k=0; got top_p={self.sampling.top_p}, "
                             f"top_k={self.sampling.top_k}")
        if self.sampling.seed is not None or self.sampling.stop_token_ids is not None:
            raise ValueError("sampling.seed and sampling.stop_token_ids must be None: the loop derives each request's "
                             "seed from run_seed and stops at the tokenizer's EOS; got "
                             f"seed={self.sampling.seed!r}, stop_token_ids={self.sampling.stop_token_ids!r}")
        if self.sampling.max_tokens is None:   # recorded in the results JSON as the loop ran it
            object.__setattr__(self, "sampling", replace(self.sampling, max_tokens=ROLLOUT_MAX_TOKENS))
        if self.eval_every < 1 or self.early_eval_every < 0 or self.early_eval_until < 0:
            raise ValueError(f"eval_every must be >= 1 and early_eval_every, early_eval_until >= 0; got "
                             f"{self.eval_every}, {self.early_eval_every}, {self.early_eval_until}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.engine not in ("vllm", "transformers"):
            raise ValueError(f"engine must be 'vllm' or 'transformers', got {self.engine!r}")
        if self.eval_engine not in ("rollout", "transformers"):
            raise ValueError(f"eval_engine must be 'rollout' or 'transformers', got {self.eval_engine!r}")


@dataclass
class StepRecord:
    step: int
    loss: float
    metrics: dict[str, float]
    drift: float                 # max |rollout - trainer student| on valid tokens, before the update
    seconds: float
    eval: dict[str, Any] = field(default_factory=dict)



def pack_bits(bits: Sequence[bool]) -> str:
    """``[True, False, ...]`` -> a hex string (4 prompts per hex digit, first prompt = highest bit)."""
    if not bits:
        return ""
    width = (len(bits) + 3) // 4
    value = int("".join("1" if b else "0" for b in bits).ljust(width * 4, "0"), 2)
    return f"{value:0{width}x}"


def unpack_bits(text: str, n: int) -> list[bool]:
    """Inverse of :func:`pack_bits` for ``n`` prompts; a clear error when the lengths do not match."""
    if len(text) != (n + 3) // 4:
        raise ValueError(f"packed correctness has {len(text)} hex digits; expected {(n + 3) // 4} for {n} prompts")
    bits = bin(int(text, 16))[2:].zfill(len(text) * 4) if text else ""
    return [c == "1" for c in bits[:n]]


def eval_steps(cfg: LoopConfig) -> list[int]:
    """The steps the loop evaluates at: every ``eval_every``, every ``early_eval_every`` up to
    ``early_eval_until``, and the last step."""
    last_early = min(cfg.early_eval_until, cfg.steps)
    early = set(range(0, last_early + 1, cfg.early_eval_every)) if cfg.early_eval_every else set()
    return sorted({s for s in range(cfg.steps + 1) if s % cfg.eval_every == 0} | early | {cfg.steps})


def _objective(cfg: LoopConfig, student, teacher, batch: Batch, student_lp: torch.Tensor,
               teacher_lp: torch.Tensor, mask: torch.Tensor):
    roll = batch.series(ROLLOUT_LOGPROBS)
    if cfg.objective == "jsd":
        s_logits = completion_logits(student, batch)
        with torch.no_grad():
            t_logits = completion_logits(teacher, batch)
        return jsd_top1_loss(s_logits, t_logits, batch.tokens(), mask, beta=cfg.jsd_beta, temperature=cfg.sampling.temperature)
    gamma = 0.0 if cfg.objective in ("opd", "prefix30", "suffix30") else cfg.gamma
    if cfg.objective in ("prefix30", "suffix30"):
        mask = position_mask(mask, cfg.objective[:6], 0.3)
    return iw_opd_loss(student_lp, teacher_lp, mask, rollout_logprobs=roll, gamma=gamma, eps=cfg.eps,
                       signed=cfg.objective == "iw_opd_signed", tis_threshold=cfg.tis_threshold)


def abs_advantage_by_position(advantages: torch.Tensor, mask: torch.Tensor, bins: int = 10) -> list[float]:
    """Mean |A| per normalised position bin (j / L_b in [0, 1)), over valid tokens."""
    rank = torch.cumsum(mask.long(), dim=-1) - 1
    n = mask.sum(dim=-1, keepdim=True).clamp_min(1)
    b = torch.clamp((rank.double() / n * bins).floor().long(), 0, bins - 1)
    out = []
    for k in range(bins):
        sel = mask & (b == k)
        out.append(float(advantages.abs()[sel].mean()) if bool(sel.any()) else float("nan"))
    return out


def evaluate(engine, student, teacher, tok, prompts: list[str], cfg: LoopConfig) -> dict[str, Any]:
    """Held-out exact match (greedy and T=1), teacher-student reverse KL on T=1 rollouts, |A| by position.

    ``greedy_correct`` is the per-prompt greedy exact match, packed as hex
    (:func:`unpack_bits`), for differences paired over the same prompts. The
    T=1 metrics use the first ``cfg.eval_sampled_prompts`` prompts (all when None).
    """
    ids = [tok(p)["input_ids"] for p in prompts]
    eos = (tok.eos_token_id,)
    task = toy.get_task(cfg.task)
    k = len(ids) if cfg.eval_sampled_prompts is None else cfg.eval_sampled_prompts
    greedy = engine.generate(ids, replace(cfg.sampling, temperature=0.0, seed=cfg.run_seed, stop_token_ids=eos))
    sampled = engine.generate(ids[:k], replace(cfg.sampling, temperature=1.0, seed=cfg.run_seed + 10_000, stop_token_ids=eos))

    def correct(batch: Batch) -> list[bool]:
        texts = [tok.decode(c, skip_special_tokens=True) for c in batch.completion_ids]
        return [task.is_correct(p, t) for p, t in zip(prompts, texts)]

    greedy_ok = correct(greedy)

    with torch.no_grad():
        s = score(student, sampled)
        t = score(teacher, sampled)
    mask = sampled.valid()
    rkl_tok = (s - t)[mask]
    adv = torch.where(mask, t - s, torch.zeros_like(s))
    return {"greedy_acc": sum(greedy_ok) / len(prompts), "sampled_acc": sum(correct(sampled)) / len(sampled.completion_ids),
            "reverse_kl_per_token": float(rkl_tok.mean()),
            "reverse_kl_per_seq": float(torch.where(mask, s - t, torch.zeros_like(s)).sum(-1).mean()),
            "abs_adv_by_position": abs_advantage_by_position(adv, mask), "greedy_correct": pack_bits(greedy_ok)}


def train(cfg: LoopConfig, student_dir: str | Path | None = None, teacher_dir: str | Path | None = None,
          on_step: Callable[[StepRecord], None] | None = None, engine=None) -> list[StepRecord]:
    """Run ``cfg.steps`` on-policy steps; returns one record per step (eval results every ``eval_every``).

    ``student_dir`` / ``teacher_dir`` default to the models of ``cfg.task`` (see :data:`toy.TASKS`).
    """
    task = toy.get_task(cfg.task)
    student_dir = student_dir if student_dir is not None else task.student_dir
    teacher_dir = teacher_dir if teacher_dir is not None else task.teacher_dir
    torch.manual_seed(cfg.run_seed)
    rng = random.Random(cfg.run_seed)
    tok = load_tokenizer(student_dir)
    student = load_model(student_dir).train()
    teacher = load_model(teacher_dir)
    if engine is None:
        engine = VLLMEngine(student_dir, dtype=cfg.rollout_dtype) if cfg.engine == "vllm" else TransformersEngine(student)
    if isinstance(engine, TransformersEngine):
        engine.model = student
    train_prompts = toy.load_prompts(task.train_prompts)
    eval_prompts = toy.load_prompts(task.prompt_file(cfg.eval_set))[: cfg.eval_prompts]
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)

    def sync() -> None:
        if isinstance(engine, VLLMEngine):
            engine.load_weights((k, v.detach().clone()) for k, v in student.state_dict().items())

    initial = {k: v.detach().clone() for k, v in student.state_dict().items()}
    sync()   # a shared engine may hold another run's weights: start from the student on disk
    try:
        return _loop(cfg, engine, student, teacher, tok, rng, opt, train_prompts, eval_prompts, sync, on_step)
    finally:
        if cfg.sync and isinstance(engine, VLLMEngine):   # leave the shared engine as we found it
            engine.load_weights(initial.items())


def _loop(cfg, engine, student, teacher, tok, rng, opt, train_prompts, eval_prompts, sync, on_step) -> list[StepRecord]:
    records: list[StepRecord] = []
    at = set(eval_steps(cfg))
    judge = TransformersEngine(student) if cfg.eval_engine == "transformers" else engine
    for step in range(cfg.steps + 1):
        ev = {}
        if step in at:
            student.eval()
            with torch.random.fork_rng():     # the HF engine seeds torch's global generator
                ev = evaluate(judge, student, teacher, tok, eval_prompts, cfg)
            student.train()
        if step == cfg.steps:
            records.append(StepRecord(step, float("nan"), {}, float("nan"), 0.0, ev))
            if on_step:
                on_step(records[-1])
            break
        t0 = time.perf_counter()
        prompts = [rng.choice(train_prompts) for _ in range(cfg.batch_size)]
        ids = [tok(p)["input_ids"] for p in prompts]
        batch = engine.generate(ids, replace(cfg.sampling, seed=cfg.run_seed * 1_000_003 + step * cfg.batch_size,
                                             stop_token_ids=(tok.eos_token_id,)))
        mask = batch.valid()
        student_lp = score(student, batch, cfg.sampling.temperature, grad=True)       # the gradient pass
        with torch.no_grad():                                                # the scored batch: the one scoring path
            batch = score_batch(batch, teacher=teacher, student_logprobs=student_lp.detach(), temperature=cfg.sampling.temperature)
        teacher_lp = batch.series(TEACHER_LOGPROBS)
        roll = batch.series(ROLLOUT_LOGPROBS)
        drift = float((roll - student_lp.detach()).abs()[mask].max())
        res = _objective(cfg, student, teacher, batch, student_lp, teacher_lp, mask)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        if cfg.sync:
            sync()
        rec = StepRecord(step, float(res.loss.detach()), dict(res.metrics), drift, time.perf_counter() - t0, ev)
        records.append(rec)
        if on_step:
            on_step(rec)
    return records


def save_records(records: list[StepRecord], cfg: LoopConfig, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": asdict(cfg), "records": [asdict(r) for r in records], **(extra or {})},
                               indent=1, allow_nan=True))
    return path


__all__ = ["LoopConfig", "StepRecord", "train", "evaluate", "eval_steps", "abs_advantage_by_position", "save_records", "OBJECTIVES"]
