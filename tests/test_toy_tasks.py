"""The toy tasks: the main running-sum task and the answer_first variant, their data and models."""

from __future__ import annotations

import json

import pytest

from iwopd_kit import toy
from iwopd_kit.engines.scoring import load_tokenizer
from iwopd_kit.apps.train import LoopConfig


def test_answer_first_solution():
    task = toy.get_task("answer_first")
    assert task.solve("7+5+9+2=") == "23=7+5+9+2"
    assert task.solve("0+0+0=") == "0=0+0+0"
    assert task.is_correct("7+5+9+2=", "23=7+5+9+2</s>")
    assert not task.is_correct("7+5+9+2=", "24=7+5+9+2")
    assert not task.is_correct("7+5+9+2=", toy.solve("7+5+9+2="))   # the main task's answer is wrong here
    with pytest.raises(ValueError, match="not a toy prompt"):
        task.solve("7+5")


def test_main_task_is_the_default_data():
    main = toy.get_task("main")
    assert (main.teacher_dir, main.student_dir) == (toy.TEACHER_DIR, toy.STUDENT_DIR)
    assert (main.train_prompts, main.eval_prompts) == (toy.TRAIN_PROMPTS, toy.EVAL_PROMPTS)
    assert main.solve is toy.solve


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; expected one of \['answer_first', 'main'\]"):
        toy.get_task("nope")
    with pytest.raises(ValueError, match="unknown task"):
        LoopConfig(task="nope")


@pytest.mark.parametrize("name", sorted(toy.TASKS))
def test_shipped_data_matches_the_task(name):
    task = toy.get_task(name)
    train = [json.loads(line) for line in task.train_prompts.read_text().splitlines()]
    evals = [json.loads(line) for line in task.eval_prompts.read_text().splitlines()]
    assert len(evals) == 512 and len(train) == 20000
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    for row in train[:200] + evals:
        assert row["answer"] == task.solve(row["prompt"])
    for d in (task.teacher_dir, task.student_dir):
        assert (d / "config.json").exists() and (d / "model.safetensors").exists()
    tok = load_tokenizer(task.student_dir)
    text = evals[0]["prompt"] + evals[0]["answer"]
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_heldout_prompts_are_distinct_seeded_and_avoid_the_excluded():
    """The prompt picker the training script splits train/eval with (``split_prompts``)."""
    drawn = toy.make_heldout_prompts(300, seed=4)
    assert len(set(drawn)) == 300 and all(toy.parse_prompt(p) for p in drawn)
    assert toy.make_heldout_prompts(300, seed=4) == drawn
    assert toy.make_heldout_prompts(100, seed=4) == drawn[:100]       # a longer draw extends a shorter one
    assert toy.make_heldout_prompts(300, seed=5) != drawn
    exclude = set(drawn[:50])
    fresh = toy.make_heldout_prompts(200, seed=4, exclude=exclude)
    assert not exclude & set(fresh) and len(set(fresh)) == 200
    assert fresh == drawn[50:250]       # the same stream, the excluded ones skipped
