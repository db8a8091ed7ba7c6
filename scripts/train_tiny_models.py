"""Build the toy data and train the two tiny Llama models that ship in ``data/``.

Run from the repository root::

    python scripts/train_tiny_models.py --seed 0
    python scripts/train_tiny_models.py --seed 0 --task answer_first   # the study's task variant
    python scripts/train_tiny_models.py --task main --student-size 50k # a student of another size

``--student-size`` (one of :data:`SIZES`) trains only a student of that size, picked in the task's
accuracy band like the bundled one, into ``data/study_students/<task>/<size>/`` (or ``--out``) with
its ``training_report.json``; the prompts and the bundled models are left as they are.

It writes (for ``--task main``; the variant writes the same files under
``data/tasks/answer_first/``)

* ``data/prompts/train.jsonl`` and ``data/prompts/eval.jsonl`` (disjoint
  prompt sets, each line ``{"prompt": ..., "answer": <full completion>}``);
* ``data/models/teacher/`` and ``data/models/student/`` (Llama config,
  float32 ``model.safetensors``, tokenizer files, generation config);
* ``data/models/training_report.json`` (seed, steps, sizes, timings,
  accuracies) and ``data/models/README.md`` rendered from it.

Both models are trained with plain cross-entropy (teacher forcing on
``<s> prompt completion </s>``, loss on completion and EOS only; Adam, linear
warm-up, then not the cosine decay it meant: see :func:`train_steps`; batch 64). The teacher
is trained until it solves the task almost perfectly. The student is a much
smaller model evaluated every few steps; the checkpoint kept is the one whose
held-out accuracy is closest to a *mediocre* target (about 55% greedy, 20%
sampled at T=1), so that distillation has something to fix.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from iwopd_kit import toy
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from research import REPO_ROOT
from research.tiny_training import TOY_MAX_POSITIONS, ModelSpec, collate, exact_match, lr_at, make_model, n_params

MAX_NEW_TOKENS = ROLLOUT_MAX_TOKENS
MAX_LEN = TOY_MAX_POSITIONS


@dataclass(frozen=True)
class Band:
    """Accuracy window the student checkpoint must land in, and its centre."""

    greedy_lo: float = 0.40
    greedy_hi: float = 0.70
    sampled_lo: float = 0.10
    sampled_hi: float = 0.30
    greedy_target: float = 0.55
    sampled_target: float = 0.20

    def contains(self, greedy: float, sampled: float) -> bool:
        """Whether both accuracies lie inside the window."""
        return (self.greedy_lo <= greedy <= self.greedy_hi
                and self.sampled_lo <= sampled <= self.sampled_hi)

    def distance(self, greedy: float, sampled: float) -> float:
        """Distance to the centre, each axis scaled by its window width."""
        dg = (greedy - self.greedy_target) / (self.greedy_hi - self.greedy_lo)
        ds = (sampled - self.sampled_target) / (self.sampled_hi - self.sampled_lo)
        return math.hypot(dg, ds)


#: The variant's completions are short and its T=1 accuracy sits close to greedy (the tail is a
#: copy), so its student is picked in a window of its own.
BANDS = {"main": Band(),
         "answer_first": Band(greedy_lo=0.30, greedy_hi=0.70, sampled_lo=0.15, sampled_hi=0.55,
                              greedy_target=0.50, sampled_target=0.35)}
TASK = toy.TASKS["main"]   # set from --task in main()

TEACHER = ModelSpec(hidden=128, layers=4, heads=4, intermediate=384)
STUDENT = ModelSpec(hidden=64, layers=3, heads=2, intermediate=256)
#: Student sizes of the compression sweep (about 50K, 200K = the bundled student, 800K parameters).
SIZES = {"50k": ModelSpec(hidden=32, layers=3, heads=1, intermediate=128),
         "200k": STUDENT,
         "800k": ModelSpec(hidden=128, layers=4, heads=4, intermediate=352)}
STUDY_STUDENTS = REPO_ROOT / "data" / "study_students"


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #
def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character over ``toy.VOCAB``; ``<s>`` is prepended."""
    vocab = {token: i for i, token in enumerate(toy.VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([toy.PAD_TOKEN, toy.BOS_TOKEN, toy.EOS_TOKEN])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{toy.BOS_TOKEN} $A", special_tokens=[(toy.BOS_TOKEN, toy.BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=toy.BOS_TOKEN,
        eos_token=toy.EOS_TOKEN,
        pad_token=toy.PAD_TOKEN,
        model_max_length=MAX_LEN,
    )


def check_tokenizer(tok: PreTrainedTokenizerFast) -> None:
    """Assert the ids are the VOCAB indices and that text round-trips."""
    assert tok("7+5=")["input_ids"] == [1, 10, 13, 8, 14]
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2]
    for prompt in toy.make_prompts(50, seed=123):
        text = prompt + TASK.solve(prompt)
        ids = tok(text)["input_ids"]
        assert ids == [toy.BOS_ID] + [toy.VOCAB.index(c) for c in text]
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids + [toy.EOS_ID]) == toy.BOS_TOKEN + text + toy.EOS_TOKEN


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
def split_prompts(n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Draw distinct prompts (:func:`iwopd_kit.toy.make_heldout_prompts`); the first ``n_eval``
    are held out for evaluation, the next ``n_train`` are for training."""
    ordered = toy.make_heldout_prompts(n_eval + n_train, seed)
    return ordered[n_eval:], ordered[:n_eval]


def write_jsonl(path: Path, prompts: list[str]) -> None:
    """Write ``{"prompt", "answer"}`` lines; ``answer`` is the full completion."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for prompt in prompts:
            handle.write(json.dumps({"prompt": prompt, "answer": TASK.solve(prompt)}) + "\n")


def encode_example(tok: PreTrainedTokenizerFast, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids of ``<s> prompt`` and of ``completion </s>`` (the loss is on the second only)."""
    prompt_ids = tok(prompt)["input_ids"]
    completion_ids = tok(TASK.solve(prompt), add_special_tokens=False)["input_ids"] + [toy.EOS_ID]
    return prompt_ids, completion_ids


def batch_stream(examples: list, batch_size: int, seed: int):
    """Yield batches forever, reshuffling the examples every epoch."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([examples[i] for i in order[start:start + batch_size]])


# --------------------------------------------------------------------------- #
# Model, training, evaluation
# --------------------------------------------------------------------------- #
def train_steps(model, batches, optimizer, first: int, last: int, base_lr: float,
                warmup: int, total: int) -> float:
    """Run CE steps ``first..last-1``; return the mean loss of those steps.

    A known quirk, kept so that this script rebuilds the shipped models: after warm-up the rate is
    ``lr_at(step, base_lr, warmup, <this call's running loss sum>)``, not the cosine over ``total`` steps
    (the loss sum used to shadow ``total``), so it mostly sits at the 10% floor. The shipped models were
    trained so; following the cosine means retraining them.
    """
    model.train()
    loss_sum = 0.0
    for step in range(first, last):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, base_lr, warmup, loss_sum)   # the quirk above (``total`` unused)
        loss = model(**next(batches)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_sum += loss.item()
    return loss_sum / max(1, last - first)


def toy_exact_match(model, tok, prompts: list[str], temperature: float, seed: int = 0) -> float:
    """Share of ``prompts`` whose generated completion solves :data:`TASK` exactly
    (:func:`research.tiny_training.exact_match`; a row that never ends is judged as it stands)."""
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    return exact_match(model, prompt_ids, lambda k, row: TASK.is_correct(prompts[k], completion_text(row)),
                       temperature, seed, eos_id=toy.EOS_ID, pad_id=toy.PAD_ID,
                       max_new_tokens=MAX_NEW_TOKENS, eos_required=False)


def completion_text(token_ids: list[int]) -> str:
    """Decode generated ids up to (not including) the first EOS."""
    if toy.EOS_ID in token_ids:
        token_ids = token_ids[:token_ids.index(toy.EOS_ID)]
    return "".join(toy.VOCAB[i] for i in token_ids if i != toy.PAD_ID)


def accuracies(model, tok, prompts: list[str], seed: int) -> dict[str, float]:
    """Greedy and T=1 exact match on ``prompts``."""
    return {"greedy": toy_exact_match(model, tok, prompts, 0.0),
            "sampled_t1": toy_exact_match(model, tok, prompts, 1.0, seed=seed)}


def train_teacher(tok, examples, eval_prompts, args) -> tuple[LlamaForCausalLM, dict]:
    """Train the teacher for ``args.teacher_steps`` CE steps."""
    torch.manual_seed(args.seed)
    model = make_model(TEACHER)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.teacher_lr, betas=(0.9, 0.98))
    batches = batch_stream(examples, args.batch_size, args.seed)
    last = 0
    for first in range(0, args.teacher_steps, 50):
        last = min(first + 50, args.teacher_steps)
        loss = train_steps(model, batches, optimizer, first, last, args.teacher_lr, args.warmup,
                           args.teacher_steps)
        print(f"teacher step {last:4d} loss {loss:.4f}", flush=True)
        if args.teacher_stop_at is not None and last % 250 == 0:
            greedy = toy_exact_match(model, tok, eval_prompts[:args.n_select], 0.0)
            print(f"teacher step {last:4d} greedy {greedy:.3f}", flush=True)
            if greedy >= args.teacher_stop_at:
                break
    acc = accuracies(model, tok, eval_prompts, args.seed)
    print(f"teacher final: {acc}", flush=True)
    return model, {"steps": last, **acc}


def train_student(tok, examples, eval_prompts, args, band: Band,
                  spec: ModelSpec = STUDENT) -> tuple[LlamaForCausalLM, dict]:
    """Train the student, evaluating every ``args.eval_every`` steps.

    Keeps the checkpoint inside ``band`` that is closest to its centre (or
    the closest overall if none is inside). Training stops once accuracy has
    clearly moved past the band.
    """
    torch.manual_seed(args.seed + 1)
    model = make_model(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.student_lr, betas=(0.9, 0.98))
    batches = batch_stream(examples, args.batch_size, args.seed + 1)
    best: tuple[float, dict, dict] | None = None
    history = []
    for first in range(0, args.student_steps, args.eval_every):
        last = min(first + args.eval_every, args.student_steps)
        loss = train_steps(model, batches, optimizer, first, last, args.student_lr, args.warmup,
                           args.student_steps)
        acc = accuracies(model, tok, eval_prompts, args.seed)
        inside = band.contains(acc["greedy"], acc["sampled_t1"])
        score = band.distance(acc["greedy"], acc["sampled_t1"]) + (0.0 if inside else 10.0)
        history.append({"step": last, "loss": round(loss, 4), **acc})
        print(f"student step {last:4d} loss {loss:.4f} greedy {acc['greedy']:.3f} "
              f"t1 {acc['sampled_t1']:.3f}{'  in band' if inside else ''}", flush=True)
        if best is None or score < best[0]:
            best = (score, copy.deepcopy(model.state_dict()), {"steps": last, **acc})
        if acc["greedy"] > band.greedy_hi + 0.1 and acc["sampled_t1"] > band.sampled_hi:
            break
    assert best is not None
    model.load_state_dict(best[1])
    return model, {**best[2], "history": history}


def save_model(model, tok, out_dir: Path) -> None:
    """Save config, float32 safetensors, tokenizer and generation config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=toy.BOS_ID, eos_token_id=toy.EOS_ID, pad_token_id=toy.PAD_ID,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    model.to(torch.float32).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def dir_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_readme(report: dict, path: Path) -> None:
    """Render ``data/models/README.md`` from the training report."""
    rows = []
    for name in ("teacher", "student"):
        info = report.get(name)
        if not info:
            continue
        spec = info["spec"]
        rows.append(
            f"| {name} | {spec['hidden']} | {spec['layers']} | {spec['heads']} "
            f"| {spec['intermediate']} | {info['params']:,} | {info['steps']} "
            f"| {info['greedy']:.1%} | {info['sampled_t1']:.1%} |"
        )
    text = f"""# Tiny toy-task models

Two float32 Llama models (head_dim 32, untied embeddings, 16-token
character vocabulary) for the toy task `{report.get('task', 'main')}` in `iwopd_kit/toy/task.py`.
Both were trained with plain cross-entropy on `prompts/train.jsonl`
(teacher forcing, loss on completion + EOS). The student checkpoint was picked,
among evaluations every 25 steps on the first 256 eval prompts, as the one
closest to {report.get('band', '55% greedy / 20% T=1')}
exact match: a deliberately mediocre starting point for distillation.

Regenerate (deterministic for a given seed and thread count):

    python scripts/train_tiny_models.py --seed {report['seed']} --task {report.get('task', 'main')}
    python scripts/eval_tiny_models.py --check-logprobs   # vLLM accuracies (main task)

Exact match on the {report['n_eval']} held-out prompts of `prompts/eval.jsonl`
(transformers `generate`; T=1 means temperature 1, top_p 1):

| model | hidden | layers | heads | intermediate | params | CE steps | greedy | T=1 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Seed {report['seed']}, batch size {report['batch_size']}, {report['n_train']} training prompts,
total training wall time {report['wall_s']:.0f} s on 2 CPU threads,
{report['size_bytes'] / 1e6:.1f} MB for both model directories.
Full numbers, including the student's evaluation history:
`training_report.json`.
"""
    path.write_text(text)


def sized_student(args: argparse.Namespace, band: Band) -> Path:
    """Train a student of ``SIZES[args.student_size]`` on the task's existing prompts, picked in ``band``."""
    start = time.time()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    tok = build_tokenizer()
    check_tokenizer(tok)
    spec = SIZES[args.student_size]
    out = args.out or STUDY_STUDENTS / TASK.name / args.student_size
    examples = [encode_example(tok, p) for p in toy.load_prompts(TASK.train_prompts)]
    eval_prompts = toy.load_prompts(TASK.eval_prompts)
    select = eval_prompts[:args.n_select]
    student, info = train_student(tok, examples, select, args, band, spec)
    history = info.pop("history")
    final = accuracies(student, tok, eval_prompts, args.seed)
    save_model(student, tok, out)
    report = {"task": TASK.name, "size": args.student_size, "spec": asdict(spec), "params": n_params(student),
              "seed": args.seed, "lr": args.student_lr, "max_steps": args.student_steps, "steps": info["steps"],
              "band": asdict(band), "in_band": band.contains(info["greedy"], info["sampled_t1"]),
              "selected_on_prompts": len(select), "selected_checkpoint": info, "eval_prompts": len(eval_prompts),
              **final, "history": history, "wall_s": round(time.time() - start, 1), "torch": torch.__version__,
              "threads": args.threads, "command": " ".join(sys.argv)}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{out}: {report['params']:,} params, step {info['steps']}, in band {report['in_band']}, "
          f"final ({len(eval_prompts)} prompts) {final}, {report['wall_s']} s", flush=True)
    return out


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=sorted(toy.TASKS), default="main",
                        help="which toy task (data goes to that task's data dir)")
    parser.add_argument("--teacher-stop-at", type=float, default=None,
                        help="stop the teacher early once greedy accuracy on the selection prompts "
                             "reaches this (checked every 250 steps)")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-eval", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--teacher-lr", type=float, default=1.5e-3)
    parser.add_argument("--student-steps", type=int, default=1000)
    parser.add_argument("--student-lr", type=float, default=5e-3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--n-select", type=int, default=256,
                        help="eval prompts used to pick the student checkpoint")
    parser.add_argument("--readme-only", action="store_true",
                        help="only re-render data/models/README.md from training_report.json")
    parser.add_argument("--only", choices=["teacher", "student"], default=None,
                        help="train just one model (the other dir is left as is)")
    parser.add_argument("--student-size", choices=sorted(SIZES), default=None,
                        help="train only a student of this size into data/study_students/<task>/<size>/")
    parser.add_argument("--out", type=Path, default=None, help="output folder for --student-size")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (1 is much faster on a machine shared with other jobs)")
    return parser.parse_args()


