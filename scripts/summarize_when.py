"""Summarise the when-does-IW-OPD-help sweep (docs/results/when/): the early-step tables (steps to
90% of OPD's final gain with bootstrap intervals over seeds; IW - OPD greedy accuracy paired over
the same held-out prompts), the compression table, the TIS pair, and the total compute.

    .venv/bin/python scripts/summarize_when.py            # Markdown on stdout
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from research import study_stats as S  # noqa: E402
from research.study import run_seed  # noqa: E402

WHEN = S.WHEN_DIR
SIZES = S.SIZES
load = S.when_runs


def early(task: str) -> str:
    runs = load(task, "200k")
    if not {"opd", "iw_opd"} <= set(runs):
        return f"(no early-step results for {task} yet)"
    r = S.speed_summary(runs["opd"], runs["iw_opd"])
    return S.speed_markdown({f"{task}, 200k": r}) + f"\n\n{r['eval_prompts']} held-out prompts per evaluation"


def compression() -> str:
    head = ("| task | student | params | teacher / student | seeds | start | OPD gain at 10 | IW-OPD gain at 10 "
            "| IW - OPD at 10 [95% CI] | relative | OPD gain at end | IW - OPD at end [95% CI] | "
            "steps to 90%: OPD / IW-OPD (mean curve) |")
    lines = [head, "|" + "---|" * 13]
    for task in ("main", "answer_first"):
        for size in SIZES:
            runs = load(task, size)
            if not {"opd", "iw_opd"} <= set(runs):
                continue
            r = S.speed_summary(runs["opd"], runs["iw_opd"], at=(10,))
            one = runs["opd"][0]
            d10, dend = r["diff"][10], r["diff"][max(r["diff"])]
            g_opd, g_iw = d10["opd"] - r["start"], d10["iw"] - r["start"]
            rel = f"{(g_iw - g_opd) / g_opd:+.0%}" if g_opd > 0 else "n/a"
            lines.append(
                f"| {task} | {size} | {one['student_params']:,} | {one['param_ratio']:.2f}x | "
                f"{','.join(map(str, r['seeds']))} | {r['start']:.3f} | {g_opd:+.3f} | {g_iw:+.3f} | "
                f"{d10['mean']:+.3f} [{d10['ci'][0]:+.3f}, {d10['ci'][1]:+.3f}] | {rel} | "
                f"{r['opd_final'] - r['start']:+.3f} | {dend['mean']:+.3f} [{dend['ci'][0]:+.3f}, {dend['ci'][1]:+.3f}] | "
                f"{S._steps(r['curve_steps_opd'][0])} / {S._steps(r['curve_steps_iw'][0])} |")
    return "\n".join(lines)


def tis() -> str:
    lines = ["| rollout engine | TIS | seed | max drift | mean drift | mean TIS ratio | clipped | greedy start -> 10 -> end |",
             "|---|---|---|---|---|---|---|---|"]
    for folder in sorted((WHEN / "main" / "tis").glob("*_*")):
        for path in sorted(folder.glob("*.json")):
            run = json.loads(path.read_text())
            steps = [r for r in run["records"] if r["metrics"]]
            drifts = [r["drift"] for r in steps]
            ratio = [r["metrics"].get("tis/mean_ratio") for r in steps]
            clip = [r["metrics"].get("tis/clipped_frac") for r in steps]
            ev = [r for r in run["records"] if r["eval"]]
            at10 = S.eval_at(run, 10)["greedy_acc"]
            dtype, on = folder.name.split("_")
            lines.append(f"| vLLM {dtype} | {on} | {run_seed(run)} | {max(drifts):.4f} | "
                         f"{statistics.mean(drifts):.4f} | "
                         + (f"{statistics.mean(ratio):.4f} | {statistics.mean(clip):.5f}" if ratio[0] is not None
                            else "- | -")
                         + f" | {ev[0]['eval']['greedy_acc']:.3f} -> {at10:.3f} -> {ev[-1]['eval']['greedy_acc']:.3f} |")
    return "\n".join(lines)


def compute() -> str:
    runs = [json.loads(p.read_text()) for p in WHEN.rglob("*.json")]
    students = [json.loads(p.read_text()) for p in (ROOT / "data" / "study_students").rglob("training_report.json")]
    run_s = sum(r["wall_s"] for r in runs)
    st_s = sum(s["wall_s"] for s in students)
    return (f"{len(runs)} runs, {run_s / 60:.1f} min of run wall time; {len(students)} students trained, "
            f"{st_s / 60:.1f} min; total {(run_s + st_s) / 60:.1f} min (one job at a time, 1 torch thread)")


def main() -> None:
    for task in ("main", "answer_first"):
        print(f"## early steps, {task}\n\n{early(task)}\n")
    print(f"## compression\n\n{compression()}\n\n## TIS pair (main, IW-OPD)\n\n{tis()}\n\n## compute\n\n{compute()}")


if __name__ == "__main__":
    main()
