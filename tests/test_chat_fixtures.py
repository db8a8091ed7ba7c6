"""The chat fixtures (data/fixtures/chat/, real rollouts of the Qwen3-tokenizer chat student): the
healthy one checks clean, every broken one is caught by its class at the rows and positions the
breakage put it, with a message that says what to change, and no other error elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import iwopd_kit as K
from iwopd_kit.engines.chat import CHAT_FIXTURES_DIR, load_chat_tokenizer

FILES = sorted(CHAT_FIXTURES_DIR.glob("*.jsonl"))
BROKEN = [f for f in FILES if f.stem != "healthy"]

# What each message must tell the user to change (one phrase per fixture).
FIX = {
    "tokenizer_gpt2": "use a teacher with the student's tokenizer",
    "tokenizer_tekken": "use a teacher with the student's tokenizer",
    "chat_template": "only the teacher's prompt has a system turn",
    "think_stripped": "render both prompts with the same enable_thinking",
    "bos_twice": "add_special_tokens=False",
    "eos_masked": "build the mask from the completion lengths",
    "eos_appended": "drop it from the completion or mask it out",
    "special_dropped": "send the token ids apply_chat_template returns",
}


def _check(path: Path):
    batch = K.read_jsonl(path)
    info = batch.meta[0]["fixture"]
    assert all(m["fixture"] == info for m in batch.meta)
    report = K.check_alignment(batch, student_tokenizer=load_chat_tokenizer(info["student_tokenizer"]),
                               teacher_tokenizer=load_chat_tokenizer(info["teacher_tokenizer"]))
    return batch, info, report


def test_there_is_one_fixture_per_failure_and_they_are_small():
    assert {f.stem for f in BROKEN} == set(FIX)
    assert sum(f.stat().st_size for f in CHAT_FIXTURES_DIR.rglob("*") if f.is_file()) < 1024 * 1024
    kinds = {json.loads(f.open().readline())["meta"]["fixture"]["kind"] for f in BROKEN}
    assert kinds == {"tokenizer_mismatch", "bos_eos"}


def test_healthy_chat_rollouts_give_no_error():
    batch, info, report = _check(CHAT_FIXTURES_DIR / "healthy.jsonl")
    assert info["kind"] is None and info["expect"] == []
    assert not [f for f in report.findings if f.severity == "error"], report
    assert report.by_kind("tokenizer_mismatch") == [] and report.by_kind("bos_eos") == []
    assert "bos_eos" not in report.unchecked and "tokenizer_mismatch" not in report.unchecked
    assert len(set(batch.prompt_lengths)) >= 3


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_chat_fixture_is_caught_where_it_was_broken(path):
    batch, info, report = _check(path)
    kind = info["kind"]
    hits = report.by_kind(kind)
    assert hits, report
    expect = {(r, p) for r, p in info["expect"]}
    got = {(f.row, f.position) for f in hits}
    if info.get("batch_level"):      # a tokenizer pair: batch-level findings plus the per-row positions
        assert any(f.row is None for f in hits)
        got = {rp for rp in got if rp[0] is not None}
    assert got == expect, (sorted(got, key=str), sorted(expect, key=str))
    assert any(f.severity == "error" for f in hits)
    rows = {r for r, _ in expect}
    assert any(FIX[path.stem] in f.message for f in hits), [f.message for f in hits]
    stray = [f for f in report.findings if f.kind != kind and f.severity == "error" and f.row not in rows]
    assert stray == [], stray
