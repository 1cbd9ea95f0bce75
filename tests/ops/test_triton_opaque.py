"""The Triton scans under ``torch.compile``: one opaque custom op per launcher (``ops/triton/opaque.py``).

On CPU the kernels are recorders (``triton_host_harness``): a compiled call must hold the four
custom ops and no user-defined Triton kernel, and launch exactly what the eager call launches,
forward and backward. Where Triton is installed, its interpreter also runs the kernels on CPU,
and compiled values and gradients must equal eager ones.
"""

from __future__ import annotations

import pytest
import torch
from triton_host_harness import load_triton_ops, record

from emaprobe.ops.triton import cache

ALPHAS = (0.5, 0.1, 0.02)
SMS = 132
OPS = {f"emaprobe.{n}.default" for n in ("ema_traces_fwd", "ema_traces_bwd", "linear_scan_fwd", "linear_scan_bwd",
                                         "gated_scan_fwd", "gated_scan_bwd")}


@pytest.fixture
def ops():
    torch.compile(lambda t: t + 1, backend="eager")(torch.ones(1))  # Dynamo's imports, before any stand-in
    ema, lin, undo = load_triton_ops()
    cache.clear()
    torch._dynamo.reset()
    yield ema, lin
    torch._dynamo.reset()
    cache.clear()
    undo()


