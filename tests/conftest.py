"""Shared fixtures. vLLM is not optional here: if it cannot be imported or cannot serve the tiny
student, the tests that use it fail (never skip)."""

from __future__ import annotations

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy

K.configure_vllm_env()
torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer():
    return K.load_tokenizer(toy.STUDENT_DIR)


@pytest.fixture(scope="session")
def eval_prompt_ids(tokenizer) -> list[list[int]]:
    """The first 16 held-out prompts, tokenized (BOS included)."""
    prompts = toy.load_prompts(toy.EVAL_PROMPTS)[:16]
    return [tokenizer(p)["input_ids"] for p in prompts]


@pytest.fixture(scope="session")
def hf_student():
    return K.load_model(toy.STUDENT_DIR)


@pytest.fixture(scope="session")
def hf_teacher():
    return K.load_model(toy.TEACHER_DIR)


@pytest.fixture(scope="session")
def vllm_raw():
    """The tiny student served by vLLM in-process, raw log-probs (vLLM's default)."""
    return K.VLLMEngine(toy.STUDENT_DIR, logprobs_mode="raw_logprobs")


@pytest.fixture(scope="session")
def vllm_processed():
    """The tiny student served by vLLM in-process, processed log-probs (TRL's mode)."""
    return K.VLLMEngine(toy.STUDENT_DIR, logprobs_mode="processed_logprobs")


@pytest.fixture
def check_cli(capsys):
    """``iwopd-kit check ARGS`` in-process, returning ``(returncode, stdout, stderr)`` as attributes (an
    exception would fail the test: no traceback can hide)."""
    from types import SimpleNamespace

    from iwopd_kit.cli import main

    def go(*args):
        code = main(["check", *map(str, args)])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return go
