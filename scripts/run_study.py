"""The position-bias study at tiny scale: OPD, IW-OPD, Prefix-30, Suffix-30 (>= 3 seeds each) plus
JSD and signed IW-OPD (1 seed), each an on-policy loop with vLLM rollouts and weight sync.

Resumable: each run writes ``docs/results/<task>/<objective>_seed<k>.json`` when it finishes and
is skipped when that file exists. Run it in the background; it can span sessions.

    source scripts/env.sh
    .venv/bin/python scripts/run_study.py --steps 300 --seeds 0 1 2
    .venv/bin/python scripts/run_study.py --list          # what is done / missing
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from iwopd_kit import toy  # noqa: E402
from iwopd_kit.engines.rollout import VLLMEngine  # noqa: E402
from iwopd_kit.apps.train import LoopConfig, save_records, train  # noqa: E402

MAIN = ("opd", "iw_opd", "prefix30", "suffix30")
EXTRA = ("jsd", "iw_opd_signed")


def plan(seeds: list[int]) -> list[tuple[str, int]]:
    runs = [(obj, s) for s in seeds for obj in MAIN]
    runs += [(obj, seeds[0]) for obj in EXTRA]
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-prompts", type=int, default=256)
    ap.add_argument("--task", default="main", choices=sorted(toy.TASKS),
                    help="the toy task (iwopd_kit.toy.TASKS); results go to docs/results/<task>/")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    out_dir = ROOT / "docs" / "results" / args.task
    runs = plan(args.seeds)
    if args.list:
        for obj, s in runs:
            p = out_dir / f"{obj}_seed{s}.json"
            print(("done   " if p.exists() else "missing"), p.relative_to(ROOT))
        return
    engine = None   # one in-process engine for all runs; train() loads each run's start weights into it
    for obj, seed in runs:
        path = out_dir / f"{obj}_seed{seed}.json"
        if path.exists():
            continue
        engine = engine or VLLMEngine(toy.get_task(args.task).student_dir)
        cfg = LoopConfig(objective=obj, run_seed=seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         eval_every=args.eval_every, eval_prompts=args.eval_prompts, task=args.task)
        t0 = time.time()
        records = train(cfg, engine=engine)
        extra = {"wall_s": round(time.time() - t0, 1), "command": " ".join(sys.argv), "task": args.task,
                 "versions": {"torch": torch.__version__, "python": platform.python_version(),
                              "vllm": __import__("vllm").__version__}}
        save_records(records, cfg, path, extra)
        last = records[-1].eval
        print(f"{path.relative_to(ROOT)}: greedy {last.get('greedy_acc')} sampled {last.get('sampled_acc')} "
              f"rKL/token {last.get('reverse_kl_per_token'):.4f} ({extra['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
