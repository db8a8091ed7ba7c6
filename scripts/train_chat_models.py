"""Train the Qwen3-tokenizer chat pair that lives in ``data/chat/student`` and ``data/chat/teacher``.

Run from the repository root (after ``data/chat/tokenizer_qwen3/`` is in place, see its README)::

    python scripts/train_chat_models.py --seed 0

The task is the toy task of ``iwopd_kit/toy/task.py`` as a conversation: the user turn is the sum, the
assistant turn the running sums, ending with ``<|im_end|>``, rendered through Qwen3's chat template
in non-thinking mode (:func:`iwopd_kit.engines.chat.chat_prompt_ids`). The prompts are the toy pair's
(``data/prompts/train.jsonl``, held-out ``data/prompts/eval.jsonl``).

The models are Llama-architecture with tied embeddings at Qwen3's full vocabulary (151,669 tokens,
padded to 151,680). A full-vocabulary cross-entropy would cost ~0.6 G logits per step, so the
models are trained *compact*: only the rows of the tied embedding for the ids the task uses (its
text tokens and the template's special tokens) are parameters; every other row is exactly zero.
A zero row gives a logit of exactly 0, so the full-vocabulary softmax is the compact softmax plus
one extra logit ``log(N_unused)`` standing for all unused tokens together. The training loss is
that exact full-vocabulary cross-entropy at the compact cost, and the saved model (the compact rows
scattered into a zero matrix) assigns unused tokens exactly the probability mass the loss saw.

The teacher trains until it solves the task almost always; the student is smaller and is picked,
among evaluations every ``--eval-every`` steps, as the checkpoint closest to a mediocre target
(55% greedy / 20% T=1), so that distillation has something to fix. Both are saved as bfloat16
safetensors; the tokenizer files in each model folder are links to ``data/chat/tokenizer_qwen3``.
``data/chat/training_report.json`` and ``data/chat/README.md`` are written from the measurements.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

from iwopd_kit import toy
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from iwopd_kit.engines.chat import (CHAT_DIR, QWEN3_TOKENIZER_DIR, chat_completion_ids, chat_messages,
                                    chat_prompt_ids)
from research.tiny_training import ModelSpec, collate, exact_match, lr_at, make_model

MAX_NEW_TOKENS = ROLLOUT_MAX_TOKENS
MAX_POS = 128
PAD_TO = 64


TEACHER = ModelSpec(hidden=96, layers=4, heads=3, intermediate=384)
STUDENT = ModelSpec(hidden=64, layers=3, heads=2, intermediate=256)


def load_pairs(path: Path) -> list[tuple[str, str]]:
    return [(r["prompt"], r["answer"]) for r in map(json.loads, path.read_text().splitlines()) if r]


def encode(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    p = chat_prompt_ids(tok, chat_messages(prompt))
    c = chat_completion_ids(tok, answer)
    return p, c


def check_template(tok, pairs) -> None:
    """The prompt + completion ids are the template's own rendering of the whole conversation."""
    for prompt, answer in pairs[:50]:
        p, c = encode(tok, prompt, answer)
        full = chat_prompt_ids(tok, chat_messages(prompt, answer), add_generation_prompt=False)
        assert full[:len(p) + len(c)] == p + c, (prompt, full, p + c)
        assert c[-1] == tok.convert_tokens_to_ids("<|im_end|>")


class Compact:
    """Maps full-vocabulary ids to the compact rows that are trained."""

    def __init__(self, used: list[int], vocab: int):
        self.used = sorted(set(used))
        self.index = {t: i for i, t in enumerate(self.used)}
        self.vocab = vocab
        self.log_unused = math.log(vocab - len(self.used))

    def __call__(self, ids: list[int]) -> list[int]:
        return [self.index[i] for i in ids]


def chat_model(spec: ModelSpec, vocab: int, tok, ids=lambda i: i) -> LlamaForCausalLM:
    """The chat pair's model (:func:`research.tiny_training.make_model`): tied embeddings, 128 positions,
    no BOS; ``ids`` maps the tokenizer's end/pad ids to rows (the compact model's, or unchanged)."""
    return make_model(spec, vocab, max_positions=MAX_POS, tie_embeddings=True, bos_id=None,
                      eos_id=ids(tok.eos_token_id), pad_id=ids(tok.pad_token_id))


