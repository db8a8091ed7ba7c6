"""Property tests (hypothesis) for the invariants of docs/method.md, sections 4-8 (scoring, advantage, weights, loss).

References are independent: plain-Python loops and ``torch.log_softmax`` in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import iwopd_kit as K

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)

finite_adv = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False, allow_infinity=False)
gammas = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)


@st.composite
def adv_and_mask(draw, min_rows=1):
    B = draw(st.integers(min_rows, 4))
    L = draw(st.integers(1, 9))
    vals = draw(st.lists(st.lists(finite_adv, min_size=L, max_size=L), min_size=B, max_size=B))
    # sprinkle exact zeros (a frequent case: A = 0 on masked tokens, equal log-probs)
    zeros = draw(st.lists(st.lists(st.booleans(), min_size=L, max_size=L), min_size=B, max_size=B))
    mask = draw(st.lists(st.lists(st.booleans(), min_size=L, max_size=L), min_size=B, max_size=B))
    A = torch.tensor(vals, dtype=torch.float64)
    A = torch.where(torch.tensor(zeros), torch.zeros_like(A), A)
    return A, torch.tensor(mask, dtype=torch.bool)


# ----------------------------------------------------------------------------- prefix weights
@SETTINGS
@given(adv_and_mask(), gammas)
def test_weights_bounds_first_and_monotone(am, gamma):
    A, mask = am
    for signed in (False, True):
        w = K.prefix_weights(A, mask, gamma=gamma, signed=signed)
        tol = 1e-12
        assert bool((w[mask] >= 1 - tol).all()) and bool((w[mask] <= 1 + gamma + tol).all()), (signed, w)
        if signed:
            continue
        for b in range(A.shape[0]):
            ws = w[b][mask[b]].tolist()
            if ws:
                assert ws[0] == pytest.approx(1 + gamma, abs=tol)
            assert all(x >= y - tol for x, y in zip(ws, ws[1:])), ws


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 8), gammas)
def test_all_zero_rows_get_one_plus_gamma(B, L, gamma):
    A = torch.zeros(B, L, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    for signed in (False, True):
        w = K.prefix_weights(A, mask, gamma=gamma, signed=signed)
        torch.testing.assert_close(w, torch.full((B, L), 1 + gamma, dtype=torch.float64), atol=1e-12, rtol=0)


def _ref_weights(A: list[list[float]], mask: list[list[bool]], gamma: float, eps: float) -> list[list[float]]:
    """docs/method.md, prefix weights, literally: exclusive prefix sum of |A| over the row's valid tokens."""
    out = []
    for a_row, m_row in zip(A, mask):
        absA = [abs(a) if m else 0.0 for a, m in zip(a_row, m_row)]
        S = sum(absA)
        row, before = [], 0.0
        for a in absA:
            row.append(1 + gamma * (1 - before / max(S, eps)))
            before += a
        out.append(row)
    return out


@SETTINGS
@given(adv_and_mask(), gammas, st.sampled_from([1e-8, 1e-3, 0.5]))
def test_prefix_weights_equal_python_reference(am, gamma, eps):
    A, mask = am
    w = K.prefix_weights(A, mask, gamma=gamma, eps=eps)
    ref = torch.tensor(_ref_weights(A.tolist(), mask.tolist(), gamma, eps), dtype=torch.float64)
    # compared on valid tokens (masked positions never enter the loss)
    torch.testing.assert_close(w[mask], ref[mask], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- gamma = 0 is OPD
@st.composite
def logprob_triplet(draw):
    B, L = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    lp = st.floats(min_value=-8.0, max_value=0.0, allow_nan=False)
    grid = lambda: torch.tensor(draw(st.lists(st.lists(lp, min_size=L, max_size=L), min_size=B, max_size=B)),  # noqa: E731
                                dtype=torch.float64)
    student, teacher, rollout = grid(), grid(), grid()
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=L, max_size=L), min_size=B, max_size=B)))
    mask[0, 0] = True                                 # at least one valid token in the batch
    return student, teacher, rollout, mask


