"""Regenerate data/fixtures/chat/: real vLLM rollouts of the Qwen3-tokenizer chat student, scored by
the chat student and teacher, then broken the way classes D and E break on real tokenizers and chat
templates.

    source scripts/env.sh && .venv/bin/python scripts/make_chat_fixtures.py

Same conventions as ``scripts/make_fixtures.py``: every row's ``meta["fixture"]`` records ``name``,
``kind`` (None when healthy), ``what``, ``expect`` (the ``[row, position]`` pairs the breakage put
at, from what this script did, never from running the detector; ``position`` None for a prompt) and
the tokenizer folders the check needs (relative to the repo root; ``mistral_common:FILE`` names a
tokenizer file of the installed ``mistral_common`` package). Deterministic: fixed prompts, per-request
vLLM seeds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.batch import TEACHER_LOGPROBS
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from make_fixtures import describe  # noqa: E402  (the same meta["fixture"] record)
from iwopd_kit.engines.chat import (CHAT_FIXTURES_DIR, CHAT_STUDENT_DIR, CHAT_TEACHER_DIR, TEKKEN, chat_messages,
                            chat_prompt_ids, load_chat_tokenizer, rollout_chat)

OUT = CHAT_FIXTURES_DIR
SEED = 0
MAX_TOKENS = ROLLOUT_MAX_TOKENS
QWEN3 = "data/chat/tokenizer_qwen3"
GPT2 = "data/chat/tokenizer_gpt2"
PAD_EOS = "data/chat/tokenizer_qwen3_pad_eos"
BOS = "data/chat/tokenizer_qwen3_bos"
SYSTEM = "You are a helpful assistant."


def pick_prompts(per_terms: int = 2) -> list[str]:
    by: dict[int, list[str]] = {n: [] for n in range(toy.MIN_TERMS, toy.MAX_TERMS + 1)}
    for p in toy.load_prompts(toy.EVAL_PROMPTS):
        n = len(toy.parse_prompt(p))
        if len(by[n]) < per_terms:
            by[n].append(p)
    return [by[n][i] for i in range(per_terms) for n in sorted(by)]


def with_meta(batch: K.Batch, key: str, values: list) -> K.Batch:
    meta = [dict(m or {}, **({key: v} if v is not None else {})) for m, v in zip(batch.meta or [{}] * batch.size, values)]
    return batch.replace(meta=meta)


def save(batch: K.Batch, name: str) -> None:
    K.write_jsonl(batch, OUT / f"{name}.jsonl")
    print(f"  {name}.jsonl: {batch.size} rows, prompt lengths {sorted(set(batch.prompt_lengths))}", flush=True)


def first_misread(stok, ttok, ids: list[int]) -> int | None:
    """The first position whose id the teacher's vocabulary spells otherwise (None: all read alike)."""
    inv_s = {i: t for t, i in stok.get_vocab().items()}
    inv_t = {i: t for t, i in ttok.get_vocab().items()}
    return next((j for j, i in enumerate(ids) if inv_s.get(i) != inv_t.get(i)), None)


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    tok = load_chat_tokenizer(QWEN3)
    texts = pick_prompts()
    convs = [chat_messages(p) for p in texts]
    student, teacher = K.load_model(CHAT_STUDENT_DIR), K.load_model(CHAT_TEACHER_DIR)
    engine = K.VLLMEngine(CHAT_STUDENT_DIR, max_model_len=128)
    eos = tok.eos_token_id

    def scored(batch: K.Batch, teacher_prompts=None) -> K.Batch:
        b = K.score_batch(batch, student=student)
        if teacher_prompts is None:
            return K.score_batch(b, teacher=teacher)
        tb = b.replace(prompt_ids=teacher_prompts)
        return b.with_series(TEACHER_LOGPROBS, K.score(teacher, tb), temperature=1.0)

    def sample(ps, max_tokens=MAX_TOKENS):
        return K.rollout(engine, ps, temperature=1.0, max_tokens=max_tokens, seed=SEED, stop_token_ids=(eos,))

    base = scored(rollout_chat(engine, tok, convs, temperature=1.0, max_tokens=MAX_TOKENS, seed=SEED))
    B = base.size
    prompts = [list(p) for p in base.prompt_ids]
    print(f"prompts: {texts}; finish {base.finish_reasons}")
    both = dict(student_tokenizer=QWEN3, teacher_tokenizer=QWEN3)

    save(describe(base, "healthy", None, "vLLM float32 raw log-probs at T=1 of the chat student on Qwen3-templated "
                  "prompts (non-thinking), scored by the chat student and teacher in float32", [], **both), "healthy")

    # ------------------------------------------------------------ D: the teacher on another tokenizer
    for name, path in (("tokenizer_gpt2", GPT2), ("tokenizer_tekken", f"mistral_common:{TEKKEN}")):
        ttok = load_chat_tokenizer(path)
        expect = [[b, j] for b, c in enumerate(base.completion_ids)
                  if (j := first_misread(tok, ttok, list(c))) is not None
                  and any(i not in set(ttok.get_vocab().values()) for i in c)]
        save(describe(base, name, "tokenizer_mismatch", f"the teacher's tokenizer is {path}: it reads the student's "
                      "Qwen3 ids as other text (ids beyond its vocabulary, <|im_end|> among them); expect lists per "
                      "row the first position whose id its vocabulary spells otherwise, plus batch-level findings",
                      expect, batch_level=True, student_tokenizer=QWEN3, teacher_tokenizer=path), name)

    # ------------------------------------------------------------ D: another chat template; think block
    sys_rows = list(range(B))
    sys_prompts = [chat_prompt_ids(tok, [{"role": "system", "content": SYSTEM}, *c]) for c in convs]
    tpl = with_meta(scored(base, sys_prompts), "teacher_prompt_ids", sys_prompts)
    save(describe(tpl, "chat_template", "tokenizer_mismatch", "the teacher's prompt is rendered by another chat "
                  f"template (one that adds the default system turn {SYSTEM!r}); the teacher scored the student's "
                  "completion after it (meta teacher_prompt_ids)", [[b, None] for b in sys_rows], **both),
         "chat_template")
    think_rows = [1, 4, 6]
    think_prompts = [chat_prompt_ids(tok, c, enable_thinking=True) if b in think_rows else prompts[b]
                     for b, c in enumerate(convs)]
    th = with_meta(scored(base, think_prompts), "teacher_prompt_ids", think_prompts)
    save(describe(th, "think_stripped", "tokenizer_mismatch", "the teacher's prompt of known rows was rendered with "
                  "enable_thinking=True: its empty <think></think> block is missing on the teacher's side only",
                  [[b, None] for b in think_rows], **both), "think_stripped")

    # ------------------------------------------------------------------------ E: BOS twice
    btok = load_chat_tokenizer(BOS)
    dbl_rows = [0, 5]
    bos_prompts = [chat_prompt_ids(btok, c) for c in convs]
    bos_prompts = [[btok.bos_token_id] + p if b in dbl_rows else p for b, p in enumerate(bos_prompts)]
    bt = scored(sample(bos_prompts))
    save(describe(bt, "bos_twice", "bos_eos", "a tokenizer whose template writes BOS (Qwen3's files with bos_token "
                  "<|endoftext|> and a template starting with {{ bos_token }}, as Llama-3's); known rows got a second "
                  "BOS in front (what add_special_tokens=True does to templated text on a tokenizer that adds BOS)",
                  [[b, None] for b in dbl_rows], student_tokenizer=BOS, teacher_tokenizer=BOS), "bos_twice")

    # ----------------------------------------------------- E: EOS masked (pad == eos), EOS by hand
    ptok = load_chat_tokenizer(PAD_EOS)
    stopped = [b for b in range(B) if base.finish_reasons[b] == "stop"]
    mask = [[i != ptok.pad_token_id for i in c] for c in base.completion_ids]
    em = base.replace(mask=mask)
    save(describe(em, "eos_masked", "bos_eos", "pad_token = eos_token = <|im_end|> (a common Qwen3 setting) and the "
                  "loss mask built as completion_ids != pad_token_id: every sampled <|im_end|> masked out",
                  [[None, None]] + [[b, base.lengths[b] - 1] for b in stopped],
                  student_tokenizer=PAD_EOS, teacher_tokenizer=PAD_EOS), "eos_masked")
    cut = sample(prompts, max_tokens=14)
    appended = [b for b in range(B) if cut.finish_reasons[b] == "length"][:3]
    comps = [list(c) + [eos] if b in appended else list(c) for b, c in enumerate(cut.completion_ids)]
    rl = [list(r) + [None] if b in appended else list(r) for b, r in enumerate(cut.rollout_logprobs)]
    ap = scored(cut.replace(completion_ids=comps, rollout_logprobs=rl))
    save(describe(ap, "eos_appended", "bos_eos", "rows cut at max_tokens=14 got <|im_end|> appended by hand with no "
                  "rollout log-prob (then scored by student and teacher)",
                  [[b, len(comps[b]) - 1] for b in appended], **both), "eos_appended")

    # ------------------------------------------------------------- E: prompt special tokens dropped
    drop_rows = [2, 3, 7]
    dropped = [tok.encode(tok.decode(p, skip_special_tokens=True), add_special_tokens=False) if b in drop_rows else p
               for b, p in enumerate(prompts)]
    dr = scored(sample(dropped))
    save(describe(dr, "special_dropped", "bos_eos", "the prompts of known rows were decoded with "
                  "skip_special_tokens=True and re-encoded before vLLM: <|im_start|>/<|im_end|> are gone",
                  [[b, None] for b in drop_rows], **both), "special_dropped")

    files = sorted(OUT.glob("*.jsonl"))
    (OUT / "README.md").write_text(readme(files))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"data/fixtures/chat: {total / 1024:.0f} KiB")


