"""cross_entropy: every form against the float64 reference, values and gradients, on odd sizes and
every reduction, ignored targets included; the impl registry's names and errors; the fused Triton
passes in Triton's interpreter on CPU (where Triton is installed) and on CUDA, rows padded and not; the
head and the loss together (linear_cross_entropy) against the loss of F.linear's logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emaprobe.ops import (CE_IMPLS, LINEAR_CE_IMPLS, available_ce_impls, cross_entropy, linear_cross_entropy,
                          naive_cross_entropy, resolve_ce_impl)
from emaprobe.ops.losses import REDUCTIONS

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _reduced(per_token, target, reduction, ignore_index=-100):
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / (target != ignore_index).sum()


def _inputs(lead, V, dtype=torch.float64, seed=0, device="cpu", ignored=True, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*lead, V, generator=g, dtype=torch.float64) * scale).to(device, dtype)
    target = torch.randint(0, V, lead, generator=g).to(device)
    if ignored and target.numel() > 1:
        target.view(-1)[1] = -100
    return logits, target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("lead,V", [((3, 5), 11), ((7,), 1), ((2, 3), 1001), ((1, 1), 2)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_torch_form_equals_the_float64_reference(lead, V, reduction):
    logits, target = _inputs(lead, V)
    x = logits.clone().requires_grad_()
    got = cross_entropy(x, target, reduction, impl="torch")
    xr = logits.clone().requires_grad_()
    ref = _reduced(naive_cross_entropy(xr, target), target, reduction)
    assert got.shape == ref.shape == (target.shape if reduction == "none" else ())
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    w = torch.randn(got.shape, dtype=torch.float64)
    (gx,) = torch.autograd.grad((got.double() * w).sum(), x)
    (gr,) = torch.autograd.grad((ref * w).sum(), xr)
    torch.testing.assert_close(gx, gr, rtol=1e-6, atol=1e-7)


def test_reference_ignores_targets_and_matches_F():
    logits, target = _inputs((4, 6), 13, ignored=True)
    per_token = naive_cross_entropy(logits, target)
    assert per_token[0, 1] == 0
    ref = F.cross_entropy(logits.reshape(-1, 13), target.reshape(-1), reduction="none").view(4, 6)
    torch.testing.assert_close(per_token, ref)


def test_impl_registry_names_and_errors():
    assert available_ce_impls() == sorted(CE_IMPLS) + ["auto"]
    cpu = torch.zeros(2, 3)
    assert resolve_ce_impl("auto", cpu) == "torch"
    assert resolve_ce_impl("torch", cpu) == "torch"
    with pytest.raises(ValueError, match=r"unknown cross-entropy impl 'fast'; choose one of \['fused', 'torch', 'auto'\]"):
        resolve_ce_impl("fast", cpu)
    with pytest.raises(ValueError, match="impl 'fused' takes CUDA logits"):
        cross_entropy(cpu, torch.zeros(2, dtype=torch.long), impl="fused")
    with pytest.raises(ValueError, match=r"unknown reduction 'avg'; choose one of \['mean', 'sum', 'none'\]"):
        cross_entropy(cpu, torch.zeros(2, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match=r"logits must be \(\.\.\., V\) over target's shape"):
        cross_entropy(cpu, torch.zeros(3, dtype=torch.long))


def _head(lead, V, D, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, D, generator=g, dtype=torch.float64).to(device, dtype)
    w = (torch.randn(V, D, generator=g, dtype=torch.float64) / D ** 0.5 * 3).to(device, dtype)
    target = torch.randint(0, V, lead, generator=g).to(device)
    target.view(-1)[0] = -100
    return h, w, target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("lead,V,D", [((3, 5), 11, 7), ((7,), 101, 13), ((1, 2), 1, 3)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_linear_torch_form_is_the_loss_of_the_product(lead, V, D, reduction):
    h, w, target = _head(lead, V, D, seed=V)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    got = linear_cross_entropy(hl, wl, target, reduction)  # auto: torch on CPU
    hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _reduced(naive_cross_entropy(F.linear(hr, wr), target), target, reduction)
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    gy = torch.randn(got.shape, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got.double() * gy).sum(), (hl, wl)), torch.autograd.grad((ref * gy).sum(), (hr, wr))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the loss runs in float32


def test_linear_cross_entropy_errors():
    h, w, target = _head((2, 3), 5, 4)
    assert sorted(LINEAR_CE_IMPLS) == sorted(CE_IMPLS)
    with pytest.raises(ValueError, match=r"h must be \(\.\.\., D\) over target's shape"):
        linear_cross_entropy(h, w[:, :3], target)
    with pytest.raises(ValueError, match=r"h must be \(\.\.\., D\) over target's shape"):
        linear_cross_entropy(h, w, target[:, :2])
    with pytest.raises(ValueError, match="unknown cross-entropy impl 'fast'"):
        linear_cross_entropy(h, w, target, impl="fast")
    with pytest.raises(ValueError, match="impl 'fused' takes CUDA logits"):
        linear_cross_entropy(h.float(), w.float(), target, impl="fused")
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        linear_cross_entropy(h, w, target, reduction="avg")


def test_targets_of_any_integer_dtype_and_a_named_error_otherwise():
    """The models take int32 and uint8 token ids, so the losses do; a float target is a named error."""
    logits, target = _inputs((2, 3), 5, ignored=False)
    h, w, _ = _head((2, 3), 5, 4)
    want = cross_entropy(logits, target)
    for dtype in (torch.int32, torch.uint8, torch.int16):
        torch.testing.assert_close(cross_entropy(logits, target.to(dtype)), want)
        torch.testing.assert_close(linear_cross_entropy(h, w, target.to(dtype)), linear_cross_entropy(h, w, target))
    with pytest.raises(ValueError, match="target must be a tensor of integer class indices, got dtype torch.float32"):
        cross_entropy(logits, target.float())
    with pytest.raises(ValueError, match="integer class indices, got dtype torch.bool"):
        linear_cross_entropy(h, w, target > 2)


def test_every_target_ignored_gives_nan_mean_as_F_does():
    logits, target = _inputs((3,), 5, ignored=False)
    target[:] = -100
    assert torch.isnan(cross_entropy(logits, target))
    assert cross_entropy(logits, target, "sum") == 0


_INTERP_SCRIPT = """
import torch
from emaprobe.ops.losses import CE_IMPLS, fused_rows, naive_cross_entropy
from emaprobe.ops.triton.cross_entropy import check_rows, cross_entropy_fwd
g = torch.Generator().manual_seed(0)
bad = []
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 8e-3}  # of the gradient, over its largest entry

