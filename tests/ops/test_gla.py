"""Gated linear attention: chunked and step forms against the sequential float64 reference,
values, final state and every gradient, on odd shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emaprobe.ops import (
    GLA_BACKENDS,
    GLABackend,
    available_gla_backends,
    chunk_gla,
    gated_linear_attention,
    gla_step,
    naive_gla,
    register_gla_backend,
    resolve_gla_backend,
)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-5}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def make_inputs(B, T, H, K, V, dtype=torch.float32, with_h0=True, strength=1.0, seed=0):
    """Random q, k, v, log decays in GLA's range (logsigmoid(z) / 4: slow and fast channels), h0."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen) / K**0.5
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(2.0 * torch.randn(B, T, H, K, generator=gen) + 2.0) * strength / 4
    h0 = torch.randn(B, H, K, V, generator=gen) if with_h0 else None
    cast = [t.to(dtype) for t in (q, k, v, g)]
    return (*cast, None if h0 is None else h0.to(dtype))


SHAPES = [  # (B, T, H, K, V)
    (2, 1, 3, 5, 7),
    (1, 63, 1, 4, 3),
    (2, 63, 3, 5, 7),
    (1, 500, 3, 5, 7),
]
IDS = ["B{}-T{}-H{}-K{}-V{}".format(*s) for s in SHAPES]


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["fp64", "fp32", "bf16"])
def test_chunk_gla_vs_naive(dtype, shape, with_h0):
    q, k, v, g, h0 = make_inputs(*shape, dtype=dtype, with_h0=with_h0)
    # the reference runs in float64 on exactly the (rounded) inputs the fast path sees
    ref, ref_state = naive_gla(q.double(), k.double(), v.double(), g.double(), None if h0 is None else h0.double())
    out, state = chunk_gla(q, k, v, g, h0, chunk_size=32, sub_chunk=8)
    B, T, H, K, V = shape
    assert out.shape == (B, T, H, V) and out.dtype == dtype
    assert state.shape == (B, H, K, V) and state.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # bf16 only rounds the output: the arithmetic is float32, so compare before that rounding
    tol = 1e-2 if dtype == torch.bfloat16 else TOL[dtype]
    assert rel_err(out, ref) < tol
    assert rel_err(state, ref_state) < TOL[dtype]


@pytest.mark.parametrize(("chunk_size", "sub_chunk"), [(64, 16), (16, 16), (8, 1), (12, 4)])
def test_chunk_gla_any_chunking(chunk_size, sub_chunk):
    q, k, v, g, h0 = make_inputs(2, 77, 2, 3, 4, dtype=torch.float64)
    ref, ref_state = naive_gla(q, k, v, g, h0)
    out, state = chunk_gla(q, k, v, g, h0, chunk_size=chunk_size, sub_chunk=sub_chunk)
    assert rel_err(out, ref) < 1e-12 and rel_err(state, ref_state) < 1e-12


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("shape", [(2, 1, 3, 5, 7), (1, 63, 2, 3, 5), (1, 130, 1, 3, 2)], ids=lambda s: "T{}".format(s[1]))
def test_chunk_gla_gradients_vs_naive(shape, with_h0):
    inputs = make_inputs(*shape, dtype=torch.float64, with_h0=with_h0)
    names = ["q", "k", "v", "log_decay", "h0"]
    grads = {}
    for fn in (naive_gla, lambda *a: chunk_gla(*a, chunk_size=32, sub_chunk=8)):
        leaves = [None if t is None else t.clone().requires_grad_(True) for t in inputs]
        o, S = fn(*leaves)
        gen = torch.Generator().manual_seed(1)
        # a random cotangent on both outputs: every gradient path, including through S_T
        loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
        loss = loss + (S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
        loss.backward()
        for name, leaf in zip(names, leaves):
            if leaf is not None:
                grads.setdefault(name, []).append(leaf.grad)
    assert set(grads) == set(names[: 4 + with_h0])
    for name, (ref, out) in grads.items():
        assert rel_err(out, ref) < 1e-10, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(2, 63, 3, 5, 7), (1, 1000, 2, 16, 9)], ids=["B2-T63", "B1-T1000"])
def test_chunk_gla_on_cuda_carries_chunks_through_the_triton_scan(shape):
    """On CUDA the chunk-to-chunk state goes through ``linear_scan``'s Triton kernels (float32,
    a decay broadcast over V): values, state and every gradient against float64 on the CPU."""
    inputs = make_inputs(*shape, dtype=torch.float64)
    results = []
    for dev, dtype in (("cpu", torch.float64), ("cuda", torch.float32)):
        leaves = [t.detach().to(dev, dtype).requires_grad_(True) for t in inputs]
        fn = naive_gla if dev == "cpu" else (lambda *a: chunk_gla(*a, chunk_size=32, sub_chunk=8))
        o, S = fn(*leaves)
        (o.square().sum() + S.sum()).backward()
        results.append([o, S, *(t.grad for t in leaves)])
    for name, ref, out in zip(["o", "S", "q", "k", "v", "log_decay", "h0"], *results):
        assert rel_err(out.cpu(), ref) < 1e-5, name


