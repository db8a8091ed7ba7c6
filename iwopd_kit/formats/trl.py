"""TRL's padded layout <-> completion coordinates.

TRL's distillation trainers feed the loss one full-width sequence per row:
``input_ids`` [B, T] = prompt + completion (prompts left-padded, completions right-padded — or the
whole sequence right-padded), ``attention_mask`` [B, T], ``labels`` [B, T] with -100 everywhere
except on completion tokens, and per-token series *full width*: ``rollout_logprobs[b, t]`` is the
log-prob of ``input_ids[b, t]`` (meaningful only where ``labels != -100``).

This module is the only place that knows that layout. Completion token j of row b is the j-th
column of row b whose label is not -100; those columns must be contiguous.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..batch import SERIES, Batch, BatchError
from ..batch.sampling import SamplingSettings
from .files import read_torch_dict

IGNORE_INDEX = -100


def _row_completion_span(b: int, labels: Tensor, attn: Tensor) -> tuple[int, int]:
    cols = (labels != IGNORE_INDEX).nonzero().flatten()
    if len(cols) == 0:
        raise BatchError(f"row {b}: no completion tokens (every label is {IGNORE_INDEX}); expected at least one")
    start, stop = int(cols[0]), int(cols[-1]) + 1
    if len(cols) != stop - start:
        gap = next(int(c) for i, c in enumerate(range(start, stop)) if int(cols[i]) != c)
        raise BatchError(f"row {b}, column {gap}: completion labels are not contiguous; expected one span "
                         f"of non-{IGNORE_INDEX} labels")
    if not bool(attn[start:stop].all()):
        col = start + int((attn[start:stop] == 0).nonzero()[0])
        raise BatchError(f"row {b}, column {col}: attention_mask is 0 on a completion token")
    return start, stop


def from_trl_batch(inputs: dict[str, Any], series_keys: dict[str, str] | None = None) -> Batch:
    """Convert a TRL-style padded batch into a :class:`Batch` (completion coordinates).

    ``inputs`` holds ``input_ids``, ``attention_mask``, ``labels`` ([B, T] each) and optionally
    full-width [B, T] series under the keys in ``series_keys`` (default: ``rollout_logprobs``,
    ``student_logprobs``, ``teacher_logprobs``) and a ``completion_mask`` [B, T] of tokens that
    count. The prompt of row b is its attended columns before the completion span. Optional keys
    ``sampling`` (a dict of :class:`~iwopd_kit.SamplingSettings` fields), ``scoring`` ({series:
    temperature}) and ``meta`` (one dict, or one per row) fill the same fields of the Batch.
    """
    for key in ("input_ids", "attention_mask", "labels"):
        if key not in inputs:
            raise BatchError(f"TRL batch: missing key {key!r}; expected input_ids, attention_mask and labels")
    ids, attn, labels = (torch.as_tensor(inputs[k]) for k in ("input_ids", "attention_mask", "labels"))
    if ids.dim() != 2 or attn.shape != ids.shape or labels.shape != ids.shape:
        raise BatchError(f"TRL batch: input_ids {tuple(ids.shape)}, attention_mask {tuple(attn.shape)} and "
                         f"labels {tuple(labels.shape)} must all be the same [B, T]")
    keys = series_keys or {name: name for name in SERIES}
    full: dict[str, Tensor] = {}
    for name, key in keys.items():
        if key in inputs and inputs[key] is not None:
            x = torch.as_tensor(inputs[key])
            if x.shape != ids.shape:
                raise BatchError(f"TRL batch: {key} has shape {tuple(x.shape)}; expected full width "
                                 f"{tuple(ids.shape)} like input_ids (value at column t = log-prob of input_ids[:, t])")
            full[name] = x
    cmask = torch.as_tensor(inputs["completion_mask"]).bool() if inputs.get("completion_mask") is not None else None
    prompts, comps, masks = [], [], []
    series: dict[str, list] = {name: [] for name in full}
    for b in range(ids.shape[0]):
        start, stop = _row_completion_span(b, labels[b], attn[b])
        prompt_cols = attn[b, :start].bool()
        prompts.append(ids[b, :start][prompt_cols].tolist())
        comps.append(ids[b, start:stop].tolist())
        if cmask is not None:
            masks.append(cmask[b, start:stop].tolist())
        for name, x in full.items():
            # NaN in a padded tensor means "no value" (what to_trl_batch writes for a missing one)
            series[name].append([None if v != v else float(v) for v in x[b, start:stop].tolist()])
    sampling, scoring, meta = _settings(inputs, ids.shape[0])
    return Batch(prompt_ids=prompts, completion_ids=comps, mask=masks or None, sampling=sampling,
                 scoring=scoring, meta=meta, **{name: rows for name, rows in series.items()})


def _settings(inputs: dict[str, Any], n_rows: int) -> tuple[SamplingSettings | None, dict[str, float], list | None]:
    """The optional ``sampling`` (SamplingSettings fields), ``scoring`` ({series: temperature}) and
    ``meta`` (one dict for the batch, or one per row) keys of a dump."""
    sampling = inputs.get("sampling")
    if sampling is not None:
        if not isinstance(sampling, dict):
            raise BatchError(f"TRL batch: 'sampling' must be a dict of SamplingSettings fields, got {type(sampling).__name__}")
        unknown = set(sampling) - {f.name for f in fields(SamplingSettings)}
        if unknown:
            raise BatchError(f"TRL batch: 'sampling' has unknown keys {sorted(unknown)}; expected SamplingSettings fields")
        sampling = SamplingSettings(**sampling)
    scoring = {str(k): float(v) for k, v in (inputs.get("scoring") or {}).items()}
    meta = inputs.get("meta")
    if isinstance(meta, dict):
        meta = [dict(meta) for _ in range(n_rows)]
    elif meta is not None and (not isinstance(meta, list) or len(meta) != n_rows):
        raise BatchError(f"TRL batch: 'meta' must be one dict or a list of {n_rows} dicts (one per row)")
    return sampling, scoring, meta


def load_trl_dump(path: str | Path) -> Batch:
    """Read a ``torch.save``d dict of a TRL trainer's inputs into a :class:`Batch`.

    The dict holds ``input_ids``, ``attention_mask``, ``labels`` ([B, T] each), full-width
    ``rollout_logprobs`` [B, T] and optionally ``student_logprobs`` / ``teacher_logprobs`` /
    ``completion_mask`` ([B, T], the layout of :func:`from_trl_batch`). Errors name the file and the
    key (or row and column); a truncated file says so.
    """
    where = str(path)
    d = read_torch_dict(path)
    try:
        return from_trl_batch(d)
    except BatchError as e:
        raise BatchError(f"{where}: {e}") from None
    except (TypeError, ValueError, RuntimeError) as e:   # a value torch cannot turn into a tensor
        raise BatchError(f"{where}: malformed trl dump ({type(e).__name__}: {e})") from None


def to_trl_batch(batch: Batch, pad_id: int = 0, padding_side: str = "left") -> dict[str, Tensor]:
    """The inverse of :func:`from_trl_batch`.

    ``padding_side="left"``: prompts left-padded to the longest prompt P, completions right-padded
    (T = P + L, TRL's layout). ``"right"``: each prompt + completion right-padded to the longest.
    Missing series values and padding become NaN.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    B, P, L = batch.size, max(batch.prompt_lengths), batch.width
    T = P + L if padding_side == "left" else max(p + c for p, c in zip(batch.prompt_lengths, batch.lengths))
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    out: dict[str, Tensor] = {}
    present = [name for name in SERIES if batch.has(name)]
    for name in present:
        out[name] = torch.full((B, T), float("nan"), dtype=torch.float64)
    cmask = torch.zeros((B, T), dtype=torch.bool)
    valid = batch.valid()
    for b in range(B):
        p, c = batch.prompt_ids[b], batch.completion_ids[b]
        s = P - len(p) if padding_side == "left" else 0
        ids[b, s : s + len(p)] = torch.tensor(p, dtype=torch.long)
        ids[b, s + len(p) : s + len(p) + len(c)] = torch.tensor(c, dtype=torch.long)
        attn[b, s : s + len(p) + len(c)] = 1
        labels[b, s + len(p) : s + len(p) + len(c)] = torch.tensor(c, dtype=torch.long)
        cmask[b, s + len(p) : s + len(p) + len(c)] = valid[b, : len(c)]
        for name in present:
            vals = [float("nan") if v is None else v for v in getattr(batch, name)[b]]
            out[name][b, s + len(p) : s + len(p) + len(c)] = torch.tensor(vals, dtype=torch.float64)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "completion_mask": cmask, **out}


