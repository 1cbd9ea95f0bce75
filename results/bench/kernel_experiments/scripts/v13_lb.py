# session 9, v13 experiment: single-pass decoupled look-back with one (W, CT, BD) tile per program
# held in registers (x read once from HBM; no re-read). W warps split the tile's time; the
# warps' chunk end states are exchanged through shared memory once per timescale (as v12c), the
# program's aggregate is published, the incoming state found by looking back (Merrill & Garland
# 2016; v5's protocol with one flag per segment), then each warp scans its chunk from its carry.
import os
import torch
import triton
import triton.language as tl
from emaprobe.ops import triton_scan as ts
import v12_ws as ws


@triton.jit
def _ld_acquire(ptrs, INTERP: tl.constexpr):
    if INTERP:  # Triton's interpreter runs no inline asm (and programs one after another)
        return tl.atomic_add(ptrs, 0)
    return tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l", [ptrs],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _fence(v, INTERP: tl.constexpr):
    # fence.acq_rel.gpu after this thread's stores (v: any int32 tensor, returned unchanged)
    if INTERP:
        return v
    return tl.inline_asm_elementwise("fence.acq_rel.gpu;\nmov.b32 $0, $1;", "=r,r", [v],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _publish(BUF, FLAGS, slot, v0, v1, v2, v3, lane, inc, NS: tl.constexpr, BD: tl.constexpr, INTERP: tl.constexpr):
    # store this program's NS (BD,) values for ``slot``; fence; barrier; one release add on its flag
    base = BUF + slot * (NS * BD) + lane
    tl.store(base, v0)
    if NS > 1:
        tl.store(base + BD, v1)
    if NS > 2:
        tl.store(base + 2 * BD, v2)
    if NS > 3:
        tl.store(base + 3 * BD, v3)
    _fence(lane, INTERP)
    tl.debug_barrier()
    tl.atomic_add(FLAGS + slot, inc, sem="release", scope="gpu")


@triton.jit
def _look_back(FLAGS, AGG, INCL, seg, chain, CH, lane, q0, q1, q2, q3, NS: tl.constexpr, BD: tl.constexpr,
               INTERP: tl.constexpr):
    # the state at the end of segment seg - 1: walk back over published aggregates (flag 1), each
    # scaled by the tile decays after it, until an inclusive state (flag 2) ends the walk
    kk = lane * 0 + (seg - 1)
    done = lane < 0
    f0 = tl.full((BD,), 1.0, tl.float32)
    f1 = f0
    f2 = f0
    f3 = f0
    c0 = tl.zeros((BD,), tl.float32)
    c1 = c0
    c2 = c0
    c3 = c0
    while tl.max(tl.where(done, 0, 1), axis=0) > 0:
        slot = kk.to(tl.int64) * CH + chain
        fl = _ld_acquire(FLAGS + slot, INTERP)
        inc = (fl >= 2) & ~done
        agg = (fl == 1) & ~done
        take = inc | agg
        src = tl.where(inc, INCL, AGG) + slot * (NS * BD) + lane
        c0 += f0 * tl.load(src, mask=take, other=0.0, cache_modifier=".cg")
        f0 = f0 * tl.where(agg, q0, 1.0)
        if NS > 1:
            c1 += f1 * tl.load(src + BD, mask=take, other=0.0, cache_modifier=".cg")
            f1 = f1 * tl.where(agg, q1, 1.0)
        if NS > 2:
            c2 += f2 * tl.load(src + 2 * BD, mask=take, other=0.0, cache_modifier=".cg")
            f2 = f2 * tl.where(agg, q2, 1.0)
        if NS > 3:
            c3 += f3 * tl.load(src + 3 * BD, mask=take, other=0.0, cache_modifier=".cg")
            f3 = f3 * tl.where(agg, q3, 1.0)
        kk = tl.where(agg, kk - 1, kk)
        done = done | inc
    return c0, c1, c2, c3


@triton.jit
def _local(x, wt, mc, mn, W: tl.constexpr, BD: tl.constexpr):
    # (carry into each warp's chunk from the tile's other chunks, the tile's end state from zero)
    e = tl.sum(x * wt, axis=1)
    E = tl.broadcast_to(e[None, :, :], (W, W, BD)) + 0.0 * x  # CT == W: x's layout, one smem trip
    return tl.sum(E * mc, axis=1), tl.sum(E * mn, axis=1)


@triton.jit
def _row0(v, wi):
    # (W, BD), the same in every row -> (BD,)
    return tl.sum(tl.where((wi == 0)[:, None], v, 0.0), axis=0)


@triton.jit
def _out(x, cl, hc, P, dec, alp, k: tl.constexpr, o_ptr, o_off, m, D, rows):
    c = cl + hc * P[None, :]
    u = alp * x + tl.where((rows == 0)[None, :, None], dec * c[:, None, :], 0.0)
    a = tl.zeros_like(x) + dec
    _, hh = tl.associative_scan((a, u), 1, ts._combine)
    tl.store(o_ptr + k * D + o_off, hh.to(o_ptr.dtype.element_ty), mask=m)
    return hh


@triton.jit
def _lb_kernel(X, OUT, HIN, HEND, DEC, DEC64, ALP, FLAGS, AGG, INCL, T, D, SD, NSEG, ND, CH,
               NS: tl.constexpr, W: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr,
               HAS_HIN: tl.constexpr, LOOKBACK: tl.constexpr, INTERP: tl.constexpr):
    TILE: tl.constexpr = W * CT
    if LOOKBACK:
        tk = tl.atomic_add(FLAGS + NSEG * CH, 1)  # ticket: earlier segments of a chain start first
    else:
        tk = tl.program_id(0)
    seg = tk // CH
    chain = tk - seg * CH
    b = (chain // ND).to(tl.int64)
    lane = tl.arange(0, BD)
    rows = tl.arange(0, CT)
    wi = tl.arange(0, W)
    offs_d = tl.max_contiguous(tl.multiple_of((chain % ND) * BD + lane, VEC), VEC)
    t0 = seg * TILE
    trow = wi[:, None, None] * CT + rows[None, :, None]
    live = tl.broadcast_to(t0 + trow < T, (W, CT, BD))
    x = tl.load(X + (b * T + t0) * D + trow * D + offs_d[None, None, :], mask=live, other=0.0).to(tl.float32)
    d0, d1, d2, d3 = ts._load_coefs(DEC, NS)
    a0, a1, a2, a3 = ts._load_coefs(ALP, NS)
    wt0, mc0, mn0, hc0, q0 = ws._wsc_consts(d0, a0, rows, wi, W, CT)
    wt1, mc1, mn1, hc1, q1 = ws._wsc_consts(d1, a1, rows, wi, W, CT)
    wt2, mc2, mn2, hc2, q2 = ws._wsc_consts(d2, a2, rows, wi, W, CT)
    wt3, mc3, mn3, hc3, q3 = ws._wsc_consts(d3, a3, rows, wi, W, CT)
    cl0, A0 = _local(x, wt0, mc0, mn0, W, BD)
    cl1 = cl0
    cl2 = cl0
    cl3 = cl0
    A1 = A0
    A2 = A0
    A3 = A0
    if NS > 1:
        cl1, A1 = _local(x, wt1, mc1, mn1, W, BD)
    if NS > 2:
        cl2, A2 = _local(x, wt2, mc2, mn2, W, BD)
    if NS > 3:
        cl3, A3 = _local(x, wt3, mc3, mn3, W, BD)
    # the incoming state P (BD,) per timescale
    P0 = tl.zeros((BD,), tl.float32)
    P1 = P0
    P2 = P0
    P3 = P0
    if HAS_HIN:
        if seg == 0:
            P0, P1, P2, P3 = ts._load_state(HIN + b * SD + offs_d, lane >= 0, D, NS)
    if LOOKBACK:
        slot = seg.to(tl.int64) * CH + chain
        e0 = _row0(A0, wi)
        e1 = _row0(A1, wi)
        e2 = _row0(A2, wi)
        e3 = _row0(A3, wi)
        if seg > 0:
            if seg < NSEG - 1:
                _publish(AGG, FLAGS, slot, e0, e1, e2, e3, lane, 1, NS, BD, INTERP)
            P0, P1, P2, P3 = _look_back(FLAGS, AGG, INCL, seg, chain, CH, lane, q0, q1, q2, q3, NS, BD, INTERP)
        if seg < NSEG - 1:
            _publish(INCL, FLAGS, slot, e0 + q0 * P0, e1 + q1 * P1, e2 + q2 * P2, e3 + q3 * P3, lane,
                     tl.where(seg == 0, 2, 1), NS, BD, INTERP)
    o_ptr = OUT + (b * T + t0) * SD
    o_off = trow * SD + offs_d[None, None, :]
    last = t0 + trow == T - 1
    hh = _out(x, cl0, hc0, P0, d0, a0, 0, o_ptr, o_off, live, D, rows)
    h0 = tl.sum(tl.sum(tl.where(last, hh, 0.0), axis=1), axis=0)
    h1 = h0
    h2 = h0
    h3 = h0
    if NS > 1:
        hh = _out(x, cl1, hc1, P1, d1, a1, 1, o_ptr, o_off, live, D, rows)
        h1 = tl.sum(tl.sum(tl.where(last, hh, 0.0), axis=1), axis=0)
    if NS > 2:
        hh = _out(x, cl2, hc2, P2, d2, a2, 2, o_ptr, o_off, live, D, rows)
        h2 = tl.sum(tl.sum(tl.where(last, hh, 0.0), axis=1), axis=0)
    if NS > 3:
        hh = _out(x, cl3, hc3, P3, d3, a3, 3, o_ptr, o_off, live, D, rows)
        h3 = tl.sum(tl.sum(tl.where(last, hh, 0.0), axis=1), axis=0)
    if seg == NSEG - 1:
        ts._store_state(HEND + b * SD + offs_d, h0, h1, h2, h3, offs_d >= 0, D, NS)


def lb_fwd(x, alphas, h0=None, W=8, block=64, vec=2, lookback=True):
    x = x.contiguous()
    B, T, D = x.shape
    assert D % block == 0
    a64 = alphas.to(device=x.device, dtype=torch.float64)
    S = a64.numel()
    assert S <= 4
    ct = W
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    d64 = 1.0 - a64
    h0f = None if h0 is None else h0.float().contiguous()
    nd = D // block
    ch = B * nd
    nseg = triton.cdiv(T, W * ct)
    flags = torch.zeros(nseg * ch + 1, dtype=torch.int32, device=x.device)
    agg = torch.empty(nseg * ch * S * block, dtype=torch.float32, device=x.device)
    incl = torch.empty_like(agg)
    _lb_kernel[(nseg * ch,)](x, out, x if h0f is None else h0f, hend, d64.float(), d64, a64.float(), flags, agg,
                             incl, T, D, S * D, nseg, nd, ch, NS=S, W=W, CT=ct, BD=block, VEC=vec,
                             HAS_HIN=h0f is not None, LOOKBACK=lookback,
                             INTERP=os.environ.get("TRITON_INTERPRET") == "1", num_warps=W)
    return out, hend
