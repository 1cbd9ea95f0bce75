"""topk_ffn: every implementation against the dense masked reference, values and the
gradients to c, W1 and W2, on odd sizes; the impl registry's names and errors; the one-pass
top-k mask (reference and, on CUDA, the Triton kernel) and its tie rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emaprobe.ops import FFN_IMPLS, available_ffn_impls, naive_topk_ffn, resolve_ffn_impl, topk_ffn
from emaprobe.ops.sparse_ffn import IMPL_ACTS, topk_mask, topk_mask_reference

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
    if act not in IMPL_ACTS.get(impl, (act,)):
        pytest.skip(f"{impl} does not take {act} (a named error: test_impl_that_does_not_take_the_activation)")
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


def _dense_with_ties_of(impl, device):
    """The dense form with the tie rule ``impl`` runs: bf16 codes tie at the k-th value often, and
    ``mask`` keeps the lowest indices where ``torch.topk`` keeps any."""
    if resolve_ffn_impl(impl, torch.device(device), 7, D_FF) == "mask":
        return lambda c, w_up, w_down: F.linear(topk_mask_reference(F.relu(F.linear(c, w_up)), 7), w_down)
    return lambda *w: topk_ffn(*w, 7, "relu", "dense")


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_ffn_bfloat16_matches_dense_bfloat16(impl, device):
    # bf16 rounding can change which units win, so compare against the dense form on the
    # same bf16 activations (identical selection), to bf16 accuracy. On CUDA this takes the
    # dense-GEMM path for dvals (embedding_bag has no bf16 per-weight backward there).
    (c, w_up, w_down), gy = _inputs((3, 5), torch.bfloat16, seed=2, device=device)
    got = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", impl), c, w_up, w_down, gy)
    ref = _value_and_grads(_dense_with_ties_of(impl, device), c, w_up, w_down, gy)
    for name, g, r in zip(("y", "dc", "dW1", "dW2"), got, ref):
        assert g.dtype == torch.bfloat16, name
        torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_ffn_under_autocast_matches_dense(impl, device):
    """float32 weights under bf16 autocast: every form computes in bf16, as F.linear would."""
    (c, w_up, w_down), gy = _inputs((3, 5), torch.float32, seed=3, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = _value_and_grads(lambda *w: topk_ffn(*w, 7, "relu", impl), c, w_up, w_down, gy)
        ref = _value_and_grads(_dense_with_ties_of(impl, device), c, w_up, w_down, gy)
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
    assert resolve_ffn_impl("auto", torch.device("cuda"), 7, D_FF) == "mask"  # no GPU needed to resolve
    assert resolve_ffn_impl("auto", torch.device("cuda"), 7, D_FF, "gelu") == "dense"  # mask takes relu only
    assert resolve_ffn_impl("auto", torch.device("cpu"), D_FF, D_FF) == "dense"  # no zeros to skip
    assert resolve_ffn_impl("gather", torch.device("cuda"), 7, D_FF) == "gather"  # an explicit name is kept


def test_unknown_impl_is_a_named_error():
    (c, w_up, w_down), _ = _inputs((2,), torch.float32)
    assert available_ffn_impls() == ["dense", "gather", "mask", "auto"]
    with pytest.raises(ValueError, match=r"unknown FFN impl 'sparse'; choose one of \['dense', 'gather', 'mask', 'auto'\]"):
        topk_ffn(c, w_up, w_down, 3, impl="sparse")
    with pytest.raises(ValueError, match=r"k must lie in \[1, d_ff=101\]"):
        topk_ffn(c, w_up, w_down, 0)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        topk_ffn(c, w_up, w_down, 3, act="tanh")
    with pytest.raises(ValueError, match="c must be a floating-point tensor, got dtype torch.int64"):
        topk_ffn(c.long(), w_up, w_down, 3)
    with pytest.raises(ValueError, match=r"want c \(\.\.\., d_in\), w_up \(d_ff, d_in\) and w_down \(d_out, d_ff\)"):
        topk_ffn(c, w_up[:, :-1], w_down, 3)
    with pytest.raises(ValueError, match="w_down"):
        topk_ffn(c, w_up, w_down[:, :-1], 3)


def test_impl_that_does_not_take_the_activation():
    (c, w_up, w_down), _ = _inputs((2,), torch.float32)
    with pytest.raises(ValueError, match=r"FFN impl 'mask' takes act in \['relu'\], got 'gelu'"):
        topk_ffn(c, w_up, w_down, 3, "gelu", "mask")
    from emaprobe.layers import SparseFFN
    from emaprobe.models.spen import SPENConfig

    with pytest.raises(ValueError, match="FFN impl 'mask' takes act"):
        SparseFFN(8, 16, 8, 3, "silu", "mask")
    with pytest.raises(ValueError, match="SPENConfig.ffn_impl: FFN impl 'mask' takes act"):
        SPENConfig(ffn_act="gelu", ffn_impl="mask")
    assert SPENConfig(ffn_act="gelu").ffn_impl == "auto"  # auto falls back to dense for gelu


# ---------------------------------------------------------------------------- the one-pass top-k mask


def _stable_topk_mask(a, k):
    """The tie rule written out: walk each row's values from the largest, lower index first among equals."""
    out = torch.zeros_like(a)
    for r in range(a.shape[0]):
        order = sorted(range(a.shape[1]), key=lambda j: (-float(a[r, j]), j))[:k]
        out[r, order] = a[r, order]
    return out


