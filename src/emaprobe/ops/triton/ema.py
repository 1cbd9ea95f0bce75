"""EMA traces in Triton: kernels, launchers and autograd for ``ema_traces``.

Symbols as in ``ops/naive.py`` (B batch, T time, D channels, S timescales), plus CT time
steps in one register tile, BD channels in one tile, VEC adjacent channels one thread owns,
g = dL/dh_t the backward state, and NSEG segments along T.

**One pass, chunked in time.** A program owns BD channels of one sequence (and, at long T
with few channels, one segment of time). It walks its stretch of time in (CT, BD) tiles:
it loads a tile, scans it with ``tl.associative_scan`` (the pair operator of
``common.combine``; Blelloch 1990, as in accelerated-scan) with the carried state folded
into row 0, stores, and carries the last row. Every input byte is read once and every
output byte written once, so the forward moves (2 + 2S) bytes per token-channel in bf16:
the memory floor. One launch scans up to 4 timescales (``GROUP``), one 2-D tile each; more
take one more launch per 4, re-reading x.

**Bytes in flight.** At small batch few programs run (B=16, D=768: 192 one-warp programs
on 132 SMs), so each must keep many loads outstanding: the tile loop is software-pipelined
(``tl.range(..., num_stages=STAGES)``), which turns each load into asynchronous copies
(cp.async) issued STAGES - 1 tiles ahead; hand-written prefetch two tiles ahead kept too
few bytes in flight (H100, that shape: 0.130 -> 0.091 ms; notes/kernels.md).

**Masks only where needed.** Full tiles run without row masks, and without channel masks
when D is a multiple of BD (``EVEN_D``); only a segment's partial last tile, and in the
backward the tiles holding t = T - 1 or t = 0, run masked (``common.tile_plan``).
Per-element predicates had been most of the loop: 1328 of the forward's instructions per
tile against 534 without them (SASS).

**Why the layout matters.** ``tl.max_contiguous(..., VEC)`` with BD = 32 * VEC * warps
makes Triton put the 32 lanes of a warp along channels (VEC channels each, coalesced), so
all CT rows of a tile sit in one thread and the scan is a register loop: no shuffles, no
shared memory (SASS: 0 SHFL, 0 BAR). Left to itself, Triton spread time across lanes and
the scan cost about 8 shuffles per element.

**Segments when channels are few** (``plan.ema_plan``). When B * D / BD programs cannot
fill the GPU, time is cut into segments. A fixed decay forgets: after W_k steps
(``plan.warm_steps``: 24, 158, 824 at alpha = 0.5, 0.1, 0.02) a timescale's state weighs
under 2**-24, float32's resolution of it; where the kernel writes bf16 (float16), which keeps 8
(11) bits, under 2**-16 (2**-19) after 549 (652) steps at alpha = 0.02, 2**-8 of the output's own
resolution (``plan.warm_bits``). So each segment first scans the W steps before
it from zero, storing nothing, then its own steps from that incoming state (``WARM``):
one pass that re-reads W of every SEGLEN >= W steps of input; the backward warms each
timescale's gradient over its own W_k. The forward pipelines a warmed-up segment's own steps
``TileConfig.seg_stages`` deep where the config sets it (the default plan's: 6), and gives the first
segment, which needs no warm-up, the steps the others spend warming up (``plan.first_segment``).
This is the old trick of starting an IIR filter's blocks early and letting the transient die. Where no such
W exists (a decay near 1) or the segments would be too few, two passes run instead: pass 1
scans each segment from zero and keeps only its end state; pass 2 first carries the initial state over the end
states of the segments before its own (``COMBINE``), then rescans its segment from that
true incoming state (the "state passing" of chunked linear attention and Mamba-2, Dao &
Gu 2024). H100, B=1 T=65536: forward 0.163 ms warmed up, 0.200 in two passes.

**Backward** is the same recurrence run backwards in time, ``g_t = dy_t + a g_{t+1}``,
fused with ``dx_t = sum_s alpha_s g_t^(s)``: it reads the S traces' gradients and writes
one (B, T, D) tensor, the floor again. The gradient of a returned final state enters as
the carry at T.

The state is float32 throughout; outputs are written in the requested dtype (the
input's), so bf16 in means bf16 traces out and half the bytes of float32.

**Instructions a tile** (the forward, sm_90 SASS of the two-warp 32-row tile). D and S*D are
constants of the compiled kernel and a tile's offsets 64-bit, so each row's and timescale's offset
is an immediate of its load or store rather than two integer additions; a warm-up (and pass 1) scans
in units of alpha (g = h / alpha: one multiply-add an element against two) and scales its end state
once; the carry enters row 0 by a select (``u + 0`` elsewhere would be an addition: -0 + 0 = +0).
Warm-up 614 -> 369 instructions a tile, a segment's own steps 1059 -> 777; on the H200 the grid's
shapes 1-5% faster (notes/kernels.md, "fewer instructions a tile"). A new D compiles anew.

**Host work.** A launch plan (tiles, segments, warm-ups, grid, every scalar and constant
argument, the coefficient tensors' views) is made once per (shape, alphas, initial state or
not, device and its SM count, tile config) and kept in ``cache.py``; an eager call then
allocates its outputs and launches through ``common.launch``, which after Triton's first launch
calls the compiled kernel's launcher directly (``emaprobe bench scan --device cuda`` reports the
host time as ``host_us_*``).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from emaprobe.ops.triton import opaque
from emaprobe.ops.triton.cache import ahead, cached, scratch
from emaprobe.ops.triton.common import (
    channel_mask,
    combine,
    last_row,
    launch,
    make_launch,
    out_warm_bits,
    segment_length,
    sm_count,
    tile_plan,
)
from emaprobe.ops.triton.plan import (
    EMA_BWD,
    EMA_FWD,
    EMA_OUT_POLICY,
    WARM_BITS,
    TileConfig,
    choose,
    ema_plan,
    first_segment,
)

# ---------------------------------------------------------------------------- kernels


@triton.jit
def _load_state(ptr, mask, D, NS: tl.constexpr):
    # up to 4 timescales' tensors (states, or tiles of gradients), D apart; zeros past NS
    s0 = tl.load(ptr, mask=mask, other=0.0)
    s1 = tl.zeros_like(s0)
    s2 = s1
    s3 = s1
    if NS > 1:
        s1 = tl.load(ptr + D, mask=mask, other=0.0)
    if NS > 2:
        s2 = tl.load(ptr + 2 * D, mask=mask, other=0.0)
    if NS > 3:
        s3 = tl.load(ptr + 3 * D, mask=mask, other=0.0)
    return s0, s1, s2, s3


@triton.jit
def _store_state(ptr, s0, s1, s2, s3, mask, D, NS: tl.constexpr):
    # the inverse of _load_state
    tl.store(ptr, s0, mask=mask)
    if NS > 1:
        tl.store(ptr + D, s1, mask=mask)
    if NS > 2:
        tl.store(ptr + 2 * D, s2, mask=mask)
    if NS > 3:
        tl.store(ptr + 3 * D, s3, mask=mask)


@triton.jit
def _load_coefs(PTR, NS: tl.constexpr):
    # up to 4 per-timescale scalars; past NS, copies of the first (never used)
    c0 = tl.load(PTR)
    c1 = c0
    c2 = c0
    c3 = c0
    if NS > 1:
        c1 = tl.load(PTR + 1)
    if NS > 2:
        c2 = tl.load(PTR + 2)
    if NS > 3:
        c3 = tl.load(PTR + 3)
    return c0, c1, c2, c3


@triton.jit
def _pow(base, n):
    # base ** n for an integer n >= 0 by repeated squaring (float64 in: exact to ~1 ulp per squaring)
    p = base * 0.0 + 1.0
    e = n
    while e > 0:
        p = tl.where((e % 2) == 1, p * base, p)
        base = base * base
        e = e // 2
    return p.to(tl.float32)


@triton.jit
def _seg_decays(DEC64, n, NS: tl.constexpr):
    # dec_k ** n for each timescale: the decay over a segment of n steps, computed in float64
    d0, d1, d2, d3 = _load_coefs(DEC64, NS)
    p0 = _pow(d0, n)
    p1 = p0
    p2 = p0
    p3 = p0
    if NS > 1:
        p1 = _pow(d1, n)
    if NS > 2:
        p2 = _pow(d2, n)
    if NS > 3:
        p3 = _pow(d3, n)
    return p0, p1, p2, p3


@triton.jit
def _ema_scan_one(u, a, h, dec, rows):
    # one timescale of a (CT, BD) tile: h_t = a_t h_{t-1} + u_t down its rows from the carry h, where a is dec,
    # or 1 on padded rows (which add 0: the last row is then the end state)
    u = tl.where((rows == 0)[:, None], u + dec * h[None, :], u)  # the carry enters at row 0 (u + 0: -0 + 0 = +0)
    _, hh = tl.associative_scan((a, u), 0, combine)
    return hh


@triton.jit
def _ema_fwd_one(x, live, h, dec, alp, k: tl.constexpr, o_ptr, o_off, m, D, rows, CT: tl.constexpr,
                 SEV: tl.constexpr):
    # timescale k of a tile: scan alpha x, store, return the new carry
    a = tl.where(live, dec, 1.0)
    hh = _ema_scan_one(alp * x, a, h, dec, rows)
    tl.store(o_ptr + k * D + o_off, hh.to(o_ptr.dtype.element_ty), mask=m, eviction_policy=SEV)
    return last_row(hh, rows, CT - 1)


@triton.jit
def _ema_warm_one(x, live, g, dec, rows, CT: tl.constexpr):
    # a warm-up's timescale, in units of its alpha (g = h / alpha: g_t = dec g_{t-1} + x_t), one
    # multiply-add an element against two; nothing is stored, and the caller scales the end state once
    a = tl.where(live, dec, 1.0)
    return last_row(_ema_scan_one(x, a, g, dec, rows), rows, CT - 1)


@triton.jit
def _ema_fwd_tile(x_ptr, o_ptr, x_off, o_off, m, live, h0, h1, h2, h3, d0, d1, d2, d3, a0, a1, a2, a3, D, rows,
                  NS: tl.constexpr, CT: tl.constexpr, STORE_OUT: tl.constexpr, SEV: tl.constexpr):
    # one (CT, BD) tile of x, every timescale: load, scan, store (L2 eviction policy SEV); returns
    # the carried states
    x = tl.load(x_ptr + x_off, mask=m, other=0.0).to(tl.float32)
    if STORE_OUT:
        h0 = _ema_fwd_one(x, live, h0, d0, a0, 0, o_ptr, o_off, m, D, rows, CT, SEV)
        if NS > 1:
            h1 = _ema_fwd_one(x, live, h1, d1, a1, 1, o_ptr, o_off, m, D, rows, CT, SEV)
        if NS > 2:
            h2 = _ema_fwd_one(x, live, h2, d2, a2, 2, o_ptr, o_off, m, D, rows, CT, SEV)
        if NS > 3:
            h3 = _ema_fwd_one(x, live, h3, d3, a3, 3, o_ptr, o_off, m, D, rows, CT, SEV)
    else:  # a warm-up (or pass 1): the states in units of alpha (``_ema_warm_one``)
        h0 = _ema_warm_one(x, live, h0, d0, rows, CT)
        if NS > 1:
            h1 = _ema_warm_one(x, live, h1, d1, rows, CT)
        if NS > 2:
            h2 = _ema_warm_one(x, live, h2, d2, rows, CT)
        if NS > 3:
            h3 = _ema_warm_one(x, live, h3, d3, rows, CT)
    return h0, h1, h2, h3


@triton.jit
def _ema_fwd_span(x_ptr, o_ptr, x_off, o_off, m, h0, h1, h2, h3, d0, d1, d2, d3, a0, a1, a2, a3, D, SD, rows, n,
                  NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, STAGES: tl.constexpr,
                  STORE_OUT: tl.constexpr, SEV: tl.constexpr):
    # n steps of every timescale from x_ptr / o_ptr (time t of the span at row offset t); returns the states.
    # Full tiles without row masks (with EVEN_D, without any mask): per-element predicates were most of
    # the loop's instructions (notes/kernels.md). STAGES tiles in flight: Triton's pipeliner turns
    # the load into asynchronous copies (cp.async) STAGES - 1 iterations ahead.
    lo, hi, last, tail = tile_plan(n, CT, False, False)
    live = tl.full((CT, BD), 1, tl.int1)
    for i0 in tl.range(lo, hi, CT, num_stages=STAGES):
        # offsets from the induction variable (not a carried pointer) keep vector access
        i = tl.cast(i0, tl.int64)
        h0, h1, h2, h3 = _ema_fwd_tile(x_ptr + i * D, o_ptr + i * SD, x_off, o_off, m, live, h0, h1, h2, h3,
                                       d0, d1, d2, d3, a0, a1, a2, a3, D, rows, NS, CT, STORE_OUT, SEV)
    if tail:  # the last, partial tile: padded rows decay by 1 and add 0
        i = tl.cast(last, tl.int64)
        live = tl.broadcast_to((rows < n - last)[:, None], (CT, BD))
        h0, h1, h2, h3 = _ema_fwd_tile(x_ptr + i * D, o_ptr + i * SD, x_off, o_off, m & live, live, h0, h1, h2, h3,
                                       d0, d1, d2, d3, a0, a1, a2, a3, D, rows, NS, CT, STORE_OUT, SEV)
    return h0, h1, h2, h3


@triton.jit
def _ema_fwd_kernel(
    X, OUT, HIN, HEND, ENDS, DEC, DEC64, ALP,
    T, SEGLEN, FIRST, NSEG, WARMLEN,
    D: tl.constexpr, SD: tl.constexpr,
    NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    HAS_HIN: tl.constexpr, STORE_OUT: tl.constexpr, COMBINE: tl.constexpr, WARM: tl.constexpr,
    EVEN_D: tl.constexpr, WSTAGES: tl.constexpr, OUT_POLICY: tl.constexpr, STORE_STATE: tl.constexpr,
):
    """h_t^(k) = DEC_k h_{t-1}^(k) + ALP_k x_t for NS <= 4 timescales over one segment.

    X (B,T,D) contiguous; OUT, HIN (the state at t = 0), HEND and ENDS point at timescale 0
    of this launch inside (B,T,S,D) / (B,S,D) / (B,NSEG,S,D) buffers whose row stride over S
    is D (SD = S*D per step). COMBINE (pass 2 of segments): the segment starts from HIN
    carried over every earlier segment's end state from zero, ENDS (written by pass 1).
    WARM (segments in one pass): the segment's incoming state is scanned, unstored, from zero
    over the WARMLEN steps before it (from HIN at t = 0 if they reach it), pipelined WSTAGES
    deep; the first segment, which has none, is FIRST steps long, the others SEGLEN
    (``plan.first_segment``; FIRST = SEGLEN in two passes); SEGLEN and WARMLEN are multiples of CT.
    OUT_POLICY: the L2 eviction policy of the trace stores (``EMA_OUT_POLICY``). STORE_STATE False:
    the end state is not stored (nobody asked for it; HEND is then any pointer). STORE_OUT False
    (pass 1) scans from zero.
    D and SD are constants of the compiled kernel, so that a tile's row and timescale offsets are
    immediates of its loads and stores (module docstring).
    """
    tl.static_assert(STORE_OUT or not (HAS_HIN or COMBINE or WARM), "a scan that stores nothing starts from zero")
    pid_d = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CT)  # (CT,)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)  # (BD,)
    mask_d = channel_mask(offs_d, D, BD, EVEN_D)
    st = (b * NSEG + seg) * SD + offs_d  # (BD,) offsets of this segment's end state, timescale 0
    h0 = tl.zeros((BD,), dtype=tl.float32)
    h1 = h0
    h2 = h0
    h3 = h0
    if HAS_HIN:
        h0, h1, h2, h3 = _load_state(HIN + b * SD + offs_d, mask_d, D, NS)
    if COMBINE:
        # every earlier segment is SEGLEN steps long: h <- dec^SEGLEN h + (its end state from zero)
        p0, p1, p2, p3 = _seg_decays(DEC64, SEGLEN, NS)
        for k in tl.range(0, seg, num_stages=STAGES):
            e0, e1, e2, e3 = _load_state(ENDS + (b * NSEG + k) * SD + offs_d, mask_d, D, NS)
            h0 = p0 * h0 + e0
            h1 = p1 * h1 + e1
            h2 = p2 * h2 + e2
            h3 = p3 * h3 + e3
    # per-timescale coefficients, loaded once: a load inside the loop would sit on its critical path
    d0, d1, d2, d3 = _load_coefs(DEC, NS)
    a0, a1, a2, a3 = _load_coefs(ALP, NS)
    if WARM:  # the first segment, which has no warm-up, is FIRST steps long (``plan.first_segment``)
        t_start = tl.where(seg == 0, 0, FIRST + (seg - 1) * SEGLEN)
        n_seg = tl.minimum(tl.where(seg == 0, FIRST, SEGLEN), T - t_start)
    else:  # (the selects cost the one-pass launch at B16 T2048 D768 1.4% on an H100)
        t_start = seg * SEGLEN
        n_seg = segment_length(seg, SEGLEN, T)
    # 64-bit offsets: with D and SD constant, each row's part is then an immediate of its address
    x_off = rows[:, None].to(tl.int64) * D + offs_d[None, :].to(tl.int64)  # (CT, BD)
    o_off = rows[:, None].to(tl.int64) * SD + offs_d[None, :].to(tl.int64)
    m = tl.broadcast_to(mask_d[None, :], (CT, BD))
    if WARM:  # x is shared: one warm-up, as long as the slowest timescale needs (each its own was slower)
        w0 = tl.maximum(t_start - WARMLEN, 0)
        if w0 > 0:  # the state WARMLEN steps back is dropped: its weight here is under 2**-24
            h0 = tl.zeros_like(h0)
            h1 = h0
            h2 = h0
            h3 = h0
        # in units of alpha from zero (``_ema_warm_one``), then h = alpha g + dec^n h(w0), where h(w0) is
        # the initial state at w0 = 0 and zero after
        n = t_start - w0
        g0, g1, g2, g3 = _ema_fwd_span(X + (b * T + w0) * D, OUT, x_off, o_off, m, tl.zeros_like(h0), tl.zeros_like(h0),
                                       tl.zeros_like(h0), tl.zeros_like(h0), d0, d1, d2, d3, a0, a1, a2, a3, D, SD,
                                       rows, n, NS, CT, BD, WSTAGES, False, "")
        if HAS_HIN:
            q0, q1, q2, q3 = _seg_decays(DEC64, n, NS)
            h0 = a0 * g0 + q0 * h0
            h1 = a1 * g1 + q1 * h1
            h2 = a2 * g2 + q2 * h2
            h3 = a3 * g3 + q3 * h3
        else:
            h0 = a0 * g0
            h1 = a1 * g1
            h2 = a2 * g2
            h3 = a3 * g3
    h0, h1, h2, h3 = _ema_fwd_span(X + (b * T + t_start) * D, OUT + (b * T + t_start) * SD, x_off, o_off, m,
                                   h0, h1, h2, h3, d0, d1, d2, d3, a0, a1, a2, a3, D, SD, rows,
                                   n_seg, NS, CT, BD, STAGES, STORE_OUT, OUT_POLICY)
    if not STORE_OUT:  # pass 1 scanned in units of alpha from zero
        h0 = a0 * h0
        h1 = a1 * h1
        h2 = a2 * h2
        h3 = a3 * h3
    if STORE_STATE:
        _store_state(HEND + st, h0, h1, h2, h3, mask_d, D, NS)


@triton.jit
def _ema_bwd_one(u, keep, g, dec, rows, CT: tl.constexpr):
    a = tl.where(keep, dec, 1.0)
    # the carry enters at row 0 with that row's coefficient
    u = u.to(tl.float32)
    u = tl.where((rows == 0)[:, None], u + a * g[None, :], u)  # (u + 0 is an addition: -0 + 0 = +0)
    _, gg = tl.associative_scan((a, u), 0, combine)
    return gg, last_row(gg, rows, CT - 1)


@triton.jit
def _ema_bwd_tile(gh_ptr, gx_ptr, gh_off, gx_off, m, keep, g0, g1, g2, g3, d0, d1, d2, d3, a0, a1, a2, a3, D, rows,
                  NS: tl.constexpr, CT: tl.constexpr, STORE_OUT: tl.constexpr, ACCUM: tl.constexpr):
    # one (CT, BD) tile of every timescale's gradient, backwards in time; returns the carried gradients
    u0 = tl.load(gh_ptr + gh_off, mask=m, other=0.0)
    u1 = u0
    u2 = u0
    u3 = u0
    if NS > 1:
        u1 = tl.load(gh_ptr + D + gh_off, mask=m, other=0.0)
    if NS > 2:
        u2 = tl.load(gh_ptr + 2 * D + gh_off, mask=m, other=0.0)
    if NS > 3:
        u3 = tl.load(gh_ptr + 3 * D + gh_off, mask=m, other=0.0)
    gg, g0 = _ema_bwd_one(u0, keep, g0, d0, rows, CT)
    gx = a0 * gg
    if NS > 1:
        gg, g1 = _ema_bwd_one(u1, keep, g1, d1, rows, CT)
        gx += a1 * gg
    if NS > 2:
        gg, g2 = _ema_bwd_one(u2, keep, g2, d2, rows, CT)
        gx += a2 * gg
    if NS > 3:
        gg, g3 = _ema_bwd_one(u3, keep, g3, d3, rows, CT)
        gx += a3 * gg
    if STORE_OUT:
        if ACCUM:  # a later group of timescales adds to the first group's dx
            gx += tl.load(gx_ptr + gx_off, mask=m, other=0.0).to(tl.float32)
        tl.store(gx_ptr + gx_off, gx.to(gx_ptr.dtype.element_ty), mask=m)
    return g0, g1, g2, g3



@triton.jit
def _ema_bwd_span(gh_ptr, gx_ptr, gh_off, gx_off, m, g0, g1, g2, g3, d0, d1, d2, d3, a0, a1, a2, a3, D, SD, rows,
                  n, at_end, NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, STAGES: tl.constexpr,
                  STORE_OUT: tl.constexpr, ACCUM: tl.constexpr):
    # n steps backwards in time from gh_ptr / gx_ptr (the span's last step; tile row i is i steps earlier);
    # ``at_end``: that step is t = T - 1, where the carry enters undecayed. Masked tiles: that first one
    # and a partial last one; the rest run without row masks. Returns the carried gradients.
    lo, hi, last, tail = tile_plan(n, CT, at_end, False)
    if at_end:
        keep = tl.broadcast_to(((rows < n) & (rows > 0))[:, None], (CT, BD))
        g0, g1, g2, g3 = _ema_bwd_tile(gh_ptr, gx_ptr, gh_off, gx_off, m & (rows < n)[:, None], keep,
                                       g0, g1, g2, g3, d0, d1, d2, d3, a0, a1, a2, a3, D, rows, NS, CT,
                                       STORE_OUT, ACCUM)
    keep = tl.full((CT, BD), 1, tl.int1)
    for i0 in tl.range(lo, hi, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        g0, g1, g2, g3 = _ema_bwd_tile(gh_ptr - i * SD, gx_ptr - i * D, gh_off, gx_off, m, keep, g0, g1, g2, g3,
                                       d0, d1, d2, d3, a0, a1, a2, a3, D, rows, NS, CT, STORE_OUT, ACCUM)
    if tail:
        i = tl.cast(last, tl.int64)
        keep = tl.broadcast_to((rows < n - last)[:, None], (CT, BD))
        g0, g1, g2, g3 = _ema_bwd_tile(gh_ptr - i * SD, gx_ptr - i * D, gh_off, gx_off, m & keep, keep,
                                       g0, g1, g2, g3, d0, d1, d2, d3, a0, a1, a2, a3, D, rows, NS, CT,
                                       STORE_OUT, ACCUM)
    return g0, g1, g2, g3


@triton.jit
def _ema_bwd_warm(GH, gin, dec, b, t_last, warm, T, D, SD, gh_off, m, rows,
                  CT: tl.constexpr, BD: tl.constexpr, STAGES: tl.constexpr):
    # one timescale's gradient carried into step t_last, scanned unstored over the ``warm`` steps after
    # it from zero (from the carry at T, ``gin``, where they reach the end); GH points at this timescale
    t_hi = tl.minimum(t_last + warm, T - 1)
    g = tl.where(t_hi == T - 1, gin, 0.0)
    if t_hi > t_last:
        g, _, _, _ = _ema_bwd_span(GH + (b * T + t_hi) * SD, GH, gh_off, gh_off, m, g, g, g, g, dec, dec, dec, dec,
                                   dec, dec, dec, dec, D, SD, rows, t_hi - t_last, t_hi == T - 1, 1, CT, BD, STAGES,
                                   False, False)
    return g


@triton.jit
def _ema_bwd_kernel(
    GH, GX, GIN, GSTART, STARTS, DEC, DEC64, ALP,
    T, D, SD, SEGLEN, NSEG, WARM0, WARM1, WARM2, WARM3,
    NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    HAS_GIN: tl.constexpr, STORE_OUT: tl.constexpr, ACCUM: tl.constexpr, COMBINE: tl.constexpr,
    WARM: tl.constexpr, EVEN_D: tl.constexpr, WSTAGES: tl.constexpr, STORE_STATE: tl.constexpr,
):
    """Backwards in time: g_t = DEC g_{t+1} + gh_t (the carry GIN at T enters undecayed);
    gx_t (+)= sum_k ALP_k g_t^(k). GH, GIN (B,S,D), GSTART and STARTS (B,NSEG,S,D) point at
    timescale 0 of this launch. COMBINE (pass 2 of segments): the carry into a segment is
    GIN carried back over every later segment's start gradient from zero, STARTS (pass 1).
    WARM (segments in one pass): timescale k's carry into the segment is scanned, unstored,
    from zero over the WARMk steps after it (from GIN where they reach T), pipelined WSTAGES deep.
    STORE_STATE False: the start gradient is not stored (no initial state to pass it to)."""
    pid_d = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CT)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)
    mask_d = channel_mask(offs_d, D, BD, EVEN_D)
    st = (b * NSEG + seg) * SD + offs_d
    g0 = tl.zeros((BD,), dtype=tl.float32)
    g1 = g0
    g2 = g0
    g3 = g0
    if HAS_GIN:
        g0, g1, g2, g3 = _load_state(GIN + b * SD + offs_d, mask_d, D, NS)
    if COMBINE:
        # later segments, last first: g <- dec^len g + (its start gradient from zero); the last
        # segment decays one step less (the carry at T enters its last row undecayed)
        f0, f1, f2, f3 = _seg_decays(DEC64, SEGLEN, NS)
        l0, l1, l2, l3 = _seg_decays(DEC64, T - (NSEG - 1) * SEGLEN - 1, NS)
        for j in tl.range(0, NSEG - 1 - seg, num_stages=STAGES):
            k = NSEG - 1 - j
            s0, s1, s2, s3 = _load_state(STARTS + (b * NSEG + k) * SD + offs_d, mask_d, D, NS)
            g0 = tl.where(j == 0, l0, f0) * g0 + s0
            g1 = tl.where(j == 0, l1, f1) * g1 + s1
            g2 = tl.where(j == 0, l2, f2) * g2 + s2
            g3 = tl.where(j == 0, l3, f3) * g3 + s3
    d0, d1, d2, d3 = _load_coefs(DEC, NS)
    a0, a1, a2, a3 = _load_coefs(ALP, NS)
    t_start = seg * SEGLEN
    seg_len = segment_length(seg, SEGLEN, T)
    t_last = t_start + seg_len - 1
    # tile row i is time t_last - (i0 + i): the scan runs forward over reversed time
    gh_off = -rows[:, None] * SD + offs_d[None, :]
    gx_off = -rows[:, None] * D + offs_d[None, :]
    m = tl.broadcast_to(mask_d[None, :], (CT, BD))
    if WARM:  # each timescale over its own window: the gradients are separate tensors
        g0 = _ema_bwd_warm(GH, g0, d0, b, t_last, WARM0, T, D, SD, gh_off, m, rows, CT, BD, WSTAGES)
        if NS > 1:
            g1 = _ema_bwd_warm(GH + D, g1, d1, b, t_last, WARM1, T, D, SD, gh_off, m, rows, CT, BD, WSTAGES)
        if NS > 2:
            g2 = _ema_bwd_warm(GH + 2 * D, g2, d2, b, t_last, WARM2, T, D, SD, gh_off, m, rows, CT, BD, WSTAGES)
        if NS > 3:
            g3 = _ema_bwd_warm(GH + 3 * D, g3, d3, b, t_last, WARM3, T, D, SD, gh_off, m, rows, CT, BD, WSTAGES)
    g0, g1, g2, g3 = _ema_bwd_span(GH + (b * T + t_last) * SD, GX + (b * T + t_last) * D, gh_off, gx_off, m,
                                   g0, g1, g2, g3, d0, d1, d2, d3, a0, a1, a2, a3, D, SD, rows, seg_len,
                                   t_last == T - 1, NS, CT, BD, STAGES, STORE_OUT, ACCUM)
    if STORE_STATE:
        _store_state(GSTART + st, g0, g1, g2, g3, mask_d, D, NS)


# ---------------------------------------------------------------------------- launchers


def _host_alphas(alphas) -> tuple[float, ...]:
    # a CUDA tensor's values cost a device synchronization: pass floats where it matters
    return tuple(float(a) for a in (alphas.tolist() if torch.is_tensor(alphas) else alphas))


GROUP = 4  # timescales one launch scans (one x read per group)


class Coefs(NamedTuple):
    """Per-timescale coefficient tensors on one device, and their views that the launches take."""

    dec64: torch.Tensor  # (S,) 1 - alpha, float64: the segment decays dec ** SEGLEN
    dec: torch.Tensor  # (S,) 1 - alpha, float32
    alp: torch.Tensor  # (S,) alpha, float32
    groups: tuple  # per group of GROUP timescales from s0: (dec[s0:], dec64[s0:], alp[s0:])
    dec_col: torch.Tensor  # dec.view(1, S, 1): dL/dh0 = (1 - alpha) g_0


def _build_coefs(alphas: tuple[float, ...], device: torch.device) -> Coefs:
    dec = [1.0 - a for a in alphas]
    dec64, dec32, alp = (torch.tensor(v, dtype=dt, device=device)
                         for v, dt in ((dec, torch.float64), (dec, torch.float32), (alphas, torch.float32)))
    groups = tuple((dec32[s0:], dec64[s0:], alp[s0:]) for s0 in range(0, len(alphas), GROUP))
    return Coefs(dec64, dec32, alp, groups, dec32.view(1, len(alphas), 1))


def _coefs(alphas: tuple[float, ...], device: torch.device) -> Coefs:
    """The coefficient tensors of ``alphas`` on ``device``, made once per (alphas, device): made on the
    device for each call, these were three small kernels ahead of every scan (notes/kernels.md, v21)."""
    return cached("ema_coefs", _build_coefs, alphas, device)


def _coefs_ahead(alphas: tuple[float, ...], device: torch.device) -> None:
    # the coefficient tensors a compiled call's plans will keep, made while the compiler traces the op
    ahead("ema_coefs", _build_coefs, alphas, device)


class _Launch(NamedTuple):
    """One EMA launch plan: everything but the tensors of the call (``_ema_fwd_launch``)."""

    S: int
    grid: tuple[int, int, int] | None  # None: T = 0 or B * D = 0, nothing to launch
    state_shape: tuple[int, ...]  # float32 (B, NSEG, S, D): each segment's end state (fwd) / start gradient
    #                               (bwd); (B, S, D) for one segment, the same bytes returned without a view
    two_pass: bool  # segments in two passes: a scratch buffer of state_shape for pass 1
    groups: tuple  # per group from s0: (s0, pass 1's Launch, the scan's Launch); common.launch starts them
    scratch: dict  # cache.scratch's store: pass 1's buffer, per device, stream and thread


def _state_shape(B: int, nseg: int, S: int, D: int) -> tuple[int, ...]:
    return (B, S, D) if nseg == 1 else (B, nseg, S, D)


def _segmented(cfg: TileConfig | None, table, B: int, T: int, D: int, alphas: tuple[float, ...], sms: int,
               bits: int):
    """The tile config one launch takes and how it cuts T: (cfg, channel blocks, segments, segment
    length, warm-up steps per timescale (keeping ``bits``) or None, whether the segments need two passes)."""
    cfg = choose(cfg, table, B, D, sms)
    nd = -(-D // cfg.block)
    nseg, seglen, warm = ema_plan(cfg, B * nd, T, alphas, sms, bits)
    return cfg, nd, nseg, seglen, warm, nseg > 1 and warm is None


def _tile_constants(cfg: TileConfig, D: int, ns: int) -> dict:
    """The constants both directions' kernels take from the tile config, for a group of ``ns`` timescales."""
    return dict(NS=ns, CT=cfg.ct, BD=cfg.block, VEC=cfg.vec, STAGES=cfg.stages, num_warps=cfg.num_warps,
                EVEN_D=D % cfg.block == 0, WSTAGES=cfg.warm_stages)


