"""The selective scan ``h_t = a_t h_{t-1} + b_t`` in Triton: kernels, launchers and autograd.

Symbols as in ``ops/naive.py`` (B batch, T time, F the flattened feature dims, a decay,
b input), plus CT time steps in one register tile, BF channels in one tile, VEC adjacent
channels one thread owns, g = dL/dh_t, and NSEG segments along T.

The tile loop, layout and masks are those of ``ema.py``: one program owns BF channels of
one sequence, walks time in pipelined (CT, BF) tiles scanned in registers, and reads a, b
and writes h once each (6 bytes per token-channel in bf16). a and b may be strided views
(a decay broadcast over batch or time is not copied).

**Segments.** Here the decays are data, so no warm-up length is known in advance. The
forward's segments warm up over ``plan.LIN_WARM_STEPS`` steps anyway (fewer where the output has
fewer bits, ``plan.lin_warm_steps``: 96 for bf16), and each tile records whether some channel's
decays over the warm-up multiplied to more than 2**-bits (2**-24; 2**-16 for bf16, ``plan.warm_bits``:
the dropped state still counts). A second launch (``FIXUP``) rescans only those tiles, from their exact
incoming state; every other program of it returns at once. So the result is right whatever
the decays, and fast where they forget (H100, B=1 T=65536: 0.190 -> 0.127 ms). A segment's
warm-up and its own steps are one pipelined loop over consecutive tiles, the loads ahead of the branch
that scans a warm-up tile or scans and stores an own one (``_lin_fwd_warm_span``): as two loops, each
filled and drained a pipeline of its own, and the own loop took 383 instructions a 16-row tile against
322 (sm_90 SASS; H100, the scan grid's segmented shapes 3-7% nearer the floor;
notes/kernels.md, "warm-up and own steps in one loop"). The backward runs two passes, as described
in ``ema.py``.

**Backward**: ``g_t = a_{t+1} g_{t+1} + dy_t``, ``db_t = g_t``, ``da_t = g_t h_{t-1}``, fused
into one kernel; the gradient of a returned final state enters as the carry at T.

**Gates inside** (``gated_scan_fwd`` / ``_bwd``, constexpr GATED). The selective mixer's decays and
inputs are sigmoids of logits: the same kernels then load the logits and x, compute a and b in
float32 in the tile, and the backward writes the logits' gradients (and x's, and the biases' as
per-program sums) directly, so no float32 (B, T, S, D) decays and inputs pass through memory. The
backward reads h_{t-1} from the returned h (x's dtype), and scans k_t = a_t g_t, whose decay is the
row's own, so that one set of gates a row serves the scan and the gradients (``_lin_bwd_tile``).
Each sigmoid is one ex2 and one rcp (``common.sigmoid2``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from emaprobe.ops.triton import opaque
from emaprobe.ops.triton.cache import cached, scratch
from emaprobe.ops.triton.common import (
    NEG_LOG2E,
    channel_mask,
    combine,
    last_row,
    launch,
    make_launch,
    out_warm_bits,
    segment_length,
    sigmoid2,
    sigmoid2_pair,
    sm_count,
    tile_plan,
)
from emaprobe.ops.triton.plan import (
    GATED_BWD,
    GATED_FWD,
    LIN_BWD,
    LIN_FWD,
    LIN_WARM_WARPS_PER_SM,
    WARM_BITS,
    TileConfig,
    choose,
    lin_warm_steps,
    segments,
    warm_plan,
)

# ---------------------------------------------------------------------------- kernels


@triton.jit
def _gates(la, lg, xv, ba, bg):
    # the selective mixer's gates (``gated_scan``): decay a = sigmoid(la + bias_a) and input
    # u = sigmoid(-(la + bias_a)) sigmoid(lg + bias_g) x, in float32; also returns sigmoid(-(la + bias_a))
    # and the input gate sigmoid(lg + bias_g), which the backward needs. ``ba``, ``bg``: the biases
    # times NEG_LOG2E (``_gate_args``). Two FFMA, two ex2 and two rcp an element
    a, s = sigmoid2_pair(la * NEG_LOG2E + ba[None, :])
    i = sigmoid2(lg * NEG_LOG2E + bg[None, :])
    return a, s * i * xv, s, i


@triton.jit
def _lin_fwd_load(a_ptr, u_ptr, x_ptr, a_off, u_off, x_off, m, ba, bg, GATED: tl.constexpr):
    # a (CT, BF) tile's decays and inputs, float32; masked rows load a = 1, u = 0 (they carry the state
    # unchanged). GATED: a_ptr and u_ptr hold the decay and input-gate logits, and a, u come from ``_gates``
    # with x
    if GATED:
        la = tl.load(a_ptr + a_off, mask=m, other=0.0).to(tl.float32)
        lg = tl.load(u_ptr + u_off, mask=m, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + x_off, mask=m, other=0.0).to(tl.float32)
        a, u, _, _ = _gates(la, lg, xv, ba, bg)
        a = tl.where(m, a, 1.0)
        u = tl.where(m, u, 0.0)
    else:
        a = tl.load(a_ptr + a_off, mask=m, other=1.0).to(tl.float32)
        u = tl.load(u_ptr + u_off, mask=m, other=0.0).to(tl.float32)
    return a, u


@triton.jit
def _lin_fwd_scan(a, u, o_ptr, o_off, m, h, aprod, rows, CT: tl.constexpr, STORE_OUT: tl.constexpr,
                  STORE_AEND: tl.constexpr):
    # a loaded tile: scan from the carry h, store; returns the new carry and the decays' product
    # the carry enters at row 0; a select, not u + 0 elsewhere (an addition the compiler keeps: -0 + 0 = +0)
    u = tl.where((rows == 0)[:, None], u + a * h[None, :], u)
    acum, hh = tl.associative_scan((a, u), 0, combine)
    if STORE_OUT:
        tl.store(o_ptr + o_off, hh.to(o_ptr.dtype.element_ty), mask=m)
    if STORE_AEND:
        aprod = aprod * last_row(acum, rows, CT - 1)
    return last_row(hh, rows, CT - 1), aprod


@triton.jit
def _lin_fwd_tile(a_ptr, u_ptr, o_ptr, x_ptr, a_off, u_off, o_off, x_off, m, h, aprod, ba, bg, rows,
                  CT: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr, GATED: tl.constexpr):
    # one (CT, BF) tile: load, scan, store
    a, u = _lin_fwd_load(a_ptr, u_ptr, x_ptr, a_off, u_off, x_off, m, ba, bg, GATED)
    return _lin_fwd_scan(a, u, o_ptr, o_off, m, h, aprod, rows, CT, STORE_OUT, STORE_AEND)


@triton.jit
def _lin_fwd_span(a_ptr, u_ptr, o_ptr, x_ptr, a_off, u_off, o_off, x_off, m, h, aprod, ba, bg, rows, n, s_at, s_ut,
                  s_xt, F, CT: tl.constexpr, BF: tl.constexpr, STAGES: tl.constexpr, STORE_OUT: tl.constexpr,
                  STORE_AEND: tl.constexpr, GATED: tl.constexpr):
    # n steps from a_ptr / u_ptr / o_ptr (/ x_ptr); full tiles unmasked, a partial last one masked (padded rows
    # load a = 1, u = 0 and carry the state unchanged). Returns the state and the decays' product.
    lo, hi, last, tail = tile_plan(n, CT, False, False)
    for i0 in tl.range(lo, hi, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        h, aprod = _lin_fwd_tile(a_ptr + i * s_at, u_ptr + i * s_ut, o_ptr + i * F, x_ptr + i * s_xt, a_off, u_off,
                                 o_off, x_off, m, h, aprod, ba, bg, rows, CT, STORE_OUT, STORE_AEND, GATED)
    if tail:
        i = tl.cast(last, tl.int64)
        h, aprod = _lin_fwd_tile(a_ptr + i * s_at, u_ptr + i * s_ut, o_ptr + i * F, x_ptr + i * s_xt, a_off, u_off,
                                 o_off, x_off, m & (rows < n - last)[:, None], h, aprod, ba, bg, rows, CT, STORE_OUT,
                                 STORE_AEND, GATED)
    return h, aprod


@triton.jit
def _lin_fwd_warm_span(a_ptr, u_ptr, o_ptr, x_ptr, a_off, u_off, o_off, x_off, m, h, ba, bg, rows, nw, n, s_at,
                       s_ut, s_xt, F, CT: tl.constexpr, BF: tl.constexpr, STAGES: tl.constexpr,
                       STORE_OUT: tl.constexpr, GATED: tl.constexpr):
    # a warmed-up segment: nw steps (a multiple of CT) just before the pointers, unstored, from h, then its n
    # own steps, in one pipelined loop (two loops each filled and drained a pipeline of their own).
    # Returns the end state, the warm-up's decay product, the state it ended in, and the own decays' product
    one = tl.full((BF,), 1.0, tl.float32)
    pw = one
    aprod = one
    h_in = h
    lo, hi, last, tail = tile_plan(n, CT, False, False)
    for i0 in tl.range(lo - nw, hi, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        # the loads outside the branches, where Triton's pipeliner takes them
        a, u = _lin_fwd_load(a_ptr + i * s_at, u_ptr + i * s_ut, x_ptr + i * s_xt, a_off, u_off, x_off, m, ba, bg,
                             GATED)
        if i0 < 0:
            h, pw = _lin_fwd_scan(a, u, o_ptr, o_off, m, h, pw, rows, CT, False, True)
            h_in = h
        else:
            h, aprod = _lin_fwd_scan(a, u, o_ptr + i * F, o_off, m, h, aprod, rows, CT, STORE_OUT, True)
    if tail:
        i = tl.cast(last, tl.int64)
        h, aprod = _lin_fwd_tile(a_ptr + i * s_at, u_ptr + i * s_ut, o_ptr + i * F, x_ptr + i * s_xt, a_off, u_off,
                                 o_off, x_off, m & (rows < n - last)[:, None], h, aprod, ba, bg, rows, CT, STORE_OUT,
                                 True, GATED)
    return h, pw, h_in, aprod


@triton.jit
def _gate_args(X, BA, BG, b, offs_f, mask_f, rows, s_xb, s_xt, DX, GATED: tl.constexpr, XV: tl.constexpr,
               VEC: tl.constexpr):
    # GATED: x's offsets in a (CT, BF) tile (channel f reads x[..., f % DX]), the biases, x's row of batch b;
    # otherwise placeholders the tiles never read. XV (DX a multiple of VEC): x's offsets keep offs_f's runs of
    # VEC, and Triton is told so (in a compiled SPEN-130m step at B16 T1024 on one H200, the gated forwards
    # took 2.75 ms with the hint against 16.1 without, the backwards 5.80 against 18.0; notes/kernels.md)
    if GATED:
        xo = offs_f % DX
        if XV:
            xo = tl.max_contiguous(tl.multiple_of(xo, VEC), VEC)
        x_off = rows[:, None] * s_xt + xo[None, :]
        ba = tl.load(BA + offs_f, mask=mask_f, other=0.0) * NEG_LOG2E
        bg = tl.load(BG + offs_f, mask=mask_f, other=0.0) * NEG_LOG2E
    else:
        x_off = rows[:, None] * 0 + offs_f[None, :] * 0
        ba = tl.zeros(offs_f.shape, tl.float32)
        bg = ba
    return x_off, ba, bg, X + b * s_xb


@triton.jit
def _lin_fwd_kernel(
    A, U, OUT, HIN, HEND, AEND, ENDS, PRODS, FLAGS, X, BA, BG,
    T, F, SEGLEN, NSEG, WARMLEN, LOST, DX,
    s_ab, s_at, s_af, s_ub, s_ut, s_uf, s_xb, s_xt,
    CT: tl.constexpr, BF: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    HAS_HIN: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr, COMBINE: tl.constexpr,
    EVEN_F: tl.constexpr, WARM: tl.constexpr, FIXUP: tl.constexpr,
    STORE_STATE: tl.constexpr, GATED: tl.constexpr, XV: tl.constexpr,
):
    """h_t = a_t h_{t-1} + u_t over one segment; A, U strided (B,T,F) views, OUT (B,T,F) contiguous,
    HIN (B,F) the state at t = 0. COMBINE (pass 2 of segments): the segment starts from HIN
    carried over every earlier segment's (end state from zero, decay product), ENDS and PRODS.

    WARM (segments in one pass): the incoming state is scanned, unstored, from zero over the
    WARMLEN steps before the segment; where some channel's decays there multiply to more than
    LOST (2**-bits, ``plan.warm_bits``: the dropped state still counts), FLAGS (B,NSEG,programs along
    F) marks the tile. Every segment also leaves its (end state from zero, decay product) in ENDS
    and PRODS, so that FIXUP (COMBINE, only for marked tiles) can rescan those from their exact
    incoming state.
    STORE_STATE False: HEND is not stored (nobody asked for h_T; HEND is then any pointer).
    GATED (``gated_scan``): A and U hold the decay and input-gate logits, X (B,T,DX) the input with
    strides (s_xb, s_xt, 1), shared by the F / DX groups of channels, BA and BG (F,) float32 the
    biases; a and u come from ``_gates``. Otherwise X, BA and BG are any pointers.
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
        mask_f = channel_mask(offs_f, F, BF, EVEN_F)
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
        x_off, ba, bg, x_b = _gate_args(X, BA, BG, b, offs_f, mask_f, rows, s_xb, s_xt, DX, GATED, XV, VEC)
        a_seg = A + b * s_ab + t_start * s_at
        u_seg = U + b * s_ub + t_start * s_ut
        o_seg = OUT + (b * T + t_start) * F
        n_seg = segment_length(seg, SEGLEN, T)
        if WARM:  # the WARMLEN steps before the segment (a multiple of CT), then its own, in one loop
            w0 = tl.maximum(t_start - WARMLEN, 0)
            h = tl.where(w0 > 0, 0.0, h)
            h, pw, h_in, aprod = _lin_fwd_warm_span(a_seg, u_seg, o_seg, x_b + t_start * s_xt, a_off, u_off, o_off,
                                                    x_off, m, h, ba, bg, rows, t_start - w0, n_seg, s_at, s_ut, s_xt,
                                                    F, CT, BF, STAGES, STORE_OUT, GATED)
            lost = (w0 > 0) & (tl.abs(pw) > LOST) & mask_f
            tl.store(FLAGS + flag_off, tl.max(lost.to(tl.int32), axis=0))
        else:
            h_in = h
            h, aprod = _lin_fwd_span(a_seg, u_seg, o_seg, x_b + t_start * s_xt, a_off, u_off, o_off, x_off, m, h,
                                     one, ba, bg, rows, n_seg, s_at, s_ut, s_xt, F, CT, BF, STAGES, STORE_OUT,
                                     STORE_AEND, GATED)
        if STORE_STATE:
            tl.store(HEND + state_off, h, mask=mask_f)
        if STORE_AEND:
            tl.store(AEND + state_off, aprod, mask=mask_f)
        if WARM:  # this segment's end state from zero, for FIXUP's rescans
            tl.store(ENDS + state_off, h - aprod * h_in, mask=mask_f)
            tl.store(PRODS + state_off, aprod, mask=mask_f)


