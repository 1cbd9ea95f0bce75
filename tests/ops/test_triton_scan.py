"""The Triton scan kernels against the naive float64 reference: values, final state, gradients.

Needs a CUDA device and Triton; skips cleanly without either. Every buffer the
kernels allocate is NaN-poisoned first, so an element left unwritten fails.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.signal
import torch

from emaprobe.ops import ema_traces, gated_scan, linear_scan, naive_ema_traces, naive_gated_scan, naive_linear_scan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ema = pytest.importorskip("emaprobe.ops.triton.ema", reason="needs Triton (emaprobe.ops.triton)")
lin = pytest.importorskip("emaprobe.ops.triton.linear_scan", reason="needs Triton (emaprobe.ops.triton)")
from emaprobe.ops.triton import plan  # noqa: E402  (after the skips: plan alone would import anywhere)
from emaprobe.ops.triton.common import sm_count  # noqa: E402

SMS = sm_count(torch.device("cuda")) if torch.cuda.is_available() else 0

ALPHAS = (0.5, 0.1, 0.02)
ALPHA_T = torch.tensor(ALPHAS, dtype=torch.float64)
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# forced three-pass (segmented) launches, small tiles so that many segments occur
SPLIT = plan.TileConfig(ct=16, block=64, num_warps=1, split=True)


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite values (an unwritten element?)"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def within_bf16_warmup(got: torch.Tensor, want: torch.Tensor) -> bool:
    """A bf16 warm-up's bound against the exact scan, elementwise: one bf16 rounding of the value
    plus 2**-15 of the largest (the warm-up drops a state under 2**-16 of its size, an absolute error)."""
    got, want = got.float(), want.float()
    return bool(((got - want).abs() <= 2.0 ** -7 * want.abs() + 2.0 ** -15 * want.abs().max()).all())


@pytest.fixture(autouse=True)
def nan_poison(monkeypatch):
    """torch.empty / empty_like hand out NaN-filled memory while a test runs."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def _ema_case(B, T, D, dtype, with_h0, cfg_fwd=None, cfg_bwd=None, alphas=ALPHAS):
    dev = "cuda"
    alpha_t = torch.tensor(alphas, dtype=torch.float64)
    x = torch.randn(B, T, D, device=dev, dtype=torch.float64)
    h0 = torch.randn(B, len(alphas), D, device=dev, dtype=torch.float64) if with_h0 else None
    xr = x.clone().requires_grad_()
    h0r = None if h0 is None else h0.clone().requires_grad_()
    ref, ref_T = naive_ema_traces(xr, alphas, h0r, return_state=True)
    gy, gT = torch.randn_like(ref), torch.randn_like(ref_T)
    ((ref * gy).sum() + (ref_T * gT).sum()).backward()

    out, out_T = ema.ema_traces_fwd(x.to(dtype), alpha_t, None if h0 is None else h0.float(), cfg=cfg_fwd)
    assert out.dtype == dtype and out.shape == (B, T, len(alphas), D)
    assert out_T.dtype == torch.float32
    assert rel(out, ref) < TOL[dtype]
    assert rel(out_T, ref_T) < TOL[dtype]
    gx, g0 = ema.ema_traces_bwd(gy.to(dtype), alpha_t, gT.float(), dtype, cfg=cfg_bwd)
    assert gx.dtype == dtype
    assert rel(gx, xr.grad) < TOL[dtype]
    if with_h0:
        gh0 = (1.0 - alpha_t.cuda().float()).view(1, -1, 1) * g0
        assert rel(gh0, h0r.grad) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero", "h0"])
@pytest.mark.parametrize("T", [1, 63, 500, 4097])
def test_ema_traces_triton_vs_naive(T, with_h0, dtype):
    _ema_case(2, T, 40, dtype, with_h0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [63, 500, 4097])
def test_ema_traces_triton_segmented_vs_naive(T, dtype):
    _ema_case(1, T, 33, dtype, True, SPLIT, SPLIT)


