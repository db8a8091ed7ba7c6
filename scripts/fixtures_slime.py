"""Regenerate data/fixtures/slime/: slime debug dumps of the tiny student, built by slime's own code path.

    source scripts/env.sh && .venv/bin/python scripts/fixtures_slime.py

Read from github.com/THUDM/slime at commit 624b824a898ab0ec1fcb4d373004c7f3852bf515 (line numbers at
that commit). What slime does, and what this script does at each step:

1. Rollout. ``slime/rollout/sglang_rollout.py`` L152-221 (``generate``): ``sample.tokens`` = the prompt
   ids; SGLang's ``/generate`` answers ``meta_info.output_token_logprobs`` = ``(logprob, id, None)`` per
   new token and, with ``--rollout-top-p`` < 1 (L106-107 ``return_top_p_token_ids``), the kept sets as
   base64 int32 ``top_p_token_ids`` / ``top_p_token_offsets`` (slime's SGLang patch
   ``docker/patch/latest/sglang-top_p.patch``: ``_encode_top_p_token_ids``, ``get_top_p_token_ids_from_probs``
   (ids in descending-probability order), ``renorm_logprob_over_top_p``: the log-prob renormalised over the
   nucleus plus the sampled token). ``Sample.append_response_tokens`` (``slime/utils/types.py``
   L253-443) appends tokens, loss mask, log-probs and spans. The SGLang sampler is replaced here by its
   arithmetic on the tiny student in float32 (one forward per step): probs = softmax(logits / T), the
   nucleus of ``_top_p_keep_mask_sorted`` (rank < top_k and cumsum - p <= top_p), a draw from it.
2. Multi-turn: tool tokens are appended with ``trainable=False`` (``types.py`` L278-281: loss mask 0,
   log-prob 0.0; L304-350: empty top-p spans), then the model continues.
3. On-policy distillation with an SGLang teacher (``slime/rollout/on_policy_distillation.py`` L45-59):
   ``teacher_log_probs = input_token_logprobs[1:][-response_length:]`` (a float32 tensor).
4. Dumps: ``save_debug_rollout_data`` (``slime/observability/rollout_data_utils.py`` L140-153) saves
   ``{"rollout_id", "samples": [Sample.to_dict()]}``; then ``_convert_samples_to_train_data`` and
   ``_split_train_data_by_dp`` (``slime/ray/rollout.py`` L608-824; the DP partition here is a plain
   interleave instead of ``build_dp_schedule``), ``tensorize_rollout_data_for_training``
   (``rollout_data_utils.py`` L12-53), ``process_rollout_data`` (``slime/utils/data.py`` L304-329); the
   trainer's log-probs (``slime/backends/megatron_utils/loss.py`` L513-591, ``slime/utils/ppo_utils.py``
   L187-275: logits / T, the rollout kept set plus the target token when top-p < 1, response rows
   ``start - 1 : end - 1``), GRPO returns and the OPD term (``loss.py`` L667-767), and
   ``save_debug_train_data`` / ``_build_dump_payload`` (``slime/observability/train_data_utils.py``
   L104-242, ``format_version`` 2).

Directories (each ``data_0.pt`` + ``train_0.pt``; in each, sample 1 is multi-turn: its first turn
stops at ",", a tool turn "=0," follows, masked out): ``healthy`` (T 1, top-p 1, SGLang teacher),
``top_p`` (T 1.3, top-p 0.9, kept sets, a Megatron teacher in the train dump), ``shift`` (healthy,
but a custom generate stored each rollout log-prob one token early), ``teacher_offset`` (healthy, but
the teacher slice taken one token early: ``[-R - 1:-1]``), ``teacher_offset_2`` (healthy, but the teacher
slice of step 3 taken two tokens early: ``input_token_logprobs[1:][-R - 2:-2]``, so the first two response tokens
carry the teacher's log-probs of the prompt's last two tokens; the check: an offset warning per row naming the
shift -2).
"""

from __future__ import annotations

import base64
from array import array
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

import iwopd_kit as K
from iwopd_kit import toy
from research import REPO_ROOT

