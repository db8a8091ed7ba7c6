"""Summarise the study's results (docs/results/<task>/*.json) with :mod:`research.study`: per
objective, held-out greedy and T=1 exact match and teacher-student reverse KL per token at the first
and last evaluation (mean ± sd over seeds), the evaluation step at which each seed first reaches
OPD's final mean greedy accuracy, and mean |A| by normalised position at step 0.

    .venv/bin/python scripts/summarize_study.py [--task main]
"""

from __future__ import annotations

import argparse


from research import study  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="main")
    args = ap.parse_args()
    runs = study.load_runs(args.task)
    if not runs:
        print(f"no results under docs/results/{args.task}/")
        return
    print(f"task {args.task}\n")
    print(study.summary_markdown(runs))
    if "opd" in runs:
        target = study.final(runs["opd"], "greedy_acc")[0]
        print(f"\nfirst evaluation step reaching OPD's final mean greedy accuracy ({target:.3f}), per seed:")
        for objective, rs in runs.items():
            steps = [study.steps_to_reach(r, "greedy_acc", target) for r in rs]
            print(f"  {study.LABELS.get(objective, objective)}: {steps}")
    four = [r for k in ("opd", "iw_opd", "prefix30", "suffix30") for r in runs.get(k, [])]
    print("\nmean |A| by normalised position (10 bins, step 0, held-out T=1 rollouts, all runs of the four "
          "main objectives):")
    print(" ".join(f"{v:.3f}" for v in study.position_profile(four)))


if __name__ == "__main__":
    main()
