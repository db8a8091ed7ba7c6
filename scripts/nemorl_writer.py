"""NeMo-RL's ``train_data_step{N}.jsonl`` writer path, reproduced for fixtures, and NeMo-RL's own
``token_mult_prob_error``.

Minimal copies of NeMo-RL's code at commit 7ea279abfbeb698b092856d0dab61e7cf39bc909
(github.com/NVIDIA-NeMo/RL), with the file and lines each copies:

1. rollout message logs: a generated assistant message carries ``generation_logprobs`` (vLLM's
   log-prob of each of its tokens, nemo_rl/experience/rollouts.py L514-523); an environment
   observation is a message of the environment's role with tokenized ``content`` and nothing else
   (rollouts.py L981-1019);
2. ``add_grpo_token_loss_masks_and_generation_logprobs`` (nemo_rl/algorithms/grpo.py L1910-1942):
   ``token_loss_mask`` 1 on generated assistant messages, 0 elsewhere; zero ``generation_logprobs``
   where missing;
3. ``message_log_to_flat_messages`` / ``batched_message_log_to_flat_message``
   (nemo_rl/data/llm_message_utils.py L59-147, L257-430): concatenated per sample, right-padded to
   the batch's longest (rounded up to ``make_sequence_length_divisible_by``) with 0, token ids with
   the pad id; ``input_lengths`` = the unpadded lengths;
4. ``train_data`` (grpo.py L3155-3173) and ``prev_logprobs`` = ``policy.get_logprobs`` (automodel
   ``LogprobsPostProcessor``, nemo_rl/models/automodel/train.py L689-798, temperature scaling L180-193
   and L371-385): position t holds the log-prob of token t, position 0 holds 0, padding is zeroed;
   GRPO advantages (reward - group mean) expanded over the whole row
   (nemo_rl/algorithms/advantage_estimator.py L69-98, without std normalisation);
5. ``log_data`` (grpo.py L3633-3654) written by ``Logger.log_batched_dict_as_jsonl``
   (nemo_rl/utils/logger.py L1071-1098): a ``BatchedDataDict`` of Python lists sliced one sample at
   a time (nemo_rl/distributed/batched_data_dict.py L885-905, L1006-1027), so every value of a line
   is a one-element list, plus ``"idx"``; ``json.dumps(..., default=str)`` writes NaN / Infinity
   literally.

:func:`nemorl_token_mult_prob_error` recomputes NeMo-RL's logged ``token_mult_prob_error`` from a
dump (nemo_rl/algorithms/loss/loss_functions.py L377-413).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

COMMIT = "7ea279abfbeb698b092856d0dab61e7cf39bc909"


def add_loss_masks(message_logs: list[list[dict]]) -> None:
    """grpo.py L1910-1942 (router replay left out)."""
    for log in message_logs:
        for m in log:
            gen = m["role"] == "assistant" and "generation_logprobs" in m
            m["token_loss_mask"] = torch.ones_like(m["token_ids"]) if gen else torch.zeros_like(m["token_ids"])
            if "generation_logprobs" not in m:
                m["generation_logprobs"] = torch.zeros_like(m["token_ids"], dtype=torch.float32)


def flat(log: list[dict]) -> dict[str, Any]:
    """llm_message_utils.py L59-148: tensors concatenated, strings listed."""
    keys = {k for m in log for k in m}
    out = {k: [m[k] for m in log if k in m] for k in keys}
    return {k: (torch.cat(v) if isinstance(v[0], torch.Tensor) else v) for k, v in out.items()}


def batched_flat(logs: list[list[dict]], pad_id: int, divisible_by: int = 1) -> tuple[dict[str, Any], torch.Tensor]:
    """llm_message_utils.py L257-432 (text only): right padding, 0 unless the pad dict says otherwise."""
    seqs = [flat(log) for log in logs]
    max_len = max(v.size(0) for s in seqs for v in s.values() if isinstance(v, torch.Tensor))
    if max_len % divisible_by:
        max_len = (max_len // divisible_by + 1) * divisible_by
    lengths = torch.tensor([max(v.size(0) for v in s.values() if isinstance(v, torch.Tensor)) for s in seqs],
                           dtype=torch.int32)
    result: dict[str, Any] = {}
    for k in {k for s in seqs for k in s}:
        vals = [s.get(k) for s in seqs]
        if not isinstance(vals[0], torch.Tensor):
            result[k] = vals
            continue
        pad = pad_id if k == "token_ids" else 0
        result[k] = torch.stack([torch.nn.functional.pad(v, (0, max_len - v.size(0)), value=pad) for v in vals])
    return result, lengths


def get_logprobs(logits_fn: Callable[[torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                 input_lengths: torch.Tensor, temperature: float, leading_zero: torch.Tensor | None = None) -> torch.Tensor:
    """automodel/train.py L180-193, L371-385, L689-798 (no packing, no top-k/p): [B, L] float32.

    ``leading_zero``: bool [B]; False drops the prepended 0 for that row (a broken worker: next-token
    convention; the pad to the batch length, dtensor_policy_worker_v2.py L674-680, then ends it with 0)."""
    logits = logits_fn(input_ids).float()
    if temperature != 1.0:
        logits = logits / temperature
    nxt = input_ids[:, 1:]
    lp = torch.gather(logits[:, : nxt.shape[1]].log_softmax(-1), -1, nxt.unsqueeze(-1)).squeeze(-1)   # (B, L - 1)
    out = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)                                         # (B, L)
    if leading_zero is not None:
        out[~leading_zero] = torch.cat([lp, torch.zeros_like(lp[:, :1])], dim=1)[~leading_zero]
    keep = torch.arange(out.shape[1])[None, :] < input_lengths[:, None]
    return out * keep


def log_batched_dict_as_jsonl(to_log: dict[str, list], path: Path) -> None:
    """logger.py L1071-1098: one line per sample, each value the sample's one-element slice."""
    n = len(next(iter(to_log.values())))                         # BatchedDataDict.size: the first key's length
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(n):
            sample = {k: v[i:i + 1] for k, v in to_log.items()}   # BatchedDataDict.slice of lists
            f.write(json.dumps({**sample, "idx": i}, default=str) + "\n")