OUT = REPO_ROOT / "data" / "fixtures" / "slime"
PROMPTS = ("5+7+8=", "9+7+5=", "4+2+1+9=", "8+7+7+8=")   # held-out prompts, 3 and 4 terms
N_SAMPLES = 2                 # --n-samples-per-prompt
MAX_NEW = 24                  # --rollout-max-response-len
COMMA, EOS = 15, 2
TOOL_TOKENS = [14, 3, 15]     # "=0,": the tool turn of the multi-turn sample


# ------------------------------------------------------------------ slime/utils/types.py (L93-227)
class Status(Enum):
    PENDING, COMPLETED, TRUNCATED, ABORTED, FAILED = "pending", "completed", "truncated", "aborted", "failed"


@dataclass
class SpecInfo:
    spec_accept_token_num: int = 0
    spec_draft_token_num: int = 0
    spec_verify_ct: int = 0
    completion_token_num: int = 0


@dataclass
class PrefixCacheInfo:
    cached_tokens: int = 0
    total_prompt_tokens: int = 0


@dataclass
class Sample:                 # the fields of slime's Sample, in its order
    group_index: int | None = None
    index: int | None = None
    rollout_id: int | None = None
    prompt: Any = ""
    tokens: list[int] = field(default_factory=list)
    multimodal_inputs: dict | None = None
    multimodal_train_inputs: dict | None = None
    multimodal_train_input_id: str | None = None
    apply_chat_template_kwargs: dict = field(default_factory=dict)
    response: str = ""
    response_length: int = 0
    label: str | None = None
    reward: Any = None
    loss_mask: list[int] | None = None
    weight_versions: list[str] = field(default_factory=list)
    rollout_log_probs: list[float] | None = None
    rollout_top_p_token_ids: Any = None
    rollout_top_p_token_offsets: Any = None
    rollout_routed_experts: Any = None
    remove_sample: bool = False
    teacher_log_probs: Any = None
    status: Status = Status.PENDING
    metadata: dict = field(default_factory=dict)
    generate_function_path: str | None = None
    custom_rm_path: str | None = None
    train_metadata: dict | None = None
    session_id: str | None = None
    non_generation_time: float = 0.0
    spec_info: SpecInfo = field(default_factory=SpecInfo)
    prefix_cache_info: PrefixCacheInfo = field(default_factory=PrefixCacheInfo)

    def to_dict(self) -> dict:                                         # types.py L222-227
        value = self.__dict__.copy()
        value["status"] = self.status.value
        value["spec_info"] = dict(self.spec_info.__dict__)
        value["prefix_cache_info"] = dict(self.prefix_cache_info.__dict__)
        return value

    def append_response_tokens(self, tokens: list[int], log_probs: list[float] | None, trainable: bool,
                               meta_info: dict | None = None, text: str = "") -> None:   # types.py L253-314
        if tokens and not trainable:
            log_probs = [0.0] * len(tokens)
        self.response += text
        previous = self.response_length
        if tokens:
            self.tokens += tokens
            self.response_length += len(tokens)
            if self.loss_mask is None:
                self.loss_mask = [1] * previous
            self.loss_mask += [1 if trainable else 0] * len(tokens)
        if log_probs is not None:
            if self.rollout_log_probs is None:
                self.rollout_log_probs = [0.0] * previous
            self.rollout_log_probs += log_probs
        pad = bool(tokens and not trainable)
        if meta_info is not None or pad:
            self._apply_meta_info(meta_info or {}, len(tokens), pad)

    def _apply_meta_info(self, meta: dict, n: int, pad: bool) -> None:      # types.py L316-416
        applied = False
        if n and "top_p_token_ids" in meta:
            ids, offsets = (decode_int32(meta[k]) for k in ("top_p_token_ids", "top_p_token_offsets"))
            assert int(offsets[0]) == 0 and int(offsets[-1]) == ids.numel() and offsets.numel() == n + 1
            applied = True
            if self.rollout_top_p_token_ids is None and self.rollout_top_p_token_offsets is None:
                self.rollout_top_p_token_ids, self.rollout_top_p_token_offsets = ids, offsets
            else:                                                      # _merge_rollout_top_p_token_data
                base = int(self.rollout_top_p_token_offsets[-1])
                self.rollout_top_p_token_ids = torch.cat([self.rollout_top_p_token_ids, ids])
                self.rollout_top_p_token_offsets = torch.cat([self.rollout_top_p_token_offsets, offsets[1:] + base])
        if pad and n and self.rollout_top_p_token_offsets is not None and not applied:   # _pad_rollout_top_p_offsets
            last = int(self.rollout_top_p_token_offsets[-1])
            self.rollout_top_p_token_offsets = torch.cat([self.rollout_top_p_token_offsets,
                                                          torch.full((n,), last, dtype=torch.int32)])
        if "finish_reason" not in meta:
            return
        self.prefix_cache_info.cached_tokens += meta.get("cached_tokens", 0)
        self.prefix_cache_info.total_prompt_tokens += meta.get("prompt_tokens", 0)
        if "weight_version" in meta:
            self.weight_versions.append(meta["weight_version"])
        self.status = {"length": Status.TRUNCATED, "abort": Status.ABORTED,
                       "stop": Status.COMPLETED}[meta["finish_reason"]["type"]]


