"""Direct launches of the Triton scans (``ops/triton/common.launch`` with ``DIRECT``) on a GPU: a repeat
call skips Triton's ``JITFunction.run`` and gives what it gives, bit for bit, through every plan shape
(one segment, warmed-up segments, two passes, two groups of timescales), for bf16 and float32, an input
4 bytes off a 16-byte boundary, and inside a CUDA graph. Needs a CUDA device and Triton 3.6, the
version whose launcher convention ``launch`` follows (test_triton_launch.py checks the logic on CPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
common = pytest.importorskip("emaprobe.ops.triton.common", reason="needs Triton (emaprobe.ops.triton)")
from emaprobe.ops.triton import cache, ema, linear_scan, plan  # noqa: E402  (after the skips)

if common.triton.__version__.split(".")[:2] != ["3", "6"]:
    pytest.skip(f"direct launches follow Triton 3.6; this is {common.triton.__version__}", allow_module_level=True)

ALPHAS = (0.5, 0.1, 0.02, 0.9, 0.01)  # two groups of timescales: two launches per pass
CFGS = {
    "default": None,
    "warm": plan.TileConfig(ct=16, block=64, split=True, warmup=True, min_programs=8),
    "two_pass": plan.TileConfig(ct=16, block=64, split=True, warmup=False, min_programs=8),
}
KERNELS = (ema._ema_fwd_kernel, ema._ema_bwd_kernel, linear_scan._lin_fwd_kernel, linear_scan._lin_bwd_kernel)


@pytest.fixture
def ordinary(monkeypatch):
    """Counts launches through Triton's own ``JITFunction.run``; direct launches are on."""
    monkeypatch.setattr(common, "DIRECT", True)
    calls = []
    for k in KERNELS:
        real = k.run
        monkeypatch.setattr(k, "run", lambda *a, _real=real, **kw: calls.append(1) or _real(*a, **kw))
    cache.clear()
    yield calls
    cache.clear()


def _ops(x, gh, a, b, gl, h0, hl, cfg):
    h, hT = ema.ema_traces_fwd(x, ALPHAS, h0, cfg=cfg)
    gx, g0 = ema.ema_traces_bwd(gh, ALPHAS, None if h0 is None else hT, x.dtype, cfg=cfg)
    y, yT = linear_scan.linear_scan_fwd(a, b, hl, cfg=cfg)
    ga, gb, gl0 = linear_scan.linear_scan_bwd(a, gl, y, hl, None if hl is None else yT, cfg=cfg)
    return h, hT, gx, g0, y, yT, ga, gb, gl0


def _inputs(B, T, D, dtype, offset, h0):
    torch.manual_seed(0)
    S = len(ALPHAS)
    x = torch.randn(B * T * D + offset, device="cuda", dtype=dtype)[offset:].view(B, T, D)
    gh = torch.randn(B, T, S, D, device="cuda", dtype=dtype)
    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.45).to(dtype)
    b, gl = torch.randn(B, T, D, device="cuda", dtype=dtype), torch.randn(B, T, D, device="cuda", dtype=dtype)
    return (x, gh, a, b, gl, torch.randn(B, S, D, device="cuda") if h0 else None,
            torch.randn(B, D, device="cuda") if h0 else None)


@pytest.mark.parametrize("cfg", list(CFGS))
@pytest.mark.parametrize("B,T,D,dtype,offset,h0", [
    (3, 301, 70, torch.float32, 0, False),
    (2, 4099, 257, torch.bfloat16, 0, True),
    (1, 517, 64, torch.float32, 1, True),  # x 4 bytes past a 16-byte boundary
    (1, 17, 5, torch.bfloat16, 0, False),
])
def test_direct_repeats_equal_triton_run(ordinary, cfg, B, T, D, dtype, offset, h0):
    args = (*_inputs(B, T, D, dtype, offset, h0), CFGS[cfg])
    common.DIRECT = False  # (the fixture restores it) the reference: every launch through Triton
    ref = _ops(*args)
    common.DIRECT = True
    first = len(ordinary)
    got1 = _ops(*args)  # Triton's launch again, its kernels kept
    kept = len(ordinary) - first
    got2 = _ops(*args)  # the repeat: straight to the launchers
    assert kept > 0 and len(ordinary) == first + kept
    for r, g1, g2 in zip(ref, got1, got2):
        assert torch.equal(r, g1) and torch.equal(r, g2)


def test_direct_launches_replay_in_a_cuda_graph(ordinary):
    x = torch.randn(4, 1000, 96, device="cuda", dtype=torch.bfloat16)
    ref, refT = ema.ema_traces_fwd(x, ALPHAS)
    ema.ema_traces_fwd(x, ALPHAS)  # warm: the kernels are kept
    n = len(ordinary)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        out, outT = ema.ema_traces_fwd(x, ALPHAS)
    assert len(ordinary) == n  # captured from the direct path
    out.zero_()
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    want, wantT = ema.ema_traces_fwd(x, ALPHAS)
    assert torch.equal(out, want) and torch.equal(outT, wantT) and not torch.equal(out, ref)
