# session 8, exp 14 (v11): full tiles as two time-halves side by side in lanes (each store covers 2 time steps),
# against v10's layouts, EMA forward
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src")
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
bench = lambda fn: float(triton.testing.do_bench_cudagraph(fn, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("copy TB/s", bw / 1e12, flush=True)
C = ts.TileConfig
CFGS = [("v10 32x64", C(ct=32, block=64, vec=2, stages=4)), ("v10 16x64", C(ct=16, block=64, vec=2, stages=6)),
        ("v10 16x128", C(ct=16, block=128, vec=4, stages=4)),
        ("halves 16x64 s3", C(ct=16, block=64, vec=4, stages=3, halves=True)), ("halves 16x64 s4", C(ct=16, block=64, vec=4, stages=4, halves=True)),
        ("halves 16x64 s6", C(ct=16, block=64, vec=4, stages=6, halves=True)), ("halves 16x64 s8", C(ct=16, block=64, vec=4, stages=8, halves=True)),
        ("halves 32x64 s4", C(ct=32, block=64, vec=4, stages=4, halves=True)), ("halves 8x64 s8", C(ct=8, block=64, vec=4, stages=8, halves=True)),
        ("halves 16x128 s3", C(ct=16, block=128, vec=8, stages=3, halves=True)), ("halves 16x128 s4", C(ct=16, block=128, vec=8, stages=4, halves=True)),
        ("halves 8x128 s6", C(ct=8, block=128, vec=8, stages=6, halves=True))]
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(16, 2048, 768), (64, 512, 768), (4, 8192, 768), (1, 65536, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, 3, D, device="cuda")
    xf = x.float()
    ref, refT = ts.ema_traces_fwd(xf, al, h0, cfg=C(ct=16, block=64, vec=2, stages=3))  # float32 reference, v10
    for name, cfg in CFGS:
        r = {"B": B, "T": T, "cfg": name, **cfg.__dict__, "floor_ms": floor}
        try:
            o, oT = ts.ema_traces_fwd(xf, al, h0, cfg=cfg)
            r["rel_err_fp32"] = float((o - ref).norm() / ref.norm())
            r["rel_err_state"] = float((oT - refT).norm() / refT.norm())
            r["ema_fwd"] = bench(lambda: ts.ema_traces_fwd(x, al, cfg=cfg))
            r["x_floor"] = r["ema_fwd"] / floor
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        print(B, T, name, {k: r.get(k) for k in ("ema_fwd", "x_floor", "rel_err_fp32", "rel_err_state", "error")}, f"{time.time()-t0:.0f}s", flush=True)
        res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp14.json", "w"), indent=1)