def test_topk_mask_reference_keeps_the_lowest_indices_among_ties():
    a = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0]])
    h = topk_mask_reference(a, 3)
    assert torch.equal(h, torch.tensor([[0.0, 3.0, 2.0, 3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0]]))
    assert torch.equal((topk_mask_reference(a, 3) != 0).sum(-1), torch.tensor([3, 1]))
    # integers in a narrow range: ties at the k-th value in most rows
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (40, 23), generator=g).double()
    for k in (1, 5, 22, 23):
        assert torch.equal(topk_mask_reference(a, k), _stable_topk_mask(a, k)), k


def test_topk_mask_gradient_is_topk_scatter_gradient_for_relu_codes():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 4, 31, generator=g, dtype=torch.float64, requires_grad=True)
    gh = torch.randn(6, 4, 31, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(topk_mask(torch.relu(z), 9), z, gh)
    vals, idx = torch.relu(z).topk(9, dim=-1)
    (ref,) = torch.autograd.grad(torch.zeros_like(z).scatter(-1, idx, vals), z, gh)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # the relu taken inside the mask's pass: the same code and the same gradient
    (fused,) = torch.autograd.grad(topk_mask(z, 9, relu=True), z, gh)
    assert torch.equal(topk_mask(z, 9, relu=True), topk_mask(torch.relu(z), 9))
    torch.testing.assert_close(fused, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 31\], got 0"):
        topk_mask(z, 0)


GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _same_with_nans(got, ref):
    """Equal values, NaN where the other has NaN (torch.equal never calls two NaNs equal)."""
    return torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.nan_to_num(0.5), ref.nan_to_num(0.5))


def _mask_input(pattern, F_, k, dtype):
    g = torch.Generator().manual_seed(F_ + k)
    if pattern.startswith("ties"):  # integers in a narrow range: the k-th value tied in most rows
        return torch.randint(-4, 5, (37, F_), generator=g).to(dtype)
    a = torch.randn(3, 37, F_, generator=g).to(dtype)
    if pattern == "relu":  # more zeros than F - k in some rows
        a = torch.relu(a - 1.5)
    if pattern == "nonfinite, relu inside":  # relu keeps NaN of either sign, as the largest value
        a[0, :, 0], a[0, :, -1], a[1, :, 1], a[2, ::2, 2], a[2, 1::2, -2] = float("nan"), -0.0, float("inf"), \
            -float("nan"), -float("inf")
    return a


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("F_,k", [(101, 7), (3072, 185), (1000, 1), (257, 256), (64, 64), (5000, 300), (138, 40)])
@pytest.mark.parametrize("pattern", ["randn", "ties", "relu", "relu inside", "ties, relu inside",
                                     "nonfinite, relu inside"])
@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_triton_topk_mask_equals_the_reference(gpu, pattern, F_, k, dtype):
    """``relu inside``: the kernel takes relu(a) itself, as it loads a (negatives become zeros).
    bf16 with an even F takes the two-keys-a-word kernel there (one part: F 64; two parts: 3072,
    1000, 138 with padding lanes), every other case the bit-by-bit one."""
    from emaprobe.ops.triton.topk import takes_pairs, topk_mask_triton

    a = _mask_input(pattern, F_, k, dtype)
    relu = pattern.endswith("relu inside")
    assert takes_pairs(a.cuda(), relu) == (relu and dtype == torch.bfloat16 and F_ % 2 == 0)
    got = topk_mask_triton(a.cuda(), k, relu).cpu()
    ref = topk_mask_reference(torch.relu(a) if relu else a, k)
    assert got.dtype == a.dtype and got.shape == a.shape
    assert _same_with_nans(got, ref)
    assert torch.equal((got != 0).sum(-1) <= k, torch.ones_like(got[..., 0], dtype=torch.bool))