@triton.jit
def combine_excl(a1, b1, c1, d1, a2, b2, c2, d2):
    # ``combine`` on (a, b), and (c, d) the map before the last element: (c2, d2) after (a1, b1). An
    # element enters as (a, b, 1, -0.0), so a sequential scan's (c, d) at a row is the running map one row
    # back (register moves: x * 1 and x + -0.0 fold away), and d the exclusive scan where the carry is 0
    return a1 * a2, a2 * b1 + b2, c2 * a1, c2 * b1 + d2


@triton.jit
def _lin_bwd_tile(a_ptr, g_ptr, h_ptr, ga_ptr, gb_ptr, u_ptr, x_ptr, gx_ptr, a_off, c_off, d_off, u_off, x_off, m, ma,
                  mh, at_t0, h0, g, aprod, ba, bg, sa, sg, rows,
                  CT: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr, GATED: tl.constexpr):
    # one (CT, BF) tile backwards in time; ``ma`` masks a_{t+1} (absent at t = T - 1: coefficient 1),
    # ``mh`` masks h_{t-1} (absent at t = 0, where the row ``at_t0`` takes h0 instead).
    # GATED: the scan runs on k_t = a_t g_t = a_t (dy_t + k_{t+1}), whose decay is the row's own a_t, so
    # a_ptr holds the decay logits at t (not t + 1) and one set of gates serves the scan and the
    # gradients; g_t = dy_t + k_{t+1} is the exclusive scan (``combine_excl``). ``g`` is then the carry
    # k_{t+1} into the tile, and the tile returns k at its last row. It stores the logits' gradients
    # (row offsets d_off) and x's per-channel gradient, and adds the biases' gradients over its rows to
    # sa and sg
    u = tl.load(g_ptr + c_off, mask=m, other=0.0).to(tl.float32)
    if STORE_OUT:
        hp = tl.load(h_ptr + c_off, mask=mh, other=0.0).to(tl.float32)
        hp = tl.where(at_t0[:, None], h0[None, :], hp)
    if GATED:
        la = tl.load(a_ptr + a_off, mask=m, other=0.0).to(tl.float32)
        lg = tl.load(u_ptr + u_off, mask=m, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + x_off, mask=m, other=0.0).to(tl.float32)
        at, _, st, it = _gates(la, lg, xv, ba, bg)
        at = tl.where(m, at, 1.0)  # rows past the segment carry k unchanged (their dy is 0)
        u = tl.where((rows == 0)[:, None], u + g[None, :], u)  # the carry k_{t+1} joins dy at row 0
        one = tl.full(u.shape, 1.0, tl.float32)
        acum, kk, _, kx = tl.associative_scan((at, at * u, one, tl.full(u.shape, -0.0, tl.float32)), 0, combine_excl)
        if STORE_OUT:
            # a_t = sigmoid(la), u_t = s i x with s = sigmoid(-la), i = sigmoid(lg), g = dy + k_{t+1}:
            # dla = g a s (h_{t-1} - i x) = k s (h_{t-1} - i x), dx = g s i, dlg = dx (1 - i) x
            gg = u + kx
            dla = tl.where(m, kk * st * (hp - it * xv), 0.0)
            gx = gg * st * it
            dlg = tl.where(m, gx * (1.0 - it) * xv, 0.0)
            tl.store(ga_ptr + d_off, dla.to(ga_ptr.dtype.element_ty), mask=m)
            tl.store(gb_ptr + d_off, dlg.to(gb_ptr.dtype.element_ty), mask=m)
            tl.store(gx_ptr + c_off, gx.to(gx_ptr.dtype.element_ty), mask=m)
            sa += tl.sum(dla, axis=0)
            sg += tl.sum(dlg, axis=0)
        carry = last_row(kk, rows, CT - 1)
    else:
        a = tl.load(a_ptr + a_off, mask=ma, other=1.0).to(tl.float32)
        u = tl.where((rows == 0)[:, None], u + a * g[None, :], u)  # the carry enters at row 0
        acum, gg = tl.associative_scan((a, u), 0, combine)
        if STORE_OUT:
            tl.store(gb_ptr + c_off, gg.to(gb_ptr.dtype.element_ty), mask=m)
            tl.store(ga_ptr + c_off, (gg * hp).to(ga_ptr.dtype.element_ty), mask=m)
        carry = last_row(gg, rows, CT - 1)
    if STORE_AEND:
        aprod = aprod * last_row(acum, rows, CT - 1)
    return carry, aprod, sa, sg


