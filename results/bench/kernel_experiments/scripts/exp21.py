# session 9, exp 21 (v14): single-pass look-back over segments with v10's pipelined loops, EMA forward
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import v14_lb_segments as v14
bench = lambda f: float(triton.testing.do_bench_cudagraph(f, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("card", torch.cuda.get_device_name(), "copy TB/s", bw / 1e12, flush=True)
CFG = [(256, 16, 128, 4, 4), (128, 16, 128, 4, 4), (512, 16, 128, 4, 4), (1024, 16, 128, 4, 4),
       (256, 16, 64, 2, 8), (512, 16, 64, 2, 8)]
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(4, 8192, 768), (1, 65536, 768), (16, 2048, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, 3, D, device="cuda")
    xf = x.float()
    ref, refT = ts.ema_traces_fwd(xf, al, h0, cfg=ts.TileConfig(ct=16, block=64, vec=2, stages=3))
    r = {"B": B, "T": T, "cfg": "v10 default", "floor_ms": floor, "ema_fwd": bench(lambda: ts.ema_traces_fwd(x, al))}
    r["x_floor"] = r["ema_fwd"] / floor
    print(B, T, r["cfg"], round(r["ema_fwd"], 4), round(r["x_floor"], 3), flush=True)
    res["rows"].append(r)
    for (seglen, ct, bd, vec, K) in CFG:
        if seglen >= T:
            continue
        name = f"v14 seg{seglen} {ct}x{bd} v{vec} K{K}"
        r = {"B": B, "T": T, "cfg": name, "seglen": seglen, "ct": ct, "block": bd, "vec": vec, "K": K, "floor_ms": floor}
        try:
            errs = []
            for rep in range(4):
                print("  run", rep, flush=True)
                o, oT = v14.v14_fwd(xf, al, h0, seglen=seglen, ct=ct, block=bd, vec=vec, K=K, skip_odd=rep == 3)
                torch.cuda.synchronize()
                errs.append((float((o - ref).norm() / ref.norm()), float((oT - refT).norm() / refT.norm())))
                print("  err", errs[-1], flush=True)
            r["errs"] = errs
            r["ema_fwd"] = bench(lambda: v14.v14_fwd(x, al, seglen=seglen, ct=ct, block=bd, vec=vec, K=K))
            r["x_floor"] = r["ema_fwd"] / floor
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        worst = max(max(e) for e in r.get("errs", [(float("nan"),)]))
        print(B, T, name, round(r.get("ema_fwd", -1), 4), round(r.get("x_floor", -1), 3), "worst err %.1e" % worst,
              r.get("error", ""), f"{time.time()-t0:.0f}s", flush=True)
        res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp21.json", "w"), indent=1)
