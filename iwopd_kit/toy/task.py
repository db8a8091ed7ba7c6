"""The toy task: chained addition with running sums.

A prompt lists ``n`` single digits (``3 <= n <= 6``) joined by ``+`` and ends in
``=``; the completion spells out every partial sum, one step per comma::

    prompt      7+5+9+2=
    completion  7+5=12,12+9=21,21+2=23

after which the model emits EOS.

Why this task has the shape that on-policy distillation is about: each step
copies the previous running sum and adds the next digit, so the completion is a
chain of dependent decisions. A student that writes one wrong running sum early
(``7+5=13``) must carry that wrong number into every later step
(``13+9=22,22+2=24``) — a single early mistake derails every token after it,
and the final answer is wrong even though each later step is locally correct
arithmetic. Teacher-forced training never shows the student such self-made
prefixes; sampling from the student (on-policy) does, which is exactly the
distribution shift that on-policy distillation corrects.

Everything here is pure Python (stdlib only) so that any part of the toolkit,
the training scripts and the tests can use it without heavy imports.

Paths: the shipped prompts, tiny models and fixtures are package data, found through
:mod:`importlib.resources` as ``iwopd_kit/data`` (:data:`DATA_DIR`). In the repository,
``iwopd_kit/data`` is a symbolic link to the checkout's ``data/`` (so the editable install and
every ``data/...`` path relative to the repository keep working); a wheel or sdist carries the
files themselves. The checkout's own root, for the scripts and tests that write into it, is
``research.REPO_ROOT`` (checkout-only, not in the wheel).
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: Repository root, for the scripts and tests that write into the checkout (valid in an editable
#: install or when run from the checkout, where this file sits in ``<repo>/iwopd_kit/``).
#: The bundled data (package data ``iwopd_kit/data``; in the checkout the link resolves to ``data/``).
DATA_DIR: Path = Path(str(resources.files("iwopd_kit").joinpath("data"))).resolve()
TEACHER_DIR: Path = DATA_DIR / "models" / "teacher"
STUDENT_DIR: Path = DATA_DIR / "models" / "student"
TRAIN_PROMPTS: Path = DATA_DIR / "prompts" / "train.jsonl"
EVAL_PROMPTS: Path = DATA_DIR / "prompts" / "eval.jsonl"
#: Real rollouts of the tiny student, healthy and broken (one file per failure class; see its README).
FIXTURES_DIR: Path = DATA_DIR / "fixtures"

#: Token vocabulary: one token per character plus three special tokens.
VOCAB: list[str] = ["<pad>", "<s>", "</s>", *"0123456789", "+", "=", ","]
PAD_ID: int = 0
BOS_ID: int = 1
EOS_ID: int = 2
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = VOCAB[PAD_ID], VOCAB[BOS_ID], VOCAB[EOS_ID]

MIN_TERMS: int = 3
MAX_TERMS: int = 6

_PROMPT_RE = re.compile(r"^\d(?:\+\d){%d,%d}=$" % (MIN_TERMS - 1, MAX_TERMS - 1))


def make_prompt(rng: random.Random) -> str:
    """Draw one prompt ``a1+...+an=`` with ``n`` in 3..6 and digits 0-9."""
    n = rng.randint(MIN_TERMS, MAX_TERMS)
    digits = [str(rng.randint(0, 9)) for _ in range(n)]
    return "+".join(digits) + "="


def parse_prompt(prompt: str) -> list[int]:
    """Return the digits of a prompt; raise ``ValueError`` if it is malformed."""
    if not _PROMPT_RE.match(prompt):
        raise ValueError(f"not a toy prompt: {prompt!r}")
    return [int(d) for d in prompt[:-1].split("+")]


def solve(prompt: str) -> str:
    """Return the correct completion text (without EOS) for ``prompt``.

    >>> solve("7+5+9+2=")
    '7+5=12,12+9=21,21+2=23'
    """
    digits = parse_prompt(prompt)
    steps = []
    total = digits[0]
    for d in digits[1:]:
        steps.append(f"{total}+{d}={total + d}")
        total += d
    return ",".join(steps)


def strip_eos(text: str) -> str:
    """Remove a trailing EOS marker (and anything after it) from ``text``."""
    return text.split(EOS_TOKEN, 1)[0]


def final_answer(text: str) -> int | None:
    """Return the last running sum of a completion, or ``None`` if there is none.

    >>> final_answer("7+5=12,12+9=21,21+2=23")
    23
    >>> final_answer("7+5=12,12+9=") is None
    True
    """
    last_step = strip_eos(text).strip().split(",")[-1]
    match = re.fullmatch(r"\d+\+\d+=(\d+)", last_step)
    return int(match.group(1)) if match else None


def is_correct(prompt: str, completion_text: str) -> bool:
    """Exact match of the full completion (EOS stripped) against ``solve``."""
    return strip_eos(completion_text).strip() == solve(prompt)


def make_prompts(n: int, seed: int) -> list[str]:
    """Draw ``n`` prompts deterministically from ``seed`` (duplicates allowed)."""
    rng = random.Random(seed)
    return [make_prompt(rng) for _ in range(n)]


def make_heldout_prompts(n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct prompts drawn from ``seed``, none of them in ``exclude`` (e.g. train + eval)."""
    rng = random.Random(seed)
    seen, out = set(exclude), []
    while len(out) < n:
        prompt = make_prompt(rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
    return out


def load_prompts(path: str | Path) -> list[str]:
    """Read the ``prompt`` field of each JSONL line ``{"prompt", "answer"}``."""
    prompts = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    return prompts


# --------------------------------------------------------------------------- #
# The task variant: the answer first, then the terms
# --------------------------------------------------------------------------- #
def solve_answer_first(prompt: str) -> str:
    """Completion of the ``answer_first`` variant: the final sum first, then the terms restated.

    >>> solve_answer_first("7+5+9+2=")
    '23=7+5+9+2'

    The hard decision (the whole sum, in one go) comes in the first one or two tokens; the rest
    copies the prompt. So teacher-student disagreement concentrates at the start of the response
    and falls with position: the opposite of the main task, where each running sum depends on the
    previous one and mistakes pile up toward the end. The study runs on both to show when the
    paper's position bias holds.
    """
    digits = parse_prompt(prompt)
    return f"{sum(digits)}=" + prompt[:-1]


@dataclass(frozen=True)
class Task:
    """One toy task: how to solve a prompt and where its prompts and models live."""

    name: str
    solve: Callable[[str], str]
    data_dir: Path

    @property
    def teacher_dir(self) -> Path:
        return self.data_dir / "models" / "teacher"

    @property
    def student_dir(self) -> Path:
        return self.data_dir / "models" / "student"

    @property
    def train_prompts(self) -> Path:
        return self.data_dir / "prompts" / "train.jsonl"

    @property
    def eval_prompts(self) -> Path:
        return self.data_dir / "prompts" / "eval.jsonl"

    def prompt_file(self, name: str) -> Path:
        """``prompts/<name>.jsonl`` of this task (``train``, ``eval``, ``eval_large``); a clear error if absent."""
        path = self.data_dir / "prompts" / f"{name}.jsonl"
        if not path.exists():
            known = sorted(p.stem for p in (self.data_dir / "prompts").glob("*.jsonl"))
            raise FileNotFoundError(f"task {self.name!r} has no prompt set {name!r} ({path}); known: {known}")
        return path

    def is_correct(self, prompt: str, completion_text: str) -> bool:
        """Exact match of the full completion (EOS stripped)."""
        return strip_eos(completion_text).strip() == self.solve(prompt)


#: The tasks the study runs on: ``main`` (running sums; data in ``data/``) and ``answer_first``
#: (data in ``data/tasks/answer_first/``). Same prompts grammar, same 16-token vocabulary.
TASKS: dict[str, Task] = {
    "main": Task("main", solve, DATA_DIR),
    "answer_first": Task("answer_first", solve_answer_first, DATA_DIR / "tasks" / "answer_first"),
}


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name``; a clear error lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None