def test_chunk_gla_float32_gradients_close_to_float64():
    inputs = make_inputs(2, 100, 2, 4, 3, dtype=torch.float64)
    grads = []
    for dtype in (torch.float64, torch.float32):
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
        o, S = chunk_gla(*leaves)
        (o.sum() + S.sum()).backward()
        grads.append([leaf.grad for leaf in leaves])
    for ref, out in zip(*grads):
        assert out.dtype == torch.float32 and rel_err(out, ref) < 1e-5


def test_chunk_gla_under_autocast_keeps_the_state_in_float32():
    """Under bf16 autocast the products round their operands to bf16 (the module docstring):
    the output stays close to the reference, and the state and output keep float32."""
    q, k, v, g, h0 = make_inputs(2, 100, 2, 16, 24, dtype=torch.float32)
    ref, ref_state = naive_gla(q.double(), k.double(), v.double(), g.double(), h0.double())
    plain, _ = chunk_gla(q, k, v, g, h0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = chunk_gla(q, k, v, g, h0)
    assert out.dtype == state.dtype == torch.float32
    assert rel_err(plain, ref) < 1e-5 < rel_err(out, ref) < 1e-2
    assert rel_err(state, ref_state) < 1e-2


def test_chunk_gla_strong_decays_stay_finite():
    # A gate that erases its memory: per-step log decays down to about -300. GLA's one-level
    # form, (q exp(b)) (k exp(-b))^T, overflows float32 here; every exponent here is <= 0.
    q, k, v, g, h0 = make_inputs(2, 200, 2, 4, 3, dtype=torch.float64, strength=200.0)
    assert g.min() < -100
    ref, ref_state = naive_gla(q, k, v, g, h0)
    out, state = chunk_gla(q.float(), k.float(), v.float(), g.float(), h0.float())
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    # exponents are differences of log decays as large as 16 * 300: float32 keeps eps * that
    assert rel_err(out, ref) < 1e-3 and rel_err(state, ref_state) < 1e-3
    leaves = [t.float().requires_grad_(True) for t in (q, k, v, g, h0)]
    o, S = chunk_gla(*leaves)
    (o.sum() + S.sum()).backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_no_decay_is_causal_linear_attention():
    q, k, v, _, _ = make_inputs(1, 40, 2, 3, 4, dtype=torch.float64, with_h0=False)
    out, _ = chunk_gla(q, k, v, torch.zeros_like(q))
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril()  # (B, H, T, T), no softmax, no decay
    torch.testing.assert_close(out, torch.einsum("bhts,bshv->bthv", scores, v))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_gla_step_reproduces_the_sequence(dtype):
    q, k, v, g, h0 = make_inputs(2, 45, 3, 5, 7, dtype=dtype)
    ref, ref_state = chunk_gla(q, k, v, g, h0)
    state, outs = h0, []
    for t in range(q.shape[1]):
        o_t, state = gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state)
        outs.append(o_t)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(torch.stack(outs, 1), ref) < tol and rel_err(state, ref_state) < tol
    assert state.dtype == ref_state.dtype


def test_split_sequence_continues_from_the_state():
    q, k, v, g, h0 = make_inputs(2, 90, 2, 3, 4)
    ref, ref_state = chunk_gla(q, k, v, g, h0)
    o1, s = chunk_gla(q[:, :37], k[:, :37], v[:, :37], g[:, :37], h0)
    o2, s = chunk_gla(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], s)
    torch.testing.assert_close(torch.cat([o1, o2], 1), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, ref_state, rtol=1e-5, atol=1e-5)


def test_public_op_dispatch():
    q, k, v, g, h0 = make_inputs(1, 20, 2, 3, 4)
    o = gated_linear_attention(q, k, v, g, h0)
    o_naive, s_naive = gated_linear_attention(q, k, v, g, h0, return_state=True, backend="naive")
    torch.testing.assert_close(o, o_naive, rtol=1e-5, atol=1e-5)
    assert s_naive.shape == (1, 2, 3, 4)
    assert resolve_gla_backend("auto", torch.device("cpu")) == "torch"
    assert {"auto", "naive", "torch"} <= set(available_gla_backends())
    with pytest.raises(ValueError, match=r"unknown GLA backend 'mamba'.*'naive'.*'torch'"):
        gated_linear_attention(q, k, v, g, backend="mamba")


