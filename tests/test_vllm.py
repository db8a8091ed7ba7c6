"""Real vLLM on the CPU, serving the bundled tiny student: rollouts, agreement with transformers,
determinism, the alignment check on healthy and mis-tempered rollouts."""

from __future__ import annotations

import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS

EOS = 2
TOL = 1e-4  # vLLM vs transformers, float32 (measured ~3e-6)


def _max_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a - b).abs()
    return float(d[~d.isnan()].max())


def test_raw_rollout_matches_transformers_at_T1(vllm_raw, hf_student, eval_prompt_ids):
    batch = K.rollout(vllm_raw, eval_prompt_ids, temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=11, stop_token_ids=(EOS,))
    assert batch.size == len(eval_prompt_ids) and batch.sampling.logprobs_mode == "raw_logprobs"
    assert all(r in ("stop", "length") for r in batch.finish_reasons)
    stopped = [c for c, r in zip(batch.completion_ids, batch.finish_reasons) if r == "stop"]
    assert stopped and all(c[-1] == EOS for c in stopped), "a generated EOS is a real token with a log-prob"
    student = K.score(hf_student, batch, temperature=1.0)
    assert _max_gap(batch.series("rollout_logprobs"), student) <= TOL


def test_same_seed_same_tokens(vllm_raw, eval_prompt_ids):
    a = K.rollout(vllm_raw, eval_prompt_ids, temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=5, stop_token_ids=(EOS,))
    b = K.rollout(vllm_raw, eval_prompt_ids, temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=5, stop_token_ids=(EOS,))
    c = K.rollout(vllm_raw, eval_prompt_ids, temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=6, stop_token_ids=(EOS,))
    assert a.completion_ids == b.completion_ids and a.rollout_logprobs == b.rollout_logprobs
    assert a.completion_ids != c.completion_ids, "a different seed should give different samples"


def test_processed_rollout_matches_transformers_at_T07(vllm_processed, hf_student, eval_prompt_ids):
    a = K.rollout(vllm_processed, eval_prompt_ids, temperature=0.7, max_tokens=ROLLOUT_MAX_TOKENS, seed=3, stop_token_ids=(EOS,))
    b = K.rollout(vllm_processed, eval_prompt_ids, temperature=0.7, max_tokens=ROLLOUT_MAX_TOKENS, seed=3, stop_token_ids=(EOS,))
    assert a.completion_ids == b.completion_ids
    tempered = K.score(hf_student, a, temperature=0.7)
    assert _max_gap(a.series("rollout_logprobs"), tempered) <= TOL
    untempered = K.score(hf_student, a, temperature=1.0)
    assert _max_gap(a.series("rollout_logprobs"), untempered) > 100 * TOL, "processed mode must include 1/T"


def test_alignment_clean_on_healthy_rollouts(vllm_raw, vllm_processed, hf_student, hf_teacher, eval_prompt_ids):
    for engine, T in ((vllm_raw, 1.0), (vllm_processed, 0.7)):
        batch = K.rollout(engine, eval_prompt_ids, temperature=T, max_tokens=ROLLOUT_MAX_TOKENS, seed=21, stop_token_ids=(EOS,))
        batch = K.score_batch(batch, student=hf_student, teacher=hf_teacher, temperature=T)
        report = K.check_alignment(batch)
        assert report.ok, report
        assert report.findings == [], report
        assert report.stats["max_abs_gap"] <= TOL


def test_alignment_reports_temperature_for_raw_logprobs_at_T07(vllm_raw, hf_student, eval_prompt_ids):
    batch = K.rollout(vllm_raw, eval_prompt_ids, temperature=0.7, max_tokens=ROLLOUT_MAX_TOKENS, seed=4, stop_token_ids=(EOS,))
    batch = K.score_batch(batch, student=hf_student, temperature=0.7)   # the trainer tempers, vLLM raw did not
    report = K.check_alignment(batch)
    assert not report.ok
    assert "temperature" in report.kinds, report
    assert all(f.kind in ("temperature",) for f in report.findings if f.severity == "error"), report
    # Without the recorded settings, the data alone still shows the pattern.
    bare = batch.replace(sampling=None, scoring={})
    assert "temperature" in K.check_alignment(bare).kinds


def test_transformers_engine_reference(hf_student, eval_prompt_ids):
    engine = K.TransformersEngine(hf_student)
    batch = K.rollout(engine, eval_prompt_ids[:8], temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=0, stop_token_ids=(EOS,))
    assert _max_gap(batch.series("rollout_logprobs"), K.score(hf_student, batch)) <= TOL
    proc = K.TransformersEngine(hf_student, logprobs_mode="processed_logprobs")
    b2 = K.rollout(proc, eval_prompt_ids[:8], temperature=0.7, max_tokens=ROLLOUT_MAX_TOKENS, seed=0, stop_token_ids=(EOS,))
    assert _max_gap(b2.series("rollout_logprobs"), K.score(hf_student, b2, temperature=0.7)) <= TOL


def test_vllm_greedy_is_argmax(vllm_raw, hf_student, tokenizer):
    prompts = toy.load_prompts(toy.EVAL_PROMPTS)[:8]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    batch = K.rollout(vllm_raw, ids, temperature=0.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=0, stop_token_ids=(EOS,))
    logits = K.completion_logits(hf_student, batch)
    argmax = logits.argmax(-1)
    valid = batch.padding_mask()
    assert bool((argmax[valid] == batch.tokens()[valid]).all())
