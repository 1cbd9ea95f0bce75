"""Fast scan paths against the sequential float64 reference: values, states, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from emaprobe.ops import (
    ema_step,
    ema_traces,
    gate_inputs,
    gated_scan,
    linear_scan,
    linear_scan_step,
    naive_ema_traces,
    naive_gated_scan,
    naive_linear_scan,
)

ALPHAS = (0.5, 0.1, 0.02)
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("T", [1, 63, 500, 4097])
def test_ema_traces_vs_naive(T, with_h0, dtype):
    B, D = 2, 5
    x = torch.randn(B, T, D).to(dtype)
    h0 = torch.randn(B, len(ALPHAS), D) if with_h0 else None
    ref, ref_state = naive_ema_traces(x.double(), ALPHAS, None if h0 is None else h0.double(), return_state=True)
    out, state = ema_traces(x, ALPHAS, h0, return_state=True, backend="torch")
    assert out.shape == (B, T, len(ALPHAS), D) and out.dtype == dtype
    assert state.shape == (B, len(ALPHAS), D) and state.dtype == torch.float32
    assert rel_err(out, ref) < TOL[dtype]
    assert rel_err(state, ref_state) < 1e-5  # the state never leaves float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("T", [1, 63, 500, 4097])
@pytest.mark.parametrize("decay", ["per-step", "fixed"])
def test_linear_scan_vs_naive(decay, T, with_h0, dtype):
    B, F = 3, 4
    b = torch.randn(B, T, F).to(dtype)
    a = torch.rand(B, T, F) if decay == "per-step" else torch.rand(1, 1, F)
    a = (0.5 + 0.5 * a).to(dtype)  # decays in (0.5, 1): long memory, the hard case
    h0 = torch.randn(B, F) if with_h0 else None
    ref, ref_state = naive_linear_scan(a.double(), b.double(), None if h0 is None else h0.double(), return_state=True)
    out, state = linear_scan(a, b, h0, return_state=True, backend="torch")
    assert out.shape == (B, T, F) and out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype]
    assert rel_err(state, ref_state) < 1e-5


def test_linear_scan_any_decay_sign_and_feature_rank():
    # decays outside (0, 1) and extra feature dims: nothing is logged or divided
    a = torch.randn(2, 300, 3, 2, dtype=torch.float64)
    a = a / a.abs().clamp_min(1.0)
    b = torch.randn(2, 300, 3, 2, dtype=torch.float64)
    assert rel_err(linear_scan(a, b), naive_linear_scan(a, b)) < 1e-12


def test_ema_traces_matches_scipy_lfilter():
    # the EMA is the IIR filter y_t = a x_t + (1 - a) y_{t-1}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 777, 11))
    alphas = (0.7, 0.13, 0.003)
    out = ema_traces(torch.from_numpy(x), alphas).numpy()
    for s, a in enumerate(alphas):
        ref = scipy.signal.lfilter([a], [1.0, -(1.0 - a)], x, axis=1)
        np.testing.assert_allclose(out[:, :, s], ref, rtol=1e-5, atol=1e-12)


def test_long_scan_bf16_stays_accurate():
    # float64 reference over the whole million steps from scipy's IIR filter
    T = 1_000_000
    x = torch.randn(1, T, 2).to(torch.bfloat16)
    out, state = ema_traces(x, ALPHAS, return_state=True)
    x64 = x.double().numpy()
    for s, a in enumerate(ALPHAS):
        ref = torch.from_numpy(scipy.signal.lfilter([a], [1.0, -(1.0 - a)], x64, axis=1))
        assert rel_err(out[:, :, s], ref) < 1e-2
        assert rel_err(state[:, s], ref[:, -1]) < 1e-5
    b = torch.randn(1, T, 2).to(torch.bfloat16)
    a = torch.full((1, 1, 2), 0.999, dtype=torch.bfloat16)
    h = linear_scan(a, b)
    ref = scipy.signal.lfilter([1.0], [1.0, -a[0, 0, 0].double().item()], b.double().numpy(), axis=1)
    assert rel_err(h, torch.from_numpy(ref)) < 1e-2


def test_ema_traces_gradcheck():
    x = torch.randn(2, 37, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: ema_traces(x, ALPHAS, h0, return_state=True), (x, h0))


@pytest.mark.parametrize("decay", ["per-step", "fixed", "per-channel"])
def test_linear_scan_gradcheck(decay):
    shapes = {"per-step": (2, 70, 3), "fixed": (1, 1, 3), "per-channel": (3,)}
    a = (0.3 + 0.6 * torch.rand(*shapes[decay], dtype=torch.float64)).requires_grad_()
    b = torch.randn(2, 70, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, return_state=True), (a, b, h0))


@pytest.mark.parametrize("T", [63, 500])
def test_gradients_vs_naive_float32(T):
    a = (0.5 + 0.5 * torch.rand(2, T, 4)).requires_grad_()
    b = torch.randn(2, T, 4, requires_grad=True)
    h0 = torch.randn(2, 4, requires_grad=True)
    w = torch.randn(2, T, 4)
    grads = torch.autograd.grad((linear_scan(a, b, h0) * w).sum(), (a, b, h0))
    ref = torch.autograd.grad((naive_linear_scan(a, b, h0) * w).sum(), (a, b, h0))
    for g, r in zip(grads, ref, strict=True):
        assert rel_err(g, r) < 1e-5


def test_step_form_equals_parallel():
    x = torch.randn(2, 40, 6)
    h0 = torch.randn(2, 3, 6)
    full, state = ema_traces(x, ALPHAS, h0, return_state=True)
    h = h0
    for t in range(x.shape[1]):
        h = ema_step(x[:, t], h, ALPHAS)
        torch.testing.assert_close(h, full[:, t], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, state)
    a = torch.rand(2, 40, 6)
    ys = linear_scan(a, x)
    g = None
    for t in range(x.shape[1]):
        g = linear_scan_step(a[:, t], x[:, t], g)
    torch.testing.assert_close(g, ys[:, -1], rtol=1e-5, atol=1e-6)


def test_ema_step_makes_its_coefficients_once(monkeypatch):
    """A decode step calls ema_step once a layer a token: the alphas become a tensor once per
    (alphas, device), not per call (on CUDA each was a host-to-device copy)."""
    from emaprobe.ops.triton import cache

    cache.clear()
    x, h = torch.randn(2, 5), torch.randn(2, 3, 5)
    first = ema_step(x, h, (0.5, 0.1, 0.02))
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    again = ema_step(x, h, (0.5, 0.1, 0.02))
    assert made == [] and torch.equal(first, again)
    ema_step(x, h, (0.5, 0.2, 0.02))  # other alphas: their own entry
    assert len(made) == 1
    cache.clear()


def test_streaming_in_pieces_equals_one_pass():
    x = torch.randn(2, 1000, 4)
    full = ema_traces(x, ALPHAS)
    first, state = ema_traces(x[:, :333], ALPHAS, return_state=True)
    second = ema_traces(x[:, 333:], ALPHAS, h0=state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: ema_traces(torch.randn(2, 5)), "x must have shape (B, T, D)"),
        (lambda: ema_traces(torch.ones(2, 5, 3, dtype=torch.int64)), "x must be a floating-point"),
        (lambda: ema_traces(torch.randn(2, 5, 3), alphas=(0.5, 1.5)), "alphas must lie in (0, 1]"),
        (lambda: ema_traces(torch.randn(2, 5, 3), alphas=(0.0,)), "alphas must lie in (0, 1]"),
        (lambda: ema_traces(torch.randn(2, 5, 3), alphas=()), "alphas must hold"),
        (lambda: ema_traces(torch.randn(2, 5, 3), h0=torch.randn(2, 3)), "h0 must have shape (2, 3, 3)"),
        (lambda: linear_scan(torch.rand(2, 5, 3), torch.randn(2, 4, 3)), "do not broadcast"),
        (lambda: linear_scan(torch.rand(2, 5, 3), torch.ones(2, 5, 3, dtype=torch.int32)), "b must be a floating"),
        (lambda: linear_scan(torch.rand(2, 5, 3), torch.randn(2, 5, 3), h0=torch.randn(2, 5, 3)), "h0 must have"),
        (lambda: linear_scan(torch.rand(3), torch.randn(3)), "(B, T, ...)"),
        (lambda: ema_traces(torch.randn(1, 4, 2), backend="cuda-magic"), "unknown backend 'cuda-magic'"),
        (lambda: gated_scan(torch.randn(2, 5, 3, 4), torch.randn(2, 5, 4), torch.randn(3, 4), torch.randn(3, 4)),
         "logits must have shape (B, T, 2, S, D) = (2, 5, 2, S, 4)"),
        (lambda: gated_scan(torch.randn(2, 5, 2, 3, 4), torch.randn(2, 5, 4), torch.randn(4), torch.randn(3, 4)),
         "decay_bias must have shape (S, D) = (3, 4)"),
        (lambda: gated_scan(torch.randn(2, 5, 2, 3, 4), torch.randn(2, 5), torch.randn(3, 4), torch.randn(3, 4)),
         "x must have shape (B, T, D)"),
        (lambda: gated_scan(torch.randn(2, 5, 2, 3, 4), torch.randn(2, 5, 4).long(), torch.randn(3, 4),
                            torch.randn(3, 4)), "x must be a floating-point"),
        (lambda: gated_scan(torch.randn(2, 5, 2, 3, 4), torch.randn(2, 5, 4), torch.randn(3, 4), torch.randn(3, 4),
                            h0=torch.randn(2, 4)), "h0 must have shape (2, 3, 4)"),
        (lambda: gated_scan(torch.randn(2, 5, 2, 3, 4), torch.randn(2, 5, 4), torch.randn(3, 4, device="meta"),
                            torch.randn(3, 4)), "decay_bias on meta"),
        (lambda: linear_scan(torch.rand(2, 5, 3), torch.randn(2, 5, 3, device="meta")), "one device; got a on cpu"),
        (lambda: ema_traces(torch.randn(2, 5, 3), h0=torch.randn(2, 3, 3, device="meta")), "h0 on meta"),
    ],
)
def test_bad_input_names_the_problem(call, words):
    with pytest.raises(ValueError) as err:
        call()
    assert words in str(err.value)


def test_naive_backend_and_empty_sequence():
    x = torch.randn(2, 9, 3)
    torch.testing.assert_close(ema_traces(x, backend="naive"), ema_traces(x, backend="torch"))
    out, state = ema_traces(torch.randn(2, 0, 3), return_state=True)
    assert out.shape == (2, 0, 3, 3) and torch.equal(state, torch.zeros(2, 3, 3))


@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_empty_sequence_state_has_a_longer_calls_dtype(backend):
    """T = 0 on every backend, the naive one included, and the state in the dtype a T > 0 call gives:
    float64 for float64 inputs, h0 itself (copied) when given."""
    x64 = torch.randn(2, 0, 3, dtype=torch.float64)
    h64 = torch.randn(2, 3, 3, dtype=torch.float64)
    out, state = ema_traces(x64, ALPHAS, h64, return_state=True, backend=backend)
    assert out.shape == (2, 0, 3, 3) and state.dtype == torch.float64 and torch.equal(state, h64)
    assert state.data_ptr() != h64.data_ptr()
    _, longer = ema_traces(torch.randn(2, 1, 3, dtype=torch.float64), ALPHAS, h64, return_state=True,
                           backend=backend)
    assert longer.dtype == state.dtype
    h, s = linear_scan(torch.rand(2, 0, 3), torch.randn(2, 0, 3), return_state=True, backend=backend)
    assert h.shape == (2, 0, 3) and s.dtype == torch.float32 and not s.any()
    logits, xx, bias = torch.randn(2, 0, 2, 3, 4, dtype=torch.float64), torch.randn(2, 0, 4), torch.zeros(3, 4)
    h, s = gated_scan(logits, xx, bias, bias, return_state=True, backend=backend)
    assert h.shape == (2, 0, 3, 4) and s.dtype == torch.float64


def test_step_forms_check_the_state_and_keep_float64():
    """A state of another shape no longer broadcasts into a step (a batch-1 state into a batch-3 step), an
    integer state is refused, and float64 inputs keep a float64 state, as the full-sequence ops do."""
    with pytest.raises(ValueError, match=r"h must have shape \(2, 3\)"):
        linear_scan_step(torch.rand(2, 3), torch.randn(2, 3), torch.zeros(5, 2, 3))
    with pytest.raises(ValueError, match="h must be a floating-point tensor"):
        ema_step(torch.randn(2, 3), torch.zeros(2, 3, 3, dtype=torch.long), ALPHAS)
    x = torch.randn(2, 30, 4, dtype=torch.float64)
    a = torch.rand(2, 30, 4, dtype=torch.float64)
    full, last = ema_traces(x, ALPHAS, return_state=True)
    h = g = None
    for t in range(x.shape[1]):
        h = ema_step(x[:, t], h, ALPHAS)
        g = linear_scan_step(a[:, t], x[:, t], g)
    assert h.dtype == g.dtype == torch.float64
    torch.testing.assert_close(h, last, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, naive_linear_scan(a, x)[:, -1], rtol=1e-12, atol=1e-12)


def test_gpu_backend_request_on_cpu_falls_back_with_a_warning():
    x = torch.randn(1, 10, 2)
    with pytest.warns(RuntimeWarning, match="triton"):
        out = ema_traces(x, backend="triton")
    torch.testing.assert_close(out, ema_traces(x, backend="torch"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_backend_on_cuda_matches_naive():
    x = torch.randn(2, 777, 33, device="cuda")
    ref = naive_ema_traces(x.double().cpu(), ALPHAS)
    assert rel_err(ema_traces(x, ALPHAS).cpu(), ref) < 1e-5


def test_a_registered_backend_serves_both_ops_through_one_contract(monkeypatch):
    """A backend is two differentiable ops, ``(a, b, h0, out_dtype, state) -> (h, h_T)`` and
    ``(x, alphas, h0, state) -> (h, h_T)``; the public functions call them and nothing else,
    and tell them whether h_T is wanted (``return_state``)."""
    from emaprobe.ops import scan

    calls = []

    def lin(a, b, h0, out_dtype, state):
        calls.append(("linear_scan", state))
        h, hT = naive_linear_scan(a, b, h0, return_state=True)
        return h.to(out_dtype), hT

    def ema(x, alphas, h0, state):
        calls.append(("ema_traces", alphas, state))
        h, hT = naive_ema_traces(x, alphas, h0, return_state=True)
        return h.to(x.dtype), hT

    monkeypatch.setitem(scan.BACKENDS, "reference", scan.ScanBackend("reference", linear_scan=lin, ema_traces=ema))
    x = torch.randn(2, 7, 3, requires_grad=True)
    y, state = ema_traces(x, ALPHAS, return_state=True, backend="reference")
    y.sum().backward()
    assert x.grad is not None and state.shape == (2, 3, 3)
    a, b = torch.rand(2, 7, 3), torch.randn(2, 7, 3)
    torch.testing.assert_close(linear_scan(a, b, backend="reference"), linear_scan(a, b, backend="torch"))
    assert calls == [("ema_traces", tuple(ALPHAS), True), ("linear_scan", False)]


def test_a_backend_that_fails_to_import_stays_a_known_name(monkeypatch):
    """Asking twice for a kernel backend that cannot load falls back the same way both times;
    the name never turns into an unknown one (an order-dependent failure before)."""
    from emaprobe.ops import scan

    def broken():
        raise ImportError("no such kernel library")

    monkeypatch.setitem(scan._LAZY_BACKENDS, "broken", broken)
    monkeypatch.setattr(scan, "_UNAVAILABLE", set())
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="'broken' is unavailable"):
        assert scan.resolve_backend("broken", cuda) == "torch"
    assert scan.resolve_backend("broken", cuda) == "torch"
    assert "broken" in scan.available_backends()


def test_auto_keeps_float64_off_the_float32_kernels(monkeypatch):
    """``auto`` on a CUDA tensor takes a kernel, except for float64: the kernels accumulate in
    float32, and the backend contract keeps float64 inputs in float64 (the torch scan)."""
    from emaprobe.ops import scan

    kernel = scan.ScanBackend("kernel", linear_scan=None, ema_traces=None, needs_cuda=True)
    monkeypatch.setattr(scan, "_LAZY_BACKENDS", {"kernel": lambda: kernel})  # the only kernel, Triton or not
    monkeypatch.setattr(scan, "_UNAVAILABLE", set())
    monkeypatch.setattr(scan, "BACKENDS", {"torch": scan.BACKENDS["torch"]})  # none loaded by earlier tests
    cuda = torch.device("cuda")
    assert scan.resolve_backend("auto", cuda, torch.float32) == "kernel"
    assert scan.resolve_backend("auto", cuda, torch.bfloat16) == "kernel"
    assert scan.resolve_backend("auto", cuda, torch.float64) == "torch"
    assert scan.resolve_backend("kernel", cuda, torch.float64) == "kernel"  # asked for by name: taken
    assert scan.resolve_backend("auto", torch.device("cpu"), torch.float32) == "torch"


def _gated_case(B, T, S, D, dtype=torch.float32, with_h0=False, device="cpu"):
    g = torch.Generator().manual_seed(B * 1000 + T)
    logits = (2 * torch.randn(B, T, 2, S, D, generator=g)).to(device=device, dtype=dtype)
    x = torch.randn(B, T, D, generator=g).to(device=device, dtype=dtype)
    biases = [torch.randn(S, D, generator=g).to(device) for _ in range(2)]
    h0 = torch.randn(B, S, D, generator=g).to(device) if with_h0 else None
    return logits, x, *biases, h0


def test_gate_inputs_are_the_selective_recurrence():
    """a_t = sigmoid(l_a + beta_a), b_t = (1 - a_t) sigmoid(l_i + beta_i) x_t, one step written out."""
    logits, x, ba, bg, _ = _gated_case(2, 3, 2, 4)
    a, b = gate_inputs(logits, x, ba, bg)
    la, li = logits[1, 2, 0, 1, 3] + ba[1, 3], logits[1, 2, 1, 1, 3] + bg[1, 3]
    want_a = 1 / (1 + torch.exp(-la))
    torch.testing.assert_close(a[1, 2, 1, 3], want_a)
    torch.testing.assert_close(b[1, 2, 1, 3], (1 - want_a) / (1 + torch.exp(-li)) * x[1, 2, 3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("T", [1, 63, 500])
def test_gated_scan_vs_naive(T, with_h0, dtype):
    logits, x, ba, bg, h0 = _gated_case(2, T, 3, 5, dtype, with_h0)
    ref, ref_state = naive_gated_scan(logits.double(), x.double(), ba.double(), bg.double(),
                                      None if h0 is None else h0.double(), return_state=True)
    out, state = gated_scan(logits, x, ba, bg, h0, return_state=True, backend="torch")
    assert out.shape == (2, T, 3, 5) and out.dtype == dtype
    assert state.shape == (2, 3, 5) and state.dtype == torch.float32
    assert rel_err(out, ref) < TOL[dtype]
    assert rel_err(state, ref_state) < 1e-5
    torch.testing.assert_close(naive_gated_scan(logits, x, ba, bg, h0), gated_scan(logits, x, ba, bg, h0,
                                                                                  backend="naive"))


def test_gated_scan_gradients_vs_naive():
    leaves = [t.double().requires_grad_() for t in _gated_case(2, 37, 3, 5, with_h0=True)]
    torch.autograd.gradcheck(lambda *t: gated_scan(*t, return_state=True, backend="torch"), leaves)
    out, state = gated_scan(*leaves, return_state=True, backend="torch")
    gy, gs = torch.randn_like(out), torch.randn_like(state)
    got = torch.autograd.grad((out, state), leaves, (gy, gs))
    ref, ref_state = naive_gated_scan(*leaves, return_state=True)
    want = torch.autograd.grad((ref, ref_state), leaves, (gy, gs))
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want)


def test_gated_scan_empty_sequence_and_a_backend_without_a_fused_form(monkeypatch):
    """T = 0 gives an empty h and the initial state; a backend with no ``gated_scan`` of its own runs
    the gates apart and its ``linear_scan`` with x's dtype."""
    from emaprobe.ops import scan

    logits, x, ba, bg, _ = _gated_case(2, 0, 3, 4)
    out, state = gated_scan(logits, x, ba, bg, return_state=True)
    assert out.shape == (2, 0, 3, 4) and torch.equal(state, torch.zeros(2, 3, 4))
    seen = []

    def lin(a, b, h0, out_dtype, state):
        seen.append(out_dtype)
        h, hT = naive_linear_scan(a, b, h0, return_state=True)
        return h.to(out_dtype), hT

    monkeypatch.setitem(scan.BACKENDS, "composed", scan.ScanBackend("composed", linear_scan=lin, ema_traces=None))
    logits, x, ba, bg, _ = _gated_case(2, 9, 3, 4, torch.bfloat16)
    torch.testing.assert_close(gated_scan(logits, x, ba, bg, backend="composed"), gated_scan(logits, x, ba, bg))
    assert seen == [torch.bfloat16]