def test_registered_backends_are_picked_by_name_and_cuda_ones_fall_back_on_cpu():
    calls = []

    def counting(*args):
        calls.append(args[0].shape)
        return naive_gla(*args)

    q, k, v, g, h0 = make_inputs(1, 9, 2, 3, 4)
    try:
        register_gla_backend(GLABackend("counting", counting))
        register_gla_backend(GLABackend("gpu-only", counting, needs_cuda=True))
        assert {"counting", "gpu-only"} <= set(available_gla_backends())
        out = gated_linear_attention(q, k, v, g, h0, backend="counting")
        assert calls == [q.shape]
        torch.testing.assert_close(out, chunk_gla(q, k, v, g, h0)[0], rtol=1e-5, atol=1e-5)
        assert resolve_gla_backend("auto", torch.device("cpu")) == "torch"
        with pytest.warns(RuntimeWarning, match="'gpu-only' needs a CUDA tensor"):
            assert resolve_gla_backend("gpu-only", torch.device("cpu")) == "torch"
        with pytest.raises(ValueError, match="reserved"):
            register_gla_backend(GLABackend("auto", counting))
    finally:
        GLA_BACKENDS.pop("counting", None)
        GLA_BACKENDS.pop("gpu-only", None)


def test_bad_shapes_fail_clearly():
    q, k, v, g, h0 = make_inputs(1, 5, 2, 3, 4)
    with pytest.raises(ValueError, match=r"k must have q's shape"):
        chunk_gla(q, k[..., :2], v, g)
    with pytest.raises(ValueError, match=r"log_decay must have q's shape"):
        naive_gla(q, k, v, g[:, :4])
    with pytest.raises(ValueError, match=r"v must have shape \(B, T, H, V\)"):
        chunk_gla(q, k, v[:, :, :1], g)
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, H, K, V\) = \(1, 2, 3, 4\)"):
        chunk_gla(q, k, v, g, h0[..., :3])
    with pytest.raises(ValueError, match="floating-point"):
        chunk_gla(q.long(), k, v, g)
    with pytest.raises(ValueError, match=r"q must have shape \(B, T, H, K\)"):
        chunk_gla(q[0], k, v, g)
    with pytest.raises(ValueError, match="multiple of sub_chunk"):
        chunk_gla(q, k, v, g, chunk_size=20, sub_chunk=16)
    with pytest.raises(ValueError, match=r"q_t must have shape \(B, H, K\)"):
        gla_step(q, k[:, 0], v[:, 0], g[:, 0])
    for fn in (chunk_gla, naive_gla):  # the caller's names, not those of the scan inside
        with pytest.raises(ValueError, match="one device; got q on cpu, k on cpu, v on meta, log_decay on cpu"):
            fn(q, k, v.to("meta"), g)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chunk_gla_compiles_on_cuda_at_spen_small_shape():
    """``torch.compile`` of ``chunk_gla`` on CUDA at SPEN small's gla shape (B16 T1024, 3 heads of 64): values
    and gradients as eager, and with a NaN key and an infinite value, NaN where eager has it."""
    shape = (16, 1024, 3, 64, 64)
    compiled = torch.compile(chunk_gla, fullgraph=True)
    results = []
    for fn in (chunk_gla, compiled):
        leaves = [t.detach().cuda().requires_grad_(True) for t in make_inputs(*shape, dtype=torch.float32, seed=3)]
        o, S = fn(*leaves)
        (o.square().mean() + S.mean()).backward()
        results.append([o, S, *(t.grad for t in leaves)])
    for name, ref, out in zip(["o", "S", "q", "k", "v", "log_decay", "h0"], *results):
        assert rel_err(out, ref) < 1e-4, name
    q, k, v, g, h0 = (t.cuda() for t in make_inputs(*shape, dtype=torch.float32, seed=4))
    k[1, 500, 2, 7] = float("nan")
    v[3, 900, 0, 5] = float("inf")
    with torch.no_grad():
        (o_ref, S_ref), (o, S) = chunk_gla(q, k, v, g, h0), compiled(q, k, v, g, h0)
    for ref, out in ((o_ref, o), (S_ref, S)):
        assert torch.equal(out.isnan(), ref.isnan()) and ref.isnan().any() and not ref.isnan().all()
        assert rel_err(out.nan_to_num(0.0), ref.nan_to_num(0.0)) < 1e-4


def test_chunk_gla_traces_to_no_integer_running_sum():
    """Compiled inside SPEN (small, gla, bf16 autocast) on an H100, an int64 cumsum in ``chunk_gla`` (its marks of
    non-finite inputs, once ``key.int().cumsum(1) > 0``) stopped Inductor's Triton code generation; compiled alone
    it did not, so the traced graph is checked instead: every running sum in it is over floating values."""
    from torch.fx.experimental.proxy_tensor import make_fx

    graph = make_fx(lambda *a: chunk_gla(*a, chunk_size=16, sub_chunk=8))(*make_inputs(2, 40, 2, 4, 3)).graph
    sums = [n.meta["val"].dtype for n in graph.nodes if n.op == "call_function" and "cumsum" in str(n.target)]
    assert sums and all(dtype.is_floating_point for dtype in sums), sums
