# session 9, exp 15 (v12): time split across the warps of a program (ws.py) against v10, EMA forward
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import v12_ws as ws
bench = lambda fn: float(triton.testing.do_bench_cudagraph(fn, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("copy TB/s", bw / 1e12, flush=True)
WS = [(2, 8, 128, 4, 4, False), (2, 8, 128, 4, 6, False), (2, 8, 128, 4, 4, True), (2, 16, 64, 2, 4, False),
      (2, 16, 64, 2, 4, True), (2, 8, 64, 2, 6, False), (4, 8, 128, 4, 3, False), (4, 8, 128, 4, 4, False),
      (4, 8, 128, 4, 4, True), (4, 8, 64, 2, 4, False), (4, 16, 64, 2, 3, False)]
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(16, 2048, 768), (64, 512, 768), (8, 4096, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, 3, D, device="cuda")
    xf = x.float()
    ref, refT = ts.ema_traces_fwd(xf, al, h0, cfg=ts.TileConfig(ct=16, block=64, vec=2, stages=3))
    r = {"B": B, "T": T, "cfg": "v10 default", "floor_ms": floor, "ema_fwd": bench(lambda: ts.ema_traces_fwd(x, al))}
    r["x_floor"] = r["ema_fwd"] / floor
    print(B, T, r["cfg"], r["ema_fwd"], r["x_floor"], flush=True)
    res["rows"].append(r)
    for (W, ct, bd, vec, st, nox) in WS:
        name = f"ws W{W} {ct}x{bd} v{vec} s{st}" + (" no-exchange" if nox else "")
        r = {"B": B, "T": T, "cfg": name, "W": W, "ct": ct, "block": bd, "vec": vec, "stages": st, "no_exchange": nox,
             "floor_ms": floor}
        try:
            o, oT = ws.ws_fwd(xf, al, h0, W=W, ct=ct, block=bd, vec=vec, stages=st, nox=nox)
            r["rel_err_fp32"] = float((o - ref).norm() / ref.norm())
            r["rel_err_state"] = float((oT - refT).norm() / refT.norm())
            r["ema_fwd"] = bench(lambda: ws.ws_fwd(x, al, W=W, ct=ct, block=bd, vec=vec, stages=st, nox=nox))
            r["x_floor"] = r["ema_fwd"] / floor
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        print(B, T, name, {k: r.get(k) for k in ("ema_fwd", "x_floor", "rel_err_fp32", "rel_err_state", "error")},
              f"{time.time()-t0:.0f}s", flush=True)
        res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp15.json", "w"), indent=1)
