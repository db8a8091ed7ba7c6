"""The IW-OPD objective: advantage -> prefix weights -> loss, plus the OPD and JSD baselines.

Pure torch on [B, L] tensors in completion coordinates (token j = the j-th generated token of the
row; right-padded; ``mask`` bool [B, L] marks the tokens that count). Knows nothing of models.

Math (docs/method.md, sections 5-7: advantage, prefix weights, loss):
    A_j = sg(log pi_T(y_j) - log pi_roll(y_j))                 on valid tokens, 0 elsewhere
    w_j = 1 + gamma * (1 - S_<j / max(S, eps)),  S_<j = sum_{k<j} |A_k|,  S = sum_k |A_k|
    loss = -(1/N) sum_{b,j} m_bj * w_bj * A_bj * log pi_theta(y_bj)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor

REDUCTIONS = ("token_mean", "sequence_mean")


def _check_pair(name: str, x: Tensor, mask: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, L], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be [B, L] (completion coordinates), got shape {tuple(x.shape)}")
    if x.shape != mask.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but mask has shape {tuple(mask.shape)}; expected equal [B, L]")


def _check_mask(mask: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a bool tensor [B, L], got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean (or 0/1)")
        mask = mask.bool()
    return mask


def _first_bad(x: Tensor, mask: Tensor) -> tuple[int, int] | None:
    """(row, position) of the first non-finite value of ``x`` on a valid token, or None.

    The slow path: called only after a one-kernel check (a masked sum that is not finite) says
    something is wrong, to name the row and position in the error.
    """
    bad = mask & ~torch.isfinite(x)
    if not bool(bad.any()):
        return None
    b, j = (int(v) for v in bad.nonzero()[0])
    return b, j


def _raise_not_finite(named: list[tuple[str, Tensor]], mask: Tensor) -> None:
    """Raise the error for the first series (in the given order) with a non-finite valid value.

    Returns without raising when every value is finite (the masked sum that sent us here overflowed).
    """
    for name, x in named:
        bad = _first_bad(x.detach(), mask)
        if bad is None:
            continue
        b, j = bad
        if name == "student_logprobs":
            raise ValueError(f"row {b}, position {j}: student_logprobs is not finite on a valid token")
        raise ValueError(f"row {b}, position {j}: {name} is {x[b, j].item()} on a valid token; "
                         "expected a finite log-prob (mask the token out or fix the scoring)")


def advantage(
    teacher_logprobs: Float[Tensor, "B L"],
    rollout_logprobs: Float[Tensor, "B L"],
    mask: Bool[Tensor, "B L"],
) -> Float[Tensor, "B L"]:
    """A = sg(teacher - rollout) on valid tokens, exactly 0 elsewhere.

    Non-finite values on *masked-out* positions (``-inf`` sentinels at padding) are ignored; a
    non-finite teacher or rollout log-prob on a valid token is an error naming row and position.
    """
    mask = _check_mask(mask)
    _check_pair("teacher_logprobs", teacher_logprobs, mask)
    _check_pair("rollout_logprobs", rollout_logprobs, mask)
    adv = _masked_diff(teacher_logprobs, rollout_logprobs, mask)
    if not math.isfinite(float(adv.sum())):        # one reduction; the slow path names the token
        _raise_not_finite([("teacher_logprobs", teacher_logprobs), ("rollout_logprobs", rollout_logprobs)], mask)
    return adv


def _masked_diff(teacher: Tensor, rollout: Tensor, mask: Tensor) -> Tensor:
    """sg(teacher - rollout) on valid tokens, exactly 0 elsewhere (no validation)."""
    return torch.where(mask, teacher.detach() - rollout.detach(), 0.0)


def prefix_weights(
    advantages: Float[Tensor, "B L"],
    mask: Bool[Tensor, "B L"],
    gamma: float = 0.5,
    eps: float = 1e-8,
    signed: bool = False,
) -> Float[Tensor, "B L"]:
    """w_j = 1 + gamma * (1 - S_<j / max(S, eps)); detached.

    S_<j is the *exclusive* prefix sum of |A| over the row's valid tokens, S the row total. So
    w_0 = 1 + gamma, w is non-increasing in j and lies in [1, 1 + gamma]; gamma = 0 gives plain OPD;
    an all-zero row gets 1 + gamma everywhere. ``signed=True`` uses A instead of |A| and clamps to
    [1, 1 + gamma] (the variant the paper's ablation found worse). Masked positions carry whatever
    the formula gives (they never enter the loss).
    """
    mask = _check_mask(mask)
    _check_pair("advantages", advantages, mask)
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    a = advantages.detach()
    a = torch.where(mask, a if signed else a.abs(), 0.0)
    return _weights(a, gamma, eps, signed)


def _share(a: Tensor, eps: float) -> Tensor:
    """S_<j / max(S, eps) from |A| (or A) that is already 0 off the mask (no validation)."""
    csum = torch.cumsum(a, dim=-1)
    # exclusive prefix sum by shifting (not csum - a, whose rounding can make w rise by an ulp);
    # S is the last prefix sum, so S_<j <= S holds exactly and the share stays in [0, 1]
    before = torch.nn.functional.pad(csum[..., :-1], (1, 0))
    return before / csum[..., -1:].clamp_min(eps)


def _weights(a: Tensor, gamma: float, eps: float, signed: bool) -> Tensor:
    """The prefix weights from |A| (or A) that is already 0 off the mask (no validation)."""
    w = _share(a, eps).neg_().add_(1.0).mul_(gamma).add_(1.0)   # 1 + gamma * (1 - S_<j / S)
    if signed:
        w = w.clamp_(1.0, 1.0 + gamma)
    return w


def exclusive_share(
    advantages: Float[Tensor, "B L"],
    mask: Bool[Tensor, "B L"],
    eps: float = 1e-8,
) -> Float[Tensor, "B L"]:
    """S_<j / max(S, eps): the share of the row's |A| that comes before token j (exclusive); detached.

    The quantity :func:`prefix_weights` turns into ``w = 1 + gamma * (1 - share)``, computed the
    same way (the shifted prefix sum, so that 0 <= share <= 1 holds exactly). In the dtype of
    ``advantages``; masked positions carry whatever the formula gives.
    """
    mask = _check_mask(mask)
    _check_pair("advantages", advantages, mask)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    a = advantages.detach()
    return _share(torch.where(mask, a.abs(), torch.zeros_like(a)), eps)


@dataclass(frozen=True)
class ObjectiveResult:
    """What a loss function returns.

    loss: scalar, differentiable through the student log-probs only.
    advantages, weights, per_token_loss: [B, L] in completion coordinates (0 / 1 / 0 off-mask).
    metrics: TRL's names (``iw_opd/mean_advantage`` = mean of w*A on valid tokens, ...).
    num_items: the N the token-mean divided by.
    """

    loss: Tensor
    advantages: Tensor
    weights: Tensor
    per_token_loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    reduction: str = "token_mean"
    num_items: float = 0.0


def _reduce(per_token: Tensor, mask: Tensor, reduction: str, num_items: float | int | None) -> tuple[Tensor, float]:
    if reduction == "token_mean":
        n = float(mask.sum()) if num_items is None else float(num_items)
        if n <= 0:
            raise ValueError(f"num_items must be > 0 (got {n}); the batch has no valid tokens")
        return per_token.sum() / n, n
    if reduction == "sequence_mean":
        if num_items is not None:
            raise ValueError("num_items applies to reduction='token_mean' only")
        counts = mask.sum(dim=-1)
        rows = counts > 0
        if not bool(rows.any()):
            raise ValueError("the batch has no valid tokens")
        per_row = per_token.sum(dim=-1)[rows] / counts[rows]
        return per_row.mean(), float(rows.sum())
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def iw_opd_loss(
    student_logprobs: Float[Tensor, "B L"],
    teacher_logprobs: Float[Tensor, "B L"],
    mask: Bool[Tensor, "B L"],
    rollout_logprobs: Float[Tensor, "B L"] | None = None,
    gamma: float = 0.5,
    eps: float = 1e-8,
    num_items: float | int | None = None,
    reduction: str = "token_mean",
    signed: bool = False,
    tis_threshold: float | None = None,
) -> ObjectiveResult:
    """IW-OPD loss = -(1/N) sum m * w * A * log pi_theta (REINFORCE surrogate, not a divergence).

    Args:
        student_logprobs: [B, L] current student log-probs of the sampled tokens (carries the grad).
        teacher_logprobs: [B, L]; ``-inf``/NaN allowed only where ``mask`` is False.
        mask: [B, L] bool, tokens that count.
        rollout_logprobs: [B, L] from the rollout engine; None -> the detached student stands in.
        gamma: prefix-weight strength (gamma = 0 is plain OPD).
        eps: guard of the weights' denominator, max(S, eps).
        num_items: N for ``token_mean`` (TRL's ``num_items_in_batch`` under grad accumulation);
            default the number of valid tokens.
        reduction: ``token_mean`` (TRL) or ``sequence_mean`` (mean over rows of per-row token
            means, the authors' verl code).
        tis_threshold: token-level truncated importance sampling (the authors' rollout correction):
            each token's term times sg(min(exp(student - rollout), tis_threshold)); None = off.
    """
    mask = _check_mask(mask)
    _check_pair("student_logprobs", student_logprobs, mask)
    _check_pair("teacher_logprobs", teacher_logprobs, mask)
    if rollout_logprobs is not None:
        _check_pair("rollout_logprobs", rollout_logprobs, mask)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if reduction == "sequence_mean" and num_items is not None:
        raise ValueError("num_items applies to reduction='token_mean' only")
    if num_items is not None and not float(num_items) > 0:
        raise ValueError(f"num_items must be > 0 (got {float(num_items)}); the batch has no valid tokens")
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if tis_threshold is not None and not (tis_threshold > 0 and math.isfinite(tis_threshold)):
        raise ValueError(f"tis_threshold must be a finite number > 0 or None, got {tis_threshold!r}")
    rollout = student_logprobs.detach() if rollout_logprobs is None else rollout_logprobs
    adv = _masked_diff(teacher_logprobs, rollout, mask)
    a_abs = adv.abs()
    w = _weights(adv if signed else a_abs, gamma, eps, signed)
    coeff = w * adv                        # 0 off the mask (adv is exactly 0 there, w is finite)
    pg = coeff if tis_threshold is None else coeff * (tis := tis_weights(student_logprobs, rollout, mask, tis_threshold))
    safe_student = torch.where(mask, student_logprobs, 0.0)
    per_token = safe_student * pg.neg()
    count = mask.sum()
    if reduction == "token_mean":
        total = per_token.sum()
        loss = total / (count if num_items is None else float(num_items))
    else:
        counts = mask.sum(dim=-1)
        rows = counts > 0
        total = per_token.sum(dim=-1)[rows] / counts[rows]
        loss = total.mean()
    # everything the caller needs from the device, in one transfer: the loss (non-finite iff a valid
    # input is, so it doubles as the input check), the token count and the five metrics
    vals = torch.cat([loss.detach().reshape(1).to(adv.dtype), count.reshape(1).to(adv.dtype),
                      _metric_sums(adv, a_abs, w, coeff, mask)]).tolist()
    if not math.isfinite(vals[0]):
        _raise_not_finite([("student_logprobs", student_logprobs), ("teacher_logprobs", teacher_logprobs),
                           ("rollout_logprobs", rollout)], mask)
    n_valid = vals[1]
    if reduction == "token_mean":
        n = n_valid if num_items is None else float(num_items)
        if n <= 0:
            raise ValueError(f"num_items must be > 0 (got {n}); the batch has no valid tokens")
    else:
        if n_valid <= 0:
            raise ValueError("the batch has no valid tokens")
        n = float(total.numel())
    metrics = _metrics_from(vals[2:], n_valid)
    if tis_threshold is not None and n_valid > 0:
        metrics["tis/mean_ratio"] = float(tis.sum()) / n_valid
        metrics["tis/clipped_frac"] = float((mask & (tis >= tis_threshold)).sum()) / n_valid
    return ObjectiveResult(loss=loss, advantages=adv, weights=w, per_token_loss=per_token.detach(),
                           metrics=metrics, reduction=reduction, num_items=n)


def tis_weights(student_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, threshold: float = 5.0) -> Tensor:
    """Token-level truncated IS ratio sg(min(exp(student - rollout), threshold)); 0 off the mask."""
    diff = torch.where(mask, student_logprobs.detach() - rollout_logprobs.detach(), 0.0)
    return torch.where(mask, diff.exp().clamp(max=threshold), 0.0)


def opd_loss(student_logprobs, teacher_logprobs, mask, rollout_logprobs=None, num_items=None,
             reduction: str = "token_mean") -> ObjectiveResult:
    """Plain on-policy distillation: IW-OPD with gamma = 0 (every weight is 1)."""
    return iw_opd_loss(student_logprobs, teacher_logprobs, mask, rollout_logprobs,
                       gamma=0.0, num_items=num_items, reduction=reduction)


def _metric_sums(adv: Tensor, a_abs: Tensor, w: Tensor, coeff: Tensor, mask: Tensor) -> Tensor:
    """[sum w*A, sum |A|, sum w, min w, max w] over valid tokens, as one tensor (no sync)."""
    wd = w.detach()
    return torch.stack([
        coeff.detach().sum(), a_abs.sum(), torch.where(mask, wd, 0.0).sum(),
        torch.where(mask, wd, math.inf).amin(), torch.where(mask, wd, -math.inf).amax(),
    ]).to(adv.dtype)


def _metrics_from(sums: list[float], n: float) -> dict[str, float]:
    if n <= 0:
        return {}
    wa, aa, ws, wmin, wmax = sums
    return {
        "iw_opd/mean_advantage": wa / n,
        "iw_opd/mean_abs_advantage": aa / n,
        "iw_opd/mean_weight": ws / n,
        "iw_opd/min_weight": wmin,
        "iw_opd/max_weight": wmax,
    }


def iw_opd_metrics(advantages: Tensor, weights: Tensor, mask: Tensor) -> dict[str, float]:
    """TRL's logged metrics over valid tokens (one transfer from the device)."""
    m = mask.bool()
    a = torch.where(m, advantages.detach(), 0.0)
    vals = torch.cat([m.sum().reshape(1).to(a.dtype),
                      _metric_sums(a, a.abs(), weights, weights.detach() * a, m)]).tolist()
    return _metrics_from(vals[1:], vals[0])


def position_mask(mask: Bool[Tensor, "B L"], part: str, fraction: float = 0.3) -> Bool[Tensor, "B L"]:
    """Keep only the first ("prefix") or last ("suffix") ``fraction`` of each row's valid tokens.

    The paper's Prefix-30 / Suffix-30 ablation; at least one token per non-empty row is kept.
    """
    mask = _check_mask(mask)
    if part not in ("prefix", "suffix"):
        raise ValueError(f"part must be 'prefix' or 'suffix', got {part!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    rank = torch.cumsum(mask.long(), dim=-1) - 1          # 0-based index among valid tokens
    n = mask.sum(dim=-1, keepdim=True)
    keep = torch.clamp(torch.ceil(n * fraction), min=1).long()
    sel = rank < keep if part == "prefix" else rank >= n - keep
    return mask & sel


def jsd_top1_loss(
    student_logits: Float[Tensor, "B L V"],
    teacher_logits: Float[Tensor, "B L V"],
    tokens: Tensor,
    mask: Bool[Tensor, "B L"],
    beta: float = 0.5,
    temperature: float = 1.0,
    num_items: float | int | None = None,
) -> ObjectiveResult:
    """TRL's default distillation objective: generalised JSD_beta on a top-1 support.

    The logits are in completion coordinates already (``logits[b, j]`` predicts token j). Per
    position the distribution is reduced to the buckets {teacher argmax, sampled token y_j, tail}
    (two buckets when they coincide). beta = 0: KL(T || S); beta = 1: KL(S || T); otherwise
    beta * KL(T || M) + (1 - beta) * KL(S || M) with M = beta * T + (1 - beta) * S.
    Token-mean over valid tokens. ``advantages`` and ``weights`` of the result are zeros / ones.
    """
    mask = _check_mask(mask)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must both be [B, L, V]")
    if student_logits.shape[:2] != mask.shape or tokens.shape != mask.shape:
        raise ValueError(f"logits [B, L, V] = {tuple(student_logits.shape)}, tokens {tuple(tokens.shape)} and "
                         f"mask {tuple(mask.shape)} must share [B, L]")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    s_lp = torch.log_softmax(student_logits / temperature, dim=-1)
    t_lp = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    top = t_lp.argmax(dim=-1)
    same = top == tokens

    def buckets(lp: Tensor) -> Tensor:  # [B, L, 3] log-probs of {top, sampled (or empty), tail}
        a = lp.gather(-1, top[..., None]).squeeze(-1)
        b = lp.gather(-1, tokens[..., None]).squeeze(-1)
        b = torch.where(same, torch.full_like(b, -math.inf), b)
        kept = torch.logaddexp(a, b)
        tail = torch.log1p(-kept.exp().clamp(max=1 - 1e-7))
        return torch.stack([a, b, tail], dim=-1)

    s, t = buckets(s_lp), buckets(t_lp)

    def kl(p: Tensor, q: Tensor) -> Tensor:  # KL(p || q) over buckets, 0 * log 0 = 0
        pe = p.exp()
        return torch.where(pe > 0, pe * (p - q), torch.zeros_like(p)).sum(-1)

    if beta == 0:
        per = kl(t, s)
    elif beta == 1:
        per = kl(s, t)
    else:
        m = torch.logaddexp(t + math.log(beta), s + math.log(1 - beta))
        per = beta * kl(t, m) + (1 - beta) * kl(s, m)
    per = torch.where(mask, per, torch.zeros_like(per))
    loss, n = _reduce(per, mask, "token_mean", num_items)
    zeros = torch.zeros(mask.shape, dtype=per.dtype)
    return ObjectiveResult(loss=loss, advantages=zeros, weights=torch.ones_like(zeros),
                           per_token_loss=per.detach(), metrics={"jsd/loss": float(loss.detach())},
                           reduction="token_mean", num_items=n)