def encode_int32(values: list[int]) -> str:                # the SGLang patch's _b64_encode_int32
    return base64.b64encode(array("i", values).tobytes()).decode("utf-8")


def decode_int32(value: str) -> torch.Tensor:              # slime/utils/misc.py decode_int32_meta_array
    return torch.frombuffer(bytearray(base64.b64decode(value.encode("ascii"))), dtype=torch.int32)


# ------------------------------------------------------------------------------ the SGLang server
def nucleus(probs: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Kept ids in descending-probability order (the patch's _top_p_keep_mask_sorted)."""
    p_sort, idx = probs.sort(descending=True)
    keep = torch.arange(probs.numel()) < (top_k if top_k > 0 else probs.numel())
    keep &= (torch.cumsum(p_sort, 0) - p_sort) <= top_p
    return idx[keep]


@torch.no_grad()
def sglang_generate(model, input_ids: list[int], T: float, top_p: float, max_new: int, stop: set[int],
                    gen: torch.Generator) -> dict:
    """What ``/generate`` returns: ``{"text", "meta_info"}`` (one full forward per new token)."""
    seq, out, kept_rows = list(input_ids), [], []
    finish = {"type": "length", "length": max_new}
    for _ in range(max_new):
        probs = torch.softmax(model(torch.tensor([seq])).logits[0, -1].float() / T, -1)
        if top_p < 1.0:
            kept = nucleus(probs, top_p, 0)
            y = int(kept[torch.multinomial(probs[kept] / probs[kept].sum(), 1, generator=gen)])
            denom = probs[torch.unique(torch.cat([kept, torch.tensor([y])]))].sum()
            lp = float(torch.log(probs[y] / denom))                  # renorm_logprob_over_top_p
            kept_rows.append(kept.tolist())
        else:
            y = int(torch.multinomial(probs, 1, generator=gen))
            lp = float(torch.log(probs[y]))
        seq.append(y)
        out.append((lp, y, None))
        if y in stop:
            finish = {"type": "stop", "matched": y}
            break
    meta = {"output_token_logprobs": out, "finish_reason": finish, "prompt_tokens": len(input_ids),
            "completion_tokens": len(out), "cached_tokens": 0, "weight_version": "default"}
    if kept_rows:                                                     # _encode_top_p_token_ids
        flat, offsets = [], [0]
        for row in kept_rows:
            flat += row
            offsets.append(len(flat))
        meta["top_p_token_ids"], meta["top_p_token_offsets"] = encode_int32(flat), encode_int32(offsets)
    return {"text": "", "meta_info": meta}


@torch.no_grad()
def input_token_logprobs(model, tokens: list[int], T: float) -> list[float | None]:
    """SGLang's ``input_token_logprobs`` values (``max_new_tokens`` 0, ``logprob_start_len`` 0): None first."""
    lp = torch.log_softmax(model(torch.tensor([tokens])).logits[0].float() / T, -1)
    return [None] + lp[:-1].gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0].tolist()


# ---------------------------------------------------------------------------------- the trainer
@torch.no_grad()
def trainer_log_probs(model, tokens: torch.Tensor, R: int, T: float, ids=None, offsets=None) -> torch.Tensor:
    """loss.py get_log_probs_and_entropy for one sample (cp 1): logits / T, optional kept-set replay."""
    z = model(tokens[None]).logits[0].float() / T
    rows, target = z[len(tokens) - R - 1: len(tokens) - 1], tokens[len(tokens) - R:]
    if ids is not None:                                   # _fill_topp_mask_rows + the target force-kept
        keep = torch.zeros_like(rows, dtype=torch.bool)
        for j in range(R):
            keep[j, ids[offsets[j]:offsets[j + 1]].long()] = True
        keep[torch.arange(R), target] = True
        rows = rows.masked_fill(~keep, float("-inf"))
    return torch.log_softmax(rows, -1).gather(-1, target[:, None])[:, 0]


# ------------------------------------------------------------------------------------ the run
def rollout(student, teacher, tok, T: float, top_p: float, sglang_teacher: bool, seed: int) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for g, prompt in enumerate(PROMPTS):
        for k in range(N_SAMPLES):
            s = Sample(group_index=g, index=len(samples), prompt=prompt, label=toy.solve(prompt),
                       metadata={"source_name": f"sums{len(toy.parse_prompt(prompt))}"})
            s.tokens = tok(prompt)["input_ids"]
            multi_turn = (g, k) == (0, 1)
            stops = {EOS, COMMA} if multi_turn else {EOS}
            out = sglang_generate(student, s.tokens, T, top_p, MAX_NEW, stops, gen)
            s.append_response_tokens([t for _, t, _ in out["meta_info"]["output_token_logprobs"]],
                                     [v for v, _, _ in out["meta_info"]["output_token_logprobs"]], True,
                                     out["meta_info"])
            if multi_turn and s.tokens[-1] == COMMA:
                s.append_response_tokens(TOOL_TOKENS, None, False)
                out = sglang_generate(student, s.tokens, T, top_p, MAX_NEW - s.response_length, {EOS}, gen)
                s.append_response_tokens([t for _, t, _ in out["meta_info"]["output_token_logprobs"]],
                                         [v for v, _, _ in out["meta_info"]["output_token_logprobs"]], True,
                                         out["meta_info"])
            s.response = tok.decode(s.tokens[-s.response_length:], skip_special_tokens=True)
            s.reward = float(toy.TASKS["main"].is_correct(prompt, s.response))
            if sglang_teacher:                              # on_policy_distillation.post_process_rewards
                t = torch.tensor(input_token_logprobs(teacher, s.tokens, T)[1:], dtype=torch.float32)
                s.teacher_log_probs = t[-s.response_length:]
            samples.append(s)
    return samples


def train_dump(samples: list[Sample], student, teacher, T: float, top_p: float, megatron_teacher: bool) -> dict:
    raw = [s.reward for s in samples]                                 # rollout.py _post_process_rewards (grpo)
    r = torch.tensor(raw, dtype=torch.float).reshape(-1, N_SAMPLES)
    r = r - r.mean(dim=-1, keepdim=True)
    rewards = (r / (r.std(dim=-1, keepdim=True) + 1e-6)).flatten().tolist()
    data = {"tokens": [s.tokens for s in samples], "response_lengths": [s.response_length for s in samples],
            "rewards": rewards, "raw_reward": raw, "truncated": [int(s.status == Status.TRUNCATED) for s in samples],
            "sample_indices": [s.index for s in samples], "rollout_ids": [s.index for s in samples],
            "loss_masks": [s.loss_mask for s in samples]}
    data["rollout_mask_sums"] = [sum(m) for m in data["loss_masks"]]
    data["rollout_log_probs"] = [s.rollout_log_probs for s in samples]
    if top_p != 1.0:
        data["rollout_top_p_token_ids"] = [s.rollout_top_p_token_ids for s in samples]
        data["rollout_top_p_token_offsets"] = [s.rollout_top_p_token_offsets for s in samples]
    if samples[0].teacher_log_probs is not None:
        data["teacher_log_probs"] = [s.teacher_log_probs for s in samples]
    data["source_names"] = [s.metadata["source_name"] for s in samples]
    data["total_lengths"] = [len(t) for t in data["tokens"]]
    shards = []
    for rank in range(2):                                             # _split_train_data_by_dp, dp_size 2
        part = [i for i in range(len(samples)) if i % 2 == rank]
        rd: dict[str, Any] = {"partition": part}
        for key in ("tokens", "response_lengths", "rewards", "truncated", "loss_masks", "sample_indices", "rollout_ids",
                    "rollout_mask_sums", "rollout_log_probs", "rollout_top_p_token_ids", "rollout_top_p_token_offsets",
                    "source_names", "teacher_log_probs"):
            if key in data:
                rd[key] = [data[key][j] for j in part]
        rd["raw_reward"], rd["total_lengths"] = data["raw_reward"], data["total_lengths"]
        rd["global_batch_sizes"], rd["num_microbatches"] = [len(samples)], [1]
        rd["micro_batch_indices"] = [[list(range(len(part)))]]
        for key, dtype in (("tokens", torch.long), ("loss_masks", torch.int), ("rollout_log_probs", torch.float32),
                           ("rollout_top_p_token_ids", torch.int32), ("rollout_top_p_token_offsets", torch.int32),
                           ("teacher_log_probs", torch.float32)):          # tensorize_rollout_data_for_training
            if key in rd:
                rd[key] = [torch.as_tensor(v, dtype=dtype).contiguous() for v in rd[key]]
        rd["rollout_mask_sums"] = torch.as_tensor(rd["rollout_mask_sums"], dtype=torch.float32)
        rd["total_lengths"] = [rd["total_lengths"][i] for i in part]      # process_rollout_data
        rd["local_raw_reward"] = [rd["raw_reward"][i] for i in part]
        replay = (rd.get("rollout_top_p_token_ids"), rd.get("rollout_top_p_token_offsets"))

        def forward(model, i):
            ids = None if replay[0] is None else (replay[0][i], replay[1][i])
            return trainer_log_probs(model, rd["tokens"][i], rd["response_lengths"][i], T, *(ids or (None, None)))

        rd["ref_log_probs"] = [forward(student, i) for i in range(len(part))]     # store_prefix "ref_"
        if megatron_teacher:
            rd["teacher_log_probs"] = [forward(teacher, i) for i in range(len(part))]   # store_prefix "teacher_"
        rd["log_probs"] = [forward(student, i) for i in range(len(part))]
        rd["kl"] = [lp - ref for lp, ref in zip(rd["log_probs"], rd["ref_log_probs"])]   # k1, kl_coef 0.01
        returns = [torch.ones_like(kl) * rw for kl, rw in zip(rd["kl"], rd["rewards"])]  # get_grpo_returns
        rd["opd_reverse_kl"] = [s - t for s, t in zip(rd["log_probs"], rd["teacher_log_probs"])]
        rd["advantages"] = [a - 1.0 * kl for a, kl in zip(returns, rd["opd_reverse_kl"])]  # opd_kl_coef 1
        rd["returns"] = returns
        shards.append({"rank": rank, "data_parallel_rank": rank, "rollout_data": rd})
    return build_dump_payload(shards, rollout_id=0, writer_rank=0)


def build_dump_payload(dp_shards: list[dict], *, rollout_id: int, writer_rank: int) -> dict:
    """train_data_utils.py L112-188, verbatim in behaviour."""
    samples, layout, whole = [], [], {}
    id_columns = {"sample_indices": "sample_index", "partition": "rollout_position"}
    for shard in dp_shards:
        rd, dp_rank = shard["rollout_data"], shard["data_parallel_rank"]
        n = len(rd["response_lengths"])
        shard_layout = {"rank": shard["rank"], "data_parallel_rank": dp_rank}
        for column in id_columns:
            shard_layout[column] = list(rd[column]) if rd.get(column) is not None else None
        per_sample = {}
        for key, value in rd.items():
            if key in id_columns:
                continue
            if key == "raw_reward":
                whole.setdefault(key, value)
            elif key in ("micro_batch_indices", "num_microbatches", "global_batch_sizes") or not (
                    (torch.is_tensor(value) and value.dim() >= 1 and value.size(0) == n)
                    or (isinstance(value, (list, tuple)) and len(value) == n)):
                shard_layout[key] = value
            else:
                per_sample[key] = value
        for i in range(n):
            sample = {"data_parallel_rank": dp_rank}
            for column, scalar_key in id_columns.items():
                if rd.get(column) is not None:
                    sample[scalar_key] = rd[column][i]
            for key, column in per_sample.items():
                sample[key] = column[i]
            samples.append(sample)
        layout.append(shard_layout)
    samples.sort(key=lambda s: s["rollout_position"])
    return {"format_version": 2, "rollout_id": rollout_id, "rank": writer_rank, "samples": samples,
            "dp_shards": layout, **whole}


WRITTEN: dict[str, str] = {}


def write(name: str, samples: list[Sample], train: dict, what: str) -> None:
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"rollout_id": 0, "samples": [s.to_dict() for s in samples]}, d / "data_0.pt")
    torch.save(train, d / "train_0.pt")
    WRITTEN[name] = what
    print(f"  {name}: {len(samples)} samples, {sum(s.response_length for s in samples)} response tokens")


