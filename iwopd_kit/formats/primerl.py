"""prime-rl's per-token export -> completion coordinates.

Learned from prime-rl's writer (github.com/PrimeIntellect-ai/prime-rl, commit 559b447):
``src/prime_rl/trainer/rl/token_export.py`` (``TokenExporter``, schema_version 1), called by
``src/prime_rl/trainer/rl/train.py`` once per micro batch after the loss.

The file: with ``enable_token_export = true`` each trainer rank writes
``<output_dir>/token_exports/step_<step>/rank_<rank>.jsonl`` and, after a barrier, touches
``STABLE`` in the step directory (every rank has flushed). One JSON object per **sample**: a
packed micro batch is cut by its ``sequence_lengths`` (token_export.py L55-74), the padding the
packer appended to the last sample is trimmed (tokens with an empty env name and no loss mask,
L239-244), and a sample with no loss-masked token is not written. A record holds ``step``,
``rank``, ``micro_step``, ``micro_sequence_idx`` (the sample's index in its micro batch),
``export_sequence_idx`` (its index in the file), ``env_name`` and aligned per-token lists over the
whole sample, prompt included:

- ``token_ids``, ``position_ids``, ``loss_mask`` (the trainable, model-sampled tokens), ``advantages``;
- ``inference_logprobs``: the sampling engine's log-prob of ``token_ids[t]``, 0.0 on every token
  the policy did not sample (prompt, tool / user turns, template scaffold; verifiers' ``Branch.logprobs``
  spreads the node log-probs onto sampled positions only) and 0.0 everywhere when the sampling
  source was a frozen model (no log-probs requested);
- ``trainer_logprobs``: the trainer's recompute at the sample's temperature, shifted right so that
  position t is the log-prob of ``token_ids[t]`` (train.py L452-454); position 0 of a micro batch
  holds log(1/V), position 0 of a later sample in the pack a value conditioned on the previous
  sample (both are prompt tokens, never read);
- ``entropy``, ``mismatch_kl``, ``log_importance_ratio``, ``importance_ratio``, ``prob_delta``,
  ``is_masked*`` (all null when the micro batch has no rl and no ref_kl token);
- the loss-component weight streams ``rl_weights`` / ``ce_weights`` / ``ref_kl_weights``: all null
  when the sample's micro batch carries no such stream (the trainer then uses rl 1.0 on the loss
  mask and no ce / ref_kl component), else the sample's weights (a sample packed beside one that
  carries a stream gets the stream's fill: rl 1.0, ce 0.0, ref_kl 0.0; trainer/batch.py L14).

Non-finite floats are written as ``null`` (token_export.py L247-253).

Rules of this reader (``j`` = completion position, ``t`` = record position):

- prompt / completion: the completion starts at the record's first ``loss_mask`` token (the
  first token a loss reads as an action: earlier turns, a forked branch's shared prefix and the
  prompt are its context) and runs to the record's end;
- ``mask`` = ``loss_mask`` over the completion (holes: tool / user turns);
- ``rollout_logprobs`` = ``inference_logprobs``, ``student_logprobs`` = ``trainer_logprobs``; a null
  is kept as a missing value and reported (a ``numerics`` finding: error where a loss reads the
  token, warning elsewhere);
- ``weights``: each stream some record carries, over the completion; a record without it gets the
  trainer's meaning of "absent" (rl 1.0, ce 0.0, ref_kl 0.0);
- ``token_source``: off the loss mask, ``context`` (``policy`` if the engine reported a non-zero
  log-prob: a policy-sampled token kept out of the loss); on the loss mask, ``other_model`` for a
  token routed to ce only (ce != 0, rl == 0, ref_kl == 0) with inference log-prob exactly 0.0
  (SFT-distill from a frozen teacher: prime-rl's ``sft`` algorithm, orchestrator/algo/routing.py
  L67-84), else ``policy`` (rl, ref_kl / OPD, and ce from the policy itself);
- ``groups`` = ``env_name``; ``meta[b]["primerl"]`` = the record's scalars and ``prompt_tokens``.

prime-rl's own ``mismatch_kl`` (train.py L496-520) pools ``exp(d) - d - 1``, d = trainer - inference,
over ``loss_mask & (rl_weights != 0 | ref_kl_weights != 0)`` (just ``loss_mask`` when the micro
batch has neither stream): tokens the kit sees as ``policy_mask()`` minus those whose rl and
ref_kl weights are both 0 (zero-advantage tokens pruned from rl by the orchestrator). The reader
records that pool as ``Batch.metric_pool`` (the rl / ref_kl streams the dump carries), so the kit's
pooled metrics read the same tokens (:meth:`~iwopd_kit.batch.Batch.metric_mask`).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..batch import Batch, BatchError
from .records import build, finding, flags, floats, ints, keep_finite, where

FMT = "prime-rl export"
PER_TOKEN = ("token_ids", "loss_mask", "inference_logprobs", "trainer_logprobs")
"""The per-token keys the kit needs (every other per-token key is checked for its length only)."""
META = ("schema_version", "step", "rank", "micro_step", "micro_sequence_idx", "export_sequence_idx", "env_name")
STREAM_FILL = {"rl_weights": 1.0, "ce_weights": 0.0, "ref_kl_weights": 0.0}
"""The weight streams and what an absent one means (prime-rl trainer/batch.py L14)."""
NULL_WHY = "prime-rl writes null for a NaN or ±inf (token_export.py _json_float)"


def is_primerl_record(rec: Any) -> bool:
    """True for a record with prime-rl's token-export keys (``token_ids``, ``loss_mask``, ``inference_logprobs``)."""
    return isinstance(rec, dict) and {"token_ids", "loss_mask", "inference_logprobs"} <= set(rec)


