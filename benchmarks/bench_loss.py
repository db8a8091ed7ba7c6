"""Small to large shapes: the kit's ``sampled_logprobs`` + ``iw_opd_loss`` forward and backward vs a
TRL-style reference from the same logits (goal: kit / reference <= 1.0 at every shape).

The reference is written here, after TRL 1.16's ``IWOPDTrainer._compute_iw_opd_loss``:
log_softmax(logits / T) + gather, the masked advantage, the prefix weights as
``cumsum - |A|``, the loss, its five logged metrics (``.item()`` each) and the token-mean. Both
sides get the same float32 logits (a leaf), ragged masks (random row lengths, right padding),
teacher and rollout log-probs, and run forward + backward; the results are compared (loss to 1e-5
relative, gradient to 1e-5 of its largest entry).

Timing: kit and reference calls alternate (so a drift of a shared machine hits both); the number
is the median over ``repeats`` pairs, with many repeats where a call takes about a millisecond
(single timings are noise there) and a few at the 2 GB shape.

    .venv/bin/python -m benchmarks.bench_loss [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import iwopd_kit as K

SHAPES = [(4, 16, 11), (8, 64, 32), (16, 128, 256), (64, 512, 32), (8, 512, 4096), (8, 2048, 32000)]
GAMMA, EPS, TEMPERATURE = 0.5, 1e-8, 1.0


def trl_reference(logits, tokens, labels, teacher, rollout, metrics: dict):
    """TRL 1.16's ``_compute_iw_opd_loss`` (local teacher, no ``num_items_in_batch``), inlined."""
    student_log_probs = F.log_softmax(logits / TEMPERATURE, dim=-1)
    student = student_log_probs.gather(dim=-1, index=tokens.unsqueeze(-1)).squeeze(-1)
    valid_mask = labels != -100
    missing_teacher = valid_mask & ~torch.isfinite(teacher)
    if missing_teacher.any():
        raise ValueError("Teacher logprobs are missing")
    safe_teacher = torch.where(valid_mask, teacher, 0.0)
    safe_rollout = torch.where(valid_mask, rollout, 0.0)
    a_opd = (safe_teacher - safe_rollout).detach()
    a_opd = torch.where(valid_mask, a_opd, torch.zeros_like(a_opd))
    abs_adv = a_opd.abs()
    prefix = abs_adv.cumsum(dim=1) - abs_adv
    total = abs_adv.sum(dim=1, keepdim=True).clamp_min(EPS)
    weights = (1.0 + GAMMA * (1.0 - prefix / total)).detach()
    advantages = weights * a_opd
    loss = -student * advantages
    loss = torch.where(valid_mask, loss, torch.zeros_like(loss))
    with torch.no_grad():
        if valid_mask.any():
            metrics["iw_opd/mean_advantage"] = advantages[valid_mask].mean().item()
            metrics["iw_opd/mean_abs_advantage"] = abs_adv[valid_mask].mean().item()
            w = weights[valid_mask]
            metrics["iw_opd/mean_weight"] = w.mean().item()
            metrics["iw_opd/min_weight"] = w.min().item()
            metrics["iw_opd/max_weight"] = w.max().item()
    return loss.sum() / valid_mask.sum().clamp_min(1)


def inputs(shape, seed: int = 0) -> dict:
    B, L, V = shape
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g)
    tokens = torch.randint(0, V, (B, L), generator=g)
    lengths = torch.randint(max(1, L // 2), L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    with torch.no_grad():
        student = torch.log_softmax(logits[:, :, :], -1).gather(-1, tokens[..., None]).squeeze(-1)
    rollout = student + 1e-3 * torch.randn(B, L, generator=g)
    teacher = (student - torch.rand(B, L, generator=g)).masked_fill(~mask, float("-inf"))
    return dict(logits=logits.requires_grad_(), tokens=tokens, mask=mask, labels=tokens.masked_fill(~mask, -100),
                teacher=teacher, rollout=rollout)


def run_kit(d: dict):
    lp = K.sampled_logprobs(d["logits"], d["tokens"], TEMPERATURE)
    res = K.iw_opd_loss(lp, d["teacher"], d["mask"], d["rollout"], gamma=GAMMA, eps=EPS)
    res.loss.backward()
    return res.loss.detach(), res.metrics


def run_ref(d: dict):
    metrics: dict = {}
    loss = trl_reference(d["logits"], d["tokens"], d["labels"], d["teacher"], d["rollout"], metrics)
    loss.backward()
    return loss.detach(), metrics


def one(fn, d: dict) -> tuple[float, tuple]:
    d["logits"].grad = None
    t0 = time.perf_counter()
    out = fn(d)
    return time.perf_counter() - t0, out


def bench(shape, budget_s: float, max_repeats: int) -> dict:
    d = inputs(shape)
    (l_k, m_k), g_k = one(run_kit, d)[1], d["logits"].grad.clone()     # warm-up + the results compared
    (l_r, m_r), g_r = one(run_ref, d)[1], d["logits"].grad.clone()
    same = (abs(float(l_k) - float(l_r)) <= 1e-5 * max(1.0, abs(float(l_r)))
            and float((g_k - g_r).abs().max()) <= 1e-5 * float(g_r.abs().max())
            and all(abs(m_k[k] - m_r[k]) <= 1e-5 for k in m_r) and set(m_k) == set(m_r))
    del g_k, g_r
    t_first = one(run_kit, d)[0] + one(run_ref, d)[0]
    repeats = max(3, min(max_repeats, int(budget_s / max(t_first, 1e-6))))
    tk, tr = [], []
    for _ in range(repeats):
        tk.append(one(run_kit, d)[0])
        tr.append(one(run_ref, d)[0])
    return {"kit": statistics.median(tk), "ref": statistics.median(tr), "repeats": repeats, "same": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the [8, 2048, 32000] shape")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timing per shape (both sides)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine OpenMP's waits make millisecond ops noise)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = SHAPES[:-1] if args.quick else SHAPES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 logits, T={TEMPERATURE}, gamma={GAMMA}")
    print("| shape [B, L, V] | repeats | kit (ms) | TRL-style reference (ms) | kit / reference (goal <= 1.0) | same loss, grad, metrics |")
    print("|---|---|---|---|---|---|")
    for shape in shapes:
        r = bench(shape, args.budget, 2000)
        print(f"| {list(shape)} | {r['repeats']} | {r['kit'] * 1e3:.3f} | {r['ref'] * 1e3:.3f} | "
              f"{r['kit'] / r['ref']:.2f} | {r['same']} |", flush=True)


if __name__ == "__main__":
    main()