def main() -> None:
    global TASK
    args = parse_args()
    TASK = toy.get_task(args.task)
    band = BANDS[args.task]
    report_path = TASK.data_dir / "models" / "training_report.json"
    if args.readme_only:
        write_readme(json.loads(report_path.read_text()), report_path.with_name("README.md"))
        return
    if args.student_size:
        sized_student(args, band)
        return
    start = time.time()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)

    tok = build_tokenizer()
    check_tokenizer(tok)
    train_prompts, eval_prompts = split_prompts(args.n_train, args.n_eval, args.seed)
    assert not set(train_prompts) & set(eval_prompts)
    write_jsonl(TASK.train_prompts, train_prompts)
    write_jsonl(TASK.eval_prompts, eval_prompts)
    examples = [encode_example(tok, p) for p in train_prompts]
    assert max(len(p) + len(c) for p, c in examples) <= MAX_LEN

    report = json.loads(report_path.read_text()) if report_path.exists() and args.only else {}
    report.update({"seed": args.seed, "n_train": len(train_prompts), "n_eval": len(eval_prompts),
                   "batch_size": args.batch_size, "torch": torch.__version__, "task": args.task,
                   "band": f"{band.greedy_target:.0%} greedy / {band.sampled_target:.0%} T=1"})

    if args.only in (None, "teacher"):
        t0 = time.time()
        teacher, t_info = train_teacher(tok, examples, eval_prompts, args)
        save_model(teacher, tok, TASK.teacher_dir)
        report["teacher"] = {"spec": asdict(TEACHER), "params": n_params(teacher),
                             "lr": args.teacher_lr, "wall_s": round(time.time() - t0, 1),
                             "eval_prompts": len(eval_prompts), **t_info}
    if args.only in (None, "student"):
        t0 = time.time()
        select = eval_prompts[:args.n_select]
        student, s_info = train_student(tok, examples, select, args, band)
        history = s_info.pop("history")
        final = accuracies(student, tok, eval_prompts, args.seed)
        save_model(student, tok, TASK.student_dir)
        report["student"] = {"spec": asdict(STUDENT), "params": n_params(student),
                             "lr": args.student_lr, "wall_s": round(time.time() - t0, 1),
                             "steps": s_info["steps"], "selected_on_prompts": len(select),
                             "selected_checkpoint": s_info,
                             "eval_prompts": len(eval_prompts), **final,
                             "history": history}
        print(f"student final ({len(eval_prompts)} prompts): {final}", flush=True)

    report["size_bytes"] = sum(dir_size(d) for d in (TASK.teacher_dir, TASK.student_dir) if d.exists())
    report["wall_s"] = round(time.time() - start, 1)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    write_readme(report, report_path.with_name("README.md"))
    summary = {k: v for k, v in report.items()}
    for name in ("teacher", "student"):
        if name in summary:
            summary[name] = {k: v for k, v in summary[name].items() if k != "history"}
    print(json.dumps(summary, indent=2))
    print(f"total wall time: {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