def write_readme() -> None:
    lines = ["# slime debug dumps (`--save-debug-rollout-data` `data_0.pt`, `--save-debug-train-data` `train_0.pt`)", "",
             "Generated by `source scripts/env.sh && .venv/bin/python scripts/fixtures_slime.py` (deterministic; how, and",
             "which slime code it follows, is in its docstring). 4 prompts x 2 samples of the tiny student; sample 1 is",
             "multi-turn (a tool turn '=0,' with loss mask 0, log-prob 0.0, no kept set). Checked by `tests/test_slime.py`.",
             ""]
    lines += [f"- `{name}/`: {what}" for name, what in WRITTEN.items()]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    torch.manual_seed(0)
    student, teacher = K.load_model(toy.STUDENT_DIR), K.load_model(toy.TEACHER_DIR)
    tok = K.load_tokenizer(toy.STUDENT_DIR)
    healthy = rollout(student, teacher, tok, 1.0, 1.0, sglang_teacher=True, seed=0)
    write("healthy", healthy, train_dump(healthy, student, teacher, 1.0, 1.0, False),
          "T 1, top-p 1, SGLang teacher")
    top_p = rollout(student, teacher, tok, 1.3, 0.9, sglang_teacher=False, seed=1)
    write("top_p", top_p, train_dump(top_p, student, teacher, 1.3, 0.9, True),
          "T 1.3, top-p 0.9: kept sets, processed log-probs; Megatron teacher in the train dump")
    shifted = rollout(student, teacher, tok, 1.0, 1.0, sglang_teacher=True, seed=0)
    for s in shifted:        # a custom generate rescoring the sequence and slicing [P-2 : P-2+R]: one token early
        lps = input_token_logprobs(student, s.tokens, 1.0)[1:]
        P = len(s.tokens) - s.response_length
        s.rollout_log_probs = lps[P - 2: P - 2 + s.response_length]
    write("shift", shifted, train_dump(shifted, student, teacher, 1.0, 1.0, False),
          "rollout log-probs one token early: token j holds the log-prob of token j-1 (the check: an offset error "
          "per row; row 1's 3-token second turn takes its first turn's shift)")
    offset = rollout(student, teacher, tok, 1.0, 1.0, sglang_teacher=True, seed=0)
    for s in offset:
        t = torch.tensor(input_token_logprobs(teacher, s.tokens, 1.0)[1:], dtype=torch.float32)
        s.teacher_log_probs = t[-s.response_length - 1:-1]
    write("teacher_offset", offset, train_dump(offset, student, teacher, 1.0, 1.0, False),
          "teacher log-probs sliced [-R - 1:-1]: token j holds the teacher's log-prob of token j-1 (the check: an "
          "offset warning per row naming the teacher series)")
    offset2 = rollout(student, teacher, tok, 1.0, 1.0, sglang_teacher=True, seed=0)
    for s in offset2:        # the teacher slice taken two tokens early: [-R - 2:-2]
        t = torch.tensor(input_token_logprobs(teacher, s.tokens, 1.0)[1:], dtype=torch.float32)
        s.teacher_log_probs = t[-s.response_length - 2:-2]
    write("teacher_offset_2", offset2, train_dump(offset2, student, teacher, 1.0, 1.0, False),
          "teacher log-probs sliced [-R - 2:-2]: token j holds the teacher's log-prob of token j-2 (the check: an "
          "offset warning per row naming the teacher series and the shift -2)")
    write_readme()


if __name__ == "__main__":
    main()
