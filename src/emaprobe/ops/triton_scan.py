"""Triton kernels for the scans, forward and backward, near the memory-bandwidth floor.

Symbols as in ``naive.py`` (B batch, T time, D channels, S timescales, F the
flattened feature dims of ``linear_scan``, h state, a decay, b input), plus:

    CT  time steps in one register tile        BD  channels in one tile (BF for F)
    VEC adjacent channels one thread owns       g   dL/dh_t, the backward state
    seg a stretch of time one program scans    NSEG segments along T

**One pass, chunked in time.** A program (one warp) owns BD channels of one sequence
(and, at long T with few channels, one segment of time). It walks its stretch of time
in tiles of CT steps: it loads a (CT, BD) tile, scans it with
``tl.associative_scan`` (the pair operator (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2);
Blelloch 1990, as in accelerated-scan), the carried state folded into row 0, stores,
and carries the last row. Every input byte is read once and every output byte written
once, so forward EMA moves (2 + 2S) bytes per token-channel in bf16, the floor of
issue 5. EMA handles up to 4 timescales per launch, one 2-D tile each (more: one more
launch per 4, re-reading x).

**Bytes in flight.** At small batch few programs run (B=16, D=768: 192 one-warp
programs on 132 SMs), so each must keep many loads outstanding: the tile loop is
software-pipelined (``tl.range(..., num_stages=STAGES)``), which turns each load into
asynchronous copies (cp.async) issued STAGES - 1 tiles ahead. That alone took the
forward at that shape from 0.130 to 0.091 ms on the H100, where hand-written prefetch
two tiles ahead had kept too few bytes in flight (notes/kernels.md, v7).

**Masks only where needed.** Full tiles run without row masks, and without channel masks
when D is a multiple of BD (``EVEN_D``); only a segment's partial last tile, and in the
backward the tiles holding t = T - 1 or t = 0, run masked (``_tile_plan``). Per-element
predicates had been most of the loop: 1328 of the EMA forward's instructions per tile
against 534 now (SASS; notes/kernels.md, v10).

**Width.** The EMA kernels have two default tile shapes (``EMA_FWD``, ``EMA_BWD``): 128
channels a warp (8-byte accesses, 256-byte rows), which moves bytes best, and 64 a warp, which
makes twice the warps; ``_choose`` takes the wider wherever it alone fills the GPU. The
forward's narrow shape puts two 64-channel warps side by side in one program, so that each
program still covers whole 256-byte rows.

**Why the layout matters.** ``tl.max_contiguous(..., VEC)`` with BD = 32 * VEC * warps
makes Triton put the 32 lanes of a warp along channels (VEC channels each, coalesced),
so all CT rows of a tile sit in one thread and the scan is a register loop: no
shuffles, no shared memory (checked in SASS: 0 SHFL, 0 BAR). Left to itself Triton
spread time across lanes and the scan cost ~8 shuffles per element (notes/kernels.md).

**Segments when channels are few.** When B * D / BD programs cannot fill the GPU
(fewer than one per SM: T = 1M with B = 1, say), time is cut into NSEG segments. A fixed
decay forgets: after W_k steps (``warm_steps``: 24, 158, 824 at alpha = 0.5, 0.1, 0.02) a
timescale's state weighs under 2**-24, float32's resolution of it. So each EMA segment
first scans the W steps before it from zero, storing nothing, and then its own steps from
that incoming state (``WARM``): one pass, re-reading W of every SEGLEN >= 2 W steps of input
(the backward warms each timescale's gradient over its own W_k). ``linear_scan``'s decays
are data, so its forward segments warm up over a fixed LIN_WARM_STEPS, and a second launch
rescans, from the exact incoming state, only the tiles where some channel's decays over the
warm-up multiply to more than 2**-24 (every other program of it returns at once). Where no
such W exists or the segments would be too few (a decay near 1), and for ``linear_scan``'s
backward, two passes run instead: pass 1 scans each segment from zero and keeps
only its end state (and decay product); pass 2 first carries the initial state over the
end states of the segments before its own (a short loop over at most NSEG states,
``COMBINE``), then rescans its segment from that true incoming state and writes the output.
That re-reads the input once more (+2 bytes per token-channel for EMA) but keeps every SM
busy (the "state passing" of chunked linear attention / Mamba-2, Dao & Gu 2024). The
warm-up is the older trick of starting an IIR filter's blocks early and letting the
transient die (overlap-style block filtering); H100, B=1 T=65536: forward 0.163 against the
two passes' 0.200 ms (notes/kernels.md, v20).

**Backward** is the same recurrence run backwards in time,
``g_t = dy_t + a_{t+1} g_{t+1}``, fused with what the gradients need:
``dx_t = sum_s alpha_s g_t^(s)`` for EMA (reads S traces' gradients, writes one
(B, T, D) tensor: the floor again), and ``db_t = g_t``, ``da_t = g_t h_{t-1}`` for
``linear_scan``. The gradient of a returned final state enters as the carry at T.

The state is float32 throughout; outputs are written in the requested dtype (the
input's), so bf16 in means bf16 traces out and half the bytes of float32.

Importing this module registers the "triton" scan backend (``scan.py``'s
``"auto"`` picks it for CUDA tensors); it raises ImportError where Triton is absent.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from emaprobe.ops.scan import ScanBackend, register_backend

# ---------------------------------------------------------------------------- kernels


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _last_row(v, rows, n_last):
    # row ``n_last`` of a (CT, BD) tile, summed out of axis 0: Triton cannot index rows
    return tl.sum(tl.where((rows == n_last)[:, None], v, 0.0), axis=0)


@triton.jit
def _channel_mask(offs, D, BD: tl.constexpr, EVEN: tl.constexpr):
    # offs < D; when D is a multiple of BD, a constant the compiler drops from every load and store
    if EVEN:
        return tl.full((BD,), 1, tl.int1)
    else:
        return offs < D


@triton.jit
def _seg_len(seg, SEGLEN, T):
    # length of segment ``seg``: SEGLEN, or what is left of T for the last one
    n = SEGLEN
    if seg * SEGLEN + SEGLEN > T:
        n = T - seg * SEGLEN
    return n


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
def _ema_fwd_one(x, live, h, dec, alp, k: tl.constexpr, o_ptr, o_off, m, D, rows,
                 CT: tl.constexpr, STORE_OUT: tl.constexpr, SEV: tl.constexpr):
    # timescale k of a (CT, BD) tile: scan, add the carried state, store, return the new carry
    a = tl.where(live, dec, 1.0)  # padded rows decay by 1 and add 0: the last row is the end state
    u = alp * x + tl.where((rows == 0)[:, None], dec * h[None, :], 0.0)  # the carry enters at row 0
    _, hh = tl.associative_scan((a, u), 0, _combine)
    if STORE_OUT:
        tl.store(o_ptr + k * D + o_off, hh.to(o_ptr.dtype.element_ty), mask=m, eviction_policy=SEV)
    return _last_row(hh, rows, CT - 1)


@triton.jit
def _ema_fwd_tile(x_ptr, o_ptr, x_off, o_off, m, live, h0, h1, h2, h3, d0, d1, d2, d3, a0, a1, a2, a3, D, rows,
                  NS: tl.constexpr, CT: tl.constexpr, STORE_OUT: tl.constexpr, SEV: tl.constexpr):
    # one (CT, BD) tile of x, every timescale: load, scan, store (L2 eviction policy SEV); returns
    # the carried states
    x = tl.load(x_ptr + x_off, mask=m, other=0.0).to(tl.float32)
    h0 = _ema_fwd_one(x, live, h0, d0, a0, 0, o_ptr, o_off, m, D, rows, CT, STORE_OUT, SEV)
    if NS > 1:
        h1 = _ema_fwd_one(x, live, h1, d1, a1, 1, o_ptr, o_off, m, D, rows, CT, STORE_OUT, SEV)
    if NS > 2:
        h2 = _ema_fwd_one(x, live, h2, d2, a2, 2, o_ptr, o_off, m, D, rows, CT, STORE_OUT, SEV)
    if NS > 3:
        h3 = _ema_fwd_one(x, live, h3, d3, a3, 3, o_ptr, o_off, m, D, rows, CT, STORE_OUT, SEV)
    return h0, h1, h2, h3


@triton.jit
def _ema_fwd_span(x_ptr, o_ptr, x_off, o_off, m, h0, h1, h2, h3, d0, d1, d2, d3, a0, a1, a2, a3, D, SD, rows, n,
                  NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, STAGES: tl.constexpr,
                  STORE_OUT: tl.constexpr, SEV: tl.constexpr):
    # n steps of every timescale from x_ptr / o_ptr (time t of the span at row offset t); returns the states.
    # Full tiles without row masks (with EVEN_D, without any mask): per-element predicates were most of
    # the loop's instructions (notes/kernels.md, v10). STAGES tiles in flight: Triton's pipeliner turns
    # the load into asynchronous copies (cp.async) STAGES - 1 iterations ahead.
    lo, hi, last, tail = _tile_plan(n, CT, False, False)
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
    T, D, SD, SEGLEN, NSEG, WARMLEN,
    NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    HAS_HIN: tl.constexpr, STORE_OUT: tl.constexpr, COMBINE: tl.constexpr, WARM: tl.constexpr,
    EVEN_D: tl.constexpr, WSTAGES: tl.constexpr, OUT_POLICY: tl.constexpr,
):
    """h_t^(k) = DEC_k h_{t-1}^(k) + ALP_k x_t for NS <= 4 timescales over one segment.

    X (B,T,D) contiguous; OUT, HIN (the state at t = 0), HEND and ENDS point at timescale 0
    of this launch inside (B,T,S,D) / (B,S,D) / (B,NSEG,S,D) buffers whose row stride over S
    is D (SD = S*D per step). COMBINE (pass 2 of segments): the segment starts from HIN
    carried over every earlier segment's end state from zero, ENDS (written by pass 1).
    WARM (segments in one pass): the segment's incoming state is scanned, unstored, from zero
    over the WARMLEN steps before it (from HIN at t = 0 if they reach it), pipelined WSTAGES
    deep; SEGLEN and WARMLEN are multiples of CT. OUT_POLICY: the L2 eviction policy of the
    trace stores (``EMA_OUT_POLICY``).
    """
    pid_d = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CT)  # (CT,)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)  # (BD,)
    mask_d = _channel_mask(offs_d, D, BD, EVEN_D)
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
    t_start = seg * SEGLEN
    x_off = rows[:, None] * D + offs_d[None, :]  # (CT, BD)
    o_off = rows[:, None] * SD + offs_d[None, :]
    m = tl.broadcast_to(mask_d[None, :], (CT, BD))
    if WARM:  # x is shared: one warm-up, as long as the slowest timescale needs (each its own was slower, v20)
        w0 = tl.maximum(t_start - WARMLEN, 0)
        if w0 > 0:  # the state WARMLEN steps back is dropped: its weight here is under 2**-24
            h0 = tl.zeros_like(h0)
            h1 = h0
            h2 = h0
            h3 = h0
        h0, h1, h2, h3 = _ema_fwd_span(X + (b * T + w0) * D, OUT, x_off, o_off, m, h0, h1, h2, h3, d0, d1, d2, d3,
                                       a0, a1, a2, a3, D, SD, rows, t_start - w0, NS, CT, BD, WSTAGES, False, "")
    h0, h1, h2, h3 = _ema_fwd_span(X + (b * T + t_start) * D, OUT + (b * T + t_start) * SD, x_off, o_off, m,
                                   h0, h1, h2, h3, d0, d1, d2, d3, a0, a1, a2, a3, D, SD, rows,
                                   _seg_len(seg, SEGLEN, T), NS, CT, BD, STAGES, STORE_OUT, OUT_POLICY)
    _store_state(HEND + st, h0, h1, h2, h3, mask_d, D, NS)


@triton.jit
def _ema_bwd_one(u, keep, g, dec, rows, CT: tl.constexpr):
    a = tl.where(keep, dec, 1.0)
    # the carry enters at row 0 with that row's coefficient
    u = u.to(tl.float32) + tl.where((rows == 0)[:, None], a * g[None, :], 0.0)
    _, gg = tl.associative_scan((a, u), 0, _combine)
    return gg, _last_row(gg, rows, CT - 1)


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
def _tile_plan(seg_len, CT: tl.constexpr, first_masked, last_masked):
    # Full tiles run unmasked; at most two run masked: the first (when ``first_masked``) and the
    # last (when ``last_masked`` or partial). -> (lo, hi) of the unmasked loop, the last tile's start,
    # and whether it still needs its masked pass
    last = (seg_len - 1) // CT * CT
    lo = tl.where(first_masked, CT, 0)
    tail = last_masked | (seg_len % CT != 0)
    hi = tl.where(tail, last, seg_len)
    return lo, hi, last, tail & (last >= lo)


@triton.jit
def _ema_bwd_span(gh_ptr, gx_ptr, gh_off, gx_off, m, g0, g1, g2, g3, d0, d1, d2, d3, a0, a1, a2, a3, D, SD, rows,
                  n, at_end, NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, STAGES: tl.constexpr,
                  STORE_OUT: tl.constexpr, ACCUM: tl.constexpr):
    # n steps backwards in time from gh_ptr / gx_ptr (the span's last step; tile row i is i steps earlier);
    # ``at_end``: that step is t = T - 1, where the carry enters undecayed. Masked tiles: that first one
    # and a partial last one; the rest run without row masks. Returns the carried gradients.
    lo, hi, last, tail = _tile_plan(n, CT, at_end, False)
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
    WARM: tl.constexpr, EVEN_D: tl.constexpr, WSTAGES: tl.constexpr,
):
    """Backwards in time: g_t = DEC g_{t+1} + gh_t (the carry GIN at T enters undecayed);
    gx_t (+)= sum_k ALP_k g_t^(k). GH, GIN (B,S,D), GSTART and STARTS (B,NSEG,S,D) point at
    timescale 0 of this launch. COMBINE (pass 2 of segments): the carry into a segment is
    GIN carried back over every later segment's start gradient from zero, STARTS (pass 1).
    WARM (segments in one pass): timescale k's carry into the segment is scanned, unstored,
    from zero over the WARMk steps after it (from GIN where they reach T), pipelined WSTAGES deep."""
    pid_d = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CT)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)
    mask_d = _channel_mask(offs_d, D, BD, EVEN_D)
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
    seg_len = _seg_len(seg, SEGLEN, T)
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
    _store_state(GSTART + st, g0, g1, g2, g3, mask_d, D, NS)


@triton.jit
def _lin_fwd_tile(a_ptr, u_ptr, o_ptr, a_off, u_off, o_off, m, h, aprod, rows,
                  CT: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr):
    # one (CT, BF) tile; masked rows load a = 1, u = 0 (they carry the state unchanged)
    a = tl.load(a_ptr + a_off, mask=m, other=1.0).to(tl.float32)
    u = tl.load(u_ptr + u_off, mask=m, other=0.0).to(tl.float32)
    u += tl.where((rows == 0)[:, None], a * h[None, :], 0.0)  # the carry enters at row 0
    acum, hh = tl.associative_scan((a, u), 0, _combine)
    if STORE_OUT:
        tl.store(o_ptr + o_off, hh.to(o_ptr.dtype.element_ty), mask=m)
    if STORE_AEND:
        aprod = aprod * _last_row(acum, rows, CT - 1)
    return _last_row(hh, rows, CT - 1), aprod


@triton.jit
def _lin_fwd_span(a_ptr, u_ptr, o_ptr, a_off, u_off, o_off, m, h, aprod, rows, n, s_at, s_ut, F,
                  CT: tl.constexpr, BF: tl.constexpr, STAGES: tl.constexpr, STORE_OUT: tl.constexpr,
                  STORE_AEND: tl.constexpr):
    # n steps from a_ptr / u_ptr / o_ptr; full tiles unmasked, a partial last one masked (padded rows
    # load a = 1, u = 0 and carry the state unchanged). Returns the state and the decays' product.
    lo, hi, last, tail = _tile_plan(n, CT, False, False)
    for i0 in tl.range(lo, hi, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        h, aprod = _lin_fwd_tile(a_ptr + i * s_at, u_ptr + i * s_ut, o_ptr + i * F, a_off, u_off, o_off, m, h, aprod,
                                 rows, CT, STORE_OUT, STORE_AEND)
    if tail:
        i = tl.cast(last, tl.int64)
        h, aprod = _lin_fwd_tile(a_ptr + i * s_at, u_ptr + i * s_ut, o_ptr + i * F, a_off, u_off, o_off,
                                 m & (rows < n - last)[:, None], h, aprod, rows, CT, STORE_OUT, STORE_AEND)
    return h, aprod


@triton.jit
def _lin_fwd_kernel(
    A, U, OUT, HIN, HEND, AEND, ENDS, PRODS, FLAGS,
    T, F, SEGLEN, NSEG, WARMLEN,
    s_ab, s_at, s_af, s_ub, s_ut, s_uf,
    CT: tl.constexpr, BF: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    HAS_HIN: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr, COMBINE: tl.constexpr,
    EVEN_F: tl.constexpr, WARM: tl.constexpr, FIXUP: tl.constexpr, WSTAGES: tl.constexpr,
):
    """h_t = a_t h_{t-1} + u_t over one segment; A, U strided (B,T,F) views, OUT (B,T,F) contiguous,
    HIN (B,F) the state at t = 0. COMBINE (pass 2 of segments): the segment starts from HIN
    carried over every earlier segment's (end state from zero, decay product), ENDS and PRODS.

    WARM (segments in one pass): the incoming state is scanned, unstored, from zero over the
    WARMLEN steps before the segment; where some channel's decays there multiply to more than
    2**-24 (the dropped state still counts), FLAGS (B,NSEG,programs along F) marks the tile. Every
    segment also leaves its (end state from zero, decay product) in ENDS and PRODS, so that FIXUP
    (COMBINE, only for marked tiles) can rescan those from their exact incoming state.
    """
    pid_f = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    flag_off = (b * NSEG + seg) * tl.num_programs(0) + pid_f
    redo = True
    if FIXUP:
        redo = tl.load(FLAGS + flag_off) != 0
    if redo:
        rows = tl.arange(0, CT)
        offs_f = tl.max_contiguous(tl.multiple_of(pid_f * BF + tl.arange(0, BF), VEC), VEC)
        mask_f = _channel_mask(offs_f, F, BF, EVEN_F)
        state_off = (b * NSEG + seg) * F + offs_f
        if HAS_HIN:
            h = tl.load(HIN + b * F + offs_f, mask=mask_f, other=0.0).to(tl.float32)
        else:
            h = tl.zeros((BF,), dtype=tl.float32)
        if COMBINE:
            for k in tl.range(0, seg, num_stages=STAGES):
                kk = (b * NSEG + k) * F + offs_f
                h = tl.load(PRODS + kk, mask=mask_f, other=1.0) * h + tl.load(ENDS + kk, mask=mask_f, other=0.0)
        t_start = (seg * SEGLEN).to(tl.int64)
        a_off = rows[:, None] * s_at + offs_f[None, :] * s_af
        u_off = rows[:, None] * s_ut + offs_f[None, :] * s_uf
        o_off = rows[:, None] * F + offs_f[None, :]
        m = tl.broadcast_to(mask_f[None, :], (CT, BF))
        one = tl.full((BF,), 1.0, tl.float32)
        if WARM:
            w0 = tl.maximum(t_start - WARMLEN, 0)
            h = tl.where(w0 > 0, 0.0, h)
            h, pw = _lin_fwd_span(A + b * s_ab + w0 * s_at, U + b * s_ub + w0 * s_ut, OUT, a_off, u_off, o_off, m,
                                  h, one, rows, t_start - w0, s_at, s_ut, F, CT, BF, WSTAGES, False, True)
            lost = (w0 > 0) & (tl.abs(pw) > 5.960464477539063e-08) & mask_f  # 2**-24
            tl.store(FLAGS + flag_off, tl.max(lost.to(tl.int32), axis=0))
        h_in = h
        h, aprod = _lin_fwd_span(A + b * s_ab + t_start * s_at, U + b * s_ub + t_start * s_ut,
                                 OUT + (b * T + t_start) * F, a_off, u_off, o_off, m, h, one, rows,
                                 _seg_len(seg, SEGLEN, T), s_at, s_ut, F, CT, BF, STAGES, STORE_OUT,
                                 STORE_AEND | WARM)
        tl.store(HEND + state_off, h, mask=mask_f)
        if STORE_AEND:
            tl.store(AEND + state_off, aprod, mask=mask_f)
        if WARM:  # this segment's end state from zero, for FIXUP's rescans
            tl.store(ENDS + state_off, h - aprod * h_in, mask=mask_f)
            tl.store(PRODS + state_off, aprod, mask=mask_f)


@triton.jit
def _lin_bwd_tile(a_ptr, g_ptr, h_ptr, ga_ptr, gb_ptr, a_off, c_off, m, ma, mh, at_t0, h0, g, aprod, rows,
                  CT: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr):
    # one (CT, BF) tile backwards in time; ``ma`` masks a_{t+1} (absent at t = T - 1: coefficient 1),
    # ``mh`` masks h_{t-1} (absent at t = 0, where the row ``at_t0`` takes h0 instead)
    a = tl.load(a_ptr + a_off, mask=ma, other=1.0).to(tl.float32)
    u = tl.load(g_ptr + c_off, mask=m, other=0.0).to(tl.float32)
    if STORE_OUT:
        hp = tl.load(h_ptr + c_off, mask=mh, other=0.0).to(tl.float32)
    u += tl.where((rows == 0)[:, None], a * g[None, :], 0.0)  # the carry enters at row 0
    acum, gg = tl.associative_scan((a, u), 0, _combine)
    if STORE_OUT:
        hp = tl.where(at_t0[:, None], h0[None, :], hp)
        tl.store(gb_ptr + c_off, gg.to(gb_ptr.dtype.element_ty), mask=m)
        tl.store(ga_ptr + c_off, (gg * hp).to(ga_ptr.dtype.element_ty), mask=m)
    if STORE_AEND:
        aprod = aprod * _last_row(acum, rows, CT - 1)
    return _last_row(gg, rows, CT - 1), aprod


@triton.jit
def _lin_bwd_kernel(
    A, GH, H, H0, GA, GB, GIN, GSTART, AEND, STARTS, PRODS,
    T, F, SEGLEN, NSEG,
    s_ab, s_at, s_af,
    CT: tl.constexpr, BF: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    HAS_GIN: tl.constexpr, HAS_H0: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr,
    COMBINE: tl.constexpr, EVEN_F: tl.constexpr,
):
    """Backwards: g_t = a_{t+1} g_{t+1} + gh_t; gb_t = g_t; ga_t = g_t h_{t-1}. GH, H, GA, GB (B,T,F)
    contiguous, GIN (B,F) the carry at T. COMBINE (pass 2 of segments): the carry into a segment
    is GIN carried back over every later segment's (start gradient from zero, decay product)."""
    pid_f = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CT)
    offs_f = tl.max_contiguous(tl.multiple_of(pid_f * BF + tl.arange(0, BF), VEC), VEC)
    mask_f = _channel_mask(offs_f, F, BF, EVEN_F)
    state_off = (b * NSEG + seg) * F + offs_f
    if HAS_GIN:
        g = tl.load(GIN + b * F + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BF,), dtype=tl.float32)
    if COMBINE:
        for j in tl.range(0, NSEG - 1 - seg, num_stages=STAGES):
            kk = (b * NSEG + NSEG - 1 - j) * F + offs_f
            g = tl.load(PRODS + kk, mask=mask_f, other=1.0) * g + tl.load(STARTS + kk, mask=mask_f, other=0.0)
    aprod = tl.full((BF,), 1.0, tl.float32)
    if HAS_H0:
        h0 = tl.load(H0 + b * F + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros((BF,), dtype=tl.float32)
    t_start = seg * SEGLEN
    seg_len = _seg_len(seg, SEGLEN, T)
    t_last = (t_start + seg_len - 1).to(tl.int64)
    a_ptr = A + b * s_ab + (t_last + 1) * s_at  # a_{t+1}
    g_ptr = GH + (b * T + t_last) * F
    h_ptr = H + (b * T + t_last - 1) * F  # h_{t-1}
    ga_ptr = GA + (b * T + t_last) * F
    gb_ptr = GB + (b * T + t_last) * F
    a_off = -rows[:, None] * s_at + offs_f[None, :] * s_af
    c_off = -rows[:, None] * F + offs_f[None, :]
    # masked tiles: the first of the last segment (holds t = T - 1), the last of the first (holds
    # t = 0) and a partial one; the rest run without row masks
    lo, hi, last, tail = _tile_plan(seg_len, CT, t_last == T - 1, seg == 0)
    m = tl.broadcast_to(mask_f[None, :], (CT, BF))
    if t_last == T - 1:
        t = t_last - rows
        mv = m & (rows < seg_len)[:, None]
        g, aprod = _lin_bwd_tile(a_ptr, g_ptr, h_ptr, ga_ptr, gb_ptr, a_off, c_off, mv, mv & (t < T - 1)[:, None],
                                 mv & (t > 0)[:, None], t == 0, h0, g, aprod, rows, CT, STORE_OUT, STORE_AEND)
    no_t0 = tl.zeros((CT,), tl.int1)
    for i0 in tl.range(lo, hi, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        g, aprod = _lin_bwd_tile(a_ptr - i * s_at, g_ptr - i * F, h_ptr - i * F, ga_ptr - i * F, gb_ptr - i * F,
                                 a_off, c_off, m, m, m, no_t0, h0, g, aprod, rows, CT, STORE_OUT, STORE_AEND)
    if tail:
        i = tl.cast(last, tl.int64)
        t = t_last - last - rows
        mv = m & (rows < seg_len - last)[:, None]
        g, aprod = _lin_bwd_tile(a_ptr - i * s_at, g_ptr - i * F, h_ptr - i * F, ga_ptr - i * F, gb_ptr - i * F,
                                 a_off, c_off, mv, mv & (t < T - 1)[:, None], mv & (t > 0)[:, None], t == 0, h0, g,
                                 aprod, rows, CT, STORE_OUT, STORE_AEND)
    tl.store(GSTART + state_off, g, mask=mask_f)
    if STORE_AEND:
        tl.store(AEND + state_off, aprod, mask=mask_f)


# ---------------------------------------------------------------------------- launch plans


@dataclass(frozen=True)
class TileConfig:
    """Launch shape: CT time steps by ``block`` channels per tile, ``num_warps`` warps a program.

    ``block`` must be a multiple of 32 * ``vec`` * ``num_warps``: then a warp's lanes lie
    along channels (``vec`` adjacent channels each) and every tile row stays in one
    thread, so the in-tile scan is a sequential loop in registers with no shuffles.
    ``stages``: tiles in flight per program (Triton software-pipelines the loads as
    asynchronous copies ``stages - 1`` iterations ahead); ``warm_stages`` the same for the
    warm-up loops below, which hold no outputs and go deeper (6 against 4: B=1 T=65536 EMA
    forward 0.167 against 0.168 ms, backward 0.182 against 0.186; 8 was slower; v20).
    ``min_programs``: below this many (batch x channel-block) programs the time axis is
    cut into segments (two passes, one extra read of the input) to fill the GPU;
    0 means: split below ``SPLIT_BELOW_PER_SM`` warps per SM, into enough segments for
    ``WARPS_PER_SM`` (``_warps``). ``split`` forces segments on (True) or off (False).
    ``warmup`` (the EMA kernels and ``linear_scan``'s forward): how segments get their incoming
    state. True: in one pass, each scanning the steps before it from zero for as long as a
    timescale remembers anything at float32 resolution (``warm_steps``; LIN_WARM_STEPS for
    ``linear_scan``, whose tiles that still remember are then rescanned exactly); False: two
    passes, the second combining the first's exact end states; None: warm-ups wherever
    segments of WARM_SEG_RATIO warm-ups each still make at least one warp per SM.
    """

    ct: int = 16
    block: int = 64
    num_warps: int = 1
    vec: int = 2
    stages: int = 4
    min_programs: int = 0
    split: bool | None = None
    warmup: bool | None = None
    warm_stages: int = 6

    def __post_init__(self):
        for name in ("stages", "warm_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"TileConfig.{name}={getattr(self, name)} must be at least 1")
        if self.block % (32 * self.vec * self.num_warps):
            # a warp's 32 lanes must lie along channels, so that a tile's CT rows stay in one thread
            raise ValueError(f"TileConfig.block={self.block} must be a multiple of 32 * vec * num_warps "
                             f"= {32 * self.vec * self.num_warps}")


# Each kernel's defaults, widest first; ``_choose`` takes the first that fills the GPU in one pass,
# or the narrowest if none does (EMA segments that warm up, 64 channels: B=1 T=65536 forward 0.169
# against 0.177 ms at 128, backward 0.186 against 0.193; notes/kernels.md, v20).
# 128 channels a warp (8-byte accesses, 256-byte rows) beat 64 wherever enough programs run
# (B=64 T=512 EMA forward 0.081 against 0.087 ms); at B=16 D=768 they leave SMs idle, and 64
# channels a warp run. The forward puts two such warps side by side in a program, so that one program
# reads and writes whole 256-byte rows (B=4 T=8192 0.0845 against 0.0882 ms, B=1 T=65536 0.1577
# against 0.1622, B=16 T=2048 0.0777 against 0.0783; notes/kernels.md, v26). Depths from the H100
# sweeps of notes/kernels.md, v10 and v26.
# linear_scan keeps 64: its 128-wide, pipelined, segmented backward got a broadcast decay
# wrong on the H100 (F=40; right unpipelined, in one pass and in Triton's interpreter; v10).
EMA_FWD = (TileConfig(ct=16, block=128, vec=4, stages=4), TileConfig(ct=32, block=128, num_warps=2, vec=2, stages=4))
EMA_BWD = (TileConfig(ct=16, block=128, vec=4, stages=3), TileConfig(ct=16, block=64, vec=2, stages=4))
LIN_FWD = (TileConfig(ct=32, block=64, vec=2, stages=3),)
LIN_BWD = (TileConfig(ct=16, block=64, vec=2, stages=3),)
# Time is cut into segments only when fewer than SPLIT_BELOW_PER_SM warps per SM would run (one-warp
# programs, or a program's warps counted apart), and then into enough for WARPS_PER_SM (H100,
# pipelined loads: at 1.45 per SM one pass took 0.091 ms against 0.113 split; at B=4 T=8192, 8 per
# SM beat 2 and 24, 0.108 against 0.120 and 0.114 ms; notes/kernels.md, v7 and v8).
SPLIT_BELOW_PER_SM = 1
WARPS_PER_SM = 8
# Segments that warm up (EMA): each is at least WARM_SEG_RATIO times its warm-up (the warm-up
# re-reads 1 / WARM_SEG_RATIO of the input) and there are enough for WARM_WARPS_PER_SM; where
# that leaves fewer than one warp per SM, two passes run instead. A timescale's warm-up is the
# steps after which the state it starts from weighs under 2**-WARM_BITS (float32 keeps 24 bits).
# H100, B=1 T=65536 and B=4 T=8192: 2 per SM and twice the warm-up beat 1, 3, 4 and 6 per SM and
# once or three times it, forward and backward (notes/kernels.md, v20).
WARM_SEG_RATIO = 2
WARM_WARPS_PER_SM = 2
WARM_BITS = 24
# linear_scan's decays are data: its segments warm up over this many steps, and a tile where some
# channel's decays there multiply to more than 2**-24 is rescanned from its exact incoming state
# (decays under 0.878 on average forget within it: 0.878**128 = 2**-24)
LIN_WARM_STEPS = 128
# The EMA forward's traces are 3/4 of its bytes and are not read back by it: their stores are
# marked evict_first, so that they leave L2 before the input does (notes/kernels.md, v27)
EMA_OUT_POLICY = "evict_first"

_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    """SMs of ``device``; an H100's 132 off CUDA (Triton's interpreter runs the kernels on the CPU)."""
    if device.type != "cuda":
        return 132
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _choose(cfg: TileConfig | None, defaults: tuple[TileConfig, ...], B: int, F: int,
            device: torch.device) -> TileConfig:
    """``cfg`` if given; else the widest default whose one-pass launch has at least
    SPLIT_BELOW_PER_SM warps per SM, or failing all, the narrowest (which cuts time into
    segments, and gets the most warps out of each)."""
    if cfg is not None:
        return cfg
    sms = _sm_count(device)
    for c in defaults:
        if B * triton.cdiv(F, c.block) * c.num_warps >= SPLIT_BELOW_PER_SM * sms:
            return c
    return defaults[-1]


def _warps(cfg: TileConfig, programs: int, per_sm: int, sms: int) -> tuple[int, int]:
    """(warps a launch of ``programs`` programs runs, warps it should run): a program of
    ``cfg.num_warps`` warps counts that many; ``cfg.min_programs``, if set, counts programs."""
    return programs * cfg.num_warps, cfg.min_programs * cfg.num_warps or per_sm * sms


def _segments(cfg: TileConfig, programs: int, T: int, device: torch.device) -> tuple[int, int]:
    """(NSEG, SEGLEN) for ``programs`` programs of ``cfg.num_warps`` warps: one segment unless too few
    warps would run, then enough to fill the GPU."""
    if cfg.split is False or T <= 4 * cfg.ct:
        return 1, T
    sms = _sm_count(device)
    warps, want = _warps(cfg, programs, WARPS_PER_SM, sms)
    _, threshold = _warps(cfg, programs, SPLIT_BELOW_PER_SM, sms)
    if cfg.split is None and warps >= threshold:
        return 1, T
    nseg = max(2, min(-(-want // max(warps, 1)), T // (4 * cfg.ct)))
    seglen = -(-(-(-T // nseg)) // cfg.ct) * cfg.ct  # a multiple of CT
    return -(-T // seglen), seglen


def warm_steps(alphas, ct: int = 1) -> list[int] | None:
    """Steps W_k after which timescale k forgets: |1 - alpha_k| ** W_k <= 2**-WARM_BITS, rounded up
    to a multiple of ``ct``; None if some |1 - alpha_k| >= 1 (a state that never fades).

    A segment scanned from zero W_k steps early then differs from the exact scan by at most
    2**-WARM_BITS times the state it dropped (the state W_k steps back), an absolute error at
    float32's resolution of that state, decaying from there. Relative to a much smaller state
    (after inputs that fell by orders of magnitude) it is larger than the sequential scan's own
    rounding; ``TileConfig(warmup=False)`` keeps the exact two passes. At the default alphas
    (0.5, 0.1, 0.02): 24, 158 and 824 steps.
    """
    out = []
    for a in alphas:
        d = abs(1.0 - float(a))
        if not d < 1.0:  # also NaN
            return None
        w = 0 if d == 0.0 else math.ceil(WARM_BITS * math.log(2.0) / -math.log(d))
        out.append(-(-w // ct) * ct)
    return out


def _warm_plan(cfg: TileConfig, programs: int, T: int, warm: int, device: torch.device) -> tuple[int, int] | None:
    """(NSEG, SEGLEN) for one pass of segments that each warm up over ``warm`` steps; None where that
    gives one segment, or (unless ``cfg.warmup`` forces it) under one warp per SM: two passes then."""
    sms = _sm_count(device)
    warps, want = _warps(cfg, programs, WARM_WARPS_PER_SM, sms)
    seglen = max(-(-T // max(1, -(-want // max(warps, 1)))), WARM_SEG_RATIO * warm, cfg.ct)
    seglen = -(-seglen // cfg.ct) * cfg.ct
    nseg = -(-T // seglen)
    if nseg == 1 or (nseg * warps < sms and not cfg.warmup):
        return None
    return nseg, seglen


def _ema_plan(cfg: TileConfig, programs: int, T: int, alphas: tuple[float, ...], device: torch.device):
    """(NSEG, SEGLEN, per-timescale warm-up steps or None) for an EMA launch of ``programs`` programs."""
    nseg, seglen = _segments(cfg, programs, T, device)
    if nseg == 1 or cfg.warmup is False:
        return nseg, seglen, None
    warm = warm_steps(alphas, cfg.ct)
    plan = None if warm is None else _warm_plan(cfg, programs, T, max(warm), device)
    if plan is None:
        return nseg, seglen, None
    return plan[0], plan[1], warm


def _host_alphas(alphas) -> tuple[float, ...]:
    # a CUDA tensor's values cost a device synchronization: pass floats where it matters
    return tuple(float(a) for a in (alphas.tolist() if torch.is_tensor(alphas) else alphas))


@functools.lru_cache(maxsize=64)
def _coefs(alphas: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1 - alpha in float64, 1 - alpha and alpha in float32) on ``device``, made once per (alphas, device):
    computed on the device for each call, these were three small kernels ahead of every scan."""
    dec = [1.0 - a for a in alphas]
    return tuple(torch.tensor(v, dtype=dt, device=device)
                 for v, dt in ((dec, torch.float64), (dec, torch.float32), (alphas, torch.float32)))


# ---------------------------------------------------------------------------- forward / backward launchers


GROUP = 4  # timescales one launch scans (one x read per group)


def ema_traces_fwd(
    x: torch.Tensor,
    alphas,
    h0: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    cfg: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA traces, no autograd: x (B,T,D) -> (h (B,T,S,D) in ``out_dtype`` (x's), h_T (B,S,D) float32).

    ``alphas``: S floats, or a tensor (whose values are read back: a CUDA one costs a synchronization).
    """
    x = x.contiguous()
    B, T, D = x.shape
    cfg = _choose(cfg, EMA_FWD, B, D, x.device)
    alphas = _host_alphas(alphas)
    dec64, dec, alp = _coefs(alphas, x.device)
    S = len(alphas)
    out = torch.empty(B, T, S, D, dtype=out_dtype or x.dtype, device=x.device)
    h0f = None if h0 is None else h0.float().contiguous()
    if T == 0 or B * D == 0:
        hT = torch.zeros(B, S, D, device=x.device) if h0f is None else h0f.clone()
        return out, hT
    nd = triton.cdiv(D, cfg.block)
    nseg, seglen, warm = _ema_plan(cfg, B * nd, T, alphas, x.device)
    grid = (nd, nseg, B)
    hend = torch.empty(B, nseg, S, D, dtype=torch.float32, device=x.device)
    two_pass = nseg > 1 and warm is None
    ends = torch.empty_like(hend) if two_pass else hend
    for s0 in range(0, S, GROUP):
        kw = dict(NS=min(GROUP, S - s0), CT=cfg.ct, BD=cfg.block, VEC=cfg.vec, STAGES=cfg.stages,
                  num_warps=cfg.num_warps, EVEN_D=D % cfg.block == 0, WSTAGES=cfg.warm_stages,
                  OUT_POLICY=EMA_OUT_POLICY)
        # x is shared: one warm-up long enough for the group's slowest timescale
        warmlen = 0 if warm is None else max(warm[s0:s0 + GROUP])
        args = (dec[s0:], dec64[s0:], alp[s0:], T, D, S * D, seglen, nseg, warmlen)
        if two_pass:  # pass 1: each segment's end state from zero
            _ema_fwd_kernel[grid](x, out, x, ends[:, :, s0:], x, *args, HAS_HIN=False, STORE_OUT=False,
                                  COMBINE=False, WARM=False, **kw)
        # the scan; in two passes each segment first combines the end states before it (pass 2)
        _ema_fwd_kernel[grid](x, out[:, :, s0:], x if h0f is None else h0f[:, s0:], hend[:, :, s0:],
                              ends[:, :, s0:], *args, HAS_HIN=h0f is not None, STORE_OUT=True, COMBINE=two_pass,
                              WARM=warm is not None, **kw)
    return out, hend[:, -1]


def ema_traces_bwd(
    gh: torch.Tensor,
    alphas,
    g_final: torch.Tensor | None = None,
    x_dtype: torch.dtype = torch.float32,
    cfg: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``ema_traces_fwd``: gh (B,T,S,D) [, g_final (B,S,D)] -> (dx (B,T,D), g_0 (B,S,D) float32).

    ``g_0`` is dL/dh_0 total (the backward state at t = 0); dL/dh0 = (1 - alpha) g_0.
    ``alphas`` as in ``ema_traces_fwd``.
    """
    gh = gh.contiguous()
    B, T, S, D = gh.shape
    cfg = _choose(cfg, EMA_BWD, B, D, gh.device)
    alphas = _host_alphas(alphas)
    dec64, dec, alp = _coefs(alphas, gh.device)
    gx = torch.empty(B, T, D, dtype=x_dtype, device=gh.device)
    gf = None if g_final is None else g_final.float().contiguous()
    if T == 0 or B * D == 0:
        return gx, torch.zeros(B, S, D, device=gh.device) if gf is None else gf.clone()
    nd = triton.cdiv(D, cfg.block)
    nseg, seglen, warm = _ema_plan(cfg, B * nd, T, alphas, gh.device)
    grid = (nd, nseg, B)
    gstart = torch.empty(B, nseg, S, D, dtype=torch.float32, device=gh.device)
    two_pass = nseg > 1 and warm is None
    starts = torch.empty_like(gstart) if two_pass else gstart
    for s0 in range(0, S, GROUP):
        kw = dict(NS=min(GROUP, S - s0), CT=cfg.ct, BD=cfg.block, VEC=cfg.vec, STAGES=cfg.stages,
                  num_warps=cfg.num_warps, EVEN_D=D % cfg.block == 0, WSTAGES=cfg.warm_stages)
        # each timescale's gradient is its own tensor: each warms up over its own steps
        w = [0] * GROUP if warm is None else (warm[s0:s0 + GROUP] + [0] * GROUP)[:GROUP]
        args = (dec[s0:], dec64[s0:], alp[s0:], T, D, S * D, seglen, nseg, *w)
        if two_pass:  # pass 1: each segment's start gradient from zero
            _ema_bwd_kernel[grid](gh[:, :, s0:], gx, gh, starts[:, :, s0:], gh, *args, HAS_GIN=False,
                                  STORE_OUT=False, ACCUM=False, COMBINE=False, WARM=False, **kw)
        _ema_bwd_kernel[grid](gh[:, :, s0:], gx, gh if gf is None else gf[:, s0:], gstart[:, :, s0:],
                              starts[:, :, s0:], *args, HAS_GIN=gf is not None, STORE_OUT=True, ACCUM=s0 > 0,
                              COMBINE=two_pass, WARM=warm is not None, **kw)
    return gx, gstart[:, 0]


def _as_btf(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """View of ``t`` broadcast to ``shape`` (B, T, *F) and flattened to (B, T, F); copies only if it must."""
    B, T = shape[0], shape[1]
    F = math.prod(shape[2:])
    while t.dim() < len(shape):
        t = t.unsqueeze(0)
    return t.expand(shape).reshape(B, T, F)


def linear_scan_fwd(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    cfg: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = a_t h_{t-1} + b_t``, no autograd: -> (h (B,T,*F) in ``out_dtype``, h_T (B,*F) float32)."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    B, T, feat = shape[0], shape[1], tuple(shape[2:])
    F = math.prod(feat)
    cfg = _choose(cfg, LIN_FWD, B, F, b.device)
    a3, b3 = _as_btf(a, shape), _as_btf(b, shape)
    out = torch.empty(shape, dtype=out_dtype or torch.promote_types(a.dtype, b.dtype), device=b.device)
    h0f = None if h0 is None else h0.float().reshape(B, F).contiguous()
    if T == 0 or B * F == 0:
        hT = torch.zeros(B, F, device=b.device) if h0f is None else h0f.clone()
        return out, hT.view((B,) + feat)
    nf = triton.cdiv(F, cfg.block)
    nseg, seglen = _segments(cfg, B * nf, T, b.device)
    plan = None if nseg == 1 or cfg.warmup is False else _warm_plan(cfg, B * nf, T, LIN_WARM_STEPS, b.device)
    if plan is not None:
        nseg, seglen = plan
    strides = (*a3.stride(), *b3.stride())
    kw = dict(CT=cfg.ct, BF=cfg.block, VEC=cfg.vec, STAGES=cfg.stages, num_warps=cfg.num_warps,
              EVEN_F=F % cfg.block == 0, WSTAGES=cfg.warm_stages)
    grid = (nf, nseg, B)
    hin = a3 if h0f is None else h0f
    hend = torch.empty(B, nseg, F, dtype=torch.float32, device=b.device)
    ends = prods = hend
    flags = torch.empty(B, nseg, nf, dtype=torch.int32, device=b.device) if plan is not None else hend
    if nseg > 1:
        ends, prods = torch.empty_like(hend), torch.empty_like(hend)
    if plan is not None:  # one pass of warmed-up segments, then exact rescans of the tiles they left marked
        _lin_fwd_kernel[grid](a3, b3, out, hin, hend, hend, ends, prods, flags, T, F, seglen, nseg, LIN_WARM_STEPS,
                              *strides, HAS_HIN=h0f is not None, STORE_OUT=True, STORE_AEND=False, COMBINE=False,
                              WARM=True, FIXUP=False, **kw)
        _lin_fwd_kernel[grid](a3, b3, out, hin, hend, hend, ends, prods, flags, T, F, seglen, nseg, 0, *strides,
                              HAS_HIN=h0f is not None, STORE_OUT=True, STORE_AEND=False, COMBINE=True, WARM=False,
                              FIXUP=True, **kw)
        return out, hend[:, -1].view((B,) + feat)
    if nseg > 1:  # pass 1: each segment's end state from zero and its decay product
        _lin_fwd_kernel[grid](a3, b3, out, a3, ends, prods, a3, a3, a3, T, F, seglen, nseg, 0, *strides,
                              HAS_HIN=False, STORE_OUT=False, STORE_AEND=True, COMBINE=False, WARM=False, FIXUP=False,
                              **kw)
    _lin_fwd_kernel[grid](a3, b3, out, hin, hend, hend, ends, prods, a3, T, F, seglen, nseg, 0, *strides,
                          HAS_HIN=h0f is not None, STORE_OUT=True, STORE_AEND=False, COMBINE=nseg > 1, WARM=False,
                          FIXUP=False, **kw)
    return out, hend[:, -1].view((B,) + feat)


def linear_scan_bwd(
    a: torch.Tensor,
    gh: torch.Tensor,
    h: torch.Tensor,
    h0: torch.Tensor | None = None,
    g_final: torch.Tensor | None = None,
    ga_dtype: torch.dtype = torch.float32,
    gb_dtype: torch.dtype = torch.float32,
    cfg: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``linear_scan_fwd`` given its output h: -> (da (B,T,*F), db (B,T,*F), g_0 (B,*F) float32).

    da and db are full-size (sum them to a broadcast input's shape); dL/dh0 = a_0 g_0.
    """
    shape = h.shape
    B, T, feat = shape[0], shape[1], tuple(shape[2:])
    F = math.prod(feat)
    cfg = _choose(cfg, LIN_BWD, B, F, h.device)
    a3 = _as_btf(a, shape)
    gh3 = gh.expand(shape).reshape(B, T, F).contiguous()
    h3 = h.reshape(B, T, F).contiguous()
    ga = torch.empty(shape, dtype=ga_dtype, device=h.device)
    gb = torch.empty(shape, dtype=gb_dtype, device=h.device)
    gf = None if g_final is None else g_final.float().reshape(B, F).contiguous()
    h0f = None if h0 is None else h0.float().reshape(B, F).contiguous()
    if T == 0 or B * F == 0:
        g0 = torch.zeros(B, F, device=h.device) if gf is None else gf.clone()
        return ga, gb, g0.view((B,) + feat)
    nf = triton.cdiv(F, cfg.block)
    nseg, seglen = _segments(cfg, B * nf, T, h.device)
    kw = dict(CT=cfg.ct, BF=cfg.block, VEC=cfg.vec, STAGES=cfg.stages, num_warps=cfg.num_warps,
              EVEN_F=F % cfg.block == 0)
    h0_arg = h0f if h0f is not None else h3
    gstart = torch.empty(B, nseg, F, dtype=torch.float32, device=h.device)
    starts = prods = gstart
    if nseg > 1:  # pass 1: each segment's start gradient from zero and its decay product
        starts, prods = torch.empty_like(gstart), torch.empty_like(gstart)
        _lin_bwd_kernel[(nf, nseg, B)](a3, gh3, h3, h0_arg, ga, gb, gh3, starts, prods, gh3, gh3, T, F, seglen,
                                       nseg, *a3.stride(), HAS_GIN=False, HAS_H0=h0f is not None,
                                       STORE_OUT=False, STORE_AEND=True, COMBINE=False, **kw)
    _lin_bwd_kernel[(nf, nseg, B)](a3, gh3, h3, h0_arg, ga, gb, gh3 if gf is None else gf, gstart, gstart, starts,
                                   prods, T, F, seglen, nseg, *a3.stride(), HAS_GIN=gf is not None,
                                   HAS_H0=h0f is not None, STORE_OUT=True, STORE_AEND=False, COMBINE=nseg > 1, **kw)
    return ga, gb, gstart[:, 0].view((B,) + feat)


# ---------------------------------------------------------------------------- autograd


class _EmaTracesTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alphas, h0):
        alphas = _host_alphas(alphas)
        out, hT = ema_traces_fwd(x, alphas, h0)
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
        gx, g0 = ema_traces_bwd(gout, alphas, ghT, ctx.x_dtype)
        gh0 = None
        if ctx.has_h0 and ctx.needs_input_grad[2]:
            gh0 = (_coefs(alphas, g0.device)[1].view(1, S, 1) * g0).to(ctx.h0_dtype)
        return (gx if ctx.needs_input_grad[0] else None), None, gh0


class _LinearScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, out_dtype):
        h, hT = linear_scan_fwd(a, b, h0, out_dtype)
        ctx.save_for_backward(a, h0, h)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
        ctx.set_materialize_grads(False)
        return h, hT

    @staticmethod
    def backward(ctx, gout, ghT):
        a, h0, h = ctx.saved_tensors
        if gout is None:
            gout = torch.zeros_like(h)
        full = tuple(h.shape)
        ga_dtype = ctx.a_dtype if tuple(ctx.a_shape) == full else torch.float32
        gb_dtype = ctx.b_dtype if tuple(ctx.b_shape) == full else torch.float32
        ga, gb, g0 = linear_scan_bwd(a, gout, h, h0, ghT, ga_dtype, gb_dtype)
        ga = ga.sum_to_size(ctx.a_shape).to(ctx.a_dtype) if ctx.needs_input_grad[0] else None
        gb = gb.sum_to_size(ctx.b_shape).to(ctx.b_dtype) if ctx.needs_input_grad[1] else None
        gh0 = None
        if h0 is not None and ctx.needs_input_grad[2]:
            a0 = _as_btf(a, h.shape)[:, 0].float().view(g0.shape)
            gh0 = (a0 * g0).to(h0.dtype)
        return ga, gb, gh0, None


def fused_ema_traces(x, alphas, h0=None):
    """Differentiable EMA traces: (h (B,T,S,D) in x's dtype, h_T (B,S,D) float32); grads to x and h0.
    ``alphas``: S floats (a tensor is read back to the host once per call)."""
    return _EmaTracesTriton.apply(x, alphas, h0)


def fused_linear_scan(a, b, h0=None, out_dtype=None):
    """Differentiable ``h_t = a_t h_{t-1} + b_t``: (h in ``out_dtype``, h_T float32); grads to a, b and h0."""
    a_full = a
    while a_full.dim() < b.dim():
        a_full = a_full.unsqueeze(0)
    return _LinearScanTriton.apply(a_full, b, h0, out_dtype or torch.promote_types(a.dtype, b.dtype))


# ---------------------------------------------------------------------------- registration


def _legacy_linear_scan(a, b, h0):
    # the forward-only ScanBackend contract (float32 h) that scan.py's own autograd
    # Functions use; the fused ops below are what the public API calls
    return linear_scan_fwd(a, b, h0, torch.float32)[0]


def _legacy_ema_traces(x, alphas, h0):
    return ema_traces_fwd(x, alphas, h0, torch.float32)[0]


register_backend(
    ScanBackend(
        "triton",
        linear_scan=_legacy_linear_scan,
        ema_traces=_legacy_ema_traces,
        needs_cuda=True,
        fused_linear_scan=fused_linear_scan,
        fused_ema_traces=fused_ema_traces,
    )
)
