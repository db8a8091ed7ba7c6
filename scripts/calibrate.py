"""Measure the numbers behind ``Tolerances``: |rollout - student| on healthy real rollouts, and the gap each
broken fixture in data/fixtures/ produces.

    source scripts/env.sh && .venv/bin/python scripts/calibrate.py              # the gap tables
    source scripts/env.sh && .venv/bin/python scripts/calibrate.py --mismatch   # the mismatch distributions and thresholds
    source scripts/env.sh && .venv/bin/python scripts/calibrate.py --mismatch --small   # the same on 4-row batches

Gap tables (3 seeds each, 12 held-out prompts of 4 lengths, the tiny student served by vLLM
in-process on the CPU, the student rescored with transformers in float32): float32 raw T=1;
processed_logprobs T=0.7 (student scored at 0.7); bfloat16 vLLM raw T=1 vs a float32 student; then
the gap each broken fixture produces.

--mismatch: per healthy setting (float32 T=1, processed T=0.7, processed top_p 0.95, bf16 vLLM vs a
float32 trainer, bf16 vLLM vs a bf16-autocast trainer; 3 seeds x 48 prompts) of both tiny models and
of the random-weight Qwen3 at 151,936 tokens (``research.random_models``, built into its cache on
first use): per-token |Δ| quantiles, pooled mismatch metrics, findings, errors; then each threshold
of ``Tolerances`` beside the healthy measurement nearest to it. --small: the same on 10 seeds of
4-row batches with at most 8 / 6 new tokens (where a rule that needs evidence is most easily fooled).
Each healthy batch is checked four ways: with meta rollout_dtype / trainer_dtype, without them, without
its sampling settings and dtypes (a dump that records nothing: a top-p run then shows a nucleus of one
at exactly 0.0 with no settings to say so), and split into 4 groups (each group judged on its own, a
quarter of the tokens); the top-p setting also with ``kept_logmass`` (the trainer's log-mass over its own
top-p set, the exact comparison). Per seed it records the robust numerics rule's quantities (the full
metric's distance to its bound in standard errors, the trimmed pool's metrics, the tokens beyond
``tail_nats``) and, without settings, the estimated top_p and how far the 0.0 tokens sit above it.
--all: the gap tables, --mismatch and --mismatch --small in one run.
Prints markdown tables (docs/calibration.md pastes them).
"""

from __future__ import annotations

import json
import math
import sys

import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS
from research import REPO_ROOT

from make_fixtures import MAX_TOKENS, pick_prompts  # noqa: E402

SEEDS = (0, 1, 2)


def gap_stats(batch: K.Batch) -> tuple[float, float, int]:
    r, s = batch.series(ROLLOUT_LOGPROBS, torch.float64), batch.series(STUDENT_LOGPROBS, torch.float64)
    g = (r - s).abs()[batch.valid() & ~r.isnan() & ~s.isnan()]
    return float(g.max()), float(g.mean()), int(g.numel())


MISMATCH_PROMPTS = 48          # per seed: ~1200 tokens of the tiny models, ~1500 of the large-vocabulary one
LARGE_MAX_TOKENS = 32
SCORE_ROWS = 8                 # rows per transformers forward for the large vocabulary ([8, ~44, 151936] logits)

# name, engine dtype, rollout sampling, trainer temperature, trainer autocast dtype (None: float32)
HEALTHY = [
    ("fp32, T=1", "float32", dict(temperature=1.0), 1.0, None),
    ("fp32, processed T=0.7", "float32", dict(temperature=0.7), 0.7, None),
    ("fp32, processed top_p 0.95 (TRL's default)", "float32", dict(temperature=1.0, top_p=0.95), 1.0, None),
    ("bf16 vLLM vs fp32 trainer", "bfloat16", dict(temperature=1.0), 1.0, None),
    ("bf16 vLLM vs bf16-autocast trainer", "bfloat16", dict(temperature=1.0), 1.0, torch.bfloat16),
]
FULL_PRECISION = ("fp32, T=1", "fp32, processed T=0.7")
LOW_PRECISION = ("bf16 vLLM vs fp32 trainer", "bf16 vLLM vs bf16-autocast trainer")