def leaf(x, pad):  # x (N, V) as a leaf whose rows are `pad` elements longer than V
    buf = torch.full((x.shape[0], x.shape[1] + pad), 7.0, dtype=x.dtype)
    buf[:, :x.shape[1]] = x
    return buf[:, :x.shape[1]].detach().requires_grad_(True) if pad else x.clone().requires_grad_(True)

for dtype in (torch.bfloat16, torch.float16, torch.float32):
    for N, V, pad in ((5, 1, 0), (7, 1001, 0), (3, 4099, 5), (4, 2048, 0), (2, 50257, 0), (3, 333, 3), (2, 9, 1)):
        x = (torch.randn(N, V, generator=g) * 3).to(dtype)
        t = torch.randint(0, V, (N,), generator=g, dtype=torch.int32 if N == 3 else torch.int64)
        t[0] = -100
        xr = leaf(x, pad)
        assert xr.stride(0) == V + pad
        loss = fused_rows(xr, t)
        w = torch.randn(N, generator=g)
        (gx,) = torch.autograd.grad((loss * w).sum(), xr)  # (.grad of a padded leaf would be made dense)
        xd = x.double().requires_grad_(True)
        ref = naive_cross_entropy(xd, t)
        (gd,) = torch.autograd.grad((ref * w.double()).sum(), xd)
        err = (loss.double() - ref).abs().max().item()
        gerr = ((gx.double() - gd).abs().max() / gd.abs().max().clamp_min(1e-30)).item()
        if gx.stride() != xr.stride() or gx.dtype != dtype or loss.dtype != torch.float32:
            bad.append(("layout", str(dtype), N, V, pad))
        if err > 1e-4 or gerr > TOL[dtype] or loss[0] != 0 or gx[0].abs().max() != 0:
            bad.append((str(dtype), N, V, pad, err, gerr))
# the reductions of the fused form, through autograd (mean hands each row an expanded g)
x = torch.randn(4, 6, 37, generator=g, dtype=torch.float32)
t = torch.randint(0, 37, (4, 6), generator=g)
t[1, 2] = -100
for red in ("mean", "sum", "none"):
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    a = CE_IMPLS["fused"](xa, t, red, -100)
    b = CE_IMPLS["torch"](xb, t, red, -100)
    a.sum().backward()
    b.sum().backward()
    if a.shape != b.shape or not torch.allclose(a, b, atol=1e-5) or not torch.allclose(xa.grad, xb.grad, atol=1e-6):
        bad.append(("reduction", red))