@pytest.mark.parametrize("alphas", [(0.3,), (0.9, 0.5, 0.1, 0.02, 0.01, 1.0)], ids=["S1", "S6"])
@pytest.mark.parametrize("split", [False, True], ids=["one-pass", "segmented"])
def test_ema_traces_triton_other_timescale_counts(alphas, split):
    """S = 1, and S = 6 (two launches of at most 4 timescales; alpha = 1 copies x)."""
    _ema_case(2, 500, 24, torch.float32, True, SPLIT if split else None, SPLIT if split else None, alphas)


# forced one-pass segments that warm up, and the same segments in two passes
WARM = plan.TileConfig(ct=16, block=64, split=True, warmup=True, min_programs=8)
TWO_PASS = plan.TileConfig(ct=16, block=64, split=True, warmup=False, min_programs=8)
SHORT_MEMORY = (0.5, 0.3, 0.9)  # warm-ups of 24, 47 and 8 steps: many segments at small T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("alphas,T", [(ALPHAS, 4097), (ALPHAS, 7001), (SHORT_MEMORY, 333), (SHORT_MEMORY, 4097)],
                         ids=["paper-4097", "paper-7001", "short-333", "short-4097"])
def test_ema_warmup_segments_vs_naive(alphas, T, dtype):
    """Segments whose incoming state is a warm-up scan, h0 and the carry at T included: windows that
    reach t = 0 and t = T - 1 and windows that do not, a partial last segment."""
    nseg, seglen, warm = plan.ema_plan(WARM, 1, T, alphas, SMS)
    assert warm is not None and nseg >= 3 and T % seglen
    _ema_case(1, T, 33, dtype, True, WARM, WARM, alphas)


def test_ema_warmup_matches_two_passes_elementwise():
    """Every output of the warm-up plan within 2**-22 of the largest, against the exact two passes."""
    x = torch.randn(2, 6001, 40, device="cuda")
    gy = torch.randn(2, 6001, 3, 40, device="cuda")
    h0, gT = torch.randn(2, 3, 40, device="cuda"), torch.randn(2, 3, 40, device="cuda")
    assert plan.ema_plan(WARM, 2, 6001, ALPHAS, SMS)[0] >= 3
    for fn in (lambda c: ema.ema_traces_fwd(x, ALPHAS, h0, cfg=c), lambda c: ema.ema_traces_bwd(gy, ALPHAS, gT, cfg=c)):
        for got, want in zip(fn(WARM), fn(TWO_PASS)):
            assert (got - want).abs().max() <= 2.0 ** -22 * want.abs().max()


def test_bf16_warmup_within_one_rounding_of_two_passes():
    """bf16 outputs warm up to 16 bits (``plan.warm_bits``): traces and dx within one bf16 rounding of
    the exact two passes' plus 2**-16 of the state a warm-up drops (absolute, so a value near zero may
    differ by more than its own rounding), and nearly all equal to them."""
    x = torch.randn(2, 6001, 40, device="cuda", dtype=torch.bfloat16)
    gy = torch.randn(2, 6001, 3, 40, device="cuda", dtype=torch.bfloat16)
    assert plan.ema_plan(WARM, 2, 6001, ALPHAS, SMS, 16)[2] == plan.warm_steps(ALPHAS, WARM.ct, 16)
    for fn in (lambda c: ema.ema_traces_fwd(x, ALPHAS, cfg=c)[0],
               lambda c: ema.ema_traces_bwd(gy, ALPHAS, None, torch.bfloat16, cfg=c)[0]):
        got, want = fn(WARM).float(), fn(TWO_PASS).float()
        assert within_bf16_warmup(got, want)
        assert (got != want).float().mean() < 0.01


