"""Benchmark on CUDA: the Triton scan kernels against the copy-bandwidth floor and their peers.

Command:   emaprobe bench scan --device cuda --out results/bench [--sweep]
           (where emaprobe is not installed: ``PYTHONPATH=src python -m emaprobe.cli bench scan ...``)
Hardware:  one CUDA GPU; committed figures from one NVIDIA H100 80GB HBM3 and one H200.
Run time:  about 2 minutes at the default shapes (the PyTorch step loop and the first
           import of accelerated-scan's CUDA "warp" kernel, which compiles, ~1 minute).
Expected:  on the H100 (results/bench/scan_cuda_nvidia-h100-80gb-hbm3.json), 3.0 TB/s copy,
           B=16 T=2048 D=768 S=3 bf16: floor 0.067 ms; ours 0.0777 ms forward (1.16x),
           0.176 ms forward+backward (1.31x), selective forward 0.064 ms (1.27x of its
           0.050 ms floor); the targets are 1.25x, 1.5x, 1.5x. B=64 T=512: 1.12x, 1.14x,
           1.13x; B=1 T=65536: 1.17x, 1.27x, 1.27x; B=4 T=8192: 1.249x, 1.43x, 1.44x. Peers
           at B=16 T=2048: accelerated-scan warp 0.332 ms forward, 0.247 ms selective
           forward+backward (ours 0.176), fla chunk_hgrn 0.814 ms, FFT 2.20 ms, step loop
           0.15 s. On the H200 (scan_cuda_nvidia-h200.json, older kernels without the
           warm-ups) the B16 forward was 1.39x.

In one run it measures:

* the device-to-device copy bandwidth (a 1 GiB copy, bytes read plus written, eager);
* the floor: (2 + 2S) bytes per token-channel in bf16 for the EMA forward (read x,
  write S traces), the same again for the backward (read S gradients, write dx);
  for the selective scan, read a and b and write h: 6 bytes per token-channel, and
  10 more for its backward (read a, gh, h; write ga, gb);
* ours: ``ops/triton`` EMA forward and forward+backward, the selective scan forward
  and forward+backward, and, eagerly, the public ``ema_traces`` as ``scan.py`` calls it;
* the selective mixer's fused form, ``gated_scan`` (gates computed in the scan's tiles), forward
  and forward+backward at S = 3 timescales of D channels, against its floors (``gated_floors``:
  6 + 2/S bytes per token, channel and timescale forward, 12 + 4/S more backward) and its
  peer, the composed form (``gate_inputs``' float32 decays and inputs, then ``linear_scan``),
  what a backend without the fused form runs (``bench_gated``);
* host overhead (``host_overhead``): microseconds of host time a call (``host_us``:
  Python, dispatch and launches, the GPU not waited for) of the EMA launcher, the public
  ``ema_traces`` and ``linear_scan`` forwards and the public EMA forward + backward; and the
  public EMA forward (and forward + backward) called eagerly back to back against the same call
  replayed from a CUDA graph. The forward + backward has two peers, timed the same ways: the
  same kernels launched without autograd (``launchers_ema_fwdbwd``), and the autograd engine on
  its own, a PyTorch multiply forward and backward (``torch_mul_fwdbwd``), since every
  ``backward`` call pays the engine's fixed cost whatever its kernels. Targets at B=16 T=2048
  D=768: 25 us a call, eager at most 1.3x graphed (HOST_US_TARGET, EAGER_VS_GRAPH_TARGET; the
  run prints a verdict line). The host time is taken in HOST_WINDOWS windows a fraction of a
  second apart, each beside a gauge of the host's own speed (``host_gauge_ms``, a fixed
  pure-Python loop): on the H200 machines the gauge flips between two speeds 1.6-1.9x apart
  within one process, and every host figure with it (notes/kernels.md, "host time, windows").
  ``host_us_*`` is the fastest window (timeit's convention: slower ones are the machine, not the
  code), ``*_median`` the median window, and the verdict says in how many windows the targets
  held; the plot's third panel draws every window;
* peers: PyTorch's copy of the same broadcast bytes, a PyTorch step loop, FFT
  convolution, accelerated-scan's CUDA "warp" kernel (T <= 2048, see WARP_MAX_T) and
  flash-linear-attention's HGRN chunk kernel when they import. The peers get their
  inputs pre-built in their own layout (the S traces as S*D channels), outside the
  timed region.

Kernels are timed as the median per call of CUDA-graph replays (``_bench``), ours and
peers alike; ``*_eager_ms`` figures are launched from Python. Before timing, each of our
kernels is checked against a float64 reference on fresh random inputs with NaN-poisoned
outputs. Writes ``scan_cuda_<card>[_<tag>].json`` and ``.png`` (the card's name in the file
names and inside both) into ``--out``.

``--grid`` times only the EMA forward and the selective forward, graphed,
against their floors, at every T in GRID_TS and D in GRID_DS (B the least power of two with
B*T*D >= 2^24), and writes ``scan_grid_<card>.json`` and ``.png`` (a heat map of time / floor;
target FLOOR_TARGET). Its peer at each shape is a plain streaming kernel moving the same bytes
(``stream_peer_ms``: PyTorch's elementwise negation, half the bytes read and half written), what
a kernel with no scan and no time axis gets out of the same traffic at that size. Run time:
about a minute. ``--grid --sweep`` also times, at each shape where a forward's default plan cuts
time into segments, that plan with one change to its tile (GRID_SWEEP: depths, warps an SM, tile
height or width), graphed beside the default and checked against the default's output
(``grid_sweep``); the JSON keeps every variant and the plot adds the fastest plan per shape.
The grid's JSON is written after each shape as well, so a run cut off (a device lent for ten
minutes a call) keeps the shapes it finished, and ``--resume`` measures only the rest.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from emaprobe.experiments.bench_scan import out_of_memory_named
from emaprobe.experiments.common import (
    bench_eager_ms,
    card_slug,
    check_tag,
    copy_bandwidth,
    earlier_runs,
    pyplot,
    result_source,
    save_fig,
    write_result,
)
from emaprobe.ops import DEFAULT_ALPHAS, ema_step, ema_traces
from emaprobe.utils import atomic_write_json, read_json, run_record

DEFAULT_SHAPES = ((64, 512, 768), (16, 2048, 768), (4, 8192, 768), (1, 65536, 768))
HEADLINE = (16, 2048, 768)
# TileConfig fields tried by --sweep: (ct, block, num_warps, vec, stages, min_programs); min_programs -1
# = one pass, 0 = the default rule, else split below that many programs into enough for it
SWEEP = ((16, 64, 1, 2, 3, -1), (16, 64, 1, 2, 4, -1), (16, 64, 1, 2, 6, -1), (32, 64, 1, 2, 3, -1),
         (32, 64, 1, 2, 4, -1), (8, 64, 1, 2, 8, -1), (16, 128, 1, 4, 3, -1), (16, 128, 1, 4, 4, -1),
         (16, 128, 1, 4, 3, 0), (16, 128, 1, 4, 4, 0), (16, 64, 1, 2, 4, 0), (16, 128, 1, 4, 3, 2112))
# and, for launches of few warps (the grid's shapes with B*D <= 8192): the forward's
# two-warp default with deeper pipelines, narrower one-warp tiles, and exact two-pass segments
# (warmup False) in place of warm-ups; (ct, block, num_warps, vec, stages, warmup)
SWEEP_FEW_WARPS = ((32, 128, 2, 2, 4, None), (32, 128, 2, 2, 6, None), (32, 128, 2, 2, 8, None),
                   (32, 128, 2, 2, 4, False), (16, 64, 1, 2, 6, None), (16, 64, 1, 2, 8, None),
                   (16, 64, 1, 2, 6, False), (16, 32, 1, 1, 6, None))
SWEEP_SHAPES = ((16, 2048, 768), (4, 8192, 768))
LOOP_MAX_STEPS = 2048
# accelerated-scan's warp kernel hit an illegal memory access at B=4 T=8192 (S*D=2304
# channels) on the H200 here, which ends the CUDA context: it is timed up to this T
WARP_MAX_T = 2048  # the step loop beyond this many steps is timed on a prefix and scaled


# --grid: every T and D below at the least power-of-two B with B*T*D >= GRID_MIN_ELEMS,
# the EMA and selective forwards timed graphed against their floors, target FLOOR_TARGET or better
GRID_TS = (512, 2048, 8192, 65536)
GRID_DS = (256, 768, 1024, 4096)
GRID_MIN_ELEMS = 1 << 24
FLOOR_TARGET = 1.3

# --grid --sweep: plans the two forwards could take at the grid's segmented shapes, each one change to the
# tile their default plan takes there (``sweep_tiles``). ``warps_per_sm`` sets ``min_programs`` so that the
# segments run that many warps an SM (the defaults: plan.WARM_WARPS_PER_SM for the EMA forward,
# plan.LIN_WARM_WARPS_PER_SM for the selective one). These are the variants of the H100 sweeps in
# notes/kernels.md, so that another card's best plans are one command away.
GRID_SWEEP = (
    ("ema", "seg_stages=4", {"seg_stages": 4}),
    ("ema", "seg_stages=8", {"seg_stages": 8}),
    ("ema", "1 warp/SM", {"warps_per_sm": 1}),
    ("ema", "3 warps/SM", {"warps_per_sm": 3}),
    ("ema", "ct=16", {"ct": 16}),
    ("sel", "2 warps/SM", {"warps_per_sm": 2}),
    ("sel", "6 warps/SM", {"warps_per_sm": 6}),
    ("sel", "stages=3", {"stages": 3}),
    ("sel", "stages=6", {"stages": 6}),
    ("sel", "64ch 1 warp", {"block": 64, "num_warps": 1}),
)
# a variant whose output differs from the default plan's by more than this (max abs, relative to the
# output's largest value) is recorded as wrong and never the best (the EMA warm-ups differ by ~2e-3 in bf16)
SWEEP_MAX_DIFF = 1e-2
# a variant is the fastest plan at a shape only if it takes at least this share off the default's time
# (two runs of one plan differed by up to 0.6% in the H100 A/Bs of notes/kernels.md)
SWEEP_MIN_GAIN = 0.01

EAGER_FALLBACKS: list[str] = []  # figures that could not be timed inside a CUDA graph
# The host-overhead targets: the public ops' Python time a call (their launches included,
# the GPU not waited for), and eager back-to-back calls against the same calls replayed from a graph
HOST_US_TARGET = 25.0
EAGER_VS_GRAPH_TARGET = 1.3
HOST_WINDOWS = 5  # host-time windows, HOST_WINDOW_GAP_S apart (host_overhead)
HOST_WINDOW_GAP_S = 0.3


def _bench(fn, name: str = "", rep: int = 100) -> float:
    """Median milliseconds of ``fn`` per call, replayed from a CUDA graph.

    A graph removes the Python launch overhead (tens of microseconds a launch, more than
    the kernels themselves at these sizes), so the figure is the GPU's time; every
    kernel, ours and peers alike, is timed this way. Falls back to eager timing (and
    records ``name`` in EAGER_FALLBACKS) when ``fn`` cannot be captured.
    """
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    except Exception as err:  # noqa: BLE001 - e.g. a peer that synchronises inside
        torch.cuda.synchronize()
        EAGER_FALLBACKS.append(name)
        print(f"{name}: CUDA-graph capture failed ({type(err).__name__}: {str(err)[:120]}); timing eagerly",
              file=sys.stderr)
        return bench_eager_ms(fn, rep=rep)


def host_us(fn, calls: int = 50, rounds: int = 7, sync=None) -> float:
    """Median microseconds of host time per call of ``fn``: ``calls`` calls back to back timed by the
    CPU clock, the GPU waited for only before and after each round (``sync``, default
    ``torch.cuda.synchronize``), so the figure is Python, dispatch and launch time, not the
    kernel's. ``calls`` stays well under the launch queue's depth (about a thousand launches), so
    a call never waits for a free slot. One warm-up round first (compilation, plan caches)."""
    sync = torch.cuda.synchronize if sync is None else sync
    per_call = []
    for r in range(rounds + 1):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        sync()
        if r:
            per_call.append((t1 - t0) / calls * 1e6)
    per_call.sort()
    return per_call[len(per_call) // 2]


def host_gauge_ms(n: int = 200_000) -> float:
    """Milliseconds of a fixed pure-Python loop: the host's own speed at this moment, beside which a
    host-time figure can be read (no GPU, no torch)."""
    t0 = time.perf_counter()
    acc = 0
    for i in range(n):
        acc += i
    return (time.perf_counter() - t0) * 1e3


def host_windows(fns: dict, windows: int = HOST_WINDOWS, gap_s: float = HOST_WINDOW_GAP_S) -> list[dict]:
    """``host_us`` of each ``name: (fn, calls, grad)`` in ``fns`` (``grad``: autograd on while it runs),
    in ``windows`` windows ``gap_s`` apart, each opened by ``host_gauge_ms``: -> one dict a window
    (``gauge_ms`` and a figure per name)."""
    out = []
    for w in range(windows):
        if w:
            time.sleep(gap_s)
        row = {"gauge_ms": host_gauge_ms()}
        for name, (fn, calls, grad) in fns.items():
            with torch.set_grad_enabled(grad):
                row[name] = host_us(fn, calls=calls)
        out.append(row)
    return out


def _bench_back_to_back(fn, calls: int = 50, rounds: int = 7) -> float:
    """Median milliseconds per call of ``fn`` launched eagerly ``calls`` times back to back, timed by
    CUDA events around each round: the larger of the GPU's time and the host's, as a training step
    sees it (``triton.testing.do_bench`` clears L2 between calls, which hides host time under that
    clearing kernel)."""
    fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / calls)
    per_call.sort()
    return per_call[len(per_call) // 2]


def host_overhead(ts, shape, alphas) -> dict:
    """Host time a call (``host_us``) of the launcher, the public ops forward, and the public EMA
    forward + backward, in ``host_windows``; and the public EMA forward eager back to back against a
    graph replay.

    ``host_us_*`` is microseconds, the fastest window, ``host_us_*_median`` the median one;
    ``host_windows`` every window with its gauge; ``x_public_ema_fwd_eager_vs_graph`` is the
    eager/graphed ratio (target EAGER_VS_GRAPH_TARGET at the headline shape), ``*_ms`` milliseconds.
    """
    from emaprobe.ops import linear_scan

    B, T, D = shape
    S = len(alphas)
    dt = torch.bfloat16
    x = torch.randn(B, T, D, device="cuda", dtype=dt)
    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.5).to(dt)
    b = torch.randn(B, T, D, device="cuda", dtype=dt)
    row: dict = {}
    xg = x.detach().requires_grad_()
    gout = torch.randn(B, T, S, D, device="cuda", dtype=dt)

    def fwd_bwd():
        torch.autograd.backward(ema_traces(xg, alphas, backend="triton"), gout)
        xg.grad = None

    def launchers_fwd_bwd():  # the same kernels, launched without autograd
        ts.ema_traces_fwd(x, alphas, state=False)
        ts.ema_traces_bwd(gout, alphas, None, dt, state=False)

    def torch_mul_fwd_bwd():  # the autograd engine's own cost: one PyTorch kernel each way
        torch.autograd.backward(xg * 2.0, x)
        xg.grad = None

    timed = {"ema_fwd_launcher": (lambda: ts.ema_traces_fwd(x, alphas), 50, False),
             "public_ema_fwd": (lambda: ema_traces(x, alphas, backend="triton"), 50, False),
             "public_sel_fwd": (lambda: linear_scan(a, b, backend="triton"), 50, False),
             "public_ema_fwdbwd": (fwd_bwd, 25, True),
             "launchers_ema_fwdbwd": (launchers_fwd_bwd, 25, False),
             "torch_mul_fwdbwd": (torch_mul_fwd_bwd, 25, True)}
    row["host_windows"] = host_windows(timed)
    for name in timed:
        per_window = sorted(w[name] for w in row["host_windows"])
        row[f"host_us_{name}"] = per_window[0]
        row[f"host_us_{name}_median"] = per_window[len(per_window) // 2]
    with torch.no_grad():
        public = lambda: ema_traces(x, alphas, backend="triton")  # noqa: E731
        row["public_ema_fwd_graph_ms"] = _bench(public, "public_ema_fwd")
        row["public_ema_fwd_eager_b2b_ms"] = _bench_back_to_back(public)
    for name, fn in (("public_ema_fwdbwd", fwd_bwd), ("launchers_ema_fwdbwd", launchers_fwd_bwd),
                     ("torch_mul_fwdbwd", torch_mul_fwd_bwd)):
        row[f"{name}_graph_ms"] = _bench(fn, name)
        row[f"{name}_eager_b2b_ms"] = _bench_back_to_back(fn, calls=25)
        row[f"x_{name}_eager_vs_graph"] = row[f"{name}_eager_b2b_ms"] / row[f"{name}_graph_ms"]
    row["x_public_ema_fwd_eager_vs_graph"] = row["public_ema_fwd_eager_b2b_ms"] / row["public_ema_fwd_graph_ms"]
    return row


def host_overhead_verdict(row: dict) -> str:
    """One line against the host-overhead targets (host time a call of each public forward, ``ema_traces``
    and ``linear_scan``; the EMA forward eager over graphed): the fastest window's figures, the median
    window's, the gauge's range, and in how many windows both forwards were within the target."""
    us, sel = row["host_us_public_ema_fwd"], row["host_us_public_sel_fwd"]
    us_med, sel_med = row["host_us_public_ema_fwd_median"], row["host_us_public_sel_fwd_median"]
    ratio = row["x_public_ema_fwd_eager_vs_graph"]
    windows = row["host_windows"]
    held = sum(max(w["public_ema_fwd"], w["public_sel_fwd"]) <= HOST_US_TARGET for w in windows)
    gauges = [w["gauge_ms"] for w in windows]
    ok = max(us, sel) <= HOST_US_TARGET and ratio <= EAGER_VS_GRAPH_TARGET
    return (f"host overhead at B={row['B']} T={row['T']} D={row['D']}: public ema_traces forward "
            f"{us:.1f} us a call, linear_scan {sel:.1f} us in the fastest of {len(windows)} windows "
            f"(median window {us_med:.1f} and {sel_med:.1f}; "
            f"the host's gauge {min(gauges):.1f}-{max(gauges):.1f} ms; target {HOST_US_TARGET:.0f} us, held in "
            f"{held} of {len(windows)} windows), eager {row['public_ema_fwd_eager_b2b_ms']:.4f} ms "
            f"against graphed {row['public_ema_fwd_graph_ms']:.4f} ms = {ratio:.2f}x (target "
            f"{EAGER_VS_GRAPH_TARGET}x): {'met' if ok else 'NOT met'} in the fastest window; "
            f"fwd+bwd {row['host_us_public_ema_fwdbwd']:.1f} us, {row['x_public_ema_fwdbwd_eager_vs_graph']:.2f}x"
            f"{_fwdbwd_peers(row)}")


def _fwdbwd_peers(row: dict) -> str:
    # the forward+backward's peers, where the row has them: the same kernels without autograd, and the
    # autograd engine alone (a PyTorch multiply forward and backward)
    parts = [f"{what} {row[f'host_us_{name}']:.1f} us, {row[f'x_{name}_eager_vs_graph']:.2f}x"
             for name, what in (("launchers_ema_fwdbwd", "without autograd"),
                                ("torch_mul_fwdbwd", "the autograd engine alone (x * 2)"))
             if f"host_us_{name}" in row]
    return f" ({'; '.join(parts)})" if parts else ""


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_kernels(ts, alphas) -> dict:
    """Fresh random inputs, NaN-poisoned outputs, float64 references: relative errors."""
    from emaprobe.ops import naive_ema_traces, naive_gated_scan, naive_linear_scan

    errs = {}
    alpha_t = torch.tensor(alphas, dtype=torch.float64)
    empty = torch.empty

    def poisoned(*a, **k):
        t = empty(*a, **k)
        return t.fill_(math.nan) if t.is_floating_point() else t

    torch.empty = poisoned  # every buffer the kernels allocate starts as NaN
    plans = {"": None, "_split": ts.TileConfig(ct=16, block=64, split=True, warmup=False),
             "_warm": ts.TileConfig(ct=16, block=64, split=True, warmup=True)}  # one pass; two; warm-ups
    try:
        for tag, cfg in plans.items():
            x = torch.randn(3, 4000, 96, device="cuda", dtype=torch.float64)
            xr = x.clone().requires_grad_()
            ref = naive_ema_traces(xr, alphas)
            gy = torch.randn_like(ref)
            (ref * gy).sum().backward()
            out, _ = ts.ema_traces_fwd(x.bfloat16(), alpha_t, cfg=cfg)
            gx, _ = ts.ema_traces_bwd(gy.bfloat16(), alpha_t, None, torch.bfloat16, cfg=cfg)
            errs[f"ema_fwd_bf16{tag}"] = _rel(out, ref)
            errs[f"ema_bwd_bf16{tag}"] = _rel(gx, xr.grad)
            a = torch.rand(3, 1000, 96, device="cuda", dtype=torch.float64) * 0.5 + 0.5
            b = torch.randn_like(a)
            ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
            ref = naive_linear_scan(ar, br)
            gy = torch.randn_like(ref)
            (ref * gy).sum().backward()
            out, _ = ts.linear_scan_fwd(a.bfloat16(), b.bfloat16(), cfg=cfg)
            ga, gb, _ = ts.linear_scan_bwd(a.bfloat16(), gy.bfloat16(), out, cfg=cfg)
            errs[f"lin_fwd_bf16{tag}"] = _rel(out, ref)
            errs[f"lin_bwd_a_bf16{tag}"] = _rel(ga, ar.grad)
            errs[f"lin_bwd_b_bf16{tag}"] = _rel(gb, br.grad)
            f64 = dict(device="cuda", dtype=torch.float64)  # logits, x, decay and gate biases (S = 3)
            leaves = [t.requires_grad_() for t in (2 * torch.randn(3, 1000, 2, 3, 32, **f64),
                                                   torch.randn(3, 1000, 32, **f64), torch.randn(3, 32, **f64),
                                                   torch.randn(3, 32, **f64))]
            ref = naive_gated_scan(*leaves)
            gy = torch.randn_like(ref)
            (ref * gy).sum().backward()
            lg, xg = (t.detach().bfloat16() for t in leaves[:2])
            db, gb_ = (t.detach().float() for t in leaves[2:])
            out, _ = ts.gated_scan_fwd(lg, xg, db, gb_, cfg=cfg)
            dl, dx, dba, dbg, _ = ts.gated_scan_bwd(lg, xg, db, gb_, gy.bfloat16(), out, cfg=cfg)
            errs[f"gated_fwd_bf16{tag}"] = _rel(out, ref)
            for name, got, leaf in (("logits", dl, leaves[0]), ("x", dx, leaves[1]), ("decay_bias", dba, leaves[2]),
                                    ("gate_bias", dbg, leaves[3])):
                errs[f"gated_bwd_{name}_bf16{tag}"] = _rel(got, leaf.grad)
    finally:
        torch.empty = empty
    return errs


# ---------------------------------------------------------------------------- peers


def _fft_kernels(T: int, alphas, device) -> torch.Tensor:
    """Spectra (S, T+1) of the causal kernels alpha (1 - alpha)^k, k < T, padded to 2T."""
    k = torch.arange(T, device=device, dtype=torch.float64)
    al = torch.tensor(alphas, device=device, dtype=torch.float64).view(-1, 1)
    return torch.fft.rfft((al * (1.0 - al) ** k).float(), n=2 * T)


def _fft_ema(x: torch.Tensor, Kf: torch.Tensor) -> torch.Tensor:
    """EMA traces as causal convolutions by FFT in float32 (the kernels' spectra precomputed)."""
    B, T, D = x.shape
    n = 2 * T
    Xf = torch.fft.rfft(x.float().transpose(1, 2), n=n)  # (B, D, n/2+1)
    y = torch.fft.irfft(Xf.unsqueeze(1) * Kf.view(1, -1, 1, Kf.shape[-1]), n=n)[..., :T]  # (B, S, D, T)
    return y.permute(0, 3, 1, 2).to(x.dtype)  # (B, T, S, D)


def _step_loop(x: torch.Tensor, alphas, steps: int) -> torch.Tensor:
    B, _, D = x.shape
    out = torch.empty(B, steps, len(alphas), D, device=x.device, dtype=x.dtype)
    h = None
    for t in range(steps):
        h = ema_step(x[:, t], h, alphas)
        out[:, t] = h
    return out


def _load_peers(want_warp: bool) -> dict:  # noqa: C901
    peers = {}
    # accelerated-scan's Triton kernel ("scalar") hit an illegal memory access here (H200,
    # Triton 3.6, B=64 T=512), which ends the CUDA context; its CUDA "warp" kernel is used
    if want_warp:
        try:
            t0 = time.time()
            from accelerated_scan.warp import scan as acc_warp

            peers["accelerated-scan (warp)"] = acc_warp
            print(f"accelerated-scan warp kernel compiled in {time.time() - t0:.0f} s", file=sys.stderr)
        except Exception as err:  # noqa: BLE001
            print(f"peer accelerated-scan (warp) unavailable: {err}", file=sys.stderr)
    try:
        from fla.ops.hgrn import chunk_hgrn

        peers["fla chunk_hgrn"] = chunk_hgrn
    except Exception as err:  # noqa: BLE001
        print(f"peer flash-linear-attention unavailable: {err}", file=sys.stderr)
    return peers


def _time_peer(name: str, fn, gates: torch.Tensor, tokens: torch.Tensor, fb: bool) -> float | None:
    """gates/tokens (B, C, T) for accelerated-scan; (B, T, C) with log-gates for fla."""
    try:
        if name.startswith("fla"):
            call = lambda g, u: fn(u, g)[0]  # noqa: E731 - chunk_hgrn(x, g) returns (o, state)
        else:
            call = fn
        if not fb:
            with torch.no_grad():
                return _bench(lambda: call(gates, tokens), name)
        g = gates.detach().requires_grad_()
        u = tokens.detach().requires_grad_()
        gout = torch.randn_like(tokens)

        def step():
            y = call(g, u)
            torch.autograd.backward(y, gout)
            g.grad = u.grad = None

        return _bench(step, name + " fwd+bwd")
    except Exception as err:  # noqa: BLE001
        print(f"peer {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None


# ---------------------------------------------------------------------------- one shape


def bench_shape(ts, shape, alphas, bw: float, peers: dict, loop: bool) -> dict:
    B, T, D = shape
    S = len(alphas)
    dt = torch.bfloat16
    n = B * T * D
    row: dict = {"B": B, "T": T, "D": D, "S": S, "dtype": "bfloat16"}
    row["floor_fwd_ms"] = (2 + 2 * S) * n / bw * 1e3
    row["floor_fwdbwd_ms"] = 2 * row["floor_fwd_ms"]
    row["floor_sel_fwd_ms"] = 6 * n / bw * 1e3  # read a, b; write h (bf16)
    # backward of the selective scan: read a, gh, h; write ga, gb
    row["floor_sel_fwdbwd_ms"] = row["floor_sel_fwd_ms"] + 10 * n / bw * 1e3
    alpha_t = torch.tensor(alphas, dtype=torch.float64, device="cuda")

    x = torch.randn(B, T, D, device="cuda", dtype=dt)
    with torch.no_grad():
        # alphas as floats, as the public op passes them: a CUDA tensor's values would cost a sync
        row["ours_ema_fwd_ms"] = _bench(lambda: ts.ema_traces_fwd(x, alphas), "ours_ema_fwd")
        row["ours_ema_fwd_eager_ms"] = bench_eager_ms(lambda: ts.ema_traces_fwd(x, alphas))
        out = torch.empty(B, T, S, D, device="cuda", dtype=dt)
        row["torch_broadcast_copy_ms"] = _bench(lambda: out.copy_(x.unsqueeze(2).expand(B, T, S, D)), "copy")
        # the public op, eager (do_bench: L2 cleared between calls; host_overhead times it back to back)
        row["public_ema_traces_fwd_eager_ms"] = bench_eager_ms(lambda: ema_traces(x, alphas, backend="triton"))
    xg = x.detach().requires_grad_()
    gout = torch.randn(B, T, S, D, device="cuda", dtype=dt)

    def ema_fb():
        y, _ = ts.fused_ema_traces(xg, alphas)
        torch.autograd.backward(y, gout)
        xg.grad = None

    row["ours_ema_fwdbwd_ms"] = _bench(ema_fb, "ours_ema_fwdbwd")

    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.5).to(dt)
    b = torch.randn(B, T, D, device="cuda", dtype=dt)
    with torch.no_grad():
        row["ours_sel_fwd_ms"] = _bench(lambda: ts.linear_scan_fwd(a, b), "ours_sel_fwd")
    ag, bg = a.detach().requires_grad_(), b.detach().requires_grad_()
    gsel = torch.randn(B, T, D, device="cuda", dtype=dt)

    def sel_fb():
        y, _ = ts.fused_linear_scan(ag, bg)
        torch.autograd.backward(y, gsel)
        ag.grad = bg.grad = None

    row["ours_sel_fwdbwd_ms"] = _bench(sel_fb, "ours_sel_fwdbwd")
    row.update(bench_gated(ts, x, alphas, bw, gout))

    with torch.no_grad():
        try:
            Kf = _fft_kernels(T, alphas, x.device)
            row["fft_ema_fwd_ms"] = _bench(lambda: _fft_ema(x, Kf), "fft", rep=50)
        except torch.OutOfMemoryError:
            row["fft_ema_fwd_ms"] = None
            torch.cuda.empty_cache()
        if loop:
            steps = min(T, LOOP_MAX_STEPS)
            _step_loop(x, alphas, min(steps, 64))
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            _step_loop(x, alphas, steps)
            torch.cuda.synchronize()
            row["step_loop_ms"] = (time.perf_counter() - t0) * 1e3 * T / steps
            row["step_loop_scaled_from_steps"] = steps if steps < T else None

    # peers see the S traces as S*D channels (EMA) or D channels (selective), inputs pre-built
    dec = (1.0 - alpha_t).to(dt).view(1, S, 1, 1)
    alp = alpha_t.to(dt).view(1, S, 1, 1)
    for name, fn in peers.items():
        key = name.split(" ")[0].replace("-", "_") + ("_warp" if "warp" in name else "")
        if name.startswith("fla"):
            tok = (alp.view(1, 1, S, 1) * x.unsqueeze(2)).reshape(B, T, S * D).contiguous()
            gat = dec.view(1, 1, S, 1).float().log().expand(B, T, S, D).reshape(B, T, S * D).to(dt).contiguous()
            tok_s, gat_s = b, a.float().log().to(dt)
        else:
            tok = (alp * x.transpose(1, 2).unsqueeze(1)).reshape(B, S * D, T).contiguous()
            gat = dec.expand(B, S, D, T).reshape(B, S * D, T).contiguous()
            tok_s, gat_s = b.transpose(1, 2).contiguous(), a.transpose(1, 2).contiguous()
        if "warp" in name and (T & (T - 1) or T > WARP_MAX_T):
            continue  # the warp kernel needs a power-of-two T; longer T crashed it here
        row[f"{key}_ema_fwd_ms"] = _time_peer(name, fn, gat, tok, fb=False)
        row[f"{key}_ema_fwdbwd_ms"] = _time_peer(name, fn, gat, tok, fb=True)
        row[f"{key}_sel_fwd_ms"] = _time_peer(name, fn, gat_s, tok_s, fb=False)
        row[f"{key}_sel_fwdbwd_ms"] = _time_peer(name, fn, gat_s, tok_s, fb=True)
        del tok, gat, tok_s, gat_s
        torch.cuda.empty_cache()
    row.update(host_overhead(ts, shape, alphas))
    row["x_ema_fwd_vs_floor"] = row["ours_ema_fwd_ms"] / row["floor_fwd_ms"]
    row["x_ema_fwdbwd_vs_floor"] = row["ours_ema_fwdbwd_ms"] / row["floor_fwdbwd_ms"]
    row["x_sel_fwd_vs_floor"] = row["ours_sel_fwd_ms"] / row["floor_sel_fwd_ms"]
    row["x_sel_fwdbwd_vs_floor"] = row["ours_sel_fwdbwd_ms"] / row["floor_sel_fwdbwd_ms"]
    torch.cuda.empty_cache()
    return row


def gated_floors(n: int, S: int, bw: float) -> tuple[float, float]:
    """Floors (ms) of ``gated_scan`` over n token-channels and S timescales in bf16: the forward reads two
    logits and writes h per token, channel and timescale, and reads x once for all S (6 + 2/S bytes); the
    backward reads the logits, gh and h and writes the logits' gradients (12 bytes), and reads x and writes
    dx once for all S (4/S). -> (forward, forward + backward)."""
    fwd = (6 + 2 / S) * n * S / bw * 1e3
    return fwd, fwd + (12 + 4 / S) * n * S / bw * 1e3


def bench_gated(ts, x: torch.Tensor, alphas, bw: float, gout: torch.Tensor) -> dict:
    """The selective mixer's fused form (``ops.gated_scan``: the gates computed in the scan's tiles), graphed,
    against its floors (``gated_floors``) and its peer, the composed form a backend without a fused one runs
    (``gate_inputs``' float32 decays and inputs, then ``linear_scan``). Decay biases at the mixer's initial
    values (decays 1 - alpha), gate biases 0, logits N(0, 0.5^2)."""
    from emaprobe.ops import gate_inputs

    B, T, D = x.shape
    S = len(alphas)
    row: dict = {}
    row["floor_gated_fwd_ms"], row["floor_gated_fwdbwd_ms"] = gated_floors(B * T * D, S, bw)
    logits = (0.5 * torch.randn(B, T, 2, S, D, device=x.device)).to(x.dtype)
    dbias = torch.tensor([math.log((1 - a) / a) for a in alphas], device=x.device).view(S, 1).expand(S, D).contiguous()
    gbias = torch.zeros(S, D, device=x.device)

    def composed(lg, xi, db, gb):
        a, b = gate_inputs(lg, xi, db, gb)
        return ts.fused_linear_scan(a, b, out_dtype=xi.dtype)

    with torch.no_grad():
        row["ours_gated_fwd_ms"] = _bench(lambda: ts.gated_scan_fwd(logits, x, dbias, gbias), "ours_gated_fwd")
        row["composed_gated_fwd_ms"] = _bench(lambda: composed(logits, x, dbias, gbias), "composed_gated_fwd")
    leaves = [t.detach().requires_grad_() for t in (logits, x, dbias, gbias)]
    for key, fn in (("ours_gated_fwdbwd_ms", ts.fused_gated_scan), ("composed_gated_fwdbwd_ms", composed)):
        def fb(fn=fn):
            y, _ = fn(*leaves)
            torch.autograd.backward(y, gout)
            for t in leaves:
                t.grad = None

        row[key] = _bench(fb, key.removesuffix("_ms"))
    row["x_gated_fwd_vs_floor"] = row["ours_gated_fwd_ms"] / row["floor_gated_fwd_ms"]
    row["x_gated_fwdbwd_vs_floor"] = row["ours_gated_fwdbwd_ms"] / row["floor_gated_fwdbwd_ms"]
    return row


def sweep_configs(tile_config) -> list:
    """The ``TileConfig``s --sweep times (``tile_config`` is the class: it lives with the kernels)."""
    out = [tile_config(ct=ct, block=bd, num_warps=w, vec=v, stages=st, min_programs=max(mp, 0),
                       split=False if mp < 0 else None) for ct, bd, w, v, st, mp in SWEEP]
    out += [tile_config(ct=ct, block=bd, num_warps=w, vec=v, stages=st, warmup=warm)
            for ct, bd, w, v, st, warm in SWEEP_FEW_WARPS]
    return out


def sweep(ts, shape, alphas) -> list[dict]:
    """Time tile configurations of every kernel at one shape (for choosing the defaults)."""
    B, T, D = shape
    dt = torch.bfloat16
    x = torch.randn(B, T, D, device="cuda", dtype=dt)
    gh = torch.randn(B, T, len(alphas), D, device="cuda", dtype=dt)
    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.5).to(dt)
    b = torch.randn(B, T, D, device="cuda", dtype=dt)
    h, _ = ts.linear_scan_fwd(a, b)
    rows = []
    configs = sweep_configs(ts.TileConfig)
    print(f"sweep at B={B} T={T} D={D}", flush=True)
    for cfg in configs:
        r = dict(cfg.__dict__, B=B, T=T, D=D)
        try:
            r["ema_fwd_ms"] = _bench(lambda: ts.ema_traces_fwd(x, alphas, cfg=cfg), "sweep", rep=40)
            r["ema_bwd_ms"] = _bench(lambda: ts.ema_traces_bwd(gh, alphas, None, dt, cfg=cfg), "sweep", rep=40)
            r["sel_fwd_ms"] = _bench(lambda: ts.linear_scan_fwd(a, b, cfg=cfg), "sweep", rep=40)
            r["sel_bwd_ms"] = _bench(lambda: ts.linear_scan_bwd(a, b, h, None, None, dt, dt, cfg=cfg), "sweep",
                                     rep=40)
        except Exception as err:  # noqa: BLE001 - a config that fails to compile is recorded
            r["error"] = f"{type(err).__name__}: {err}"[:200]
        print("sweep", r, flush=True)
        rows.append(r)
    return rows


