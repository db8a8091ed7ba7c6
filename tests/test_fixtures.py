"""The alignment check on real, broken data: data/fixtures/ (made by scripts/make_fixtures.py from real
vLLM rollouts of the tiny student, scored by the student and the teacher, then broken one class at a
time). Each fixture's ``meta["fixture"]`` says what the script did and where (``expect``: [row, position]
pairs, or null for a batch-level defect); the check must flag that kind exactly there, and the healthy
fixtures must give no error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.alignment import KINDS
from research import REPO_ROOT

FIXTURES = REPO_ROOT / "data" / "fixtures"
FILES = sorted(FIXTURES.glob("*.jsonl"))
HEALTHY = [f for f in FILES if f.name.startswith("healthy_")]
BROKEN = [f for f in FILES if not f.name.startswith("healthy_")]


def _info(batch: K.Batch) -> dict:
    infos = [m["fixture"] for m in batch.meta]
    assert all(i == infos[0] for i in infos), "every row carries the same fixture description"
    return infos[0]


def _check(path: Path) -> tuple[dict, K.AlignmentReport]:
    batch = K.read_jsonl(path)
    info = _info(batch)
    extra = {k: K.load_tokenizer(REPO_ROOT / info[k]) for k in ("student_tokenizer", "teacher_tokenizer") if k in info}
    extra.update({k: info[k] for k in ("num_items", "reduction") if k in info})
    return info, K.check_alignment(batch, **extra)


def test_every_class_has_a_fixture_and_they_are_small():
    kinds = {json.loads(f.open().readline())["meta"]["fixture"]["kind"] for f in BROKEN}
    assert kinds == set(KINDS)
    assert {f.name for f in HEALTHY} == {"healthy_fp32_t1.jsonl", "healthy_processed_t07.jsonl", "healthy_bf16.jsonl"}
    assert sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file()) < 2 * 1024 * 1024


@pytest.mark.parametrize("path", HEALTHY, ids=lambda p: p.stem)
def test_healthy_fixture_gives_no_error(path):
    info, report = _check(path)
    assert info["kind"] is None and info["expect"] == []
    assert report.ok and not [f for f in report.findings if f.severity == "error"], report
    assert len(set(K.read_jsonl(path).prompt_lengths)) >= 3          # mixed prompt lengths: padding/offset checked
    assert "offset" not in report.unchecked and "padding" not in report.unchecked


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_fixture_is_flagged_where_it_was_broken(path):
    info, report = _check(path)
    kind, expect = info["kind"], info["expect"]
    assert path.stem == kind
    assert kind not in report.unchecked, report.unchecked_text()
    hits = report.by_kind(kind)
    assert hits, report
    if expect is None:                                                  # batch-level defect
        assert all(f.row is None and f.position is None for f in hits), report
        rows = set()
    else:
        key = lambda rp: (rp[0], -1 if rp[1] is None else rp[1])  # noqa: E731
        assert sorted(((f.row, f.position) for f in hits), key=key) == sorted(((r, p) for r, p in expect), key=key), report
        rows = {r for r, _ in expect}
    # nothing else is called an error outside the rows this fixture broke
    stray = [f for f in report.findings if f.kind != kind and f.severity == "error" and f.row not in rows]
    assert stray == [], report
