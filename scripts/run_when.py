"""When does IW-OPD help? The early-step protocol and the compression sweep (docs/when_iwopd_helps.md).

Each run is the study's on-policy loop (vLLM rollouts, weight sync every step) evaluated every 5
steps up to step 60 and every 25 after, on the task's 2048-prompt ``eval_large.jsonl``. One JSON
per run, ``docs/results/when/<task>/<student>/<objective>_seed<k>.json`` (``<student>`` is ``200k``
for the task's bundled student, else a folder of ``data/study_students/<task>/``), skipped when it
exists; ``--tis`` / ``--rollout-dtype`` runs go to ``docs/results/when/<task>/tis/<dtype>_<on|off>/``.

    source scripts/env.sh
    .venv/bin/python scripts/run_when.py --task main --student 200k --seeds 0 1 2 3 4
    .venv/bin/python scripts/run_when.py --task main --student 50k --seeds 0 1 2 --list
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from iwopd_kit import toy  # noqa: E402
from iwopd_kit.engines.rollout import VLLMEngine  # noqa: E402
from iwopd_kit.engines.scoring import load_model  # noqa: E402
from iwopd_kit.apps.train import LoopConfig, eval_steps, save_records, train  # noqa: E402

STUDENTS = ROOT / "data" / "study_students"
OUT = ROOT / "docs" / "results" / "when"


def student_dir(task: str, student: str) -> Path:
    """The task's bundled student for ``200k``, else ``data/study_students/<task>/<student>``."""
    path = toy.get_task(task).student_dir if student == "200k" else STUDENTS / task / student
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no student {student!r} for task {task!r}; "
                                f"train it with scripts/train_tiny_models.py --task {task} --student-size {student}")
    return path


def out_dir(args) -> Path:
    if args.tis or args.rollout_dtype != "float32" or args.tis_pair:
        return OUT / args.task / "tis" / f"{args.rollout_dtype}_{'on' if args.tis else 'off'}"
    return OUT / args.task / args.student


def n_params(path: Path) -> int:
    return sum(p.numel() for p in load_model(path).parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="main", choices=sorted(toy.TASKS))
    ap.add_argument("--student", default="200k", help="200k (the bundled student) or a data/study_students/<task>/ folder")
    ap.add_argument("--objectives", nargs="+", default=["opd", "iw_opd"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--early-every", type=int, default=5)
    ap.add_argument("--early-until", type=int, default=60)
    ap.add_argument("--eval-set", default="eval_large")
    ap.add_argument("--eval-prompts", type=int, default=2048)
    ap.add_argument("--eval-engine", default="transformers", choices=["transformers", "rollout"],
                    help="evaluate with HF generate on the trainer's student (faster here) or the rollout engine")
    ap.add_argument("--eval-sampled-prompts", type=int, default=256,
                    help="T=1 accuracy, reverse KL and |A| on the first this many eval prompts (greedy on all)")
    ap.add_argument("--rollout-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tis", type=float, nargs="?", const=5.0, default=None,
                    help="token-level truncated IS of the policy-gradient term (threshold, default 5.0)")
    ap.add_argument("--tis-pair", action="store_true", help="write a no-TIS run into the tis/ folders")
    ap.add_argument("--out", type=Path, default=None, help="folder for the run files (default: see above)")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"],
                    help="rollout engine: HF generate on the trainer's student (exact, cheapest here) or vLLM with sync")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is several times faster than 2 on a machine shared with other jobs)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = (args.out.resolve() if args.out else out_dir(args))
    runs = [(obj, s) for s in args.seeds for obj in args.objectives]
    if args.list:
        for obj, s in runs:
            p = folder / f"{obj}_seed{s}.json"
            print(("done   " if p.exists() else "missing"), p)
        return
    sdir = student_dir(args.task, args.student)
    task = toy.get_task(args.task)
    sizes = {"student_params": n_params(sdir), "teacher_params": n_params(task.teacher_dir)}
    sizes["param_ratio"] = round(sizes["teacher_params"] / sizes["student_params"], 3)
    engine = None
    for obj, seed in runs:
        path = folder / f"{obj}_seed{seed}.json"
        if path.exists():
            continue
        if args.engine == "vllm":
            engine = engine or VLLMEngine(sdir, dtype=args.rollout_dtype)
        cfg = LoopConfig(objective=obj, run_seed=seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         eval_every=args.eval_every, early_eval_every=args.early_every,
                         early_eval_until=args.early_until, eval_set=args.eval_set, eval_prompts=args.eval_prompts,
                         eval_sampled_prompts=args.eval_sampled_prompts, eval_engine=args.eval_engine,
                         task=args.task, engine=args.engine, rollout_dtype=args.rollout_dtype, tis_threshold=args.tis)
        t0 = time.time()
        def progress(rec) -> None:
            if rec.eval:
                print(f"  {obj} seed {seed} step {rec.step}: greedy {rec.eval['greedy_acc']:.3f} "
                      f"({time.time() - t0:.0f} s)", flush=True)

        records = train(cfg, student_dir=sdir, engine=engine, on_step=progress)
        extra = {"wall_s": round(time.time() - t0, 1), "command": " ".join(sys.argv), "task": args.task,
                 "student": args.student, "student_dir": str(sdir.relative_to(ROOT)), **sizes,
                 "eval_steps": eval_steps(cfg), "threads": args.threads,
                 "versions": {"torch": torch.__version__, "python": platform.python_version(),
                              "vllm": __import__("vllm").__version__}}
        save_records(records, cfg, path, extra)
        last = records[-1].eval
        print(f"{path}: greedy {records[0].eval['greedy_acc']:.3f} -> {last['greedy_acc']:.3f} "
              f"rKL/token {last['reverse_kl_per_token']:.4f} ({extra['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