# ---------------------------------------------------------------------------- report


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 100 else f"{v:.0f}")


def format_table(rows: list[dict], card: str) -> str:
    cols = [
        ("floor", "floor_fwd_ms"), ("ours fwd", "ours_ema_fwd_ms"), ("ours f+b", "ours_ema_fwdbwd_ms"),
        ("sel floor", "floor_sel_fwd_ms"), ("sel fwd", "ours_sel_fwd_ms"), ("sel f+b", "ours_sel_fwdbwd_ms"),
        ("gated fwd", "ours_gated_fwd_ms"), ("gated f+b", "ours_gated_fwdbwd_ms"),
        ("composed f+b", "composed_gated_fwdbwd_ms"),
        ("bcast copy", "torch_broadcast_copy_ms"), ("eager fwd", "ours_ema_fwd_eager_ms"),
        ("host us", "host_us_public_ema_fwd"), ("eager/graph", "x_public_ema_fwd_eager_vs_graph"),
        ("acc warp", "accelerated_scan_warp_ema_fwd_ms"),
        ("fla hgrn", "fla_ema_fwd_ms"), ("fft", "fft_ema_fwd_ms"), ("step loop", "step_loop_ms"),
    ]
    ratios = (("fwd/floor", "x_ema_fwd_vs_floor"), ("f+b/floor", "x_ema_fwdbwd_vs_floor"),
              ("sel/floor", "x_sel_fwd_vs_floor"), ("gated/floor", "x_gated_fwd_vs_floor"),
              ("gated f+b/floor", "x_gated_fwdbwd_vs_floor"))
    widths = [max(10, len(c)) for c, _ in (*cols, *ratios)]
    head = f"{'B x T x D':>16}  " + " ".join(f"{c:>{w}}" for (c, _), w in zip((*cols, *ratios), widths))
    lines = [f"EMA traces S=3, selective scan and gated scan S=3, bf16, milliseconds (median), {card}", head]
    for r in rows:
        cells = [_fmt(r.get(k)) for _, k in cols] + ["-" if r.get(k) is None else f"{r[k]:.2f}x" for _, k in ratios]
        lines.append(f"{r['B']:>4} x{r['T']:>6} x{r['D']:>4}  " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return "\n".join(lines)


def plot(rows: list[dict], card: str, path: Path) -> None:
    """Each shape's times against the floor: ours, the peers' and the PyTorch loop, two panels; then the
    gated scan (``bench_gated``) against its floors and the composed form, where rows have it; and the host
    time of each public forward in each window (``host_overhead``), where a row has it."""
    plt = pyplot()

    host = next((r for r in rows if r.get("host_windows")), None)
    gated = any(r.get("ours_gated_fwd_ms") is not None for r in rows)
    n = 2 + gated + (host is not None)
    fig, axes = plt.subplots(1, n, figsize=(6.3 * n + 0.4, 4.8))
    labels = [f"{r['B']}x{r['T']}x{r['D']}" for r in rows]
    series = [  # one colour per series in both panels
        ("floor (copy bw)", "floor_fwd_ms", "floor_fwdbwd_ms", "_--", "k"),  # a tick: one shape has no line
        ("ours (triton)", "ours_ema_fwd_ms", "ours_ema_fwdbwd_ms", "o-", "C0"),
        ("torch broadcast copy", "torch_broadcast_copy_ms", None, "s:", "C1"),
        ("accelerated-scan warp", "accelerated_scan_warp_ema_fwd_ms", "accelerated_scan_warp_ema_fwdbwd_ms",
         "v-", "C2"),
        ("fla chunk_hgrn", "fla_ema_fwd_ms", "fla_ema_fwdbwd_ms", "d-", "C3"),
        ("FFT conv", "fft_ema_fwd_ms", None, "x-", "C4"),
        ("step loop", "step_loop_ms", None, "+-", "C5"),
    ]
    for ax, which, title in ((axes[0], 1, "forward"), (axes[1], 2, "forward + backward")):
        for name, kf, kb, style, color in series:
            key = kf if which == 1 else kb
            if key is None:
                continue
            ys = [r.get(key) for r in rows]
            if all(v is None for v in ys):
                continue
            ax.plot(range(len(rows)), [math.nan if v is None else v for v in ys], style, color=color, label=name)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), labels, rotation=20)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"EMA traces S=3 bf16, {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    if gated:
        _plot_gated(axes[2], rows, labels)
    if host:
        _plot_host_windows(axes[-1], host)
    fig.suptitle(f"emaprobe scan kernels vs floor and peers on {card}")
    fig.tight_layout()
    save_fig(fig, path, dpi=110)