def readme(files: list[Path]) -> str:
    rows = []
    for f in files:
        info = json.loads(f.open().readline())["meta"]["fixture"]
        rows.append(f"| `{f.name}` | {info['kind'] or 'healthy'} | {info['what']} | {info['teacher_tokenizer']} |")
    return ("# Chat fixtures: classes D and E on real tokenizers\n\n"
            "Real vLLM rollouts (float32, T=1) of the Qwen3-tokenizer chat student (`data/chat/student`) on 8 "
            "held-out prompts rendered through Qwen3's chat template, scored by the chat student and teacher, "
            "then broken one way per file. Written by `scripts/make_chat_fixtures.py`; checked by "
            "`tests/test_chat_fixtures.py`. Each row's `meta.fixture` says what was done and where "
            "(`expect`: `[row, position]`, position null for a prompt).\n\n"
            "| file | class | what | teacher tokenizer |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
            "Tokenizers: `data/chat/tokenizer_qwen3` (the pair's), `data/chat/tokenizer_gpt2`, "
            "`mistral_common:tekken_240911.json` (Mistral's tekken file inside the installed `mistral_common` "
            "package), and two variants of Qwen3's files: `data/chat/tokenizer_qwen3_pad_eos` (pad = eos = "
            "`<|im_end|>`) and `data/chat/tokenizer_qwen3_bos` (bos `<|endoftext|>`, template writes BOS).\n")


if __name__ == "__main__":
    main()