def autocast(dtype):
    """The trainer's precision: a CPU autocast context in ``dtype``, or float32 when None."""
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def kept_logmass(batch: K.Batch, trainer, top_p: float) -> list[list[float]]:
    """log S per token: the trainer's probability mass over its own top-p set at each step (the engine's kept
    set, up to float rounding), SCORE_ROWS rows per forward pass."""
    rows: list[list[float]] = []
    for s in range(0, batch.size, SCORE_ROWS):
        part = batch.select(range(s, min(s + SCORE_ROWS, batch.size)))
        with torch.no_grad():
            probs = torch.softmax(K.completion_logits(trainer, part).double(), -1)
        sp = probs.sort(-1, descending=True).values
        mass = torch.where((sp.cumsum(-1) - sp) < top_p, sp, torch.zeros_like(sp)).sum(-1)
        rows += [mass[i, :n].log().tolist() for i, n in enumerate(part.lengths)]
        del probs, sp
    return rows


def healthy_batches(model_dir, prompts, max_tokens, tokenizer, seeds):
    """Yield (setting, batch, {variant: report}) for every healthy setting and seed: ``dtypes`` (meta
    rollout_dtype / trainer_dtype recorded), ``bare`` (without), ``nothing`` (no dtypes, no sampling
    settings), ``groups`` (dtypes, rows split into 4 groups) and, for top-p, ``kept`` (with kept_logmass)."""
    trainer = K.load_model(model_dir)
    for setting, dtype, sampling, score_t, trainer_dtype in HEALTHY:
        engine = K.VLLMEngine(model_dir, dtype=dtype, logprobs_mode="processed_logprobs")  # = raw at T=1, top_p 1
        for seed in seeds:
            b = K.rollout(engine, prompts, max_tokens=max_tokens, seed=seed, **sampling)
            with autocast(trainer_dtype):    # the student series, SCORE_ROWS rows per forward pass
                b = K.score_batch(b, student=trainer, temperature=score_t, rows_per_pass=SCORE_ROWS)
            check = lambda x: K.check_alignment(x, student_tokenizer=tokenizer)  # noqa: E731
            reports = {"bare": check(b), "nothing": check(b.replace(sampling=None))}
            b = b.with_meta(rollout_dtype=dtype, trainer_dtype=str(trainer_dtype or torch.float32).removeprefix("torch."))
            reports["dtypes"] = check(b)
            reports["groups"] = check(b.replace(groups=[f"g{i % 4}" for i in range(b.size)]))
            if "top_p" in sampling:
                reports["kept"] = check(b.replace(kept_logmass=kept_logmass(b, trainer, sampling["top_p"])))
            yield setting, b, reports


def robust(d: torch.Tensor, tol) -> dict:
    """The robust numerics rule's quantities on one seed's Δ: the full metric's z (distance to its bound in
    standard errors), the trimmed pool's token_mult_prob_error / k3_kl, the tokens beyond tail_nats."""
    from iwopd_kit.alignment.mismatch import mean_standard_error, metrics_from_delta

    m = metrics_from_delta(d)
    se = mean_standard_error(d, lambda x: torch.exp(x.abs()))
    cut = float(torch.quantile(d.abs(), tol.trim_quantile))
    t = metrics_from_delta(d[d.abs() <= cut])
    z = (m["mismatch/token_mult_prob_error"] - tol.mult_prob_error) / se if se > 0 else -math.inf
    return {"z": z, "trim_mpe": t["mismatch/token_mult_prob_error"],
            "trim_k3": t["mismatch/k3_kl"], "tail": int((d.abs() > tol.tail_nats).sum()), "n": d.numel()}


