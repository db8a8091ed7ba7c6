"""The fused sampled-log-prob path (used above FUSED_MIN_ELEMENTS) against a float64 reference."""

from __future__ import annotations

import pytest
import torch

import iwopd_kit as K


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.8])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_fused_matches_log_softmax_gather_values_and_grads(temperature, chunk):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 5, 11, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (3, 5), generator=g)
    w = torch.randn(3, 5, dtype=torch.float64, generator=g)
    got = K.sampled_logprobs(z, y, temperature, chunk_size=chunk, fused=True)
    (g_got,) = torch.autograd.grad((w * got).sum(), z)
    ref = torch.log_softmax(z / temperature, -1).gather(-1, y[..., None]).squeeze(-1)
    (g_ref,) = torch.autograd.grad((w * ref).sum(), z)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    assert torch.allclose(g_got, g_ref, atol=1e-12, rtol=0)


def test_fused_gradcheck():
    z = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (2, 3))
    assert torch.autograd.gradcheck(lambda x: K.sampled_logprobs(x, y, 0.7, chunk_size=2, fused=True), (z,))


def test_fused_and_plain_agree_in_float32_and_without_grad():
    z = torch.randn(4, 6, 9)
    y = torch.randint(0, 9, (4, 6))
    with torch.no_grad():
        a = K.sampled_logprobs(z, y, fused=True, chunk_size=5)
        b = K.sampled_logprobs(z, y, fused=False)
    assert torch.allclose(a, b, atol=1e-6)
