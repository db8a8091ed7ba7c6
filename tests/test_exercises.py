"""Each exercise checker passes for the worked solution (iwopd_kit.teaching.solutions) and fails, with the
first mismatch and the right hint, for the typical wrong answers and for the notebooks' stubs."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from iwopd_kit.teaching import exercises as E
from iwopd_kit.teaching import solutions as S
from iwopd_kit.objective import iw_opd_loss

CHECKS = [
    (E.check_sampled_logprobs, S.sampled_logprobs_solution),
    (E.check_offset_detector, S.best_shift_solution),
    (E.check_advantage, S.advantage_solution),
    (E.check_prefix_weights, S.prefix_weights_solution),
    (E.check_iw_opd_loss, S.iw_opd_loss_solution),
    (E.check_realign, S.realign_solution),
]


@pytest.mark.parametrize("check,solution", CHECKS, ids=lambda x: getattr(x, "__name__", ""))
def test_solution_passes(check, solution):
    res = check(solution)
    assert res.ok, res.message
    assert res.message.startswith("✓") and f"{E.N_CASES} cases" in res.message


def _fails(res, *words):
    assert not res.ok and not bool(res) and res.message.startswith("✗"), res.message
    assert "seed" in res.message, res.message
    for w in words:
        assert w in res.message, f"{w!r} not in:\n{res.message}"
    return res.message


# ------------------------------------------------------------------------------------------ 01
def _shift_again(z, y, T):
    return torch.log_softmax(z[:, :-1] / T, -1).gather(-1, y[:, 1:, None]).squeeze(-1)


def test_sampled_logprobs_next_token_off_by_one():
    msg = _fails(E.check_sampled_logprobs(_shift_again), "shape mismatch", "next-token off-by-one")
    assert "already shifted" in msg
    padded = E.check_sampled_logprobs(lambda z, y, T: F.pad(_shift_again(z, y, T), (1, 0)))
    msg = _fails(padded, "next-token off-by-one", "logits of position j - 1")
    assert re.search(r"first mismatch at row \d+, position \d+", msg)
    ahead = E.check_sampled_logprobs(
        lambda z, y, T: F.pad(torch.log_softmax(z[:, :-1] / T, -1).gather(-1, y[:, 1:, None]).squeeze(-1), (0, 1)))
    _fails(ahead, "next-token off-by-one", "score token j + 1")


def test_sampled_logprobs_stub_and_temperature():
    _fails(E.check_sampled_logprobs(lambda z, y, T: torch.zeros(y.shape)), "expected", "got 0")
    _fails(E.check_sampled_logprobs(lambda z, y, T: S.sampled_logprobs_solution(z, y, 1.0)), "temperature is missing")


# ------------------------------------------------------------------------------------------ 02
def test_offset_detector_stub_and_mistakes():
    _fails(E.check_offset_detector(lambda r, s, m: torch.zeros(r.shape[0], dtype=torch.long)), "expected shift")
    _fails(E.check_offset_detector(lambda r, s, m: -S.best_shift_solution(r, s, m)), "sign is flipped")  # the lag k = -d
    _fails(E.check_offset_detector(lambda r, s, m: S.best_shift_solution(r, s, m) + 4), "indices into the shifts tried")
    _fails(E.check_offset_detector(lambda r, s, m: S.best_shift_solution(r, s, m) + 0.5), "shifts must be integers")


# ------------------------------------------------------------------------------------------ 03
def test_advantage_mistakes():
    _fails(E.check_advantage(lambda t, r, m: (t - r) * m), "got nan", "torch.where")
    _fails(E.check_advantage(lambda t, r, m: S.advantage_solution(r, t, m)), "teacher - rollout")
    _fails(E.check_advantage(lambda t, r, m: t - r), "mask is not applied")


# ------------------------------------------------------------------------------------------ 04
def test_prefix_weights_inclusive_and_other_mistakes():
    def inclusive(a, m, gamma, eps):
        x = torch.where(m, a.abs(), torch.zeros_like(a))
        return 1 + gamma * (1 - x.cumsum(-1) / x.sum(-1, keepdim=True).clamp_min(eps))

    _fails(E.check_prefix_weights(inclusive), "inclusive prefix sum", "w_0 = 1 + gamma")
    def signed(a, m, gamma, eps):          # A instead of |A| in the running share
        x = torch.where(m, a, torch.zeros_like(a))
        return 1 + gamma * (1 - (x.cumsum(-1) - x) / x.sum(-1, keepdim=True).clamp_min(eps))

    _fails(E.check_prefix_weights(signed), "signed A")
    _fails(E.check_prefix_weights(lambda a, m, g, e: S.prefix_weights_solution(a, torch.ones_like(m), g, e)),
           "masked-out tokens count in S")


# ------------------------------------------------------------------------------------------ 05
def test_loss_sequence_mean_and_other_mistakes():
    seq = E.check_iw_opd_loss(lambda s, t, m, r, g: iw_opd_loss(s, t, m, r, gamma=g, reduction="sequence_mean").loss)
    _fails(seq, "mean over rows of per-row token means", "token mean")
    _fails(E.check_iw_opd_loss(lambda s, t, m, r, g: iw_opd_loss(s, t, m, None, gamma=g).loss), "use the rollout")
    _fails(E.check_iw_opd_loss(lambda s, t, m, r, g: iw_opd_loss(s, t, m, r, gamma=0.0).loss), "plain OPD")
    _fails(E.check_iw_opd_loss(lambda s, t, m, r, g: -iw_opd_loss(s, t, m, r, gamma=g).loss), "sign is flipped")


# ------------------------------------------------------------------------------------------ 06
def _last_d(r, m, d):
    values, _ = S.realign_solution(r, m, d)
    lengths = (~r.isnan()).sum(1, keepdim=True)
    return values, m & (torch.arange(r.shape[1])[None, :] < lengths - d[:, None])


def test_realign_mistakes():
    _fails(E.check_realign(lambda r, m, d: (r, m)), "new_mask", "mask is unchanged")
    _fails(E.check_realign(lambda r, m, d: S.realign_solution(r, m, -d)), "wrong way")
    _fails(E.check_realign(_last_d), "stored frame", "token frame")
    _fails(E.check_realign(lambda r, m, d: (r, S.realign_solution(r, m, d)[1])), "stored values, not moved")
    _fails(E.check_realign(lambda r, m, d: r), "expected a pair")