def summarize(runs: list) -> dict:
    """Pooled |Δ| quantiles and metrics of one setting's seeds, the worst seed's, the findings and errors."""
    from iwopd_kit.alignment.zeros import group_floor, nucleus_floor
    from iwopd_kit.alignment.mismatch import abs_delta_quantiles, metrics_from_delta, pooled_delta

    tol = K.Tolerances()
    deltas, per_seed, zero_margin, kinds = [], [], None, {}
    errors = {k: 0 for k in ("dtypes", "bare", "nothing", "groups", "kept")}
    est, est_margin = [], None
    for b, reports in runs:
        s, r, valid = b.series(STUDENT_LOGPROBS, torch.float64), b.series(ROLLOUT_LOGPROBS, torch.float64), b.valid()
        d = pooled_delta(s, r, valid)
        deltas.append(d)
        per_seed.append(metrics_from_delta(d) | abs_delta_quantiles(d) | robust(d, tol)
                        | {"se_mpe": float(d.abs().exp().std() / math.sqrt(d.numel()))})
        zero = valid & (r == 0.0) & ~s.isnan()
        if bool(zero.any()):      # how far below where a 0.0 is healthy the trainer's value went
            m = float((s[zero] - nucleus_floor(b)).min())
            zero_margin = m if zero_margin is None else min(zero_margin, m)
        bare = b.replace(sampling=None)
        ctx = K.alignment.Context(bare)
        f = group_floor(ctx, ctx.open())
        if f.estimated:           # without settings: the estimate, and the 0.0 tokens' margin above log(estimate)
            est.append(f.top_p)
            if bool(zero.any()):
                m = float((s[zero] - math.log(f.top_p)).min())
                est_margin = m if est_margin is None else min(est_margin, m)
        for f in reports["dtypes"].findings:
            kinds[f"{f.kind}:{f.severity}"] = kinds.get(f"{f.kind}:{f.severity}", 0) + 1
        for k, rep in reports.items():
            errors[k] += sum(f.severity == "error" for f in rep.findings)
    d = torch.cat(deltas)
    return dict(tokens=d.numel(), q=abs_delta_quantiles(d), max=float(d.abs().max()), m=metrics_from_delta(d),
                per_seed=per_seed, zero=zero_margin, errors=errors["dtypes"], bare_errors=errors["bare"],
                variants=errors, est=est, est_margin=est_margin,
                found=", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none")