def full_vocab_loss(model, ids, labels, mask, log_unused: float) -> torch.Tensor:
    """Cross-entropy of the full-vocabulary softmax: compact logits + one logit for the zero rows."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    extra = torch.full(logits.shape[:-1] + (1,), log_unused, dtype=logits.dtype)
    z = torch.cat([logits, extra], dim=-1)
    return torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)


def chat_exact_match(model, eval_set: tuple, temperature: float, seed: int) -> float:
    """Share of prompts whose completion (cut at EOS; one that never ends is wrong) decodes to the answer."""
    prompts_ids, pairs, eos, pad, decode = eval_set
    return exact_match(model, prompts_ids, lambda k, row: decode(row) == pairs[k][1], temperature, seed,
                       eos_id=eos, pad_id=pad, max_new_tokens=MAX_NEW_TOKENS, eos_required=True)


def train(spec, name, examples, compact, tok, eval_set, args, select: bool):
    torch.manual_seed(args.seed + (1 if select else 0))
    model = chat_model(spec, len(compact.used), tok, compact.index.__getitem__)
    opt = torch.optim.Adam(model.parameters(), lr=args.student_lr if select else args.teacher_lr,
                           betas=(0.9, 0.98))
    base = args.student_lr if select else args.teacher_lr
    total = args.student_steps if select else args.teacher_steps
    rng = random.Random(args.seed + (1 if select else 0))
    pad = compact.index[tok.pad_token_id]
    history, best, t0 = [], None, time.time()
    order: list[int] = []
    for step in range(total):
        if len(order) < args.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = [examples[i] for i in order[:args.batch_size]]
        del order[:args.batch_size]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base, args.warmup, total)
        b = collate(batch, pad)
        loss = full_vocab_loss(model, b["input_ids"], b["labels"], b["attention_mask"], compact.log_unused)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        every = args.eval_every if select else args.teacher_eval_every
        if (step + 1) % every == 0:
            acc = {"greedy": chat_exact_match(model, eval_set, 0.0, args.seed),
                   "sampled_t1": chat_exact_match(model, eval_set, 1.0, args.seed)}
            history.append({"step": step + 1, "loss": round(loss.item(), 4), **acc,
                            "wall_s": round(time.time() - t0, 1)})
            print(f"{name} step {step + 1} loss {loss.item():.4f} {acc} {time.time() - t0:.0f}s", flush=True)
            if select:
                d = math.hypot((acc["greedy"] - 0.55) / 0.3, (acc["sampled_t1"] - 0.20) / 0.2)
                if best is None or d < best[0]:
                    best = (d, copy.deepcopy(model.state_dict()), step + 1)
                if acc["greedy"] > 0.8 and acc["sampled_t1"] > 0.4:
                    break
            elif acc["greedy"] >= args.teacher_stop_at and acc["sampled_t1"] >= args.teacher_stop_at - 0.05:
                best = (0, model.state_dict(), step + 1)
                break
    if best is None:
        best = (0, model.state_dict(), step + 1)
    model.load_state_dict(best[1])
    return model, {"steps": best[2], "trained_steps": step + 1, "history": history,
                   "train_wall_s": round(time.time() - t0, 1)}


def expand(compact_model, spec, compact: Compact, vocab: int, tok) -> LlamaForCausalLM:
    """The full-vocabulary model: the compact rows scattered into a zero embedding (tied)."""
    full = chat_model(spec, vocab, tok)
    sd = {k: v for k, v in compact_model.state_dict().items() if not k.startswith(("model.embed_tokens", "lm_head"))}
    emb = torch.zeros(vocab, spec.hidden)
    emb[torch.tensor(compact.used)] = compact_model.model.embed_tokens.weight.detach()
    sd["model.embed_tokens.weight"] = emb
    missing, unexpected = full.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    full.tie_weights()
    assert full.lm_head.weight.data_ptr() == full.model.embed_tokens.weight.data_ptr()
    return full


def save(model, tok, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               max_new_tokens=MAX_NEW_TOKENS)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(Path("..") / QWEN3_TOKENIZER_DIR.name / name, link)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--teacher-lr", type=float, default=2e-3)
    ap.add_argument("--teacher-eval-every", type=int, default=100)
    ap.add_argument("--teacher-stop-at", type=float, default=0.97)
    ap.add_argument("--student-steps", type=int, default=800)
    ap.add_argument("--student-lr", type=float, default=5e-3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--n-select", type=int, default=256)
    ap.add_argument("--only", choices=["teacher", "student"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()
    tok = AutoTokenizer.from_pretrained(str(QWEN3_TOKENIZER_DIR))
    vocab = -(-len(tok) // PAD_TO) * PAD_TO
    train_pairs, eval_pairs = load_pairs(toy.TRAIN_PROMPTS), load_pairs(toy.EVAL_PROMPTS)
    check_template(tok, train_pairs)
    examples = [encode(tok, p, a) for p, a in train_pairs]
    specials = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>",
                                                       "<think>", "</think>")]
    compact = Compact([i for p, c in examples for i in p + c] + specials, vocab)
    assert max(len(p) + len(c) for p, c in examples) <= MAX_POS
    print(f"vocab {len(tok)} -> {vocab}; {len(compact.used)} trained rows", flush=True)
    examples_c = [(compact(p), compact(c)) for p, c in examples]
    inv = {i: t for t, i in compact.index.items()}
    decode = lambda row: tok.decode([inv[i] for i in row])  # noqa: E731
    sel = eval_pairs[:args.n_select]
    sel_set = ([compact(encode(tok, p, a)[0]) for p, a in sel], sel,
               compact.index[tok.eos_token_id], compact.index[tok.pad_token_id], decode)
    report_path = CHAT_DIR / "training_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() and args.only else {}
    report.update({"seed": args.seed, "vocab": len(tok), "vocab_padded": vocab, "trained_rows": len(compact.used),
                   "n_train": len(examples), "n_eval": len(eval_pairs), "batch_size": args.batch_size,
                   "torch": torch.__version__, "threads": 1})
    for name, spec, select in (("teacher", TEACHER, False), ("student", STUDENT, True)):
        if args.only not in (None, name):
            continue
        small, info = train(spec, name, examples_c, compact, tok, sel_set, args, select)
        full = expand(small, spec, compact, vocab, tok)
        save(full, tok, CHAT_DIR / name)
        report[name] = {"spec": asdict(spec), "params": sum(p.numel() for p in full.parameters()),
                        "lr": args.student_lr if select else args.teacher_lr, **info}
    report["wall_s"] = round(time.time() - t_start, 1)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"done in {report['wall_s']} s")


if __name__ == "__main__":
    main()
