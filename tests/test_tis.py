"""Token-level truncated importance sampling in iw_opd_loss (the authors' rollout correction)."""

from __future__ import annotations

import math

import pytest
import torch

from iwopd_kit.objective import iw_opd_loss, tis_weights

MASK = torch.tensor([[True, True, False]])
TEACHER = torch.tensor([[-2.0, -1.5, -math.inf]])     # -inf at padding is allowed
ROLLOUT = torch.tensor([[-3.0, -0.5, 0.0]])


def _student():
    return torch.tensor([[-1.0, -0.5, 0.0]], requires_grad=True)


def test_hand_computed_values_gamma_0():
    # A = teacher - rollout = [1, -1]; ratio = exp(student - rollout) = [e^2 = 7.39 -> 5, 1]
    s = _student()
    res = iw_opd_loss(s, TEACHER, MASK, rollout_logprobs=ROLLOUT, gamma=0.0, tis_threshold=5.0)
    assert float(res.loss) == pytest.approx(-(5 * 1.0 * -1.0 + 1 * -1.0 * -0.5) / 2)      # 2.25
    res.loss.backward()
    assert s.grad[0].tolist() == pytest.approx([-2.5, 0.5, 0.0])                             # -(w A tis) / N
    assert res.metrics["tis/mean_ratio"] == pytest.approx(3.0)
    assert res.metrics["tis/clipped_frac"] == pytest.approx(0.5)
    plain = iw_opd_loss(_student(), TEACHER, MASK, rollout_logprobs=ROLLOUT, gamma=0.0)
    assert float(plain.loss) == pytest.approx(0.25) and "tis/mean_ratio" not in plain.metrics


def test_hand_computed_values_gamma_half_and_unclipped():
    # w = [1.5, 1.25] (|A| = [1, 1]); threshold 10 leaves e^2 unclipped
    res = iw_opd_loss(_student(), TEACHER, MASK, rollout_logprobs=ROLLOUT, gamma=0.5, tis_threshold=10.0)
    assert float(res.loss) == pytest.approx(-(1.5 * 1.0 * math.exp(2.0) * -1.0 + 1.25 * -1.0 * 1.0 * -0.5) / 2)
    assert res.metrics["tis/clipped_frac"] == 0.0
    w = tis_weights(_student(), ROLLOUT, MASK, 10.0)
    assert w[0].tolist() == pytest.approx([math.exp(2.0), 1.0, 0.0]) and not w.requires_grad


def test_equal_to_the_plain_loss_when_rollout_is_the_trainer():
    torch.manual_seed(0)
    student = -torch.rand(4, 7) * 3
    teacher = -torch.rand(4, 7) * 3
    mask = torch.rand(4, 7) > 0.3
    for rollout in (student.clone(), None):
        a, b = student.clone().requires_grad_(), student.clone().requires_grad_()
        with_tis = iw_opd_loss(a, teacher, mask, rollout_logprobs=rollout, gamma=0.5, tis_threshold=5.0)
        plain = iw_opd_loss(b, teacher, mask, rollout_logprobs=rollout, gamma=0.5)
        with_tis.loss.backward()
        plain.loss.backward()
        assert float(with_tis.loss) == float(plain.loss)
        assert torch.equal(a.grad, b.grad)
        assert with_tis.metrics["tis/mean_ratio"] == 1.0 and with_tis.metrics["tis/clipped_frac"] == 0.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_threshold_is_named(bad):
    with pytest.raises(ValueError, match="tis_threshold must be a finite number > 0"):
        iw_opd_loss(_student(), TEACHER, MASK, rollout_logprobs=ROLLOUT, tis_threshold=bad)
