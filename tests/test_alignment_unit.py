"""Alignment detectors on synthetic batches whose defect is known by construction."""

from __future__ import annotations

import pytest
import torch

import iwopd_kit as K

B, L, V = 6, 12, 50


def _setup(seed=0):
    """Random logits [B, L, V], tokens sampled from softmax(z), float64."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(torch.softmax(z, -1).reshape(-1, V), 1, generator=g).reshape(B, L)
    return g, z, y


def _gather(lp, y):
    return lp.gather(-1, y[..., None]).squeeze(-1)


def _batch(y, rollout, student, teacher=None, **kw):
    return K.Batch(prompt_ids=[[1]] * y.shape[0], completion_ids=y.tolist(), rollout_logprobs=rollout.tolist(),
                   student_logprobs=student.tolist(), teacher_logprobs=None if teacher is None else teacher.tolist(), **kw)


def test_healthy_batch_is_clean():
    g, z, y = _setup()
    student = _gather(torch.log_softmax(z, -1), y)
    rollout = (student + 1e-6 * torch.randn(B, L, generator=g, dtype=torch.float64)).clamp(max=0)
    report = K.check_alignment(_batch(y, rollout, student, teacher=student - 0.1))
    assert report.ok
    assert report.findings == []
    assert report.stats["max_abs_gap"] < 1e-5


def test_offset_rows_found_exactly():
    g, z, y = _setup(1)
    # an underlying sequence two tokens longer; shifted rows read log-prob j + 2 for token j
    ext = torch.log_softmax(torch.randn(B, L + 2, V, generator=g, dtype=torch.float64) * 1.5, -1)
    ext_y = torch.randint(0, V, (B, L + 2), generator=g)
    full = _gather(ext, ext_y)
    student = full[:, :L]
    rollout = student.clone()
    shifted = [1, 4]
    for b in shifted:
        rollout[b] = full[b, 2:]
    report = K.check_alignment(_batch(ext_y[:, :L], rollout, student))
    hits = report.by_kind("offset")
    assert sorted(f.row for f in hits) == shifted
    assert all(f.position == 0 and f.severity == "error" for f in hits)
    # class A (docs/method.md#class-a): the bug pairs token j with log-prob j + d; the message must say so (d = +2)
    assert all("token j carries the log-prob of token j+2" in f.message for f in hits), [f.message for f in hits]
    # undone, the shift leaves only rounding, which the message does not print as a number (it varies by CPU)
    assert all("< 1e-05 with the shift undone" in f.message for f in hits), [f.message for f in hits]
    # the other rows are clean: no finding names them
    assert {f.row for f in report.findings} <= set(shifted)
    assert not report.ok
    # lag_scan by its definition (mean |rollout[j + k] - student[j]|): the shifted rows match at k = -2
    lags, err = K.lag_scan(rollout, student, torch.ones(B, L, dtype=torch.bool), max_lag=4)
    best = lags[torch.nan_to_num(err, nan=float("inf")).argmin(dim=1)]
    assert best.tolist() == [-2 if b in shifted else 0 for b in range(B)]


def test_lag_scan_best_lag_each_direction():
    g = torch.Generator().manual_seed(2)
    x = -torch.rand(3, 20, generator=g, dtype=torch.float64) * 5
    student = x[:, 3:15]                                   # [3, 12]
    rollout = torch.stack([x[0, 3:15], x[1, 4:16], x[2, 1:13]])  # lags: rollout[j + k] == student[j]
    lags, err = K.lag_scan(rollout, student, torch.ones(3, 12, dtype=torch.bool), max_lag=3)
    assert lags.tolist() == [-3, -2, -1, 0, 1, 2, 3]
    assert err.shape == (3, 7)
    best = lags[err.argmin(dim=1)].tolist()
    assert best == [0, -1, 2]
    assert err[0, 3].item() == 0.0 and err[1, 2].item() == 0.0 and err[2, 5].item() == 0.0


def test_missing_teacher_value_on_valid_token():
    g, z, y = _setup(3)
    student = _gather(torch.log_softmax(z, -1), y)
    teacher = (student - 0.2).tolist()
    teacher[2][5] = None
    teacher[4][7] = float("-inf")
    b = K.Batch(prompt_ids=[[1]] * B, completion_ids=y.tolist(), rollout_logprobs=student.tolist(),
                student_logprobs=student.tolist(), teacher_logprobs=teacher)
    hits = K.check_alignment(b).by_kind("teacher_coverage")
    assert [(f.row, f.position, f.severity) for f in hits] == [(2, 5, "error"), (4, 7, "error")]
    # masked out: no error; the null (not the -inf sentinel) is named in an info, never dropped silently
    mask = [[True] * L for _ in range(B)]
    mask[2][5] = mask[4][7] = False
    masked = K.check_alignment(b.replace(mask=mask)).by_kind("teacher_coverage")
    assert [(f.row, f.position, f.severity) for f in masked] == [(2, 5, "info")]
    assert "1 teacher value(s) are null" in masked[0].message


def test_temperature_mismatch_raw_rollout_vs_tempered_student():
    _, z, y = _setup(4)
    rollout = _gather(torch.log_softmax(z, -1), y)          # vLLM raw: temperature ignored
    student = _gather(torch.log_softmax(z / 0.7, -1), y)    # scored at T = 0.7
    b = _batch(y, rollout, student, sampling=K.SamplingSettings(temperature=0.7, logprobs_mode="raw_logprobs"),
               scoring={"student_logprobs": 0.7})
    report = K.check_alignment(b)
    hits = report.by_kind("temperature")
    assert len(hits) == 1 and hits[0].severity == "error"
    assert "T=0.7" in hits[0].message and "T=1" in hits[0].message
    assert not report.ok
    assert report.by_kind("offset") == []
    # scored at the same T as the raw rollout (1.0): clean
    fixed = _batch(y, rollout, rollout, sampling=K.SamplingSettings(temperature=0.7, logprobs_mode="raw_logprobs"),
                   scoring={"student_logprobs": 1.0})
    assert K.check_alignment(fixed).findings == []


def _top_p_logprobs(z, p):
    """Independent top-p: keep the smallest top set whose mass reaches p, renormalise over it."""
    probs = torch.softmax(z, -1)
    sp, idx = probs.sort(-1, descending=True)
    before = sp.cumsum(-1) - sp
    keep_sorted = before < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return torch.log(kept / kept.sum(-1, keepdim=True)), keep


def test_processed_top_p_logprobs():
    g, z, _ = _setup(5)
    lp_proc, keep = _top_p_logprobs(z, 0.8)
    y = torch.multinomial(lp_proc.exp().reshape(-1, V), 1, generator=g).reshape(B, L)   # sampled from the kept set
    assert bool(_gather(keep.long(), y).bool().all())
    rollout = _gather(lp_proc, y)
    student = _gather(torch.log_softmax(z, -1), y)
    assert bool((rollout >= student).all())
    report = K.check_alignment(_batch(y, rollout, student))
    hits = report.by_kind("processed_logprobs")
    assert len(hits) == 1
    assert report.by_kind("temperature") == [] and report.by_kind("offset") == []


def test_bf16_like_noise_is_only_a_numerics_warning():
    g, z, y = _setup(6)
    student = _gather(torch.log_softmax(z, -1), y)
    rollout = (student + 0.02 * torch.randn(B, L, generator=g, dtype=torch.float64)).clamp(max=0)
    report = K.check_alignment(_batch(y, rollout, student, teacher=student))
    assert report.ok
    assert [(f.kind, f.severity) for f in report.findings] == [("numerics", "warning")]


def test_large_unstructured_gap_is_a_numerics_error():
    g, z, y = _setup(7)
    student = _gather(torch.log_softmax(z, -1), y)
    rollout = student.clone()
    rollout[3, 6] = student[3, 6] - 1.0                     # one token off by a full nat
    report = K.check_alignment(_batch(y, rollout, student))
    hits = report.by_kind("numerics")
    assert [(f.row, f.position, f.severity) for f in hits] == [(3, 6, "error")]


def test_offset_from_reproduced_trl_bug():
    """Bug 1 end to end: rows with a longer prompt (d = 2) are flagged, the shortest-prompt row is not."""
    from iwopd_kit.formats.trl import trl_prefix_fix_slice

    g, z, y = _setup(8)
    student = _gather(torch.log_softmax(z, -1), y)
    prompts = [[1], [1, 2, 3], [1], [1, 2, 3], [1], [1]]
    src = K.Batch(prompt_ids=prompts, completion_ids=y.tolist(), rollout_logprobs=student.tolist(),
                  student_logprobs=student.tolist())
    buggy = trl_prefix_fix_slice(K.to_trl_batch(src), src.rollout_logprobs)
    report = K.check_alignment(src.with_series("rollout_logprobs", buggy))
    hits = report.by_kind("offset")
    assert sorted(f.row for f in hits) == [1, 3]
    assert all("token j+2" in f.message for f in hits)
    # the converter (the fix) keeps every row aligned
    assert K.check_alignment(K.from_trl_batch(K.to_trl_batch(src))).findings == []


def test_check_alignment_on_batches_narrower_than_the_lag_window():
    import iwopd_kit as K

    for L in (1, 2, 3, 4):
        vals = [-0.5 - 0.1 * j for j in range(L)]
        b = K.Batch(prompt_ids=[[1], [1, 2]], completion_ids=[[3] * L, [4]], rollout_logprobs=[vals, [-0.2]],
                    student_logprobs=[vals, [-0.2]], teacher_logprobs=[vals, [-0.3]])
        report = K.check_alignment(b)
        assert report.ok and report.findings == []
        lags, err = K.lag_scan(b.series("rollout_logprobs"), b.series("student_logprobs"), b.valid(), max_lag=4)
        assert err.shape == (2, 9) and float(err[0, 4]) == 0.0


def test_offset_larger_than_the_scan_window_is_found_from_prompt_lengths():
    """TRL's bug 1 with prompts 9 tokens apart: the shift (9) exceeds max_lag (4)."""
    import torch

    import iwopd_kit as K
    from iwopd_kit.formats.trl import trl_prefix_fix_slice

    g = torch.Generator().manual_seed(3)
    lengths = [20, 25, 18, 22]
    prompts = [[1] * 3, [1] * 12, [1] * 3, [1] * 12]
    vals = [(-torch.rand(n, generator=g) * 2).tolist() for n in lengths]
    batch = K.Batch(prompt_ids=prompts, completion_ids=[[5] * n for n in lengths],
                    rollout_logprobs=vals, student_logprobs=vals)
    buggy = trl_prefix_fix_slice(K.to_trl_batch(batch), vals, pad_value=0.0)
    report = K.check_alignment(batch.with_series("rollout_logprobs", buggy))
    offsets = report.by_kind("offset")
    assert sorted(f.row for f in offsets) == [1, 3]
    assert all("shifted by +9" in f.message for f in offsets)


