"""Top-k sparse FFN: exactly k of d_ff units active per token, the k largest, and
gradients only through them."""

from __future__ import annotations

import pytest
import torch

from emaprobe.layers import SparseFFN, active_units


@pytest.mark.parametrize(("d_ff", "k"), [(100, 6), (512, 31), (3072, 185), (10, 1)])
def test_active_units_is_ceil_six_percent(d_ff, k):
    assert active_units(0.06, d_ff) == k


def test_exactly_k_units_active_and_they_are_the_largest():
    ffn = SparseFFN(16, 200, 16, k=active_units(0.06, 200))
    c = torch.randn(3, 11, 16)
    h = ffn.hidden(c)  # (3, 11, 200)
    assert ffn.k == 12
    assert ((h != 0).sum(-1) == 12).all()
    dense = torch.relu(ffn.up(c))
    kth = dense.topk(12, dim=-1).values[..., -1:]
    torch.testing.assert_close(h, torch.where(dense >= kth, dense, torch.zeros_like(dense)))


def test_gradients_reach_only_the_kept_units():
    ffn = SparseFFN(8, 50, 8, k=3, act="gelu")
    c = torch.randn(1, 1, 8)
    ffn(c).sum().backward()
    kept = ffn.hidden(c)[0, 0] != 0
    rows_with_grad = ffn.up.weight.grad.abs().sum(1) > 0
    assert torch.equal(rows_with_grad, kept)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="unknown activation 'tanh'.*'relu'"):
        SparseFFN(4, 10, 4, k=2, act="tanh")
    with pytest.raises(ValueError, match=r"k must lie in \[1, d_ff=10\]"):
        SparseFFN(4, 10, 4, k=11)


@pytest.mark.parametrize("impl", ["dense", "gather"])
def test_impl_changes_no_parameter_and_loads_any_checkpoint(impl):
    torch.manual_seed(0)
    ref = SparseFFN(37, 101, 29, k=7, impl="dense")
    ffn = SparseFFN(37, 101, 29, k=7, impl=impl)
    assert list(ffn.state_dict()) == ["up.weight", "down.weight"]
    ffn.load_state_dict(ref.state_dict())
    c = torch.randn(3, 5, 37)
    torch.testing.assert_close(ffn(c), ref(c))
    assert f"impl={impl}" in repr(ffn)


def test_unknown_impl_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown FFN impl 'sparse'; choose one of \['dense', 'gather', 'mask', 'auto'\]"):
        SparseFFN(4, 10, 4, k=2, impl="sparse")