def _check_record(b: int, rec: Any) -> int:
    """Validate one record's shape; return its length T."""
    at = where(FMT, b)
    if not isinstance(rec, dict):
        raise BatchError(f"{at}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in PER_TOKEN if k not in rec]
    if missing:
        raise BatchError(f"{at}: missing key(s) {missing}; expected prime-rl's token export "
                         f"(schema_version 1: {', '.join(PER_TOKEN)}, ...)")
    if rec.get("schema_version", 1) != 1:
        raise BatchError(f"{at}: schema_version {rec['schema_version']!r}; this reader knows prime-rl's schema_version 1")
    toks = rec["token_ids"]
    if not isinstance(toks, list) or not toks:
        raise BatchError(f"{at}: token_ids must be a non-empty list of ints")
    for key, vals in rec.items():
        if isinstance(vals, list) and key != "token_ids" and len(vals) != len(toks):
            raise BatchError(f"{at}: {key} has {len(vals)} values but token_ids has {len(toks)}; expected one "
                             "value per token (the export's lists are aligned)")
    return len(toks)


def _streams(b: int, rec: dict[str, Any], T: int) -> dict[str, list[float | None] | None]:
    """The record's weight streams over the whole record; None for one it does not carry (all null)."""
    out: dict[str, list[float | None] | None] = {}
    for name in STREAM_FILL:
        vals = rec.get(name)
        if vals is None or all(v is None for v in vals):
            out[name] = None
        else:
            out[name] = floats(vals, name, where(FMT, b))
    return out


def _source(masked: bool, inf: float | None, rl: float | None, ce: float | None, ref: float | None) -> str:
    """Who produced one token (the rule in the module docstring); weights are the effective ones."""
    if not masked:
        return "policy" if inf is not None and inf != 0.0 else "context"
    if ce and rl == 0.0 and ref == 0.0 and inf == 0.0:
        return "other_model"
    return "policy"


def primerl_columns(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The :class:`Batch` fields of prime-rl token-export records (one row per record, file order).

    Returns a dict with ``prompt_ids``, ``completion_ids``, ``mask``, ``token_source``,
    ``rollout_logprobs``, ``student_logprobs``, ``weights`` (dict or None), ``groups``, ``meta``
    and ``findings``; every per-token list in completion coordinates (row b: L_b values).
    """
    prompts, comps, masks, sources, roll, stud, groups, meta, findings = [], [], [], [], [], [], [], [], []
    stream_rows: dict[str, list[list[float | None] | None]] = {name: [] for name in STREAM_FILL}
    for b, rec in enumerate(records):
        T = _check_record(b, rec)
        at = where(FMT, b)
        toks = ints(rec["token_ids"], "token_ids", at)
        lm = flags(rec["loss_mask"], "loss_mask", at)
        start = next((t for t, v in enumerate(lm) if v), None)
        if start is None:
            raise BatchError(f"{at}: loss_mask is false on every token; expected at least one completion token "
                             "(prime-rl writes only samples with a loss-masked token)")
        inf = floats(rec["inference_logprobs"], "inference_logprobs", at)
        trn = floats(rec["trainer_logprobs"], "trainer_logprobs", at)
        streams = _streams(b, rec, T)
        eff = {n: (s if s is not None else [fill] * T) for (n, s), fill in zip(streams.items(), STREAM_FILL.values())}

        def reads(t: int) -> bool:        # a loss component reads token t (compute_loss: ce / ref_kl ignore loss_mask)
            return lm[t] or bool(eff["ce_weights"][t]) or bool(eff["ref_kl_weights"][t])

        r, f1 = keep_finite(inf, start, T, reads, at, b, "inference_logprobs", "rollout", NULL_WHY)
        s, f2 = keep_finite(trn, start, T, reads, at, b, "trainer_logprobs", "student", NULL_WHY)
        findings += f1 + f2
        for name, vals in streams.items():
            if vals is not None and any(v is None for v in vals[start:]):
                j = next(j for j, v in enumerate(vals[start:]) if v is None)
                findings.append(finding("numerics", b, j, "warning", f"{at}: {name} is null at position {j} (token "
                                        f"{start + j} of the row): a non-finite weight; kept as a missing weight"))
            stream_rows[name].append(None if vals is None else list(vals[start:]))
        prompts.append(toks[:start])
        comps.append(toks[start:])
        masks.append(lm[start:])
        roll.append(r)
        stud.append(s)
        sources.append([_source(lm[t], inf[t], eff["rl_weights"][t], eff["ce_weights"][t], eff["ref_kl_weights"][t])
                        for t in range(start, T)])
        env = rec.get("env_name")
        groups.append(env if isinstance(env, str) else None)
        meta.append({"primerl": {**{k: rec[k] for k in META if k in rec}, "prompt_tokens": start}})
    if not comps:
        raise BatchError(f"{FMT}: no records; expected one JSON object per exported sample")
    weights = {}
    for name, rows in stream_rows.items():
        if any(r is not None for r in rows):        # a stream some record carries: the others get its meaning of absent
            weights[name] = [r if r is not None else [STREAM_FILL[name]] * len(c) for r, c in zip(rows, comps)]
    pool = tuple(n for n in ("rl_weights", "ref_kl_weights") if n in weights) or None   # train.py L496-520
    return dict(prompt_ids=prompts, completion_ids=comps, mask=None if all(all(m) for m in masks) else masks,
                token_source=None if all(x == "policy" for row in sources for x in row) else sources,
                rollout_logprobs=roll, student_logprobs=stud, weights=weights or None, metric_pool=pool,
                groups=groups if any(g is not None for g in groups) else None, meta=meta, findings=findings)


def from_primerl_records(records: Iterable[dict[str, Any]]) -> Batch:
    """Convert prime-rl token-export records (one per row) into a :class:`Batch` (rules: module docstring).

    Errors name the row (= the record's 0-based index; its line is row + 1), the key and, for a
    per-token value, the position in both coordinates.
    """
    cols = primerl_columns(records)
    return build(FMT, cols.pop("prompt_ids"), **cols)
