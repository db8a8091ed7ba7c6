"""verl's padded layout <-> completion coordinates.

A verl batch (``DataProto.batch``, a TensorDict, or any mapping of tensors) holds, per row b:

- ``prompts`` [B, P]: prompt ids, *left*-padded to the longest prompt P;
- ``responses`` [B, R]: generated ids, *right*-padded to R;
- ``attention_mask`` [B, P + R]: 1 on real prompt and response tokens;
- ``response_mask`` [B, R] (optional): 1 on response tokens that count in the loss (multi-turn
  data sets tool output to 0); defaults to ``attention_mask[:, P:]``;
- response-width series [B, R], column j = the log-prob of ``responses[b, j]``:
  ``old_log_probs`` (the trainer's recomputed student), ``ref_log_prob`` (the reference / teacher),
  ``rollout_log_probs`` (what vLLM returned while sampling).

This module is the only place that knows that layout. Completion token j of row b is
``responses[b, j]`` for j < L_b, where L_b = ``attention_mask[b, P:].sum()`` (the response mask
must be a prefix: right padding). The prompt is the attended part of ``prompts[b]``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS, Batch, BatchError

VERL_SERIES: dict[str, str] = {
    ROLLOUT_LOGPROBS: "rollout_log_probs",
    STUDENT_LOGPROBS: "old_log_probs",
    TEACHER_LOGPROBS: "ref_log_prob",
}
"""Kit series name -> verl key."""


def _tensors(d: Any) -> Mapping[str, Any]:
    """The mapping of tensors: ``d`` itself, or ``d.batch`` for a DataProto-like object."""
    inner = getattr(d, "batch", None)
    if inner is not None and not isinstance(d, Mapping):
        return inner
    if not hasattr(d, "keys") or not hasattr(d, "__getitem__"):
        raise BatchError(f"verl batch: expected a mapping of tensors (dict, TensorDict or DataProto), got {type(d).__name__}")
    return d


def _get(d: Mapping[str, Any], key: str, shape: tuple[int, ...] | None = None, what: str = "") -> Tensor | None:
    if key not in set(d.keys()) or d[key] is None:
        return None
    x = torch.as_tensor(d[key])
    if shape is not None and tuple(x.shape) != shape:
        raise BatchError(f"verl batch: {key} has shape {tuple(x.shape)}; expected {shape} {what}".rstrip())
    return x


def _prefix_length(b: int, row: list[int], key: str) -> int:
    """Number of leading ones of a 0/1 row; error if a 1 follows a 0 (not right-padded)."""
    n = 0
    while n < len(row) and row[n]:
        n += 1
    if any(row[n:]):
        col = n + next(i for i, v in enumerate(row[n:]) if v)
        raise BatchError(f"verl batch, row {b}, response column {col}: {key} is 1 after a 0; responses must be "
                         "right-padded (real tokens first)")
    return n


def from_verl_batch(d: Any, series_keys: dict[str, str] | None = None) -> Batch:
    """Convert a verl batch into a :class:`Batch` (completion coordinates).

    ``d``: a dict / TensorDict / DataProto with ``prompts`` [B, P], ``responses`` [B, R],
    ``attention_mask`` [B, P + R], optional ``response_mask`` [B, R] and response-width series
    [B, R] under ``series_keys`` (default :data:`VERL_SERIES`). NaN in a series means no value.
    Errors name the key (and the row / column).
    """
    t = _tensors(d)
    keys = set(t.keys())
    for key in ("prompts", "responses", "attention_mask"):
        if key not in keys:
            raise BatchError(f"verl batch: missing key {key!r}; expected prompts [B, P], responses [B, R] and "
                             f"attention_mask [B, P+R] (found {sorted(keys)})")
    prompts, responses = torch.as_tensor(t["prompts"]), torch.as_tensor(t["responses"])
    if prompts.dim() != 2 or responses.dim() != 2 or prompts.shape[0] != responses.shape[0]:
        raise BatchError(f"verl batch: prompts {tuple(prompts.shape)} and responses {tuple(responses.shape)} must be "
                         "[B, P] and [B, R] with the same B")
    (B, P), R = prompts.shape, responses.shape[1]
    attn = _get(t, "attention_mask", (B, P + R), "= [B, P + R] (prompt columns, then response columns)")
    rmask = _get(t, "response_mask", (B, R), "= [B, R] like responses")
    series = {name: _get(t, key, (B, R), "= [B, R] like responses (column j = log-prob of responses[:, j])")
              for name, key in (series_keys or VERL_SERIES).items()}
    attn_rows = attn.long().tolist()
    prompt_rows, resp_rows = prompts.long().tolist(), responses.long().tolist()
    rmask_rows = rmask.long().tolist() if rmask is not None else None
    vals = {name: x.detach().to("cpu", torch.float64).tolist() for name, x in series.items() if x is not None}
    out_p, out_c, out_m = [], [], []
    out_s: dict[str, list] = {name: [] for name in vals}
    for b in range(B):
        a = attn_rows[b]
        out_p.append([tok for tok, m in zip(prompt_rows[b], a[:P]) if m])
        n = _prefix_length(b, a[P:], "attention_mask")
        if n == 0:
            raise BatchError(f"verl batch, row {b}: empty response (attention_mask is 0 on every response column)")
        out_c.append(resp_rows[b][:n])
        if rmask_rows is not None:
            if any(rmask_rows[b][n:]):
                col = n + next(i for i, v in enumerate(rmask_rows[b][n:]) if v)
                raise BatchError(f"verl batch, row {b}, response column {col}: response_mask is 1 on padding "
                                 "(attention_mask is 0 there)")
            out_m.append([bool(v) for v in rmask_rows[b][:n]])
        for name, rows in vals.items():
            out_s[name].append([None if v != v else v for v in rows[b][:n]])
    mask = out_m if out_m and not all(all(m) for m in out_m) else None
    return Batch(prompt_ids=out_p, completion_ids=out_c, mask=mask, **out_s)


def to_verl_batch(batch: Batch, pad_id: int = 0, pad_value: float = 0.0) -> dict[str, Tensor]:
    """The inverse of :func:`from_verl_batch`: prompts left-padded, responses right-padded.

    Series padding (and missing values) are written as ``pad_value`` / NaN respectively (verl
    itself zero-pads its log-prob tensors).
    """
    B, P, R = batch.size, max(batch.prompt_lengths), batch.width
    prompts = torch.full((B, P), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    for b, p in enumerate(batch.prompt_ids):
        if p:
            prompts[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[b, P - len(p): P] = 1
    pad = batch.padding_mask()
    attn[:, P:] = pad.long()
    out = {"prompts": prompts, "responses": batch.tokens(pad_id), "attention_mask": attn,
           "response_mask": batch.valid().long()}
    for name, key in VERL_SERIES.items():
        if batch.has(name):
            out[key] = batch.series(name, torch.float32).masked_fill(~pad, pad_value)
    return out
