"""score_batch: the one place a batch gets its student / teacher log-probs (models or given values)."""

import math

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.engines.scoring import load_model, score, score_batch


@pytest.fixture(scope="module")
def batch():
    return K.read_jsonl(toy.FIXTURES_DIR / "healthy_fp32_t1.jsonl").replace(student_logprobs=None, teacher_logprobs=None)


@pytest.fixture(scope="module")
def student():
    return load_model(toy.STUDENT_DIR)


def test_passes_of_rows_give_the_values_of_one_pass(batch, student):
    whole = score_batch(batch, student=student)
    calls = []
    parts = score_batch(batch, student=student, rows_per_pass=5, progress=lambda n, d: calls.append((n, d)))
    a, b = whole.series("student_logprobs", torch.float64), parts.series("student_logprobs", torch.float64)
    ok = ~a.isnan()
    assert torch.equal(ok, ~b.isnan()) and float((a - b)[ok].abs().max()) < 1e-5
    assert [n for n, _ in calls] == [5] * (batch.size // 5) + ([batch.size % 5] if batch.size % 5 else [])
    assert {d for _, d in calls} == {"scoring student"}
    assert parts.scoring["student_logprobs"] == 1.0


def test_given_logprobs_are_attached_through_the_same_path(batch, student):
    lp = score(student, batch, temperature=0.7, grad=True)
    out = score_batch(batch, student_logprobs=lp, temperature=0.7)
    got = out.series("student_logprobs")
    assert torch.allclose(got[~got.isnan()], lp.detach()[~got.isnan()]) and out.scoring["student_logprobs"] == 0.7
    assert out.student_logprobs[0][0] == pytest.approx(float(lp[0, 0].detach()), abs=1e-6) and not math.isnan(out.student_logprobs[0][0])


def test_bad_calls_say_what_to_pass(batch, student):
    with pytest.raises(ValueError, match="either student .* or student_logprobs"):
        score_batch(batch, student=student, student_logprobs=torch.zeros(batch.size, batch.width))
    with pytest.raises(ValueError, match="rows_per_pass must be >= 1"):
        score_batch(batch, student=student, rows_per_pass=0)