@SETTINGS
@given(logprob_triplet(), st.booleans())
def test_gamma0_is_plain_opd(trip, use_rollout):
    student, teacher, rollout, mask = trip
    roll = rollout if use_rollout else None
    s1 = student.clone().requires_grad_(True)
    s2 = student.clone().requires_grad_(True)
    iw = K.iw_opd_loss(s1, teacher, mask, rollout_logprobs=roll, gamma=0.0)
    opd = K.opd_loss(s2, teacher, mask, rollout_logprobs=roll)
    base = rollout if use_rollout else student
    A = torch.where(mask, teacher - base, torch.zeros_like(teacher))
    plain = -(A * torch.where(mask, student, torch.zeros_like(student))).sum() / mask.sum()
    assert iw.loss.item() == pytest.approx(opd.loss.item(), abs=1e-12)
    assert iw.loss.item() == pytest.approx(plain.item(), abs=1e-10)
    iw.loss.backward()
    opd.loss.backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(s1.grad, torch.where(mask, -A / mask.sum(), torch.zeros_like(A)), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- layout invariance
@st.composite
def ragged_batch(draw):
    B = draw(st.integers(1, 4))
    lp = st.floats(min_value=-10.0, max_value=0.0, allow_nan=False)
    prompts, comps, roll, stud, teach, masks = [], [], [], [], [], []
    for _ in range(B):
        P, L = draw(st.integers(1, 6)), draw(st.integers(1, 8))
        prompts.append(draw(st.lists(st.integers(0, 50), min_size=P, max_size=P)))
        comps.append(draw(st.lists(st.integers(0, 50), min_size=L, max_size=L)))
        m = draw(st.lists(st.booleans(), min_size=L, max_size=L))
        masks.append(m)
        roll.append(draw(st.lists(lp, min_size=L, max_size=L)))
        stud.append(draw(st.lists(lp, min_size=L, max_size=L)))
        # teacher: -inf sentinel or a missing value (None) allowed on masked-out tokens
        t = draw(st.lists(lp, min_size=L, max_size=L))
        hole = draw(st.lists(st.sampled_from([None, "inf", "keep"]), min_size=L, max_size=L))
        teach.append([v if mk or h == "keep" else (None if h is None else -math.inf)
                      for v, mk, h in zip(t, m, hole)])
    masks[0][0] = True
    teach[0][0] = teach[0][0] if teach[0][0] is not None and math.isfinite(teach[0][0]) else -1.0
    return K.Batch(prompt_ids=prompts, completion_ids=comps, rollout_logprobs=roll, student_logprobs=stud,
                   teacher_logprobs=teach, mask=masks)


def _same(x: torch.Tensor, y: torch.Tensor) -> None:
    assert x.shape == y.shape
    assert torch.equal(torch.isnan(x), torch.isnan(y))
    ok = ~torch.isnan(x)
    assert torch.equal(x[ok], y[ok]), (x, y)


def _loss(batch: K.Batch):
    return K.iw_opd_loss(batch.series("student_logprobs", torch.float64), batch.series("teacher_logprobs", torch.float64),
                         batch.valid(), rollout_logprobs=batch.series("rollout_logprobs", torch.float64), gamma=0.5)


@SETTINGS
@given(ragged_batch())
def test_layout_invariance_jsonl_and_trl(tmp_path_factory, batch):
    path = tmp_path_factory.mktemp("jsonl") / "batch.jsonl"
    K.write_jsonl(batch, path)
    routes = {
        "jsonl": K.read_jsonl(path),
        "trl_left": K.from_trl_batch(K.to_trl_batch(batch, padding_side="left")),
        "trl_right": K.from_trl_batch(K.to_trl_batch(batch, padding_side="right")),
    }
    ref = _loss(batch)
    valid = batch.valid()
    for name, other in routes.items():
        assert other.prompt_ids == batch.prompt_ids, name
        assert other.completion_ids == batch.completion_ids, name
        assert torch.equal(other.valid(), valid), name
        for s in ("rollout_logprobs", "student_logprobs", "teacher_logprobs"):
            _same(other.series(s, torch.float64), batch.series(s, torch.float64))
        res = _loss(other)
        assert res.loss.item() == ref.loss.item(), name
        assert torch.equal(res.advantages[valid], ref.advantages[valid]), name
        assert torch.equal(res.weights[valid], ref.weights[valid]), name


# ----------------------------------------------------------------------------- permutation invariance
@SETTINGS
@given(ragged_batch(), st.randoms(use_true_random=False))
def test_row_permutation_invariance(batch, rnd):
    perm = list(range(batch.size))
    rnd.shuffle(perm)
    other = batch.select(perm)
    for reduction in ("token_mean", "sequence_mean"):
        kw = dict(gamma=0.5, reduction=reduction)
        a = K.iw_opd_loss(batch.series("student_logprobs"), batch.series("teacher_logprobs"), batch.valid(),
                          rollout_logprobs=batch.series("rollout_logprobs"), **kw)
        b = K.iw_opd_loss(other.series("student_logprobs"), other.series("teacher_logprobs"), other.valid(),
                          rollout_logprobs=other.series("rollout_logprobs"), **kw)
        # float32 sums in another row order: equal up to rounding (a few ulps of the total)
        assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-6, abs=1e-6)
        # other is padded to the same width (same rows), so rows map one to one
        p = torch.tensor(perm)
        v = other.valid()
        assert torch.equal(v, batch.valid()[p])
        for field in ("advantages", "weights", "per_token_loss"):
            x, y = getattr(b, field), getattr(a, field)[p]
            torch.testing.assert_close(x[v], y[v], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- sampled_logprobs
@SETTINGS
@given(st.integers(1, 3), st.integers(1, 6), st.integers(2, 17), st.floats(0.3, 2.0), st.integers(1, 7),
       st.integers(0, 2**31 - 1))
def test_sampled_logprobs_matches_log_softmax_gather(B, L, V, T, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, L, V, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.randint(0, V, (B, L), generator=g)
    z_ref = z.detach().clone().requires_grad_(True)
    got = K.sampled_logprobs(z, y, temperature=T, chunk_size=chunk)
    ref = torch.log_softmax(z_ref / T, -1).gather(-1, y[..., None]).squeeze(-1)
    assert got.dtype == torch.float64 and got.shape == (B, L)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    # chunking must not change results
    unchunked = K.sampled_logprobs(z.detach(), y, temperature=T, chunk_size=10_000)
    torch.testing.assert_close(got.detach(), unchunked, atol=1e-12, rtol=0)
    up = torch.randn(B, L, generator=g, dtype=torch.float64)
    (got * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-10, rtol=0)
