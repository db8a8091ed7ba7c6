"""Write the large held-out prompt set ``prompts/eval_large.jsonl`` of each toy task.

2048 distinct prompts drawn from their own seed (``--seed``, distinct from the seed 0 that drew
``train.jsonl`` and ``eval.jsonl``), none of them in either file, so that a 2-point accuracy
difference is resolvable (binomial standard error about 0.01 at accuracy 0.7). ``eval.jsonl`` is
left as it is. Each line is ``{"prompt", "answer"}`` with the task's own completion.

    .venv/bin/python scripts/make_eval_large.py            # both tasks
"""

from __future__ import annotations

import argparse
import json


from iwopd_kit import toy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=20_480)
    args = ap.parse_args()
    for task in toy.TASKS.values():
        taken = set(toy.load_prompts(task.train_prompts)) | set(toy.load_prompts(task.eval_prompts))
        prompts = toy.make_heldout_prompts(args.n, args.seed, exclude=taken)
        path = task.data_dir / "prompts" / "eval_large.jsonl"
        path.write_text("".join(json.dumps({"prompt": p, "answer": task.solve(p)}) + "\n" for p in prompts))
        print(f"{path}: {len(prompts)} prompts (seed {args.seed}, disjoint from train and eval)")


if __name__ == "__main__":
    main()
