"""What real runs (TRL on vLLM) show the check, on small batches whose truth is known by construction:

* exact 0.0 rollout log-probs: healthy for a certain token or a nucleus of one under processed top-p,
  a padding value (TRL pads rollout log-probs with 0.0) on any other valid token, in any row;
* numerics judged on the distribution (bulk quantile, pooled mismatch metrics), naming recorded dtypes;
* the processed_logprobs finding's numbers (mean log S, its share of mean |A|, loss and weight change),
  against a case computed by hand;
* ``AlignmentReport.metrics``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.alignment import Tolerances
from iwopd_kit.alignment.mismatch import MISMATCH_KEYS, mismatch_metrics

BOS, EOS = 1, 2


class Tok:
    bos_token_id, eos_token_id, pad_token_id, unk_token_id = BOS, EOS, 0, None

    def get_vocab(self):
        return {"<pad>": 0, "<s>": 1, "</s>": 2, **{str(i): i + 3 for i in range(10)}}

    def encode(self, text, add_special_tokens=True):
        return ([BOS] if add_special_tokens else []) + [int(c) + 3 for c in text if c.isdigit()]


def _rows(student, rollout, comps=None, top_p=1.0, mode="processed_logprobs", meta=None):
    comps = comps or [[4 + (j % 5) for j in range(len(s) - 1)] + [EOS] for s in student]
    return K.Batch(prompt_ids=[[BOS, 5]] * len(student), completion_ids=comps, student_logprobs=student,
                   rollout_logprobs=rollout, sampling=K.SamplingSettings(top_p=top_p, logprobs_mode=mode),
                   scoring={"student_logprobs": 1.0}, meta=meta)


# ------------------------------------------------------------------------------- exact 0.0 log-probs
def test_nucleus_of_one_is_healthy_under_top_p():
    # the EOS and a mid-row token have p > top_p on the trainer side: alone in the nucleus, 0.0 from vLLM
    student = [[-0.3, -0.02, -0.7, -0.0025], [-0.4, -0.6, -0.2, -0.04]]
    rollout = [[-0.25, 0.0, -0.65, 0.0], [-0.35, -0.55, -0.15, 0.0]]
    report = K.check_alignment(_rows(student, rollout, top_p=0.95), student_tokenizer=Tok())
    assert report.ok and not report.by_kind("bos_eos") and not report.by_kind("offset"), report
    # the same values under top_p = 1 (or raw log-probs): 0.0 with the trainer at -0.04 is not a certain token
    raw = K.check_alignment(_rows(student, rollout, top_p=1.0), student_tokenizer=Tok())
    assert [(f.kind, f.row, f.position) for f in raw.findings if f.severity == "error"] == [("bos_eos", 1, 3)], raw


def test_zero_padding_on_any_valid_token_is_caught():
    # TRL pads each row's rollout log-probs with 0.0: a series two tokens short leaves 0.0 on real tokens
    student = [[-0.5, -1.2, -0.9, -2.1, -0.3, -1.0], [-0.7, -0.4, -1.1, -0.8, -1.6, -0.9], [-0.2, -0.9, -0.5, -1.3, -0.6, -0.01]]
    rollout = [list(r) for r in student]
    rollout[1][4:] = [0.0, 0.0]               # not the last row, and the row's last token is an EOS
    rollout[0][2] = 0.0                       # one 0.0 in the middle of a row
    batch = _rows(student, rollout, top_p=0.95)
    for tok in (Tok(), None):
        report = K.check_alignment(batch, student_tokenizer=tok)
        hits = [(f.kind, f.row, f.position, f.severity) for f in report.findings if f.severity == "error"]
        assert hits == [("offset", 0, 2, "error"), ("offset", 1, 4, "error")], report
        assert "exactly 0.0" in report.findings[0].message and "pads rollout log-probs with 0.0" in report.findings[0].message
    # a 0.0 on a final EOS the trainer calls unlikely is the BOS/EOS check's (appended by hand), reported once
    rollout = [list(r) for r in student]
    rollout[0][5] = 0.0
    report = K.check_alignment(_rows(student, rollout, top_p=0.95), student_tokenizer=Tok())
    assert [(f.kind, f.row, f.position) for f in report.findings if f.severity == "error"] == [("bos_eos", 0, 5)], report
    # row 2's EOS at -0.01 with 0.0 is a certain token even without top-p (within zero_slack)
    rollout = [list(r) for r in student]
    rollout[2][5] = 0.0
    assert K.check_alignment(_rows(student, rollout, top_p=1.0), student_tokenizer=Tok()).ok
    strict = Tolerances(zero_slack=0.001)
    assert not K.check_alignment(_rows(student, rollout, top_p=1.0), strict, student_tokenizer=Tok()).ok


# ---------------------------------------------------------------------------------------- numerics
def _noisy(seed: int, scale: float, b: int = 8, n: int = 30):
    g = torch.Generator().manual_seed(seed)
    student = -torch.rand(b, n, generator=g, dtype=torch.float64) * 3
    rollout = (student + scale * torch.randn(b, n, generator=g, dtype=torch.float64)).clamp(max=-1e-6)
    return student, rollout


def test_bf16_vs_fp32_is_named_and_its_long_tail_is_not_an_error():
    student, rollout = _noisy(0, 0.01)
    rollout[3, 7] = student[3, 7] - 0.6           # one tail token well past `rounding`, as bf16 gives rare tokens
    meta = [{"rollout_dtype": "bfloat16", "trainer_dtype": "float32"}] * 8
    report = K.check_alignment(_rows(student.tolist(), rollout.tolist(), meta=meta))
    (f,) = report.findings
    assert (f.kind, f.severity, f.row, f.position) == ("numerics", "warning", 3, 7), report
    assert "rollout bf16 vs trainer fp32" in f.message and "token_mult_prob_error" in f.message
    # without recorded dtypes the bulk (p90 above `same`) says low precision: still a warning
    plain = K.check_alignment(_rows(student.tolist(), rollout.tolist()))
    assert [(x.kind, x.severity) for x in plain.findings] == [("numerics", "warning")]
    assert "bf16 on one side?" in plain.findings[0].message


def test_a_mismatch_beyond_the_healthy_range_is_an_error():
    student, rollout = _noisy(1, 0.2)             # mean exp|Δ| ~1.17 > 1.05: not rounding
    meta = [{"rollout_dtype": "bfloat16", "trainer_dtype": "float32"}] * 8
    report = K.check_alignment(_rows(student.tolist(), rollout.tolist(), meta=meta))
    (f,) = report.by_kind("numerics")
    assert f.severity == "error" and "token_mult_prob_error" in f.message and "> 1.05" in f.message, f.message
    assert report.metrics["mismatch/token_mult_prob_error"] > 1.05


def test_an_outlier_among_float32_exact_tokens_is_an_error_and_recorded_dtypes_overrule():
    student, _ = _noisy(2, 0.0)
    rollout = student.clone()
    rollout[5, 9] -= 0.5
    report = K.check_alignment(_rows(student.tolist(), rollout.tolist()))
    assert [(f.kind, f.row, f.position, f.severity) for f in report.findings] == [("numerics", 5, 9, "error")]
    assert "bulk agrees to float32" in report.findings[0].message
    both = [{"rollout_dtype": "bfloat16", "trainer_dtype": "bfloat16"}] * 8
    f = K.check_alignment(_rows(student.tolist(), rollout.tolist(), meta=both)).findings[0]
    assert f.severity == "warning" and "both bf16" in f.message


# --------------------------------------------------------------------------------- processed top-p
def test_processed_finding_numbers_match_a_hand_computed_case():
    # one row, two tokens; the student (full distribution) gives p = 1/4 to both; kept masses S = 0.9, 0.8
    # (top_p = 0.8), so vLLM's processed log-probs are log(p / S); the teacher sits at student + (0.2, -0.3)
    ln4 = math.log(4)
    S = (0.9, 0.8)
    student = [-ln4, -ln4]
    rollout = [-ln4 - math.log(S[0]), -ln4 - math.log(S[1])]
    teacher = [-ln4 + 0.2, -ln4 - 0.3]
    batch = K.Batch(prompt_ids=[[BOS, 5]], completion_ids=[[4, 5]], student_logprobs=[student],
                    rollout_logprobs=[rollout], teacher_logprobs=[teacher],
                    sampling=K.SamplingSettings(top_p=0.8, logprobs_mode="processed_logprobs"),
                    scoring={"student_logprobs": 1.0}, meta=[{"iw_opd_gamma": 0.5}])
    (f,) = K.check_alignment(batch).findings
    assert (f.kind, f.severity) == ("processed_logprobs", "warning")
    # by hand: log S = (ln 0.9, ln 0.8); A = δ + log S with δ = (0.2, -0.3); A_full = δ
    log_s = [math.log(x) for x in S]
    mean_log_s = sum(log_s) / 2                                                   # -0.164252
    A = [0.2 + log_s[0], -0.3 + log_s[1]]                                          # (0.094639, -0.523144)
    share = abs(mean_log_s) / ((abs(A[0]) + abs(A[1])) / 2)                        # 53.2 %
    w = [1.5, 1 + 0.5 * (1 - abs(A[0]) / (abs(A[0]) + abs(A[1])))]                  # prefix weights, gamma 0.5
    w_full = [1.5, 1 + 0.5 * (1 - 0.2 / 0.5)]                                      # (1.5, 1.3)
    loss = -(w[0] * A[0] + w[1] * A[1]) * -ln4 / 2                                  # -0.417751
    loss_full = -(w_full[0] * 0.2 + w_full[1] * -0.3) * -ln4 / 2                    # -0.062383
    num = lambda pat: float(re.search(pat, f.message).group(1))  # noqa: E731
    assert num(r"mean log S = (-?[0-9.]+)") == pytest.approx(mean_log_s, abs=1e-4)
    assert num(r"mean kept mass ([0-9.]+)") == pytest.approx(0.85, abs=1e-4)
    assert num(r"shifted down by \|log S\|, ([0-9.]+)% of mean \|A\|") == pytest.approx(100 * share, abs=0.05)
    assert num(r"IW-OPD loss would be (-?[0-9.]+) instead") == pytest.approx(loss_full, abs=1e-4)
    assert num(r"instead of (-?[0-9.]+) \(") == pytest.approx(loss, abs=1e-4)
    assert num(r"mean prefix weight ([0-9.]+) instead") == pytest.approx(sum(w_full) / 2, abs=1e-4)
    assert num(r"mean prefix weight [0-9.]+ instead of ([0-9.]+)") == pytest.approx(sum(w) / 2, abs=1e-4)
    assert "upward" not in f.message


# --------------------------------------------------------------------------------------- the metrics
def test_report_metrics_pool_every_valid_token():
    student, rollout = _noisy(3, 0.01, b=4, n=6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    batch = _rows(student.tolist(), rollout.tolist(), mode="raw_logprobs").replace(mask=mask.tolist())
    report = K.check_alignment(batch)
    assert tuple(report.metrics) == MISMATCH_KEYS
    want = mismatch_metrics(student, rollout, mask)
    assert report.metrics == pytest.approx(want, rel=1e-12)
    assert "mismatch" not in report.unchecked
    alone = K.check_alignment(batch.replace(student_logprobs=None))
    assert alone.metrics == {} and "mismatch" in alone.unchecked
    assert "needs rollout_logprobs and student_logprobs" in alone.unchecked_reasons["mismatch"]