def _pass1_buffer(p: _Launch, dev: torch.device) -> torch.Tensor:
    # pass 1's segment end states (forward) or start gradients (backward), read by the scan's pass 2
    return torch.empty(p.state_shape, dtype=torch.float32, device=dev)


def _ema_fwd_launch(B: int, T: int, D: int, alphas: tuple[float, ...], has_h0: bool, state: bool,
                    device: torch.device, sms: int, cfg: TileConfig | None, bits: int = WARM_BITS) -> _Launch:
    S = len(alphas)
    if T == 0 or B * D == 0:
        return _Launch(S, None, (), False, (), {})
    cfg, nd, nseg, seglen, warm, two_pass = _segmented(cfg, EMA_FWD, B, T, D, alphas, sms, bits)
    first = seglen
    if warm is not None:
        if cfg.seg_stages is not None:  # warmed-up segments: their own steps at their depth
            cfg = replace(cfg, stages=cfg.seg_stages)
        # the first segment has no warm-up: it runs longer, the others shorter
        seglen, first = first_segment(T, nseg, seglen, max(warm), cfg.ct)
    groups = []
    for (dec, dec64, alp), s0 in zip(_coefs(alphas, device).groups, range(0, S, GROUP)):
        kw = dict(_tile_constants(cfg, D, min(GROUP, S - s0)), OUT_POLICY=EMA_OUT_POLICY, D=D, SD=S * D)
        # x is shared: one warm-up long enough for the group's slowest timescale
        warmlen = 0 if warm is None else max(warm[s0:s0 + GROUP])
        args = (dec, dec64, alp, T, seglen, first, nseg, warmlen)
        pass1 = dict(kw, HAS_HIN=False, STORE_OUT=False, COMBINE=False, WARM=False, STORE_STATE=True)
        scan = dict(kw, HAS_HIN=has_h0, STORE_OUT=True, COMBINE=two_pass, WARM=warm is not None, STORE_STATE=state)
        grid = (nd, nseg, B)
        groups.append((s0, make_launch(_ema_fwd_kernel, grid, pass1, args),
                       make_launch(_ema_fwd_kernel, grid, scan, args)))
    return _Launch(S, (nd, nseg, B), _state_shape(B, nseg, S, D), two_pass, tuple(groups), {})


