"""Rollout throughput: vLLM offline vs transformers ``generate`` (tokens/s), and the kit's overhead on
top of raw vLLM ``LLM.generate``.

Models: the bundled student (199K params) and teacher (857K), and a ~1.4M-parameter Llama with the
same tokenizer and random weights (made in a temp dir; it rarely emits EOS, so its rows run to
``max_tokens``). For each: 256 held-out prompts at temperature 1, top_p 1, up to 48 new tokens,
per-token log-probs requested on every path.

* ``kit vLLM``: :class:`iwopd_kit.VLLMEngine` ``.generate`` (SamplingParams per request, the
  conversion to a :class:`~iwopd_kit.Batch`);
* ``raw vLLM``: the same shared ``LLM`` object's ``generate`` with the same SamplingParams, outputs
  left as RequestOutputs (the baseline for the kit's overhead, goal < 5%). Kit and raw calls are
  interleaved; the kit's own work (``from_request_outputs``: RequestOutputs -> Batch) is also timed
  alone on the raw outputs, which is the overhead without the run-to-run noise of generation;
* ``kit transformers``: :class:`iwopd_kit.TransformersEngine` (``generate`` with logits kept).

Each timing is the best of ``--repeats`` calls after a warm-up call. Run with the project's env::

    source scripts/env.sh && .venv/bin/python -m benchmarks.bench_rollout
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from iwopd_kit import Sampling, TransformersEngine, VLLMEngine, from_request_outputs, toy
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from iwopd_kit.engines.scoring import load_model, load_tokenizer

from benchmarks.timing import best_of


def make_random_model(out: Path, hidden: int = 160, layers: int = 4, intermediate: int = 512) -> int:
    """A random-weight Llama (head_dim 32) with the toy tokenizer in ``out``; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_pretrained(toy.STUDENT_DIR)
    cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size = hidden, layers, intermediate
    cfg.num_attention_heads = cfg.num_key_value_heads = hidden // 32
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(toy.STUDENT_DIR).save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def raw_vllm(engine: VLLMEngine, prompts: list[list[int]], s: Sampling):
    from vllm import SamplingParams

    params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, logprobs=0,
                             seed=s.seed + i, stop_token_ids=list(s.stop_token_ids)) for i in range(len(prompts))]
    return engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = load_tokenizer(toy.STUDENT_DIR)
    prompts = [tok(p)["input_ids"] for p in toy.load_prompts(toy.EVAL_PROMPTS)[: args.prompts]]
    s = Sampling(temperature=1.0, top_p=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=0, stop_token_ids=(toy.EOS_ID,))
    tmp = Path(tempfile.mkdtemp(prefix="iwopd_bench_"))
    try:
        n_random = make_random_model(tmp)
        models = [("student", toy.STUDENT_DIR, 199_000), ("teacher", toy.TEACHER_DIR, 857_000),
                  ("random-1.4M", tmp, n_random)]
        print(f"{len(prompts)} prompts, T=1, top_p 1, <= 48 new tokens, best of {args.repeats}\n")
        print("| model | params | kit vLLM tok/s | raw vLLM tok/s | kit time / raw - 1 | "
              "conversion to Batch / raw time | transformers tok/s | kit vLLM / transformers |")
        print("|---|---|---|---|---|---|---|---|")
        for name, path, n_params in models:
            engine = VLLMEngine(path)
            engine.generate(prompts[:8], s)                    # warm-up (kernel compile on first log-probs)
            t_kit = t_raw = float("inf")
            for _ in range(args.repeats):          # interleaved, so drifts of a shared machine hit both
                t, batch = best_of(lambda: engine.generate(prompts, s), 1)
                t_kit = min(t_kit, t)
                t, outs = best_of(lambda: raw_vllm(engine, prompts, s), 1)
                t_raw = min(t_raw, t)
            t_conv, _ = best_of(lambda: from_request_outputs(outs, engine.settings(s)), args.repeats)
            n_kit = sum(batch.lengths)
            n_raw = sum(len(o.outputs[0].token_ids) for o in outs)
            assert n_kit == n_raw, "same seeds must give the same tokens on both vLLM paths"
            hf = TransformersEngine(load_model(path))
            hf.generate(prompts[:8], s)
            t_hf, hb = best_of(lambda: hf.generate(prompts, s), args.repeats)
            n_hf = sum(hb.lengths)
            kit_tps, raw_tps, hf_tps = n_kit / t_kit, n_raw / t_raw, n_hf / t_hf
            print(f"| {name} | {n_params / 1e6:.2f}M | {kit_tps:,.0f} | {raw_tps:,.0f} | "
                  f"{(t_kit / t_raw - 1) * 100:+.1f}% | {t_conv / t_raw * 100:.1f}% | {hf_tps:,.0f} | "
                  f"{kit_tps / hf_tps:.2f}x |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
