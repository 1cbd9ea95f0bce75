# session 9, exp 22 (v15): v14's look-back protocol with one tile a program held in registers, EMA forward
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import v15_lb_tile as v15
bench = lambda f: float(triton.testing.do_bench_cudagraph(f, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("card", torch.cuda.get_device_name(), "copy TB/s", bw / 1e12, flush=True)
CFG = [(8, 128, 4, 4, False), (8, 128, 4, 4, True), (8, 64, 2, 4, False), (8, 64, 2, 4, True), (16, 128, 4, 2, False)]
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
    for (ct, bd, vec, K, ticket) in CFG:
        name = f"v15 {ct}x{bd} v{vec} K{K}" + (" ticket" if ticket else " program order")
        r = {"B": B, "T": T, "cfg": name, "ct": ct, "block": bd, "vec": vec, "K": K, "ticket": ticket, "floor_ms": floor}
        try:
            errs = []
            for rep in range(4):
                o, oT = v15.v15_fwd(xf, al, h0, ct=ct, block=bd, vec=vec, K=K, ticket=ticket, skip_odd=rep == 3)
                torch.cuda.synchronize()
                errs.append((float((o - ref).norm() / ref.norm()), float((oT - refT).norm() / refT.norm())))
            r["errs"] = errs
            r["ema_fwd"] = bench(lambda: v15.v15_fwd(x, al, ct=ct, block=bd, vec=vec, K=K, ticket=ticket))
            r["x_floor"] = r["ema_fwd"] / floor
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        worst = max(max(e) for e in r.get("errs", [(float("nan"),)]))
        print(B, T, name, round(r.get("ema_fwd", -1), 4), round(r.get("x_floor", -1), 3), "worst err %.1e" % worst,
              r.get("error", ""), f"{time.time()-t0:.0f}s", flush=True)
        res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp22.json", "w"), indent=1)
