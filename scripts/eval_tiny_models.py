"""Exact-match accuracy of the shipped tiny teacher and student.

Run from the repository root::

    python scripts/eval_tiny_models.py                    # vLLM, greedy and T=1
    python scripts/eval_tiny_models.py --check-logprobs   # + vLLM vs transformers log-probs
    python scripts/eval_tiny_models.py --transformers     # transformers generate instead

Accuracy is the share of ``data/prompts/eval.jsonl`` prompts whose whole
completion (up to EOS) equals ``toy.solve(prompt)``. Sampling uses
temperature 1 and top_p 1; each request gets its own seed (``--seed + i``), so
requests draw independent random streams and a run is reproducible.

``--check-logprobs`` recomputes the log-prob of every sampled token with a
float32 transformers forward pass (teacher forcing on prompt + completion) and
prints the largest absolute difference from the log-probs vLLM returned. This is
an independent cross-check, written here with plain transformers on purpose and
not through the kit's scoring path (``iwopd_kit.engines.scoring``): it checks
the engines and the kit's scoring against a third implementation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch  # noqa: E402

from iwopd_kit import toy  # noqa: E402
from iwopd_kit.engines.envdefaults import VLLM_ENV_DEFAULTS  # noqa: E402
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS  # noqa: E402

# vLLM's CPU backend reads these when it is imported (lazily, below): the kit's one table; a value already set wins.
for _k, _v in VLLM_ENV_DEFAULTS.items():
    os.environ.setdefault(_k, _v)

MAX_NEW_TOKENS = ROLLOUT_MAX_TOKENS
MAX_LEN = 64
MODELS = {"teacher": toy.TEACHER_DIR, "student": toy.STUDENT_DIR}


def prompt_ids(prompt: str) -> list[int]:
    """``<s>`` followed by one id per character (same ids as the tokenizer)."""
    return [toy.BOS_ID] + [toy.VOCAB.index(c) for c in prompt]


def completion_text(token_ids: list[int]) -> str:
    """Decode generated ids up to (not including) the first EOS."""
    if toy.EOS_ID in token_ids:
        token_ids = token_ids[:token_ids.index(toy.EOS_ID)]
    return "".join(toy.VOCAB[i] for i in token_ids if i != toy.PAD_ID)


def accuracy(prompts: list[str], completions: list[list[int]]) -> float:
    """Exact-match share of ``completions`` (token ids) against ``toy.solve``."""
    hits = sum(toy.is_correct(p, completion_text(c)) for p, c in zip(prompts, completions))
    return hits / len(prompts)


# --------------------------------------------------------------------------- #
# vLLM
# --------------------------------------------------------------------------- #
def vllm_generate(llm, prompts: list[str], temperature: float, seed: int):
    """Generate with vLLM.

    Returns per prompt the generated token ids, the log-probs vLLM reports for
    them, and the number of outputs whose detokenized ``text`` differs from
    decoding the ids with ``toy.VOCAB``, special tokens skipped as vLLM does
    (a tokenizer sanity check). Accuracy itself is computed from the ids.
    """
    from vllm import SamplingParams

    params = [
        SamplingParams(temperature=temperature, top_p=1.0, max_tokens=MAX_NEW_TOKENS,
                       stop_token_ids=[toy.EOS_ID], logprobs=0, seed=seed + i)
        for i in range(len(prompts))
    ]
    requests = [{"prompt_token_ids": prompt_ids(p)} for p in prompts]
    outputs = llm.generate(requests, params, use_tqdm=False)
    token_ids, logprobs, text_mismatches = [], [], 0
    for out in outputs:
        sample = out.outputs[0]
        ids = list(sample.token_ids)
        token_ids.append(ids)
        logprobs.append([step[t].logprob for t, step in zip(ids, sample.logprobs)])
        visible = "".join(toy.VOCAB[i] for i in ids if i > toy.EOS_ID)  # specials skipped
        text_mismatches += sample.text != visible
    return token_ids, logprobs, text_mismatches


def eval_vllm(name: str, model_dir: Path, prompts: list[str], seed: int,
              check_logprobs: bool) -> dict:
    """Greedy and T=1 accuracy of one model with an in-process vLLM engine."""
    from vllm import LLM

    t0 = time.time()
    llm = LLM(model=str(model_dir), dtype="float32", enforce_eager=True,
              enable_prefix_caching=False, max_model_len=MAX_LEN, seed=seed)
    result = {"model": name, "engine_start_s": round(time.time() - t0, 1)}
    greedy_ids, _, bad_greedy = vllm_generate(llm, prompts, 0.0, seed)
    sampled_ids, sampled_lps, bad_sampled = vllm_generate(llm, prompts, 1.0, seed)
    result["greedy"] = accuracy(prompts, greedy_ids)
    result["sampled_t1"] = accuracy(prompts, sampled_ids)
    result["text_mismatches"] = bad_greedy + bad_sampled
    del llm
    gc.collect()
    if check_logprobs:
        result["max_abs_logprob_diff"] = logprob_diff(model_dir, prompts, sampled_ids, sampled_lps)
    result["wall_s"] = round(time.time() - t0, 1)
    return result


# --------------------------------------------------------------------------- #
# transformers
# --------------------------------------------------------------------------- #
def load_hf(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def teacher_forced_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    """log p(y_j | prompt, y_<j) for every completion token, in float32 (the independent cross-check: not
    the kit's ``sampled_logprobs``, on purpose)."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    p = len(prompt)
    positions = torch.arange(p - 1, p - 1 + len(completion))
    return logp[positions, torch.tensor(completion)].tolist()


def logprob_diff(model_dir: Path, prompts: list[str], completions: list[list[int]],
                 vllm_logprobs: list[list[float]]) -> float:
    """Largest |transformers - vLLM| log-prob over all sampled tokens."""
    model = load_hf(model_dir)
    worst = 0.0
    for prompt, completion, lps in zip(prompts, completions, vllm_logprobs):
        if not completion:
            continue
        ref = teacher_forced_logprobs(model, prompt_ids(prompt), completion)
        worst = max(worst, max(abs(a - b) for a, b in zip(ref, lps)))
    return worst


@torch.no_grad()
def hf_generate(model, prompts: list[str], temperature: float, seed: int,
                batch_size: int = 256) -> list[list[int]]:
    """transformers generate on left-padded batches; returns new token ids."""
    torch.manual_seed(seed)
    results = []
    for start in range(0, len(prompts), batch_size):
        rows = [prompt_ids(p) for p in prompts[start:start + batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([[toy.PAD_ID] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        sampling = (dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
                    if temperature > 0 else dict(do_sample=False))
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS,
                             eos_token_id=toy.EOS_ID, pad_token_id=toy.PAD_ID, **sampling)
        results.extend(out[:, width:].tolist())
    return results


def eval_transformers(name: str, model_dir: Path, prompts: list[str], seed: int) -> dict:
    """Greedy and T=1 accuracy of one model with transformers generate."""
    t0 = time.time()
    model = load_hf(model_dir)
    return {"model": name,
            "greedy": accuracy(prompts, hf_generate(model, prompts, 0.0, seed)),
            "sampled_t1": accuracy(prompts, hf_generate(model, prompts, 1.0, seed)),
            "wall_s": round(time.time() - t0, 1)}


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--prompts", type=Path, default=toy.EVAL_PROMPTS)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-logprobs", action="store_true",
                        help="compare vLLM sampled-token log-probs with transformers")
    parser.add_argument("--transformers", action="store_true",
                        help="use transformers generate instead of vLLM")
    parser.add_argument("--subprocess", action="store_true",
                        help="run each model's vLLM engine in its own process")
    parser.add_argument("--json", action="store_true", help="print one JSON line per model")
    return parser.parse_args()


def run_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    """Evaluate one model in a fresh interpreter (a clean vLLM engine)."""
    import subprocess

    cmd = [sys.executable, __file__, "--models", name, "--prompts", str(args.prompts),
           "--seed", str(args.seed), "--json"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.check_logprobs:
        cmd.append("--check-logprobs")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    prompts = toy.load_prompts(args.prompts)[:args.limit]
    backend = "transformers" if args.transformers else "vllm"
    for name in args.models:
        if args.transformers:
            result = eval_transformers(name, MODELS[name], prompts, args.seed)
        elif args.subprocess:
            result = run_in_subprocess(name, args)
        else:
            result = eval_vllm(name, MODELS[name], prompts, args.seed, args.check_logprobs)
        result["backend"] = backend
        if args.json:
            print(json.dumps(result), flush=True)
            continue
        line = (f"{name:8s} [{backend}] {len(prompts)} prompts: "
                f"greedy {result['greedy']:.3f}  T=1 {result['sampled_t1']:.3f}")
        if "max_abs_logprob_diff" in result:
            line += f"  max|dlogp| {result['max_abs_logprob_diff']:.2e}"
        if result.get("text_mismatches"):
            line += f"  (vLLM text != decoded ids in {result['text_mismatches']} outputs)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
