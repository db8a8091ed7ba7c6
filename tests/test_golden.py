"""The golden numbers of docs/method.md (from TRL's tests), through the public API only (``import iwopd_kit as K``).

Every expected value comes from docs/method.md ("Golden numbers") or from an independent hand computation in this file
(plain Python / float64), never from running the library.
"""

from __future__ import annotations

import math

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.formats.trl import trl_prefix_fix_slice

LN4 = math.log(4.0)


# ------------------------------------------------------------------------------------ golden #1
def _golden1(dtype=torch.float32):
    logits = torch.zeros(2, 3, 4, dtype=dtype, requires_grad=True)
    tokens = torch.tensor([[0, 1, 2], [1, 2, 3]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    teacher = torch.tensor([[-LN4 + 0.2, -LN4 - 0.3, -LN4 + 0.5],
                            [-LN4 + 0.4, -math.inf, -math.inf]], dtype=dtype)
    student = K.sampled_logprobs(logits, tokens)
    return logits, tokens, mask, teacher, student


def test_golden1_student_logprobs_are_minus_ln4():
    _, _, _, _, student = _golden1()
    torch.testing.assert_close(student.detach(), torch.full((2, 3), -LN4), atol=1e-6, rtol=0)


def test_golden1_advantages_weights_loss_metrics():
    _, _, mask, teacher, student = _golden1()
    res = K.iw_opd_loss(student, teacher, mask, gamma=0.5)
    A = torch.tensor([[0.2, -0.3, 0.5], [0.4, 0.0, 0.0]])
    w = torch.tensor([[1.5, 1.4, 1.25], [1.5, 1.0, 1.0]])
    torch.testing.assert_close(res.advantages, A, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.weights, w, atol=1e-6, rtol=0)
    assert res.loss.item() == pytest.approx(0.382964, abs=1e-6)
    assert res.num_items == 4
    # hand: ln4/4 * (1.5*0.2 + 1.4*(-0.3) + 1.25*0.5 + 1.5*0.4)
    assert res.loss.item() == pytest.approx(LN4 / 4 * (0.3 - 0.42 + 0.625 + 0.6), abs=1e-6)
    assert res.metrics["iw_opd/max_weight"] == pytest.approx(1.5, abs=1e-6)
    assert res.metrics["iw_opd/min_weight"] == pytest.approx(1.25, abs=1e-6)
    assert res.metrics["iw_opd/mean_weight"] == pytest.approx((1.5 + 1.4 + 1.25 + 1.5) / 4, abs=1e-6)
    assert res.metrics["iw_opd/mean_abs_advantage"] == pytest.approx((0.2 + 0.3 + 0.5 + 0.4) / 4, abs=1e-6)
    assert res.metrics["iw_opd/mean_advantage"] == pytest.approx(
        (1.5 * 0.2 - 1.4 * 0.3 + 1.25 * 0.5 + 1.5 * 0.4) / 4, abs=1e-6)


def test_golden1_num_items_8():
    _, _, mask, teacher, student = _golden1()
    res = K.iw_opd_loss(student, teacher, mask, gamma=0.5, num_items=8)
    assert res.loss.item() == pytest.approx(0.191482, abs=1e-6)
    assert res.num_items == 8


def test_golden1_gradient_finite_and_only_on_valid_positions():
    logits, tokens, mask, teacher, student = _golden1()
    res = K.iw_opd_loss(student, teacher, mask, gamma=0.5)
    res.loss.backward()
    g = logits.grad
    assert g is not None
    assert bool(torch.isfinite(g).all()), "the -inf teacher values on masked positions leaked into the gradient"
    per_pos = g.abs().sum(-1)                                          # [B, L]
    assert bool((per_pos[mask] > 0).all()), per_pos
    assert bool((per_pos[~mask] == 0).all()), per_pos
    # independent: d loss / d z[b,j,:] = -(w*A/N) * (onehot(y) - softmax(z)), softmax(0) = 1/4
    wA = torch.tensor([[1.5 * 0.2, 1.4 * -0.3, 1.25 * 0.5], [1.5 * 0.4, 0.0, 0.0]])
    expected = -(wA / 4)[..., None] * (torch.nn.functional.one_hot(tokens, 4).float() - 0.25)
    torch.testing.assert_close(g, expected, atol=1e-6, rtol=0)


def test_golden1_sequence_mean():
    _, _, mask, teacher, student = _golden1()
    res = K.iw_opd_loss(student, teacher, mask, gamma=0.5, reduction="sequence_mean")
    # per-token loss = -w*A*log p = w*A*ln4; row means then the mean over rows
    row0 = LN4 * (1.5 * 0.2 + 1.4 * -0.3 + 1.25 * 0.5) / 3
    row1 = LN4 * (1.5 * 0.4) / 1
    assert res.loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    # and it differs from the token mean (the two reductions are not the same thing here)
    assert abs(res.loss.item() - 0.382964) > 1e-3


# ------------------------------------------------------------------------------------ golden #2
def test_golden2_advantage_from_rollout_gradient_through_student():
    student = torch.full((1, 2), -LN4, dtype=torch.float64, requires_grad=True)
    rollout = torch.tensor([[-0.5, -0.25]], dtype=torch.float64)
    teacher = torch.tensor([[-0.2, -0.05]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    res = K.iw_opd_loss(student, teacher, mask, rollout_logprobs=rollout, gamma=0.0)
    torch.testing.assert_close(res.advantages, torch.tensor([[0.3, 0.2]], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(res.weights, torch.ones(1, 2, dtype=torch.float64))
    assert res.loss.item() == pytest.approx(0.346574, abs=1e-6)
    assert res.loss.item() == pytest.approx(-(0.3 + 0.2) * -LN4 / 2, abs=1e-12)
    res.loss.backward()
    # gradient = -A/N per token w.r.t. the student log-probs (N = 2)
    torch.testing.assert_close(student.grad, torch.tensor([[-0.15, -0.1]], dtype=torch.float64), atol=1e-12, rtol=0)
    # the advantage comes from the rollout, not the current student: without the rollout it differs
    no_roll = K.iw_opd_loss(student.detach(), teacher, mask, gamma=0.0)
    torch.testing.assert_close(no_roll.advantages, teacher + LN4, atol=1e-12, rtol=0)


def test_golden2_opd_loss_same():
    student = torch.full((1, 2), -LN4, requires_grad=True)
    res = K.opd_loss(student, torch.tensor([[-0.2, -0.05]]), torch.ones(1, 2, dtype=torch.bool),
                     rollout_logprobs=torch.tensor([[-0.5, -0.25]]))
    assert res.loss.item() == pytest.approx(0.346574, abs=1e-6)


# ------------------------------------------------------------------------------------ golden #3
PROMPTS = [[5], [6, 7]]
COMPS = [[11, 12, 13], [14]]
ROLLOUT = [[-0.1, -0.2, -0.3], [-0.4]]
EXPECTED = {(0, 11): -0.1, (0, 12): -0.2, (0, 13): -0.3, (1, 14): -0.4}


def _pairs(batch: K.Batch) -> dict[tuple[int, int], float]:
    out = {}
    for b, (ids, lps) in enumerate(zip(batch.completion_ids, batch.rollout_logprobs)):
        for t, v in zip(ids, lps):
            out[(b, t)] = v
    return out


def _hand_trl_left() -> dict:
    # prompts left-padded to P=2, completions right-padded to L=3, T = 5; pad id 0
    nan = float("nan")
    return {
        "input_ids": torch.tensor([[0, 5, 11, 12, 13], [6, 7, 14, 0, 0]]),
        "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 11, 12, 13], [-100, -100, 14, -100, -100]]),
        "rollout_logprobs": torch.tensor([[nan, nan, -0.1, -0.2, -0.3], [nan, nan, -0.4, nan, nan]],
                                         dtype=torch.float64),
    }


def _hand_trl_right() -> dict:
    # each prompt + completion right-padded to T = 4
    return {
        "input_ids": torch.tensor([[5, 11, 12, 13], [6, 7, 14, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": torch.tensor([[-100, 11, 12, 13], [-100, -100, 14, -100]]),
        # meaningful only where labels != -100; 0.0 elsewhere (a finite filler)
        "rollout_logprobs": torch.tensor([[0.0, -0.1, -0.2, -0.3], [0.0, 0.0, -0.4, 0.0]], dtype=torch.float64),
    }


@pytest.mark.parametrize("route", ["to_trl_left", "to_trl_right", "hand_left", "hand_right"])
def test_golden3_each_token_keeps_its_logprob(route):
    if route.startswith("to_trl"):
        src = K.Batch(prompt_ids=PROMPTS, completion_ids=COMPS, rollout_logprobs=ROLLOUT)
        layout = K.to_trl_batch(src, padding_side=route.rsplit("_", 1)[1])
    else:
        layout = _hand_trl_left() if route == "hand_left" else _hand_trl_right()
    batch = K.from_trl_batch(layout)
    assert batch.prompt_ids == PROMPTS
    assert batch.completion_ids == COMPS
    got = _pairs(batch)
    assert set(got) == set(EXPECTED)
    for key, v in EXPECTED.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key


def test_golden3_buggy_slicing_does_not_keep_them():
    """The reproduced TRL bug: rollout stored from column 0, sliced from the shortest prompt."""
    layout = _hand_trl_left()
    buggy = trl_prefix_fix_slice(layout, ROLLOUT)
    # row 0 has the shortest prompt: unaffected
    torch.testing.assert_close(buggy[0], torch.tensor([-0.1, -0.2, -0.3]), atol=1e-6, rtol=0)
    # row 1 (prompt 1 token longer) is shifted by one: token 14 does not get -0.4
    assert not (float(buggy[1, 0]) == pytest.approx(-0.4, abs=1e-6))
    # while the converter (the fix) does
    fixed = K.from_trl_batch(layout)
    assert fixed.rollout_logprobs[1][0] == pytest.approx(-0.4, abs=1e-12)


def test_buggy_slicing_shift_is_visible_on_longer_rows():
    """Same bug on a row long enough to show the shift: token j gets log-prob j + d (d = 2)."""
    src = K.Batch(prompt_ids=[[1], [2, 3, 4]], completion_ids=[[10, 11, 12, 13], [20, 21, 22, 23]],
                  rollout_logprobs=[[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0, -7.0, -8.0]])
    layout = K.to_trl_batch(src)
    buggy = trl_prefix_fix_slice(layout, src.rollout_logprobs)
    assert buggy[1, :2].tolist() == [-7.0, -8.0]
    assert bool(torch.isnan(buggy[1, 2:]).all())
    assert K.from_trl_batch(layout).rollout_logprobs == src.rollout_logprobs


# -------------------------------------------------------------------------------- jsd_top1_loss
def _hand_bucket_kl(s_logits, t_logits, y, beta):
    """Generalised JSD on {teacher argmax, sampled, tail} for one position, plain Python floats."""
    def softmax(z):
        m = max(z)
        e = [math.exp(v - m) for v in z]
        tot = sum(e)
        return [v / tot for v in e]

    s, t = softmax(s_logits), softmax(t_logits)
    top = max(range(len(t)), key=lambda i: t[i])
    if top == y:
        S = [s[top], 1 - s[top]]
        T = [t[top], 1 - t[top]]
    else:
        S = [s[top], s[y], 1 - s[top] - s[y]]
        T = [t[top], t[y], 1 - t[top] - t[y]]

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)

    if beta == 0:
        return kl(T, S)
    if beta == 1:
        return kl(S, T)
    M = [beta * ti + (1 - beta) * si for si, ti in zip(S, T)]
    return beta * kl(T, M) + (1 - beta) * kl(S, M)


def _jsd_example():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 2
    top = t.argmax(-1)
    tokens = (top + 1) % 5                      # sampled != teacher argmax: three buckets
    tokens[0, 1] = top[0, 1]                    # ... except here: two buckets
    tokens[1, 2] = top[1, 2]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return s, t, tokens, mask


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5, 0.3])
def test_jsd_top1_matches_hand_computation(beta):
    s, t, tokens, mask = _jsd_example()
    res = K.jsd_top1_loss(s, t, tokens, mask, beta=beta)
    per = torch.zeros(2, 3, dtype=torch.float64)
    for b in range(2):
        for j in range(3):
            if mask[b, j]:
                per[b, j] = _hand_bucket_kl(s[b, j].tolist(), t[b, j].tolist(), int(tokens[b, j]), beta)
    torch.testing.assert_close(res.per_token_loss, per, atol=1e-9, rtol=0)
    assert res.loss.item() == pytest.approx(float(per.sum()) / 5, abs=1e-9)


def test_jsd_top1_two_buckets_when_sampled_is_teacher_argmax():
    s, t, tokens, mask = _jsd_example()
    tokens = t.argmax(-1)                       # every position: sampled == argmax
    for beta in (0.0, 1.0):
        res = K.jsd_top1_loss(s, t, tokens, mask, beta=beta)
        sp, tp = torch.softmax(s, -1).gather(-1, tokens[..., None])[..., 0], torch.softmax(t, -1).gather(-1, tokens[..., None])[..., 0]
        P, Q = (tp, sp) if beta == 0 else (sp, tp)
        kl2 = P * torch.log(P / Q) + (1 - P) * torch.log((1 - P) / (1 - Q))
        torch.testing.assert_close(res.per_token_loss, torch.where(mask, kl2, torch.zeros_like(kl2)), atol=1e-9, rtol=0)


def test_jsd_top1_gradient_finite_with_two_buckets():
    s, t, tokens, mask = _jsd_example()
    for beta in (0.0, 0.5, 1.0):
        sl = s.clone().requires_grad_(True)
        K.jsd_top1_loss(sl, t, tokens, mask, beta=beta).loss.backward()
        assert bool(torch.isfinite(sl.grad).all()), f"beta={beta}: non-finite gradient {sl.grad}"
        assert bool((sl.grad[~mask] == 0).all())
        assert float(sl.grad.abs().sum()) > 0
