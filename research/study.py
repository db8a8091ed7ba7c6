"""The position-bias study's results: load the committed run files and summarise them.

Each run of ``scripts/run_study.py`` is one JSON file ``docs/results/<task>/<objective>_seed<k>.json``
with ``config`` (a :class:`~iwopd_kit.apps.train.LoopConfig` as a dict: its ``run_seed``, or ``seed`` in the
files written before the config's rollout settings moved into ``sampling``; read it with :func:`run_seed`), ``records``
(one per step: loss, TRL metrics, drift; ``eval`` filled every ``eval_every`` steps and at the end)
and the command, versions and wall time. Everything here is pure Python over those dicts.

Evaluation metrics (keys of a record's ``eval``): ``greedy_acc``, ``sampled_acc`` (held-out exact
match, greedy and T=1), ``reverse_kl_per_token`` (teacher-student, on held-out T=1 rollouts) and
``abs_adv_by_position`` (mean |A| in 10 bins of normalised position j / L_b).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from research import REPO_ROOT

RESULTS_DIR: Path = REPO_ROOT / "docs" / "results"
#: The paper's four curves, then the extra objectives, in the order tables list them.
ORDER: tuple[str, ...] = ("opd", "iw_opd", "prefix30", "suffix30", "jsd", "iw_opd_signed")
LABELS: dict[str, str] = {"opd": "OPD", "iw_opd": "IW-OPD", "prefix30": "Prefix-30", "suffix30": "Suffix-30",
                          "jsd": "JSD (TRL default)", "iw_opd_signed": "IW-OPD signed"}
Run = dict[str, Any]


def load_runs(task: str = "main", results_dir: str | Path = RESULTS_DIR) -> dict[str, list[Run]]:
    """``{objective: [run, ...]}`` (runs sorted by seed) from ``results_dir/task/*.json``."""
    folder = Path(results_dir) / task
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no results for task {task!r}; run scripts/run_study.py --task {task}")
    runs: dict[str, list[Run]] = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if "config" not in run or "records" not in run:
            raise ValueError(f"{path}: not a study run file (expected 'config' and 'records')")
        runs[run["config"]["objective"]].append(run)
    for objective in runs:
        runs[objective].sort(key=run_seed)
    return {k: runs[k] for k in sorted(runs, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))}


def run_seed(run: Run) -> int:
    """The seed of a run: ``config["run_seed"]``, or ``config["seed"]`` in the older files (the same loop seed:
    torch's seed, the prompt order and the base of each rollout request's seed)."""
    cfg = run["config"]
    for key in ("run_seed", "seed"):
        if key in cfg:
            return int(cfg[key])
    raise ValueError(f"a run's config has neither 'run_seed' nor 'seed' (keys: {sorted(cfg)})")


def evals(run: Run) -> list[tuple[int, dict[str, Any]]]:
    """``[(step, eval dict), ...]`` of one run, in step order."""
    return [(r["step"], r["eval"]) for r in run["records"] if r["eval"]]


def curve(run: Run, metric: str) -> tuple[list[int], list[float]]:
    """Steps and values of one evaluation metric over a run."""
    pts = evals(run)
    return [s for s, _ in pts], [float(e[metric]) for _, e in pts]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    if not values:
        raise ValueError("mean_sd: no values")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_curve(runs: list[Run], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and standard deviation over seeds of ``metric`` (runs must share eval steps)."""
    steps = curve(runs[0], metric)[0]
    cols = []
    for run in runs:
        s, v = curve(run, metric)
        if s != steps:
            raise ValueError(f"seed {run_seed(run)}: eval steps {s} differ from {steps}")
        cols.append(v)
    stats = [mean_sd([c[i] for c in cols]) for i in range(len(steps))]
    return steps, [m for m, _ in stats], [sd for _, sd in stats]


def final(runs: list[Run], metric: str) -> tuple[float, float]:
    """Mean and standard deviation over seeds of ``metric`` at the last evaluation."""
    return mean_sd([evals(r)[-1][1][metric] for r in runs])


def steps_to_reach(run: Run, metric: str, target: float) -> int | None:
    """First evaluation step at which ``metric >= target`` (None if never)."""
    return next((s for s, v in zip(*curve(run, metric)) if v >= target), None)


def position_profile(runs: list[Run], step: int = 0) -> list[float]:
    """Mean |A| per normalised-position bin at evaluation ``step``, averaged over the runs."""
    rows = []
    for run in runs:
        match = [e for s, e in evals(run) if s == step]
        if not match:
            raise ValueError(f"seed {run_seed(run)}: no evaluation at step {step}")
        rows.append(match[0]["abs_adv_by_position"])
    return [statistics.mean(r[i] for r in rows if not math.isnan(r[i])) for i in range(len(rows[0]))]


def summary_rows(runs: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """One row per objective: seeds, and start / end mean and sd of the three scalar metrics."""
    out = []
    for objective, rs in runs.items():
        row: dict[str, Any] = {"objective": objective, "seeds": [run_seed(r) for r in rs],
                               "steps": evals(rs[0])[-1][0]}
        for metric in ("greedy_acc", "sampled_acc", "reverse_kl_per_token"):
            row[metric] = {"start": mean_sd([evals(r)[0][1][metric] for r in rs]), "end": final(rs, metric)}
        row["wall_s"] = statistics.mean(r.get("wall_s", float("nan")) for r in rs)
        out.append(row)
    return out


def _pm(m_sd: tuple[float, float], n: int) -> str:
    m, sd = m_sd
    return f"{m:.3f}" if n == 1 else f"{m:.3f} ± {sd:.3f}"


def summary_markdown(runs: dict[str, list[Run]]) -> str:
    """The summary as a Markdown table (mean ± sd over seeds; start -> end of training)."""
    lines = ["| objective | seeds | greedy acc start -> end | T=1 acc start -> end | rKL/token start -> end |",
             "|---|---|---|---|---|"]
    for row in summary_rows(runs):
        n = len(row["seeds"])
        cells = [f"{_pm(row[m]['start'], n)} -> {_pm(row[m]['end'], n)}"
                 for m in ("greedy_acc", "sampled_acc", "reverse_kl_per_token")]
        lines.append(f"| {LABELS.get(row['objective'], row['objective'])} | {','.join(map(str, row['seeds']))} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
