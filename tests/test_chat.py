"""Real tokenizers and the conversational path: the tokenizer files, the chat template applied once,
readable BPE tokens, the Qwen3-tokenizer chat pair (full vocabulary, vLLM == transformers), and the
rollout -> score -> check -> loss path on chat prompts."""

from __future__ import annotations

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.engines.chat import (CHAT_STUDENT_DIR, CHAT_TEACHER_DIR, GPT2_TOKENIZER_DIR, QWEN3_TOKENIZER_DIR, TEKKEN,
                            chat_completion_ids, chat_messages, chat_prompt_ids, load_chat_tokenizer, rollout_chat)
from iwopd_kit.alignment import detect_tokenizer_mismatch
from iwopd_kit.apps.pipeline import decode_tokens
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from iwopd_kit.views import readable_tokens, token_strip, token_style

PROMPTS = toy.load_prompts(toy.EVAL_PROMPTS)[:12]


@pytest.fixture(scope="module")
def qwen3():
    return load_chat_tokenizer(QWEN3_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def gpt2():
    return load_chat_tokenizer(GPT2_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def chat_student():
    return K.load_model(CHAT_STUDENT_DIR)


@pytest.fixture(scope="module")
def chat_teacher():
    return K.load_model(CHAT_TEACHER_DIR)


@pytest.fixture(scope="module")
def chat_engine():
    return K.VLLMEngine(CHAT_STUDENT_DIR, max_model_len=128)


# ----------------------------------------------------------------------------- the tokenizer files
def test_the_real_tokenizers_load(qwen3, gpt2):
    assert type(qwen3).__name__ == "Qwen2Tokenizer" and len(qwen3) == 151669
    assert (qwen3.bos_token_id, qwen3.eos_token, qwen3.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    assert len(gpt2) == 50257 and gpt2.encode("Hello world") == [15496, 995] and gpt2.chat_template is None
    tekken = load_chat_tokenizer(f"mistral_common:{TEKKEN}")
    assert len(tekken) == 131072 and tekken.encode("7+5=12", add_special_tokens=False) != qwen3.encode("7+5=12")
    with pytest.raises(FileNotFoundError, match="no nope.json"):
        load_chat_tokenizer("mistral_common:nope.json")


def test_real_tokenizers_differ_in_every_facet_class_d_reads(qwen3, gpt2):
    assert detect_tokenizer_mismatch(qwen3, qwen3) == []
    found = detect_tokenizer_mismatch(qwen3, gpt2)
    text = " ".join(f.message for f in found)
    for facet in ("vocabularies differ", "special token ids differ", "added tokens differ", "encodes differently",
                  "chat templates differ"):
        assert facet in text, (facet, text)


# ------------------------------------------------------------------------- the template, once
def test_chat_prompt_ids_apply_the_template_once(qwen3):
    for prompt in PROMPTS:
        p = chat_prompt_ids(qwen3, chat_messages(prompt))
        c = chat_completion_ids(qwen3, toy.solve(prompt))
        full = chat_prompt_ids(qwen3, chat_messages(prompt, toy.solve(prompt)), add_generation_prompt=False)
        assert full[:len(p) + len(c)] == p + c, "prompt + completion ids are the template's own rendering"
        assert p[0] == qwen3.convert_tokens_to_ids("<|im_start|>") and c[-1] == qwen3.eos_token_id
        assert qwen3.decode(p).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = chat_prompt_ids(qwen3, chat_messages(PROMPTS[0]), enable_thinking=True)
    assert "<think>" not in qwen3.decode(thinking)


def test_chat_prompt_ids_errors_name_the_problem(qwen3, gpt2):
    with pytest.raises(ValueError, match="no chat_template"):
        chat_prompt_ids(gpt2, chat_messages("1+2+3="))
    with pytest.raises(ValueError, match="message 0 needs 'role' and 'content'"):
        chat_prompt_ids(qwen3, [{"content": "1+2+3="}])


# --------------------------------------------------------------------------- readable BPE tokens
def test_readable_tokens_show_what_byte_level_tokens_stand_for(qwen3, gpt2):
    assert token_style(qwen3) == token_style(gpt2) == "byte_level"
    assert token_style(K.load_tokenizer(toy.STUDENT_DIR)) == "plain"
    ids = gpt2.encode("Hello world\nnaïve 你")
    assert gpt2.convert_ids_to_tokens(ids)[:3] == ["Hello", "Ġworld", "Ċ"]
    shown = readable_tokens(gpt2, ids)
    assert shown[:3] == ["Hello", " world", "\n"]
    assert "ïve" in shown, "two bytes of one character inside one token read as the character"
    # '你' is split over two GPT-2 tokens: each shows the bytes it holds, not half a character
    assert shown[-2:] == ["⟨\\xe4\\xbd⟩", "⟨\\xa0⟩"], shown
    assert "".join(shown[:-2]) == gpt2.decode(ids[:-2])
    marked = readable_tokens(qwen3, [22, qwen3.eos_token_id, qwen3.convert_tokens_to_ids("<|im_start|>"), 151668])
    assert marked == ["7", "⟪<|im_end|>⟫", "⟪<|im_start|>⟫", "</think>"]   # </think> is an added token, not special
    assert readable_tokens(gpt2, [99999]) == ["⟨id 99999?⟩"]


def test_the_strip_draws_readable_tokens(qwen3):
    ids = qwen3.encode("a b\nc", add_special_tokens=False) + [qwen3.eos_token_id]
    strip = token_strip([readable_tokens(qwen3, ids)], {"advantage": [[0.1] * len(ids)]})
    html, text = strip.to_html(), strip.to_text()
    assert "Ġ" not in html and "Ċ" not in html and "⟪&lt;|im_end|&gt;⟫" in html and "<br>" in html
    assert "·b" in text and "⏎" in text


# ------------------------------------------------------------------------------- the chat pair
def test_the_chat_pair_covers_the_full_vocabulary_with_tied_embeddings(chat_student, chat_teacher, qwen3):
    for model in (chat_student, chat_teacher):
        cfg = model.config
        assert cfg.vocab_size >= len(qwen3) and cfg.vocab_size % 64 == 0 and cfg.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert chat_teacher.num_parameters() > chat_student.num_parameters()
    size = sum(f.stat().st_size for d in (CHAT_STUDENT_DIR, CHAT_TEACHER_DIR) for f in d.glob("*.safetensors"))
    assert size < 60e6, size
    # the rows the task never uses are exactly zero (logit 0) and get almost no probability mass
    p = chat_prompt_ids(qwen3, chat_messages(PROMPTS[0]))
    seq = torch.tensor([p + chat_completion_ids(qwen3, toy.solve(PROMPTS[0]))])
    for model in (chat_student, chat_teacher):
        emb = model.model.embed_tokens.weight
        used = (emb.abs().sum(1) > 0).nonzero().flatten()
        assert set(seq[0].tolist()) <= set(used.tolist()) and 15 <= len(used) <= 40
        with torch.no_grad():
            probs = model(input_ids=seq).logits.float().softmax(-1)[0, len(p) - 1:]
        unused = 1.0 - probs[:, used].sum(-1)   # the training loss counted this mass: it is the model's own
        assert float(unused.mean()) < 5e-3 and float(unused.max()) < 0.05, (float(unused.mean()), float(unused.max()))


def test_teacher_beats_student_on_held_out_chat_prompts(chat_student, chat_teacher, qwen3):
    # Greedy decoding writes the right completion exactly when, fed the right prefix, the argmax is the
    # right next token at every position (EOS included): one teacher-forced pass gives greedy exact match.
    prompts = toy.load_prompts(toy.EVAL_PROMPTS)[-64:]
    rows = [(chat_prompt_ids(qwen3, chat_messages(p)), chat_completion_ids(qwen3, toy.solve(p))) for p in prompts]
    batch = K.Batch(prompt_ids=[p for p, _ in rows], completion_ids=[c for _, c in rows])
    target, valid = batch.tokens(qwen3.pad_token_id), batch.valid()
    acc = {}
    for name, model in (("student", chat_student), ("teacher", chat_teacher)):
        with torch.no_grad():
            right = K.completion_logits(model, batch, pad_id=qwen3.pad_token_id).argmax(-1) == target
        acc[name] = float((right | ~valid).all(1).float().mean())
    assert acc["teacher"] >= 0.9 and acc["teacher"] - acc["student"] >= 0.3, acc


# ------------------------------------------------------------------------- the conversational path
def test_conversational_rollout_matches_transformers_and_checks_clean(chat_engine, chat_student, chat_teacher, qwen3):
    convs = [chat_messages(p) for p in PROMPTS]
    batch = rollout_chat(chat_engine, qwen3, convs, temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=3)
    assert [list(p) for p in batch.prompt_ids] == [chat_prompt_ids(qwen3, c) for c in convs]
    assert len(set(batch.prompt_lengths)) >= 3
    stopped = [c for c, r in zip(batch.completion_ids, batch.finish_reasons) if r == "stop"]
    assert stopped and all(c[-1] == qwen3.eos_token_id for c in stopped)
    scored = K.score_batch(batch, student=chat_student, teacher=chat_teacher)
    gap = (scored.series("rollout_logprobs") - scored.series("student_logprobs")).abs()
    assert float(gap[~gap.isnan()].max()) < 1e-3, "vLLM and transformers agree in float32"
    report = K.check_alignment(scored, student_tokenizer=qwen3, teacher_tokenizer=qwen3)
    assert not [f for f in report.findings if f.severity == "error"], report
    assert "bos_eos" not in report.unchecked and "tokenizer_mismatch" not in report.unchecked
    # the loss on the same ids: the student's graph, a finite value, a gradient
    student_lp = K.score(chat_student, scored, grad=True)
    res = K.iw_opd_loss(student_lp.nan_to_num(0.0), scored.series("teacher_logprobs").nan_to_num(0.0),
                        scored.valid(), scored.series("rollout_logprobs").nan_to_num(0.0))
    res.loss.backward()
    assert torch.isfinite(res.loss) and chat_student.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    chat_student.zero_grad(set_to_none=True)
    strip = token_strip(decode_tokens(qwen3, scored), {"gap": gap}, color_by="gap")
    assert "⟪<|im_end|>⟫" in strip.to_text()


def test_check_cli_takes_tokenizer_folders(tmp_path, check_cli, chat_engine, chat_student, chat_teacher, qwen3):
    batch = rollout_chat(chat_engine, qwen3, [chat_messages(p) for p in PROMPTS[:4]], temperature=1.0,
                         max_tokens=ROLLOUT_MAX_TOKENS, seed=1)
    dump = K.write_jsonl(K.score_batch(batch, student=chat_student, teacher=chat_teacher), tmp_path / "chat.jsonl")
    clean = check_cli(dump, "--student-tokenizer", QWEN3_TOKENIZER_DIR, "--teacher-tokenizer", QWEN3_TOKENIZER_DIR)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    models = check_cli(dump, "--student", CHAT_STUDENT_DIR, "--teacher", CHAT_TEACHER_DIR)
    assert models.returncode == 0 and "tokenizer_mismatch" not in models.stdout, models.stdout
    page = tmp_path / "chat.html"
    broken = check_cli(dump, "--student-tokenizer", QWEN3_TOKENIZER_DIR, "--teacher-tokenizer", GPT2_TOKENIZER_DIR,
                       "--html", page)
    assert broken.returncode == 1 and "tokenizer_mismatch" in broken.stdout and "<|im_end|>" in broken.stdout
    html = page.read_text()     # the page's strips read BPE tokens as text, the EOS marked
    assert "⟪&lt;|im_end|&gt;⟫" in html
    bad = check_cli(dump, "--student-tokenizer", tmp_path)
    assert bad.returncode == 2 and "not a tokenizer folder" in bad.stderr


def test_weight_sync_reaches_a_tied_output_layer(chat_engine, chat_student, qwen3):
    """The loop's sync (``VLLMEngine.load_weights`` = :func:`reload_engine_weights`) on the tied chat pair.

    The weights go in as ``named_parameters()`` names, as TRL's sync sends them: a tied ``lm_head`` has
    no name of its own there. vLLM's CPU build packs the output layer's GEMM weight once at start, and
    ``reload_weights`` re-packs only the layers it was sent. Without the refresh the engine keeps the
    initial output layer and its log-probs sit far from the updated trainer's; with it they agree.
    """
    from iwopd_kit.engines.rollout import reload_engine_weights

    prompts = [chat_prompt_ids(qwen3, chat_messages(p)) for p in PROMPTS[:4]]
    initial = {k: v.detach().clone() for k, v in chat_student.state_dict().items()}
    moved = {k: v.clone() for k, v in initial.items()}
    gen = torch.Generator().manual_seed(0)
    emb = moved["model.embed_tokens.weight"]
    emb += 0.05 * torch.randn(emb.shape, generator=gen)             # the tied matrix: input and output layer
    moved["lm_head.weight"] = emb                     # (the trainer's state_dict still names both)
    assert "lm_head.weight" not in dict(chat_student.named_parameters())          # tied: one name
    try:
        chat_engine.load_weights((k, v) for k, v in moved.items() if not k.startswith("lm_head."))
        batch = chat_engine.generate(prompts, K.Sampling(temperature=1.0, max_tokens=24, seed=3))
        chat_student.load_state_dict(moved)
        now = K.score(chat_student, batch).double()
        chat_student.load_state_dict(initial)
        before = K.score(chat_student, batch).double()
        r, valid = batch.series("rollout_logprobs", torch.float64), batch.valid()
        gap, stale = (float((x - r).abs()[valid].max()) for x in (now, before))
        assert gap < 1e-3 < stale, (gap, stale)          # the engine samples from the moved output layer
    finally:
        chat_student.load_state_dict(initial)
        assert reload_engine_weights(chat_engine.llm, iter(initial.items())) is True   # a tied head was refreshed


def test_thinking_mode_prompts_answered_without_think_are_named(qwen3):
    """Class E warning: a thinking-mode prompt (TRL 1.16's IWOPDTrainer renders no enable_thinking) answered
    without <think>; the non-thinking prompt, and a thinking-mode answer that opens <think>, are healthy."""
    from iwopd_kit.engines.chat import with_template_defaults

    msgs = chat_messages("7+5=")
    think = chat_prompt_ids(qwen3, msgs, enable_thinking=True)
    plain = chat_prompt_ids(qwen3, msgs, enable_thinking=False)
    answer = chat_completion_ids(qwen3, "7+5=12")
    opened = chat_completion_ids(qwen3, "<think>\n\n</think>\n\n7+5=12")
    assert qwen3.decode(think).endswith("<|im_start|>assistant\n") and qwen3.decode(plain).endswith("</think>\n\n")

    def warnings(prompts, completions):
        batch = K.Batch(prompt_ids=prompts, completion_ids=completions)
        report = K.check_alignment(batch, student_tokenizer=qwen3, teacher_tokenizer=qwen3)
        assert not [f for f in report.findings if f.severity == "error"], report
        return [f for f in report.findings if "thinking-mode" in f.message]

    (f,) = warnings([plain, think, think], [answer, answer, opened])
    assert (f.kind, f.severity, f.row) == ("bos_eos", "warning", 1)
    assert "1 of the 2 rows" in f.message and "enable_thinking=False" in f.message and "IWOPDTrainer" in f.message
    assert warnings([plain, plain], [answer, answer]) == []
    assert warnings([think], [opened]) == []
    # the fix for a trainer that renders prompts itself: the template's default, set once
    fixed = with_template_defaults(qwen3, enable_thinking=False)
    text = fixed.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert fixed(text, add_special_tokens=False)["input_ids"] == plain and qwen3.chat_template != fixed.chat_template
    assert qwen3.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith("assistant\n")
    with pytest.raises(ValueError, match="not a template variable"):
        with_template_defaults(qwen3, **{"a-b": 1})
