"""vLLM outputs -> completion coordinates.

Offline engine: ``list[RequestOutput]``; each ``.outputs[0]`` (a ``CompletionOutput``) has
``token_ids`` and ``logprobs`` = one ``dict[token_id, Logprob]`` per generated token (with
``SamplingParams(logprobs=0)`` just the sampled token; with k > 0 up to k + 1 entries, the sampled
one always among them), and, with the engine argument ``return_sampling_mask`` (vLLM 0.32, Model
Runner V2), ``sampling_mask.token_ids``: the kept set of each generated token. OpenAI-compatible
server: ``/v1/completions`` choices with ``logprobs.token_logprobs`` and, when requested, ``token_ids`` (``return_token_ids``) or tokens
spelled ``"token_id:N"`` (``return_tokens_as_token_ids``). TRL's vLLM client (server mode):
``{"prompt_ids", "completion_ids", "logprobs", "logprob_token_ids"}`` (:func:`from_trl_vllm_output`).

A step whose dict lacks the sampled id, or a response without token ids, is class B
("missing_token_ids"): recorded as a finding when the batch can still be built, an error otherwise.
These functions convert objects already in memory; opening files is :mod:`iwopd_kit.formats.registry`'s job.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..batch import Batch, BatchError
from ..batch.sampling import SamplingSettings


def _missing(row: int, pos: int, msg: str) -> dict[str, Any]:
    return {"kind": "missing_token_ids", "row": row, "position": pos, "severity": "error", "message": msg}


def _sampling_mask(b: int, comp: Any, n: int) -> list[list[int] | None] | None:
    """``CompletionOutput.sampling_mask`` (vLLM >= 0.32, engine argument ``return_sampling_mask``, Model
    Runner V2 only): a ``SamplingMask`` whose ``token_ids`` holds, per generated token, the ids that
    survived top-k / top-p / min-p (``vllm/outputs.py``). None when not requested."""
    mask = getattr(comp, "sampling_mask", None)
    if mask is None:
        return None
    rows = getattr(mask, "token_ids", None)
    if not isinstance(rows, (list, tuple)) or len(rows) != n:
        got = f"{len(rows)} entries" if isinstance(rows, (list, tuple)) else type(rows).__name__
        raise BatchError(f"row {b}: sampling_mask.token_ids has {got} for {n} completion tokens; expected one kept "
                         "set per generated token")
    return [None if r is None else list(r) for r in rows]    # Batch rejects an empty set, naming the position


def from_request_outputs(outputs: Sequence[Any], sampling: SamplingSettings | None = None) -> Batch:
    """Convert offline ``LLM.generate`` results (one ``RequestOutput`` per prompt, n = 1).

    ``kept_ids`` come from each completion's ``sampling_mask`` when the engine returned one.
    """
    prompts, comps, lps, reasons, findings, kept = [], [], [], [], [], []
    for b, out in enumerate(outputs):
        if not getattr(out, "outputs", None):
            raise BatchError(f"row {b}: RequestOutput has no completion outputs")
        comp = out.outputs[0]
        ids = list(comp.token_ids)
        prompts.append(list(out.prompt_token_ids))
        comps.append(ids)
        reasons.append(comp.finish_reason)
        kept.append(_sampling_mask(b, comp, len(ids)))
        steps = comp.logprobs
        if steps is None:
            lps.append([None] * len(ids))
            findings.append(_missing(b, 0, "the engine returned no log-probs; request SamplingParams(logprobs=0)"))
            continue
        if len(steps) != len(ids):
            raise BatchError(f"row {b}: {len(steps)} log-prob steps for {len(ids)} completion tokens; expected one per token")
        row = []
        for j, (tok, step) in enumerate(zip(ids, steps)):
            entry = step.get(tok) if step is not None else None
            if entry is None:
                row.append(None)
                findings.append(_missing(b, j, f"the log-prob dict at position {j} lacks the sampled token id {tok} "
                                               f"(has {sorted(step or {})[:5]}); the value cannot be paired with its token"))
            else:
                row.append(float(entry.logprob))
        lps.append(row)
    return Batch(prompt_ids=prompts, completion_ids=comps, rollout_logprobs=lps, finish_reasons=reasons,
                 sampling=sampling, findings=findings, kept_ids=kept if any(k is not None for k in kept) else None)


def _choice_token_ids(b: int, choice: dict[str, Any]) -> list[int]:
    if choice.get("token_ids") is not None:
        if not isinstance(choice["token_ids"], list):
            raise BatchError(f"row {b}: choices[0].token_ids must be a list of ints, got {type(choice['token_ids']).__name__}")
        return list(choice["token_ids"])   # Batch checks each id (row, position)
    tokens = (choice.get("logprobs") or {}).get("tokens") or []
    if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    raise BatchError(
        f"row {b}: [missing_token_ids] the completion response has log-probs but no token ids; request "
        "'return_token_ids': true (or 'return_tokens_as_token_ids': true) — decoded strings cannot be mapped "
        "back to ids reliably"
    )


def from_openai_completions(prompt_ids: Sequence[Sequence[int]], responses: Sequence[dict[str, Any]],
                            sampling: SamplingSettings | None = None) -> Batch:
    """Convert ``/v1/completions`` JSON responses, one per prompt (``choices[0]``), into a batch."""
    if len(prompt_ids) != len(responses):
        raise BatchError(f"{len(prompt_ids)} prompts but {len(responses)} responses; expected one response per prompt")
    comps, lps, reasons = [], [], []
    for b, resp in enumerate(responses):
        if not isinstance(resp, dict):
            raise BatchError(f"response {b}: expected a JSON object, got {type(resp).__name__}")
        choices = resp.get("choices") or []
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BatchError(f"row {b}: the response has no choices: {str(resp)[:200]}")
        choice = choices[0]
        logprobs = choice.get("logprobs") or {}
        if not isinstance(logprobs, dict):
            raise BatchError(f"row {b}: choices[0].logprobs must be an object with token_logprobs, got "
                             f"{type(logprobs).__name__}")
        ids = _choice_token_ids(b, choice)
        vals = logprobs.get("token_logprobs")
        if vals is None:
            raise BatchError(f"row {b}: [missing_token_ids] the response has no logprobs.token_logprobs; request 'logprobs': 0")
        if not isinstance(vals, list):
            raise BatchError(f"row {b}: logprobs.token_logprobs must be a list, got {type(vals).__name__}")
        if len(vals) != len(ids):
            raise BatchError(f"row {b}: {len(vals)} token_logprobs for {len(ids)} token ids; expected one per token")
        comps.append(ids)
        lps.append([_number(b, j, v) for j, v in enumerate(vals)])
        reasons.append(choice.get("finish_reason"))
    return Batch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=comps, rollout_logprobs=lps,
                 finish_reasons=reasons, sampling=sampling)


def _number(b: int, j: int, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BatchError(f"row {b}, position {j}: a log-prob must be a number or null, got {v!r}")
    return float(v)


# ------------------------------------------------------------------------- whole loaded objects
def from_vllm_object(obj: Any) -> Batch:
    """A loaded ``list[RequestOutput]`` or ``{"outputs": [...], "sampling": {SamplingSettings fields}}``."""
    sampling = None
    if isinstance(obj, dict):
        if "outputs" not in obj:
            raise BatchError(f"a dict needs the key 'outputs' (a list of RequestOutput); found {sorted(obj)}")
        if obj.get("sampling") is not None:
            sampling = SamplingSettings.from_dict(dict(obj["sampling"]), "sampling")
        obj = obj["outputs"]
    if not isinstance(obj, (list, tuple)) or not obj:
        raise BatchError(f"expected a non-empty list of vLLM RequestOutput, got {type(obj).__name__}")
    for i, out in enumerate(obj):
        if not (hasattr(out, "prompt_token_ids") and hasattr(out, "outputs")):
            raise BatchError(f"item {i} is a {type(out).__name__} without prompt_token_ids / outputs; "
                             "expected vLLM RequestOutput objects")
    return from_request_outputs(obj, sampling=sampling)


def _prompt_from_response(resp: Any) -> list[int] | None:
    if not isinstance(resp, dict):
        return None
    choices = resp.get("choices") or [{}]
    ids = choices[0].get("prompt_token_ids") if isinstance(choices, list) and isinstance(choices[0], dict) else None
    return ids if ids is not None else resp.get("prompt_token_ids")


def from_openai_json(obj: Any) -> Batch:
    """``/v1/completions`` responses plus their prompt ids, as loaded from JSON (either layout of
    :mod:`iwopd_kit.formats.registry`)."""
    sampling = None
    if isinstance(obj, dict):
        for key in ("prompt_ids", "responses"):
            if key not in obj:
                raise BatchError(f"missing key {key!r}; expected {{'prompt_ids': [[int]], 'responses': [...]}} "
                                 "or a list of {'prompt_ids': [int], 'response': {...}}")
        prompts, responses = obj["prompt_ids"], obj["responses"]
        if not isinstance(prompts, list) or not isinstance(responses, list):
            raise BatchError("'prompt_ids' and 'responses' must be lists")
        if obj.get("sampling") is not None:
            sampling = SamplingSettings.from_dict(dict(obj["sampling"]), "sampling")
    elif isinstance(obj, list):
        if not obj:
            raise BatchError("an empty list; expected one record per prompt")
        prompts, responses = [], []
        for i, rec in enumerate(obj):
            if not isinstance(rec, dict) or "response" not in rec:
                raise BatchError(f"item {i}: expected an object with 'response' (and 'prompt_ids'), got "
                                 f"{type(rec).__name__}{'' if not isinstance(rec, dict) else ' with keys ' + str(sorted(rec))}")
            p = rec.get("prompt_ids")
            p = p if p is not None else _prompt_from_response(rec["response"])
            if p is None:
                raise BatchError(f"item {i}: missing key 'prompt_ids' (and no choices[0].prompt_token_ids in "
                                 "the response)")
            prompts.append(p)
            responses.append(rec["response"])
    else:
        raise BatchError(f"expected a JSON object or list, got {type(obj).__name__}")
    return from_openai_completions(prompts, responses, sampling=sampling)


# ------------------------------------------------------------------ TRL's vLLM client (server mode)
def _per_row(payload: dict[str, Any], key: str, n_rows: int) -> list | None:
    rows = payload.get(key)
    if rows is None:
        return None
    if not isinstance(rows, list) or len(rows) != n_rows:
        got = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
        raise BatchError(f"TRL vLLM output: {key} has {got}; expected one list per completion ({n_rows})")
    return rows


def from_trl_vllm_output(payload: dict[str, Any], sampling: SamplingSettings | None = None) -> Batch:
    """Convert what TRL's vLLM client returns in server mode (``VLLMClient.generate``) into a batch.

    ``payload``: ``prompt_ids`` [P][*] (one per prompt; with n generations per prompt the
    completions are prompt-major, as TRL returns them), ``completion_ids`` [B][L_b],
    ``logprobs`` [B][L_b][K] (K values per step, sorted by probability) and ``logprob_token_ids``
    [B][L_b][K], the ids of those values. The sampled token's value is the entry whose id is the
    sampled id. Log-probs without ``logprob_token_ids`` (TRL's review bug 2: a ``TypeError`` in
    its trainer) cannot be paired with their tokens: the row keeps no rollout values and gets a
    ``missing_token_ids`` finding naming it. Malformed shapes raise :class:`BatchError` naming the
    row and position.
    """
    if not isinstance(payload, dict):
        raise BatchError(f"TRL vLLM output: expected a dict with prompt_ids, completion_ids, logprobs and "
                         f"logprob_token_ids, got {type(payload).__name__}")
    for key in ("prompt_ids", "completion_ids"):
        if not isinstance(payload.get(key), list) or not payload[key]:
            raise BatchError(f"TRL vLLM output: {key!r} must be a non-empty list of token-id lists "
                             f"(found keys {sorted(payload)})")
    prompts, comps = payload["prompt_ids"], payload["completion_ids"]
    if len(comps) % len(prompts):
        raise BatchError(f"TRL vLLM output: {len(comps)} completions for {len(prompts)} prompts; expected n per prompt")
    n = len(comps) // len(prompts)
    prompts = [p for p in prompts for _ in range(n)]
    values, ids = _per_row(payload, "logprobs", len(comps)), _per_row(payload, "logprob_token_ids", len(comps))
    if values is None:
        return Batch(prompt_ids=prompts, completion_ids=comps, sampling=sampling)
    rows, findings = [], []
    for b, comp in enumerate(comps):
        steps = values[b]
        if not isinstance(steps, list) or len(steps) != len(comp):
            got = f"{len(steps)} steps" if isinstance(steps, list) else type(steps).__name__
            raise BatchError(f"TRL vLLM output, row {b}: logprobs has {got} for {len(comp)} completion tokens; "
                             "expected one list of log-probs per token")
        step_ids = None if ids is None else ids[b]
        if step_ids is None:
            rows.append(None)
            findings.append(_missing(b, 0, (
                f"row {b}: the payload has logprobs but no logprob_token_ids, so no value can be paired with its "
                "token (TRL's IWOPDTrainer raises a TypeError here); keep the ids the client returns "
                "(it asks the server for return_tokens_as_token_ids)")))
            continue
        if not isinstance(step_ids, list) or len(step_ids) != len(comp):
            got = f"{len(step_ids)} steps" if isinstance(step_ids, list) else type(step_ids).__name__
            raise BatchError(f"TRL vLLM output, row {b}: logprob_token_ids has {got} for {len(comp)} completion "
                             "tokens; expected one list of ids per token, like logprobs")
        row = []
        for j, (tok, vals, toks) in enumerate(zip(comp, steps, step_ids)):
            vals = vals if isinstance(vals, list) else [vals]
            toks = toks if isinstance(toks, list) else [toks]
            if len(vals) != len(toks):
                raise BatchError(f"TRL vLLM output, row {b}, position {j}: {len(vals)} log-probs but {len(toks)} ids")
            if tok not in toks:
                row.append(None)
                findings.append(_missing(b, j, f"the ids at position {j} lack the sampled token id {tok} (have "
                                               f"{toks[:5]}); the value cannot be paired with its token"))
                continue
            row.append(_number(b, j, vals[toks.index(tok)]))
        rows.append(row)
    return Batch(prompt_ids=prompts, completion_ids=comps, rollout_logprobs=rows, sampling=sampling,
                 findings=findings)
