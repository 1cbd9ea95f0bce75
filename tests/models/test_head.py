"""The tied output head: the padded product gives F.linear's values and gradients, as a view of
rows padded to a multiple of HEAD_ROWS; models train on it on CUDA and use the plain product elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emaprobe.models import build_model, resolve_config
from emaprobe.models import common
from emaprobe.models.common import HEAD_ROWS, padded_linear, tied_logits
from emaprobe.ops import cross_entropy


@pytest.mark.parametrize("V,multiple", [(101, 64), (128, 64), (7, 8), (1, 64)])
def test_padded_linear_equals_linear_values_and_gradients(V, multiple):
    g = torch.Generator().manual_seed(V)
    h = torch.randn(3, 5, 13, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, 13, generator=g, dtype=torch.float64, requires_grad=True)
    got = padded_linear(h, w, multiple)
    ref = F.linear(h, w)
    assert got.shape == ref.shape and got.stride(-2) == -(-V // multiple) * multiple and got.stride(-1) == 1
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, (h, w), gy), torch.autograd.grad(ref, (h, w), gy)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_tied_logits_is_plain_on_cpu_and_without_gradients():
    h, w = torch.randn(2, 4, 8), torch.randn(101, 8)
    assert tied_logits(h, w).is_contiguous()
    assert torch.equal(tied_logits(h, w), F.linear(h, w))


GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["spen-tiny", "gpt-tiny"])
@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_models_train_on_the_padded_head_on_cuda_with_the_plain_heads_values(gpu, name, monkeypatch):
    """With gradients on CUDA the logits are a view of rows padded to HEAD_ROWS (their gradient GEMMs
    then see aligned rows); the values and every parameter's gradient are the plain head's."""
    torch.manual_seed(0)
    model = build_model(resolve_config(name)).cuda()
    V = model.config.vocab_size
    idx = torch.randint(0, V, (2, 37), device="cuda")
    logits, _ = model(idx)
    assert logits.stride(-2) == -(-V // HEAD_ROWS) * HEAD_ROWS
    with torch.no_grad():
        assert model(idx)[0].is_contiguous()
    grads = torch.autograd.grad(logits.square().mean(), list(model.parameters()))
    monkeypatch.setattr(common, "tied_logits", F.linear)  # the plain head, with gradients
    plain, _ = model(idx)
    assert plain.is_contiguous()
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(plain.square().mean(), list(model.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["spen-tiny", "gpt-tiny"])
@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_model_loss_on_cuda_is_the_loss_of_its_logits(gpu, name):
    """``model.loss`` (the head and the fused loss in one op) against the torch loss of ``model(idx)``'s
    logits under bf16 autocast, as training runs: the loss and every parameter's gradient."""
    torch.manual_seed(0)
    model = build_model(resolve_config(name)).cuda()
    V = model.config.vocab_size
    idx, y = torch.randint(0, V, (2, 2, 37), device="cuda").unbind(0)
    with torch.autocast("cuda", torch.bfloat16):
        loss = model.loss(idx, y)
        ref = cross_entropy(model(idx)[0], y, impl="torch")
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2 * b.abs().max().item())