def ema_traces_fwd(
    x: torch.Tensor,
    alphas,
    h0: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    cfg: TileConfig | None = None,
    state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """EMA traces, no autograd: x (B,T,D) -> (h (B,T,S,D) in ``out_dtype`` (x's), h_T (B,S,D) float32).

    ``alphas``: S floats, or a tensor (whose values are read back: a CUDA one costs a synchronization).
    ``state`` False: h_T is neither allocated nor stored, and None comes back in its place.
    The launch plan is made once per (B, T, D, alphas, h0 given or not, state or not, device and its
    SM count, cfg, the bits its warm-ups keep) (``cache.py``); the dtypes enter it only by those bits:
    a bf16 or float16 output's warm-ups stop ``plan.WARM_MARGIN_BITS`` under its resolution.
    """
    x = x.contiguous()
    B, T, D = x.shape
    alphas = _host_alphas(alphas)
    dev = x.device
    out_dtype = out_dtype or x.dtype
    p = cached("ema_fwd", _ema_fwd_launch, B, T, D, alphas, h0 is not None, state, dev, sm_count(dev), cfg,
               out_warm_bits(out_dtype))
    out = torch.empty(B, T, p.S, D, dtype=out_dtype, device=dev)
    h0f = None if h0 is None else h0.float().contiguous()
    if p.grid is None:
        hT = torch.zeros(B, p.S, D, device=dev) if h0f is None else h0f.clone()
        return out, hT if state else None
    # without ``state`` the scan stores no end state: any pointer stands in for it
    hend = torch.empty(p.state_shape, dtype=torch.float32, device=dev) if state else x
    ends = scratch(p.scratch, functools.partial(_pass1_buffer, p, dev), dev) if p.two_pass else hend
    hin = x if h0f is None else h0f
    for s0, pass1, scan in p.groups:
        o, hi, he, en = out, hin, hend, ends
        if s0:  # a later group of timescales: views from its first timescale on
            o, he, en = out[..., s0:, :], hend[..., s0:, :], ends[..., s0:, :]
            hi = x if h0f is None else h0f[:, s0:]
        if p.two_pass:  # pass 1: each segment's end state from zero
            launch(pass1, (x, out, x, en, x))
        # the scan; in two passes each segment first combines the end states before it (pass 2)
        launch(scan, (x, o, hi, he, en))
    if not state:
        return out, None
    return out, (hend if len(p.state_shape) == 3 else hend[:, -1])


def _ema_bwd_launch(B: int, T: int, S: int, D: int, alphas: tuple[float, ...], has_gf: bool, state: bool,
                    device: torch.device, sms: int, cfg: TileConfig | None, bits: int = WARM_BITS) -> _Launch:
    if T == 0 or B * D == 0:
        return _Launch(S, None, (), False, (), {})
    cfg, nd, nseg, seglen, warm, two_pass = _segmented(cfg, EMA_BWD, B, T, D, alphas, sms, bits)
    groups = []
    for (dec, dec64, alp), s0 in zip(_coefs(alphas, device).groups, range(0, S, GROUP)):
        kw = _tile_constants(cfg, D, min(GROUP, S - s0))
        # each timescale's gradient is its own tensor: each warms up over its own steps
        w = [0] * GROUP if warm is None else (warm[s0:s0 + GROUP] + [0] * GROUP)[:GROUP]
        args = (dec, dec64, alp, T, D, S * D, seglen, nseg, *w)
        pass1 = dict(kw, HAS_GIN=False, STORE_OUT=False, ACCUM=False, COMBINE=False, WARM=False, STORE_STATE=True)
        scan = dict(kw, HAS_GIN=has_gf, STORE_OUT=True, ACCUM=s0 > 0, COMBINE=two_pass, WARM=warm is not None,
                    STORE_STATE=state)
        grid = (nd, nseg, B)
        groups.append((s0, make_launch(_ema_bwd_kernel, grid, pass1, args),
                       make_launch(_ema_bwd_kernel, grid, scan, args)))
    return _Launch(S, (nd, nseg, B), _state_shape(B, nseg, S, D), two_pass, tuple(groups), {})


def ema_traces_bwd(
    gh: torch.Tensor,
    alphas,
    g_final: torch.Tensor | None = None,
    x_dtype: torch.dtype = torch.float32,
    cfg: TileConfig | None = None,
    state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backward of ``ema_traces_fwd``: gh (B,T,S,D) [, g_final (B,S,D)] -> (dx (B,T,D), g_0 (B,S,D) float32).

    ``g_0`` is dL/dh_0 total (the backward state at t = 0); dL/dh0 = (1 - alpha) g_0. ``state``
    False: g_0 is neither allocated nor stored (no h0 wants a gradient), None in its place.
    ``alphas`` as in ``ema_traces_fwd``; the plan is cached as there, its warm-ups' bits by ``x_dtype``
    (dx's).
    """
    gh = gh.contiguous()
    B, T, S, D = gh.shape
    alphas = _host_alphas(alphas)
    dev = gh.device
    p = cached("ema_bwd", _ema_bwd_launch, B, T, S, D, alphas, g_final is not None, state, dev, sm_count(dev),
               cfg, out_warm_bits(x_dtype))
    gx = torch.empty(B, T, D, dtype=x_dtype, device=dev)
    gf = None if g_final is None else g_final.float().contiguous()
    if p.grid is None:
        g0 = torch.zeros(B, S, D, device=dev) if gf is None else gf.clone()
        return gx, g0 if state else None
    gstart = torch.empty(p.state_shape, dtype=torch.float32, device=dev) if state else gh
    starts = scratch(p.scratch, functools.partial(_pass1_buffer, p, dev), dev) if p.two_pass else gstart
    gin = gh if gf is None else gf
    for s0, pass1, scan in p.groups:
        g, gi, gs, st = gh, gin, gstart, starts
        if s0:
            g, gs, st = gh[..., s0:, :], gstart[..., s0:, :], starts[..., s0:, :]
            gi = gh if gf is None else gf[:, s0:]
        if p.two_pass:  # pass 1: each segment's start gradient from zero
            launch(pass1, (g, gx, gh, st, gh))
        launch(scan, (g, gx, gi, gs, st))
    if not state:
        return gx, None
    return gx, (gstart if len(p.state_shape) == 3 else gstart[:, 0])


# ---------------------------------------------------------------------------- autograd


class _EmaTracesTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alphas, h0, state):
        alphas = _host_alphas(alphas)
        out, hT = opaque.run("ema_traces_fwd", x, alphas, h0, state=state)
        ctx.alphas = alphas
        ctx.x_dtype = x.dtype
        ctx.x_shape = x.shape
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = None if h0 is None else h0.dtype
        ctx.set_materialize_grads(False)
        return out, hT

    @staticmethod
    def backward(ctx, gout, ghT):
        alphas = ctx.alphas
        B, T, D = ctx.x_shape
        S = len(alphas)
        if gout is None:  # only the final state was used
            gout = torch.zeros(B, T, S, D, dtype=ctx.x_dtype, device=ghT.device)
        want_h0 = ctx.has_h0 and ctx.needs_input_grad[2]
        gx, g0 = opaque.run("ema_traces_bwd", gout, alphas, ghT, ctx.x_dtype, state=want_h0)
        gh0 = None
        if want_h0:
            gh0 = (_coefs(alphas, g0.device).dec_col * g0).to(ctx.h0_dtype)
        return (gx if ctx.needs_input_grad[0] else None), None, gh0, None



def fused_ema_traces(x, alphas, h0=None, state=True):
    """Differentiable EMA traces: (h (B,T,S,D) in x's dtype, h_T (B,S,D) float32, or None where
    ``state`` is False); grads to x and h0. ``alphas``: S floats (a tensor is read back to the host
    once per call). Where no gradient is recorded (no_grad, or no input that requires one) the
    launcher runs without the autograd Function: the same launches, less host time."""
    if torch.is_grad_enabled() and (x.requires_grad or (h0 is not None and h0.requires_grad)):
        return _EmaTracesTriton.apply(x, alphas, h0, state)
    return opaque.run("ema_traces_fwd", x, alphas, h0, state=state)


# torch.compile reaches the launchers through custom ops (opaque.py)
opaque.implement("ema_traces_fwd", ema_traces_fwd, ahead=_coefs_ahead)
opaque.implement("ema_traces_bwd", ema_traces_bwd, ahead=_coefs_ahead)