# non-finite logits as F.cross_entropy has them; a target out of range gives NaN
x = torch.randn(6, 300, generator=g)
x[0, 3] = float("nan"); x[1, 4] = float("inf"); x[2, :] = float("-inf"); x[3, 7] = float("-inf")
t = torch.tensor([1, 2, 3, 5, 400, -1])
loss, lse = cross_entropy_fwd(x, t)
ref = torch.nn.functional.cross_entropy(x[:4], t[:4], reduction="none")
if not (loss[:3].isnan().all() and ref[:3].isnan().all() and torch.allclose(loss[3], ref[3])
        and loss[4:].isnan().all()):
    bad.append(("nonfinite", loss.tolist(), ref.tolist()))
for args, msg in (((torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)), "logits must be (N, V)"),
                  ((torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.long)), "takes"),
                  ((torch.zeros(3, 4), torch.zeros(3)), "target must be contiguous int64"),
                  ((torch.zeros(4, 3).t(), torch.zeros(3, dtype=torch.long)), "unit stride")):
    try:
        check_rows(*args)
        bad.append(("no error", msg))
    except ValueError as err:
        if msg not in str(err):
            bad.append(("message", msg, str(err)))
# a gradient buffer handed in must share the logits' layout: the kernel writes it at the logits' offsets
from emaprobe.ops.triton.cross_entropy import _bwd
x = torch.randn(3, 10, generator=g)
t = torch.tensor([1, 2, 3])
_, lse = cross_entropy_fwd(x, t)
try:
    _bwd(x, t, lse, torch.ones(3), -100, dx=torch.empty(3, 12)[:, :10])
    bad.append(("no error", "dx layout"))
except ValueError as err:
    if "dx must have the logits' shape, strides and dtype" not in str(err):
        bad.append(("message", "dx layout", str(err)))
# the head and the loss in one op: the logits' rows padded to pad_rows, the gradients read through them
from emaprobe.ops.triton.cross_entropy import linear_cross_entropy_bwd, linear_cross_entropy_fwd
for dtype, N, V, D, pad_rows in ((torch.float32, 5, 101, 12, 64), (torch.float32, 3, 64, 8, 64),
                                 (torch.bfloat16, 7, 333, 16, 8), (torch.float32, 4, 1, 3, 64)):
    h = torch.randn(N, D, generator=g).to(dtype)
    w = (torch.randn(V, D, generator=g) * 0.7).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    t[1 % N] = -100
    loss, lse, logits, padded = linear_cross_entropy_fwd(h, w, t, -100, pad_rows)
    gn = torch.randn(N, generator=g)
    dh, dw = linear_cross_entropy_bwd(h, padded, logits, t, lse, gn, -100, V)
    hd, wd = h.double().requires_grad_(True), w.double().requires_grad_(True)
    ref = naive_cross_entropy(hd @ wd.t(), t)
    rh, rw = torch.autograd.grad((ref * gn.double()).sum(), (hd, wd))
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    if (logits.shape != (N, V + -V % pad_rows) or not torch.equal(padded[:V], w) or padded[V:].any()
            or dh.shape != h.shape or dw.shape != w.shape or dh.dtype != dtype or dw.dtype != dtype):
        bad.append(("linear layout", str(dtype), V, tuple(logits.shape)))
    for name, a, b in (("loss", loss, ref), ("dh", dh, rh), ("dw", dw, rw)):
        if ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() > tol:
            bad.append(("linear", name, str(dtype), N, V, pad_rows))