def test_warmup_error_is_absolute_to_the_dropped_state():
    """The documented bound: a warm-up drops the state W steps back, so it errs by at most 2**-24
    of that state. After inputs 1e6 times larger, that is far more than the two passes' error."""
    T = 12001
    nseg, seglen, warm = plan.ema_plan(WARM, 1, T, ALPHAS, SMS)
    seglen, first = plan.first_segment(T, nseg, seglen, max(warm), WARM.ct)  # the kernel's cut
    w0 = first - max(warm)  # where the second segment's warm-up starts
    assert nseg > 2 and w0 > 0
    x = torch.randn(1, T, 40, device="cuda", dtype=torch.float64)
    # loud where that warm-up starts, then quiet: the loud steps' rounding fades by the segment's start
    x[:, :w0 + WARM.ct] *= 1e6
    ref = naive_ema_traces(x, ALPHAS)
    second = slice(first, first + seglen)
    got = ema.ema_traces_fwd(x.float(), ALPHAS, cfg=WARM)[0].double()[:, second] - ref[:, second]
    exact = ema.ema_traces_fwd(x.float(), ALPHAS, cfg=TWO_PASS)[0].double()[:, second] - ref[:, second]
    dropped = ref[:, w0 - 1].abs().max()  # the state before the warm-up, which it drops
    assert got.abs().max() <= 2.0 ** -24 * dropped * 1.01
    assert exact.abs().max() < 1e-2 * got.abs().max()