def _plot_gated(ax, rows: list[dict], labels: list[str]) -> None:
    # the selective mixer's fused scan: forward (solid) and forward + backward (dashed), each beside its
    # floor, and the composed form a backend without the fused one runs
    xs = range(len(rows))
    for name, key, style, color in (
        ("floor fwd", "floor_gated_fwd_ms", "_-", "k"), ("floor f+b", "floor_gated_fwdbwd_ms", "_--", "k"),
        ("fused fwd", "ours_gated_fwd_ms", "o-", "C0"), ("fused f+b", "ours_gated_fwdbwd_ms", "o--", "C0"),
        ("composed fwd", "composed_gated_fwd_ms", "s-", "C1"), ("composed f+b", "composed_gated_fwdbwd_ms", "s--", "C1"),
    ):
        ax.plot(xs, [math.nan if r.get(key) is None else r[key] for r in rows], style, color=color, label=name)
    ax.set_yscale("log")
    ax.set_xticks(xs, labels, rotation=20)
    ax.set_ylabel("ms (median)")
    ax.set_title("gated scan S=3 bf16 (the selective mixer)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)


def _plot_host_windows(ax, row: dict) -> None:
    # microseconds a call of each public forward, window by window, against the target; each window
    # labelled with the host gauge's time, which moves them all
    windows = row["host_windows"]
    xs = range(len(windows))
    for key, name, style in (("public_ema_fwd", "ema_traces", "o"), ("public_sel_fwd", "linear_scan", "s")):
        ax.plot(xs, [w[key] for w in windows], style, label=f"public {name} forward")
    ax.axhline(HOST_US_TARGET, color="k", ls="--", lw=1, label=f"target {HOST_US_TARGET:.0f} us")
    ax.set_xticks(xs, [f"{i + 1}\ngauge {w['gauge_ms']:.1f} ms" for i, w in enumerate(windows)], fontsize=8)
    ax.set_ylim(0, None)
    ax.set_ylabel("host us a call")
    ax.set_title(f"host time by window, B={row['B']} T={row['T']} D={row['D']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def grid_shapes(ts=GRID_TS, ds=GRID_DS, min_elems: int = GRID_MIN_ELEMS) -> list[tuple[int, int, int]]:
    """(B, T, D) for every T and D: B is the least power of two with B * T * D >= ``min_elems``."""
    shapes = []
    for T in ts:
        for D in ds:
            B = 1
            while B * T * D < min_elems:
                B *= 2
            shapes.append((B, T, D))
    return shapes


def stream_peer_ms(nbytes: int) -> float:
    """Milliseconds, graphed, of PyTorch's elementwise ``neg`` over bf16 moving ``nbytes`` (half read,
    half written): a streaming kernel of the same traffic (a plain copy would become a copy-engine
    node inside a graph, see ``copy_bandwidth``)."""
    src = torch.randn(max(1, nbytes // 4), device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = _bench(lambda: torch.neg(src, out=dst), "stream_peer")
    del src, dst
    torch.cuda.empty_cache()
    return ms


def forward_bytes(kernel: str, shape, S: int) -> int:
    """Bytes ``kernel``'s forward ("ema" or "sel") must move in bf16 at ``shape`` (B, T, D): the EMA reads x and
    writes S traces, (2 + 2S) a token-channel; the selective scan reads a and b and writes h, 6."""
    B, T, D = shape
    return (2 + 2 * S if kernel == "ema" else 6) * B * T * D


def _forward_call(ts, kernel: str, shape, alphas, device: str):
    """``kernel``'s forward on fresh bf16 inputs of ``shape``, as a function of the tile (None: the
    default plan): -> its output."""
    B, T, D = shape
    if kernel == "ema":
        x = torch.randn(B, T, D, device=device, dtype=torch.bfloat16)
        return lambda cfg: ts.ema_traces_fwd(x, alphas, cfg=cfg)[0]
    a = (torch.rand(B, T, D, device=device) * 0.5 + 0.5).to(torch.bfloat16)
    b = torch.randn(B, T, D, device=device, dtype=torch.bfloat16)
    return lambda cfg: ts.linear_scan_fwd(a, b, cfg=cfg)[0]


def grid_row(ts, shape, alphas, bw: float) -> dict:
    """One grid shape: the EMA forward and the selective forward, graphed, their floors, and a
    streaming kernel of each one's bytes (``stream_peer_ms``)."""
    B, T, D = shape
    S = len(alphas)
    nbytes = {k: forward_bytes(k, shape, S) for k in ("ema", "sel")}
    row: dict = {"B": B, "T": T, "D": D, "S": S, "dtype": "bfloat16",
                 "floor_fwd_ms": nbytes["ema"] / bw * 1e3, "floor_sel_fwd_ms": nbytes["sel"] / bw * 1e3}
    for k in ("ema", "sel"):
        with torch.no_grad():
            run = _forward_call(ts, k, shape, alphas, "cuda")
            row[f"ours_{k}_fwd_ms"] = _bench(lambda: run(None), f"grid_{k}_fwd")
            del run
        torch.cuda.empty_cache()
    for k in ("ema", "sel"):
        row[f"stream_{k}_fwd_ms"] = stream_peer_ms(nbytes[k])
        floor = row["floor_fwd_ms" if k == "ema" else "floor_sel_fwd_ms"]
        row[f"x_{k}_fwd_vs_floor"] = row[f"ours_{k}_fwd_ms"] / floor
        row[f"x_stream_{k}_vs_floor"] = row[f"stream_{k}_fwd_ms"] / floor
    return row


def default_tile(kernel: str, shape, alphas, sms: int):
    """(the tile ``kernel``'s forward takes at ``shape`` (B, T, D) on ``sms`` SMs, whether its plan cuts time
    into segments), as ``ops/triton`` plans it for bf16 outputs; ``kernel``: "ema" or "sel"."""
    from emaprobe.ops.triton import plan  # pure Python

    B, T, D = shape
    cfg = plan.choose(None, plan.EMA_FWD if kernel == "ema" else plan.LIN_FWD, B, D, sms)
    programs = B * -(-D // cfg.block)
    if kernel == "ema":
        nseg = plan.ema_plan(cfg, programs, T, alphas, sms, plan.warm_bits(8))[0]
    else:
        nseg = plan.segments(cfg, programs, T, sms)[0]
    return cfg, nseg > 1


def sweep_tiles(kernel: str, shape, alphas, sms: int, variants=GRID_SWEEP) -> list[tuple[str, object]]:
    """(name, tile) for ``--grid --sweep``: the default tile first, then each of ``kernel``'s ``variants``
    applied to it; none where the default plan runs in one pass (the variants change segments)."""
    cfg, segmented = default_tile(kernel, shape, alphas, sms)
    if not segmented:
        return []
    tiles = [("default", cfg)]
    for k, name, change in variants:
        if k == kernel:
            change = dict(change)
            per_sm = change.pop("warps_per_sm", None)
            tile = replace(cfg, **change)
            if per_sm is not None:
                tile = replace(tile, min_programs=max(1, per_sm * sms // tile.num_warps))
            tiles.append((name, tile))
    return tiles


def grid_sweep(ts, shape, alphas, bw: float, sms: int, timer=None, device: str = "cuda") -> list[dict]:
    """``--grid --sweep`` at one shape: each forward at each of its ``sweep_tiles``, timed by ``timer``
    (default: graphed, 40 ms of replays) right after its default, and its output compared with the
    default plan's (``max_diff``: max abs difference over the output's largest value)."""
    timer = timer or (lambda fn: _bench(fn, "grid_sweep", rep=40))
    B, T, D = shape
    rows = []
    for kernel in ("ema", "sel"):
        tiles = sweep_tiles(kernel, shape, alphas, sms)
        if not tiles:
            continue
        with torch.no_grad():
            run = _forward_call(ts, kernel, shape, alphas, device)
            floor = forward_bytes(kernel, shape, len(alphas)) / bw * 1e3
            ref = base = None
            for name, cfg in tiles:
                row = {"B": B, "T": T, "D": D, "kernel": kernel, "variant": name, "tile": asdict(cfg)}
                try:
                    out = run(cfg).float()
                    ref = out if ref is None else ref
                    row["max_diff"] = (out - ref).abs().max().item() / (ref.abs().max().item() or 1.0)
                    del out
                    row["ms"] = timer(lambda cfg=cfg: run(cfg))
                except Exception as err:  # noqa: BLE001 - a tile that fails to compile or launch is recorded
                    rows.append(dict(row, error=f"{type(err).__name__}: {err}"[:200]))
                    if base is None:  # the default: nothing to set the variants against
                        break
                    continue
                base = row["ms"] if base is None else base
                rows.append(dict(row, x_vs_floor=row["ms"] / floor, vs_default=row["ms"] / base,
                                 wrong=not row["max_diff"] <= SWEEP_MAX_DIFF))
            del run, ref
        torch.cuda.empty_cache()
    return rows


def _sweep_figures(row: dict) -> str:
    if "error" in row:
        return row["error"]
    return (f"{row['ms']:.4f} ms ({row['x_vs_floor']:.3f}x, {row['vs_default']:.3f} of default, "
            f"diff {row['max_diff']:.1e}{', WRONG' if row['wrong'] else ''})")


def sweep_best(rows: list[dict]) -> dict:
    """{(kernel, B, T, D): the fastest plan of ``grid_sweep``'s ``rows`` there}: the fastest right variant
    where it takes at least SWEEP_MIN_GAIN off the default's time, else the default."""
    best: dict = {}
    for r in rows:
        if "ms" in r and not r["wrong"]:
            key = (r["kernel"], r["B"], r["T"], r["D"])
            if r["variant"] == "default" or r["vs_default"] <= 1 - SWEEP_MIN_GAIN:
                if key not in best or r["ms"] < best[key]["ms"]:
                    best[key] = r
    return best


def sweep_verdict(rows: list[dict]) -> str:
    """One line per forward: at how many swept shapes a variant beat the default plan, the best of them, and
    the worst time / floor before and after taking the fastest plan per shape; failed and wrong variants named."""
    best = sweep_best(rows)
    lines = []
    for name, k in (("EMA forward", "ema"), ("selective forward", "sel")):
        mine = {key: r for key, r in best.items() if key[0] == k}
        defaults = [r for r in rows if r["kernel"] == k and r["variant"] == "default" and "ms" in r]
        if not mine or not defaults:
            lines.append(f"{name}: no segmented shape swept")
            continue
        won = sorted((r for r in mine.values() if r["variant"] != "default"), key=lambda r: r["vs_default"])
        gains = ", ".join(f"{r['B']}x{r['T']}x{r['D']} {r['variant']} {r['vs_default']:.3f}" for r in won)
        lines.append(f"{name}: a variant beat the default at {len(won)} of {len(mine)} segmented shapes"
                     + (f" ({gains})" if won else "")
                     + f"; worst time / floor {max(r['x_vs_floor'] for r in defaults):.3f}x by default, "
                       f"{max(r['x_vs_floor'] for r in mine.values()):.3f}x with the fastest plan per shape")
    bad = [f"{r['kernel']} {r['B']}x{r['T']}x{r['D']} {r['variant']}" + (" (error)" if "error" in r else " (wrong)")
           for r in rows if "error" in r or r.get("wrong")]
    if bad:
        lines.append("not counted: " + "; ".join(bad))
    return "\n".join(lines)


def grid_verdict(rows: list[dict]) -> str:
    """One line per kernel: its worst shape against FLOOR_TARGET, and how many shapes miss it."""
    lines = []
    for name, k in (("EMA forward", "ema"), ("selective forward", "sel")):
        key, peer = f"x_{k}_fwd_vs_floor", f"x_stream_{k}_vs_floor"
        worst = max(rows, key=lambda r: r[key])
        miss = sum(r[key] > FLOOR_TARGET for r in rows)
        streams = [r[peer] for r in rows if peer in r]
        stream = f" (a streaming kernel of the same bytes: {min(streams):.2f}-{max(streams):.2f}x)" if streams else ""
        lines.append(f"{name}: worst {worst[key]:.2f}x of the floor at {worst['B']}x{worst['T']}x{worst['D']}"
                     f"{stream}; {miss} of {len(rows)} shapes above {FLOOR_TARGET}x: "
                     + ("met" if miss == 0 else "NOT met"))
    return "\n".join(lines)


def plot_grid(rows: list[dict], card: str, path: Path, sweep: list[dict] | None = None) -> None:
    """Two heat maps, T down and D across: each kernel's time as a multiple of its floor; with ``sweep``
    rows (``grid_sweep``), two more below: the fastest plan per swept shape, named, and its time / floor."""
    plt = pyplot()
    import numpy as np

    Ts = sorted({r["T"] for r in rows})
    Ds = sorted({r["D"] for r in rows})
    panels = [("EMA traces forward (S=3)", "x_ema_fwd_vs_floor", "x_stream_ema_vs_floor"),
              ("selective scan forward", "x_sel_fwd_vs_floor", "x_stream_sel_vs_floor")]
    cells = [{(r["T"], r["D"]): (r[key], f"{r[key]:.2f}x\nB={r['B']}"
                                 + (f"\nstream {r[peer]:.2f}x" if peer in r else "")) for r in rows}
             for _, key, peer in panels]
    titles = [f"{title}: time / floor (stream: a streaming kernel of its bytes)" for title, _, _ in panels]
    if sweep:
        best = sweep_best(sweep)
        for k, (title, _, _) in zip(("ema", "sel"), panels):
            cells.append({(r["T"], r["D"]): (r["x_vs_floor"], f"{r['x_vs_floor']:.2f}x\n{r['variant']}\n"
                                                             f"{r['vs_default']:.3f} of default")
                          for key, r in best.items() if key[0] == k})
            titles.append(f"{title}: the fastest plan per segmented shape (--sweep)")
    fig, axes = plt.subplots(len(cells) // 2, 2, figsize=(10, (0.7 * len(Ts) + 2.2) * (len(cells) // 2)),
                             squeeze=False)
    for ax, cell, title in zip(axes.flat, cells, titles):
        grid = np.full((len(Ts), len(Ds)), np.nan)
        for (T, D), (value, text) in cell.items():
            grid[Ts.index(T), Ds.index(D)] = value
            ax.text(Ds.index(D), Ts.index(T), text, ha="center", va="center", fontsize=7)
        im = ax.imshow(grid, cmap="RdYlGn_r", vmin=1.0, vmax=2 * FLOOR_TARGET - 1.0, aspect="auto")
        ax.set_xticks(range(len(Ds)), [str(d) for d in Ds])
        ax.set_yticks(range(len(Ts)), [str(t) for t in Ts])
        ax.set_xlabel("D (channels)")
        ax.set_ylabel("T (steps)")
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"scan kernels over B*T*D >= 2^{GRID_MIN_ELEMS.bit_length() - 1}, graphed, bf16, on {card} "
                 f"(target {FLOOR_TARGET}x)", fontsize=10)
    fig.tight_layout()
    save_fig(fig, path, dpi=110)


def _checked_start(alphas) -> tuple[SimpleNamespace, str, float, dict]:
    """What every CUDA run starts with: our kernels, the card, its copy bandwidth (printed) and
    the float64 checks (printed; a failed one stops the run)."""
    ts = _triton_ops()
    card = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"{card}: device-to-device copy {bw / 1e12:.3f} TB/s (read + write)", flush=True)
    errs = check_kernels(ts, alphas)
    print("checks (relative error vs float64):", {k: f"{v:.1e}" for k, v in errs.items()}, flush=True)
    bad = {k: v for k, v in errs.items() if not v < 1e-2}
    if bad:
        raise RuntimeError(f"kernel check failed: {bad}")
    return ts, card, bw, errs


def run_grid(alphas=DEFAULT_ALPHAS, out_dir: str | Path | None = None, shapes=None, tag: str | None = None,
             sweep: bool = False, resume: bool = False) -> dict:
    """``--grid``: the EMA and selective forwards over ``shapes`` (default ``grid_shapes()``), after the
    float64 checks; writes ``scan_grid_<card>[_<tag>].json`` and ``.png`` into ``out_dir``, the JSON after
    each shape too (listing the shapes still ``unfinished``), so a run cut off keeps what it measured.
    ``sweep``: also each segmented shape's plan variants (``grid_sweep``), kept in the JSON's ``sweep``.
    ``resume``: where that JSON exists, keep its shapes measured on this card with the same alphas and
    sweep (an error names what differs), each row naming its ``source``, and measure only the rest."""
    check_tag(tag)
    if resume and out_dir is None:
        raise ValueError("--resume needs an output folder to resume from")
    grid = {"T": list(GRID_TS), "D": list(GRID_DS), "min_elems": GRID_MIN_ELEMS}
    if shapes is not None:  # the shapes asked for, not the grid's
        grid = {"shapes": ["x".join(map(str, s)) for s in shapes]}
    shapes = [tuple(s) for s in (grid_shapes() if shapes is None else shapes)]
    ts, card, bw, errs = _checked_start(alphas)
    stem = None if out_dir is None else Path(out_dir) / (f"scan_grid_{card_slug(card)}" + (f"_{tag}" if tag else ""))
    variants = [list(v) for v in GRID_SWEEP] if sweep else None  # as the JSON keeps them
    kept, earlier = _grid_resumable(stem.with_suffix(".json"), card, alphas, variants) if resume else ({}, [])
    rows, sweep_rows = [], [] if sweep else None
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count if sweep else 0

    def record(**extra) -> dict:
        return run_record(benchmark="scan-cuda-grid", card=card, copy_bandwidth_Bps=bw, alphas=list(alphas),
                          checks=errs, rows=rows, triton=__import__("triton").__version__, floor_target=FLOOR_TARGET,
                          grid=grid, **({"resumed_from": earlier} if earlier else {}),
                          **({"sweep": sweep_rows, "sweep_variants": variants,
                              "sweep_timing": "graphed, 40 ms of replays, each variant right after "
                                              "its shape's default (grid_sweep)"} if sweep else {}),
                          timing="median per call of CUDA-graph replays (triton.testing.do_bench_cudagraph); "
                                 "stream_*: torch.neg over bf16 moving the same bytes, graphed (stream_peer_ms)",
                          eager_fallbacks=sorted(set(EAGER_FALLBACKS)), **extra)

    if kept:
        print(f"--resume: {len(kept)} of {len(shapes)} shapes kept from {stem.with_suffix('.json')}", flush=True)
    for i, shape in enumerate(shapes):
        row, swept = kept.get(shape) or (grid_row(ts, shape, alphas, bw), None)
        rows.append(row)
        print(f"{row['B']:>4} x{row['T']:>6} x{row['D']:>5}: EMA fwd {row['ours_ema_fwd_ms']:.4f} ms "
              f"({row['x_ema_fwd_vs_floor']:.2f}x; stream {row['x_stream_ema_vs_floor']:.2f}x), selective fwd "
              f"{row['ours_sel_fwd_ms']:.4f} ms ({row['x_sel_fwd_vs_floor']:.2f}x; stream "
              f"{row['x_stream_sel_vs_floor']:.2f}x)" + (f" (kept, {str(row['source']['git_sha'])[:10]})"
                                                          if shape in kept else ""), flush=True)
        if sweep:
            for v in grid_sweep(ts, shape, alphas, bw, sms) if swept is None else swept:
                sweep_rows.append(v)
                print(f"      {v['kernel']} {v['variant']:<24} {_sweep_figures(v)}", flush=True)
        if stem is not None and i + 1 < len(shapes):
            atomic_write_json(stem.with_suffix(".json"),
                              record(unfinished=["x".join(map(str, s)) for s in shapes[i + 1:]]))
    print(grid_verdict(rows))
    if sweep:
        print(sweep_verdict(sweep_rows))
    result = record()
    if stem is not None:
        write_result(stem, result, lambda path: plot_grid(rows, card, path, sweep_rows))
    return result


def _grid_resumable(path: Path, card: str, alphas, variants: list | None) -> tuple[dict, list[str]]:
    """{(B, T, D): (grid row, its sweep rows or None)} of an earlier ``run_grid`` at ``path`` that a resumed
    one keeps, each row naming its ``source`` (file, git SHA, time, torch, copy bandwidth: its floors are
    that run's), and the git SHAs of the runs they came from; ({}, []) where there is no file yet.
    ``variants``: this run's sweep variants as the JSON keeps them (None: no sweep)."""
    if not path.is_file():
        print(f"--resume: no {path} yet, so every shape is measured", flush=True)
        return {}, []
    old = read_json(path)
    if not isinstance(old, dict) or old.get("benchmark") != "scan-cuda-grid" or not isinstance(old.get("rows"), list):
        raise ValueError(f"--resume: {path} is not a bench scan --grid result (no benchmark 'scan-cuda-grid' "
                         "with rows)")
    differ = [f"{what} {was!r}, now {now!r}" for what, was, now in (
        ("card", old.get("card"), card), ("alphas", old.get("alphas"), list(alphas)),
        ("sweep variants", old.get("sweep_variants"), variants)) if was != now]
    if differ:
        raise ValueError(f"--resume: {path} was measured otherwise ({'; '.join(differ)}): rerun with its "
                         "settings, pick another --tag, or drop --resume")
    src = result_source(old, path.name, "copy_bandwidth_Bps")
    kept = {}
    for r in old["rows"]:
        shape = (r["B"], r["T"], r["D"])
        swept = [dict(v, source=v.get("source", src)) for v in old.get("sweep", [])
                 if (v["B"], v["T"], v["D"]) == shape] if variants is not None else None
        kept[shape] = (dict(r, source=r.get("source", src)), swept)
    return kept, earlier_runs(old)


def _triton_ops() -> SimpleNamespace:
    """Our kernels' launchers and autograd ops, one namespace (imported here: they need Triton)."""
    from emaprobe.ops.triton import ema, linear_scan, plan

    return SimpleNamespace(
        TileConfig=plan.TileConfig,
        # the default tile configurations, recorded in the JSON
        EMA_FWD=plan.EMA_FWD,
        EMA_BWD=plan.EMA_BWD,
        LIN_FWD=plan.LIN_FWD,
        LIN_BWD=plan.LIN_BWD,
        ema_traces_fwd=ema.ema_traces_fwd,
        ema_traces_bwd=ema.ema_traces_bwd,
        fused_ema_traces=ema.fused_ema_traces,
        linear_scan_fwd=linear_scan.linear_scan_fwd,
        linear_scan_bwd=linear_scan.linear_scan_bwd,
        fused_linear_scan=linear_scan.fused_linear_scan,
        gated_scan_fwd=linear_scan.gated_scan_fwd,
        gated_scan_bwd=linear_scan.gated_scan_bwd,
        fused_gated_scan=linear_scan.fused_gated_scan,
    )


def run_cuda(shapes=None, alphas=DEFAULT_ALPHAS, out_dir: str | Path | None = None,
             peers: bool = True, warp: bool = True, loop: bool = True, do_sweep: bool = False,
             tag: str | None = None) -> dict:
    """Run the whole CUDA benchmark; returns the result dict (also written as JSON when ``out_dir``,
    as ``scan_cuda_<card>[_<tag>]``: a run of one shape with a tag leaves the default file alone)."""
    check_tag(tag)
    sweep_shapes = SWEEP_SHAPES if shapes is None else shapes  # --shape: the sweep runs there instead
    shapes = list(DEFAULT_SHAPES) if shapes is None else shapes
    ts, card, bw, errs = _checked_start(alphas)
    slug = card_slug(card) + (f"_{tag}" if tag else "")
    sweep_rows = [r for shape in sweep_shapes for r in sweep(ts, shape, alphas)] if do_sweep else None
    peer_fns = _load_peers(warp) if peers else {}
    rows = []

    def record():
        return run_record(
            benchmark="scan-cuda",
            card=card,
            copy_bandwidth_Bps=bw,
            alphas=list(alphas),
            checks=errs,
            configs={k: [c.__dict__ for c in getattr(ts, k)] for k in ("EMA_FWD", "EMA_BWD", "LIN_FWD", "LIN_BWD")},
            rows=rows,
            sweep=sweep_rows,
            triton=__import__("triton").__version__,
            timing="median per call of CUDA-graph replays (triton.testing.do_bench_cudagraph); *_eager_ms from Python "
                   "(triton.testing.do_bench); *_eager_b2b_ms eager calls back to back between CUDA events; "
                   "host_us_* microseconds of host time a call, the GPU not waited for (host_us), the fastest "
                   "of the host_windows (host_us_*_median: the median window; gauge_ms: the host's speed)",
            host_overhead_targets={"host_us_public_ema_fwd": HOST_US_TARGET,
                                   "x_public_ema_fwd_eager_vs_graph": EAGER_VS_GRAPH_TARGET},
            eager_fallbacks=sorted(set(EAGER_FALLBACKS)),
        )

    for shape in shapes:
        with out_of_memory_named(shape):
            row = bench_shape(ts, shape, alphas, bw, peer_fns, loop)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
        if out_dir is not None:  # a peer that kills the CUDA context later leaves these rows behind
            atomic_write_json(Path(out_dir) / f"scan_cuda_{slug}.json", record())
    print()
    print(format_table(rows, card))
    for row in rows:
        if (row["B"], row["T"], row["D"]) == HEADLINE:
            print(host_overhead_verdict(row))
    result = record()
    if out_dir is not None:
        write_result(Path(out_dir) / f"scan_cuda_{slug}", result, lambda path: plot(rows, card, path))
    return result