print("BAD", bad)
"""


def test_fused_passes_in_the_interpreter_equal_the_reference():
    """The Triton kernels run by Triton's interpreter on CPU (TRITON_INTERPRET=1, a fresh process: the
    variable is read when Triton loads): rows padded and not, every dtype, int32 and int64 targets,
    ignored targets, the three reductions, non-finite logits and targets out of range; the head and the
    loss in one op (CPU products around the interpreted passes), V padded and not."""
    triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton runs this check on CPU)")
    if tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 9):
        pytest.skip(f"Triton {triton.__version__}'s interpreter passes an int argument as an array, so a loop over "
                    "it fails; 3.9's runs these kernels")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BAD []" in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("lead,V,pad", [((3, 5), 11, 0), ((2, 37), 50257, 0), ((5,), 4099, 3), ((2, 3), 1, 0),
                                        ((64,), 50257, 47)])
@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_fused_on_cuda_equals_the_torch_form(gpu, lead, V, pad, dtype):
    """The fused passes against ``F.cross_entropy`` over float32 (whose gradient is cast back to the
    logits' dtype): loss to float32 rounding, gradient to one rounding of its dtype (float32: to a few ulp,
    e^(x - lse) against e^(x - max) / sum); padded rows give a gradient with the same padded strides."""
    logits, target = _inputs(lead, V, torch.float32, seed=V + pad)
    buf = torch.zeros(*lead, V + pad, dtype=dtype, device="cuda")
    buf[..., :V] = logits.to(dtype)
    x = buf[..., :V].detach().requires_grad_()
    xr = logits.to("cuda", dtype).requires_grad_()
    target = target.cuda()
    for reduction in REDUCTIONS:
        got = cross_entropy(x, target, reduction, impl="fused")
        ref = cross_entropy(xr, target, reduction, impl="torch")
        torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)
        w = torch.randn(got.shape, device="cuda")
        (gx,) = torch.autograd.grad((got * w).sum(), x)
        (gr,) = torch.autograd.grad((ref * w).sum(), xr)
        assert gx.dtype == dtype and gx.stride() == x.stride()
        eps = torch.finfo(dtype).eps * (8 if dtype == torch.float32 else 1)  # float32: a few ulp apart
        torch.testing.assert_close(gx.float(), gr.float(), rtol=eps, atol=eps * gr.abs().max().item())


@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_fused_loss_compiles_in_one_graph(gpu):
    """Under torch.compile the two passes are custom ops, in one graph, giving the eager values."""
    logits, target = _inputs((4, 33), 50257, torch.bfloat16, device="cuda")
    x = logits.requires_grad_()
    fn = lambda z, t: cross_entropy(z * 1.0, t)  # noqa: E731
    eager = fn(x, target)
    (g_eager,) = torch.autograd.grad(eager, x)
    compiled = torch.compile(fn, fullgraph=True)
    got = compiled(x, target)
    (g_comp,) = torch.autograd.grad(got, x)
    assert torch.equal(got, eager) and torch.equal(g_comp, g_eager)
    assert resolve_ce_impl("auto", x) == "fused"


@pytest.mark.parametrize("dtype,autocast", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)],
                         ids=["float32", "bfloat16", "autocast"])
@pytest.mark.parametrize("lead,V,D", [((4, 37), 50257, 64), ((5,), 4099, 24), ((3, 2), 64, 16), ((2,), 1, 8)])
@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_linear_fused_on_cuda_equals_the_torch_form(gpu, lead, V, D, dtype, autocast):
    """The head and the fused loss in one op against F.linear's logits and the torch loss, in the same
    dtype (under autocast both compute the product in bf16): loss and both gradients, every reduction."""
    h, w, target = _head(lead, V, D, torch.float32, seed=V, device="cuda")
    h, w = h.to(dtype), w.to(dtype)
    ctx = torch.autocast("cuda", torch.bfloat16) if autocast else torch.autocast("cuda", enabled=False)
    for reduction in REDUCTIONS:
        hf, wf = h.clone().requires_grad_(), w.clone().requires_grad_()
        hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
        with ctx:
            got = linear_cross_entropy(hf, wf, target, reduction, impl="fused")
            ref = linear_cross_entropy(hr, wr, target, reduction, impl="torch")
        tol = 2e-5 if dtype == torch.float32 and not autocast else 2e-2
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        gy = torch.randn(got.shape, device="cuda")
        for a, b in zip(torch.autograd.grad((got * gy).sum(), (hf, wf)), torch.autograd.grad((ref * gy).sum(), (hr, wr))):
            assert a.dtype == b.dtype == dtype and a.shape == b.shape
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.parametrize("gpu", [pytest.param(0, marks=GPU)])
def test_linear_loss_compiles_in_one_graph(gpu):
    """Under torch.compile the head and the loss are two custom ops in one graph, with the eager values."""
    h, w, target = _head((4, 33), 50257, 64, torch.bfloat16, device="cuda")
    hl, wl = h.requires_grad_(), w.requires_grad_()
    fn = lambda a, b, t: linear_cross_entropy(a * 1.0, b, t)  # noqa: E731
    eager = fn(hl, wl, target)
    g_eager = torch.autograd.grad(eager, (hl, wl))
    with torch.autocast("cuda", torch.bfloat16):
        compiled = torch.compile(fn, fullgraph=True)
        got = compiled(hl, wl, target)
    g_comp = torch.autograd.grad(got, (hl, wl))
    torch.testing.assert_close(got, eager, rtol=1e-6, atol=0)  # the mean's sum: Inductor's order, not eager's
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
