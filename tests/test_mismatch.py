"""The rollout-vs-trainer mismatch metrics (iwopd_kit.alignment.mismatch) against numbers computed by hand.

The tiny batch: three pooled tokens with Δ = trainer - rollout = 0, +ln 2, -ln 2 (ρ = 1, 2, 1/2), plus a
masked-out token and a missing (NaN) rollout value that must not count. By hand:
token_mult_prob_error = (1 + 2 + 2) / 3 = 5/3; k3 = mean(ρ - 1 - Δ) = (0 + (1 - ln 2) + (-1/2 + ln 2)) / 3 = 1/6;
mean |Δ| = 2 ln 2 / 3, max |Δ| = ln 2; ρ: mean 7/6, min 1/2, max 2; mean ρ² = (1 + 4 + 1/4) / 3 = 7/4, so
ESS = (7/6)² / (7/4) = 7/9 and χ² = 3/4.
"""

from __future__ import annotations

import math

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.alignment.mismatch import MISMATCH_KEYS, abs_delta_quantiles, mismatch_metrics, pooled_delta

LN2 = math.log(2.0)
NAN = float("nan")
ROLLOUT = [[-1.0, -1.5, -0.5, -3.0], [-0.7, NAN, -2.0, -2.0]]
TRAINER = [[-1.0, -1.5 + LN2, -3.0, -9.0], [-0.7 - LN2, -0.2, -1.0, -1.0]]
MASK = [[True, True, False, False], [True, True, False, False]]

GOLDEN = {
    "mismatch/token_mult_prob_error": 5 / 3,
    "mismatch/k3_kl": 1 / 6,
    "mismatch/logp_abs_diff_mean": 2 * LN2 / 3,
    "mismatch/logp_abs_diff_max": LN2,
    "mismatch/is_ratio_mean": 7 / 6,
    "mismatch/is_ratio_min": 0.5,
    "mismatch/is_ratio_max": 2.0,
    "mismatch/is_ess": 7 / 9,
    "mismatch/chi2_token": 0.75,
}


def test_golden_numbers_on_a_tiny_batch():
    m = mismatch_metrics(torch.tensor(TRAINER, dtype=torch.float64), torch.tensor(ROLLOUT, dtype=torch.float64), torch.tensor(MASK))
    assert tuple(m) == MISMATCH_KEYS == tuple(GOLDEN)
    for k, v in GOLDEN.items():
        assert m[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    # the same from plain lists, and exported at the top level
    assert K.mismatch_metrics(TRAINER, ROLLOUT, MASK) == m


def test_masked_and_missing_tokens_do_not_count():
    d = pooled_delta(TRAINER, ROLLOUT, MASK)
    assert sorted(d.tolist()) == pytest.approx(sorted([0.0, LN2, -LN2]))
    everything = mismatch_metrics(TRAINER, ROLLOUT)            # no mask: the far-off masked tokens count
    assert everything["mismatch/logp_abs_diff_max"] == pytest.approx(6.0)


def test_identical_series_have_no_mismatch():
    x = torch.tensor([[-0.1, -2.0, -0.01]])
    m = mismatch_metrics(x, x.clone(), None)
    assert m["mismatch/k3_kl"] == 0 and m["mismatch/chi2_token"] == 0 and m["mismatch/logp_abs_diff_max"] == 0
    assert m["mismatch/token_mult_prob_error"] == m["mismatch/is_ess"] == m["mismatch/is_ratio_mean"] == 1


def test_k3_is_accurate_for_tiny_gaps():
    # rho - 1 - delta ~ delta^2 / 2; a naive exp(d) - 1 - d in float32 would be pure rounding at 1e-6
    d = 1e-6
    m = mismatch_metrics([[-1.0 + d]], [[-1.0]])
    assert m["mismatch/k3_kl"] == pytest.approx(d * d / 2, rel=1e-3)


def test_quantiles():
    q = abs_delta_quantiles(torch.tensor([0.0, 1.0, -2.0, 3.0, -4.0]), (0.5, 1.0))
    assert q == {"p50": 2.0, "p100": 4.0}


def test_bad_input_says_what_was_expected():
    with pytest.raises(ValueError, match="same"):
        mismatch_metrics([[-1.0, -1.0]], [[-1.0]])
    with pytest.raises(ValueError, match="mask"):
        mismatch_metrics([[-1.0]], [[-1.0]], [[True, False]])
    with pytest.raises(ValueError, match="no valid token"):
        mismatch_metrics([[-1.0]], [[NAN]])
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        mismatch_metrics(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))


def test_mean_standard_error_over_chunks_equals_the_one_pass_formula(monkeypatch):
    import math

    import iwopd_kit.alignment.mismatch as M

    d = torch.randn(1001, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.05
    fn = lambda x: torch.expm1(x) - x  # noqa: E731
    want = float(fn(d).std()) / math.sqrt(d.numel())
    monkeypatch.setattr(M, "CHUNK", 64)                 # 16 chunks, the last one short
    assert M.mean_standard_error(d, fn) == pytest.approx(want, rel=1e-9)
    assert M.mean_standard_error(d[:1], fn) == math.inf
