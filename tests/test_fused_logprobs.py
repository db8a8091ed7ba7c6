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


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_logits_at_a_real_vocabulary_match_float32_within_1e3(fused):
    # [2, 64, 151936] bf16 logits at a realistic scale (std 4): the kit upcasts per chunk, so it
    # matches a float32 log_softmax + gather; a bf16 log_softmax is off by several 1e-2 nats here
    g = torch.Generator().manual_seed(3)
    z = (4 * torch.randn(2, 64, 151936, generator=g)).to(torch.bfloat16)
    y = torch.randint(0, 151936, (2, 64), generator=g)
    ref = torch.log_softmax(z.float(), -1).gather(-1, y[..., None]).squeeze(-1)
    got = K.sampled_logprobs(z, y, fused=fused, chunk_size=16)
    assert got.dtype == torch.float32
    assert float((got - ref).abs().max()) <= 1e-3
    in_bf16 = torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1).float()
    assert float((in_bf16 - ref).abs().max()) > 1e-2      # the error the upcast removes is real


def test_bf16_gradient_is_bf16_and_matches_float32():
    g = torch.Generator().manual_seed(4)
    z32 = 3 * torch.randn(3, 7, 50, generator=g)
    y = torch.randint(0, 50, (3, 7), generator=g)
    w = torch.randn(3, 7, generator=g)
    z = z32.to(torch.bfloat16).requires_grad_()
    (g_got,) = torch.autograd.grad((w * K.sampled_logprobs(z, y, 0.7, chunk_size=2, fused=True)).sum(), z)
    zr = z.detach().float().requires_grad_()
    (g_ref,) = torch.autograd.grad((w * torch.log_softmax(zr / 0.7, -1).gather(-1, y[..., None]).squeeze(-1)).sum(), zr)
    assert g_got.dtype == torch.bfloat16
    assert torch.allclose(g_got.float(), g_ref, atol=1e-2, rtol=1e-2)


def test_loss_errors_name_the_first_bad_series_row_and_position():
    # one fused check on the loss; the slow path names the token, student before teacher before rollout
    m = torch.tensor([[True, True, False], [True, True, True]])
    s = torch.full((2, 3), -1.0)
    t = torch.full((2, 3), -1.5)
    r = torch.full((2, 3), -1.2)
    t[0, 2] = float("-inf")                                   # masked out: fine
    assert torch.isfinite(K.iw_opd_loss(s, t, m, r).loss)
    for name, x, (b, j) in (("student_logprobs", s, (1, 2)), ("teacher_logprobs", t, (1, 0)),
                            ("rollout_logprobs", r, (0, 1))):
        bad = x.clone()
        bad[b, j] = float("nan")
        args = {"student_logprobs": s, "teacher_logprobs": t, "rollout_logprobs": r, name: bad}
        with pytest.raises(ValueError, match=rf"row {b}, position {j}: {name} "):
            K.iw_opd_loss(args["student_logprobs"], args["teacher_logprobs"], m, args["rollout_logprobs"])
    both = s.clone()
    both[1, 1] = float("inf")
    t2 = t.clone()
    t2[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"row 1, position 1: student_logprobs is not finite"):
        K.iw_opd_loss(both, t2, m, r)
