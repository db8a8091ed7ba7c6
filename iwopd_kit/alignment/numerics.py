"""Class M (numerics): the gap no other finding explains, judged on its distribution, per group and batch.

Reads the open policy tokens (``ctx.open()``: policy tokens with a finite rollout and trainer value
that no earlier finding explained), always: an earlier batch- or group-level finding only removes the
tokens it explained. Each group of ``batch.groups`` is judged on its own open tokens (a group beyond
the bounds is an error naming it, whatever the batch as a whole shows), then the batch's open tokens.

The rule for one pool (:func:`judge_pool`), with Δ = trainer - rollout:

- *low precision* (recorded dtypes below float32, or the pool's ``tol.bulk_quantile`` quantile of |Δ|
  above ``tol.same``): healthy rounding has long tails, so the pool is an error only when its mismatch
  is beyond the field's healthy range in one of three ways: (R1) the full pool's
  ``mismatch/token_mult_prob_error`` above ``tol.mult_prob_error`` or ``mismatch/k3_kl`` above
  ``tol.k3_kl`` by more than ``tol.metric_se`` standard errors; (R2) the same metrics over the *trimmed*
  pool (|Δ| at or below its ``tol.trim_quantile`` quantile) beyond the bounds by more than ``metric_se``
  of the trimmed pool's (small) standard errors: a heavy tail inflates the full pool's standard error but
  cannot hide a broken bulk; (R3) more than ``tol.tail_share`` of the tokens, and at least two, with |Δ|
  above ``tol.tail_nats``. Else a warning naming the cause;
- *float32 bulk*: a token off by more than ``tol.rounding`` is an error, else a warning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..batch.blocks import masked, row_blocks
from .context import Context
from .core import Finding
from .mismatch import QUANTILES, abs_delta_quantiles, mean_standard_error, metrics_from_delta
from .tolerances import FULL_PRECISION

_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}
MULT = "mismatch/token_mult_prob_error"
K3 = "mismatch/k3_kl"


def _over(m: dict, delta: Tensor, ctx: Context, pool: str) -> list[tuple[str, float, float]]:
    """(text, excess over the bound, standard error) of the two bounded metrics of one pool."""
    tol = ctx.tol
    se_m = mean_standard_error(delta, lambda d: torch.exp(d.abs()))
    se_k = mean_standard_error(delta, lambda d: torch.expm1(d) - d)
    return [(f"{pool}{MULT} {m[MULT]:.4f} > {tol.mult_prob_error:g} (NeMo-RL's healthy bound)", m[MULT] - tol.mult_prob_error, se_m),
            (f"{pool}{K3} {m[K3]:.3g} > {tol.k3_kl:g}", m[K3] - tol.k3_kl, se_k)]


def judge_pool(ctx: Context, delta: Tensor) -> dict:
    """The numerics verdict on one flat pool of Δ = trainer - rollout (finite, float64): ``severity`` ('error',
    'warning', or None when every |Δ| <= ``tol.same``), ``low`` (low precision), ``metrics``, ``q`` (|Δ|
    quantiles), ``beyond`` (the reasons for an error) and ``noisy`` (bounds crossed within noise)."""
    tol = ctx.tol
    out: dict = {"severity": None, "low": False, "beyond": [], "noisy": [], "n": delta.numel()}
    if delta.numel() == 0:
        return out
    m = metrics_from_delta(delta)
    out["metrics"] = m
    if m["mismatch/logp_abs_diff_max"] <= tol.same:
        return out
    q = abs_delta_quantiles(delta, (*QUANTILES, tol.bulk_quantile, tol.trim_quantile))
    out["q"] = q
    dtypes = (ctx.recorded_dtype("rollout_dtype"), ctx.recorded_dtype("trainer_dtype"))
    low = any(d is not None and d not in FULL_PRECISION for d in dtypes) or q[f"p{100 * tol.bulk_quantile:g}"] > tol.same
    out["low"] = low
    if not low:
        out["severity"] = "error" if m["mismatch/logp_abs_diff_max"] > tol.rounding else "warning"
        return out
    full = _over(m, delta, ctx, "")
    out["beyond"] = [f"{text} by more than {tol.metric_se:g} standard errors ({s_e:.2g})"
                     for text, x, s_e in full if x > tol.metric_se * s_e]
    out["noisy"] = [f"{text}, but within {tol.metric_se:g} standard errors ({s_e:.2g}) over {delta.numel()} tokens"
                    for text, x, s_e in full if 0 < x <= tol.metric_se * s_e]
    cut = q[f"p{100 * tol.trim_quantile:g}"]
    trimmed = delta[delta.abs() <= cut]
    if trimmed.numel() >= 2:
        mt = metrics_from_delta(trimmed)
        out["trimmed"] = mt
        pool = f"the trimmed pool's ({trimmed.numel()} tokens with |Δ| <= p{100 * tol.trim_quantile:g} = {cut:.3g}) "
        out["beyond"] += [f"{text} by more than {tol.metric_se:g} of its standard errors ({s_e:.2g}): the bulk is off, not a tail"
                          for text, x, s_e in _over(mt, trimmed, ctx, pool) if x > tol.metric_se * s_e]
    n_tail = int((delta.abs() > tol.tail_nats).sum())
    out["tail"] = n_tail
    if n_tail >= 2 and n_tail > tol.tail_share * delta.numel():
        out["beyond"].append(f"{n_tail} of {delta.numel()} tokens ({n_tail / delta.numel():.1%}) are off by more than "
                             f"{tol.tail_nats:g} nats (more than {tol.tail_share:.0%}): not a rounding tail")
    out["severity"] = "error" if out["beyond"] else "warning"
    return out


def _cause(ctx: Context) -> str | None:
    rd, td = ctx.recorded_dtype("rollout_dtype"), ctx.recorded_dtype("trainer_dtype")
    short = lambda d: _SHORT.get(d, d)  # noqa: E731
    if rd is not None and td is not None:
        return f"rollout {short(rd)} vs trainer {short(td)}" if rd != td else f"rollout and trainer both {short(rd)}"
    if rd is not None or td is not None:
        return f"rollout {short(rd)}, trainer dtype not recorded" if td is None else f"trainer {short(td)}, rollout dtype not recorded"
    return None


def _message(ctx: Context, v: dict, b: int, j: int, name: str | None) -> str:
    tol, m, q = ctx.tol, v["metrics"], v["q"]
    where = f"group {name!r}: " if name is not None else ""
    stats = (f"{where}|trainer - rollout| p50 {q['p50']:.3g}, p90 {q['p90']:.3g}, p99 {q['p99']:.3g}, max "
             f"{m['mismatch/logp_abs_diff_max']:.3g} (row {b}, position {j}) over {v['n']} tokens; {MULT} {m[MULT]:.4f}, "
             f"{K3} {m[K3]:.3g}")
    if not v["low"]:
        bulk = q[f"p{100 * tol.bulk_quantile:g}"]
        return (f"{stats}: while the bulk agrees to float32 (p{100 * tol.bulk_quantile:g} {bulk:.2g}): "
                + ("not rounding; find what changes this token's value on one side only" if v["severity"] == "error"
                   else "a small disagreement on a few tokens (batch-variant kernels?); compare in float64 on both sides"))
    cause = _cause(ctx)
    if v["beyond"]:
        return (f"{stats}: too wide for low-precision rounding{f' ({cause})' if cause else ''}: {'; '.join(v['beyond'])}, "
                "with no offset, temperature, top-p or staleness pattern; compare in float64 on both sides (rounding "
                "shrinks, a bug stays) and check that both sides run the same weights")
    if v["noisy"]:
        mt = v.get("trimmed")
        healthy = (f"the trimmed pool ({100 * tol.trim_quantile:g}% of tokens) is within the bounds ({MULT} "
                   f"{mt[MULT]:.4f}, {K3} {mt[K3]:.3g}) and {v['tail']} token(s) exceed {tol.tail_nats:g} nats: a few tail "
                   "tokens carry the full pool's metrics" if mt is not None else "too few tokens to trim")
    else:
        healthy = f"within the healthy range ({MULT} <= {tol.mult_prob_error:g})"
    if cause is not None:
        what = (f"{cause}: low-precision rounding, {healthy}; roll out in the trainer's dtype to remove it (TRL: build the "
                "engine with iwopd_kit.integrations.trl.vllm_engine_kwargs(dtype='float32'), or train in the engine's dtype)")
    else:
        what = (f"looks like low-precision rounding (bf16 on one side?), {healthy}; record meta rollout_dtype / "
                "trainer_dtype to name the cause, or compare in float32 or float64 on both sides")
    if v["noisy"]:
        what += f"; {'; '.join(v['noisy'])}: too few tokens to call it, check a larger batch"
    return f"{stats}: {what}"


def find_numerics(ctx: Context) -> list[Finding]:
    """Class M over the open policy tokens: each group (when the batch has groups), then the batch
    (:func:`judge_pool`; module docstring). An error per group beyond the bounds (naming it), a batch-level
    error when the batch is beyond them and no group is, else one warning for the batch where some token
    differs by more than ``tol.same``; at the worst token of the pool. Error tokens (|Δ| > ``tol.same``) are
    flagged; a warning's tokens are explained as precision noise.
    """
    tol = ctx.tol
    opened = ctx.open()
    if not bool(opened.any()):
        return []
    gap = ctx.full_gap()                      # finite on the open tokens: a pool is read there only
    row_best, row_max, big = [], [], []       # per row: its worst open token (the first of equals), its |gap|
    for r in row_blocks(ctx.batch.size, ctx.batch.width):
        absg = gap[r].abs().masked_fill_(~opened[r], -1.0)
        row_best.append(absg.argmax(dim=1))
        row_max.append(absg.gather(1, row_best[-1][:, None]).squeeze(1))
        big.append(absg > tol.same)
    row_best, row_max, big = torch.cat(row_best), torch.cat(row_max), torch.cat(big)
    pools = [(n, r) for n, r in ctx.groups()] if ctx.batch.groups is not None else []
    out: list[Finding] = []
    for name, rows in pools + [(None, torch.ones(ctx.batch.size, dtype=torch.bool))]:
        tokens = opened & rows[:, None]
        v = judge_pool(ctx, masked(gap, tokens).neg_())
        if v["severity"] is None or (name is None and out) or (v["severity"] != "error" and name is not None):
            continue
        # the pool's worst token, first in row-major order: the first row of the largest row max, at its worst
        b = int(row_max.masked_fill(~rows, -1.0).argmax())
        j = int(row_best[b])
        differ = tokens & big
        ctx.mark("numerics", differ, explains=v["severity"] != "error")
        out.append(Finding("numerics", b, j, v["severity"], _message(ctx, v, b, j, name), group=name))
    return out


__all__ = ["judge_pool", "find_numerics"]
