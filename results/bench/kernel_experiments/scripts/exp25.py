# session 10, exp 25: where the long-T forward's time goes (v10 segments): pass 1, pass 2 with and without the combine
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src")
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import triton.language as tl


@triton.jit
def _end_kernel(X, ENDS, DEC, ALP, LOGDEC, T, D, SD, SEGLEN, NSEG,
                CT: tl.constexpr, BD: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr):
    # pass 1 as a weighted reduction: e <- dec^CT e + sum_r alp dec^(CT-1-r) x_r, tile by tile
    pid_d = tl.program_id(0)
    seg = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CT)
    offs_d = tl.max_contiguous(tl.multiple_of(pid_d * BD + tl.arange(0, BD), VEC), VEC)
    seg_len = ts._seg_len(seg, SEGLEN, T)
    x_ptr = X + (b * T + seg * SEGLEN) * D
    x_off = rows[:, None] * D + offs_d[None, :]
    l0 = tl.load(LOGDEC)
    l1 = tl.load(LOGDEC + 1)
    l2 = tl.load(LOGDEC + 2)
    w0 = (tl.load(ALP) * tl.exp2(l0 * (CT - 1 - rows)))[:, None]
    w1 = (tl.load(ALP + 1) * tl.exp2(l1 * (CT - 1 - rows)))[:, None]
    w2 = (tl.load(ALP + 2) * tl.exp2(l2 * (CT - 1 - rows)))[:, None]
    q0 = tl.exp2(l0 * CT)
    q1 = tl.exp2(l1 * CT)
    q2 = tl.exp2(l2 * CT)
    e0 = tl.zeros((BD,), tl.float32)
    e1 = e0
    e2 = e0
    nfull = seg_len // CT * CT
    for i0 in tl.range(0, nfull, CT, num_stages=STAGES):
        i = tl.cast(i0, tl.int64)
        x = tl.load(x_ptr + i * D + x_off).to(tl.float32)
        e0 = q0 * e0 + tl.sum(x * w0, 0)
        e1 = q1 * e1 + tl.sum(x * w1, 0)
        e2 = q2 * e2 + tl.sum(x * w2, 0)
    st = ENDS + (b * NSEG + seg) * SD + offs_d
    tl.store(st, e0)
    tl.store(st + D, e1)
    tl.store(st + 2 * D, e2)


bench = lambda f: float(triton.testing.do_bench_cudagraph(f, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("card", torch.cuda.get_device_name(), "copy TB/s", bw / 1e12, flush=True)
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
for (B, T, D) in [(1, 65536, 768), (4, 8192, 768)]:
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    floor = B * T * D * 8 / bw * 1e3
    for pps in [4, 8, 16]:
        for cfg in [ts.EMA_FWD[0], ts.EMA_FWD[1]]:
            ts.PROGRAMS_PER_SM = pps
            S, nd = 3, D // cfg.block
            nseg, seglen = ts._segments(cfg, B * nd, T, x.device)
            out = torch.empty(B, T, S, D, dtype=x.dtype, device="cuda")
            hend = torch.empty(B, nseg, S, D, device="cuda"); ends = torch.empty_like(hend)
            dec64 = 1 - al; dec, alp = dec64.float(), al.float()
            kw = dict(NS=3, CT=cfg.ct, BD=cfg.block, VEC=cfg.vec, STAGES=cfg.stages, num_warps=1, EVEN_D=True)
            args = (dec, dec64, alp, T, D, S * D, seglen, nseg)
            grid = (nd, nseg, B)
            p1 = lambda: ts._ema_fwd_kernel[grid](x, out, x, ends, x, *args, HAS_HIN=False, STORE_OUT=False, COMBINE=False, **kw)
            p2 = lambda: ts._ema_fwd_kernel[grid](x, out, x, hend, ends, *args, HAS_HIN=False, STORE_OUT=True, COMBINE=True, **kw)
            p2n = lambda: ts._ema_fwd_kernel[grid](x, out, x, hend, ends, *args, HAS_HIN=False, STORE_OUT=True, COMBINE=False, **kw)
            ends2 = torch.empty_like(ends)
            assert T % cfg.ct == 0 and seglen % cfg.ct == 0
            logdec = torch.log2(dec64).float()
            p1r = lambda st: _end_kernel[grid](x, ends2, dec, alp, logdec, T, D, S * D, seglen, nseg, CT=cfg.ct, BD=cfg.block, VEC=cfg.vec, STAGES=st, num_warps=1)
            p1(); p2(); p1r(cfg.stages); torch.cuda.synchronize()
            err = float((ends2 - ends).norm() / ends.norm())
            r = {"B": B, "T": T, "block": cfg.block, "ct": cfg.ct, "programs_per_sm": pps, "nseg": nseg, "seglen": seglen,
                 "floor_ms": floor, "full": bench(lambda: ts.ema_traces_fwd(x, al, cfg=cfg)), "pass1": bench(p1),
                 "pass2": bench(p2), "pass2_no_combine": bench(p2n), "pass1_reduce_err": err,
                 **{f"pass1_reduce_st{st}": bench(lambda: p1r(st)) for st in (3, 4, 6)}}
            print(r, flush=True)
            res["rows"].append(r)
ts.PROGRAMS_PER_SM = 8
json.dump(res, open(os.environ["OUT"] + "/exp25.json", "w"), indent=1)
