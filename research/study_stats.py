"""Statistics of the early-step and compression study: paired differences over the same held-out
prompts, "steps to reach a fraction of OPD's final gain", and bootstrap intervals over seeds.

Pure Python over the run dicts that :mod:`research.study` loads (each evaluation carries
``greedy_acc`` and, from the early-step protocol on, ``greedy_correct``: the per-prompt greedy
exact match packed as hex by :func:`pack_bits`).
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from iwopd_kit.apps.train import pack_bits, unpack_bits
from research.study import RESULTS_DIR, load_runs, mean_curve, run_seed

Run = dict[str, Any]
#: Where scripts/run_when.py writes: ``<task>/<student>/<objective>_seed<k>.json``.
WHEN_DIR: Path = RESULTS_DIR / "when"
#: The student sizes of the compression sweep (``200k`` is the task's bundled student).
SIZES: tuple[str, ...] = ("50k", "200k", "800k")


def when_runs(task: str, student: str = "200k", when_dir: str | Path = WHEN_DIR) -> dict[str, list[Run]]:
    """``{objective: [run, ...]}`` of one task and student size ({} when none has finished)."""
    folder = Path(when_dir) / task
    return load_runs(student, folder) if (folder / student).is_dir() else {}


def compression_points(task: str, step: int | None = None, when_dir: str | Path = WHEN_DIR,
                       sizes: Sequence[str] = SIZES) -> list[tuple[float, float, float, float]]:
    """``[(teacher/student ratio, mean IW - OPD, CI low, CI high), ...]`` at ``step`` (None: the end)
    for each size with both objectives, paired over seeds and prompts (see :func:`speed_summary`)."""
    out = []
    for size in sizes:
        runs = when_runs(task, size, when_dir)
        if not {"opd", "iw_opd"} <= set(runs):
            continue
        at = runs["opd"][0]["records"][-1]["step"] if step is None else step
        d = difference_at(runs["opd"], runs["iw_opd"], at)
        out.append((runs["opd"][0]["param_ratio"], d["mean"], *d["ci"]))
    return out


def eval_at(run: Run, step: int) -> dict[str, Any]:
    """The evaluation dict of ``run`` at ``step``; a clear error naming the seed when there is none."""
    for r in run["records"]:
        if r["step"] == step and r["eval"]:
            return r["eval"]
    raise ValueError(f"seed {run_seed(run)}: no evaluation at step {step}")


def correct_at(run: Run, step: int) -> list[bool]:
    """Per-prompt greedy exact match of ``run`` at ``step``."""
    ev = eval_at(run, step)
    if "greedy_correct" not in ev:
        raise ValueError(f"seed {run_seed(run)}, step {step}: no per-prompt 'greedy_correct' "
                         "(runs from before the early-step protocol)")
    return unpack_bits(ev["greedy_correct"], run["config"]["eval_prompts"])


def paired_difference(a: Run, b: Run, step: int) -> tuple[float, float]:
    """Mean and standard error of (b - a) in greedy exact match at ``step``, paired over the same prompts."""
    ca, cb = correct_at(a, step), correct_at(b, step)
    if len(ca) != len(cb):
        raise ValueError(f"the runs were evaluated on {len(ca)} and {len(cb)} prompts; expected the same set")
    d = [int(y) - int(x) for x, y in zip(ca, cb)]
    return statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` prompts."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def gain_target(opd_runs: list[Run], fraction: float = 0.9, metric: str = "greedy_acc") -> tuple[float, float, float]:
    """(start, final, target): OPD's mean start and final ``metric`` and start + fraction * (final - start)."""
    _, m, _ = mean_curve(opd_runs, metric)
    return m[0], m[-1], m[0] + fraction * (m[-1] - m[0])


def first_reach(steps: Sequence[int], values: Sequence[float], target: float) -> int | None:
    """First step whose value is >= target (None when never)."""
    return next((s for s, v in zip(steps, values) if v >= target), None)


def steps_to_target(runs: list[Run], target: float, metric: str = "greedy_acc") -> list[int | None]:
    """Per run, the first evaluation step reaching ``target``."""
    out = []
    for run in runs:
        pts = [(r["step"], r["eval"][metric]) for r in run["records"] if r["eval"]]
        out.append(first_reach([s for s, _ in pts], [v for _, v in pts], target))
    return out


def bootstrap(stat: Callable[[list, list], float | None], a: Sequence[Any], b: Sequence[Any],
              n: int = 4000, seed: int = 0, level: float = 0.95,
              paired: bool = False) -> tuple[float | None, float, float, float]:
    """(value on the data, low, high, share of resamples where ``stat`` is None) of ``stat(a, b)``.

    Seeds are resampled with replacement within ``a`` and within ``b``, independently, or with the
    same indices in both when ``paired`` (``a[i]`` and ``b[i]`` share seed i); a resample whose
    statistic is None (e.g. the target is never reached) counts as +inf for the interval.
    """
    if paired and len(a) != len(b):
        raise ValueError(f"paired bootstrap needs as many runs in both groups; got {len(a)} and {len(b)}")
    rng = random.Random(seed)
    vals, none = [], 0
    for _ in range(n):
        ia = [rng.randrange(len(a)) for _ in a]
        ib = ia if paired else [rng.randrange(len(b)) for _ in b]
        v = stat([a[i] for i in ia], [b[i] for i in ib])
        if v is None:
            none += 1
            v = math.inf
        vals.append(v)
    vals.sort()
    lo = vals[int((1 - level) / 2 * n)]
    hi = vals[min(n - 1, int((1 + level) / 2 * n))]
    return stat(a, b), lo, hi, none / n


