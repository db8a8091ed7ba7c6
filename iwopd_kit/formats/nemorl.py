"""NeMo-RL's ``train_data_step{N}.jsonl`` -> completion coordinates.

Learned from NeMo-RL's writer (github.com/NVIDIA-NeMo/RL, commit 7ea279a):
``nemo_rl/algorithms/grpo.py`` builds ``log_data`` after the policy update (L3633-3654; the async
loop L5261-5281, ``grpo_sync.py`` and ``ppo.py`` write the same keys) unless
``env.should_log_nemo_gym_responses`` is set, and ``Logger.log_batched_dict_as_jsonl``
(``nemo_rl/utils/logger.py`` L1071-1098) writes one line per sample of the step. The logger slices a
``BatchedDataDict`` of Python lists one sample at a time, so **every value of a line is a
one-element list** (``"token_ids": [[...]]``, ``"input_lengths": [37]``), plus ``"idx"``; NaN and
±inf are written literally (``json.dumps`` default). Keys and what they hold:

- ``token_ids`` [[L]]: prompt + every turn, right-padded with the tokenizer's pad id to the step's
  longest sample (rounded up to ``make_sequence_length_divisible_by``); ``input_lengths`` [n]: the
  unpadded length;
- ``token_loss_mask`` [[L]]: 1 on generated assistant messages (the ones carrying
  ``generation_logprobs``), 0 on the prompt, environment / tool / user turns, prompt-supplied
  assistant messages and padding (grpo.py L1910-1942);
- ``generation_logprobs`` [[L]]: vLLM's log-prob of each generated token, 0.0 elsewhere;
- ``prev_logprobs`` [[L]]: the trainer's recompute with the pre-update policy (``policy.get_logprobs``):
  position t holds the log-prob of token t (position 0 holds 0; padding zeroed,
  nemo_rl/models/automodel/train.py L759-789); all 0.0 when ``force_on_policy_ratio`` skipped that
  forward (grpo.py L3238-3249);
- ``sample_loss_mask`` [s]: the sample's loss multiplier (0: left out of the loss, e.g. overlong
  filtering or a sequence-level error mask); ``rewards``, ``advantages``, ``content`` (message texts),
  ``agent_ref`` (NeMo Gym only: ``{"type": ..., "name": ...}``), ``filtered_rewards`` (dynamic sampling).

NeMo-RL's own ``token_mult_prob_error`` (nemo_rl/algorithms/loss/loss_functions.py L377-413) is the
mean of ``exp(|generation - prev|)`` over ``token_mask[:, 1:] * sample_mask``: the generated tokens of
the samples that count. (NeMo-RL's distillation writes ``train_data_step{N}.jsonl`` with only
``content`` and ``input_lengths``, nemo_rl/algorithms/distillation.py L1079-1085: nothing to check.)

Rules of this reader (``j`` = completion position, ``t`` = position in the line's lists):

- prompt / completion: the completion starts at the first ``token_loss_mask`` token (the first
  generated token) and ends at ``input_lengths`` (padding dropped; a loss token in the padding is an
  error); a line with no generated token is left out (an info finding names its ``idx``);
- ``mask`` = ``token_loss_mask`` AND ``sample_loss_mask != 0`` (the tokens NeMo-RL's loss and metric read);
- ``token_source``: ``policy`` where ``token_loss_mask`` is 1, ``context`` elsewhere (environment turns);
- ``rollout_logprobs`` = ``generation_logprobs``, ``student_logprobs`` = ``prev_logprobs`` (None when the
  file holds the zero placeholder); NaN / ±inf are kept as missing values and reported (``numerics``);
- ``groups`` = ``agent_ref["name"]`` when present; ``meta[b]["nemorl"]`` = ``idx``, ``input_length``,
  ``sample_loss_mask``, ``reward``, ``prompt_tokens``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ..batch import Batch, BatchError
from .records import build, finding, flags, floats, ints, keep_finite, where

FMT = "NeMo-RL train_data"
PER_TOKEN = ("token_ids", "token_loss_mask", "generation_logprobs", "prev_logprobs")
NAN_WHY = ("NeMo-RL's logger writes NaN / Infinity as they are; NeMo-RL's own token_mult_prob_error is NaN when "
           "any log-prob of a row is NaN (NaN * 0 = NaN)")


def is_nemorl_record(rec: Any) -> bool:
    """True for a line of NeMo-RL's ``train_data_step*.jsonl`` (GRPO / PPO: ``token_loss_mask``;
    distillation: ``content`` + ``input_lengths`` only)."""
    return isinstance(rec, dict) and "input_lengths" in rec and ("token_loss_mask" in rec or "content" in rec)


def _per_token(rec: dict[str, Any], key: str, at: str) -> list:
    """The writer's ``[[v_0, ..., v_{L-1}]]`` (a bare list is accepted too)."""
    v = rec[key]
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], list):
        return v[0]
    if isinstance(v, list) and all(not isinstance(x, (list, dict)) for x in v):
        return v
    raise BatchError(f"{at}: {key} must be one list of per-token values (the logger writes [[...]]), got "
                     f"{type(v).__name__} of {len(v) if isinstance(v, list) else '?'} entries")


