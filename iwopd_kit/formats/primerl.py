"""prime-rl's per-token export -> completion coordinates.

prime-rl's trainer (``enable_token_export = true``) writes one JSON record per packed sequence to
``<run_dir>/token_exports/step_<step>/rank_<rank>.jsonl`` (and touches ``STABLE`` in the step
directory once every rank has flushed). A record (``schema_version`` 1) holds ``step``, ``rank``,
``micro_step``, ``micro_sequence_idx``, ``export_sequence_idx``, ``env_name`` and aligned
per-token lists over the whole sequence (prompt and completion): ``token_ids``, ``position_ids``,
``loss_mask`` (true on the tokens that count), ``advantages``, ``inference_logprobs`` (what the
inference server returned while sampling; 0.0 on prompt tokens), ``trainer_logprobs`` (the
trainer's recompute, shifted so that position t holds the log-prob of ``token_ids[t]``),
``entropy``, ``mismatch_kl``, ``log_importance_ratio``, ``importance_ratio``, ``prob_delta``,
``is_masked*`` and the weight streams ``rl_weights`` / ``ce_weights`` / ``ref_kl_weights``.
Non-finite floats are written as null. (Read from prime-rl's
``src/prime_rl/trainer/rl/token_export.py``.)

This module is the only place that knows that layout. Completion coordinates: the completion of
a record starts at its first ``loss_mask`` token and runs to the record's end; the tokens before
are the prompt; ``loss_mask`` over the completion is the mask (a multi-turn record's tool and
user turns are masked-out completion tokens). ``inference_logprobs`` become the rollout series
and ``trainer_logprobs`` the student series; the export has no teacher / reference series.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..batch import Batch, BatchError

PER_TOKEN = ("token_ids", "loss_mask", "inference_logprobs", "trainer_logprobs")
"""The per-token keys the kit needs (every other per-token key is checked for its length only)."""
META = ("schema_version", "step", "rank", "micro_step", "micro_sequence_idx", "export_sequence_idx", "env_name")


def is_primerl_record(rec: Any) -> bool:
    """True for a record with prime-rl's token-export keys (``token_ids``, ``loss_mask``, ``inference_logprobs``)."""
    return isinstance(rec, dict) and {"token_ids", "loss_mask", "inference_logprobs"} <= set(rec)


def from_primerl_records(records: Iterable[dict[str, Any]]) -> Batch:
    """Convert prime-rl token-export records (one per row) into a :class:`Batch`.

    Errors name the row (= the record's 0-based index; its line is row + 1) and the key.
    """
    prompts, comps, masks, roll, stud, meta = [], [], [], [], [], []
    for b, rec in enumerate(records):
        where = f"prime-rl export, row {b} (line {b + 1})"
        if not isinstance(rec, dict):
            raise BatchError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in PER_TOKEN if k not in rec]
        if missing:
            raise BatchError(f"{where}: missing key(s) {missing}; expected prime-rl's token export "
                             f"(schema_version 1: {', '.join(PER_TOKEN)}, ...)")
        toks = rec["token_ids"]
        if not isinstance(toks, list) or not toks:
            raise BatchError(f"{where}: token_ids must be a non-empty list of ints")
        for key, vals in rec.items():
            if isinstance(vals, list) and key != "token_ids" and len(vals) != len(toks):
                raise BatchError(f"{where}: {key} has {len(vals)} values but token_ids has {len(toks)}; expected "
                                 "one value per token (the export's lists are aligned)")
        lm = rec["loss_mask"]
        if not isinstance(lm, list) or any(v not in (0, 1, True, False) for v in lm):
            raise BatchError(f"{where}: loss_mask must be a list of bools")
        start = next((t for t, v in enumerate(lm) if v), None)
        if start is None:
            raise BatchError(f"{where}: loss_mask is false on every token; expected at least one completion token")
        prompts.append(toks[:start])
        comps.append(toks[start:])
        masks.append([bool(v) for v in lm[start:]])
        for out, key in ((roll, "inference_logprobs"), (stud, "trainer_logprobs")):
            vals = rec[key]
            out.append(None if vals is None else list(vals[start:]))
        meta.append({"primerl": {k: rec[k] for k in META if k in rec}})
    if not comps:
        raise BatchError("prime-rl export: no records; expected one JSON object per exported sequence")
    try:
        return Batch(prompt_ids=prompts, completion_ids=comps, mask=None if all(all(m) for m in masks) else masks,
                     rollout_logprobs=roll if any(r is not None for r in roll) else None,
                     student_logprobs=stud if any(s is not None for s in stud) else None, meta=meta)
    except BatchError as e:
        msg = str(e)
        if msg.startswith("row "):          # Batch names the row in completion coordinates: add the line
            b = int(msg.split()[1].rstrip(":,"))
            msg = f"prime-rl export, row {b} (line {b + 1}){msg[len(f'row {b}'):]} (completion coordinates: position 0 " \
                  f"is token {len(prompts[b])} of the record)"
        raise BatchError(msg) from None
