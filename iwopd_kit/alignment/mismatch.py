"""Rollout-vs-trainer mismatch metrics, under the names the RL frameworks already log.

With Δ_t = log π_train(y_t) − log π_roll(y_t) (the trainer's recompute minus the rollout engine's
value; the alignment check's ``gap = rollout − student`` is −Δ) and ρ_t = exp(Δ_t), pooled over the
tokens of a batch its writer's framework pools them over (``batch.metric_mask()``: loss-masked, sampled
by the policy, and in the writer's metric pool where the dump names one) where both values exist:

=================================  ===============================  ===========================================
key                                definition                       read by (usual threshold)
=================================  ===============================  ===========================================
``mismatch/token_mult_prob_error``  mean exp(|Δ|)                   NeMo-RL ``token_mult_prob_error`` (<= 1.05)
``mismatch/k3_kl``                  mean(ρ − 1 − Δ): K3 estimate of  prime-rl ``mismatch_kl``, verl
                                    KL(π_roll ‖ π_train)             ``rollout_corr/k3_kl`` (~1e-5..1e-3)
``mismatch/logp_abs_diff_mean``     mean |Δ|                         TRL GRPO ``sampling/sampling_logp_difference``,
``mismatch/logp_abs_diff_max``      max |Δ|                          slime ``train_rollout_logprob_abs_diff`` (<= 0.1)
``mismatch/is_ratio_mean/min/max``  of ρ                             verl ``rollout_corr/rollout_is_*`` (TIS clips 2-5)
``mismatch/is_ess``                 mean(ρ)² / mean(ρ²)              verl ``rollout_is_eff_sample_size`` (warn < 0.3)
``mismatch/chi2_token``             mean(ρ²) − 1                     verl ``rollout_corr/chi2_token`` (warn > 1)
=================================  ===============================  ===========================================

Everything is computed in float64. "Exist" means a finite value: ``NaN`` marks a missing value and
``±inf`` a sentinel; both are reported by the alignment check's own detectors (missing token ids,
teacher coverage), not folded into these means.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS

MISMATCH_KEYS: tuple[str, ...] = (
    "mismatch/token_mult_prob_error", "mismatch/k3_kl", "mismatch/logp_abs_diff_mean", "mismatch/logp_abs_diff_max",
    "mismatch/is_ratio_mean", "mismatch/is_ratio_min", "mismatch/is_ratio_max", "mismatch/is_ess",
    "mismatch/chi2_token",
)
"""The keys :func:`mismatch_metrics` returns, in this order."""

USUAL_THRESHOLDS: dict[str, tuple[str, float | None, float | None]] = {
    "mismatch/token_mult_prob_error": ("healthy <= 1.05 (the kit's numerics error bound)", None, 1.05),
    "mismatch/k3_kl": ("~1e-5..1e-3; the kit errs above 1e-2", None, 1e-3),
    "mismatch/logp_abs_diff_mean": ("slime gates at 0.1", None, 0.1),
    "mismatch/logp_abs_diff_max": ("slime gates at 0.1", None, None),
    "mismatch/is_ratio_mean": ("TIS clips at 2-5", None, None),
    "mismatch/is_ratio_min": ("TIS clips at 2-5", None, None),
    "mismatch/is_ratio_max": ("TIS clips at 2-5", None, 2.0),
    "mismatch/is_ess": ("warn below 0.3", 0.3, None),
    "mismatch/chi2_token": ("warn above 1", None, 1.0),
}
"""Per key of :data:`MISMATCH_KEYS`: ``(usual threshold as the table of docs/check.md words it, low, high)``;
``low`` / ``high`` are the bounds :func:`beyond_usual` compares with (None: no single bound: the max
|Δ| of a healthy bf16-vs-fp32 run reaches ~0.1, and a min or mean ratio is read with the max)."""


def beyond_usual(key: str, value: float) -> bool:
    """True when ``value`` of metric ``key`` is outside its usual healthy bound (:data:`USUAL_THRESHOLDS`).

    A hint for a reader, not a finding: the check's own numerics rule decides errors and warnings."""
    _, low, high = USUAL_THRESHOLDS[key]
    return (low is not None and value < low) or (high is not None and value > high)


QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
"""The per-token |Δ| quantiles :func:`abs_delta_quantiles` reports."""


def _as_tensor(name: str, x: Any) -> Tensor:
    # lists and arrays go straight to float64 (torch's default float32 would round them first)
    t = x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)
    if t.dim() == 1:
        t = t[None, :]
    if t.dim() != 2:
        raise ValueError(f"{name} must be [B, L] (or [L]) per-token log-probs, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float64)


def pooled_delta(trainer_logprobs: Any, rollout_logprobs: Any, mask: Any = None) -> Tensor:
    """Δ = trainer − rollout, flattened over the valid tokens where both values are finite (float64 [N]).

    ``trainer_logprobs``, ``rollout_logprobs``: [B, L] (or [L]); ``mask``: [B, L] bool of the tokens that
    count (None: every position). Raises ValueError on mismatched shapes.
    """
    t, r = _as_tensor("trainer_logprobs", trainer_logprobs), _as_tensor("rollout_logprobs", rollout_logprobs)
    if t.shape != r.shape:
        raise ValueError(f"trainer_logprobs {tuple(t.shape)} and rollout_logprobs {tuple(r.shape)} must have the same "
                         "[B, L] shape (completion coordinates: token j of row b in both)")
    if mask is None:
        m = torch.ones(t.shape, dtype=torch.bool)
    else:
        m = torch.as_tensor(mask)
        m = (m[None, :] if m.dim() == 1 else m).to("cpu").bool()
        if m.shape != t.shape:
            raise ValueError(f"mask {tuple(m.shape)} must have the shape of the log-probs {tuple(t.shape)}")
    both = m & torch.isfinite(t) & torch.isfinite(r)
    return (t - r)[both]


CHUNK = 1 << 16
"""Tokens per step of :func:`metrics_from_delta`: its float64 temporaries stay O(CHUNK), not O(tokens)."""


def batch_delta(batch: Any, finite_only: bool = True, rows: Any = None) -> Tensor:
    """Δ = student − rollout log-prob of a :class:`~iwopd_kit.batch.Batch`'s policy tokens, flat float64.

    Pooled tokens: ``batch.metric_mask()``, the loss-masked tokens sampled by the policy (a teacher's
    tokens in SFT-distill records and a multi-turn row's tool / user turns are not the policy's samples,
    so they are left out), less those outside the writer's metric pool (prime-rl pools only tokens
    with a non-zero rl or ref_kl weight). ``finite_only``: only the tokens where both values are finite (what the
    metrics pool); else every token where both have a value (NaN dropped, ±inf kept). ``rows``: [B] bool,
    only those rows (a group). Read from the packed series (no padded [B, L] float copies, no index tensor).
    Raises ValueError when the batch lacks either series.
    """
    if not (batch.has(ROLLOUT_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        raise ValueError("the batch needs rollout_logprobs and student_logprobs for Δ")
    d = batch.packed(STUDENT_LOGPROBS).values.to(torch.float64, copy=True)
    d.sub_(batch.packed(ROLLOUT_LOGPROBS).values)
    keep = torch.isfinite(d) if finite_only else ~d.isnan()
    pad = batch.padding_mask().numpy()
    policy = batch.metric_mask()
    if rows is not None:
        policy &= torch.as_tensor(rows, dtype=torch.bool)[:, None]
    keep &= torch.from_numpy(policy.numpy()[pad])
    return torch.from_numpy(d.numpy()[keep.numpy()])


def metrics_from_delta(delta: Tensor) -> dict[str, float]:
    """The :data:`MISMATCH_KEYS` from a flat tensor of Δ values (at least one), in float64.

    Pooled sums are accumulated over chunks of :data:`CHUNK` tokens, so a batch of millions of tokens
    needs no full-size temporaries beyond ``delta`` itself.
    """
    if delta.numel() == 0:
        raise ValueError("no valid token carries both a trainer and a rollout log-prob; expected at least one")
    flat = delta.reshape(-1)
    n = flat.numel()
    s_mult = s_k3 = s_abs = s_rho = s_rho2 = 0.0
    mx_abs, mn_rho, mx_rho = -math.inf, math.inf, -math.inf
    for i in range(0, n, CHUNK):
        d = flat[i: i + CHUNK].to(torch.float64)
        rho = torch.exp(d)
        a = d.abs()
        s_mult += float(torch.exp(a).sum())
        s_k3 += float((torch.expm1(d) - d).sum())       # rho - 1 - delta, without cancellation
        s_abs += float(a.sum())
        s_rho += float(rho.sum())
        s_rho2 += float((rho * rho).sum())
        mx_abs = max(mx_abs, float(a.max()))
        mn_rho, mx_rho = min(mn_rho, float(rho.min())), max(mx_rho, float(rho.max()))
    m1, m2 = s_rho / n, s_rho2 / n
    return {
        "mismatch/token_mult_prob_error": s_mult / n,
        "mismatch/k3_kl": s_k3 / n,
        "mismatch/logp_abs_diff_mean": s_abs / n,
        "mismatch/logp_abs_diff_max": mx_abs,
        "mismatch/is_ratio_mean": m1,
        "mismatch/is_ratio_min": mn_rho,
        "mismatch/is_ratio_max": mx_rho,
        "mismatch/is_ess": m1 * m1 / m2 if m2 > 0 else float("nan"),
        "mismatch/chi2_token": m2 - 1.0,
    }


def mean_standard_error(delta: Tensor, fn: Callable[[Tensor], Tensor]) -> float:
    """The standard error of the mean of ``fn(Δ)`` over a flat Δ (sample std / sqrt(n); inf below 2 values),
    over chunks of :data:`CHUNK` tokens (Chan et al.'s pairwise merge of means and squared deviations)."""
    flat = delta.reshape(-1)
    n_all = flat.numel()
    if n_all < 2:
        return math.inf
    n, mean, m2 = 0, 0.0, 0.0
    for i in range(0, n_all, CHUNK):
        x = fn(flat[i: i + CHUNK].to(torch.float64))
        nc, mc = x.numel(), float(x.mean())
        m2c = float(((x - mc) ** 2).sum())
        d = mc - mean
        mean += d * nc / (n + nc)
        m2 += m2c + d * d * n * nc / (n + nc)
        n += nc
    return math.sqrt(m2 / (n - 1)) / math.sqrt(n)


def mismatch_metrics(trainer_logprobs: Any, rollout_logprobs: Any, mask: Any = None) -> dict[str, float]:
    """The field's rollout-vs-trainer mismatch metrics (keys :data:`MISMATCH_KEYS`), pooled over tokens.

    Args:
        trainer_logprobs: [B, L] log π_train of the sampled tokens (the trainer's recompute; the kit's
            ``student_logprobs``), NaN where missing.
        rollout_logprobs: [B, L] log π_roll of the same tokens (the rollout engine's), NaN where missing.
        mask: [B, L] bool, the tokens that count (None: all).

    Tokens count where the mask is True and both values are finite. Raises ValueError when none does.

    >>> import math
    >>> m = mismatch_metrics([[-1.0, -1.5 + math.log(2)]], [[-1.0, -1.5]])
    >>> round(m["mismatch/is_ratio_max"], 6), round(m["mismatch/logp_abs_diff_max"], 6)
    (2.0, 0.693147)
    """
    return metrics_from_delta(pooled_delta(trainer_logprobs, rollout_logprobs, mask))


def abs_delta_quantiles(delta: Tensor, qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """Per-token |Δ| quantiles ``{"p50": ..., "p90": ..., "p99": ..., "p99.9": ...}`` (linear interpolation).

    One float64 copy of |Δ|, partitioned in place (numpy), rather than a full sort with indices.
    """
    if delta.numel() == 0:
        raise ValueError("no valid token carries both a trainer and a rollout log-prob; expected at least one")
    a = np.abs(delta.detach().reshape(-1).to("cpu", torch.float64).numpy())
    vals = np.quantile(a, qs, overwrite_input=True)
    return {f"p{100 * q:g}": float(v) for q, v in zip(qs, vals)}
