# session 9, v12 experiment: time split across the warps of one program (one HBM read).
# A program owns BD channels of one sequence and W warps; each tile is (W, CT, BD): warp w
# scans rows [w*CT, (w+1)*CT) of the tile from zero in registers, then the W chunks' end states
# are combined across warps (shared memory) and each warp adds dec^(r+1) * (its incoming carry).
import torch
import triton
import triton.language as tl
from emaprobe.ops import triton_scan as ts


@triton.jit
def _ws_one(x, live, h, decW, dec, alp, k: tl.constexpr, o_ptr, o_off, m, D, rows, wi,
            W: tl.constexpr, CT: tl.constexpr, FULL: tl.constexpr, NOX: tl.constexpr):
    a = tl.where(live, dec, 1.0)
    u = tl.where(live, alp * x, 0.0)
    acum, hl = tl.associative_scan((a, u), 1, ts._combine)  # (W, CT, BD): per-warp scans from zero
    last = (rows == CT - 1)[None, :, None]
    e = tl.sum(tl.where(last, hl, 0.0), axis=1)  # (W, BD) chunk end states from zero
    p = tl.sum(tl.where(last, acum, 0.0), axis=1)  # (W, BD) chunk decays (1 past the live rows)
    c = tl.where((wi == 0)[:, None], h[None, :], 0.0)  # (W, BD) carry into each chunk
    run = h
    if NOX:  # timing bound only: no exchange between warps (wrong values)
        c = tl.where((wi == 0)[:, None], h[None, :], h[None, :])
    for j in tl.static_range(0 if NOX else W - 1):
        ej = tl.sum(tl.where((wi == j)[:, None], e, 0.0), axis=0)
        if FULL:
            run = decW * run + ej
        else:  # a partial tile: chunk j's own decay (dead rows decay by 1)
            run = tl.sum(tl.where((wi == j)[:, None], p, 0.0), axis=0) * run + ej
        c = tl.where((wi == j + 1)[:, None], run[None, :], c)
    hh = hl + acum * c[:, None, :]
    tl.store(o_ptr + k * D + o_off, hh.to(o_ptr.dtype.element_ty), mask=m)
    # the state after the tile: the last chunk's end (its decay may be < dec^CT in a partial tile)
    if NOX:
        eL = h
    else:
        eL = tl.sum(tl.where((wi == W - 1)[:, None], e + p * c, 0.0), axis=0)
    return eL