def grpo_dump(message_logs: list[list[dict]], rewards: list[float], groups: list[int], loss_multiplier: list[float],
              logits_fn: Callable, temperature: float, path: Path, pad_id: int = 0, divisible_by: int = 8,
              agent_refs: list[dict] | None = None, leading_zero: list[bool] | None = None,
              edit: Callable[[dict], None] | None = None) -> None:
    """One GRPO step's data path from message logs to ``train_data_step{N}.jsonl`` (grpo.py L3148-3173,
    L3238-3249, L3286-3299, L3633-3654). ``groups``: the prompt group of each sample (the baseline);
    ``edit(train_data)`` may alter the tensors before the dump (a broken run)."""
    add_loss_masks(message_logs)
    fm, input_lengths = batched_flat(message_logs, pad_id, divisible_by)
    train = {"input_ids": fm["token_ids"], "input_lengths": input_lengths,
             "generation_logprobs": fm["generation_logprobs"], "token_mask": fm["token_loss_mask"],
             "sample_mask": torch.tensor(loss_multiplier, dtype=torch.float32)}
    lz = None if leading_zero is None else torch.tensor(leading_zero)
    train["prev_logprobs"] = get_logprobs(logits_fn, train["input_ids"], input_lengths, temperature, lz)
    r = torch.tensor(rewards, dtype=torch.float32)
    g = torch.tensor(groups)
    base = torch.stack([r[g == k].mean() for k in g.tolist()])
    train["advantages"] = (r - base).unsqueeze(-1).expand(train["token_mask"].shape)
    if edit is not None:
        edit(train)
    log: dict[str, list] = {}
    if agent_refs is not None:
        log["agent_ref"] = agent_refs
    log["content"] = fm["content"]
    log["rewards"] = r.tolist()
    log["input_lengths"] = input_lengths.tolist()
    log["token_ids"] = train["input_ids"].tolist()
    log["token_loss_mask"] = train["token_mask"].tolist()
    log["sample_loss_mask"] = train["sample_mask"].tolist()
    log["advantages"] = train["advantages"].tolist()
    log["generation_logprobs"] = train["generation_logprobs"].tolist()
    log["prev_logprobs"] = train["prev_logprobs"].tolist()
    log_batched_dict_as_jsonl(log, path)


def _unwrap(v: Any) -> Any:
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def nemorl_token_mult_prob_error(path: str | Path, dtype: torch.dtype = torch.float64) -> float:
    """NeMo-RL's ``token_mult_prob_error`` of a dump, as loss_functions.py L377-413 computes it (L404-412).

    ``mask = token_mask[:, 1:] * sample_mask``; ``sum(exp(|gen - prev| * mask) * mask) / (sum(mask) + 1e-8)``
    (``masked_mean`` with ``global_normalization_factor`` = the global valid-token count,
    nemo_rl/algorithms/utils.py L212-224 and nemo_rl/models/automodel/data.py L408-420; the per-micro-batch
    sums add up to the batch's). One global batch per step (train_global_batch_size = the step's
    samples, GRPO's usual setting); with k global batches NeMo-RL logs the sum of k such means
    (grpo.py L3466-3491). A NaN anywhere in a row's log-probs makes it NaN (NaN * 0 = NaN), as in NeMo-RL.
    """
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]

    def col(key: str) -> torch.Tensor:
        return torch.tensor([_unwrap(r[key]) for r in rows], dtype=dtype)
    tm, sm = col("token_loss_mask")[:, 1:], col("sample_loss_mask")
    gen, prev = col("generation_logprobs")[:, 1:], col("prev_logprobs")[:, 1:]
    mask = tm * sm.unsqueeze(-1)
    lp_error = torch.abs(gen - prev)
    return float((torch.exp(lp_error * mask) * mask).sum() / (mask.sum() + 1e-8))


__all__ = ["COMMIT", "grpo_dump", "nemorl_token_mult_prob_error"]
