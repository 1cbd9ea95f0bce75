# session 9, exp 18 (v13): single-pass look-back, one (W, W, BD) tile per program held in registers
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import v13_lb as lb
bench = lambda f: float(triton.testing.do_bench_cudagraph(f, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("card", torch.cuda.get_device_name(), "copy TB/s", bw / 1e12, flush=True)
CFG = [(4, 64, 2), (4, 128, 4), (8, 64, 2), (8, 128, 4)]
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(1, 65536, 768), (4, 8192, 768), (16, 2048, 768), (64, 512, 768), (8, 4096, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, 3, D, device="cuda")
    xf = x.float()
    ref, refT = ts.ema_traces_fwd(xf, al, h0, cfg=ts.TileConfig(ct=16, block=64, vec=2, stages=3))
    r = {"B": B, "T": T, "cfg": "v10 default", "floor_ms": floor, "ema_fwd": bench(lambda: ts.ema_traces_fwd(x, al))}
    r["x_floor"] = r["ema_fwd"] / floor
    print(B, T, r["cfg"], round(r["ema_fwd"], 4), round(r["x_floor"], 3), flush=True)
    res["rows"].append(r)
    for (W, bd, vec) in CFG:
        for look in (True, False):
            name = f"lb W{W} {W}x{bd} v{vec}" + ("" if look else " no-look-back")
            r = {"B": B, "T": T, "cfg": name, "W": W, "block": bd, "vec": vec, "lookback": look, "floor_ms": floor}
            try:
                errs = []
                for rep in range(5 if look else 1):
                    o, oT = lb.lb_fwd(xf, al, h0, W=W, block=bd, vec=vec, lookback=look)
                    errs.append((float((o - ref).norm() / ref.norm()), float((oT - refT).norm() / refT.norm()),
                                 float((o - ref).abs().max())))
                r["errs"] = errs
                r["ema_fwd"] = bench(lambda: lb.lb_fwd(x, al, W=W, block=bd, vec=vec, lookback=look))
                r["x_floor"] = r["ema_fwd"] / floor
            except Exception as e:
                r["error"] = f"{type(e).__name__}: {e}"[:300]
            worst = max(e[0] for e in r.get("errs", [(float("nan"),)]))
            print(B, T, name, round(r.get("ema_fwd", -1), 4), round(r.get("x_floor", -1), 3), "worst rel err %.1e" % worst,
                  r.get("error", ""), f"{time.time()-t0:.0f}s", flush=True)
            res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp18.json", "w"), indent=1)