def _graph_recorder(targets: list):
    """An AOTAutograd backend that keeps every call's target, forward and backward graphs alike."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def keep(gm, _inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=keep, bw_compiler=keep)


def _launches(log: list) -> list:
    # what a launch is apart from its buffers: the kernel, grid, non-tensor arguments and constants
    return [(name, grid, tuple(a for a in args if not isinstance(a, torch.Tensor)), sorted(kwargs.items()))
            for name, grid, args, kwargs in log]


@pytest.mark.parametrize("with_h0", [False, True], ids=["no-h0", "h0"])
def test_compiled_scans_are_custom_ops_that_launch_what_eager_launches(ops, monkeypatch, with_h0):
    ema, lin = ops
    x, a, b = torch.randn(2, 500, 24), torch.rand(1, 1, 24), torch.randn(2, 500, 24)
    lg, ba, bg = torch.randn(2, 500, 2, 3, 24), torch.randn(3, 24), torch.randn(3, 24)
    h0e, h0l, h0g = (torch.randn(2, 3, 24), torch.randn(2, 24), torch.randn(2, 3, 24)) if with_h0 else (None,) * 3

    def step(x, a, b, lg, ba, bg, h0e, h0l, h0g):
        h, hT = ema.fused_ema_traces(x, ALPHAS, h0e, with_h0)
        z, zT = lin.fused_linear_scan(a, b, h0l, None, with_h0)
        y, yT = lin.fused_gated_scan(lg, x, ba, bg, h0g, with_h0)
        loss = h.float().sum() + z.float().sum() + y.float().sum()
        return loss + (hT.sum() + zT.sum() + yT.sum() if with_h0 else 0.0)

    logs, targets = {}, []
    for mode in ("eager", "compiled"):
        ema_log = record(monkeypatch.setattr, ema, "ema", SMS)
        lin_log = record(monkeypatch.setattr, lin, "lin", SMS)
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, a, b, lg, ba, bg, h0e, h0l, h0g)]
        fn = step if mode == "eager" else torch.compile(step, backend=_graph_recorder(targets), fullgraph=True)
        fn(*leaves).backward()
        logs[mode] = (_launches(ema_log), _launches(lin_log))
    assert OPS <= set(targets)
    assert not [t for t in targets if "triton_kernel_wrapper" in t]  # no user-defined Triton kernel
    assert logs["compiled"] == logs["eager"]
    names = [n for n, *_ in logs["eager"][0] + logs["eager"][1]]
    assert {"_ema_fwd_kernel", "_ema_bwd_kernel", "_lin_fwd_kernel", "_lin_bwd_kernel"} == set(names)


def test_an_op_returns_the_state_nobody_asked_for_as_none(ops, monkeypatch):
    """A custom op has no optional outputs: under compile the ops return an empty state where none
    was asked for, and ``run`` hands back None, as the eager launchers do."""
    ema, _ = ops
    record(monkeypatch.setattr, ema, "ema", SMS)
    from emaprobe.ops.triton import opaque

    def f(x):
        out, hT = opaque.run("ema_traces_fwd", x, ALPHAS, None, state=False)
        assert hT is None
        return out

    x = torch.randn(2, 40, 8)
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    assert got.shape == (2, 40, 3, 8) and got.dtype == x.dtype
    raw = torch.ops.emaprobe.ema_traces_fwd(x, list(ALPHAS), None, False)
    assert raw[1].numel() == 0 and raw[1].dtype == torch.float32


def _scratch_kept() -> dict:
    # per plan store: how many plans keep scratch, and how many have segments that need it
    out = {}
    for name in ("ema_fwd", "ema_bwd", "lin_fwd", "lin_bwd", "gated_fwd", "gated_bwd"):
        plans = list(cache.store(name).values())
        segmented = [p for p in plans if getattr(p, "two_pass", False) or getattr(p, "nseg", 1) > 1]
        out[name] = (sum(bool(p.scratch) for p in plans), len(segmented))
    return out


def test_compiled_calls_keep_no_tensor_made_at_run_time(ops, monkeypatch):
    """Under torch.compile(mode="reduce-overhead") a graph's first run allocates into its CUDA graph
    pool, which may hold no tensor past the call: compiled calls keep no scratch, and the EMA's
    coefficient tensors, which plans keep, are made while the op is traced. Eager calls of the same
    shapes keep their scratch (so the first check can fail)."""
    ema, lin = ops
    record(monkeypatch.setattr, ema, "ema", SMS)
    record(monkeypatch.setattr, lin, "lin", SMS)
    # when the coefficients are built: while the compiler traces (before the backend hands back the
    # compiled function) or later, at a run (torch.compiler.is_compiling() told them apart on torch 2.13
    # but read False in the op's fake implementation on 2.11)
    phase, built = ["tracing"], []
    real = ema._build_coefs
    monkeypatch.setattr(ema, "_build_coefs", lambda a, d: built.append(phase[0]) or real(a, d))
    aot_eager = torch._dynamo.backends.registry.lookup_backend("aot_eager")

    def backend(gm, inputs):
        compiled = aot_eager(gm, inputs)  # traces forward and backward here
        phase[0] = "running"
        return compiled

    x, a, b = torch.randn(2, 3000, 24), torch.rand(2, 3000, 24), torch.randn(2, 3000, 24)
    lg, ba, bg = torch.randn(2, 3000, 2, 3, 24), torch.randn(3, 24), torch.randn(3, 24)

    def step(x, a, b, lg, ba, bg):
        h, _ = ema.fused_ema_traces(x, ALPHAS, None, False)
        z, _ = lin.fused_linear_scan(a, b, None, None, False)
        y, _ = lin.fused_gated_scan(lg, x, ba, bg, None, False)
        return h.float().sum() + z.float().sum() + y.float().sum()

    leaves = [t.clone().requires_grad_() for t in (x, a, b, lg, ba, bg)]
    torch.compile(step, backend=backend, fullgraph=True)(*leaves).backward()
    compiled = _scratch_kept()
    assert all(n for _, n in compiled.values()), compiled  # every direction ran in segments
    assert all(kept == 0 for kept, _ in compiled.values()), compiled
    assert built == ["tracing"]  # once, while tracing; the run found them
    step(*[t.clone().requires_grad_() for t in (x, a, b, lg, ba, bg)]).backward()
    assert all(kept >= 1 for kept, _ in _scratch_kept().values()), _scratch_kept()


def test_compiled_scans_equal_eager_in_the_triton_interpreter():
    """The kernels run by Triton's interpreter on CPU (TRITON_INTERPRET=1, a fresh process): values
    and gradients of compiled calls, through the custom ops, against eager calls."""
    triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton runs this check on CPU)")
    import numpy as np
    from packaging.version import Version

    if Version(triton.__version__) < Version("3.9") and Version(np.__version__) >= Version("2.4"):
        # Triton 3.6's interpreter takes a loop bound from a one-element array with int(), which NumPy 2.4
        # turned from a deprecation warning into a TypeError (it passes with NumPy 2.2 and 2.3, and with
        # Triton 3.9 and NumPy 2.4)
        pytest.skip(f"Triton {triton.__version__}'s interpreter fails with NumPy {np.__version__} (int() of a "
                    "one-element array); Triton 3.9, or NumPy below 2.4, runs this check")
    if torch.cuda.is_available():  # Triton 3.6's interpreter failed the eager calls on the H200 machine
        pytest.skip("a CPU check: on a CUDA machine tests/probes/test_recall_gpu.py compares compiled and eager")
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        import emaprobe.ops.triton.ema as E, emaprobe.ops.triton.linear_scan as L
        E.sm_count = L.sm_count = lambda device: 132
        g = torch.Generator().manual_seed(0)
        bad = []
        for B, T, D, decay in ((2, 37, 40, "full"), (1, 300, 24, "broadcast")):
            x = torch.randn(B, T, D, generator=g)
            a = torch.rand((B, T, D) if decay == "full" else (1, 1, D), generator=g)
            b = torch.randn(B, T, D, generator=g)
            h0e, h0l = torch.randn(B, 3, D, generator=g), torch.randn(B, D, generator=g)
            lg, ba, bg = torch.randn(B, T, 2, 3, D, generator=g), torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)
            def f(x, a, b, h0e, h0l, lg, ba, bg):
                h, hT = E.fused_ema_traces(x, (0.5, 0.1, 0.02), h0e, True)
                z, zT = L.fused_linear_scan(a, b, h0l, None, True)
                y, yT = L.fused_gated_scan(lg, x, ba, bg, h0e, True)
                return (h * h).sum() + (z * z).sum() + hT.sum() + (zT * zT).sum() + (y * y).sum() + yT.sum()
            leaves = [t.requires_grad_() for t in (x, a, b, h0e, h0l, lg, ba, bg)]
            want = torch.autograd.grad(f(*leaves), leaves)
            got = torch.autograd.grad(torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves), leaves)
            bad += [(B, T, D, decay, i) for i, (p, q) in enumerate(zip(want, got)) if not torch.allclose(p, q, atol=1e-5)]
        print("BAD", bad)
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BAD []" in out.stdout, out.stdout[-2000:]
