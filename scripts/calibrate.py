"""Measure the numbers behind ``Tolerances``: |rollout - student| on healthy real rollouts, and the gap each
broken fixture in data/fixtures/ produces.

    source scripts/env.sh && .venv/bin/python scripts/calibrate.py              # the gap tables
    source scripts/env.sh && .venv/bin/python scripts/calibrate.py --mismatch   # + mismatch distributions

Healthy settings (3 seeds each, 12 held-out prompts of 4 lengths, the tiny student served by vLLM
in-process on the CPU, the student rescored with transformers in float32):
float32 raw T=1; processed_logprobs T=0.7 (student scored at 0.7); bfloat16 vLLM raw T=1 vs a
float32 student. Prints markdown tables (docs/calibration.md pastes them).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

import iwopd_kit as K
from iwopd_kit import toy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import MAX_TOKENS, pick_prompts  # noqa: E402

SEEDS = (0, 1, 2)


def gap_stats(batch: K.Batch) -> tuple[float, float, int]:
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    g = (r - s).abs()[batch.valid() & ~r.isnan() & ~s.isnan()]
    return float(g.max()), float(g.mean()), int(g.numel())


MISMATCH_PROMPTS = 48          # per seed: ~1200 tokens, enough for a p99.9


def mismatch_row(batch: K.Batch) -> dict:
    """Pooled mismatch metrics, |Δ| quantiles and the exact-0.0 rollout tokens of one healthy batch."""
    from iwopd_kit.mismatch import abs_delta_quantiles, metrics_from_delta, pooled_delta

    s, r, valid = batch.series("student_logprobs", torch.float64), batch.series("rollout_logprobs", torch.float64), batch.valid()
    d = pooled_delta(s, r, valid)
    zero = valid & (r == 0.0)
    report = K.check_alignment(batch, student_tokenizer=K.load_tokenizer(toy.STUDENT_DIR))
    return {"tokens": d.numel(), **abs_delta_quantiles(d), "max": float(d.abs().max()), **metrics_from_delta(d),
            "zeros": int(zero.sum()), "zero_min_student": float(s[zero].min()) if bool(zero.any()) else None,
            "errors": sum(f.severity == "error" for f in report.findings),
            "numerics": next((f.severity for f in report.findings if f.kind == "numerics"), "-")}


def mismatch_calibration() -> None:
    """Healthy rollout-vs-trainer pairs of both tiny models: the distributions the numerics rule is set on."""
    tok = K.load_tokenizer(toy.STUDENT_DIR)
    prompts = [tok(p)["input_ids"] for p in toy.load_prompts(toy.EVAL_PROMPTS)[:MISMATCH_PROMPTS]]
    settings = [  # name, engine kwargs, top_p, trainer autocast dtype (None: float32)
        ("vLLM fp32 vs trainer fp32", dict(dtype="float32"), 1.0, None),
        ("vLLM bf16 vs trainer fp32", dict(dtype="bfloat16"), 1.0, None),
        ("vLLM bf16 vs trainer bf16 autocast", dict(dtype="bfloat16"), 1.0, torch.bfloat16),
        ("vLLM fp32 vs trainer fp32, processed top_p 0.95", dict(dtype="float32"), 0.95, None),
    ]
    cols = ["tokens", "p50", "p90", "p99", "p99.9", "max", "mismatch/k3_kl", "mismatch/token_mult_prob_error",
            "mismatch/is_ess", "mismatch/chi2_token", "zeros", "zero_min_student", "numerics", "errors"]
    print("| model | setting | seed | " + " | ".join(c.removeprefix("mismatch/") for c in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    fmt = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    for name, model_dir in (("student", toy.STUDENT_DIR), ("teacher", toy.TEACHER_DIR)):
        trainer = K.load_model(model_dir)
        for setting, engine_kw, top_p, autocast in settings:
            engine = K.VLLMEngine(model_dir, logprobs_mode="processed_logprobs", **engine_kw)
            for seed in SEEDS:
                b = K.rollout(engine, prompts, temperature=1.0, top_p=top_p, max_tokens=MAX_TOKENS, seed=seed)
                ctx = torch.autocast("cpu", dtype=autocast) if autocast is not None else torch.autocast("cpu", enabled=False)
                with ctx:
                    b = K.score_batch(b, student=trainer)
                rd = engine_kw["dtype"]
                b = b.replace(meta=[dict(m or {}, rollout_dtype=rd, trainer_dtype=str(autocast or torch.float32)
                                         .removeprefix("torch.")) for m in (b.meta or [{}] * b.size)])
                row = mismatch_row(b)
                print(f"| {name} | {setting} | {seed} | " + " | ".join(fmt(row[c]) for c in cols) + " |", flush=True)


def main() -> None:
    if "--mismatch" in sys.argv[1:]:
        mismatch_calibration()
        return
    tok = K.load_tokenizer(toy.STUDENT_DIR)
    prompts = [tok(p)["input_ids"] for p in pick_prompts()]
    student = K.load_model(toy.STUDENT_DIR)
    settings = [
        ("float32, raw, T=1", dict(logprobs_mode="raw_logprobs"), 1.0),
        ("float32, processed, T=0.7", dict(logprobs_mode="processed_logprobs"), 0.7),
        ("bfloat16 vLLM vs float32 student, raw, T=1", dict(dtype="bfloat16", logprobs_mode="raw_logprobs"), 1.0),
    ]
    tol = K.Tolerances()
    print(f"Tolerances: same={tol.same:g}, rounding={tol.rounding:g}, max_lag={tol.max_lag}, lag_gain={tol.lag_gain:g}, "
          f"min_tokens_for_lag={tol.min_tokens_for_lag}, stale_t={tol.stale_t:g}, stale_min_rows={tol.stale_min_rows}")
    print()
    print("| healthy setting | seed | tokens | max abs gap | mean abs gap | errors |")
    print("|---|---|---|---|---|---|")
    for name, engine_kw, T in settings:
        engine = K.VLLMEngine(toy.STUDENT_DIR, **engine_kw)
        for seed in SEEDS:
            b = K.rollout(engine, prompts, temperature=T, max_tokens=MAX_TOKENS, seed=seed)
            b = K.score_batch(b, student=student, temperature=T)
            mx, mean, n = gap_stats(b)
            errors = sum(f.severity == "error" for f in K.check_alignment(b).findings)
            print(f"| {name} | {seed} | {n} | {mx:.3g} | {mean:.3g} | {errors} |", flush=True)
    print()
    print("Broken fixtures (data/fixtures): per-token change against healthy_fp32_t1 on the tokens the breakage")
    print("touched, and the row-mean |rollout - student| (the quantity the gap detectors compare with `same`) on the")
    print("rows it broke (all rows for a batch-level defect)")
    print()
    print("| fixture | what differs | smallest per-token change | median | largest | smallest broken-row mean abs(rollout - student) |")
    print("|---|---|---|---|---|---|")
    fx = toy.REPO_ROOT / "data" / "fixtures"
    base = K.read_jsonl(fx / "healthy_fp32_t1.jsonl")
    for f in sorted(fx.glob("*.jsonl")):
        if f.name.startswith("healthy_"):
            continue
        b = K.read_jsonl(f)
        expect = b.meta[0]["fixture"]["expect"]
        rows = sorted({r for r, _ in expect}) if expect is not None else list(range(b.size))
        r, st = b.series("rollout_logprobs", torch.float64), b.series("student_logprobs", torch.float64)
        d = (r - st).abs()
        row_mean = [float(d[i][~d[i].isnan()].mean()) for i in rows if bool((~d[i].isnan()).any())]
        rm = f"{min(row_mean):.3g}" if row_mean else "-"
        what, vals = changed(base, b)
        if vals is None:
            print(f"| {f.stem} | {what} | - | - | - | {rm} |")
            continue
        v = vals.sort().values
        print(f"| {f.stem} | {what} | {float(v[0]):.3g} | {float(v[len(v) // 2]):.3g} | {float(v[-1]):.3g} | {rm} |")


def changed(base: K.Batch, b: K.Batch) -> tuple[str, torch.Tensor | None]:
    """What the breakage changed, and |change| per touched token (or None when nothing numeric changed)."""
    if b.completion_ids != base.completion_ids or b.prompt_ids != base.prompt_ids:
        # own rollout (temperature / top-p / BOS-EOS): compare its own rollout and student series
        if b.rollout_logprobs is None or b.student_logprobs is None:
            return "own rollout", None
        r, s = b.series("rollout_logprobs", torch.float64), b.series("student_logprobs", torch.float64)
        d = (r - s).abs()
        ok = b.valid() & ~d.isnan()
        d = d[ok]
        big = d[d > K.Tolerances().same]
        if big.numel() == 0:
            return "own rollout: abs(rollout - student) (no token above `same`; the defect is in the ids)", None
        return f"own rollout: abs(rollout - student) on the {big.numel()} of {d.numel()} tokens above `same`", big
    out = []
    for name in K.batch.SERIES:
        x, y = base.series(name, torch.float64), b.series(name, torch.float64)
        both = base.valid()
        diff = both & ~((x == y) | (x.isnan() & y.isnan()))
        if bool(diff.any()):
            d = (x - y).abs()[diff]
            d = torch.where(d.isnan(), torch.full_like(d, math.inf), d)
            out.append((name, d))
    if not out:
        return "no series changed (the defect is in the extra inputs)", None
    name, d = max(out, key=lambda nd: nd[1].numel())
    return f"{name}: abs(changed - healthy) on {d.numel()} tokens (inf = value removed)", d


if __name__ == "__main__":
    main()
