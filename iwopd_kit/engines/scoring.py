"""Scoring: the log-prob a model gives each sampled token, in completion coordinates.

The next-token shift, in words: the logit at sequence position t predicts the token at t + 1, so
completion token j of a row with real prompt length p is scored by the logits at position p + j - 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..batch import Batch, BatchError

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
    return _forward_scores(model, batch, temperature, pad_id, grad)[0]


def _forward_scores(model, batch: Batch, temperature: float, pad_id: int = 0, grad: bool = False,
                    kept_temperature: float | None = None) -> tuple[Tensor, Tensor | None]:
    """One forward pass: the sampled tokens' log-probs and, when ``kept_temperature`` is given and the
    batch has ``kept_ids``, their :func:`kept_logmass` (detached)."""
    if isinstance(model, (str, Path)):
        model = load_model(model)
    with torch.set_grad_enabled(grad):
        z = completion_logits(model, batch, pad_id=pad_id)
        tokens = batch.tokens(pad_id).to(z.device)
        lp = sampled_logprobs(z, tokens, temperature=temperature)
    pad = ~batch.padding_mask().to(lp.device)
    klm = None
    if kept_temperature is not None and batch.kept_ids is not None:
        with torch.no_grad():
            klm = kept_logmass(z.detach(), tokens, batch.kept_ids, kept_temperature).masked_fill(pad, float("nan"))
    return lp.masked_fill(pad, float("nan")), klm


def kept_logmass(logits: Float[Tensor, "B L V"], tokens: Int[Tensor, "B L"],
                 kept_ids: Sequence[Sequence[Sequence[int] | None] | None], temperature: float = 1.0,
                 chunk_size: int = DEFAULT_CHUNK) -> Float[Tensor, "B L"]:
    """log S_t = logsumexp over the kept set of log_softmax(logits / T), per position, in float64.

    ``logits[b, j]`` predicts ``tokens[b, j]`` (shifted, as for :func:`sampled_logprobs`);
    ``kept_ids[b][j]``: the ids the engine kept at that step (None = not recorded: NaN out; a row of
    None likewise). The set is taken with the sampled token added when missing (an engine samples from
    its kept set; slime's SGLang patch and trainer force-keep it), so ``processed = log_softmax[y] -
    log S``. Memory: the kept logits are gathered (O(kept ids)); the full-vocabulary log-sum-exp is
    computed at most ``chunk_size`` positions (and ``CHUNK_ELEMENTS`` logits) at a time; nothing of
    size [B, L, V] is made.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, L, V] and tokens [B, L], got {tuple(logits.shape)} and {tuple(tokens.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    B, L, V = logits.shape
    if len(kept_ids) != B:
        raise ValueError(f"kept_ids has {len(kept_ids)} rows for {B} rows of logits")
    ys = tokens.tolist()
    pos: list[int] = []
    ids: list[int] = []
    for b, row in enumerate(kept_ids):
        for j, kept in enumerate(row or ()):
            if kept is None:
                continue
            if j >= L:
                raise ValueError(f"row {b}: kept_ids has {len(row)} entries but the logits have {L} positions")
            bad = next((t for t in kept if not 0 <= t < V), None)
            if bad is not None:
                raise ValueError(f"row {b}, position {j}: kept id {bad} is outside the vocabulary [0, {V})")
            extra = [] if ys[b][j] in kept else [ys[b][j]]
            pos.extend([b * L + j] * (len(kept) + len(extra)))
            ids.extend(kept)
            ids.extend(extra)
    out = torch.full((B * L,), float("nan"), dtype=torch.float64, device=logits.device)
    if not pos:
        return out.view(B, L)
    flat = logits.reshape(B * L, V)
    p = torch.tensor(pos, device=logits.device)
    vals = flat[p, torch.tensor(ids, device=logits.device)].double() / temperature
    rows = torch.unique(p)
    peak = torch.full((B * L,), float("-inf"), dtype=torch.float64, device=logits.device)
    peak.scatter_reduce_(0, p, vals, "amax")
    mass = torch.zeros(B * L, dtype=torch.float64, device=logits.device).index_add_(0, p, (vals - peak[p]).exp())
    lse_kept = peak[rows] + mass[rows].log()
    step = max(1, min(int(chunk_size), CHUNK_ELEMENTS // max(V, 1)))
    lse_all = torch.cat([torch.logsumexp(flat[rows[s: s + step]].double() / temperature, dim=-1)
                         for s in range(0, rows.numel(), step)])
    out[rows] = lse_kept - lse_all
    return out.view(B, L)


def score_batch(batch: Batch, student=None, teacher=None, temperature: float = 1.0, *,
                student_logprobs: Tensor | None = None, teacher_logprobs: Tensor | None = None,
                rows_per_pass: int | None = None, progress: Callable[[int, str], None] | None = None) -> Batch:
    """The one way a batch gets its ``student_logprobs`` / ``teacher_logprobs``: scored at ``temperature``.

    Per side, either a model (a transformers model or a local dir; scored with :func:`score`,
    ``rows_per_pass`` rows per forward pass, all rows when None) or log-probs already computed
    ([B, L'] with L' >= L, NaN where missing: e.g. the loop's student log-probs from its own
    gradient pass, detached). The temperature is recorded in ``batch.scoring``. ``progress(rows, desc)``
    is called after each pass. When the batch has ``kept_ids`` and the student is a model, the same
    forward pass also fills ``kept_logmass`` (:func:`kept_logmass`, at ``batch.sampling.temperature``:
    the temperature the engine chose its kept sets at; the scoring temperature when none is recorded).
    The demo pipeline, the training loop and ``iwopd-kit check``'s rescoring all attach scores here.
    """
    if rows_per_pass is not None and rows_per_pass < 1:
        raise ValueError(f"rows_per_pass must be >= 1 (or None: all rows at once), got {rows_per_pass!r}")
    for side, model, given in (("student", student, student_logprobs), ("teacher", teacher, teacher_logprobs)):
        if model is not None and given is not None:
            raise ValueError(f"score_batch: pass either {side} (a model) or {side}_logprobs (values), not both")
        if model is None and given is None:
            continue
        kept = None
        if given is None:
            model = load_model(model) if isinstance(model, (str, Path)) else model
            kept_t = _kept_temperature(batch, temperature) if side == "student" and batch.kept_ids is not None else None
            given, kept = _score_in_passes(model, batch, temperature, rows_per_pass, progress, f"scoring {side}", kept_t)
        batch = batch.with_series(f"{side}_logprobs", given.detach(), temperature=temperature)
        if kept is not None:
            batch = batch.with_series("kept_logmass", kept, temperature=kept_t)
    return batch


def _kept_temperature(batch: Batch, temperature: float) -> float:
    """The temperature the engine chose its kept sets at: ``batch.sampling``'s (the scoring one when unknown or 0)."""
    t = batch.sampling.temperature if batch.sampling is not None else 0.0
    return t if t > 0 else temperature


def _score_in_passes(model, batch: Batch, temperature: float, rows: int | None,
                     progress: Callable[[int, str], None] | None, desc: str,
                     kept_temperature: float | None = None) -> tuple[Tensor, Tensor | None]:
    """:func:`score` over consecutive groups of ``rows`` rows (all at once when None), as one [B, L] tensor,
    plus the [B, L] :func:`kept_logmass` (float64) when ``kept_temperature`` is given and the batch has kept sets."""
    step = batch.size if rows is None else rows
    out = torch.full((batch.size, batch.width), float("nan"))
    kept = None
    if kept_temperature is not None and batch.kept_ids is not None:
        kept = torch.full((batch.size, batch.width), float("nan"), dtype=torch.float64)
    for start in range(0, batch.size, step):
        part = batch.select(list(range(start, min(start + step, batch.size))))
        lp, klm = _forward_scores(model, part, temperature, kept_temperature=kept_temperature)
        out[start: start + part.size, : lp.shape[1]] = lp.float().cpu()
        if kept is not None and klm is not None:
            kept[start: start + part.size, : klm.shape[1]] = klm.cpu()
        if progress is not None:
            progress(part.size, desc)
    return out, kept