@triton.jit
def _ws_kernel(X, OUT, HIN, HEND, DEC, DEC64, ALP, T, D, SD,
               NS: tl.constexpr, W: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr,
               STAGES: tl.constexpr, HAS_HIN: tl.constexpr, EVEN_D: tl.constexpr, NOX: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, CT)
    wi = tl.arange(0, W)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)
    mask_d = ts._channel_mask(offs_d, D, BD, EVEN_D)
    h0 = tl.zeros((BD,), dtype=tl.float32)
    h1 = h0
    h2 = h0
    h3 = h0
    if HAS_HIN:
        h0, h1, h2, h3 = ts._load_state(HIN + b * SD + offs_d, mask_d, D, NS)
    d0, d1, d2, d3 = ts._load_coefs(DEC, NS)
    a0, a1, a2, a3 = ts._load_coefs(ALP, NS)
    q0, q1, q2, q3 = ts._seg_decays(DEC64, CT, NS)
    trow = wi[:, None, None] * CT + rows[None, :, None]  # (W, CT, 1) row within the tile
    x_off = trow * D + offs_d[None, None, :]
    o_off = trow * SD + offs_d[None, None, :]
    x_ptr = X + b * T * D
    o_ptr = OUT + b * T * SD
    m = tl.broadcast_to(mask_d[None, None, :], (W, CT, BD))
    TILE: tl.constexpr = W * CT
    nfull = T // TILE * TILE
    live = tl.full((W, CT, BD), 1, tl.int1)
    for i0 in tl.range(0, nfull, TILE, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        x = tl.load(x_ptr + i * D + x_off, mask=m, other=0.0).to(tl.float32)
        op = o_ptr + i * SD
        h0 = _ws_one(x, live, h0, q0, d0, a0, 0, op, o_off, m, D, rows, wi, W, CT, True, NOX)
        if NS > 1:
            h1 = _ws_one(x, live, h1, q1, d1, a1, 1, op, o_off, m, D, rows, wi, W, CT, True, NOX)
        if NS > 2:
            h2 = _ws_one(x, live, h2, q2, d2, a2, 2, op, o_off, m, D, rows, wi, W, CT, True, NOX)
        if NS > 3:
            h3 = _ws_one(x, live, h3, q3, d3, a3, 3, op, o_off, m, D, rows, wi, W, CT, True, NOX)
    if nfull < T:
        i = tl.cast(nfull, tl.int64)
        live = tl.broadcast_to(trow < T - nfull, (W, CT, BD))
        mm = m & live
        x = tl.load(x_ptr + i * D + x_off, mask=mm, other=0.0).to(tl.float32)
        op = o_ptr + i * SD
        h0 = _ws_one(x, live, h0, q0, d0, a0, 0, op, o_off, mm, D, rows, wi, W, CT, False, False)
        if NS > 1:
            h1 = _ws_one(x, live, h1, q1, d1, a1, 1, op, o_off, mm, D, rows, wi, W, CT, False, False)
        if NS > 2:
            h2 = _ws_one(x, live, h2, q2, d2, a2, 2, op, o_off, mm, D, rows, wi, W, CT, False, False)
        if NS > 3:
            h3 = _ws_one(x, live, h3, q3, d3, a3, 3, op, o_off, mm, D, rows, wi, W, CT, False, False)
    ts._store_state(HEND + b * SD + offs_d, h0, h1, h2, h3, mask_d, D, NS)


def ws_fwd(x, alphas, h0=None, W=2, ct=16, block=128, vec=4, stages=4, nox=False):
    x = x.contiguous()
    B, T, D = x.shape
    a64 = alphas.to(device=x.device, dtype=torch.float64)
    S = a64.numel()
    assert S <= 4
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    d64 = 1.0 - a64
    h0f = None if h0 is None else h0.float().contiguous()
    grid = (triton.cdiv(D, block), B)
    _ws_kernel[grid](x, out, x if h0f is None else h0f, hend, d64.float(), d64, a64.float(), T, D, S * D,
                     NS=S, W=W, CT=ct, BD=block, VEC=vec, STAGES=stages, HAS_HIN=h0f is not None,
                     EVEN_D=D % block == 0, NOX=nox, num_warps=W)
    return out, hend


# ---- v12b: one cross-warp exchange per tile for every timescale (full tiles); the tail as above
@triton.jit
def _add4(a0, a1, a2, a3, b0, b1, b2, b3):
    return a0 + b0, a1 + b1, a2 + b2, a3 + b3


@triton.jit
def _add3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@triton.jit
def _add2(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def _add1(a0, b0):
    return a0 + b0


@triton.jit
def _ws_consts(dec, alp, rows, wi, qi, W: tl.constexpr, CT: tl.constexpr):
    # wt (1, CT, 1): alp dec^(CT-1-r), the weight of row r in a chunk's end state from zero;
    # mz (W, 2W, 1): dec^(CT (q-1-v)) for v < q <= W, the weight of chunk v's end state in the carry
    # into chunk q (q = W: the state after the tile); mh (W, 2W, 1): dec^(CT q) at v = 0 (the tile's
    # incoming state, counted once: only warp 0's slice holds it)
    wt = tl.zeros((1, CT, 1), tl.float32)
    p = alp
    for j in tl.static_range(CT):
        wt = tl.where((rows == CT - 1 - j)[None, :, None], p, wt)
        p = p * dec
    decW = p / alp
    v = wi[:, None, None]
    q = qi[None, :, None]
    mz = tl.zeros((W, 2 * W, 1), tl.float32)
    mh = tl.zeros((W, 2 * W, 1), tl.float32)
    p = decW * 0.0 + 1.0
    for j in tl.static_range(W + 1):
        mz = tl.where((q - 1 - v == j) & (q <= W), p, mz)
        mh = tl.where((v == 0) & (q == j), p, mh)
        p = p * decW
    return wt, mz, mh


@triton.jit
def _ws_z(x, h, wt, mz, mh):
    e = tl.sum(x * wt, axis=1)  # (W, BD)
    return e[:, None, :] * mz + h[:, None, :] * mh  # (W, 2W, BD); h (W, BD), the same in every row


@triton.jit
def _ws_out(x, R, h, dec, alp, k: tl.constexpr, o_ptr, o_off, D, rows, wi, qi, W: tl.constexpr):
    # R (2W, BD): carries into chunk q; scan each chunk from its carry, store; return the next state
    c = tl.sum(tl.where(qi[None, :, None] == wi[:, None, None], R[None, :, :], 0.0), axis=1)  # (W, BD)
    u = alp * x + tl.where((rows == 0)[None, :, None], dec * c[:, None, :], 0.0)
    a = tl.zeros_like(x) + dec
    _, hh = tl.associative_scan((a, u), 1, ts._combine)
    tl.store(o_ptr + k * D + o_off, hh.to(o_ptr.dtype.element_ty))
    W2: tl.constexpr = 2 * W
    Rb = tl.broadcast_to(R[None, :, :], (W, W2, R.shape[1]))
    return tl.sum(tl.where(qi[None, :, None] == W, Rb, 0.0), axis=1)  # (W, BD)


@triton.jit
def _wsb_kernel(X, OUT, HIN, HEND, DEC, DEC64, ALP, T, D, SD,
                NS: tl.constexpr, W: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr,
                STAGES: tl.constexpr, HAS_HIN: tl.constexpr):
    # EVEN_D only (D a multiple of BD): an experiment
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, CT)
    wi = tl.arange(0, W)
    qi = tl.arange(0, 2 * W)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)
    mask_d = ts._channel_mask(offs_d, D, BD, True)
    # states as (W, BD): the same row in every warp
    h0 = tl.zeros((W, BD), dtype=tl.float32)
    h1 = h0
    h2 = h0
    h3 = h0
    if HAS_HIN:
        h0, h1, h2, h3 = ts._load_state(HIN + b * SD + (wi * 0)[:, None] + offs_d[None, :], True, D, NS)
    d0, d1, d2, d3 = ts._load_coefs(DEC, NS)
    a0, a1, a2, a3 = ts._load_coefs(ALP, NS)
    q0, q1, q2, q3 = ts._seg_decays(DEC64, CT, NS)
    wt0, mz0, mh0 = _ws_consts(d0, a0, rows, wi, qi, W, CT)
    wt1, mz1, mh1 = _ws_consts(d1, a1, rows, wi, qi, W, CT)
    wt2, mz2, mh2 = _ws_consts(d2, a2, rows, wi, qi, W, CT)
    wt3, mz3, mh3 = _ws_consts(d3, a3, rows, wi, qi, W, CT)
    trow = wi[:, None, None] * CT + rows[None, :, None]
    x_off = trow * D + offs_d[None, None, :]
    o_off = trow * SD + offs_d[None, None, :]
    x_ptr = X + b * T * D
    o_ptr = OUT + b * T * SD
    TILE: tl.constexpr = W * CT
    nfull = T // TILE * TILE
    for i0 in tl.range(0, nfull, TILE, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        x = tl.load(x_ptr + i * D + x_off).to(tl.float32)
        z0 = _ws_z(x, h0, wt0, mz0, mh0)
        z1 = z0
        z2 = z0
        z3 = z0
        if NS > 1:
            z1 = _ws_z(x, h1, wt1, mz1, mh1)
        if NS > 2:
            z2 = _ws_z(x, h2, wt2, mz2, mh2)
        if NS > 3:
            z3 = _ws_z(x, h3, wt3, mz3, mh3)
        # the one exchange between warps
        if NS == 1:
            r0 = tl.reduce(z0, 0, _add1)
            r1 = r0
            r2 = r0
            r3 = r0
        elif NS == 2:
            r0, r1 = tl.reduce((z0, z1), 0, _add2)
            r2 = r0
            r3 = r0
        elif NS == 3:
            r0, r1, r2 = tl.reduce((z0, z1, z2), 0, _add3)
            r3 = r0
        else:
            r0, r1, r2, r3 = tl.reduce((z0, z1, z2, z3), 0, _add4)
        op = o_ptr + i * SD
        h0 = _ws_out(x, r0, h0, d0, a0, 0, op, o_off, D, rows, wi, qi, W)
        if NS > 1:
            h1 = _ws_out(x, r1, h1, d1, a1, 1, op, o_off, D, rows, wi, qi, W)
        if NS > 2:
            h2 = _ws_out(x, r2, h2, d2, a2, 2, op, o_off, D, rows, wi, qi, W)
        if NS > 3:
            h3 = _ws_out(x, r3, h3, d3, a3, 3, op, o_off, D, rows, wi, qi, W)
    # (BD,) states for the tail and the store
    h0 = tl.sum(tl.where((wi == 0)[:, None], h0, 0.0), axis=0)
    h1 = tl.sum(tl.where((wi == 0)[:, None], h1, 0.0), axis=0)
    h2 = tl.sum(tl.where((wi == 0)[:, None], h2, 0.0), axis=0)
    h3 = tl.sum(tl.where((wi == 0)[:, None], h3, 0.0), axis=0)
    if nfull < T:
        i = tl.cast(nfull, tl.int64)
        live = tl.broadcast_to(trow < T - nfull, (W, CT, BD))
        x = tl.load(x_ptr + i * D + x_off, mask=live, other=0.0).to(tl.float32)
        op = o_ptr + i * SD
        h0 = _ws_one(x, live, h0, q0, d0, a0, 0, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 1:
            h1 = _ws_one(x, live, h1, q1, d1, a1, 1, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 2:
            h2 = _ws_one(x, live, h2, q2, d2, a2, 2, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 3:
            h3 = _ws_one(x, live, h3, q3, d3, a3, 3, op, o_off, live, D, rows, wi, W, CT, False, False)
    ts._store_state(HEND + b * SD + offs_d, h0, h1, h2, h3, mask_d, D, NS)


def wsb_fwd(x, alphas, h0=None, W=2, ct=16, block=128, vec=4, stages=4):
    x = x.contiguous()
    B, T, D = x.shape
    assert D % block == 0
    a64 = alphas.to(device=x.device, dtype=torch.float64)
    S = a64.numel()
    assert S <= 4
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    d64 = 1.0 - a64
    h0f = None if h0 is None else h0.float().contiguous()
    grid = (D // block, B)
    _wsb_kernel[grid](x, out, x if h0f is None else h0f, hend, d64.float(), d64, a64.float(), T, D, S * D,
                      NS=S, W=W, CT=ct, BD=block, VEC=vec, STAGES=stages, HAS_HIN=h0f is not None, num_warps=W)
    return out, hend


# ---- v12c: the exchange as a layout conversion: each warp's chunk end states go through shared
# memory once (e[None] puts the chunk axis in every thread); carries are then computed in registers
@triton.jit
def _wsc_consts(dec, alp, rows, wi, W: tl.constexpr, CT: tl.constexpr):
    # wt (1, CT, 1): alp dec^(CT-1-r); mc (W, W, 1): dec^(CT(w-1-v)) for v < w (carry into chunk w);
    # mn (W, W, 1): dec^(CT(W-1-v)) (the state after the tile); hc (W, 1): dec^(CT w); hn: dec^(CT W)
    wt = tl.zeros((1, CT, 1), tl.float32)
    p = alp
    for j in tl.static_range(CT):
        wt = tl.where((rows == CT - 1 - j)[None, :, None], p, wt)
        p = p * dec
    decW = p / alp
    w = wi[:, None, None]
    v = wi[None, :, None]
    mc = tl.zeros((W, W, 1), tl.float32)
    mn = tl.zeros((W, W, 1), tl.float32)
    hc = tl.zeros((W, 1), tl.float32)
    p = decW * 0.0 + 1.0
    for j in tl.static_range(W):
        mc = tl.where(w - 1 - v == j, p, mc)
        mn = tl.where(W - 1 - v == j, p, mn)
        hc = tl.where((wi == j)[:, None], p, hc)
        p = p * decW
    return wt, mc, mn, hc, p


@triton.jit
def _wsc_one(x, h, dec, alp, wt, mc, mn, hc, hn, k: tl.constexpr, o_ptr, o_off, D, rows,
             W: tl.constexpr, BD: tl.constexpr, ANCHOR: tl.constexpr):
    e = tl.sum(x * wt, axis=1)  # (W, BD): each chunk's end state from zero, in its warp
    E = tl.broadcast_to(e[None, :, :], (W, W, BD))  # (w, v): chunk v's end state, in every warp
    if ANCHOR:  # CT == W: adding 0 * x puts E in x's layout (Triton otherwise converts whole tiles)
        E = E + 0.0 * x
    c = tl.sum(E * mc, axis=1) + hc * h  # carry into chunk w
    u = alp * x + tl.where((rows == 0)[None, :, None], dec * c[:, None, :], 0.0)
    a = tl.zeros_like(x) + dec
    _, hh = tl.associative_scan((a, u), 1, ts._combine)
    tl.store(o_ptr + k * D + o_off, hh.to(o_ptr.dtype.element_ty))
    return tl.sum(E * mn, axis=1) + hn * h  # (W, BD), the same in every row


@triton.jit
def _wsc_kernel(X, OUT, HIN, HEND, DEC, DEC64, ALP, T, D, SD,
                NS: tl.constexpr, W: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr,
                STAGES: tl.constexpr, HAS_HIN: tl.constexpr):
    # EVEN_D only (D a multiple of BD): an experiment
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, CT)
    wi = tl.arange(0, W)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)
    mask_d = ts._channel_mask(offs_d, D, BD, True)
    h0 = tl.zeros((W, BD), dtype=tl.float32)
    h1 = h0
    h2 = h0
    h3 = h0
    if HAS_HIN:
        h0, h1, h2, h3 = ts._load_state(HIN + b * SD + (wi * 0)[:, None] + offs_d[None, :], True, D, NS)
    d0, d1, d2, d3 = ts._load_coefs(DEC, NS)
    a0, a1, a2, a3 = ts._load_coefs(ALP, NS)
    q0, q1, q2, q3 = ts._seg_decays(DEC64, CT, NS)
    wt0, mc0, mn0, hc0, hn0 = _wsc_consts(d0, a0, rows, wi, W, CT)
    wt1, mc1, mn1, hc1, hn1 = _wsc_consts(d1, a1, rows, wi, W, CT)
    wt2, mc2, mn2, hc2, hn2 = _wsc_consts(d2, a2, rows, wi, W, CT)
    wt3, mc3, mn3, hc3, hn3 = _wsc_consts(d3, a3, rows, wi, W, CT)
    trow = wi[:, None, None] * CT + rows[None, :, None]
    x_off = trow * D + offs_d[None, None, :]
    o_off = trow * SD + offs_d[None, None, :]
    x_ptr = X + b * T * D
    o_ptr = OUT + b * T * SD
    TILE: tl.constexpr = W * CT
    nfull = T // TILE * TILE
    for i0 in tl.range(0, nfull, TILE, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        x = tl.load(x_ptr + i * D + x_off).to(tl.float32)
        op = o_ptr + i * SD
        h0 = _wsc_one(x, h0, d0, a0, wt0, mc0, mn0, hc0, hn0, 0, op, o_off, D, rows, W, BD, W == CT)
        if NS > 1:
            h1 = _wsc_one(x, h1, d1, a1, wt1, mc1, mn1, hc1, hn1, 1, op, o_off, D, rows, W, BD, W == CT)
        if NS > 2:
            h2 = _wsc_one(x, h2, d2, a2, wt2, mc2, mn2, hc2, hn2, 2, op, o_off, D, rows, W, BD, W == CT)
        if NS > 3:
            h3 = _wsc_one(x, h3, d3, a3, wt3, mc3, mn3, hc3, hn3, 3, op, o_off, D, rows, W, BD, W == CT)
    h0 = tl.sum(tl.where((wi == 0)[:, None], h0, 0.0), axis=0)
    h1 = tl.sum(tl.where((wi == 0)[:, None], h1, 0.0), axis=0)
    h2 = tl.sum(tl.where((wi == 0)[:, None], h2, 0.0), axis=0)
    h3 = tl.sum(tl.where((wi == 0)[:, None], h3, 0.0), axis=0)
    if nfull < T:
        i = tl.cast(nfull, tl.int64)
        live = tl.broadcast_to(trow < T - nfull, (W, CT, BD))
        x = tl.load(x_ptr + i * D + x_off, mask=live, other=0.0).to(tl.float32)
        op = o_ptr + i * SD
        h0 = _ws_one(x, live, h0, q0, d0, a0, 0, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 1:
            h1 = _ws_one(x, live, h1, q1, d1, a1, 1, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 2:
            h2 = _ws_one(x, live, h2, q2, d2, a2, 2, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 3:
            h3 = _ws_one(x, live, h3, q3, d3, a3, 3, op, o_off, live, D, rows, wi, W, CT, False, False)
    ts._store_state(HEND + b * SD + offs_d, h0, h1, h2, h3, mask_d, D, NS)


def wsc_fwd(x, alphas, h0=None, W=2, ct=16, block=128, vec=4, stages=4):
    x = x.contiguous()
    B, T, D = x.shape
    assert D % block == 0
    a64 = alphas.to(device=x.device, dtype=torch.float64)
    S = a64.numel()
    assert S <= 4
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    d64 = 1.0 - a64
    h0f = None if h0 is None else h0.float().contiguous()
    grid = (D // block, B)
    _wsc_kernel[grid](x, out, x if h0f is None else h0f, hend, d64.float(), d64, a64.float(), T, D, S * D,
                      NS=S, W=W, CT=ct, BD=block, VEC=vec, STAGES=stages, HAS_HIN=h0f is not None, num_warps=W)
    return out, hend


# ---- v12d: CT = M W rows a warp (M >= 1): the exchange anchored through a reshape of x
@triton.jit
def _wsd_one(x, h, dec, alp, wt, mc, mn, hc, hn, k: tl.constexpr, o_ptr, o_off, D, rows,
             W: tl.constexpr, BD: tl.constexpr, CT: tl.constexpr):
    e = tl.sum(x * wt, axis=1)  # (W, BD)
    M: tl.constexpr = CT // W
    xs = tl.sum(tl.reshape(x, (W, M, W, BD)), axis=1)  # (W, W, BD) in x's layout: the anchor
    E = tl.broadcast_to(e[None, :, :], (W, W, BD)) + 0.0 * xs
    c = tl.sum(E * mc, axis=1) + hc * h
    u = alp * x + tl.where((rows == 0)[None, :, None], dec * c[:, None, :], 0.0)
    a = tl.zeros_like(x) + dec
    _, hh = tl.associative_scan((a, u), 1, ts._combine)
    tl.store(o_ptr + k * D + o_off, hh.to(o_ptr.dtype.element_ty))
    return tl.sum(E * mn, axis=1) + hn * h


@triton.jit
def _wsd_kernel(X, OUT, HIN, HEND, DEC, DEC64, ALP, T, D, SD,
                NS: tl.constexpr, W: tl.constexpr, CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr,
                STAGES: tl.constexpr, HAS_HIN: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, CT)
    wi = tl.arange(0, W)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)
    mask_d = ts._channel_mask(offs_d, D, BD, True)
    h0 = tl.zeros((W, BD), dtype=tl.float32)
    h1 = h0
    h2 = h0
    h3 = h0
    if HAS_HIN:
        h0, h1, h2, h3 = ts._load_state(HIN + b * SD + (wi * 0)[:, None] + offs_d[None, :], True, D, NS)
    d0, d1, d2, d3 = ts._load_coefs(DEC, NS)
    a0, a1, a2, a3 = ts._load_coefs(ALP, NS)
    q0, q1, q2, q3 = ts._seg_decays(DEC64, CT, NS)
    wt0, mc0, mn0, hc0, hn0 = _wsc_consts(d0, a0, rows, wi, W, CT)
    wt1, mc1, mn1, hc1, hn1 = _wsc_consts(d1, a1, rows, wi, W, CT)
    wt2, mc2, mn2, hc2, hn2 = _wsc_consts(d2, a2, rows, wi, W, CT)
    wt3, mc3, mn3, hc3, hn3 = _wsc_consts(d3, a3, rows, wi, W, CT)
    trow = wi[:, None, None] * CT + rows[None, :, None]
    x_off = trow * D + offs_d[None, None, :]
    o_off = trow * SD + offs_d[None, None, :]
    x_ptr = X + b * T * D
    o_ptr = OUT + b * T * SD
    TILE: tl.constexpr = W * CT
    nfull = T // TILE * TILE
    for i0 in tl.range(0, nfull, TILE, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        x = tl.load(x_ptr + i * D + x_off).to(tl.float32)
        op = o_ptr + i * SD
        h0 = _wsd_one(x, h0, d0, a0, wt0, mc0, mn0, hc0, hn0, 0, op, o_off, D, rows, W, BD, CT)
        if NS > 1:
            h1 = _wsd_one(x, h1, d1, a1, wt1, mc1, mn1, hc1, hn1, 1, op, o_off, D, rows, W, BD, CT)
        if NS > 2:
            h2 = _wsd_one(x, h2, d2, a2, wt2, mc2, mn2, hc2, hn2, 2, op, o_off, D, rows, W, BD, CT)
        if NS > 3:
            h3 = _wsd_one(x, h3, d3, a3, wt3, mc3, mn3, hc3, hn3, 3, op, o_off, D, rows, W, BD, CT)
    h0 = tl.sum(tl.where((wi == 0)[:, None], h0, 0.0), axis=0)
    h1 = tl.sum(tl.where((wi == 0)[:, None], h1, 0.0), axis=0)
    h2 = tl.sum(tl.where((wi == 0)[:, None], h2, 0.0), axis=0)
    h3 = tl.sum(tl.where((wi == 0)[:, None], h3, 0.0), axis=0)
    if nfull < T:
        i = tl.cast(nfull, tl.int64)
        live = tl.broadcast_to(trow < T - nfull, (W, CT, BD))
        x = tl.load(x_ptr + i * D + x_off, mask=live, other=0.0).to(tl.float32)
        op = o_ptr + i * SD
        h0 = _ws_one(x, live, h0, q0, d0, a0, 0, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 1:
            h1 = _ws_one(x, live, h1, q1, d1, a1, 1, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 2:
            h2 = _ws_one(x, live, h2, q2, d2, a2, 2, op, o_off, live, D, rows, wi, W, CT, False, False)
        if NS > 3:
            h3 = _ws_one(x, live, h3, q3, d3, a3, 3, op, o_off, live, D, rows, wi, W, CT, False, False)
    ts._store_state(HEND + b * SD + offs_d, h0, h1, h2, h3, mask_d, D, NS)


def wsd_fwd(x, alphas, h0=None, W=4, ct=8, block=128, vec=4, stages=4):
    x = x.contiguous()
    B, T, D = x.shape
    assert D % block == 0 and ct % W == 0
    a64 = alphas.to(device=x.device, dtype=torch.float64)
    S = a64.numel()
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    d64 = 1.0 - a64
    h0f = None if h0 is None else h0.float().contiguous()
    _wsd_kernel[(D // block, B)](x, out, x if h0f is None else h0f, hend, d64.float(), d64, a64.float(), T, D,
                                 S * D, NS=S, W=W, CT=ct, BD=block, VEC=vec, STAGES=stages,
                                 HAS_HIN=h0f is not None, num_warps=W)
    return out, hend
