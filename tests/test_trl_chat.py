"""TRL's conversational path on the Qwen3-tokenizer chat pair: ``IWOPDTrainer`` on a ``messages`` dataset,
TRL's colocated vLLM rolling out, ``IWOPDCheckCallback(...).attach(trainer)`` the only thing added.

* With the non-thinking template the pair was trained on (``with_template_defaults(tok, enable_thinking=False)``:
  TRL 1.16 renders prompts with no template arguments), every prompt the trainer and vLLM saw is the kit's
  ``chat_prompt_ids(..., enable_thinking=False)``, ``<|im_end|>`` ends the finished rows and counts, and the
  check has no error and no warning on both steps (step 2 is sampled after a weight sync of the tied pair).
* With the tokenizer as shipped, TRL builds thinking-mode prompts; the student answers without ``<think>``,
  and the check says so (a class E warning), with no error.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

trl = pytest.importorskip("trl", reason="the TRL extra is not installed (pip install 'iwopd_kit[trl]')")

from iwopd_kit import toy  # noqa: E402
from iwopd_kit.engines.chat import (CHAT_STUDENT_DIR, CHAT_TEACHER_DIR, chat_messages, chat_prompt_ids,  # noqa: E402
                            load_chat_tokenizer, with_template_defaults)
from iwopd_kit.integrations.trl import IWOPDCheckCallback, vllm_engine_kwargs  # noqa: E402
from iwopd_kit.engines.scoring import load_model  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")           # TRL warns that vLLM 0.32 is newer than it tested
    from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer  # noqa: E402

from datasets import Dataset  # noqa: E402

BATCH = 4
PROMPTS = toy.load_prompts(toy.TRAIN_PROMPTS)[:2 * BATCH]


def _run(tmp_path, tokenizer, teacher_tokenizer, steps: int):
    torch.manual_seed(0)
    args = IWOPDConfig(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=1e-4,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        max_length=64, max_completion_length=32, temperature=1.0, top_p=1.0, top_k=0, lmbda=1.0, bf16=False,
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_max_model_length=64,
    )
    data = Dataset.from_list([{"messages": chat_messages(p)} for p in PROMPTS])
    with vllm_engine_kwargs(dtype="float32"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = IWOPDTrainer(model=load_model(CHAT_STUDENT_DIR).float().train(),
                               teacher_model=load_model(CHAT_TEACHER_DIR).float(), args=args, train_dataset=data,
                               processing_class=tokenizer)
    trainer.model_accepts_loss_kwargs = False      # prompt-only data: see test_trl_callback.py
    checker = IWOPDCheckCallback(every=1, teacher_tokenizer=teacher_tokenizer).attach(trainer)
    with contextlib.redirect_stdout(None):
        trainer.train()
    return checker


@pytest.fixture(scope="module")
def qwen3():
    return load_chat_tokenizer(CHAT_STUDENT_DIR)


@pytest.fixture(scope="module")
def non_thinking(tmp_path_factory, qwen3):
    # the same template default on both sides (the check compares the two templates)
    teacher = with_template_defaults(load_chat_tokenizer(CHAT_TEACHER_DIR), enable_thinking=False)
    return _run(tmp_path_factory.mktemp("chat"), with_template_defaults(qwen3, enable_thinking=False), teacher, steps=2)


@pytest.fixture(scope="module")
def as_shipped(tmp_path_factory, qwen3):
    return _run(tmp_path_factory.mktemp("think"), qwen3, load_chat_tokenizer(CHAT_TEACHER_DIR), steps=1)


def test_the_conversational_run_checks_clean(non_thinking, qwen3):
    checker = non_thinking
    assert [c.step for c in checker.captures] == [1, 2] and checker.weight_sync in ("trl", "reload_weights")
    expected = {tuple(chat_prompt_ids(qwen3, chat_messages(p), enable_thinking=False)) for p in PROMPTS}
    eos = qwen3.convert_tokens_to_ids("<|im_end|>")
    finished = 0
    for cap in checker.captures:
        b, report = cap.batch, cap.report
        assert b.meta[0]["rollout_source"] == "vllm" and b.meta[0]["rollout_dtype"] == "float32"
        # the template applied once: the ids TRL's collator built are the kit's, for vLLM and the trainer alike
        assert all(tuple(int(i) for i in p) in expected for p in b.prompt_ids)
        assert "tokenizer_mismatch" not in report.unchecked and "bos_eos" not in report.unchecked
        assert not [f for f in report.findings if f.severity != "info"], report     # step 2: after a weight sync
        assert report.stats["max_abs_gap"] < 1e-3, report.stats
        valid = b.valid()
        for r, ids in enumerate(b.completion_ids):
            if len(ids) and int(ids[-1]) == eos:                  # a finished turn: its <|im_end|> is trained on
                finished += 1
                assert bool(valid[r, len(ids) - 1])
                assert eos not in [int(i) for i in ids[:-1]]
    assert finished >= 4, finished
    text = qwen3.decode(checker.captures[0].batch.prompt_ids[0])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_thinking_mode_prompts_from_trl_are_named(as_shipped, qwen3):
    (cap,) = as_shipped.captures
    assert all(qwen3.decode(p).endswith("<|im_start|>assistant\n") for p in cap.batch.prompt_ids)
    assert not [f for f in cap.report.findings if f.severity == "error"], cap.report
    (f,) = [f for f in cap.report.findings if "thinking-mode" in f.message]
    assert f.severity == "warning" and "with_template_defaults" in f.message
