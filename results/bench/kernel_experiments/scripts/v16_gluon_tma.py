"""v16: EMA forward in Gluon, x tiles loaded and trace tiles stored by TMA.

A program (W warps) owns BD channels of one sequence, as in v10. Tiles of CT steps arrive
through an NBUF-deep ring of TMA loads (mbarrier per slot); each tile is scanned in
registers (lanes along channels, CT rows in a thread), written to shared memory and
sent out by TMA bulk stores, OBUF tiles of stores in flight.
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
def _scan_store(x, live, h, dec, alp, rows, o_smem, o_desc, b, t, col, LAYOUT: gl.constexpr, MASKED: gl.constexpr):
    # one timescale of a (CT, BD) tile: scan from the carry, write to smem, TMA-store; returns the new carry
    u = alp * x + gl.where((rows == 0)[:, None], dec * h[None, :], 0.0)
    if MASKED:
        a = gl.where(live, dec, 1.0)
    else:
        a = gl.full(x.shape, 1.0, gl.float32, LAYOUT) * dec
    _, hh = gl.associative_scan((a, u), 0, _comb)
    o_smem.store(hh.to(o_smem.dtype).reshape([1, x.shape[0], x.shape[1]]))
    fence_async_shared()
    gl.thread_barrier()
    tma.async_copy_shared_to_global(o_desc, [b, t, col], o_smem)
    return gl.sum(gl.where((rows == x.shape[0] - 1)[:, None], hh, 0.0), 0)


@gluon.jit
def _ema_fwd_tma_kernel(x_desc, o_desc, HIN, HEND, DEC, ALP, T, D, SD,
                        NS: gl.constexpr, CT: gl.constexpr, BD: gl.constexpr, VEC: gl.constexpr,
                        NBUF: gl.constexpr, OBUF: gl.constexpr, HAS_HIN: gl.constexpr):
    W: gl.constexpr = gl.num_warps()
    L: gl.constexpr = gl.BlockedLayout([CT, VEC], [1, 32], [1, W], [1, 0])
    pid_d = gl.program_id(0)
    b = gl.program_id(1)
    d0 = pid_d * BD
    rows = gl.arange(0, CT, layout=gl.SliceLayout(1, L))
    offs_d = d0 + gl.arange(0, BD, layout=gl.SliceLayout(0, L))
    st = b.to(gl.int64) * SD + offs_d
    if HAS_HIN:
        h0 = gl.load(HIN + st)
        h1 = gl.load(HIN + st + D)
        h2 = gl.load(HIN + st + 2 * D)
    else:
        h0 = gl.zeros([BD], gl.float32, gl.SliceLayout(0, L))
        h1 = h0
        h2 = h0
    dc0 = gl.load(DEC)
    dc1 = gl.load(DEC + 1)
    dc2 = gl.load(DEC + 2)
    al0 = gl.load(ALP)
    al1 = gl.load(ALP + 1)
    al2 = gl.load(ALP + 2)

    xs = gl.allocate_shared_memory(x_desc.dtype, [NBUF, 1, CT, BD], x_desc.layout)
    osm = gl.allocate_shared_memory(o_desc.dtype, [OBUF * NS, 1, CT, BD], o_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NBUF, 1], mbarrier.MBarrierLayout())
    for p in gl.static_range(NBUF):
        mbarrier.init(bars.index(p), count=1)
    n = gl.cdiv(T, CT)
    for p in gl.static_range(NBUF):
        mbarrier.expect(bars.index(p), x_desc.block_type.nbytes, pred=p < n)
        tma.async_copy_global_to_shared(x_desc, [b, p * CT, d0], bars.index(p), xs.index(p), pred=p < n)
    nfull = T // CT
    live = gl.full([CT, BD], 1, gl.int1, L)
    for i in range(n):
        s = i % NBUF
        mbarrier.wait(bars.index(s), (i // NBUF) & 1)
        x = xs.index(s).reshape([CT, BD]).load(L).to(gl.float32)
        t = i * CT
        j = i % OBUF
        tma.store_wait(pendings=(OBUF - 1) * NS)
        if i < nfull:
            h0 = _scan_store(x, live, h0, dc0, al0, rows, osm.index(j * NS), o_desc, b, t, d0, L, False)
            h1 = _scan_store(x, live, h1, dc1, al1, rows, osm.index(j * NS + 1), o_desc, b, t, D + d0, L, False)
            h2 = _scan_store(x, live, h2, dc2, al2, rows, osm.index(j * NS + 2), o_desc, b, t, 2 * D + d0, L, False)
        else:
            lv = (rows < T - t)[:, None] & live
            h0 = _scan_store(x, lv, h0, dc0, al0, rows, osm.index(j * NS), o_desc, b, t, d0, L, True)
            h1 = _scan_store(x, lv, h1, dc1, al1, rows, osm.index(j * NS + 1), o_desc, b, t, D + d0, L, True)
            h2 = _scan_store(x, lv, h2, dc2, al2, rows, osm.index(j * NS + 2), o_desc, b, t, 2 * D + d0, L, True)
        # slot s is read (its values fed the stores above): refill it with tile i + NBUF
        nxt = i + NBUF
        mbarrier.expect(bars.index(s), x_desc.block_type.nbytes, pred=nxt < n)
        tma.async_copy_global_to_shared(x_desc, [b, nxt * CT, d0], bars.index(s), xs.index(s), pred=nxt < n)
    tma.store_wait(pendings=0)
    for p in gl.static_range(NBUF):
        mbarrier.invalidate(bars.index(p))
    gl.store(HEND + st, h0)
    gl.store(HEND + st + D, h1)
    gl.store(HEND + st + 2 * D, h2)


def ema_fwd_tma(x, alphas, h0=None, ct=32, bd=64, vec=2, warps=1, nbuf=4, obuf=2):
    B, T, D = x.shape
    S = alphas.numel()
    assert S == 3 and D % bd == 0 and bd == 32 * vec * warps
    out = torch.empty(B, T, S, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, S, D, dtype=torch.float32, device=x.device)
    a64 = alphas.double().to(x.device)
    dec, alp = (1 - a64).float(), a64.float()
    lay = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=x.element_size() * 8, rank=3)
    xd = TensorDescriptor(x, [B, T, D], [T * D, D, 1], [1, ct, bd], lay)
    od = TensorDescriptor(out, [B, T, S * D], [T * S * D, S * D, 1], [1, ct, bd], lay)
    hin = hend if h0 is None else h0.float().contiguous()
    _ema_fwd_tma_kernel[(D // bd, B)](xd, od, hin, hend, dec, alp, T, D, S * D, NS=S, CT=ct, BD=bd, VEC=vec,
                                      NBUF=nbuf, OBUF=obuf, HAS_HIN=h0 is not None, num_warps=warps)
    return out, hend
