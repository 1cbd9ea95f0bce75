"""Property tests: the torch scans equal the sequential float64 loop on random problems.

Random shapes (lengths across the chunk sizes, 1 included), alphas in (0, 1] (1 and
tiny ones included), decays of any sign, dtypes, initial states and non-contiguous
inputs (transposed and strided views). Values and final states in every dtype,
gradients of every input in float64.
"""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from emaprobe.ops import ema_traces, linear_scan, naive_ema_traces, naive_linear_scan  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}
LENGTHS = st.one_of(st.integers(1, 70), st.sampled_from([31, 32, 33, 63, 64, 65, 127, 200, 500]))
ALPHA = st.one_of(st.floats(1e-4, 1.0), st.sampled_from([1.0, 0.5, 1e-6, 0.999]))


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """|out - ref| over |scale| (default: |ref|). The scans' values and states are compared against
    the same scan of the inputs' magnitudes: a rounding error grows with that sum, not with a
    result that cancels towards zero (a final state of 1e-4 from terms of order 1)."""
    scale = ref if scale is None else scale
    return ((out.double() - ref.double()).norm() / scale.double().norm().clamp_min(1e-30)).item()


def _layout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as ``t`` (B, T, F), laid out contiguous, transposed or strided."""
    if how == "transposed":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "strided":
        wide = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


@SETTINGS
@given(B=st.integers(1, 3), T=LENGTHS, D=st.integers(1, 5), alphas=st.lists(ALPHA, min_size=1, max_size=4),
       dtype=st.sampled_from(list(DTYPES)), with_h0=st.booleans(),
       layout=st.sampled_from(["contiguous", "transposed", "strided"]), seed=st.integers(0, 2**31))
def test_ema_traces_equals_the_loop(B, T, D, alphas, dtype, with_h0, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    x = _layout(torch.randn(B, T, D, generator=gen).to(dt), layout)
    h0 = torch.randn(B, len(alphas), D, generator=gen).to(dt).double() if with_h0 else None
    ref, ref_state = naive_ema_traces(x.double(), alphas, h0, return_state=True)
    mag, mag_state = naive_ema_traces(x.double().abs(), alphas, None if h0 is None else h0.abs(), return_state=True)
    out, state = ema_traces(x, alphas, None if h0 is None else h0.to(dt), return_state=True, backend="torch")
    assert out.shape == (B, T, len(alphas), D) and out.dtype == dt
    assert rel_err(out, ref, mag) < TOL[dt]
    assert rel_err(state, ref_state, mag_state) < min(TOL[dt], 1e-5) * 10  # the state is never kept below float32
    if dt == torch.float64:
        xr = x.detach().clone().requires_grad_()
        h0r = None if h0 is None else h0.clone().requires_grad_()
        gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        want = torch.autograd.grad(naive_ema_traces(xr, alphas, h0r), [xr] + ([h0r] if with_h0 else []), gy)
        xo = x.detach().clone().requires_grad_()
        h0o = None if h0 is None else h0.clone().requires_grad_()
        got = torch.autograd.grad(ema_traces(xo, alphas, h0o, backend="torch"), [xo] + ([h0o] if with_h0 else []), gy)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-10


@SETTINGS
@given(B=st.integers(1, 3), T=LENGTHS, F=st.integers(1, 4), dtype=st.sampled_from(list(DTYPES)),
       decay=st.sampled_from(["per-step", "fixed", "any-sign"]), with_h0=st.booleans(),
       layout=st.sampled_from(["contiguous", "transposed", "strided"]), seed=st.integers(0, 2**31))
# a final state of 1.1e-4 from 33 terms of order 1: 1.1e-4 off relative to itself in float32
@example(B=1, T=33, F=1, dtype="fp32", decay="fixed", with_h0=False, layout="contiguous", seed=334)
def test_linear_scan_equals_the_loop(B, T, F, dtype, decay, with_h0, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    if decay == "fixed":
        a = torch.rand(1, 1, F, generator=gen, dtype=torch.float64)
    else:
        a = torch.rand(B, T, F, generator=gen, dtype=torch.float64)
        if decay == "any-sign":
            a = 2.2 * a - 1.1  # |a| up to 1.1 over a few steps: growth, sign flips
            a = a.clamp(-1.0, 1.0) if T > 60 else a
    a = _layout(a.to(dt), layout) if a.shape[1] == T else a.to(dt)
    b = _layout(torch.randn(B, T, F, generator=gen).to(dt), layout)
    h0 = torch.randn(B, F, generator=gen).to(dt).double() if with_h0 else None
    ref, ref_state = naive_linear_scan(a.double(), b.double(), h0, return_state=True)
    mag, mag_state = naive_linear_scan(a.double().abs(), b.double().abs(), None if h0 is None else h0.abs(),
                                       return_state=True)
    out, state = linear_scan(a, b, None if h0 is None else h0.to(dt), return_state=True, backend="torch")
    assert out.shape == (B, T, F) and out.dtype == dt
    assert rel_err(out, ref, mag) < TOL[dt]
    assert rel_err(state, ref_state, mag_state) < min(TOL[dt], 1e-5) * 10
    if dt == torch.float64:
        leaves = [a, b] + ([h0] if with_h0 else [])
        gy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        r = [t.detach().clone().requires_grad_() for t in leaves]
        want = torch.autograd.grad(naive_linear_scan(*r[:2], r[2] if with_h0 else None), r, gy)
        o = [t.detach().clone().requires_grad_() for t in leaves]
        got = torch.autograd.grad(linear_scan(*o[:2], o[2] if with_h0 else None, backend="torch"), o, gy)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-9
