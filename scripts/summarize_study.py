"""Summarise the study's results (docs/results/<task>/*.json): per objective, the held-out greedy
and T=1 exact match and the teacher-student reverse KL per token at the first and last evaluation
(mean and spread over seeds), and mean |A| by normalised position at step 0.

    .venv/bin/python scripts/summarize_study.py [--task main]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(task: str) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = defaultdict(list)
    for p in sorted((ROOT / "docs" / "results" / task).glob("*.json")):
        d = json.loads(p.read_text())
        runs[d["config"]["objective"]].append(d)
    return runs


def evals(run: dict) -> list[tuple[int, dict]]:
    return [(r["step"], r["eval"]) for r in run["records"] if r["eval"]]


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="main")
    args = ap.parse_args()
    runs = load(args.task)
    if not runs:
        print(f"no results under docs/results/{args.task}/")
        return
    print(f"| objective | seeds | greedy start -> end | T=1 start -> end | rKL/token start -> end |")
    print("|---|---|---|---|---|")
    for obj in sorted(runs):
        rs = runs[obj]
        first = [evals(r)[0][1] for r in rs]
        last = [evals(r)[-1][1] for r in rs]
        cell = lambda key: f"{fmt([e[key] for e in first])} -> {fmt([e[key] for e in last])}"  # noqa: E731
        seeds = ",".join(str(r["config"]["seed"]) for r in rs)
        print(f"| {obj} | {seeds} | {cell('greedy_acc')} | {cell('sampled_acc')} | {cell('reverse_kl_per_token')} |")
    any_run = next(iter(runs.values()))[0]
    bins = evals(any_run)[0][1]["abs_adv_by_position"]
    print("\nmean |A| by normalised position (10 bins, step 0, student vs teacher on held-out T=1 rollouts):")
    print(" ".join(f"{v:.3f}" for v in bins))


if __name__ == "__main__":
    main()
