"""Scoring: the log-prob a model gives each sampled token, in completion coordinates.

The next-token shift, in words: the logit at sequence position t predicts the token at t + 1, so
completion token j of a row with real prompt length p is scored by the logits at position p + j - 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .batch import Batch, BatchError

DEFAULT_CHUNK = 1024
FUSED_MIN_ELEMENTS = 1 << 22   # below this many logits the plain (autograd) formula is used


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
    a fused autograd function processes ``chunk_size`` positions at a time (forward and backward),
    so the temporary memory is O(chunk_size * V). Below it (at most 16 MB of logits) the plain
    log_softmax + gather is faster. ``fused=True/False`` forces the path.
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
    bad = (tokens < 0) | (tokens >= V)
    if bool(bad.any()):
        b, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"row {b}, position {j}: token id {int(tokens[b, j])} is outside the vocabulary [0, {V})")
    flat = logits.reshape(-1, V)
    ids = tokens.reshape(-1).long()
    if flat.shape[0] == 0:
        return logits.new_zeros(tokens.shape)
    if fused is None:
        fused = flat.numel() > FUSED_MIN_ELEMENTS
    if not fused:   # small: memory is no concern, skip the Python chunk loop
        z = flat / temperature if temperature != 1.0 else flat
        return torch.log_softmax(z, dim=-1).gather(-1, ids[:, None]).squeeze(-1).reshape(tokens.shape)
    return _SampledLogprobs.apply(flat, ids, float(temperature), int(chunk_size)).reshape(tokens.shape)


def _chunk_picked(flat: Tensor, ids: Tensor, temperature: float, chunk_size: int) -> tuple[Tensor, Tensor]:
    """(log_softmax(z / T)[y], logsumexp(z / T)) per row of [N, V], ``chunk_size`` rows at a time.

    Each chunk uses the fused log_softmax kernel (one [chunk, V] temporary); the log-sum-exp is
    recovered as z[y] / T - log p(y), so nothing of size [N, V] is kept.
    """
    picked = flat.new_empty(flat.shape[0])
    lse = flat.new_empty(flat.shape[0])
    for s in range(0, flat.shape[0], chunk_size):
        z = flat[s : s + chunk_size]
        if temperature != 1.0:
            z = z / temperature
        y = ids[s : s + chunk_size, None]
        lp = torch.log_softmax(z, dim=-1).gather(-1, y).squeeze(-1)
        picked[s : s + chunk_size] = lp
        lse[s : s + chunk_size] = z.gather(-1, y).squeeze(-1) - lp
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
        for s in range(0, flat.shape[0], chunk):
            e = slice(s, s + chunk)
            g = grad[e]
            torch.sub(flat[e] / T if T != 1.0 else flat[e], lse[e, None], out=g)
            g.exp_().mul_(-grad_out[e, None] / T)                      # -softmax * g / T
            g.scatter_add_(-1, ids[e, None], (grad_out[e] / T)[:, None])  # + onehot * g / T
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


def score_batch(batch: Batch, student=None, teacher=None, temperature: float = 1.0) -> Batch:
    """Attach ``student_logprobs`` and/or ``teacher_logprobs`` scored at ``temperature``."""
    if student is not None:
        batch = batch.with_series("student_logprobs", score(student, batch, temperature), temperature=temperature)
    if teacher is not None:
        batch = batch.with_series("teacher_logprobs", score(teacher, batch, temperature), temperature=temperature)
    return batch
