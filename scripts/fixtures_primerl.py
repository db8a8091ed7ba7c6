"""Regenerate data/fixtures/primerl/: prime-rl token exports written by prime-rl's own writer path.

    source scripts/env.sh && .venv/bin/python scripts/fixtures_primerl.py [OUT_DIR]

The writer path (orchestrator stamping, packing, the trainer's forward and the exporter) is
:mod:`primerl_writer` (next to this file), copied from github.com/PrimeIntellect-ai/prime-rl at
commit 559b44772e471d1538537b8805cc77f3824a5e64 with file and line citations. This script builds
what it is fed: rollouts of a seeded bigram "policy" over a vocabulary of V = 32 (logits
``table[previous token]``), sampled by an "engine" that reports ``log_softmax(logits / T)`` of the
sampled token in float32, as TrainingSample dicts the way the orchestrator fills them (verifiers'
``Branch.logprobs`` / ``advantages`` spread: the value on sampled tokens, 0.0 elsewhere; a frozen
sampling source reports no log-probs, so 0.0 everywhere; ``temperatures`` = the env's configured
temperature on every token, orchestrator/train_sink.py L255-264). The trainer recomputes with the
same table: float32 plus ~1e-6 noise, or logits rounded to bfloat16 for the bf16 case.

Deterministic (fixed seeds). One directory per fixture, ``<name>/token_exports/step_<N>/rank_0.jsonl``
with ``STABLE``, and ``primerl.json`` beside the directory (so ``iwopd-kit check`` on the directory
sees only dumps): per fixture what was done, the failure class (null when healthy), where the
breakage is (``expect``: ``[row, position]`` in completion coordinates, or rows), and prime-rl's own
``mismatch_kl`` of the file (:func:`primerl_writer.primerl_mismatch_kl`, float64 definition and float32
trainer arithmetic). Expectations come from what this script did, never from
running the check.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

import primerl_writer as W  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "fixtures" / "primerl"
V = 32


class Bigram:
    """A seeded bigram model: logits [..., N, V] = table[ids] (position t predicts token t + 1)."""

    def __init__(self, seed: int, scale: float = 1.5):
        self.table = torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * scale

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


POLICY, TEACHER = Bigram(1), Bigram(2)


def trainer_logits(kind: str, seed: int):
    """The trainer's logits function: ``fp32`` (the table + N(0, 1e-6) noise) or ``bf16`` (rounded)."""
    g = torch.Generator().manual_seed(seed)

    def fn(ids: torch.Tensor) -> torch.Tensor:
        x = POLICY.logits(ids)
        if kind == "bf16":
            return x.to(torch.bfloat16).float()
        return x + 1e-6 * torch.randn(x.shape, generator=g)
    return fn


def sample_turn(model: Bigram, context: list[int], n: int, T: float, g: torch.Generator) -> tuple[list[int], list[float]]:
    """n tokens sampled at temperature T after ``context``; the engine's float32 log-prob of each."""
    toks, lps = [], []
    for _ in range(n):
        lp = torch.log_softmax(model.logits(torch.tensor(context[-1])) / T, -1)
        t = int(torch.multinomial(lp.exp(), 1, generator=g))
        toks.append(t)
        lps.append(float(lp[t]))
        context = context + [t]
    return toks, lps


def rollout(sid: int, env: str, turns: list[tuple[str, int]], g: torch.Generator, T: float = 1.0,
            stamped_T: float | None = None, model: Bigram = POLICY, logprobs: bool = True,
            turn_adv: list[float] | None = None) -> dict:
    """A TrainingSample dict: ``turns`` = [(role, length)], role ``assistant`` is sampled by ``model`` at
    T, anything else is context (random ids). ``turn_adv``: one advantage per assistant turn (None:
    no advantages, as OPD / SFT-distill ship none); ``stamped_T``: the temperature the orchestrator
    stamps (default T)."""
    toks, mask, lps, adv, k = [], [], [], [], 0
    for role, n in turns:
        if role == "assistant":
            new, lp = sample_turn(model, toks, n, T, g)
            toks += new
            mask += [True] * n
            lps += lp if logprobs else [0.0] * n
            adv += [turn_adv[k] if turn_adv else 0.0] * n
            k += 1
        else:
            toks += torch.randint(0, V, (n,), generator=g).tolist()
            mask += [False] * n
            lps += [0.0] * n
            adv += [0.0] * n
    return {"_id": sid, "token_ids": toks, "mask": mask, "logprobs": lps, "env_name": env,
            "temperatures": [stamped_T if stamped_T is not None else T] * len(toks),
            "advantages": adv if turn_adv is not None else None, "rl_weights": None, "ce_weights": None,
            "ref_kl_weights": None}


