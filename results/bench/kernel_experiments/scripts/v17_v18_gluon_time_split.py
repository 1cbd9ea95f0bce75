"""v18 (v17 with switches): EXCH=False skips the exchange (wrong values: a bound); TMA_OUT=False
writes the traces from registers with plain stores.

v17: EMA forward in Gluon, each tile's time split across the W warps of a program,
the warps' end states exchanged through shared memory (two barriers a tile).

A program owns BD channels of one sequence. A tile is R = W * CT steps, loaded by TMA
into an NBUF-deep ring. Warp w holds rows [w CT, (w+1) CT) in registers (lanes along
channels, CT rows in a thread).
  phase 1: each warp reduces its rows from zero to its end state e_w (tree in a thread),
           writes it to shared memory one row down (rows 1..W of a 2W-row buffer);
  barrier;
  every thread loads rows 0..W-1 (row 0 replaced by the program's carry H), scans them
           in its registers with the decay dec^CT: C_w, the state entering warp w;
           H <- dec^CT C_{W-1} + e_{W-1};
  phase 2: each warp scans its rows from C_w, writes the traces to shared memory;
  barrier; one thread issues the TMA bulk stores.
Experiment only: T must be a multiple of R (no partial tile), NS = 3.
"""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier, fence_async_shared