@triton.jit
def _lin_bwd_kernel(
    A, GH, H, H0, GA, GB, GIN, GSTART, AEND, STARTS, PRODS, U, X, BA, BG, GX, PB,
    T, F, SEGLEN, NSEG, DX,
    s_ab, s_at, s_af, s_ub, s_ut, s_uf, s_xb, s_xt,
    CT: tl.constexpr, BF: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    HAS_GIN: tl.constexpr, HAS_H0: tl.constexpr, STORE_OUT: tl.constexpr, STORE_AEND: tl.constexpr,
    COMBINE: tl.constexpr, EVEN_F: tl.constexpr, STORE_STATE: tl.constexpr, GATED: tl.constexpr, XV: tl.constexpr,
):
    """Backwards: g_t = a_{t+1} g_{t+1} + gh_t; gb_t = g_t; ga_t = g_t h_{t-1}. GH, H, GA, GB (B,T,F)
    contiguous, GIN (B,F) the carry at T. COMBINE (pass 2 of segments): the carry into a segment
    is GIN carried back over every later segment's (start gradient from zero, decay product).
    STORE_STATE False: GSTART is not stored (no h0 wants its gradient).
    GATED (``gated_scan``): A and U are the logits, X, BA, BG as in the forward; GA and GB receive the
    logits' gradients in a (B,T,2,F) buffer (row stride 2F), GX (B,T,F) x's gradient per channel,
    and PB (B,NSEG,2,F) float32 each program's sums of the two logit gradients over its rows (the
    biases' gradients, summed by the caller); otherwise U, X, BA, BG, GX and PB are any pointers.
    The gated scan carries k_t = a_t g_t (``_lin_bwd_tile``): the segments' start values and
    products, and GSTART, are k's (GSTART then holds k_0 = a_0 g_0 = dL/dh0), and GIN enters as k_T."""
    pid_f = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CT)
    offs_f = tl.max_contiguous(tl.multiple_of(pid_f * BF + tl.arange(0, BF), VEC), VEC)
    mask_f = channel_mask(offs_f, F, BF, EVEN_F)
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
    seg_len = segment_length(seg, SEGLEN, T)
    t_last = (t_start + seg_len - 1).to(tl.int64)
    if GATED:  # the row stride of GA and GB
        s_dt = 2 * F
    else:
        s_dt = F
    if GATED:  # the decay logits at t (the scan runs on k_t = a_t g_t)
        a_ptr = A + b * s_ab + t_last * s_at
    else:  # a_{t+1}
        a_ptr = A + b * s_ab + (t_last + 1) * s_at
    g_ptr = GH + (b * T + t_last) * F
    h_ptr = H + (b * T + t_last - 1) * F  # h_{t-1}
    ga_ptr = GA + (b * T + t_last) * s_dt
    gb_ptr = GB + (b * T + t_last) * s_dt
    u_ptr = U + b * s_ub + t_last * s_ut
    gx_ptr = GX + (b * T + t_last) * F
    a_off = -rows[:, None] * s_at + offs_f[None, :] * s_af
    c_off = -rows[:, None] * F + offs_f[None, :]
    d_off = -rows[:, None] * s_dt + offs_f[None, :]
    u_off = -rows[:, None] * s_ut + offs_f[None, :] * s_uf
    x_off, ba, bg, x_ptr = _gate_args(X, BA, BG, b, offs_f, mask_f, -rows, s_xb, s_xt, DX, GATED, XV, VEC)
    x_ptr += t_last * s_xt
    sa = tl.zeros((BF,), tl.float32)
    sg = sa
    # masked tiles: the first of the last segment (holds t = T - 1), the last of the first (holds
    # t = 0) and a partial one; the rest run without row masks
    lo, hi, last, tail = tile_plan(seg_len, CT, t_last == T - 1, seg == 0)
    m = tl.broadcast_to(mask_f[None, :], (CT, BF))
    if t_last == T - 1:
        t = t_last - rows
        mv = m & (rows < seg_len)[:, None]
        g, aprod, sa, sg = _lin_bwd_tile(a_ptr, g_ptr, h_ptr, ga_ptr, gb_ptr, u_ptr, x_ptr, gx_ptr, a_off, c_off, d_off,
                                         u_off, x_off, mv, mv & (t < T - 1)[:, None], mv & (t > 0)[:, None], t == 0,
                                         h0, g, aprod, ba, bg, sa, sg, rows, CT, STORE_OUT, STORE_AEND, GATED)
    no_t0 = tl.zeros((CT,), tl.int1)
    for i0 in tl.range(lo, hi, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        g, aprod, sa, sg = _lin_bwd_tile(a_ptr - i * s_at, g_ptr - i * F, h_ptr - i * F, ga_ptr - i * s_dt,
                                         gb_ptr - i * s_dt, u_ptr - i * s_ut, x_ptr - i * s_xt, gx_ptr - i * F, a_off,
                                         c_off, d_off, u_off, x_off, m, m, m, no_t0, h0, g, aprod, ba, bg, sa, sg,
                                         rows, CT, STORE_OUT, STORE_AEND, GATED)
    if tail:
        i = tl.cast(last, tl.int64)
        t = t_last - last - rows
        mv = m & (rows < seg_len - last)[:, None]
        g, aprod, sa, sg = _lin_bwd_tile(a_ptr - i * s_at, g_ptr - i * F, h_ptr - i * F, ga_ptr - i * s_dt,
                                         gb_ptr - i * s_dt, u_ptr - i * s_ut, x_ptr - i * s_xt, gx_ptr - i * F, a_off,
                                         c_off, d_off, u_off, x_off, mv, mv & (t < T - 1)[:, None],
                                         mv & (t > 0)[:, None], t == 0, h0, g, aprod, ba, bg, sa, sg, rows, CT,
                                         STORE_OUT, STORE_AEND, GATED)
    if STORE_STATE:
        tl.store(GSTART + state_off, g, mask=mask_f)
    if STORE_AEND:
        tl.store(AEND + state_off, aprod, mask=mask_f)
    if GATED and STORE_OUT:
        pb = PB + ((b * NSEG + seg) * 2) * F + offs_f
        tl.store(pb, sa, mask=mask_f)
        tl.store(pb + F, sg, mask=mask_f)


# ---------------------------------------------------------------------------- launchers


def _as_btf(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """View of ``t`` broadcast to ``shape`` (B, T, *F) and flattened to (B, T, F); copies only if it must.
    A (B, T, F) tensor is itself (two views cost microseconds of host time a call)."""
    if len(shape) == 3 and t.shape == shape:
        return t
    B, T = shape[0], shape[1]
    F = math.prod(shape[2:])
    while t.dim() < len(shape):
        t = t.unsqueeze(0)
    # always both: reshape can rewrite the strides of size-1 dims, which the kernels receive
    return t.expand(shape).reshape(B, T, F)


class _Launch(NamedTuple):
    """One ``linear_scan`` launch plan: everything but the tensors of the call and their strides."""

    shape: torch.Size  # (B, T, *F)
    state_shape: tuple[int, ...]  # (B, *F): h_T / g_0
    grid: tuple[int, int, int] | None  # None: T = 0 or B * F = 0, nothing to launch
    nseg: int
    warm: bool  # (forward) segments that warm up, then the tiles they left marked rescanned
    flags_shape: tuple[int, ...]  # (B, NSEG, NF) int32: the warm-up's marks
    launches: tuple  # each launch (common.Launch; the call gives the tensors and their strides), in order
    scratch: dict  # cache.scratch's store: the tensors one call's launches pass between them


def _lin_fwd_launch(a_shape: torch.Size, b_shape: torch.Size, has_h0: bool, state: bool, sms: int,
                    cfg: TileConfig | None, dx: int = 0, bits: int = WARM_BITS) -> _Launch:
    # dx > 0: the gated form (``gated_scan_fwd``), whose input x has dx channels; ``bits``: what the
    # warm-ups keep (``plan.warm_bits`` of the output)
    shape = torch.broadcast_shapes(a_shape, b_shape)
    B, T = shape[0], shape[1]
    F = math.prod(shape[2:])
    state_shape = (B,) + tuple(shape[2:])
    if T == 0 or B * F == 0:
        return _Launch(shape, state_shape, None, 1, False, (), (), {})
    cfg = choose(cfg, GATED_FWD if dx else LIN_FWD, B, F, sms)
    nf = -(-F // cfg.block)
    nseg, seglen = segments(cfg, B * nf, T, sms)
    plan = None
    warm = lin_warm_steps(bits, cfg.ct)
    if nseg > 1 and cfg.warmup is not False:
        plan = warm_plan(cfg, B * nf, T, warm, sms, LIN_WARM_WARPS_PER_SM)
    if plan is not None:
        nseg, seglen = plan
    kw = dict(CT=cfg.ct, BF=cfg.block, VEC=cfg.vec, STAGES=cfg.stages, num_warps=cfg.num_warps,
              EVEN_F=F % cfg.block == 0, GATED=dx > 0, XV=dx % cfg.vec == 0)
    grid = (nf, nseg, B)
    dx = max(dx, 1)
    if plan is not None:  # one pass of warmed-up segments, then exact rescans of the tiles they left marked
        both = dict(kw, HAS_HIN=has_h0, STORE_OUT=True, STORE_AEND=False, STORE_STATE=state)
        launches = (make_launch(_lin_fwd_kernel, grid, dict(both, COMBINE=False, WARM=True, FIXUP=False),
                                (T, F, seglen, nseg, warm, 2.0 ** -bits, dx)),
                    make_launch(_lin_fwd_kernel, grid, dict(both, COMBINE=True, WARM=False, FIXUP=True),
                                (T, F, seglen, nseg, 0, 0.0, dx)))
    else:  # one pass; or pass 1 (each segment's end state from zero and its decay product), then the scan
        scan = dict(kw, HAS_HIN=has_h0, STORE_OUT=True, STORE_AEND=False, COMBINE=nseg > 1, WARM=False, FIXUP=False,
                    STORE_STATE=state)
        pass1 = dict(kw, HAS_HIN=False, STORE_OUT=False, STORE_AEND=True, COMBINE=False, WARM=False, FIXUP=False,
                     STORE_STATE=True)
        launches = tuple(make_launch(_lin_fwd_kernel, grid, c, (T, F, seglen, nseg, 0, 0.0, dx))
                         for c in ((pass1, scan) if nseg > 1 else (scan,)))
    return _Launch(shape, state_shape, grid, nseg, plan is not None, (B, nseg, nf), launches, {})


def linear_scan_fwd(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    cfg: TileConfig | None = None,
    state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``h_t = a_t h_{t-1} + b_t``, no autograd: -> (h (B,T,*F) in ``out_dtype``, h_T (B,*F) float32).

    ``state`` False: h_T is neither allocated nor stored, and None comes back in its place. The
    launch plan is made once per (a's shape, b's shape, h0 given or not, state or not, the device's
    SM count, cfg, the bits its warm-ups keep) (``cache.py``; it holds no tensor, so the device enters only
    by its SM count; the dtypes only by those bits, ``common.out_warm_bits`` of the output's)."""
    dev = b.device
    out_dtype = out_dtype or torch.promote_types(a.dtype, b.dtype)
    p = cached("lin_fwd", _lin_fwd_launch, a.shape, b.shape, h0 is not None, state, sm_count(dev), cfg, 0,
               out_warm_bits(out_dtype))
    a3, b3 = _as_btf(a, p.shape), _as_btf(b, p.shape)
    out = torch.empty(p.shape, dtype=out_dtype, device=dev)
    return _scan_fwd(p, a3, b3, out, h0, state, (a3, a3, a3), (0, 0))


def _gated_views(logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Size, torch.Tensor, torch.Tensor, torch.Tensor]:
    # (B, T, *F), the decay and input-gate logits as (B, T, F) views, and x with unit channel stride
    B, T = logits.shape[0], logits.shape[1]
    F = math.prod(logits.shape[3:])
    lg = logits.reshape(B, T, 2, F)
    return torch.Size((B, T, *logits.shape[3:])), lg[:, :, 0], lg[:, :, 1], x if x.stride(-1) == 1 else x.contiguous()


def _bias(t: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(-1).contiguous()


def gated_scan_fwd(
    logits: torch.Tensor,
    x: torch.Tensor,
    decay_bias: torch.Tensor,
    gate_bias: torch.Tensor,
    h0: torch.Tensor | None = None,
    cfg: TileConfig | None = None,
    state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``gated_scan``'s forward, no autograd: the gates computed inside the scan's tiles, in float32.

    logits (B, T, 2, *F): decay logits at [:, :, 0], input-gate logits at [:, :, 1]; x (B, T, D),
    shared by the prod(F) / D groups of channels (F = (S, D) in the selective mixer); biases (*F).
    -> (h (B, T, *F) in x's dtype, h_T (B, *F) float32 or None). Reads the logits and x and writes h
    once each: no float32 decays and inputs in memory."""
    dev = x.device
    shape, la, lg, x = _gated_views(logits, x)
    p = cached("gated_fwd", _lin_fwd_launch, shape, shape, h0 is not None, state, sm_count(dev), cfg, x.shape[-1],
               out_warm_bits(x.dtype))
    out = torch.empty(shape, dtype=x.dtype, device=dev)
    return _scan_fwd(p, la, lg, out, h0, state, (x, _bias(decay_bias), _bias(gate_bias)), x.stride()[:2])


def _segment_scratch(p: _Launch, B: int, F: int, dev: torch.device) -> tuple:
    # (B, NSEG, F) float32 twice (segment end states / start gradients, decay products), and the
    # forward warm-up's int32 marks or None
    pair = [torch.empty((B, p.nseg, F), dtype=torch.float32, device=dev) for _ in range(2)]
    return (*pair, torch.empty(p.flags_shape, dtype=torch.int32, device=dev) if p.warm else None)


def _scan_fwd(p: _Launch, a3, b3, out, h0, state: bool, gate: tuple, gate_strides: tuple):
    # a forward plan's launches; ``gate``: (x, decay bias, gate bias) of the gated form, or placeholders
    shape = p.shape
    B, F = shape[0], math.prod(shape[2:])
    dev = out.device
    h0f = None if h0 is None else h0.float().reshape(B, F).contiguous()
    if p.grid is None:
        hT = torch.zeros(B, F, device=dev) if h0f is None else h0f.clone()
        return out, hT.view(p.state_shape) if state else None
    strides = (*a3.stride(), *b3.stride(), *gate_strides)
    hin = a3 if h0f is None else h0f
    nseg = p.nseg
    # one segment: the end state is h_T itself, made in its own shape (the same bytes as (B, 1, F));
    # without ``state`` the scan stores none, and any pointer stands in for it
    hend = out
    if state:
        hend = torch.empty((B, nseg, F) if nseg > 1 else p.state_shape, dtype=torch.float32, device=dev)
    ends = prods = flags = hend
    if nseg > 1:  # segments' end states and decay products; the warm-up's marks (``p.warm`` needs segments)
        ends, prods, marks = scratch(p.scratch, functools.partial(_segment_scratch, p, B, F, dev), dev)
        flags = hend if marks is None else marks
    if p.warm:  # one pass of warmed-up segments, then exact rescans of the tiles they left marked
        for site in p.launches:
            launch(site, (a3, b3, out, hin, hend, hend, ends, prods, flags, *gate), strides)
    else:
        if nseg > 1:  # pass 1: each segment's end state from zero and its decay product
            launch(p.launches[0], (a3, b3, out, a3, ends, prods, a3, a3, a3, *gate), strides)
        launch(p.launches[-1], (a3, b3, out, hin, hend, hend, ends, prods, a3, *gate), strides)
    if not state:
        return out, None
    return out, (hend[:, -1].view(p.state_shape) if nseg > 1 else hend)


def _lin_bwd_launch(shape: torch.Size, has_gf: bool, has_h0: bool, state: bool, sms: int,
                    cfg: TileConfig | None, dx: int = 0) -> _Launch:
    # dx > 0: the gated form (``gated_scan_bwd``), whose input x has dx channels
    B, T = shape[0], shape[1]
    F = math.prod(shape[2:])
    state_shape = (B,) + tuple(shape[2:])
    if T == 0 or B * F == 0:
        return _Launch(shape, state_shape, None, 1, False, (), (), {})
    cfg = choose(cfg, GATED_BWD if dx else LIN_BWD, B, F, sms)
    nf = -(-F // cfg.block)
    nseg, seglen = segments(cfg, B * nf, T, sms)
    kw = dict(CT=cfg.ct, BF=cfg.block, VEC=cfg.vec, STAGES=cfg.stages, num_warps=cfg.num_warps,
              EVEN_F=F % cfg.block == 0, GATED=dx > 0, XV=dx % cfg.vec == 0)
    pass1 = dict(kw, HAS_GIN=False, HAS_H0=has_h0, STORE_OUT=False, STORE_AEND=True, COMBINE=False, STORE_STATE=True)
    scan = dict(kw, HAS_GIN=has_gf, HAS_H0=has_h0, STORE_OUT=True, STORE_AEND=False, COMBINE=nseg > 1,
                STORE_STATE=state)
    grid = (nf, nseg, B)
    return _Launch(shape, state_shape, grid, nseg, False, (),
                   tuple(make_launch(_lin_bwd_kernel, grid, c, (T, F, seglen, nseg, max(dx, 1)))
                         for c in ((pass1, scan) if nseg > 1 else (scan,))), {})


def linear_scan_bwd(
    a: torch.Tensor,
    gh: torch.Tensor,
    h: torch.Tensor,
    h0: torch.Tensor | None = None,
    g_final: torch.Tensor | None = None,
    ga_dtype: torch.dtype = torch.float32,
    gb_dtype: torch.dtype = torch.float32,
    cfg: TileConfig | None = None,
    state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward of ``linear_scan_fwd`` given its output h: -> (da (B,T,*F), db (B,T,*F), g_0 (B,*F) float32).

    da and db are full-size (sum them to a broadcast input's shape); dL/dh0 = a_0 g_0. ``state``
    False: g_0 is neither allocated nor stored, None in its place. The plan is cached as the
    forward's, per (h's shape, g_final and h0 given or not, state or not, SM count, cfg).
    """
    shape = h.shape
    dev = h.device
    p = cached("lin_bwd", _lin_bwd_launch, shape, g_final is not None, h0 is not None, state, sm_count(dev), cfg)
    a3 = _as_btf(a, shape)
    ga = torch.empty(shape, dtype=ga_dtype, device=dev)
    gb = torch.empty(shape, dtype=gb_dtype, device=dev)
    g0 = _scan_bwd(p, a3, gh, h, ga, gb, h0, g_final, state, (a3,) * 6, (0,) * 5)
    return ga, gb, g0


def _scan_bwd(p: _Launch, a3, gh, h, ga, gb, h0, g_final, state: bool, gate: tuple, gate_strides: tuple):
    # a backward plan's launches into ga and gb; -> g_0 or None. ``gate``: (gate logits, x, decay bias,
    # gate bias, x's gradient per channel, bias sums) of the gated form, or placeholders; ``gate_strides``
    # the gate logits' and x's
    shape = p.shape
    B, T, F = shape[0], shape[1], math.prod(shape[2:])
    dev = h.device
    gh3 = gh.expand(shape).reshape(B, T, F).contiguous()
    h3 = h.reshape(B, T, F).contiguous()
    gf = None if g_final is None else g_final.float().reshape(B, F).contiguous()
    h0f = None if h0 is None else h0.float().reshape(B, F).contiguous()
    if p.grid is None:
        g0 = torch.zeros(B, F, device=dev) if gf is None else gf.clone()
        return g0.view(p.state_shape) if state else None
    nseg = p.nseg
    h0_arg = h0f if h0f is not None else h3
    gstart = h3  # without ``state``: any pointer, never stored to
    if state:
        gstart = torch.empty((B, nseg, F) if nseg > 1 else p.state_shape, dtype=torch.float32, device=dev)
    starts = prods = gstart
    strides = (*a3.stride(), *gate_strides)
    if nseg > 1:  # pass 1: each segment's start gradient from zero and its decay product
        starts, prods, _ = scratch(p.scratch, functools.partial(_segment_scratch, p, B, F, dev), dev)
        launch(p.launches[0], (a3, gh3, h3, h0_arg, ga, gb, gh3, starts, prods, gh3, gh3, *gate), strides)
    launch(p.launches[-1], (a3, gh3, h3, h0_arg, ga, gb, gh3 if gf is None else gf, gstart, gstart, starts, prods,
                            *gate), strides)
    if not state:
        return None
    return gstart[:, 0].view(p.state_shape) if nseg > 1 else gstart


def gated_scan_bwd(
    logits: torch.Tensor,
    x: torch.Tensor,
    decay_bias: torch.Tensor,
    gate_bias: torch.Tensor,
    gh: torch.Tensor,
    h: torch.Tensor,
    h0: torch.Tensor | None = None,
    g_final: torch.Tensor | None = None,
    cfg: TileConfig | None = None,
    state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward of ``gated_scan_fwd`` given its output h (from which it reads h_{t-1}):
    -> (d logits (B, T, 2, *F) in the logits' dtype, dx (B, T, D) in x's dtype, d decay bias and
    d gate bias (*F) float32, dL/dh0 (B, *F) float32 or None). The kernels carry a_t g_t (``_lin_bwd_tile``),
    whose value at t = 0 is dL/dh0 itself."""
    dev = h.device
    shape, la, lg, x = _gated_views(logits, x)
    B, T, F, D = shape[0], shape[1], math.prod(shape[2:]), x.shape[-1]
    p = cached("gated_bwd", _lin_bwd_launch, shape, g_final is not None, h0 is not None, state, sm_count(dev), cfg,
               D)
    dlogits = torch.empty(logits.shape, dtype=logits.dtype, device=dev)
    dl = dlogits.view(B, T, 2, F)
    # x's gradient per channel, in x's dtype (half the bytes of float32 in bf16, here and in the sum below),
    # summed over the F / D groups (float32 accumulation in torch's sum, one rounding more a group)
    gx = torch.empty(shape, dtype=x.dtype, device=dev)
    # per program, read by the sums below on this stream before any later call writes it again
    sums = scratch(p.scratch, functools.partial(torch.empty, (B, p.nseg, 2, F), dtype=torch.float32, device=dev),
                   dev, "sums")
    g0 = _scan_bwd(p, la, gh, h, dl[:, :, 0], dl[:, :, 1], h0, g_final, state,
                   (lg, x, _bias(decay_bias), _bias(gate_bias), gx, sums), (*lg.stride(), *x.stride()[:2]))
    dx = gx.view(B, T, D) if F == D else gx.view(B, T, F // D, D).sum(2)
    dba, dbg = (sums[:, :, k].sum((0, 1)).view(bias.shape) for k, bias in enumerate((decay_bias, gate_bias)))
    return dlogits, dx, dba, dbg, g0


# ---------------------------------------------------------------------------- autograd


class _LinearScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, out_dtype, state):
        h, hT = opaque.run("linear_scan_fwd", a, b, h0, out_dtype, state=state)
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
        want_h0 = h0 is not None and ctx.needs_input_grad[2]
        ga, gb, g0 = opaque.run("linear_scan_bwd", a, gout, h, h0, ghT, ga_dtype, gb_dtype, state=want_h0)
        ga = ga.sum_to_size(ctx.a_shape).to(ctx.a_dtype) if ctx.needs_input_grad[0] else None
        gb = gb.sum_to_size(ctx.b_shape).to(ctx.b_dtype) if ctx.needs_input_grad[1] else None
        gh0 = None
        if want_h0:
            a0 = _as_btf(a, h.shape)[:, 0].float().view(g0.shape)
            gh0 = (a0 * g0).to(h0.dtype)
        return ga, gb, gh0, None, None



def fused_linear_scan(a, b, h0=None, out_dtype=None, state=True):
    """Differentiable ``h_t = a_t h_{t-1} + b_t``: (h in ``out_dtype``, h_T float32, or None where
    ``state`` is False); grads to a, b and h0. Where no gradient is recorded the launcher runs
    without the autograd Function (as ``fused_ema_traces``)."""
    a_full = a
    while a_full.dim() < b.dim():
        a_full = a_full.unsqueeze(0)
    out_dtype = out_dtype or torch.promote_types(a.dtype, b.dtype)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or (h0 is not None and h0.requires_grad)):
        return _LinearScanTriton.apply(a_full, b, h0, out_dtype, state)
    return opaque.run("linear_scan_fwd", a_full, b, h0, out_dtype, state=state)


class _GatedScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, x, decay_bias, gate_bias, h0, state):
        h, hT = opaque.run("gated_scan_fwd", logits, x, decay_bias, gate_bias, h0, state=state)
        ctx.save_for_backward(logits, x, decay_bias, gate_bias, h0, h)
        ctx.set_materialize_grads(False)
        return h, hT

    @staticmethod
    def backward(ctx, gout, ghT):
        logits, x, decay_bias, gate_bias, h0, h = ctx.saved_tensors
        if gout is None:
            gout = torch.zeros_like(h)
        want_h0 = h0 is not None and ctx.needs_input_grad[4]
        dl, dx, dba, dbg, g0 = opaque.run("gated_scan_bwd", logits, x, decay_bias, gate_bias, gout, h, h0, ghT,
                                          state=want_h0)
        gh0 = g0.to(h0.dtype) if want_h0 else None
        return dl, dx, dba.to(decay_bias.dtype), dbg.to(gate_bias.dtype), gh0, None


def fused_gated_scan(logits, x, decay_bias, gate_bias, h0=None, state=True):
    """Differentiable ``gated_scan`` with the gates inside the kernels: (h in x's dtype, h_T float32 or
    None); grads to the logits, x, both biases and h0."""
    tensors = (logits, x, decay_bias, gate_bias) + (() if h0 is None else (h0,))
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _GatedScanTriton.apply(logits, x, decay_bias, gate_bias, h0, state)
    return opaque.run("gated_scan_fwd", logits, x, decay_bias, gate_bias, h0, state=state)


# torch.compile reaches the launchers through custom ops (opaque.py)
opaque.implement("linear_scan_fwd", linear_scan_fwd)
opaque.implement("linear_scan_bwd", linear_scan_bwd)
opaque.implement("gated_scan_fwd", gated_scan_fwd)
opaque.implement("gated_scan_bwd", gated_scan_bwd)
