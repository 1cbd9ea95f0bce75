"""topk_ffn: every implementation against the dense masked reference, values and the
gradients to c, W1 and W2, on odd sizes; the impl registry's names and errors."""

from __future__ import annotations

import pytest
import torch

from emaprobe.ops import FFN_IMPLS, available_ffn_impls, naive_topk_ffn, resolve_ffn_impl, topk_ffn

D_IN, D_FF, D_OUT = 37, 101, 29
IMPLS = sorted(FFN_IMPLS) + ["auto"]


def _inputs(lead, dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(*lead, D_IN, generator=gen, dtype=torch.float64)
    w_up = torch.randn(D_FF, D_IN, generator=gen, dtype=torch.float64) / D_IN**0.5
    w_down = torch.randn(D_OUT, D_FF, generator=gen, dtype=torch.float64) / D_FF**0.5
    gy = torch.randn(*lead, D_OUT, generator=gen, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_() for t in (c, w_up, w_down)], gy.to(device, dtype)


def _value_and_grads(fn, c, w_up, w_down, gy):
    y = fn(c, w_up, w_down)
    return (y, *torch.autograd.grad(y, (c, w_up, w_down), gy))


@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("k", [1, 7, D_FF], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("lead", [(3, 5), (1,), ()], ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("impl", IMPLS)
def test_topk_ffn_vs_naive_float64(impl, lead, k, act):
    (c, w_up, w_down), gy = _inputs(lead, torch.float64)
    got = _value_and_grads(lambda *w: topk_ffn(*w, k, act, impl), c, w_up, w_down, gy)
    ref = _value_and_grads(lambda *w: naive_topk_ffn(*w, k, act), c, w_up, w_down, gy)
    for name, g, r in zip(("y", "dc", "dW1", "dW2"), got, ref):
        assert g.shape == r.shape and g.dtype == torch.float64, name
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_ffn_float32_vs_float64_reference(impl):
    (c, w_up, w_down), gy = _inputs((3, 5), torch.float32, seed=1)
    got = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", impl), c, w_up, w_down, gy)
    ref = _value_and_grads(
        lambda *w: naive_topk_ffn(*w, 7, "relu"),
        *(t.detach().double().requires_grad_() for t in (c, w_up, w_down)),
        gy.double(),
    )
    for name, g, r in zip(("y", "dc", "dW1", "dW2"), got, ref):
        assert g.dtype == torch.float32, name
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5, msg=name)


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_topk_ffn_bfloat16_matches_dense_bfloat16(impl, device):
    # bf16 rounding can change which units win, so compare against the dense form on the
    # same bf16 activations (identical selection), to bf16 accuracy. On CUDA this takes the
    # dense-GEMM path for dvals (embedding_bag has no bf16 per-weight backward there).
    (c, w_up, w_down), gy = _inputs((3, 5), torch.bfloat16, seed=2, device=device)
    got = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", impl), c, w_up, w_down, gy)
    ref = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", "dense"), c, w_up, w_down, gy)
    for name, g, r in zip(("y", "dc", "dW1", "dW2"), got, ref):
        assert g.dtype == torch.bfloat16, name
        torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_topk_ffn_under_autocast_matches_dense(impl, device):
    """float32 weights under bf16 autocast: every form computes in bf16, as F.linear would."""
    (c, w_up, w_down), gy = _inputs((3, 5), torch.float32, seed=3, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", impl), c, w_up, w_down, gy)
        ref = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", "dense"), c, w_up, w_down, gy)
    assert got[0].dtype == ref[0].dtype == torch.bfloat16
    for name, g, r in zip(("y", "dc", "dW1", "dW2"), got, ref):
        assert g.dtype == r.dtype, name
        torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=2e-2, msg=name)


def test_vals_gradient_through_the_dense_fallback_matches(monkeypatch):
    """The path CUDA bf16 takes (dvals = (dy W2) at idx), forced on CPU, against the reference."""
    import emaprobe.ops.sparse_ffn as sf

    monkeypatch.setattr(sf, "_sddmm_ok", lambda t: False)
    monkeypatch.setattr(sf, "_bag_weight_grad_ok", lambda t: False)
    (c, w_up, w_down), gy = _inputs((3, 5), torch.float64, seed=4)
    got = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", "gather"), c, w_up, w_down, gy)
    ref = _value_and_grads(lambda *w: naive_topk_ffn(*w, 7, "relu"), c, w_up, w_down, gy)
    for name, g, r in zip(("y", "dc", "dW1", "dW2"), got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12, msg=name)


def test_gather_touches_only_kept_columns_of_w2():
    (c, w_up, w_down), gy = _inputs((4,), torch.float64, seed=4)
    y = topk_ffn(c, w_up, w_down, 3, "gelu", "gather")
    (g_down,) = torch.autograd.grad(y, w_down, gy)
    kept = torch.zeros(D_FF, dtype=torch.bool)
    kept[torch.nn.functional.gelu(c @ w_up.t()).topk(3, dim=-1).indices.flatten()] = True
    assert torch.equal(g_down.abs().sum(0) > 0, kept)


def test_auto_picks_by_device_and_k():
    assert resolve_ffn_impl("auto", torch.device("cpu"), 7, D_FF) == "gather"
    assert resolve_ffn_impl("auto", torch.device("cuda"), 7, D_FF) == "dense"  # no GPU needed to resolve
    assert resolve_ffn_impl("auto", torch.device("cpu"), D_FF, D_FF) == "dense"  # no zeros to skip
    assert resolve_ffn_impl("gather", torch.device("cuda"), 7, D_FF) == "gather"  # an explicit name is kept


def test_unknown_impl_is_a_named_error():
    (c, w_up, w_down), _ = _inputs((2,), torch.float32)
    assert available_ffn_impls() == ["dense", "gather", "auto"]
    with pytest.raises(ValueError, match=r"unknown FFN impl 'sparse'; choose one of \['dense', 'gather', 'auto'\]"):
        topk_ffn(c, w_up, w_down, 3, impl="sparse")
    with pytest.raises(ValueError, match=r"k must lie in \[1, d_ff=101\]"):
        topk_ffn(c, w_up, w_down, 0)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        topk_ffn(c, w_up, w_down, 3, act="tanh")