def _lfilter_ema(xn: np.ndarray, gn: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """float64 IIR filters along axis 1: each timescale's trace of xn (B,T,D), and dx for the traces'
    gradients gn (B,T,S,D): g_t = gy_t + (1 - alpha) g_{t+1} backwards in time, dx = sum_s alpha_s g^(s)."""
    traces = [scipy.signal.lfilter([a], [1.0, a - 1.0], xn, axis=1) for a in ALPHAS]
    dx = sum(a * scipy.signal.lfilter([1.0], [1.0, a - 1.0], gn[:, ::-1, s], axis=1)[:, ::-1]
             for s, a in enumerate(ALPHAS))
    return traces, dx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ema_default_plan_warm_up_segments_vs_float64(dtype):
    """The default plans at few channels and long T (warmed-up segments, at this GPU's SM count),
    forward and backward, against float64 IIR filters and, elementwise, the exact two passes."""
    B, T, D = 2, 65536, 40
    bits = 16 if dtype == torch.bfloat16 else 24
    fwd, bwd = plan.choose(None, plan.EMA_FWD, B, D, SMS), plan.choose(None, plan.EMA_BWD, B, D, SMS)
    for c in (fwd, bwd):  # both warm up at this shape
        assert plan.ema_plan(c, B * -(-D // c.block), T, ALPHAS, SMS, bits)[2] is not None
    x = torch.randn(B, T, D, device="cuda").to(dtype)
    gy = torch.randn(B, T, 3, D, device="cuda").to(dtype)
    out = ema.ema_traces_fwd(x, ALPHAS)[0]
    gx = ema.ema_traces_bwd(gy, ALPHAS, None, dtype)[0]
    traces, dx = _lfilter_ema(x.double().cpu().numpy(), gy.double().cpu().numpy())
    for s, ref in enumerate(traces):
        assert rel(out[:, :, s].cpu(), torch.from_numpy(ref)) < TOL[dtype]
    assert rel(gx.cpu(), torch.from_numpy(dx.copy())) < TOL[dtype]
    for got, want in ((out, ema.ema_traces_fwd(x, ALPHAS, cfg=replace(fwd, warmup=False))[0]),
                      (gx, ema.ema_traces_bwd(gy, ALPHAS, None, dtype, cfg=replace(bwd, warmup=False))[0])):
        assert within_bf16_warmup(got, want)


def test_default_plan_warms_up_at_long_t_and_falls_back_to_two_passes():
    cfg = plan.choose(None, plan.EMA_FWD, 1, 768, SMS)
    nseg, seglen, warm = plan.ema_plan(cfg, 768 // cfg.block, 65536, ALPHAS, SMS)
    assert warm == plan.warm_steps(ALPHAS, cfg.ct) and nseg > 1 and seglen >= plan.WARM_SEG_RATIO * max(warm)
    # a timescale that remembers 17k steps: too few programs with warm-ups, so two passes, still right
    slow = (0.5, 1e-3)
    assert plan.ema_plan(cfg, 768 // cfg.block, 65536, slow, SMS)[2] is None
    assert plan.ema_plan(WARM, 1, 4097, slow, SMS)[2] is None
    _ema_case(1, 4097, 33, torch.float32, True, WARM, WARM, slow)


@pytest.mark.parametrize(
    "cfg",
    [plan.TileConfig(stages=1), plan.TileConfig(ct=8, stages=8), plan.TileConfig(ct=32, stages=3, split=True)],
    ids=["unpipelined", "8-deep", "segmented-3-deep"],
)
def test_pipeline_depths_vs_naive(cfg):
    """Software-pipelined tile loops of any depth, T shorter than the pipeline included."""
    for T in (5, 77, 300):
        _ema_case(2, T, 40, torch.float32, True, cfg, cfg)
        _lin_case(2, T, (40,), torch.float32, True, cfg=cfg)


@pytest.mark.parametrize(
    "cfg",
    [plan.TileConfig(ct=16, block=64, vec=2, split=False), plan.TileConfig(ct=16, block=128, vec=4, stages=3, split=True),
     plan.TileConfig(ct=32, block=64, vec=2, stages=4, split=True)],
    ids=["64-one-pass", "128-segmented", "ct32-segmented"],
)
@pytest.mark.parametrize("T", [16, 33, 256, 257, 300])
def test_whole_channel_blocks_and_full_tiles_vs_naive(T, cfg):
    """Channels a multiple of the block (no channel mask), T at and around multiples of CT and of
    the segment length: the unmasked full-tile loop and the masked first and last tiles."""
    _ema_case(2, T, 256, torch.float32, True, cfg, cfg)
    _lin_case(2, T, (2, 128), torch.float32, True, cfg=cfg)


@pytest.mark.parametrize("D", [256, 200], ids=["whole-blocks", "masked-channels"])
@pytest.mark.parametrize("split", [False, True], ids=["one-pass", "warm-segments"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ema_programs_of_two_warps_vs_naive(D, split, dtype):
    """The forward's narrow default: two 64-channel warps side by side in one program."""
    cfg = replace(plan.EMA_FWD[1], split=split, warmup=split or None, min_programs=8 if split else 0)
    assert cfg.num_warps == 2
    T = 4097
    if split:
        assert plan.ema_plan(cfg, 1 * -(-D // cfg.block), T, ALPHAS, SMS)[2] is not None
    _ema_case(1, T, D, dtype, True, cfg, None)


def _lin_case(B, T, feat, dtype, with_h0, a_shape=None, cfg=None):
    dev = "cuda"
    full = (B, T) + feat
    a = (torch.rand(a_shape or full, device=dev, dtype=torch.float64) * 0.5 + 0.5)
    b = torch.randn(full, device=dev, dtype=torch.float64)
    h0 = torch.randn((B,) + feat, device=dev, dtype=torch.float64) if with_h0 else None
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    h0r = None if h0 is None else h0.clone().requires_grad_()
    ref, ref_T = naive_linear_scan(ar, br, h0r, return_state=True)
    gy, gT = torch.randn_like(ref), torch.randn_like(ref_T)
    ((ref * gy).sum() + (ref_T * gT).sum()).backward()

    a_in, b_in = a.to(dtype), b.to(dtype)
    out, out_T = lin.linear_scan_fwd(a_in, b_in, None if h0 is None else h0.float(), cfg=cfg)
    assert out.dtype == dtype and out.shape == full
    assert rel(out, ref) < TOL[dtype]
    assert rel(out_T, ref_T) < TOL[dtype]
    ga, gb, g0 = lin.linear_scan_bwd(a_in, gy.to(dtype), out, None if h0 is None else h0.float(), gT.float(), cfg=cfg)
    assert rel(ga.sum_to_size(a.shape), ar.grad) < TOL[dtype]
    assert rel(gb, br.grad) < TOL[dtype]
    if with_h0:
        a0 = a_in.expand(full)[:, 0].float()
        assert rel(a0 * g0, h0r.grad) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero", "h0"])
@pytest.mark.parametrize("T", [1, 63, 500, 4097])
def test_linear_scan_triton_selective_vs_naive(T, with_h0, dtype):
    _lin_case(2, T, (3, 24), dtype, with_h0)


@pytest.mark.parametrize("cfg", range(len(plan.LIN_FWD)), ids=lambda i: f"LIN_FWD[{i}]")
@pytest.mark.parametrize("a_shape", [None, (1, 1, 200), (3, 1, 200), (1, 4097, 200)],
                         ids=["full", "channel", "batch-channel", "time-channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_linear_scan_forward_defaults_vs_naive(cfg, a_shape, dtype):
    """Each default forward tile config, forced, with decays full-size or broadcast over batch and/or
    time, over 200 channels (a partial 128- and 64-channel block) and 4097 steps."""
    dev = "cuda"
    full = (3, 4097, 200)
    a = torch.rand(a_shape or full, device=dev, dtype=torch.float64) * 0.5 + 0.5
    b = torch.randn(full, device=dev, dtype=torch.float64)
    h0 = torch.randn(3, 200, device=dev, dtype=torch.float64)
    ref, ref_T = naive_linear_scan(a.to(dtype).double(), b.to(dtype).double(), h0.float().double(), return_state=True)
    out, out_T = lin.linear_scan_fwd(a.to(dtype), b.to(dtype), h0.float(), cfg=plan.LIN_FWD[cfg])
    assert rel(out, ref) < TOL[dtype] and rel(out_T, ref_T) < TOL[dtype]


@pytest.mark.parametrize("T", [63, 4097])
def test_linear_scan_triton_segmented_and_broadcast_decay(T):
    _lin_case(1, T, (40,), torch.float32, True, cfg=SPLIT)
    _lin_case(2, T, (40,), torch.float32, True, a_shape=(1, 1, 40))


def test_scratch_kept_per_stream_and_made_afresh_under_graph_capture():
    """A segmented call's scratch (segment end states and decay products, ``cache.scratch``) is kept
    per stream: calls queued on two streams at once each use their own. A call captured in a CUDA graph
    makes its own, which its replays keep using while eager calls run between them."""
    from emaprobe.ops.triton import cache

    cache.clear()
    g = torch.Generator(device="cuda").manual_seed(0)
    cases = [(torch.rand(1, 4097, 40, device="cuda", generator=g) * 0.5 + 0.5,
              torch.randn(1, 4097, 40, device="cuda", generator=g)) for _ in range(3)]
    refs = [naive_linear_scan(a.double(), b.double()) for a, b in cases]
    lin.linear_scan_fwd(*cases[0], cfg=SPLIT, state=False)
    (p,) = cache.store("lin_fwd").values()
    assert p.nseg > 1 and len(p.scratch) == 1
    streams = [torch.cuda.Stream() for _ in range(2)]
    outs: list = [[], []]
    for _ in range(20):  # queued on both streams without waiting: any sharing of scratch would mix them
        for s, (a, b), got in zip(streams, cases[1:], outs):
            with torch.cuda.stream(s):
                got.append(lin.linear_scan_fwd(a, b, cfg=SPLIT, state=False)[0])
    torch.cuda.synchronize()
    assert len(p.scratch) == 3
    for got, ref in zip(outs, refs[1:]):
        assert max(rel(o, ref) for o in got) < TOL[torch.float32]
    a, b = (t.clone() for t in cases[0])
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        lin.linear_scan_fwd(a, b, cfg=SPLIT, state=False)  # warm-up on the capture's stream
    torch.cuda.current_stream().wait_stream(side)
    kept = len(p.scratch)
    with torch.cuda.graph(graph):
        captured = lin.linear_scan_fwd(a, b, cfg=SPLIT, state=False)[0]
    assert len(p.scratch) == kept  # the capture's scratch is the graph's, not the store's
    for (a_new, b_new), ref in zip(cases[1:], refs[1:]):
        a.copy_(a_new)
        b.copy_(b_new)
        graph.replay()
        eager = lin.linear_scan_fwd(*cases[0], cfg=SPLIT, state=False)[0]  # between replays, its own scratch
        torch.cuda.synchronize()
        assert rel(captured, ref) < TOL[torch.float32] and rel(eager, refs[0]) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "decays,a_shape",
    [((0.5, 0.8), None), ((0.5, 1.0), None), ((0.99, 1.0), None), ((0.5, 0.99), (1, 1, 40)), ((0.85, 0.9), None)],
    ids=["forget", "mixed", "remember", "broadcast", "near-the-bits"],
)
def test_linear_scan_warmup_segments_vs_naive(decays, a_shape, dtype):
    """Warmed-up segments: decays that forget within the warm-up (no rescans), that do not (every
    tile rescanned from its exact incoming state), a mix, a decay broadcast over batch and time, and
    decays near the warm-up's own (0.878 on average), some tiles rescanned.

    The reference scans the inputs as rounded to ``dtype``: a bf16 decay of 0.999 is 1.0, and over
    3000 steps that, not the kernel, would decide the error. Constant decays within 1e-4 of 1 stay
    out of the broadcast case: over 3000 steps float32 itself errs by ~1e-5 there, in either plan."""
    T = 3001
    nseg, seglen = plan.warm_plan(WARM, 1, T, plan.LIN_WARM_STEPS, SMS)
    assert nseg >= 3 and T % seglen
    lo, hi = decays
    dev = "cuda"
    full = (1, T, 40)
    a = torch.rand(a_shape or full, device=dev, dtype=torch.float64) * (hi - lo) + lo
    b = torch.randn(full, device=dev, dtype=torch.float64)
    h0 = torch.randn(1, 40, device=dev, dtype=torch.float64)
    ref, ref_T = naive_linear_scan(a.to(dtype).double(), b.to(dtype).double(), h0.float().double(), return_state=True)
    out, out_T = lin.linear_scan_fwd(a.to(dtype), b.to(dtype), h0.float(), cfg=WARM)
    assert rel(out, ref) < TOL[dtype] and rel(out_T, ref_T) < TOL[dtype]
    exact, exact_T = lin.linear_scan_fwd(a.to(dtype), b.to(dtype), h0.float(), cfg=TWO_PASS)
    if dtype == torch.float32:  # against the exact two passes, elementwise
        assert (out - exact).abs().max() <= 2.0 ** -18 * exact.abs().max()
        assert (out_T - exact_T).abs().max() <= 2.0 ** -18 * exact.abs().max()
    else:  # warm-ups to bf16's 16 bits (plan.lin_warm_steps): within one rounding plus 2**-15 of the largest
        got, want = out.float(), exact.float()
        assert within_bf16_warmup(got, want)
        assert (got != want).float().mean() < 0.01
        assert (out_T - exact_T).abs().max() <= 2.0 ** -15 * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_autograd_matches_naive(dtype):
    """The differentiable wrappers: grads to every input, through traces and final state."""
    B, T, D = 2, 300, 24
    x = torch.randn(B, T, D, device="cuda", dtype=torch.float64)
    h0 = torch.randn(B, 3, D, device="cuda", dtype=torch.float64)
    gy = torch.randn(B, T, 3, D, device="cuda", dtype=torch.float64)
    gT = torch.randn(B, 3, D, device="cuda", dtype=torch.float64)

    def grads(fn, cast):
        xi = x.clone().to(cast).requires_grad_()
        hi = h0.clone().to(cast if cast == torch.float64 else torch.float32).requires_grad_()
        y, yT = fn(xi, hi)
        ((y.double() * gy).sum() + (yT.double() * gT).sum()).backward()
        return y, yT, xi.grad, hi.grad

    ref = grads(lambda xi, hi: naive_ema_traces(xi, ALPHAS, hi, return_state=True), torch.float64)
    got = grads(lambda xi, hi: ema.fused_ema_traces(xi, ALPHA_T.cuda(), hi), dtype)
    assert got[0].dtype == dtype
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL[dtype]

    a = torch.rand(B, T, D, device="cuda", dtype=torch.float64) * 0.5 + 0.5
    b = torch.randn(B, T, D, device="cuda", dtype=torch.float64)
    s0 = torch.randn(B, D, device="cuda", dtype=torch.float64)
    gy2 = torch.randn(B, T, D, device="cuda", dtype=torch.float64)

    def lin_grads(fn, cast):
        ai, bi = a.clone().to(cast).requires_grad_(), b.clone().to(cast).requires_grad_()
        si = s0.clone().to(cast if cast == torch.float64 else torch.float32).requires_grad_()
        y, yT = fn(ai, bi, si)
        ((y.double() * gy2).sum() + (yT.double() * gT[:, 0]).sum()).backward()
        return y, yT, ai.grad, bi.grad, si.grad

    ref = lin_grads(lambda ai, bi, si: naive_linear_scan(ai, bi, si, return_state=True), torch.float64)
    got = lin_grads(lin.fused_linear_scan, dtype)
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL[dtype]


@pytest.mark.parametrize("cfg", [None, WARM, TWO_PASS], ids=["default", "warm", "two-pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,T,S,D,with_h0", [(2, 1, 3, 24, True), (2, 500, 3, 24, False), (3, 4097, 2, 200, True)],
                         ids=["T1", "T500", "T4097-masked-channels"])
def test_gated_scan_triton_vs_naive(B, T, S, D, with_h0, dtype, cfg):
    """The gates inside the kernels (``gated_scan_fwd`` / ``_bwd``) against the float64 reference:
    h, h_T and the gradients of the logits, x, both biases and h0; one pass, segments that warm up
    (decays from sigmoids of N(0, 4) logits: some channels forget within the warm-up, some are
    rescanned) and two passes."""
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(T)
    logits = 2 * torch.randn(B, T, 2, S, D, device=dev, dtype=torch.float64, generator=g)
    x = torch.randn(B, T, D, device=dev, dtype=torch.float64, generator=g)
    ba, bg = (torch.randn(S, D, device=dev, dtype=torch.float64, generator=g) for _ in range(2))
    h0 = torch.randn(B, S, D, device=dev, dtype=torch.float64, generator=g) if with_h0 else None
    leaves = [t.clone().requires_grad_() for t in (logits, x, ba, bg)]
    h0r = None if h0 is None else h0.clone().requires_grad_()
    ref, ref_T = naive_gated_scan(*leaves, h0r, return_state=True)
    gy, gT = torch.randn_like(ref), torch.randn_like(ref_T)
    ((ref * gy).sum() + (ref_T * gT).sum()).backward()

    lg_in, x_in = logits.to(dtype), x.to(dtype)
    h0_in = None if h0 is None else h0.float()
    out, out_T = lin.gated_scan_fwd(lg_in, x_in, ba.float(), bg.float(), h0_in, cfg=cfg)
    assert out.dtype == dtype and out.shape == (B, T, S, D)
    assert rel(out, ref) < TOL[dtype]
    assert rel(out_T, ref_T) < TOL[dtype]
    dl, dx, dba, dbg, g0 = lin.gated_scan_bwd(lg_in, x_in, ba.float(), bg.float(), gy.to(dtype), out, h0_in,
                                              gT.float(), cfg=cfg, state=with_h0)
    assert dl.dtype == dtype and dx.dtype == dtype and dba.dtype == torch.float32
    for got, leaf in zip((dl, dx, dba, dbg), leaves):
        assert rel(got, leaf.grad) < TOL[dtype]
    if with_h0:  # the gated backward returns dL/dh0 itself
        assert rel(g0, h0r.grad) < TOL[dtype]


def test_public_gated_scan_picks_triton_and_matches_the_torch_backend():
    """``gated_scan(backend="auto")`` on CUDA runs the fused kernels: values and gradients as the composed
    torch backend's, in float32."""
    B, T, S, D = 2, 333, 3, 40
    base = [torch.randn(B, T, 2, S, D, device="cuda"), torch.randn(B, T, D, device="cuda"),
            torch.randn(S, D, device="cuda"), torch.randn(S, D, device="cuda"), torch.randn(B, S, D, device="cuda")]
    results = []
    for backend in ("auto", "torch"):
        leaves = [t.clone().requires_grad_() for t in base]
        y, yT = gated_scan(*leaves, return_state=True, backend=backend)
        ((y * y).sum() + yT.sum()).backward()
        results.append([y, yT] + [t.grad for t in leaves])
    for got, want in zip(*results):
        assert rel(got, want) < 1e-5


def test_public_api_picks_triton_and_matches():
    x = torch.randn(2, 129, 16, device="cuda", requires_grad=True)
    y = ema_traces(x, ALPHAS, backend="auto")
    ref = naive_ema_traces(x.detach().double(), ALPHAS)
    assert rel(y, ref) < 1e-5
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    a = torch.rand(2, 129, 16, device="cuda") * 0.5 + 0.5
    b = torch.randn(2, 129, 16, device="cuda")
    assert rel(linear_scan(a, b, backend="triton"), naive_linear_scan(a.double(), b.double())) < 1e-5


@pytest.mark.parametrize("cfg", [None, WARM, TWO_PASS], ids=["default", "warm", "two-pass"])
def test_without_a_state_the_outputs_and_gradients_are_the_same(cfg):
    """``state=False`` only drops the final state's store: traces, selective outputs and every
    gradient equal those of a call that keeps it, in one pass, warmed-up segments and two
    passes; the public ops' default (``return_state=False``) takes that path. Equal to rounding,
    not bitwise: compiled without the store, the EMA kernels differed in the last bit here and
    there (H200: 6e-5 in bf16 traces, 2.4e-7 in a float32 gradient; the selective scan's were
    bitwise equal), as a compiler may fuse a multiply-add differently once a use is gone."""
    B, T, D = 1, 4097, 40
    x = torch.randn(B, T, D, device="cuda").to(torch.bfloat16)
    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.5).to(torch.bfloat16)
    gh = torch.randn(B, T, 3, D, device="cuda").to(torch.bfloat16)
    lin_cfg = None if cfg is WARM else cfg  # the backward has no warm-up plan
    pairs = [(ema.ema_traces_fwd(x, ALPHAS, cfg=cfg), ema.ema_traces_fwd(x, ALPHAS, cfg=cfg, state=False)),
             (ema.ema_traces_bwd(gh, ALPHAS, cfg=cfg), ema.ema_traces_bwd(gh, ALPHAS, cfg=cfg, state=False)),
             (lin.linear_scan_fwd(a, x, cfg=cfg), lin.linear_scan_fwd(a, x, cfg=cfg, state=False)),
             (lin.linear_scan_bwd(a, x, x, cfg=lin_cfg), lin.linear_scan_bwd(a, x, x, cfg=lin_cfg, state=False))]
    for kept, dropped in pairs:
        assert dropped[-1] is None and kept[-1] is not None
        for u, v in zip(kept[:-1], dropped[:-1]):
            torch.testing.assert_close(v, u)  # the dtype's default tolerances: a rounding apart
    grads = []
    for want in (True, False):
        xi, ai = x.clone().requires_grad_(), a.clone().requires_grad_()
        y = ema_traces(xi, ALPHAS, return_state=want, backend="triton")
        z = linear_scan(ai, xi, return_state=want, backend="triton")
        y, z = (y[0], z[0]) if want else (y, z)
        torch.autograd.backward((y, z), (gh, x))
        grads.append((y, z, xi.grad, ai.grad))
    for u, v in zip(*grads):
        torch.testing.assert_close(v, u)


def test_ema_traces_one_million_steps_bf16():
    """T = 1M in bf16 (segmented: few channels), against a float64 IIR filter on the CPU."""
    B, T, D = 1, 1_000_000, 64
    x = torch.randn(B, T, D, device="cuda").to(torch.bfloat16)
    out, out_T = ema.ema_traces_fwd(x, ALPHA_T)
    xn = x.float().cpu().double().numpy()
    for s, a in enumerate(ALPHAS):
        ref = scipy.signal.lfilter([a], [1.0, a - 1.0], xn, axis=1)
        err = np.linalg.norm(out[:, :, s].float().cpu().numpy() - ref) / np.linalg.norm(ref)
        assert err < 1e-2, f"alpha={a}: relative error {err:.2e}"
        assert np.allclose(out_T[:, s].cpu().numpy(), ref[:, -1], rtol=1e-3, atol=1e-3)
