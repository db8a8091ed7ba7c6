"""A real vocabulary: a random-weight Qwen3-architecture model at Qwen's 151,936 rows, built from a seed at
test time (``research.random_models``, no download), served by vLLM in-process on the CPU and rescored
by transformers in float32.

* float32 rollout vs float32 trainer: no finding at all, mismatch metrics at float32 rounding;
* bfloat16 vLLM rollout vs float32 trainer (TRL's default engine dtype on a float32 checkpoint): no
  error, at most a ``numerics`` warning that names "rollout bf16 vs trainer fp32", and the pooled
  mismatch metrics inside the healthy thresholds the check uses (``Tolerances``).

Two engines, built one after the other (the float32 one first); the kit keeps an in-process vLLM
engine for the life of the process (see ``iwopd_kit.engines.rollout._LLMS``), so the first is not torn down,
only no longer used.
"""

from __future__ import annotations

import torch
import pytest

from iwopd_kit import Tolerances, VLLMEngine, check_alignment, rollout, score_batch
from iwopd_kit.alignment.mismatch import abs_delta_quantiles, pooled_delta
from research.random_models import (
    QWEN_VOCAB, RandomModelSpec, random_model, random_model_dir, random_prompts, random_tokenizer,
)
from iwopd_kit.engines.scoring import load_model, load_tokenizer

SPEC = RandomModelSpec()
N_PROMPTS, MAX_TOKENS = 8, 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model_dir(SPEC, cache_dir=tmp_path_factory.mktemp("random_models"))


@pytest.fixture(scope="module")
def trainer(model_dir):
    return load_model(model_dir)


def _checked(model_dir, trainer, dtype: str):
    engine = VLLMEngine(model_dir, dtype=dtype)
    assert str(engine.llm.llm_engine.model_config.dtype) == f"torch.{dtype}", "the engine runs in the asked dtype"
    batch = rollout(engine, random_prompts(N_PROMPTS, seed=0), temperature=1.0, max_tokens=MAX_TOKENS, seed=0)
    batch = score_batch(batch, student=trainer)
    # what the trainer side records (the TRL callback does it from the engine and the student logits)
    batch = batch.replace(meta=[{"rollout_dtype": dtype, "trainer_dtype": "float32"}] * batch.size)
    report = check_alignment(batch, student_tokenizer=load_tokenizer(model_dir))
    delta = pooled_delta(batch.series("student_logprobs", torch.float64), batch.series("rollout_logprobs", torch.float64),
                         batch.valid())
    return batch, report, delta


@pytest.fixture(scope="module")
def fp32(model_dir, trainer):
    return _checked(model_dir, trainer, "float32")


@pytest.fixture(scope="module")
def bf16(model_dir, trainer, fp32):           # after the float32 engine (never two builds at once)
    return _checked(model_dir, trainer, "bfloat16")


def test_the_model_is_built_from_the_seed(model_dir, tmp_path):
    cfg = load_model(model_dir).config
    assert cfg.model_type == "qwen3" and cfg.vocab_size == QWEN_VOCAB == 151_936 and cfg.tie_word_embeddings
    weights = (model_dir / "model.safetensors").stat().st_size
    assert 10e6 < weights < 45e6, f"{weights} bytes; expected ~39 MB (9.8M float32 parameters, tied)"
    a, b = random_model(RandomModelSpec(vocab_size=4096)), random_model(RandomModelSpec(vocab_size=4096))
    c = random_model(RandomModelSpec(vocab_size=4096, seed=1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())), "same seed"
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight), "another seed, other weights"
    llama = random_model(RandomModelSpec(architecture="llama", vocab_size=4096))
    assert llama.config.model_type == "llama" and llama(torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, 4096)
    # the cache: the same spec gives the same directory, not rebuilt
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert random_model_dir(SPEC, cache_dir=model_dir.parent) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    tok = load_tokenizer(model_dir)
    assert len(tok) == QWEN_VOCAB and tok.eos_token_id == 2
    assert tok("t5 t151935")["input_ids"] == [5, 151935] and tok.decode([5, 151935]) == "t5 t151935"
    assert len(random_tokenizer(100)) == 100


def test_the_prompts_are_seeded_token_ids():
    p = random_prompts(8, seed=0)
    assert p == random_prompts(8, seed=0) and p != random_prompts(8, seed=1)
    assert all(r[0] == 1 and 4 <= len(r) <= 12 and all(4 <= t < QWEN_VOCAB for t in r[1:]) for r in p)
    with pytest.raises(ValueError, match="min_len"):
        random_prompts(2, min_len=1)
    with pytest.raises(ValueError, match="architecture"):
        RandomModelSpec(architecture="gpt2")


def test_float32_rollout_is_clean_and_exact(fp32):
    batch, report, delta = fp32
    assert report.ok and report.findings == [], report
    m = report.metrics
    assert m["mismatch/logp_abs_diff_max"] <= 1e-4, m                 # measured ~2e-5
    assert abs(m["mismatch/token_mult_prob_error"] - 1.0) <= 1e-5, m
    assert abs(m["mismatch/k3_kl"]) <= 1e-9 and m["mismatch/is_ess"] >= 1 - 1e-6, m
    assert m["mismatch/is_ratio_min"] >= 1 - 1e-4 and m["mismatch/is_ratio_max"] <= 1 + 1e-4, m
    # the distributions are peaked like a trained model's, not flat over 151,936 tokens (-log V = -11.9)
    r = batch.series("rollout_logprobs")[batch.valid()]
    assert float(r.median()) > -1.0 and float(r.mean()) > -2.0, (float(r.median()), float(r.mean()))
    assert len({t for c in batch.completion_ids for t in c}) > delta.numel() / 10, "not a model that repeats itself"


def test_bf16_rollout_warns_with_its_cause_and_stays_healthy(bf16, fp32):
    batch, report, delta = bf16
    tol = Tolerances()
    assert report.ok, report
    assert {(f.kind, f.severity) for f in report.findings} <= {("numerics", "warning")}, report
    numerics = report.by_kind("numerics")
    assert numerics and "rollout bf16 vs trainer fp32" in numerics[0].message, report
    m = report.metrics
    assert m["mismatch/token_mult_prob_error"] <= tol.mult_prob_error, m      # measured 1.03
    assert m["mismatch/k3_kl"] <= tol.k3_kl, m                                # measured ~1.5e-3
    assert m["mismatch/is_ess"] >= 0.3 and m["mismatch/chi2_token"] <= 1.0, m  # verl's warning levels
    # the rollout really is bf16: its bulk is well above float32 agreement, its tail long
    q = abs_delta_quantiles(delta)
    assert q["p90"] > tol.same and m["mismatch/logp_abs_diff_max"] > 100 * fp32[1].metrics["mismatch/logp_abs_diff_max"], q