def _teacher_case(seed: int, sigma: float, independent: bool, rows: int = 16, length: int = 24):
    """Tokens sampled from a student; a teacher whose logits are the student's plus N(0, sigma) noise, or (an
    early-training student far from its teacher) independent logits at twice the scale. Returns (y, student, teacher)."""
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(rows, length, V, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(torch.softmax(zs, -1).reshape(-1, V), 1, generator=g).reshape(rows, length)
    zt = (torch.randn(rows, length, V, generator=g, dtype=torch.float64) * 3.0 if independent
          else zs + sigma * torch.randn(rows, length, V, generator=g, dtype=torch.float64))
    return y, _gather(torch.log_softmax(zs, -1), y), _gather(torch.log_softmax(zt, -1), y)


def _teacher_offsets(y, student, teacher):
    b = K.Batch(prompt_ids=[[1]] * y.shape[0], completion_ids=y.tolist(), rollout_logprobs=student.tolist(),
                student_logprobs=student.tolist(), teacher_logprobs=teacher.tolist())
    return [f for f in K.check_alignment(b).findings if f.kind == "offset"]


def test_a_teacher_series_sliced_one_token_early_is_an_offset_warning_on_its_rows():
    y, student, teacher = _teacher_case(0, sigma=0.5, independent=False)
    assert _teacher_offsets(y, student, teacher) == []
    early = torch.cat([teacher[:, :1] - 1.0, teacher[:, :-1]], dim=1)      # token j holds the teacher's value of j - 1
    found = _teacher_offsets(y, student, early)
    assert sorted(f.row for f in found) == list(range(y.shape[0]))
    assert {f.severity for f in found} == {"warning"} and "teacher log-probs look shifted by -1" in found[0].message
    late = torch.cat([teacher[:, 1:], teacher[:, -1:]], dim=1)             # token j holds the teacher's value of j + 1
    assert {f.message.split(" token(s)")[0] for f in _teacher_offsets(y, student, late)} == {"teacher log-probs look shifted by +1"}


def _shifted_teacher(teacher: torch.Tensor, d: int) -> torch.Tensor:
    """Token j holds the teacher's value of token j + d; the |d| tokens at the edge hold their neighbour's value
    minus one nat (what a slice into the prompt or past the end carries: some other token's log-prob)."""
    if d < 0:
        return torch.cat([teacher[:, :1].expand(-1, -d) - 1.0, teacher[:, :d]], dim=1)
    return torch.cat([teacher[:, d:], teacher[:, -1:].expand(-1, d) - 1.0], dim=1)


@pytest.mark.parametrize("d", [-3, -2, 2, 3])
def test_a_teacher_series_shifted_by_two_or_three_tokens_is_found_with_its_shift(d):
    y, student, teacher = _teacher_case(0, sigma=0.5, independent=False)
    found = _teacher_offsets(y, student, _shifted_teacher(teacher, d))
    assert sorted(f.row for f in found) == list(range(y.shape[0])) and {f.severity for f in found} == {"warning"}
    assert {f.message.split(" token(s)")[0] for f in found} == {f"teacher log-probs look shifted by {d:+d}"}
    assert f"carries the teacher's log-prob of token j{d:+d} " in found[0].message


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
def test_a_healthy_teacher_is_not_called_shifted_at_any_distance_from_its_student(sigma):
    """Teacher logits = the student's + N(0, sigma^2): the farther the teacher, the nearer every lag's fit comes
    to lag 0's (from below), never 1.5x beyond it, at any of the lags |k| <= max_lag (3 seeds each); at sigma 8
    teacher and student differ by nats on a typical token."""
    for seed in range(3):
        y, student, teacher = _teacher_case(seed, sigma=sigma, independent=False)
        if sigma >= 5:
            assert (teacher - student).abs().mean() > 1.0
        assert _teacher_offsets(y, student, teacher) == []


def test_an_early_training_student_far_from_its_teacher_is_no_teacher_offset():
    """Teacher logits independent of the student's (|teacher - student| ~ nats on every token): lag 0 fits no
    better than any lag |k| <= max_lag, but no shift fits 1.5x better either, so there is no finding (10 seeds)."""
    for seed in range(10):
        y, student, teacher = _teacher_case(seed, sigma=0.0, independent=True)
        assert (teacher - student).abs().mean() > 1.0
        assert _teacher_offsets(y, student, teacher) == []


def test_a_small_temperature_mismatch_is_named_by_its_signed_pattern_and_bf16_rounding_is_not():
    """Without settings and within the numerics bounds, a trainer at T = 0.95 against raw T = 1 rollout values is a
    ``temperature`` warning (the signed gap follows the log-prob); bf16 logits, whose rounding moves a log-prob by
    noise of either sign, stay a ``numerics`` warning that names rounding."""
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(16, 24, V, generator=g, dtype=torch.float64) * 8           # confident: a small mismatch
        y = torch.multinomial(torch.softmax(z, -1).reshape(-1, V), 1, generator=g).reshape(16, 24)
        raw = _gather(torch.log_softmax(z, -1), y)
        tempered = _gather(torch.log_softmax(z / 0.95, -1), y)
        bf16 = _gather(torch.log_softmax(z.to(torch.bfloat16).double(), -1), y)
        hot = K.check_alignment(_batch(y, raw, tempered))
        assert hot.metrics["mismatch/token_mult_prob_error"] < 1.05                   # within NeMo-RL's bound
        assert [(f.kind, f.severity) for f in hot.findings] == [("temperature", "warning")], hot
        assert "signed gap follows the log-prob" in hot.findings[0].message
        rounded = K.check_alignment(_batch(y, bf16, raw))
        assert [(f.kind, f.severity) for f in rounded.findings] == [("numerics", "warning")], rounded
        assert "rounding" in rounded.findings[0].message