def _scalar(rec: dict[str, Any], key: str, at: str, default: Any = None) -> Any:
    """The writer's ``[x]`` (a bare x is accepted too)."""
    if key not in rec:
        return default
    v = rec[key]
    if isinstance(v, list):
        if len(v) != 1:
            raise BatchError(f"{at}: {key} has {len(v)} entries; expected one (the logger writes [value])")
        v = v[0]
    return v


def _group(ref: Any) -> str | None:
    if isinstance(ref, dict):
        return ref.get("name") if isinstance(ref.get("name"), str) else None
    return ref if isinstance(ref, str) else None


def nemorl_columns(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The :class:`Batch` fields of NeMo-RL ``train_data`` lines (one row per line with a generated
    token, file order), plus ``lines`` (each row's 1-based line number). Every per-token list is in
    completion coordinates (row b: L_b values)."""
    cols: dict[str, list] = {k: [] for k in ("prompts", "comps", "masks", "sources", "roll", "stud", "groups",
                                            "meta", "lines")}
    findings: list[dict[str, Any]] = []
    skipped: list[Any] = []
    counted_prev: list[float | None] = []           # prev_logprobs on the tokens that count (placeholder test)
    for i, rec in enumerate(records):
        b, line = len(cols["comps"]), i + 1
        at = where(FMT, b, line)
        if not isinstance(rec, dict):
            raise BatchError(f"{at}: expected a JSON object, got {type(rec).__name__}")
        if "token_ids" not in rec and "token_loss_mask" not in rec and "content" in rec:
            raise BatchError(f"{at}: only {sorted(rec)}: NeMo-RL's distillation dump (nemo_rl/algorithms/"
                             "distillation.py) holds message texts and lengths, no token ids or log-probs to check")
        missing = [k for k in (*PER_TOKEN, "input_lengths", "sample_loss_mask") if k not in rec]
        if missing:
            raise BatchError(f"{at}: missing key(s) {missing}; expected NeMo-RL's train_data line ({', '.join(PER_TOKEN)}, "
                             "input_lengths, sample_loss_mask, ...)")
        toks = ints(_per_token(rec, "token_ids", at), "token_ids", at)
        L = len(toks)
        lists = {k: _per_token(rec, k, at) for k in PER_TOKEN[1:]}
        for k, v in lists.items():
            if len(v) != L:
                raise BatchError(f"{at}: {k} has {len(v)} values but token_ids has {L}; expected one per token "
                                 "(the batch is padded to one length)")
        n = _scalar(rec, "input_lengths", at)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= L:
            raise BatchError(f"{at}: input_lengths = {n!r}; expected an int in 1..{L} (the unpadded length)")
        sm = _scalar(rec, "sample_loss_mask", at)
        if isinstance(sm, bool) or not isinstance(sm, (int, float)) or not math.isfinite(sm):
            raise BatchError(f"{at}: sample_loss_mask = {sm!r}; expected a number (the sample's loss multiplier)")
        tm = flags(lists["token_loss_mask"], "token_loss_mask", at)
        if any(tm[n:]):
            t = n + tm[n:].index(True)
            raise BatchError(f"{at}, token {t}: token_loss_mask is 1 in the padding (input_lengths = {n}); expected 0 "
                             "past the unpadded length")
        gen = floats(lists["generation_logprobs"], "generation_logprobs", at)
        prev = floats(lists["prev_logprobs"], "prev_logprobs", at)
        start = next((t for t in range(n) if tm[t]), None)
        idx = rec.get("idx", i)
        if start is None:
            skipped.append(idx)
            continue
        counts = lambda t: tm[t] and sm != 0  # noqa: E731
        r, f1 = keep_finite(gen, start, n, counts, at, b, "generation_logprobs", "rollout", NAN_WHY)
        s, f2 = keep_finite(prev, start, n, counts, at, b, "prev_logprobs", "student", NAN_WHY)
        findings += f1 + f2
        pad_bad = [t for t in range(n, L) for v in (gen[t], prev[t]) if v is None or not math.isfinite(v)]
        if pad_bad:
            findings.append(finding("numerics", b, None, "warning", f"{at}: a non-finite log-prob in the padding (token "
                                    f"{pad_bad[0]}, input_lengths = {n}); {NAN_WHY}"))
        counted_prev += [prev[t] for t in range(start, n) if counts(t)]
        cols["prompts"].append(toks[:start])
        cols["comps"].append(toks[start:n])
        cols["masks"].append([tm[t] and sm != 0 for t in range(start, n)])
        cols["sources"].append(["policy" if tm[t] else "context" for t in range(start, n)])
        cols["roll"].append(r)
        cols["stud"].append(s)
        cols["groups"].append(_group(_scalar(rec, "agent_ref", at)))
        cols["meta"].append({"nemorl": {"idx": idx, "input_length": n, "sample_loss_mask": sm,
                                        "reward": _scalar(rec, "rewards", at), "prompt_tokens": start}})
        cols["lines"].append(line)
    if not cols["comps"]:
        raise BatchError(f"{FMT}: no line with a generated token (token_loss_mask 1); expected one JSON object per "
                         "sample of the step")
    if skipped:
        findings.append(finding("truncation", None, None, "info", f"{FMT}: line(s) with idx {skipped} have no generated "
                                "token (token_loss_mask 0 everywhere) and were left out; NeMo-RL's loss and "
                                "token_mult_prob_error count none of their tokens"))
    stud = cols["stud"]
    if counted_prev and all(v == 0.0 for v in counted_prev):
        stud = None
        findings.append(finding("numerics", None, None, "info", f"{FMT}: prev_logprobs are 0.0 on every loss token: the "
                                "zero placeholder NeMo-RL writes when force_on_policy_ratio skips the prev_logprobs "
                                "forward (grpo.py); there is no trainer recompute to compare with the rollout"))
    masks, sources, groups = cols["masks"], cols["sources"], cols["groups"]
    return dict(prompt_ids=cols["prompts"], completion_ids=cols["comps"], lines=cols["lines"],
                mask=None if all(all(m) for m in masks) else masks,
                token_source=None if all(x == "policy" for row in sources for x in row) else sources,
                rollout_logprobs=cols["roll"], student_logprobs=stud,
                groups=groups if any(g is not None for g in groups) else None, meta=cols["meta"], findings=findings)


def from_nemorl_records(records: Iterable[dict[str, Any]]) -> Batch:
    """Convert NeMo-RL ``train_data_step{N}.jsonl`` lines into a :class:`Batch` (rules: module docstring).

    Errors name the row, the file line, the key and, for a per-token value, the position in both
    coordinates.
    """
    cols = nemorl_columns(records)
    return build(FMT, cols.pop("prompt_ids"), **cols)