def trl_prefix_fix_slice(inputs: dict[str, Tensor], completion_logprobs: list[list[float]],
                         pad_value: float = float("nan")) -> Tensor:
    """Reproduce TRL's reviewed bug 1 (class A, "offset") for teaching and fixtures.

    Rollout log-probs were stored per row *from column 0* ([B, C], completion-width) and then read
    back as if the completion of every row started right after the batch's *shortest* prompt.
    Rows whose prompt is d tokens longer than the shortest pair token j with log-prob j + d.
    Returns the [B, L] series that buggy code would hand to the loss; past the stored values it
    holds ``pad_value`` (NaN by default; 0.0 is what a zero-padded tensor hands over).
    """
    attn, labels = inputs["attention_mask"], inputs["labels"]
    B = labels.shape[0]
    starts = [int((labels[b] != IGNORE_INDEX).nonzero()[0]) for b in range(B)]
    prompt_lens = [int(attn[b, : starts[b]].sum()) for b in range(B)]
    shortest = min(prompt_lens)
    lengths = [int((labels[b] != IGNORE_INDEX).sum()) for b in range(B)]
    L = max(lengths)
    out = torch.full((B, L), float(pad_value))
    for b in range(B):
        d = prompt_lens[b] - shortest
        stored = completion_logprobs[b]
        for j in range(lengths[b]):
            if j + d < len(stored):
                out[b, j] = stored[j + d]
    return out