def _by_seed(a: list[Run], b: list[Run]) -> tuple[list[Run], list[Run]]:
    sa = {run_seed(r): r for r in a}
    sb = {run_seed(r): r for r in b}
    common = sorted(set(sa) & set(sb))
    return [sa[k] for k in common], [sb[k] for k in common]


def speed_summary(opd: list[Run], iw: list[Run], fraction: float = 0.9, at: Sequence[int] = (5, 10, 20),
                  n_boot: int = 4000) -> dict[str, Any]:
    """OPD vs IW-OPD on one task and student: the gain target, steps to reach it (per seed and of the
    mean curve, with bootstrap intervals over seeds), and the paired accuracy difference IW - OPD at
    the steps ``at`` and at the end (mean over seeds of the per-prompt paired differences, the eval
    standard error, and a bootstrap interval over seeds)."""
    opd, iw = _by_seed(opd, iw)
    if not opd:
        raise ValueError("speed_summary: no seed run with both objectives")
    start, final, target = gain_target(opd, fraction)
    _, iw_mean, _ = mean_curve(iw, "greedy_acc")
    out: dict[str, Any] = {"seeds": [run_seed(r) for r in opd], "start": start, "opd_final": final,
                           "iw_final": iw_mean[-1], "target": target, "fraction": fraction,
                           "eval_prompts": opd[0]["config"]["eval_prompts"],
                           "steps_opd": steps_to_target(opd, target), "steps_iw": steps_to_target(iw, target)}

    def reach(group: str):
        def f(a: list[Run], b: list[Run]) -> int | None:
            steps, mean, _ = mean_curve(a if group == "opd" else b, "greedy_acc")
            return first_reach(steps, mean, gain_target(a, fraction)[2])
        return f

    def diff_reach(a: list[Run], b: list[Run]) -> float | None:
        x, y = reach("opd")(a, b), reach("iw")(a, b)
        return None if x is None or y is None else y - x

    out["curve_steps_opd"] = bootstrap(reach("opd"), opd, iw, n_boot)
    out["curve_steps_iw"] = bootstrap(reach("iw"), opd, iw, n_boot, seed=1)
    out["curve_steps_diff"] = bootstrap(diff_reach, opd, iw, n_boot, seed=2)
    last = opd[0]["records"][-1]["step"]
    out["diff"] = {step: difference_at(opd, iw, step, n_boot) for step in [*at, last]}
    return out


def difference_at(opd: list[Run], iw: list[Run], step: int, n_boot: int = 4000) -> dict[str, Any]:
    """IW - OPD greedy accuracy at ``step``: the mean over seeds of the per-prompt paired differences,
    each seed's value, the evaluation standard error, a bootstrap interval over seeds, and both means."""
    opd, iw = _by_seed(opd, iw)
    pairs = [paired_difference(a, b, step) for a, b in zip(opd, iw)]
    per_seed = [m for m, _ in pairs]
    eval_se = math.sqrt(sum(se ** 2 for _, se in pairs)) / len(pairs)
    boot = bootstrap(lambda a, _: statistics.mean(a), per_seed, per_seed, n_boot, seed=3, paired=True)
    return {"mean": statistics.mean(per_seed), "per_seed": per_seed, "eval_se": eval_se, "ci": boot[1:3],
            "opd": statistics.mean(eval_at(r, step)["greedy_acc"] for r in opd),
            "iw": statistics.mean(eval_at(r, step)["greedy_acc"] for r in iw)}


def _steps(v) -> str:
    return "never" if v is None or v == math.inf else f"{v:g}"


def _ci(b: tuple) -> str:
    value, lo, hi, never = b
    text = f"{_steps(value)} [{_steps(lo)}, {_steps(hi)}]"
    return text + (f" (never in {never:.0%})" if never else "")


def speed_markdown(rows: dict[str, dict[str, Any]], at: Sequence[int] = (5, 10, 20)) -> str:
    """One line per summary of :func:`speed_summary` (keyed by a label): steps to 90% of OPD's final
    gain and the paired IW - OPD difference in greedy accuracy at ``at`` and at the end."""
    head = ("| run | seeds | start | OPD end | IW-OPD end | target | OPD steps per seed | IW-OPD steps per seed "
            "| OPD curve steps [95% CI] | IW-OPD curve steps [95% CI] | IW - OPD steps [95% CI] | "
            + " | ".join(f"IW - OPD at {k} (eval SE) [95% CI]" for k in (*at, "end")) + " |")
    lines = [head, "|" + "---|" * (11 + len(at) + 1)]
    for label, r in rows.items():
        cells = [label, ",".join(map(str, r["seeds"])), f"{r['start']:.3f}", f"{r['opd_final']:.3f}",
                 f"{r['iw_final']:.3f}", f"{r['target']:.3f}", " ".join(_steps(v) for v in r["steps_opd"]),
                 " ".join(_steps(v) for v in r["steps_iw"]), _ci(r["curve_steps_opd"]), _ci(r["curve_steps_iw"]),
                 _ci(r["curve_steps_diff"])]
        last = max(r["diff"])
        for k in (*at, last):
            d = r["diff"][k]
            cells.append(f"{d['mean']:+.3f} ({d['eval_se']:.3f}) [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["WHEN_DIR", "SIZES", "when_runs", "compression_points", "difference_at", "pack_bits", "unpack_bits", "eval_at", "correct_at", "paired_difference", "binomial_se",
           "gain_target", "first_reach", "steps_to_target", "bootstrap", "speed_summary", "speed_markdown"]