@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_triton_topk_mask_rows_off_a_word_boundary_take_the_bit_by_bit_kernel(gpu):
    from emaprobe.ops.triton.topk import takes_pairs, topk_mask_triton

    a = _mask_input("relu inside", 3072, 185, torch.bfloat16).reshape(-1).cuda()
    view = a[1:1 + 37 * 3072].view(37, 3072)  # contiguous, 2 bytes past a 4-byte boundary
    assert not takes_pairs(view, True) and takes_pairs(a[:37 * 3072].view(37, 3072), True)
    assert torch.equal(topk_mask_triton(view, 185, True).cpu(), topk_mask_reference(torch.relu(view.cpu()), 185))


@pytest.mark.parametrize("F_,k", [(3072, 185), (1032, 62), (1026, 62)])
@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_mask_backward_on_cuda_reads_bits_and_equals_the_masked_gradient(gpu, F_, k):
    """bf16 with relu inside and F a multiple of 8: the backward keeps the code's bits (1 a unit), not
    the code, and gives gh where h != 0; other widths keep h. Ties and rows with fewer than k
    positive values (kept zeros, which pass no gradient) included."""
    a = _mask_input("ties, relu inside", F_, k, torch.bfloat16).cuda()
    a[0] = -a[0].abs()
    a[0, : k // 2] = 1.0
    a.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        h = topk_mask(a * 1.0, k, relu=True)
    gh = torch.randn_like(h)
    (got,) = torch.autograd.grad(h, a, gh)
    assert torch.equal(got, gh.masked_fill(h == 0, 0))
    assert (torch.uint8 in saved) == (F_ % 8 == 0)


@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_mask_impl_compiled_on_cuda_matches_eager(gpu):
    (c, w_up, w_down), gy = _inputs((4, 33), torch.float32, seed=6, device="cuda")
    fn = lambda *w: topk_ffn(*w, 7, "relu", "mask")  # noqa: E731
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = _value_and_grads(fn, c, w_up, w_down, gy)
        got = _value_and_grads(torch.compile(fn, fullgraph=True), c, w_up, w_down, gy)
    for name, g_, r in zip(("y", "dc", "dW1", "dW2"), got, ref):
        torch.testing.assert_close(g_.float(), r.float(), rtol=1e-2, atol=1e-2, msg=name)


@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_pair_mask_kernel_compiles_in_one_graph(gpu):
    """bf16 with relu and an even width takes the pair kernel, whose choice reads the tensor's address:
    under torch.compile the launch is a custom op (a traced tensor has no address; reading one stopped
    the graph, and SPEN-130m trained a third slower), in one graph, giving the eager code."""
    from emaprobe.ops.triton.topk import takes_pairs

    a = _mask_input("relu inside", 3072, 185, torch.bfloat16)[0].cuda().requires_grad_()
    assert takes_pairs(a.detach(), True)
    fn = lambda z: topk_mask(z * 1.0, 185, relu=True)  # noqa: E731
    (g_eager,) = torch.autograd.grad(fn(a).float().square().sum(), a)
    compiled = torch.compile(fn, fullgraph=True)
    h = compiled(a)
    (g_comp,) = torch.autograd.grad(h.float().square().sum(), a)
    assert torch.equal(h, fn(a)) and torch.equal(g_comp, g_eager)


def test_triton_topk_mask_in_the_interpreter_equals_the_reference():
    """The kernel run by Triton's interpreter on CPU (TRITON_INTERPRET=1, a fresh process: the
    variable is read when Triton loads): where Triton is installed, kernel work can be checked
    without a GPU."""
    pytest.importorskip("triton", reason="Triton is not installed (pip install triton runs this check on CPU)")
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        from emaprobe.ops.sparse_ffn import topk_mask_reference
        from emaprobe.ops.triton.topk import topk_mask_bits, topk_mask_triton, unmask_triton
        g = torch.Generator().manual_seed(0)
        bad = []
        same = lambda x, y: torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(0.5), y.nan_to_num(0.5))
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for F, k in ((101, 7), (257, 256), (64, 64), (300, 1), (138, 40), (3072, 185)):
                for ties in (False, True):
                    a = torch.randint(-4, 5, (5, F), generator=g).to(dtype) if ties else \\
                        torch.randn(5, F, generator=g).to(dtype)
                    if not torch.equal(topk_mask_triton(a, k), topk_mask_reference(a, k)):
                        bad.append((str(dtype), F, k, ties))
                    if not torch.equal(topk_mask_triton(a, k, True), topk_mask_reference(torch.relu(a), k)):
                        bad.append((str(dtype), F, k, ties, "relu"))
                a[0, 0], a[1, 1], a[2, 2], a[3, -1], a[4, 3] = float("nan"), -float("nan"), float("inf"), -0.0, \\
                    -float("inf")
                if not same(topk_mask_triton(a, k, True), topk_mask_reference(torch.relu(a), k)):
                    bad.append((str(dtype), F, k, "nonfinite, relu"))
        # the pair kernel (bf16, relu, even widths) over random widths, k and rows: ties, all-equal and
        # all-negative rows, denormals, NaN and infinities in one row
        odd = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), -0.0, 1e-39])
        for i in range(40):
            F = int(torch.randint(1, 1100, (), generator=g)) * 2
            k = int(torch.randint(1, F + 1, (), generator=g))
            a = torch.randn(3, F, generator=g) * torch.tensor([[1.0], [1e-38], [3.0]])
            a[0, : F // 3] = 0.75
            a[1] = -a[1].abs() if i % 4 == 0 else a[1]
            a[2].scatter_(0, torch.randint(0, F, (6,), generator=g), odd)
            a = a.to(torch.bfloat16)
            if not same(topk_mask_triton(a, k, True), topk_mask_reference(torch.relu(a), k)):
                bad.append(("random pair", F, k))
        # the bits the pair kernel writes beside the code (F a multiple of 8), ties broken and all, and
        # the backward that reads them: gh where h != 0 (the least positive bf16, kept, has its bit)
        for F, k in ((3072, 185), (1032, 62), (264, 16), (8, 3)):
            for ties in (False, True):
                a = torch.randint(-4, 5, (5, F), generator=g) / 2 if ties else torch.randn(5, F, generator=g)
                a[0] = -a[0].abs()  # fewer than k positive: kept zeros, which pass no gradient
                a[0, : k // 2] = 1.0
                a = a.to(torch.bfloat16)
                a[0, k // 2] = torch.tensor(1, dtype=torch.int16).view(torch.bfloat16)  # the least positive bf16
                h, bits = topk_mask_bits(a, k, True)
                gh = torch.randn(5, F, generator=g).to(torch.bfloat16)
                want = (h != 0).view(5, F // 8, 8).to(torch.int32) * (2 ** torch.arange(8))
                if not (torch.equal(bits.int(), want.sum(-1)) and
                        torch.equal(unmask_triton(gh, bits), gh.masked_fill(h == 0, 0))):
                    bad.append(("bits", F, k, ties))
        # rows off a 4-byte boundary take the bit-by-bit kernel; their bits are packed from its code
        flat = torch.randn(1 + 3 * 1032, generator=g).to(torch.bfloat16)
        view = flat[1:].view(3, 1032)
        h_off, bits_off = topk_mask_bits(view, 62, True)
        want = (h_off != 0).view(3, 129, 8).to(torch.int32) * (2 ** torch.arange(8))
        if view.data_ptr() % 4 == 0 or not torch.equal(bits_off.int(), want.sum(-1)):
            bad.append(("bits off a word boundary",))
        if topk_mask_bits(torch.randn(2, 1026).to(torch.bfloat16), 9, True)[1].numel():
            bad.append(("bits where F % 8 != 0",))
        # the custom ops compiled code calls: their fake implementations (what the compiler traces) give the
        # launchers' shapes and dtypes, the bits included or left empty by shape and dtype alone
        checks = ("test_schema", "test_faketensor")
        a = torch.randn(3, 1032, generator=g).to(torch.bfloat16)
        for args in ((a, 62, True), (a, 62, False), (a[:, :1026], 62, True), (a.float(), 62, True)):
            torch.library.opcheck(torch.ops.emaprobe.topk_mask, args, test_utils=checks)
        torch.library.opcheck(torch.ops.emaprobe.topk_unmask, (gh, bits), test_utils=checks)
        print("BAD", bad)
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BAD []" in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize("k", [True, 2.0, "2"])
@pytest.mark.parametrize("impl", ["dense", "gather", "mask", "auto"])
def test_topk_ffn_refuses_a_k_that_is_not_an_int(impl, k):
    # k=True ran as k=1 in the mask form and failed inside torch.topk in the others; 2.0 failed deep in torch
    c, w_up, w_down = torch.randn(3, 8), torch.randn(16, 8), torch.randn(8, 16)
    with pytest.raises(ValueError, match="k must be an int"):
        topk_ffn(c, w_up, w_down, k, "relu", impl)
    with pytest.raises(ValueError, match="k must be an int"):
        topk_mask(torch.randn(3, 16), k)
