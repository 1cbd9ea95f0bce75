# session 10, exp 27: v14 look-back over short segments (so the re-read may hit L2), pass A as a reduction,
# with and without eviction hints, and with the look-back left out (wrong values: the bound of two passes in one program)
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import v19_lb_short_segments as v14b
bench = lambda f: float(triton.testing.do_bench_cudagraph(f, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("card", torch.cuda.get_device_name(), "copy TB/s", bw / 1e12, flush=True)
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(1, 65536, 768), (4, 8192, 768), (16, 2048, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, 3, D, device="cuda")
    xf = x.float()
    ref, refT = ts.ema_traces_fwd(xf, al, h0)
    r = {"B": B, "T": T, "cfg": "v10 default", "floor_ms": floor, "ema_fwd": bench(lambda: ts.ema_traces_fwd(x, al))}
    r["x_floor"] = r["ema_fwd"] / floor
    print(B, T, r["cfg"], round(r["ema_fwd"], 4), round(r["x_floor"], 3), flush=True)
    res["rows"].append(r)
    for seglen in (32, 64, 128, 256, 512):
        for (lb, hint) in ((True, False), (True, True), (False, False), (False, True)):
            name = f"v14b seg{seglen} 16x128 K8" + ("" if lb else " NO LOOK-BACK (bound)") + (" hints" if hint else "")
            r = {"B": B, "T": T, "cfg": name, "seglen": seglen, "lookback": lb, "hint": hint, "floor_ms": floor}
            try:
                if lb:
                    errs = []
                    for rep in range(2):
                        o, oT = v14b.v19_fwd(xf, al, h0, seglen=seglen, ct=16, block=128, vec=4, K=8, hint=hint, skip_odd=rep == 1)
                        torch.cuda.synchronize()
                        errs.append((float((o - ref).norm() / ref.norm()), float((oT - refT).norm() / refT.norm())))
                    r["errs"] = errs
                r["ema_fwd"] = bench(lambda: v14b.v19_fwd(x, al, seglen=seglen, ct=16, block=128, vec=4, K=8, nolb=not lb, hint=hint))
                r["x_floor"] = r["ema_fwd"] / floor
            except Exception as e:
                r["error"] = f"{type(e).__name__}: {e}"[:300]
            worst = max(max(e) for e in r.get("errs", [(float("nan"),)]))
            print(B, T, name, round(r.get("ema_fwd", -1), 4), round(r.get("x_floor", -1), 3), "worst err %.1e" % worst,
                  r.get("error", ""), f"{time.time()-t0:.0f}s", flush=True)
            res["rows"].append(r)
            json.dump(res, open(os.environ["OUT"] + "/exp27.json", "w"), indent=1)
