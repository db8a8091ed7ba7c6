"""Scoring: the log-prob a model gives each sampled token, in completion coordinates.

The next-token shift, in words: the logit at sequence position t predicts the token at t + 1, so
completion token j of a row with real prompt length p is scored by the logits at position p + j - 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .batch import Batch, BatchError

DEFAULT_CHUNK = 1024
CHUNK_ELEMENTS = 1 << 23       # at most this many logits per chunk (32 MB in float32) on the fused path
FUSED_MIN_ELEMENTS = 1 << 18   # below this many logits the plain (autograd) formula is used (faster there)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def sampled_logprobs(
    logits: Float[Tensor, "B L V"],
    tokens: Int[Tensor, "B L"],
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    fused: bool | None = None,
) -> Float[Tensor, "B L"]:
    """log_softmax(logits / T)[token] for every position, as ``z[y] - logsumexp(z)``.

    ``logits[b, j]`` must already be the logits that predict ``tokens[b, j]`` (shifted). Above
    ``FUSED_MIN_ELEMENTS`` logits it never materialises a full-vocabulary log_softmax of the batch:
    a fused autograd function processes at most ``chunk_size`` positions (and at most
    ``CHUNK_ELEMENTS`` logits) at a time, forward and backward, so the temporary memory is
    O(chunk * V). Below it (at most 1 MB of float32 logits) the plain log_softmax + gather is faster
    (measured in benchmarks/bench_loss.py: above it, the fused backward beats autograd's).
    ``fused=True/False`` forces the path.

    bfloat16 / float16 logits are upcast to float32 chunk by chunk and the result is float32: the
    log-sum-exp over a 150k vocabulary in bf16 is off by up to ~0.06 nats, the size of the
    rollout-vs-trainer mismatch the alignment check looks for. The gradient has the logits' dtype.
    Differentiable.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, L, V], got shape {tuple(logits.shape)}")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens have shape {tuple(tokens.shape)} but logits have [B, L] = {tuple(logits.shape[:2])}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    V = logits.shape[-1]
    if tokens.numel() == 0:
        return logits.new_zeros(tokens.shape, dtype=_out_dtype(logits.dtype))
    lo, hi = torch.aminmax(tokens)                 # one reduction; the slow path names the token
    if int(lo) < 0 or int(hi) >= V:
        bad = (tokens < 0) | (tokens >= V)
        b, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"row {b}, position {j}: token id {int(tokens[b, j])} is outside the vocabulary [0, {V})")
    ids = tokens.long()
    if fused is None:
        fused = logits.numel() > FUSED_MIN_ELEMENTS
    if not fused:   # small: memory is no concern, skip the Python chunk loop
        z = logits.float() if logits.dtype in LOW_PRECISION else logits
        if temperature != 1.0:
            z = z / temperature
        return torch.log_softmax(z, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    rows = max(1, min(int(chunk_size), CHUNK_ELEMENTS // max(V, 1)))
    return _SampledLogprobs.apply(logits.reshape(-1, V), ids.reshape(-1), float(temperature), rows).reshape(tokens.shape)


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _chunk_z(flat: Tensor, rows: slice, temperature: float) -> Tensor:
    """Logits of the chunk, in float32 or better, divided by T."""
    z = flat[rows]
    if z.dtype in LOW_PRECISION:
        z = z.float()
    return z / temperature if temperature != 1.0 else z


def _chunk_picked(flat: Tensor, ids: Tensor, temperature: float, chunk_size: int) -> tuple[Tensor, Tensor]:
    """(log_softmax(z / T)[y], logsumexp(z / T)) per row of [N, V], ``chunk_size`` rows at a time.

    Each chunk uses the fused log_softmax kernel (one [chunk, V] temporary, after the upcast of a
    bf16 / fp16 chunk); the log-sum-exp is recovered as z[y] / T - log p(y), so nothing of size
    [N, V] is kept.
    """
    dtype = _out_dtype(flat.dtype)
    picked = torch.empty(flat.shape[0], dtype=dtype, device=flat.device)
    lse = torch.empty(flat.shape[0], dtype=dtype, device=flat.device)
    for s in range(0, flat.shape[0], chunk_size):
        e = slice(s, s + chunk_size)
        z = _chunk_z(flat, e, temperature)
        y = ids[e, None]
        lp = torch.log_softmax(z, dim=-1).gather(-1, y).squeeze(-1)
        picked[e] = lp
        lse[e] = z.gather(-1, y).squeeze(-1) - lp
    return picked, lse


class _SampledLogprobs(torch.autograd.Function):
    """out[n] = z[n, y_n] / T - logsumexp(z[n] / T), fused.

    Saves only the logits (no copy), the ids and the N log-sum-exps; the backward builds
    d out / d z = (onehot(y) - softmax(z / T)) / T chunk by chunk straight into the gradient, so
    no full-vocabulary log_softmax (forward) or softmax (backward) of the whole batch is held.
    """

    @staticmethod
    def forward(ctx, flat: Tensor, ids: Tensor, temperature: float, chunk_size: int) -> Tensor:
        out, lse = _chunk_picked(flat, ids, temperature, chunk_size)
        ctx.save_for_backward(flat, ids, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        flat, ids, lse = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk_size
        grad = torch.empty_like(flat)
        low = flat.dtype in LOW_PRECISION
        for s in range(0, flat.shape[0], chunk):
            e = slice(s, s + chunk)
            if low:                                   # float32 per chunk, then one cast into the grad
                g = _chunk_z(flat, e, T).sub_(lse[e, None])
            else:
                g = grad[e]
                torch.sub(flat[e] / T if T != 1.0 else flat[e], lse[e, None], out=g)
            g.exp_().mul_(-grad_out[e, None] / T)                      # -softmax * g / T
            g.scatter_add_(-1, ids[e, None], (grad_out[e] / T)[:, None])  # + onehot * g / T
            if low:
                grad[e] = g
        return grad, None, None, None


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a causal LM from a local directory (never a hub), in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a local model directory")
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()          # no "Loading weights" bar on stderr (notebooks, nbval)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return model.eval()


def load_tokenizer(path: str | Path):
    """Load the tokenizer saved beside a local model (a standard HF tokenizer; never a hub)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def completion_logits(model, batch: Batch, pad_id: int = 0) -> Float[Tensor, "B L V"]:
    """The logits predicting each completion token: ``out[b, j]`` predicts ``completion_ids[b][j]``.

    Rows are prompt + completion, right-padded (so position ids are the plain 0..n-1), run in one
    forward pass; the gradient flows if the model is in a grad context.
    """
    seqs = [p + c for p, c in zip(batch.prompt_ids, batch.completion_ids)]
    for b, p in enumerate(batch.prompt_ids):
        if len(p) == 0:
            raise BatchError(f"row {b}: empty prompt; the first completion token needs a preceding position")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        attn[b, : len(s)] = 1
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(ids.max()) >= vocab:
        b, t = (int(v) for v in (ids >= vocab).nonzero()[0])
        raise BatchError(f"row {b}: token id {int(ids[b, t])} at sequence position {t} is outside the model's vocabulary [0, {vocab})")
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits  # [B, T, V]
    L = batch.width
    p = torch.tensor(batch.prompt_lengths, device=device)
    idx = (p[:, None] - 1 + torch.arange(L, device=device)[None, :]).clamp(max=T - 1)  # [B, L]
    return logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))


def score(model, batch: Batch, temperature: float = 1.0, pad_id: int = 0,
          grad: bool = False) -> Float[Tensor, "B L"]:
    """Log-probs of the sampled tokens under ``model`` (a transformers model or a local dir).

    Returns [B, L] in completion coordinates, NaN at padding. Use
    ``batch.with_series("teacher_logprobs", score(teacher, batch), temperature=T)`` to attach it.
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    with torch.set_grad_enabled(grad):
        z = completion_logits(model, batch, pad_id=pad_id)
        lp = sampled_logprobs(z, batch.tokens(pad_id).to(z.device), temperature=temperature)
    pad = ~batch.padding_mask().to(lp.device)
    return lp.masked_fill(pad, float("nan"))


def score_batch(batch: Batch, student=None, teacher=None, temperature: float = 1.0, *,
                student_logprobs: Tensor | None = None, teacher_logprobs: Tensor | None = None,
                rows_per_pass: int | None = None, progress: Callable[[int, str], None] | None = None) -> Batch:
    """The one way a batch gets its ``student_logprobs`` / ``teacher_logprobs``: scored at ``temperature``.

    Per side, either a model (a transformers model or a local dir; scored with :func:`score`,
    ``rows_per_pass`` rows per forward pass, all rows when None) or log-probs already computed
    ([B, L'] with L' >= L, NaN where missing: e.g. the loop's student log-probs from its own
    gradient pass, detached). The temperature is recorded in ``batch.scoring``. ``progress(rows, desc)``
    is called after each pass. The demo pipeline, the training loop and ``iwopd-kit check``'s rescoring
    all attach scores here.
    """
    if rows_per_pass is not None and rows_per_pass < 1:
        raise ValueError(f"rows_per_pass must be >= 1 (or None: all rows at once), got {rows_per_pass!r}")
    for side, model, given in (("student", student, student_logprobs), ("teacher", teacher, teacher_logprobs)):
        if model is not None and given is not None:
            raise ValueError(f"score_batch: pass either {side} (a model) or {side}_logprobs (values), not both")
        if model is None and given is None:
            continue
        if given is None:
            model = load_model(model) if isinstance(model, (str, Path)) else model
            given = _score_in_passes(model, batch, temperature, rows_per_pass, progress, f"scoring {side}")
        batch = batch.with_series(f"{side}_logprobs", given.detach(), temperature=temperature)
    return batch


def _score_in_passes(model, batch: Batch, temperature: float, rows: int | None,
                     progress: Callable[[int, str], None] | None, desc: str) -> Tensor:
    """:func:`score` over consecutive groups of ``rows`` rows (all at once when None), as one [B, L] tensor."""
    step = batch.size if rows is None else rows
    out = torch.full((batch.size, batch.width), float("nan"))
    for start in range(0, batch.size, step):
        part = batch.select(list(range(start, min(start + step, batch.size))))
        lp = score(model, part, temperature=temperature).float().cpu()
        out[start: start + part.size, : lp.shape[1]] = lp
        if progress is not None:
            progress(part.size, desc)
    return out