@gluon.jit
def _comb(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@gluon.jit
def _end(x, dec, alp, L3: gl.constexpr):
    # a warp's end state from zero over its CT rows: sum_r dec^(CT-1-r) alp x_r
    a = gl.full(x.shape, 1.0, gl.float32, L3) * dec
    _, e = gl.reduce((a, alp * x), 1, _comb)
    return e  # [W, BD], SliceLayout(1, L3)


@gluon.jit
def _carries(ex, H, decct, wi, E2: gl.constexpr, W: gl.constexpr):
    # ex: [W, BD] smem holding e_0..e_{W-1}; H [1, BD] the state entering the tile.
    # Returns C [W, BD] (row w: the state entering warp w; each warp keeps its own row) and the
    # state leaving the tile. Every thread walks the W end states in its registers.
    c = H
    C = gl.where(wi == 0, H, 0.0)
    for w in gl.static_range(W - 1):
        c = decct * c + ex.slice(w, 1).load(E2)
        C = gl.where(wi == w + 1, c, C)
    return C, decct * c + ex.slice(W - 1, 1).load(E2)


@gluon.jit
def _trace(x, C, dec, alp, rows, L3: gl.constexpr):
    u = alp * x + gl.where(rows == 0, dec * gl.expand_dims(C, 1), 0.0)
    a = gl.full(x.shape, 1.0, gl.float32, L3) * dec
    _, h = gl.associative_scan((a, u), 1, _comb)
    return h


@gluon.jit
def _ema_fwd_ws18_kernel(x_desc, o_desc, HIN, HEND, DEC, ALP, DECCT, T, D, SD,
                       CT: gl.constexpr, BD: gl.constexpr, VEC: gl.constexpr,
                       NBUF: gl.constexpr, OBUF: gl.constexpr, HAS_HIN: gl.constexpr,
                       EXCH: gl.constexpr, TMA_OUT: gl.constexpr, OUT):
    W: gl.constexpr = gl.num_warps()
    NS: gl.constexpr = 3
    R: gl.constexpr = W * CT
    L3: gl.constexpr = gl.BlockedLayout([1, CT, VEC], [1, 1, 32], [W, 1, 1], [2, 1, 0])
    E2: gl.constexpr = gl.SliceLayout(1, L3)
    EXL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    pid_d = gl.program_id(0)
    b = gl.program_id(1)
    d0 = pid_d * BD
    offs_h = d0 + gl.arange(0, BD, layout=gl.SliceLayout(0, E2))[None, :]
    wi = gl.arange(0, W, layout=gl.SliceLayout(1, E2))[:, None]
    st = b.to(gl.int64) * SD + offs_h
    if HAS_HIN:
        H0 = gl.load(HIN + st)
        H1v = gl.load(HIN + st + D)
        H2 = gl.load(HIN + st + 2 * D)
    else:
        H0 = gl.zeros([1, BD], gl.float32, E2)
        H1v = H0
        H2 = H0
    dc0 = gl.load(DEC)
    dc1 = gl.load(DEC + 1)
    dc2 = gl.load(DEC + 2)
    al0 = gl.load(ALP)
    al1 = gl.load(ALP + 1)
    al2 = gl.load(ALP + 2)
    p0 = gl.load(DECCT)
    p1 = gl.load(DECCT + 1)
    p2 = gl.load(DECCT + 2)
    rows = gl.arange(0, CT, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))[None, :, None]
    wrow = gl.arange(0, W, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))[:, None, None]
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))[None, None, :]
    o_off = (wrow * CT + rows) * SD + d0 + cols

    xs = gl.allocate_shared_memory(x_desc.dtype, [NBUF, 1, R, BD], x_desc.layout)
    osm = gl.allocate_shared_memory(o_desc.dtype, [OBUF * NS if TMA_OUT else 1, 1, R, BD], o_desc.layout)
    ex = gl.allocate_shared_memory(gl.float32, [2 * NS, W, BD], EXL)
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for p in gl.static_range(NBUF):
        mbarrier.init(bars.index(p), count=1)
    n = T // R
    for p in gl.static_range(NBUF):
        mbarrier.expect(bars.index(p), x_desc.block_type.nbytes, pred=p < n)
        tma.async_copy_global_to_shared(x_desc, [b, p * R, d0], bars.index(p), xs.index(p), pred=p < n)
    for i in range(n):
        s = i % NBUF
        mbarrier.wait(bars.index(s), (i // NBUF) & 1)
        x = xs.index(s).reshape([W, CT, BD]).load(L3).to(gl.float32)
        par = (i % 2) * NS
        if EXCH:
            ex.index(par).store(_end(x, dc0, al0, L3))
            ex.index(par + 1).store(_end(x, dc1, al1, L3))
            ex.index(par + 2).store(_end(x, dc2, al2, L3))
        j = i % OBUF
        if TMA_OUT:
            tma.store_wait(pendings=(OBUF - 1) * NS)
        gl.thread_barrier()
        # every warp has read slot s: refill it with tile i + NBUF
        nxt = i + NBUF
        mbarrier.expect(bars.index(s), x_desc.block_type.nbytes, pred=nxt < n)
        tma.async_copy_global_to_shared(x_desc, [b, nxt * R, d0], bars.index(s), xs.index(s), pred=nxt < n)
        if EXCH:
            C0, H0 = _carries(ex.index(par), H0, p0, wi, E2, W)
            C1, H1v = _carries(ex.index(par + 1), H1v, p1, wi, E2, W)
            C2, H2 = _carries(ex.index(par + 2), H2, p2, wi, E2, W)
        else:
            C0 = gl.where(wi == 0, H0, 0.0)
            C1 = C0
            C2 = C0
        t = i * R
        if TMA_OUT:
            h = _trace(x, C0, dc0, al0, rows, L3)
            osm.index(j * NS).reshape([W, CT, BD]).store(h.to(o_desc.dtype))
            h = _trace(x, C1, dc1, al1, rows, L3)
            osm.index(j * NS + 1).reshape([W, CT, BD]).store(h.to(o_desc.dtype))
            h = _trace(x, C2, dc2, al2, rows, L3)
            osm.index(j * NS + 2).reshape([W, CT, BD]).store(h.to(o_desc.dtype))
            fence_async_shared()
            gl.thread_barrier()
            tma.async_copy_shared_to_global(o_desc, [b, t, d0], osm.index(j * NS))
            tma.async_copy_shared_to_global(o_desc, [b, t, D + d0], osm.index(j * NS + 1))
            tma.async_copy_shared_to_global(o_desc, [b, t, 2 * D + d0], osm.index(j * NS + 2))
        else:
            optr = OUT + (b.to(gl.int64) * T + t) * SD + o_off
            gl.store(optr, _trace(x, C0, dc0, al0, rows, L3).to(OUT.dtype.element_ty))
            gl.store(optr + D, _trace(x, C1, dc1, al1, rows, L3).to(OUT.dtype.element_ty))
            gl.store(optr + 2 * D, _trace(x, C2, dc2, al2, rows, L3).to(OUT.dtype.element_ty))
    tma.store_wait(pendings=0)
    for p in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(p))
    gl.store(HEND + st, H0)
    gl.store(HEND + st + D, H1v)
    gl.store(HEND + st + 2 * D, H2)


def ema_fwd_ws18(x, alphas, h0=None, ct=16, bd=128, vec=4, warps=4, nbuf=3, obuf=2, exch=True, tma_out=True):
    B, T, D = x.shape
    S = alphas.numel()
    R = warps * ct
    assert S == 3 and D % bd == 0 and bd == 32 * vec and T % R == 0
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    a64 = alphas.double().to(x.device)
    dec, alp, decct = (1 - a64).float(), a64.float(), ((1 - a64) ** ct).float()
    lay = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=x.element_size() * 8, rank=3)
    xd = TensorDescriptor(x, [B, T, D], [T * D, D, 1], [1, R, bd], lay)
    od = TensorDescriptor(out, [B, T, S * D], [T * S * D, S * D, 1], [1, R, bd], lay)
    hin = hend if h0 is None else h0.float().contiguous()
    _ema_fwd_ws18_kernel[(D // bd, B)](xd, od, hin, hend, dec, alp, decct, T, D, S * D, CT=ct, BD=bd, VEC=vec,
                                     NBUF=nbuf, OBUF=obuf, HAS_HIN=h0 is not None, EXCH=exch, TMA_OUT=tma_out, OUT=out, num_warps=warps)
    return out, hend
