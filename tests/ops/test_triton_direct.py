"""Direct launches of the Triton scans (``ops/triton/common.py``: ``launch`` with ``DIRECT``) give
what Triton's own ``JITFunction.run`` gives, bit for bit, and are taken on a repeat call. Needs a
CUDA device and Triton 3.6, the version whose launcher convention ``launch`` follows."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
common = pytest.importorskip("emaprobe.ops.triton.common", reason="needs Triton (emaprobe.ops.triton)")
from emaprobe.ops.triton import cache, ema, linear_scan  # noqa: E402  (after the skips)

if common.triton.__version__.split(".")[:2] != ["3", "6"]:
    pytest.skip(f"direct launches follow Triton 3.6; this is {common.triton.__version__}", allow_module_level=True)

ALPHAS = (0.5, 0.1, 0.02, 0.9, 0.01)  # two groups of timescales: two launches per pass


def _calls(monkeypatch, fn):
    """Run ``fn`` with ``DIRECT`` on; -> (its result, how many launches went direct)."""
    direct = []
    stream = common._stream
    monkeypatch.setattr(common, "DIRECT", True)
    monkeypatch.setattr(common, "_stream", lambda i: direct.append(i) or stream(i))
    try:
        return fn(), len(direct)
    finally:
        monkeypatch.setattr(common, "DIRECT", False)


@pytest.mark.parametrize("B,T,D", [(3, 301, 70), (2, 4099, 257), (1, 17, 5)])
def test_ema_direct_launches_equal_triton_run(monkeypatch, B, T, D):
    torch.manual_seed(0)
    x = torch.randn(B, T, D, device="cuda")
    gh = torch.randn(B, T, len(ALPHAS), D, device="cuda")
    cache.clear()
    ref = ema.ema_traces_fwd(x, ALPHAS), ema.ema_traces_bwd(gh, ALPHAS)
    for repeat in range(2):
        got, n = _calls(monkeypatch, lambda: (ema.ema_traces_fwd(x, ALPHAS), ema.ema_traces_bwd(gh, ALPHAS)))
        for a, b in zip((*ref[0], *ref[1]), (*got[0], *got[1])):
            assert torch.equal(a, b)
        assert (n > 0) == (repeat == 1)  # the first call with DIRECT keeps the compiled kernels, the next uses them


@pytest.mark.parametrize("shape", [(2, 333, 3, 41), (1, 5000, 130)])
def test_linear_scan_direct_launches_equal_triton_run(monkeypatch, shape):
    torch.manual_seed(1)
    a = torch.rand(shape, device="cuda") * 0.5 + 0.45
    b = torch.randn(shape, device="cuda")
    h0 = torch.randn(shape[0], *shape[2:], device="cuda")
    cache.clear()
    h, hT = linear_scan.linear_scan_fwd(a, b, h0)
    gh = torch.randn_like(h)
    ref = (h, hT, *linear_scan.linear_scan_bwd(a, gh, h, h0))
    for repeat in range(2):
        def both():
            h2, hT2 = linear_scan.linear_scan_fwd(a, b, h0)
            return (h2, hT2, *linear_scan.linear_scan_bwd(a, gh, h2, h0))
        got, n = _calls(monkeypatch, both)
        assert all(torch.equal(u, v) for u, v in zip(ref, got))
        assert (n > 0) == (repeat == 1)