def lengths(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def grpo_group(first_id: int, env: str, n: int, g: torch.Generator, multi_turn: bool = False, **kw) -> list[dict]:
    """n rollouts of one prompt length pattern; GRPO advantages reward - group mean (continuous rewards)."""
    rewards = torch.rand(n, generator=g).tolist()
    mean = sum(rewards) / n
    out = []
    for i in range(n):
        turns = [("prompt", lengths(g, 3, 5)), ("assistant", lengths(g, 3, 6))]
        if multi_turn:
            turns += [("tool", lengths(g, 2, 4)), ("assistant", lengths(g, 3, 6))]
        a = rewards[i] - mean
        out.append(rollout(first_id + i, env, turns, g, turn_adv=[a] * (2 if multi_turn else 1), **kw))
    return out


def locate(path: Path, ids: list[int], sid: int, t: int) -> list[int]:
    """[row, completion position] of token t of sample sid in the written file."""
    row = ids.index(sid)
    rec = json.loads(path.read_text().splitlines()[row])
    return [row, t - rec["loss_mask"].index(True)]


def write(name: str, samples: list[dict], step: int, what: str, kind: str | None, trainer: str = "fp32",
          algo: dict[int, str] | None = None, **kw) -> tuple[Path, list[int], dict]:
    """Orchestrator (prune, route) then one trainer step; returns the file, its sample ids and the manifest entry."""
    for s in samples:
        W.stamp_loss_routing(s, (algo or {}).get(s["_id"], "rl"))
    samples = [s for s in samples if W.prune_zero_advantages(s)]
    out = OUT / name
    ids = W.train_step(samples, trainer_logits(trainer, seed=100 + step), V, out, step, **kw)
    path = out / "token_exports" / f"step_{step}" / "rank_0.jsonl"
    nan_to_null = lambda d: {k: (None if v != v else v) for k, v in d.items()}  # noqa: E731  (strict JSON)
    entry = {"what": what, "kind": kind, "file": str(path.relative_to(OUT)), "trainer": trainer,
             "primerl_mismatch_kl": nan_to_null(W.primerl_mismatch_kl(path)),
             "primerl_mismatch_kl_float32": nan_to_null(W.primerl_mismatch_kl(path, torch.float32))}
    return path, ids, entry


def build() -> dict:
    manifest = {}
    g = torch.Generator().manual_seed(0)
    samples = grpo_group(0, "reverse_text", 4, g) + grpo_group(4, "reverse_text", 4, g)
    _, _, e = write("healthy_single_turn", samples, 3, "GRPO, one env, T=1: engine float32 log-probs, trainer "
                    "float32 (+1e-6 noise); no weight streams", None)
    manifest["healthy_single_turn"] = e

    g = torch.Generator().manual_seed(1)
    samples = grpo_group(0, "tool_use", 3, g, multi_turn=True) + grpo_group(3, "tool_use", 3, g, multi_turn=True)
    first = samples[1]                    # per-turn credit: its first turn gets advantage 0 (pruned from rl)
    k = first["mask"].index(True)
    n1 = next(t for t in range(k, len(first["mask"])) if not first["mask"][t]) - k
    first["advantages"][k:k + n1] = [0.0] * n1
    path, ids, e = write("healthy_multi_turn", samples, 5, "two assistant turns around a loss-masked tool turn "
                         "(inference log-prob 0.0 there); trainer logits in bfloat16; sample 1's first turn has "
                         "advantage 0, so the orchestrator sets its rl_weights to 0 there (outside prime-rl's "
                         "mismatch_kl pool)", None, trainer="bf16")
    e["rl_zero"] = [locate(path, ids, 1, k)[0], locate(path, ids, 1, k)[1], n1]
    manifest["healthy_multi_turn"] = e

    g = torch.Generator().manual_seed(2)
    samples = grpo_group(0, "tool_use", 3, g, multi_turn=True) + grpo_group(3, "tool_use", 3, g, multi_turn=True)
    path, ids, e = write("multi_turn_shifted", samples, 7, "multi-turn; the trainer left micro batch 1's log-probs "
                         "in next-token convention (shift_tensor_right skipped): trainer_logprobs[t] is the "
                         "log-prob of token t + 1 on those samples", "offset", unshifted_micro_steps=(1,))
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    e["expect_rows"] = [r for r, rec in enumerate(recs) if rec["micro_step"] == 1]
    manifest["multi_turn_shifted"] = e

    g = torch.Generator().manual_seed(3)
    sft = [rollout(i, "math_sft", [("prompt", lengths(g, 3, 5)), ("assistant", lengths(g, 4, 8))], g,
                   model=TEACHER, logprobs=False) for i in range(3)]
    opd = [rollout(3 + i, "code_opd", [("prompt", lengths(g, 3, 5)), ("assistant", lengths(g, 4, 8))], g)
           for i in range(3)]
    _, _, e = write("distill", sft + opd, 2, "two envs: math_sft = SFT-distill from a frozen teacher (another "
                    "bigram; no sampling log-probs: inference 0.0; rl_weights 0, ce_weights 1), code_opd = OPD "
                    "(policy-sampled; rl_weights 0, ref_kl_weights 1)", None,
                    algo={**{i: "ce" for i in range(3)}, **{3 + i: "ref_kl" for i in range(3)}})
    manifest["distill"] = e

    g = torch.Generator().manual_seed(4)
    samples = grpo_group(0, "reverse_text", 3, g) + grpo_group(3, "reverse_text", 3, g)
    nan_at = samples[2]["mask"].index(True) + 1
    samples[2]["logprobs"][nan_at] = float("nan")               # the engine returned NaN for a sampled token
    inf_sid, inf_at = 4, samples[4]["mask"].index(True) + 2
    spots: dict = {}

    def edit(micro_step: int, t: dict, out: dict, sids: list[int]) -> None:   # the trainer's -inf (an overflow)
        start = 0
        for sid, n in zip(sids, t["sequence_lengths"]):
            if sid == inf_sid:
                out["logprobs"][0, start + inf_at] = float("-inf")
                spots["done"] = True
            start += n
    path, ids, e = write("nulls", samples, 4, "the engine's NaN log-prob on a sampled token of sample 2 and the "
                         "trainer's -inf on a token of sample 4, both written as null", "numerics", edit=edit)
    assert spots.get("done")
    e["expect"] = [locate(path, ids, 2, nan_at), locate(path, ids, inf_sid, inf_at)]
    manifest["nulls"] = e

    g = torch.Generator().manual_seed(5)
    samples = grpo_group(0, "math", 4, g) + grpo_group(4, "poetry", 4, g, T=0.7, stamped_T=1.0)
    path, ids, e = write("mixed_env_temperature", samples, 6, "two envs; poetry's harness sampled at T=0.7 while the "
                         "orchestrator stamped the configured 1.0, so the trainer recomputes poetry at T=1",
                         "temperature")
    e["expect_rows"] = sorted(ids.index(i) for i in range(4, 8))
    e["expect_group"] = "poetry"
    manifest["mixed_env_temperature"] = e
    return manifest


def main(out: Path = OUT) -> None:
    global OUT
    OUT = Path(out)
    if OUT.exists():
        shutil.rmtree(OUT)
    manifest = build()
    (OUT.parent / f"{OUT.name}.json").write_text(json.dumps({"commit": W.COMMIT, "vocab": V, "fixtures": manifest}, indent=1,
                                                  allow_nan=False) + "\n")
    for name, e in manifest.items():
        size = (OUT / e["file"]).stat().st_size
        print(f"  {name}: {e['file']} ({size} bytes), mismatch_kl/all {e['primerl_mismatch_kl'].get('mismatch_kl/all')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
