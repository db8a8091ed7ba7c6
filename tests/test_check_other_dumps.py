"""The check on dumps shaped as other frameworks write them, each a small synthetic batch whose truth is known
by construction: a nucleus of one read without sampling settings, multi-turn rows with loss-masked scaffold
turns, a group sampled at another temperature, prime-rl's teacher-sampled (other_model) tokens, heavy tails,
kept_logmass, nulls in each series and "stop" rows without a stop token. Series are [B, L] in completion
coordinates; rows, positions and groups are asserted, not just "some finding"."""

from __future__ import annotations

import math

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.alignment import KINDS, Tolerances
from iwopd_kit.alignment.mismatch import mismatch_metrics
from research import REPO_ROOT

V = 40


def _kinds(report: K.AlignmentReport, kind: str) -> torch.Tensor:
    return report.token_kinds == KINDS.index(kind)


def top_p_batch(seed: int = 0, B: int = 6, L: int = 24, top_p: float = 0.95, peaked: float = 0.4):
    """Tokens sampled from the top-p nucleus of random logits (some steps peaked on one token): the trainer's
    full-distribution log-probs, vLLM's processed ones (log p / S; exactly 0.0 for a nucleus of one), the
    nucleus-of-one mask, p and S, all [B, L] float64."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2.0
    z[..., 0] += (torch.rand(B, L, generator=g) < peaked) * 9.0
    probs = torch.softmax(z, -1)
    sp, idx = probs.sort(-1, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, idx, (sp.cumsum(-1) - sp) < top_p)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    S = kept.sum(-1)
    y = torch.multinomial((kept / S[..., None]).reshape(-1, V), 1, generator=g).reshape(B, L)
    p = probs.gather(-1, y[..., None]).squeeze(-1)
    alone = keep.sum(-1) == 1
    rollout = torch.where(alone, torch.zeros_like(p), (p / S).log())
    return y + 3, p.log(), rollout, alone, p, S


def _batch(y, student, rollout, **kw) -> K.Batch:
    return K.Batch(prompt_ids=[[1, 2]] * y.shape[0], completion_ids=y.tolist(), student_logprobs=student.tolist(),
                   rollout_logprobs=rollout.tolist(), **kw)


# ----------------------------------------------------------------------- 1 / D: a nucleus of one, no settings
def test_a_nucleus_of_one_without_settings_is_processed_not_padding():
    y, s, r, alone, p, S = top_p_batch()
    assert int(alone.sum()) >= 20 and bool((p[alone] >= 0.95).all())          # the batch is what it says
    report = K.check_alignment(_batch(y, s, r))
    assert report.ok and [(f.kind, f.severity, f.row) for f in report.findings] == [("processed_logprobs", "warning", None)]
    msg = report.findings[0].message
    top_p = float(msg.split("estimated top_p <= ")[1].split(" ")[0])
    # an upper bound: the smallest kept mass (or kept-alone p) over the tokens, at or above the true 0.95
    assert top_p == pytest.approx(min(float(S[~alone].min()), float(p[alone].min())), abs=1e-4) and top_p >= 0.95
    mean_log_s = float(msg.split("mean log S = ")[1].split(" ")[0])
    assert mean_log_s == pytest.approx(float((s - r).mean()), abs=1e-4)
    assert bool(_kinds(report, "processed_logprobs")[alone].all()) and report.gap_explained


def test_zeros_on_low_probability_tokens_are_padding_beside_a_nucleus_of_one():
    y, s, r, alone, p, _ = top_p_batch()
    r = r.clone()
    low = torch.zeros_like(alone)
    low[2, 5] = True                       # one 0.0 mid-row, and a row's tail padded with 0.0 from position 10
    low[4, 10:] = True
    low &= p < 0.5                          # the tail's tokens the trainer calls unlikely (the others pass as kept-alone)
    r[2, 5] = 0.0
    r[4, 10:] = 0.0
    report = K.check_alignment(_batch(y, s, r))
    errors = [(f.kind, f.row, f.position) for f in report.findings if f.severity == "error"]
    assert errors == [("offset", 2, 5), ("offset", 4, 10)], report
    assert [f.kind for f in report.findings if f.severity == "warning"] == ["processed_logprobs"]
    assert torch.equal(_kinds(report, "offset") & low, low)                   # each finding on its own tokens
    assert not bool((_kinds(report, "offset") & alone).any())
    assert bool(_kinds(report, "processed_logprobs")[alone & (r == 0.0) & ~low].all())


def test_without_the_top_p_signature_a_zero_must_be_a_certain_token():
    # float32 rows that agree exactly, padded with 0.0 at the end: no renormalisation to explain a 0.0
    y, s, _, _, p, _ = top_p_batch(1)
    s = s.clone()
    s[3, -4:] = torch.tensor([0.3, 0.2, 0.4, 0.1], dtype=torch.float64).log()
    r = s.clone()
    r[3, -4:] = 0.0
    report = K.check_alignment(_batch(y, s, r))
    assert [(f.kind, f.row, f.position, f.severity) for f in report.findings] == [("offset", 3, 20, "error")], report
    assert "alone in no realistic nucleus" in report.findings[0].message
    assert int(_kinds(report, "offset").sum()) == 4
    # recorded settings that say no truncation: a 0.0 must be a certain token
    raw = _batch(y, s, r, sampling=K.SamplingSettings(logprobs_mode="raw_logprobs"))
    assert "exactly 0.0 only when it is certain" in K.check_alignment(raw).findings[0].message
    # a 0.0 on a likely token (p 0.9) with nothing recorded and no other token to tell: a warning, not an error
    s[3, -4:] = math.log(0.9)
    doubt = K.check_alignment(_batch(y, s, r))
    assert [(f.kind, f.row, f.position, f.severity) for f in doubt.findings] == [("offset", 3, 20, "warning")], doubt
    assert "record the sampling settings" in doubt.findings[0].message and doubt.ok


def test_kept_logmass_makes_the_processed_comparison_exact():
    y, s, r, alone, p, S = top_p_batch(2)
    kept = S.log().where(~alone, s)                 # the trainer's log-mass over the engine's kept set
    batch = _batch(y, s, r, kept_logmass=kept.tolist())
    report = K.check_alignment(batch)
    assert report.ok and [(f.kind, f.severity) for f in report.findings] == [("processed_logprobs", "info")], report
    assert "compared with student - kept_logmass exactly" in report.findings[0].message
    assert report.metrics["mismatch/token_mult_prob_error"] > 1.01             # the raw metrics still show log S
    # a residual the renormalisation does not explain is judged as at top_p 1: 0.3 nats on one token is an error
    bad = r.clone()
    bad[1, 7] -= 0.3
    hits = K.check_alignment(_batch(y, s, bad, kept_logmass=kept.tolist())).by_kind("numerics")
    assert [(f.row, f.position, f.severity) for f in hits] == [(1, 7, "error")]


# ------------------------------------------------------------------------------------------ 2: multi-turn
def multi_turn(seed: int = 0, B: int = 4, shift_rows: tuple[int, ...] = ()) -> tuple[K.Batch, torch.Tensor]:
    """Rows of assistant (policy, 10 tokens) / tool (context, 6 tokens, loss-masked out, rollout 0.0) / assistant
    (12 tokens) turns. ``shift_rows``: the trainer's series is shifted by one over the whole completion (token j
    carries the trainer log-prob of token j + 1). Returns the batch and the true log-probs [B, L + 1]."""
    g = torch.Generator().manual_seed(seed)
    L = 28
    true = torch.log_softmax(torch.randn(B, L + 1, V, generator=g, dtype=torch.float64) * 1.5, -1)[..., 0]
    student = true[:, :L].clone()
    for b in shift_rows:
        student[b] = true[b, 1:]
    rollout = true[:, :L].clone()
    src = ["policy"] * 10 + ["context"] * 6 + ["policy"] * 12
    mask = [s == "policy" for s in src]
    rollout[:, 10:16] = 0.0
    student[:, 10:16] = -4.0                     # the trainer scores the scaffold too; nothing reads it
    return K.Batch(prompt_ids=[[1, 2, 3]] * B, completion_ids=[[5] * L] * B, rollout_logprobs=rollout.tolist(),
                   student_logprobs=student.tolist(), mask=[mask] * B, token_source=[src] * B), true


def test_healthy_multi_turn_rows_are_clean_and_show_no_gap_at_shift_0():
    batch, _ = multi_turn()
    report = K.check_alignment(batch)
    assert report.findings == [], report
    assert [x.gap_at_0 for x in report.row_lags] == [0.0] * 4                 # the scaffold never enters the scan
    assert report.stats["tokens"] == 4 * 22


def test_a_trainer_shifted_by_one_is_caught_in_every_turn_of_every_row():
    batch, _ = multi_turn(shift_rows=(0, 1, 2, 3))
    report = K.check_alignment(batch)
    hits = report.by_kind("offset")
    assert [(f.row, f.position, f.severity) for f in hits] == [(b, j, "error") for b in range(4) for j in (0, 16)], report
    assert all("shifted by -1" in f.message and "turn" in f.message for f in hits)
    assert report.row_shifts == (-1, -1, -1, -1) and report.kinds == {"offset"}
    assert bool(_kinds(report, "offset")[batch.policy_mask()].all())
    assert not bool(_kinds(report, "offset")[~batch.policy_mask()].any())


def test_shift_pairs_never_cross_a_masked_hole():
    from iwopd_kit.alignment import lag_scan, segment_ids

    # one row, a one-token hole at 3: lag k = 2 pairs (rollout[2], s[0]) and (rollout[6], s[4]) inside the two
    # turns, and (rollout[4], s[2]) across the hole, which a segment-aware scan must not count
    s = torch.tensor([[-0.5, -1.0, -1.5, -9.0, -2.0, -2.5, -3.0]], dtype=torch.float64)
    r = torch.tensor([[-7.0, -7.0, -0.5, -9.0, -11.5, -7.0, -2.0]], dtype=torch.float64)
    m = torch.tensor([[True, True, True, False, True, True, True]])
    lags, within = lag_scan(r, s, m, max_lag=2, segments=segment_ids(m))
    _, across = lag_scan(r, s, m, max_lag=2)
    k2 = int((lags == 2).nonzero())
    assert float(within[0, k2]) == 0.0 and float(across[0, k2]) == pytest.approx(10.0 / 3)


# ------------------------------------------------------------------------------------ 3: groups and bounds
def grouped(seed: int = 0, per_group: int = 7, L: int = 30, noise: float = 0.01) -> tuple[K.Batch, torch.Tensor, torch.Tensor]:
    """4 groups of bf16-like healthy rows (noise on the rollout); returns the batch, the logits [B, L, V] and
    the sampled ids [B, L]."""
    g = torch.Generator().manual_seed(seed)
    B = 4 * per_group
    z = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2.5
    y = torch.multinomial(torch.softmax(z, -1).reshape(-1, V), 1, generator=g).reshape(B, L)
    lp = torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1)
    rollout = (lp + noise * torch.randn(B, L, generator=g, dtype=torch.float64)).clamp(max=-1e-7)
    groups = [name for name in ("math", "code", "chat", "tools") for _ in range(per_group)]
    meta = [{"rollout_dtype": "bfloat16", "trainer_dtype": "float32"}] * B
    return K.Batch(prompt_ids=[[1, 2]] * B, completion_ids=(y + 3).tolist(), rollout_logprobs=rollout.tolist(),
                   student_logprobs=lp.tolist(), groups=groups, meta=meta), z, y


def test_one_group_at_another_temperature_is_found_and_named():
    batch, _, _ = grouped()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(7, 30, V, generator=g, dtype=torch.float64) * 2.5
    y = torch.multinomial(torch.softmax(z / 1.5, -1).reshape(-1, V), 1, generator=g).reshape(7, 30)
    hot = torch.log_softmax(z / 1.5, -1).gather(-1, y[..., None]).squeeze(-1)          # processed at T = 1.5
    cold = torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1)               # trainer at T = 1
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    r[21:], s[21:] = hot, cold
    ids = batch.tokens()
    ids[21:] = y + 3
    mixed = batch.replace(completion_ids=ids.tolist(), rollout_logprobs=r.tolist(), student_logprobs=s.tolist())
    report = K.check_alignment(mixed)
    assert [(f.kind, f.severity, f.group) for f in report.findings if f.severity == "error"] == [("temperature", "error", "tools")]
    assert "in group 'tools'" in report.by_kind("temperature")[0].message
    assert bool(_kinds(report, "temperature")[21:].all()) and not bool(_kinds(report, "temperature")[:21].any())
    assert report.group_metrics["tools"]["mismatch/k3_kl"] > 0.05 and report.group_metrics["math"]["tokens"] == 210
    assert [f.kind for f in report.findings if f.severity == "warning"] == ["numerics"]     # the rest: bf16 noise


def test_a_group_beyond_the_bounds_is_an_error_although_the_batch_is_within():
    batch, _, _ = grouped(per_group=12)
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    g = torch.Generator().manual_seed(3)
    r[36:40] = (s[36:40] + 0.35 * torch.randn(4, 30, generator=g, dtype=torch.float64)).clamp(max=-1e-7)  # 4 rows of "tools"
    report = K.check_alignment(batch.replace(rollout_logprobs=r.tolist()))
    assert report.metrics["mismatch/token_mult_prob_error"] < 1.05 < report.group_metrics["tools"]["mismatch/token_mult_prob_error"]
    (f,) = report.by_kind("numerics")
    assert (f.severity, f.group) == ("error", "tools") and 36 <= f.row < 40 and f.message.startswith("group 'tools'")
    assert f.to_dict()["group"] == "tools"


def test_a_warning_about_one_group_never_silences_the_numerics_of_another():
    batch, _, _ = grouped(per_group=8)
    r, s = batch.series("rollout_logprobs", torch.float64), batch.series("student_logprobs", torch.float64)
    g = torch.Generator().manual_seed(4)
    # "math": the rollout above the trainer in every row (mean 0.1, both signs per token), as a stale sampler
    s[:8] = r[:8] - 0.1 - 0.1 * torch.randn(8, 30, generator=g, dtype=torch.float64)
    r[8:16] = (s[8:16] + 0.4 * torch.randn(8, 30, generator=g, dtype=torch.float64)).clamp(max=-1e-7)  # "code": broken
    report = K.check_alignment(batch.replace(rollout_logprobs=r.tolist(), student_logprobs=s.tolist()))
    assert [(f.kind, f.severity, f.group) for f in report.findings] == [
        ("staleness", "warning", "math"), ("numerics", "error", "code")], report
    assert bool(_kinds(report, "staleness")[:8].all()) and not report.gap_explained
    assert 8 <= report.by_kind("numerics")[0].row < 16


def test_a_heavy_tail_cannot_hide_a_broken_bulk():
    # 200 tokens: the bulk off by ~0.15 nats (mean exp|Δ| ~1.13 without the tail) and two tokens 14 nats off:
    # token_mult_prob_error ~12,000, within 2 of its (huge) standard errors: the trimmed pool is an error
    g = torch.Generator().manual_seed(5)
    s = -torch.rand(8, 25, generator=g, dtype=torch.float64) * 3 - 0.5
    d = 0.15 * torch.randn(8, 25, generator=g, dtype=torch.float64)
    d[2, 3], d[6, 11] = -14.0, -14.0
    meta = [{"rollout_dtype": "bfloat16", "trainer_dtype": "float32"}] * 8
    batch = K.Batch(prompt_ids=[[1]] * 8, completion_ids=[[4] * 25] * 8, student_logprobs=s.tolist(),
                    rollout_logprobs=(s + d).tolist(), meta=meta)
    report = K.check_alignment(batch)
    assert report.metrics["mismatch/token_mult_prob_error"] > 1000
    (f,) = report.by_kind("numerics")
    assert f.severity == "error" and "trimmed pool" in f.message and "the bulk is off" in f.message, f.message
    assert "edge of the healthy range" not in f.message
    # a healthy bulk with more than 1% of its tokens several nats off is an error too (the tail rule)
    d = 0.01 * torch.randn(8, 25, generator=g, dtype=torch.float64)
    d.view(-1)[[7, 50, 120, 180]] = -5.0
    (f,) = K.check_alignment(batch.replace(rollout_logprobs=(s + d).tolist())).by_kind("numerics")
    assert f.severity == "error" and "4 of 200 tokens (2.0%) are off by more than 2 nats" in f.message, f.message
    (f,) = K.check_alignment(batch.replace(rollout_logprobs=(s + d).tolist()), Tolerances(tail_nats=6.0)).by_kind("numerics")
    assert "are off by more than" not in f.message                          # the rule's own knob


# ------------------------------------------------------------------------- 4: teacher-sampled tokens
def test_other_model_tokens_are_not_pooled_with_the_policy():
    # prime-rl SFT-distill: a teacher sampled the last 8 tokens of each row (ce tokens, loss-masked); their
    # "rollout" values are the teacher's, far from the student's: not a policy mismatch
    g = torch.Generator().manual_seed(6)
    s = -torch.rand(4, 20, generator=g, dtype=torch.float64) * 2
    r = s.clone()
    r[:, 12:] = -0.05
    s[:, 12:] = torch.tensor([-6.0, -0.01, -6.0, -0.01], dtype=torch.float64)[:, None]
    r[1::2, 12:] = -5.0                                    # the teacher's values, either side of the student's
    src = [["policy"] * 12 + ["other_model"] * 8] * 4
    batch = K.Batch(prompt_ids=[[1]] * 4, completion_ids=[[4] * 20] * 4, student_logprobs=s.tolist(),
                    rollout_logprobs=r.tolist(), token_source=src)
    report = K.check_alignment(batch)
    assert report.findings == [] and report.stats["tokens"] == 48, report
    assert report.metrics == pytest.approx(mismatch_metrics(s[:, :12], r[:, :12]))
    plain = K.check_alignment(batch.replace(token_source=None))          # pooled with the policy: not healthy
    assert not plain.ok


# ------------------------------------------------------------------------------- 5: nulls and stops
def test_a_null_in_each_series_is_named_by_row_position_and_series():
    s = [[-0.1, -0.2, -0.3, -0.4]] * 3
    student = [list(x) for x in s]
    student[1][2] = None                               # loss-masked: an error
    student[2][3] = None                               # masked out: an info
    teacher = [list(x) for x in s]
    teacher[0][1] = None
    batch = K.Batch(prompt_ids=[[1]] * 3, completion_ids=[[4] * 4] * 3, rollout_logprobs=s, student_logprobs=student,
                    teacher_logprobs=teacher, mask=[[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    report = K.check_alignment(batch)
    got = [(f.kind, f.row, f.position, f.severity) for f in report.findings]
    assert got == [("missing_token_ids", 1, 2, "error"), ("missing_token_ids", 2, 3, "info"),
                   ("teacher_coverage", 0, 1, "error")], report
    assert "student (trainer) log-prob" in report.findings[0].message and "1 student value(s)" in report.findings[1].message
    assert _kinds(report, "missing_token_ids")[1, 2] and report.stats["tokens"] == 10


class Tok:
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 2
    eos_token = "<|im_end|>"

    def get_added_vocab(self):
        return {"<|endoftext|>": 0, "<s>": 1, "<|im_end|>": 2}

    def encode(self, text, add_special_tokens=True):
        return [5]


def test_a_stop_row_without_its_stop_token_is_a_warning_unless_a_stop_string_is_recorded():
    comps = [[4, 5, 2], [4, 5, 6], [4, 5, 6], [4, 5, 9]]
    vals = [[-0.1, -0.2, -0.3]] * 4
    meta = [{}, {}, {"stop_reason": "</answer>"}, {}]
    batch = K.Batch(prompt_ids=[[1]] * 4, completion_ids=comps, rollout_logprobs=vals, student_logprobs=vals,
                    finish_reasons=["stop", "stop", "stop", "stop"], meta=meta,
                    sampling=K.SamplingSettings(stop_token_ids=(9,)))
    hits = K.check_alignment(batch, student_tokenizer=Tok()).by_kind("bos_eos")
    stop = [f for f in hits if f.row is not None]
    assert [(f.row, f.position, f.severity) for f in stop] == [(1, 2, "warning")], hits
    assert "<|im_end|> (id 2)" in stop[0].message and "trl#6357" in stop[0].message
    length = batch.replace(finish_reasons=["stop", "length", "stop", "stop"])
    assert [f.row for f in K.check_alignment(length, student_tokenizer=Tok()).by_kind("bos_eos") if f.row is not None] == []


def test_finding_group_defaults_to_none_and_is_serialised():
    f = K.Finding("numerics", None, None, "warning", "x")
    assert f.group is None and f.to_dict() == {"kind": "numerics", "row": None, "position": None, "severity": "warning",
                                               "message": "x", "group": None}
    assert math.isfinite(Tolerances().nucleus_slack)


@pytest.mark.parametrize("name", ["healthy_fp32_t1", "healthy_processed_t07", "healthy_bf16"])
def test_healthy_fixtures_stay_clean_without_settings_and_in_groups(name):
    # a dump that records no sampling settings (a bf16 rollout's rounding also grows with |log-prob|: that
    # alone once read as a temperature error), and the same rows as 4 groups judged one by one
    from iwopd_kit import toy

    batch = K.read_jsonl(REPO_ROOT / "data" / "fixtures" / f"{name}.jsonl")
    tok = K.load_tokenizer(toy.STUDENT_DIR)
    for variant in (batch.replace(sampling=None), batch.replace(groups=[f"g{i % 4}" for i in range(batch.size)])):
        report = K.check_alignment(variant, student_tokenizer=tok)
        assert report.ok, report
    assert set(report.group_metrics) == {"g0", "g1", "g2", "g3"}
    assert sum(m["tokens"] for m in report.group_metrics.values()) == report.stats["tokens"]


@pytest.mark.parametrize("path", ["healthy_fp32_t1.jsonl", "healthy_bf16.jsonl", "healthy_processed_t07.jsonl",
                                  "chat/healthy.jsonl", "chat/eos_masked.jsonl", "padding.jsonl",
                                  "tokenizer_mismatch.jsonl"])
def test_a_healthy_teacher_series_is_not_called_shifted(path):
    """The teacher-shift rule (the best lag |k| <= max_lag fitting 1.5x better than lag 0 at |k| = 1, 1.75x at
    |k| >= 2) on fixtures with a healthy teacher series, those nearest the bounds among them included (padding,
    tokenizer_mismatch: 0.93 at lag +-1; chat eos_masked: 1.47 at lag -4, through the segment-edge tokens a
    wide lag leaves out)."""
    from iwopd_kit import toy
    from iwopd_kit.alignment.core import Context, Tolerances
    from iwopd_kit.alignment.teacher_shift import find_teacher_offset, teacher_lag_fit
    from iwopd_kit.formats import load_any
    b = load_any(toy.FIXTURES_DIR / path)
    tol = Tolerances()
    lags, total, count = teacher_lag_fit(Context(b))
    assert lags.tolist() == list(range(-tol.max_lag, tol.max_lag + 1))
    col0 = tol.max_lag
    assert int(count[:, col0].sum()) >= 100                           # the rule had enough pairs to judge
    ratio = (total.sum(0) / count.sum(0))[col0] / (total.sum(0) / count.sum(0))
    assert float(ratio[(lags.abs() == 1)].max()) < 1.0                # lag 0 fits better than +-1
    assert float(ratio[(lags.abs() >= 2)].max()) < 1.5 < tol.teacher_wide_lag_gain   # docs/calibration.md: <= 1.47
    assert find_teacher_offset(Context(b)) == []
