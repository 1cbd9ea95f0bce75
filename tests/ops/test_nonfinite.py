"""Non-finite input stays causal: a NaN or ±Inf at step t changes no output before t.

The sequential float64 loop is the specification: every backend must be finite
exactly where the loop is finite, and equal to it there. Forward, a bad input at t
may reach outputs at t and later only. Backward (gradients flow back in time), a bad
upstream gradient at t may reach input gradients at t and earlier only.

The CPU cases run everywhere; the ``cuda`` cases (the Triton kernels, through the
public ops with ``backend="auto"``) are marked ``gpu`` and skip without a CUDA device.
"""

from __future__ import annotations

import math

import pytest
import torch

from emaprobe.ops import chunk_gla, ema_traces, linear_scan, naive_ema_traces, naive_gla, naive_linear_scan

ALPHAS = (0.5, 0.1, 0.02)
BAD = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}

def _backend(device: str) -> str:
    return "torch" if device == "cpu" else "auto"


def _poison(t: torch.Tensor, value: float, n: int, gen: torch.Generator, time_dim: int = 1) -> list[int]:
    """Put ``value`` at ``n`` random positions of ``t`` (in place); returns their time steps."""
    flat = t.view(-1)
    idx = torch.randperm(flat.numel(), generator=gen)[:n]
    flat[idx] = value
    stride = t.stride(time_dim)
    return [int(i) // stride % t.shape[time_dim] for i in idx]


def assert_same_nonfinite(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Finite exactly where the reference is finite, and equal to it there.

    Two properties, checked apart: nothing the loop keeps finite turns non-finite (a bad
    value never travels the wrong way in time), and nothing the loop makes non-finite
    comes out finite (a bad value is never silently forgotten).
    """
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    fin_out, fin_ref = torch.isfinite(out), torch.isfinite(ref)
    leaked = fin_ref & ~fin_out
    if leaked.any():
        first = leaked.nonzero()[0].tolist()
        raise AssertionError(f"{what}: non-finite where the sequential loop is finite, first at index {first}")
    forgotten = fin_out & ~fin_ref
    if forgotten.any():
        first = forgotten.nonzero()[0].tolist()
        raise AssertionError(f"{what}: finite where the sequential loop is not (forgotten), first at index {first}")
    scale = ref[fin_ref].abs().max().clamp_min(1.0) if fin_ref.any() else 1.0
    err = (out[fin_ref] - ref[fin_ref]).abs().max().item() / float(scale) if fin_ref.any() else 0.0
    assert err < 1e-4, f"{what}: max error {err:.2e} against the sequential loop where finite"


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("T", [1, 63, 500, 4097])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
def test_ema_traces_nonfinite_input_is_causal(T, bad, with_h0, device):
    gen = torch.Generator().manual_seed(T * 7 + len(bad))
    B, D = 2, 3
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    steps = _poison(x, BAD[bad], 3, gen)
    h0 = torch.randn(B, len(ALPHAS), D, generator=gen, dtype=torch.float64) if with_h0 else None
    ref = naive_ema_traces(x, ALPHAS, h0)
    dev = torch.device(device)
    out = ema_traces(
        x.float().to(dev), ALPHAS, None if h0 is None else h0.float().to(dev), backend=_backend(device)
    )
    assert_same_nonfinite(out, ref, f"ema_traces, {bad} at steps {steps}")
    t0 = min(steps)
    assert torch.isfinite(out[:, :t0]).all(), f"an output before step {t0} is non-finite"


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("T", [1, 63, 500, 4097])
@pytest.mark.parametrize("where", ["b", "a"])
def test_linear_scan_nonfinite_input_is_causal(where, T, bad, device):
    gen = torch.Generator().manual_seed(T * 11 + len(bad))
    B, F = 2, 3
    a = 0.5 + 0.5 * torch.rand(B, T, F, generator=gen, dtype=torch.float64)
    b = torch.randn(B, T, F, generator=gen, dtype=torch.float64)
    steps = _poison(a if where == "a" else b, BAD[bad], 3, gen)
    h0 = torch.randn(B, F, generator=gen, dtype=torch.float64)
    ref = naive_linear_scan(a, b, h0)
    dev = torch.device(device)
    out = linear_scan(a.float().to(dev), b.float().to(dev), h0.float().to(dev), backend=_backend(device))
    assert_same_nonfinite(out, ref, f"linear_scan, {bad} in {where} at steps {steps}")
    assert torch.isfinite(out[:, :min(steps)]).all()


def _grads(fn, inputs: list[torch.Tensor], gy: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return list(torch.autograd.grad(y, leaves, gy.to(y.dtype)))


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("T", [63, 500, 1100])
@pytest.mark.parametrize("poisoned", ["grad", "input"])
def test_ema_traces_backward_nonfinite_is_anticausal(poisoned, T, bad, device):
    """A bad upstream gradient at t reaches input gradients at t and earlier only; a bad
    input leaves the gradients as the loop computes them."""
    gen = torch.Generator().manual_seed(T * 13 + len(bad))
    B, D, S = 2, 3, len(ALPHAS)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, S, D, generator=gen, dtype=torch.float64)
    gy = torch.randn(B, T, S, D, generator=gen, dtype=torch.float64)
    steps = _poison(gy if poisoned == "grad" else x, BAD[bad], 3, gen)
    ref = _grads(lambda x, h: naive_ema_traces(x, ALPHAS, h), [x, h0], gy)
    dev = torch.device(device)
    out = _grads(
        lambda x, h: ema_traces(x, ALPHAS, h, backend=_backend(device)),
        [x.float().to(dev), h0.float().to(dev)], gy.float().to(dev),
    )
    for name, o, r in zip(("dx", "dh0"), out, ref):
        assert_same_nonfinite(o, r, f"ema_traces {name}, {bad} in the {poisoned} at steps {steps}")
    if poisoned == "grad":
        assert torch.isfinite(out[0][:, max(steps) + 1:]).all()


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("T", [63, 500, 1100])
@pytest.mark.parametrize("poisoned", ["grad", "b", "a"])
def test_linear_scan_backward_nonfinite_is_anticausal(poisoned, T, bad, device):
    gen = torch.Generator().manual_seed(T * 17 + len(bad))
    B, F = 2, 3
    a = 0.5 + 0.5 * torch.rand(B, T, F, generator=gen, dtype=torch.float64)
    b = torch.randn(B, T, F, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, F, generator=gen, dtype=torch.float64)
    gy = torch.randn(B, T, F, generator=gen, dtype=torch.float64)
    target = {"grad": gy, "a": a, "b": b}[poisoned]
    steps = _poison(target, BAD[bad], 3, gen)
    ref = _grads(naive_linear_scan, [a, b, h0], gy)
    dev = torch.device(device)
    out = _grads(
        lambda a, b, h: linear_scan(a, b, h, backend=_backend(device)),
        [a.float().to(dev), b.float().to(dev), h0.float().to(dev)], gy.float().to(dev),
    )
    for name, o, r in zip(("da", "db", "dh0"), out, ref):
        assert_same_nonfinite(o, r, f"linear_scan {name}, {bad} in {poisoned} at steps {steps}")
    if poisoned == "grad":
        assert torch.isfinite(out[1][:, max(steps) + 1:]).all()


@pytest.mark.parametrize("op", ["ema_traces", "linear_scan"])
def test_long_sequence_keeps_nonfinite_values(op, device):
    """B=1, T=65536 with few channels: on CUDA the launch cuts time into segments that warm up
    from zero, the case where a bad value far back could be forgotten. The reference is scipy's
    IIR filter in float64, which propagates NaN and Inf as the loop does."""
    import numpy as np
    import scipy.signal

    B, T, D = 1, 65536, 16
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    x[0, 1000, 5] = math.nan
    x[0, 30000, 9] = math.inf
    x[0, 65000, 11] = -math.inf
    dev = torch.device(device)
    if op == "ema_traces":
        ref = np.stack([scipy.signal.lfilter([a], [1.0, a - 1.0], x.numpy(), axis=1) for a in ALPHAS], axis=2)
        out = ema_traces(x.float().to(dev), ALPHAS, backend=_backend(device))
    else:
        decay = 0.95
        ref = scipy.signal.lfilter([1.0], [1.0, -decay], x.numpy(), axis=1)
        a = torch.full((1, 1, D), decay, dtype=torch.float32, device=dev)
        out = linear_scan(a, x.float().to(dev), backend=_backend(device))
    assert_same_nonfinite(out, torch.from_numpy(ref), f"{op}, T={T}")


# ---------------------------------------------------------------------------- gated linear attention


def _gla_inputs(gen: torch.Generator, T: int, B: int = 2, H: int = 2, K: int = 3, V: int = 4):
    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    g = -torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)  # log decays <= 0
    return {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V), "log_decay": g, "h0": r(B, H, K, V)}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("T", [1, 23, 130])
@pytest.mark.parametrize("where", ["q", "k", "v", "log_decay", "h0"])
def test_chunk_gla_nonfinite_input_is_causal(where, T, bad):
    """The chunked form multiplies whole chunks at once (0 * NaN is NaN): it must still be finite exactly
    where the token loop is, outputs and final state, with chunks and sub-chunks smaller than T."""
    gen = torch.Generator().manual_seed(T * 19 + len(bad) + len(where))
    x = _gla_inputs(gen, T)
    steps = [0] if where == "h0" else _poison(x[where], BAD[bad], 2, gen)
    ref, ref_S = naive_gla(**x)
    out, S = chunk_gla(**{n: t.float() for n, t in x.items()}, chunk_size=16, sub_chunk=4)
    assert_same_nonfinite(out, ref, f"chunk_gla, {bad} in {where} at steps {steps}")
    assert_same_nonfinite(S, ref_S, f"chunk_gla final state, {bad} in {where} at steps {steps}")
    if where != "h0":
        assert torch.isfinite(out[:, :min(steps)]).all(), f"an output before step {min(steps)} is non-finite"


def test_chunk_gla_zero_decay_is_a_reset():
    """g = -inf is a decay of exactly 0, a legitimate reset: the state forgets what came before, finite."""
    gen = torch.Generator().manual_seed(3)
    x = _gla_inputs(gen, 70)
    x["log_decay"][:, [5, 33, 34, 69]] = -math.inf
    ref, ref_S = naive_gla(**x)
    assert torch.isfinite(ref).all()
    out, S = chunk_gla(**x, chunk_size=32, sub_chunk=8)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(S, ref_S, rtol=1e-9, atol=1e-9)
    after = chunk_gla(**{**x, "q": x["q"][:, 34:], "k": x["k"][:, 34:], "v": x["v"][:, 34:],
                         "log_decay": x["log_decay"][:, 34:], "h0": torch.zeros_like(x["h0"])})[0]
    torch.testing.assert_close(out[:, 34:], after, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_linear_scan_first_decay_nonfinite_alike_at_every_length(bad):
    # from no h0, a_0 multiplies a zero state: the loop's a_0 * 0 is NaN. The torch backend skipped that product
    # in sequences of one chunk and kept it in longer ones, so the same prefix came out finite or NaN by length
    for T in (7, 64, 65, 130):
        a = torch.rand(2, T, 3) * 0.9
        a[:, 0] = bad
        b = torch.randn(2, T, 3)
        got = linear_scan(a, b, backend="torch")
        want = naive_linear_scan(a, b)
        assert torch.equal(torch.isfinite(got), torch.isfinite(want)), T
        assert not torch.isfinite(got).any(), T


@pytest.mark.parametrize("T", [1, 5, 70])
def test_a_float64_h0_keeps_the_state_float64(T):
    # the chunked forms left h0 out of the accumulation dtype: a float64 state came back float32 at T >= 1
    x = torch.randn(2, T, 3)
    h0 = torch.randn(2, 3, 3, dtype=torch.float64)
    _, state = ema_traces(x, (0.5, 0.1, 0.02), h0=h0, return_state=True, backend="torch")
    _, ref = naive_ema_traces(x, (0.5, 0.1, 0.02), h0=h0, return_state=True)
    assert state.dtype == ref.dtype == torch.float64
    a = torch.rand(2, T, 3)
    _, state = linear_scan(a, x, h0=h0[:, 0], return_state=True, backend="torch")
    assert state.dtype == torch.float64