def mismatch_calibration(seeds=SEEDS, n_prompts: int = MISMATCH_PROMPTS, tiny_tokens: int = MAX_TOKENS,
                         large_tokens: int = LARGE_MAX_TOKENS) -> None:
    """Healthy rollout-vs-trainer pairs of both tiny models and the large-vocabulary random model: the
    distributions the numerics, zero-log-prob and gap rules are set on, and each threshold's margin."""
    from research.random_models import RandomModelSpec, random_model_dir, random_prompts

    tok = K.load_tokenizer(toy.STUDENT_DIR)
    tiny_prompts = [tok(p)["input_ids"] for p in toy.load_prompts(toy.EVAL_PROMPTS)[:n_prompts]]
    large = random_model_dir(RandomModelSpec())
    models = [("student (vocab 16)", toy.STUDENT_DIR, tiny_prompts, tiny_tokens, tok),
              ("teacher (vocab 16)", toy.TEACHER_DIR, tiny_prompts, tiny_tokens, tok),
              ("random Qwen3 (vocab 151,936)", large, random_prompts(n_prompts, seed=0), large_tokens,
               K.load_tokenizer(large))]
    fmt = lambda v: "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    print(f"Per healthy setting, pooled over {len(seeds)} seeds ({n_prompts} prompts each, at most {tiny_tokens} / "
          f"{large_tokens} new tokens for the tiny / large-vocabulary models): per-token |Δ| "
          "quantiles, the pooled mismatch metrics (the worst seed's in brackets), the lowest trainer log-prob of a token")
    print("whose rollout log-prob is exactly 0.0 relative to where a 0.0 is healthy (0, or log top_p), the findings "
          "of the per-seed checks, and the error-level ones (with meta rollout_dtype / trainer_dtype recorded; and "
          "without them).\n")
    print("| model | setting | tokens | p50 | p90 | p99 | p99.9 | max | token_mult_prob_error | k3_kl | "
          "logp_abs_diff_mean | is_ess | chi2_token | exact 0.0: min (student - floor) | findings | errors (no dtypes) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows: dict[str, list] = {}
    for name, model_dir, prompts, max_tokens, tokenizer in models:
        by_setting: dict[str, list] = {}
        for setting, b, reports in healthy_batches(model_dir, prompts, max_tokens, tokenizer, seeds):
            by_setting.setdefault(setting, []).append((b, reports))
        for setting, runs in by_setting.items():
            r = summarize(runs)
            q, m, ps = r["q"], r["m"], r["per_seed"]
            worst = lambda k, f=max: f(x[k] for x in ps)  # noqa: E731
            print(f"| {name} | {setting} | {r['tokens']} | {fmt(q['p50'])} | {fmt(q['p90'])} | {fmt(q['p99'])} | "
                  f"{fmt(q['p99.9'])} | {fmt(r['max'])} | {m['mismatch/token_mult_prob_error']:.4f} "
                  f"({worst('mismatch/token_mult_prob_error'):.4f}) | {fmt(m['mismatch/k3_kl'])} "
                  f"({fmt(worst('mismatch/k3_kl'))}) | {fmt(m['mismatch/logp_abs_diff_mean'])} | "
                  f"{m['mismatch/is_ess']:.4f} ({worst('mismatch/is_ess', min):.4f}) | {fmt(m['mismatch/chi2_token'])} | "
                  f"{fmt(r['zero'])} | {r['found']} | {r['errors']} ({r['bare_errors']}) |", flush=True)
            rows.setdefault(setting, []).append(dict(r, name=name))
    variants_table(rows)
    thresholds_table(rows)


def variants_table(rows: dict[str, list]) -> None:
    """Errors per check variant, and the robust rule's and the top-p estimate's numbers per setting."""
    print("\nThe same batches checked other ways (errors; a dash where the variant does not apply), the robust "
          "numerics rule per seed (worst seed), and the top_p the data bounds when no settings are recorded:\n")
    print("| model | setting | errors: no settings | 4 groups | kept_logmass | worst z of token_mult_prob_error | "
          "trimmed token_mult_prob_error (worst) | trimmed k3_kl (worst) | tokens beyond tail_nats (worst seed) | "
          "estimated top_p (seeds) | 0.0 tokens: min (student - log estimate) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for setting, rs in rows.items():
        for r in rs:
            ps, v = r["per_seed"], r["variants"]
            kept = "-" if "top_p" not in setting else str(v["kept"])
            est = ", ".join(f"{x:.4f}" for x in r["est"]) or "-"
            margin = "-" if r["est_margin"] is None else f"{r['est_margin']:.3g}"
            print(f"| {r['name']} | {setting} | {v['nothing']} | {v['groups']} | {kept} | {max(x['z'] for x in ps):.2f} | "
                  f"{max(x['trim_mpe'] for x in ps):.4f} | {max(x['trim_k3'] for x in ps):.3g} | "
                  f"{max(x['tail'] for x in ps)} of {max(x['n'] for x in ps)} | {est} | {margin} |", flush=True)


def thresholds_table(rows: dict[str, list]) -> None:
    """Each numerics-related threshold of ``Tolerances`` beside the healthy measurement nearest to it."""
    tol = K.Tolerances()
    full = [r for s in FULL_PRECISION for r in rows[s]]
    low = [r for s in LOW_PRECISION for r in rows[s]]
    seeds = lambda rs, key: [x[key] for r in rs for x in r["per_seed"]]  # noqa: E731
    fp_max, fp_p90 = max(r["max"] for r in full), max(seeds(full, "p90"))
    lo_mpe, lo_k3 = max(seeds(low, "mismatch/token_mult_prob_error")), max(seeds(low, "mismatch/k3_kl"))
    zeros = [r["zero"] for rs in rows.values() for r in rs if r["zero"] is not None]
    p90 = {}                                       # per model: the bf16 per-seed p90 range and max |Δ|
    for r in low:
        lo, hi, mx = p90.get(r["name"], (math.inf, 0.0, 0.0))
        p90[r["name"]] = (min(lo, *seeds([r], "p90")), max(hi, *seeds([r], "p90")), max(mx, r["max"]))
    bulk_low = "; ".join(f"{n} {lo:.2g}-{hi:.2g}" for n, (lo, hi, _) in p90.items())
    agree = {n: mx for n, (lo, hi, mx) in p90.items() if hi <= tol.same}
    print("\n| threshold | value | nearest healthy measurement | margin |")
    print("|---|---|---|---|")
    print(f"| `same` | {tol.same:g} | float32 (T=1, processed T=0.7) max abs Δ {fp_max:.3g} | {tol.same / fp_max:.0f}x |")
    print(f"| `bulk_quantile` | {tol.bulk_quantile:g} | per-seed p90 of abs Δ: float32 at most {fp_p90:.3g}; bf16 {bulk_low} "
          f"| float32 {tol.same / fp_p90:.0f}x below `same`; a bf16 bulk at or below `same` is low-precision only "
          "through the recorded dtypes |")
    print(f"| `rounding` | {tol.rounding:g} | float32 max abs Δ {fp_max:.3g}"
          + "".join(f"; {n} bf16 (bulk agrees to float32) max {mx:.3g}" for n, mx in agree.items())
          + f" | {tol.rounding / fp_max:.0f}x" + "".join(f"; {tol.rounding / mx:.1f}x" for mx in agree.values()) + " |")
    print(f"| `mult_prob_error` | {tol.mult_prob_error:g} | bf16 worst seed {lo_mpe:.4f} | "
          f"{(tol.mult_prob_error - 1) / (lo_mpe - 1):.2f}x (excess over 1) |")
    print(f"| `k3_kl` | {tol.k3_kl:g} | bf16 worst seed {lo_k3:.3g} | {tol.k3_kl / lo_k3:.1f}x |")
    z = max((x["mismatch/token_mult_prob_error"] - tol.mult_prob_error) / x["se_mpe"] for r in low for x in r["per_seed"])
    print(f"| `metric_se` | {tol.metric_se:g} | bf16 seeds: largest (token_mult_prob_error - {tol.mult_prob_error:g}) / "
          f"its standard error {z:.2f} | {'below the bound itself' if z < 0 else f'{tol.metric_se - z:.2f} SE'} |")
    trim = max(x["trim_mpe"] for r in low for x in r["per_seed"])
    trim_k3 = max(x["trim_k3"] for r in low for x in r["per_seed"])
    print(f"| `trim_quantile` | {tol.trim_quantile:g} | bf16 seeds: trimmed token_mult_prob_error at most {trim:.4f}, "
          f"trimmed k3_kl at most {trim_k3:.3g} | {(tol.mult_prob_error - 1) / (trim - 1):.1f}x (excess over 1) |")
    mx_low = max(r["max"] for r in low)
    print(f"| `tail_nats` / `tail_share` | {tol.tail_nats:g} / {tol.tail_share:g} | bf16 max abs Δ {mx_low:.3g} (no "
          f"token beyond {tol.tail_nats:g}) | {tol.tail_nats / mx_low:.1f}x |")
    est = [r["est_margin"] for rs in rows.values() for r in rs if r["est_margin"] is not None]
    if est:
        print(f"| `nucleus_slack` | {tol.nucleus_slack:g} | no settings: lowest (student - log estimated top_p) of a "
              f"0.0 token {min(est):.3g} | " + ("never below the estimate |" if min(est) >= 0 else f"{tol.nucleus_slack / -min(est):.1f}x |"))
    if zeros:
        lo = min(zeros)
        print(f"| `zero_slack` | {tol.zero_slack:g} | exact-0.0 rollout tokens: lowest (student - floor) {lo:.3g} | "
              + (f"{tol.zero_slack / -lo:.1f}x |" if lo < 0 else "never below the floor |"))
    total = lambda key: sum(r["variants"][key] for rs in rows.values() for r in rs)  # noqa: E731
    print(f"\nError-level findings on the healthy settings: {total('dtypes')} with meta rollout_dtype / trainer_dtype "
          f"recorded, {total('bare')} without, {total('nothing')} without sampling settings either, {total('groups')} "
          f"with 4 groups, {total('kept')} with kept_logmass")


def main() -> None:
    if "--all" in sys.argv[1:]:
        sys.argv.remove("--all")
        gap_tables()
        print("\n## --mismatch\n", flush=True)
        mismatch_calibration()
        print("\n## --mismatch --small\n", flush=True)
        mismatch_calibration(seeds=tuple(range(10)), n_prompts=4, tiny_tokens=8, large_tokens=6)
        return
    if "--mismatch" in sys.argv[1:]:
        if "--small" in sys.argv[1:]:        # the batch sizes of a per-device TRL step: 4 rows, short completions
            mismatch_calibration(seeds=tuple(range(10)), n_prompts=4, tiny_tokens=8, large_tokens=6)
        else:
            mismatch_calibration()
        return
    gap_tables()


def gap_tables() -> None:
    """The healthy gap table (tiny student, 3 settings x 3 seeds) and the broken fixtures' gaps."""
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
    print("rows it broke (all rows for a batch-level defect), and what the check reports there (with the fixture's")
    print("tokenizers / num_items / reduction, as tests/test_fixtures.py runs it)")
    print()
    print("| fixture | what differs | smallest per-token change | median | largest | smallest broken-row mean abs(rollout - student) "
          "| caught |")
    print("|---|---|---|---|---|---|---|")
    fx = REPO_ROOT / "data" / "fixtures"
    base = K.read_jsonl(fx / "healthy_fp32_t1.jsonl")
    for f in sorted(fx.glob("*.jsonl")):
        if f.name.startswith("healthy_"):
            continue
        b = K.read_jsonl(f)
        expect = b.meta[0]["fixture"]["expect"]
        rows = sorted({r for r, _ in expect}) if expect is not None else list(range(b.size))
        r, st = b.series(ROLLOUT_LOGPROBS, torch.float64), b.series(STUDENT_LOGPROBS, torch.float64)
        d = (r - st).abs()
        row_mean = [float(d[i][~d[i].isnan()].mean()) for i in rows if bool((~d[i].isnan()).any())]
        rm = f"{min(row_mean):.3g}" if row_mean else "-"
        what, vals = changed(base, b)
        got = caught(b)
        if vals is None:
            print(f"| {f.stem} | {what} | - | - | - | {rm} | {got} |")
            continue
        v = vals.sort().values
        print(f"| {f.stem} | {what} | {float(v[0]):.3g} | {float(v[len(v) // 2]):.3g} | {float(v[-1]):.3g} | {rm} | {got} |")


def caught(b: K.Batch) -> str:
    """The check's findings of the fixture's own kind: their severity and whether they sit where it was broken."""
    info = b.meta[0]["fixture"]
    extra = {k: K.load_tokenizer(REPO_ROOT / info[k]) for k in ("student_tokenizer", "teacher_tokenizer") if k in info}
    extra.update({k: info[k] for k in ("num_items", "reduction") if k in info})
    report = K.check_alignment(b, **extra)
    hits = report.by_kind(info["kind"])
    if not hits:
        return "**missed**"
    where = sorted((f.row if f.row is not None else -1, f.position if f.position is not None else -1) for f in hits)
    want = (sorted((r, p if p is not None else -1) for r, p in info["expect"]) if info["expect"] is not None
            else [(-1, -1)] * len(hits))
    sev = "/".join(sorted({f.severity for f in hits}))
    return f"{len(hits)} {sev}" + (", where broken" if where == want else ", **elsewhere**")


def changed(base: K.Batch, b: K.Batch) -> tuple[str, torch.Tensor | None]:
    """What the breakage changed, and |change| per touched token (or None when nothing numeric changed)."""
    if b.completion_ids != base.completion_ids or b.prompt_ids != base.prompt_ids:
        # own rollout (temperature / top-p / BOS-EOS): compare its own rollout and student series
        if b.rollout_logprobs is None or b.student_logprobs is None:
            return "own rollout", None
        r, s = b.series(ROLLOUT_LOGPROBS, torch.float64), b.series(STUDENT_LOGPROBS, torch.float64)
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
