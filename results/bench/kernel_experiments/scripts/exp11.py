# session 8, exp 11 (v10): unmasked full tiles (masked first/last tiles only) against v8 (HEAD), all four kernels
import importlib.util, json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src")
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
spec = importlib.util.spec_from_file_location("ts_v8", ".carry/ts_v8.py")
old = importlib.util.module_from_spec(spec); sys.modules["ts_v8"] = old; spec.loader.exec_module(old)
bench = lambda fn: float(triton.testing.do_bench_cudagraph(fn, rep=60))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("copy TB/s", bw / 1e12, flush=True)
CFGS = [(16, 64, 1, 2, 3), (16, 64, 1, 2, 4), (16, 64, 1, 2, 6), (16, 128, 1, 4, 3), (16, 128, 1, 4, 4), (16, 128, 1, 4, 6),
        (32, 64, 1, 2, 3), (32, 64, 1, 2, 4), (8, 64, 1, 2, 8)]
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(16, 2048, 768), (64, 512, 768), (4, 8192, 768), (1, 65536, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    gh = torch.randn(B, T, 3, D, device="cuda", dtype=torch.bfloat16)
    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.5).to(torch.bfloat16)
    b = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h, _ = ts.linear_scan_fwd(a, b)
    def run(m, cfg):
        return {"ema_fwd": lambda: m.ema_traces_fwd(x, al, cfg=cfg),
                "ema_bwd": lambda: m.ema_traces_bwd(gh, al, None, torch.bfloat16, cfg=cfg),
                "sel_fwd": lambda: m.linear_scan_fwd(a, b, cfg=cfg),
                "sel_bwd": lambda: m.linear_scan_bwd(a, b, h, None, None, torch.bfloat16, torch.bfloat16, cfg=cfg)}
    r = {"B": B, "T": T, "kernel": "v8 defaults", "floor_ms": floor}
    for k in ("ema_fwd", "ema_bwd", "sel_fwd", "sel_bwd"):
        cfg = {"ema_fwd": old.EMA_FWD, "ema_bwd": old.EMA_BWD, "sel_fwd": old.LIN_FWD, "sel_bwd": old.LIN_BWD}[k]
        r[k] = bench(run(old, cfg)[k])
    print(r, flush=True); res["rows"].append(r)
    for ct, bd, w, v, st in CFGS:
        cfg = ts.TileConfig(ct=ct, block=bd, num_warps=w, vec=v, stages=st)
        r = {"B": B, "T": T, "kernel": "v10", "ct": ct, "block": bd, "vec": v, "stages": st, "floor_ms": floor}
        try:
            for k, fn in run(ts, cfg).items():
                r[k] = bench(fn)
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        print(r, f"{time.time()-t0:.0f}s", flush=True); res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp11.json", "w"), indent=1)
