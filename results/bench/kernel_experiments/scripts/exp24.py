# session 10, exp 24 (v17): Gluon EMA forward, time split across W warps, end states exchanged in shared memory.
# It ran on the switch-free v17 file; the archived v17_v18_gluon_time_split.py runs the same path with its
# switches at their defaults (exchange on, TMA stores).
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import v17_v18_gluon_time_split as gl17
bench = lambda f: float(triton.testing.do_bench_cudagraph(f, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("card", torch.cuda.get_device_name(), "copy TB/s", bw / 1e12, flush=True)
# (ct, bd, vec, warps, nbuf, obuf)
A = [(16, 128, 4, 4, 3, 2), (8, 128, 4, 4, 4, 2), (8, 128, 4, 8, 3, 2), (16, 64, 2, 4, 4, 2), (8, 64, 2, 4, 6, 2),
     (8, 64, 2, 8, 4, 2), (16, 128, 4, 4, 4, 1), (8, 128, 4, 4, 6, 1)]
CFG = {16: A, 64: A[:4], 8: A[:6], 4: [(8, 64, 2, 8, 4, 2), (16, 64, 2, 8, 3, 2), (8, 128, 4, 8, 3, 2)]}
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(16, 2048, 768), (64, 512, 768), (8, 4096, 768), (4, 8192, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, 3, D, device="cuda")
    ref, refT = ts.ema_traces_fwd(x, al, h0)
    r = {"B": B, "T": T, "cfg": "v10 default", "floor_ms": floor, "ema_fwd": bench(lambda: ts.ema_traces_fwd(x, al))}
    r["x_floor"] = r["ema_fwd"] / floor
    print(B, T, r["cfg"], round(r["ema_fwd"], 4), round(r["x_floor"], 3), flush=True)
    res["rows"].append(r)
    for c in CFG[B]:
        ct, bd, vec, w, nb, ob = c
        name = f"v17 {ct}x{bd} v{vec} w{w} nbuf{nb} obuf{ob}"
        r = {"B": B, "T": T, "cfg": name, "params": c, "floor_ms": floor}
        try:
            checks = []
            for rep in range(3):
                o, oT = gl17.ema_fwd_ws18(x, al, h0, ct=ct, bd=bd, vec=vec, warps=w, nbuf=nb, obuf=ob)
                torch.cuda.synchronize()
                d = (o.float() - ref.float()).abs()
                checks.append({"out_max_abs": float(d.max()), "out_frac_diff": float((d > 0).float().mean()),
                               "hend_rel": float((oT - refT).norm() / refT.norm())})
            r["checks"] = checks
            r["ema_fwd"] = bench(lambda: gl17.ema_fwd_ws18(x, al, ct=ct, bd=bd, vec=vec, warps=w, nbuf=nb, obuf=ob))
            r["x_floor"] = r["ema_fwd"] / floor
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"[:400]
        ch = r.get("checks", [{}])
        print(B, T, name, round(r.get("ema_fwd", -1), 4), round(r.get("x_floor", -1), 3),
              "maxabs %.1e frac %.1e hend %.1e" % (max(c.get("out_max_abs", -1) for c in ch), max(c.get("out_frac_diff", -1) for c in ch), max(c.get("hend_rel", -1) for c in ch)),
              r.get("error", ""), f"{time.time()-t0:.0f}s", flush=True)
        res["rows"].append(r)
        json.dump(res, open(os.environ["OUT"] + "/exp24.json", "w"), indent=1)
