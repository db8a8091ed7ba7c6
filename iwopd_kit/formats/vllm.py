"""vLLM outputs -> completion coordinates.

Offline engine: ``list[RequestOutput]``; each ``.outputs[0]`` (a ``CompletionOutput``) has
``token_ids`` and ``logprobs`` = one ``dict[token_id, Logprob]`` per generated token (with
``SamplingParams(logprobs=0)`` just the sampled token; with k > 0 up to k + 1 entries, the sampled
one always among them). OpenAI-compatible server: ``/v1/completions`` choices with
``logprobs.token_logprobs`` and, when requested, ``token_ids`` (``return_token_ids``) or tokens
spelled ``"token_id:N"`` (``return_tokens_as_token_ids``).

A step whose dict lacks the sampled id, or a response without token ids, is class B
("missing_token_ids"): recorded as a finding when the batch can still be built, an error otherwise.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..batch import Batch, BatchError, SamplingSettings


def _missing(row: int, pos: int, msg: str) -> dict[str, Any]:
    return {"kind": "missing_token_ids", "row": row, "position": pos, "severity": "error", "message": msg}


def from_request_outputs(outputs: Sequence[Any], sampling: SamplingSettings | None = None) -> Batch:
    """Convert offline ``LLM.generate`` results (one ``RequestOutput`` per prompt, n = 1)."""
    prompts, comps, lps, reasons, findings = [], [], [], [], []
    for b, out in enumerate(outputs):
        if not getattr(out, "outputs", None):
            raise BatchError(f"row {b}: RequestOutput has no completion outputs")
        comp = out.outputs[0]
        ids = list(comp.token_ids)
        prompts.append(list(out.prompt_token_ids))
        comps.append(ids)
        reasons.append(comp.finish_reason)
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
                 sampling=sampling, findings=findings)


def _choice_token_ids(b: int, choice: dict[str, Any]) -> list[int]:
    if choice.get("token_ids") is not None:
        return [int(t) for t in choice["token_ids"]]
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
        choices = resp.get("choices") or []
        if not choices:
            raise BatchError(f"row {b}: the response has no choices: {str(resp)[:200]}")
        choice = choices[0]
        ids = _choice_token_ids(b, choice)
        logprobs = choice.get("logprobs") or {}
        vals = logprobs.get("token_logprobs")
        if vals is None:
            raise BatchError(f"row {b}: [missing_token_ids] the response has no logprobs.token_logprobs; request 'logprobs': 0")
        if len(vals) != len(ids):
            raise BatchError(f"row {b}: {len(vals)} token_logprobs for {len(ids)} token ids; expected one per token")
        comps.append(ids)
        lps.append([None if v is None else float(v) for v in vals])
        reasons.append(choice.get("finish_reason"))
    return Batch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=comps, rollout_logprobs=lps,
                 finish_reasons=reasons, sampling=sampling)
