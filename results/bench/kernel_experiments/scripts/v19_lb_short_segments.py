# session 10, v19 experiments (exp 27, 28, 30): v14's single-pass look-back over short segments
# (32-128 steps, so pass B re-reads x from L1/L2), pass A as a tree reduction in each thread.
# Switches: NOLB leaves the look-back out (wrong values: the bound of two passes in one program);
# HINT loads pass A's tiles with evict_last; CHAIN_TICKETS (v19c) takes tickets from one counter a
# chain instead of one counter for all. The look-back protocol is v14's, imported.
import os
import torch
import triton
import triton.language as tl
from emaprobe.ops import triton_scan as ts
from v14_lb_segments import _look_back, _pub, _qpow


@triton.jit
def _end_one(x, e, dec, alp):
    a = tl.full(x.shape, 1.0, tl.float32) * dec
    p, h = tl.reduce((a, alp * x), 0, ts._combine)
    return p * e + h


@triton.jit
def _v19_kernel(X, OUT, HIN, HEND, DEC, DEC64, ALP, FLAGS, AGG, INCL, T, D, SD, SEGLEN, NSEG, ND, CH,
                NOLB: tl.constexpr, HINT: tl.constexpr, CHAIN_TICKETS: tl.constexpr, NS: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
                K: tl.constexpr, HAS_HIN: tl.constexpr, INTERP: tl.constexpr, SKIP_ODD: tl.constexpr):
    if CHAIN_TICKETS:  # v19c: one counter a chain, 32 ints apart (program p serves chain p % CH)
        chain = tl.program_id(0) % CH
        seg = tl.atomic_add(FLAGS + NSEG * CH + chain * 32, 1)
    else:  # v14's single ticket counter: a chain's earlier segments start first
        tk = tl.atomic_add(FLAGS + NSEG * CH, 1)
        seg = tk // CH
        chain = tk - seg * CH
    b = (chain // ND).to(tl.int64)
    lane = tl.arange(0, BD)
    rows = tl.arange(0, CT)
    offs_d = tl.max_contiguous(tl.multiple_of((chain % ND) * BD + lane, VEC), VEC)
    mask_d = offs_d >= 0
    d0, d1, d2, d3 = ts._load_coefs(DEC, NS)
    a0, a1, a2, a3 = ts._load_coefs(ALP, NS)
    g0, g1, g2, g3 = ts._load_coefs(DEC64, NS)
    q640 = ts._pow(g0, SEGLEN).to(tl.float64)
    q641 = ts._pow(g1, SEGLEN).to(tl.float64)
    q642 = ts._pow(g2, SEGLEN).to(tl.float64)
    q643 = ts._pow(g3, SEGLEN).to(tl.float64)
    t_start = seg * SEGLEN
    seg_len = ts._seg_len(seg, SEGLEN, T)
    x_ptr = X + (b * T + t_start) * D
    o_ptr = OUT + (b * T + t_start) * SD
    x_off = rows[:, None] * D + offs_d[None, :]
    o_off = rows[:, None] * SD + offs_d[None, :]
    m = tl.broadcast_to(mask_d[None, :], (CT, BD))
    live = tl.full((CT, BD), 1, tl.int1)
    P0 = tl.zeros((BD,), tl.float32)
    P1 = P0
    P2 = P0
    P3 = P0
    if HAS_HIN:
        if seg == 0:
            P0, P1, P2, P3 = ts._load_state(HIN + b * SD + offs_d, mask_d, D, NS)
    slot = seg.to(tl.int64) * CH + chain
    if seg < NSEG - 1:
        # pass A: the segment's end state from zero (segments before the last are whole tiles)
        e0 = tl.zeros((BD,), tl.float32)
        e1 = e0
        e2 = e0
        e3 = e0
        for i0 in tl.range(0, seg_len, CT, num_stages=STAGES):
            i = tl.cast(i0, tl.int64)
            if HINT:
                xa = tl.load(x_ptr + i * D + x_off, eviction_policy="evict_last").to(tl.float32)
            else:
                xa = tl.load(x_ptr + i * D + x_off).to(tl.float32)
            e0 = _end_one(xa, e0, d0, a0)
            if NS > 1:
                e1 = _end_one(xa, e1, d1, a1)
            if NS > 2:
                e2 = _end_one(xa, e2, d2, a2)
            if NS > 3:
                e3 = _end_one(xa, e3, d3, a3)
        q0 = q640.to(tl.float32)
        q1 = q641.to(tl.float32)
        q2 = q642.to(tl.float32)
        q3 = q643.to(tl.float32)
        if NOLB:
            P0 = e0 * 0.0
        elif seg > 0:
            _pub(AGG, FLAGS, slot, e0, e1, e2, e3, lane, 1, NS, BD, INTERP)
            P0, P1, P2, P3 = _look_back(FLAGS, AGG, INCL, seg, chain, CH, lane, _qpow(q640, K), _qpow(q641, K),
                                        _qpow(q642, K), _qpow(q643, K), q640, q641, q642, q643, NS, BD, K, INTERP)
            if not (SKIP_ODD and seg % 2 == 1):  # SKIP_ODD (tests only): readers must fold aggregates
                _pub(INCL, FLAGS, slot, e0 + q0 * P0, e1 + q1 * P1, e2 + q2 * P2, e3 + q3 * P3, lane, 1, NS, BD, INTERP)
        else:
            _pub(INCL, FLAGS, slot, e0 + q0 * P0, e1 + q1 * P1, e2 + q2 * P2, e3 + q3 * P3, lane, 2, NS, BD, INTERP)
    elif seg > 0 and not NOLB:
        P0, P1, P2, P3 = _look_back(FLAGS, AGG, INCL, seg, chain, CH, lane, _qpow(q640, K), _qpow(q641, K),
                                    _qpow(q642, K), _qpow(q643, K), q640, q641, q642, q643, NS, BD, K, INTERP)
    # pass B: rescan from the true incoming state, writing the traces
    lo, hi, last, tail = ts._tile_plan(seg_len, CT, False, False)
    for i0 in tl.range(lo, hi, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        P0, P1, P2, P3 = ts._ema_fwd_tile(x_ptr + i * D, o_ptr + i * SD, x_off, o_off, m, live, P0, P1, P2, P3,
                                          d0, d1, d2, d3, a0, a1, a2, a3, D, rows, NS, CT, True)
    if tail:
        i = tl.cast(last, tl.int64)
        lv = tl.broadcast_to((rows < seg_len - last)[:, None], (CT, BD))
        P0, P1, P2, P3 = ts._ema_fwd_tile(x_ptr + i * D, o_ptr + i * SD, x_off, o_off, m & lv, lv, P0, P1, P2, P3,
                                          d0, d1, d2, d3, a0, a1, a2, a3, D, rows, NS, CT, True)
    if seg == NSEG - 1:
        ts._store_state(HEND + b * SD + offs_d, P0, P1, P2, P3, mask_d, D, NS)


def v19_fwd(x, alphas, h0=None, seglen=64, ct=16, block=128, vec=4, stages=4, K=8, skip_odd=False, nolb=False,
            hint=False, chain_tickets=False):
    x = x.contiguous()
    B, T, D = x.shape
    assert D % block == 0 and seglen % ct == 0
    a64 = alphas.to(device=x.device, dtype=torch.float64)
    S = a64.numel()
    assert S <= 4
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    d64 = 1.0 - a64
    h0f = None if h0 is None else h0.float().contiguous()
    nd = D // block
    ch = B * nd
    nseg = triton.cdiv(T, seglen)
    flags = torch.zeros(nseg * ch + 32 * ch, dtype=torch.int32, device=x.device)
    agg = torch.empty(nseg * ch * S * block, dtype=torch.float32, device=x.device)
    incl = torch.empty_like(agg)
    _v19_kernel[(nseg * ch,)](x, out, x if h0f is None else h0f, hend, d64.float(), d64, a64.float(), flags, agg,
                              incl, T, D, S * D, seglen, nseg, nd, ch, NS=S, CT=ct, BD=block, VEC=vec,
                              STAGES=stages, K=K, NOLB=nolb, HINT=hint, CHAIN_TICKETS=chain_tickets, HAS_HIN=h0f is not None, SKIP_ODD=skip_odd,
                              INTERP=os.environ.get("TRITON_INTERPRET") == "1", num_warps=1)
    return out, hend
